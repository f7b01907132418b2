//! Tensor cases: a TOML file naming a graph and its input (and expected output) tensors, each a
//! little-endian, C-order `.bin` file beside it. The parity fixtures
//! (`tests/fixtures/parity/<package>/*.toml`) and `edgeseg bench --dump-inputs` write this form;
//! the parity test, the graph benches and the bench test read it here (each uses part of it).
#![allow(dead_code)]

use std::fs;
use std::path::Path;

use edgeseg::model::GraphSpec;
use serde::Deserialize;
use tract_onnx::prelude::Tensor;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub graph: String,
    pub inputs: Vec<TensorFile>,
    pub outputs: Vec<TensorFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorFile {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub file: String,
}

impl Case {
    pub fn read(path: &Path) -> Case {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The input tensors, read from `dir`, in the order `spec` lists its inputs.
    pub fn inputs_for(&self, dir: &Path, spec: &GraphSpec) -> Vec<Tensor> {
        spec.inputs
            .iter()
            .map(|s| {
                let t = self
                    .inputs
                    .iter()
                    .find(|t| t.name == s.name)
                    .unwrap_or_else(|| panic!("{}: case lacks input {}", self.graph, s.name));
                t.read(dir)
            })
            .collect()
    }
}

impl TensorFile {
    /// The tensor, from its file in `dir` (f32 or i64).
    pub fn read(&self, dir: &Path) -> Tensor {
        let path = dir.join(&self.file);
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match self.dtype.as_str() {
            "f32" => {
                let v: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect();
                Tensor::from_shape(&self.shape, &v).expect("f32 tensor")
            }
            "i64" => {
                let v: Vec<i64> = bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect();
                Tensor::from_shape(&self.shape, &v).expect("i64 tensor")
            }
            other => panic!("{}: unsupported dtype {other}", path.display()),
        }
    }
}
