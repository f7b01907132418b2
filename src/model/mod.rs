//! Model packages and the engine that runs them: [`manifest`] (the `model.toml` data),
//! [`package`] (finding, hashing and checking packages), [`engine`] (tract: load, check the
//! graph contract, optimise, run) and the families built on them: [`vlsm`] (text prompts,
//! with task adapters), [`sam`] (clicks and boxes), [`dense`] (plain and
//! task/modality-conditioned), [`sam3d`] (volumes and 3D clicks).

pub mod broadcast;
pub mod conv;
pub mod dense;
pub mod depthwise;
pub mod engine;
pub mod frame_model;
pub mod manifest;
pub mod norm;
pub mod package;
pub mod pool;
pub mod quantize;
pub mod rewrite;
pub mod sam;
pub mod sam3d;
pub mod softmax;
#[cfg(test)]
mod testing;
pub mod vlsm;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use serde::Deserialize;
use thiserror::Error;

pub use dense::{Condition, Dense, DenseSession};
pub use engine::{Graph, GraphRuns, Session};
pub use frame_model::{FrameModel, Request, Segmented};
pub use manifest::{DType, Family, GraphSpec, Manifest, TensorSpec};
pub use package::Package;
pub use sam::{Click, Sam, SamPrompt, SamResult, SamSession};
pub use sam3d::{Sam3d, Sam3dSession, VolumeTimings};
pub use vlsm::{FrameResult, Vlsm, VlsmSession};

/// Milliseconds since `start`.
pub(crate) fn elapsed_ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// Numeric precision a model runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F16,
    Int8,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::F16, Precision::Int8];

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Int8 => "int8",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Precision::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown precision `{s}` (expected f32, f16 or int8)"))
    }
}

/// Errors loading, checking or running a model. Every variant names the file or tensor at fault.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{path}: sha256 is {found}, manifest expects {expected}")]
    Hash {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("{path}: not a loadable ONNX graph: {message}")]
    Onnx { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Contract { path: PathBuf, message: String },
    #[error("model `{model}` has no {precision} graph for role `{role}` (it serves {available})")]
    Precision {
        model: String,
        role: String,
        precision: Precision,
        available: String,
    },
    #[error("model `{model}` is family `{found}`, this operation needs `{expected}`")]
    Family {
        model: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{0}")]
    Prompt(String),
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error("{path}: inference failed: {message}")]
    Run { path: PathBuf, message: String },
}
