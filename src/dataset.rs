//! Labelled frame folders: `samples.jsonl` beside the images and masks, one JSON object per
//! (image, structure) pair. Written by `edgeseg phantoms`, read by `edgeseg eval` and by the
//! model training tools.
//!
//! ```json
//! {"image":"us_0000.png","mask":"us_0000_lesion.png","modality":"ultrasound",
//!  "attributes":{"class":"lesion","shape":"round"},"prompts":{"P1":"lesion","P2":"round lesion"}}
//! ```
//! `prompt` (a literal prompt) or `attributes` (built at a chosen prompt type) says what to
//! segment; `prompts` holds every level pre-built for tools that do not link this crate.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::prompt::{Attributes, PromptType};

/// The index file name inside a dataset folder.
pub const INDEX: &str = "samples.jsonl";

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DatasetError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: no samples")]
    Empty { path: PathBuf },
}

/// One labelled structure in one image.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Image file, relative to the dataset folder.
    pub image: String,
    /// Binary mask file (nonzero = structure), relative to the dataset folder.
    pub mask: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modality: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Attributes>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prompts: BTreeMap<String, String>,
}

impl Sample {
    /// A sample described by attributes, with every prompt level pre-built.
    pub fn from_attributes(
        image: String,
        mask: String,
        modality: &str,
        attributes: Attributes,
    ) -> Sample {
        let prompts = PromptType::all()
            .filter_map(|t| attributes.prompt(t).ok().map(|p| (t.to_string(), p)))
            .collect();
        Sample {
            image,
            mask,
            modality: Some(modality.to_string()),
            prompt: None,
            attributes: Some(attributes),
            prompts,
        }
    }
}

/// Reads `dir/samples.jsonl`.
pub fn read_samples(dir: &Path) -> Result<Vec<Sample>, DatasetError> {
    let path = dir.join(INDEX);
    let text = fs::read_to_string(&path).map_err(|source| DatasetError::Io {
        path: path.clone(),
        source,
    })?;
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let sample = serde_json::from_str(line).map_err(|e| DatasetError::Parse {
            path: path.clone(),
            line: i + 1,
            message: e.to_string(),
        })?;
        samples.push(sample);
    }
    if samples.is_empty() {
        return Err(DatasetError::Empty { path });
    }
    Ok(samples)
}

/// Writes `dir/samples.jsonl`, replacing any previous index.
pub fn write_samples(dir: &Path, samples: &[Sample]) -> Result<(), DatasetError> {
    let path = dir.join(INDEX);
    let io_err = |source| DatasetError::Io {
        path: path.clone(),
        source,
    };
    let mut out = io::BufWriter::new(fs::File::create(&path).map_err(io_err)?);
    for s in samples {
        let line = serde_json::to_string(s).expect("samples serialize");
        writeln!(out, "{line}").map_err(io_err)?;
    }
    out.flush().map_err(io_err)
}
