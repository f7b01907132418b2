//! The `model.toml` manifest of a model package, as plain serde data. Unknown keys are errors;
//! [`Manifest::parse`] checks what serde cannot (sizes, normalisation, graph roles per family)
//! so the rest of the runtime can trust every field.

use serde::Deserialize;

use super::{ModelError, Precision};
use crate::postprocess::Activation;
use crate::preprocess::Resize;
use crate::prompt::PromptType;

/// Model families (DESIGN.md "Families and their graph contracts").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Vlsm,
    Sam,
    Sam3d,
    Conditioned,
    Plain,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Vlsm => "vlsm",
            Family::Sam => "sam",
            Family::Sam3d => "sam3d",
            Family::Conditioned => "conditioned",
            Family::Plain => "plain",
        }
    }
}

/// Element type of a graph input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    I64,
    I32,
    U8,
    I8,
    Bool,
}

impl DType {
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::U8 => "u8",
            DType::I8 => "i8",
            DType::Bool => "bool",
        }
    }
}

/// Name, element type and fixed shape of one graph input or output.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// One ONNX file of the package and the precisions it serves.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSpec {
    pub role: String,
    pub precisions: Vec<Precision>,
    pub file: String,
    pub sha256: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// How frames become the image input.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Width, height.
    pub size: [u32; 2],
    #[serde(default = "default_resize")]
    pub resize: Resize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

fn default_resize() -> Resize {
    Resize::Stretch
}

/// How logits become a mask.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub activation: Activation,
    #[serde(default = "default_threshold")]
    pub threshold: f32,
}

fn default_threshold() -> f32 {
    0.5
}

/// Text prompt settings of a VLSM package.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    pub tokenizer: String,
    #[serde(default = "default_context")]
    pub context_length: usize,
    #[serde(default = "default_prompt_type", deserialize_with = "prompt_type")]
    pub default: PromptType,
}

fn default_context() -> usize {
    77
}

fn default_prompt_type() -> PromptType {
    "P4".parse().expect("P4 is a prompt type")
}

fn prompt_type<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PromptType, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// A parsed and checked `model.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub family: Family,
    #[serde(default)]
    pub description: String,
    pub input: InputSpec,
    pub output: OutputSpec,
    #[serde(default)]
    pub prompt: Option<PromptSpec>,
    #[serde(rename = "graph")]
    pub graphs: Vec<GraphSpec>,
}

impl Manifest {
    /// Parses and checks manifest text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &std::path::Path) -> Result<Manifest, ModelError> {
        let invalid = |message: String| ModelError::Manifest {
            path: origin.to_path_buf(),
            message,
        };
        let m: Manifest = toml::from_str(text).map_err(|e| invalid(one_line(&e.to_string())))?;
        let [w, h] = m.input.size;
        if w == 0 || h == 0 {
            return Err(invalid(format!("input.size {w}x{h} has a zero side")));
        }
        if m.input.std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
            return Err(invalid(format!(
                "input.std {:?} must be positive",
                m.input.std
            )));
        }
        if !(0.0..=1.0).contains(&m.output.threshold) {
            return Err(invalid(format!(
                "output.threshold {} is outside 0..1",
                m.output.threshold
            )));
        }
        if m.graphs.is_empty() {
            return Err(invalid("no [[graph]] entries".into()));
        }
        for g in &m.graphs {
            if g.sha256.len() != 64 || !g.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(format!(
                    "graph `{}`: sha256 is not 64 hex digits",
                    g.file
                )));
            }
            if g.precisions.is_empty() {
                return Err(invalid(format!("graph `{}` serves no precision", g.file)));
            }
        }
        let roles: &[&[&str]] = match m.family {
            Family::Vlsm => &[&["text", "image"], &["joint"]],
            Family::Sam | Family::Sam3d => &[&["encoder", "decoder"]],
            Family::Conditioned | Family::Plain => &[&["model"]],
        };
        if !roles
            .iter()
            .any(|set| m.graphs.iter().all(|g| set.contains(&g.role.as_str())))
        {
            let found: Vec<&str> = m.graphs.iter().map(|g| g.role.as_str()).collect();
            return Err(invalid(format!(
                "family `{}` takes graph roles {roles:?}, manifest has {found:?}",
                m.family.as_str()
            )));
        }
        if m.family == Family::Vlsm && m.prompt.is_none() {
            return Err(invalid("family `vlsm` needs a [prompt] table".into()));
        }
        Ok(m)
    }

    /// The graph with this role serving this precision.
    pub fn graph(&self, role: &str, precision: Precision) -> Option<&GraphSpec> {
        self.graphs
            .iter()
            .find(|g| g.role == role && g.precisions.contains(&precision))
    }

    /// Precisions every role of the package can serve.
    pub fn precisions(&self) -> Vec<Precision> {
        Precision::ALL
            .into_iter()
            .filter(|p| {
                let mut roles = self.graphs.iter().map(|g| g.role.as_str());
                roles.all(|r| self.graph(r, *p).is_some())
            })
            .collect()
    }
}

/// toml errors span several lines (a source excerpt); the runtime reports one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^' || c == ' ')
        })
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const GOOD: &str = r#"
name = "m"
family = "plain"
[input]
size = [64, 32]
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[output]
activation = "sigmoid"
[[graph]]
role = "model"
precisions = ["f32", "f16"]
file = "model.onnx"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
inputs = [{ name = "image", dtype = "f32", shape = [1, 3, 32, 64] }]
outputs = [{ name = "logits", dtype = "f32", shape = [1, 1, 32, 64] }]
"#;

    fn check_err(text: &str, needle: &str) {
        let err = Manifest::parse(text, Path::new("m/model.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "`{err}` lacks `{needle}`");
        assert!(err.starts_with("m/model.toml: "), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn good_manifest_parses_with_defaults() {
        let m = Manifest::parse(GOOD, Path::new("model.toml")).unwrap();
        assert_eq!(m.input.resize, Resize::Stretch);
        assert_eq!(m.output.threshold, 0.5);
        assert_eq!(m.precisions(), vec![Precision::F32, Precision::F16]);
        assert!(m.graph("model", Precision::Int8).is_none());
    }

    #[test]
    fn bad_manifests_name_the_problem() {
        check_err(
            &GOOD.replace("\"plain\"", "\"unet\""),
            "unknown variant `unet`",
        );
        check_err(
            &GOOD.replace("name = \"m\"", "name = \"m\"\ncolour = 1"),
            "unknown field `colour`",
        );
        check_err(&GOOD.replace("[64, 32]", "[0, 32]"), "zero side");
        check_err(
            &GOOD.replace("std = [0.25, 0.25, 0.25]", "std = [0.25, 0.0, 0.25]"),
            "must be positive",
        );
        check_err(
            &GOOD.replace("role = \"model\"", "role = \"text\""),
            "takes graph roles",
        );
        check_err(&GOOD.replace("00000000000000000000", "zz"), "64 hex digits");
        check_err(
            &GOOD
                .replace("family = \"plain\"", "family = \"vlsm\"")
                .replace("\"model\"", "\"joint\""),
            "[prompt]",
        );
    }
}
