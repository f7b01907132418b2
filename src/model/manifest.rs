//! The `model.toml` manifest of a model package, as plain serde data. Unknown keys are errors;
//! [`Manifest::parse`] checks what serde cannot (sizes, normalisation, graph roles per family)
//! so the rest of the runtime can trust every field.

use std::collections::BTreeMap;

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
    /// Class names, one per logit plane (class 0 the background under softmax); optional.
    #[serde(default)]
    pub labels: Vec<String>,
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

/// How a volume's intensities are normalised (after resampling, over the whole volume).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeNormalize {
    /// `(v - mean) / std` of the volume.
    Zscore,
    /// Clip to `window = [low, high]`, then map to 0..1.
    Window,
    /// Clip to the volume's `percentiles = [low, high]`, then map to 0..1.
    Percentile,
}

/// Volume settings of a `sam3d` package: the model's voxel grid and intensity normalisation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// Millimetres per voxel of the model grid, x y z.
    pub spacing: [f64; 3],
    pub normalize: VolumeNormalize,
    #[serde(default)]
    pub window: Option<[f64; 2]>,
    #[serde(default)]
    pub percentiles: Option<[f64; 2]>,
    /// Overlap of neighbouring sliding-window patches, as a fraction of the patch.
    #[serde(default = "default_overlap")]
    pub overlap: f64,
}

fn default_overlap() -> f64 {
    0.5
}

/// Name → id tables of a `conditioned` package.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditioningSpec {
    pub tasks: BTreeMap<String, i64>,
    pub modalities: BTreeMap<String, i64>,
}

/// One task adapter of an adapted VLSM package: a file of tensors for the graphs' `adapter.*`
/// inputs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterSpec {
    pub name: String,
    pub file: String,
    pub sha256: String,
    #[serde(default)]
    pub description: String,
}

/// Graph inputs with this prefix are adapter tensors.
pub const ADAPTER_PREFIX: &str = "adapter.";

/// A parsed and checked `model.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub family: Family,
    #[serde(default)]
    pub description: String,
    /// Frame preprocessing; every family but `sam3d` has it (checked at parse).
    #[serde(default)]
    pub input: Option<InputSpec>,
    pub output: OutputSpec,
    #[serde(default)]
    pub prompt: Option<PromptSpec>,
    #[serde(default)]
    pub volume: Option<VolumeSpec>,
    #[serde(default)]
    pub conditioning: Option<ConditioningSpec>,
    #[serde(default, rename = "adapter")]
    pub adapters: Vec<AdapterSpec>,
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
        let family = m.family.as_str();
        match (&m.input, m.family) {
            (Some(_), Family::Sam3d) => {
                return Err(invalid("family `sam3d` takes [volume], not [input]".into()))
            }
            (None, Family::Sam3d) => {}
            (None, _) => return Err(invalid(format!("family `{family}` needs an [input] table"))),
            (Some(input), _) => {
                let [w, h] = input.size;
                if w == 0 || h == 0 {
                    return Err(invalid(format!("input.size {w}x{h} has a zero side")));
                }
                if input.std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
                    return Err(invalid(format!(
                        "input.std {:?} must be positive",
                        input.std
                    )));
                }
            }
        }
        match (&m.volume, m.family) {
            (None, Family::Sam3d) => {
                return Err(invalid("family `sam3d` needs a [volume] table".into()))
            }
            (Some(v), Family::Sam3d) => v.check().map_err(invalid)?,
            (Some(_), _) => return Err(invalid(format!("family `{family}` takes no [volume]"))),
            (None, _) => {}
        }
        match (&m.conditioning, m.family) {
            (None, Family::Conditioned) => {
                return Err(invalid(
                    "family `conditioned` needs a [conditioning] table".into(),
                ))
            }
            (Some(c), Family::Conditioned) => {
                if c.tasks.is_empty() || c.modalities.is_empty() {
                    return Err(invalid(
                        "[conditioning] needs at least one task and one modality".into(),
                    ));
                }
            }
            (Some(_), _) => {
                return Err(invalid(format!(
                    "family `{family}` takes no [conditioning]"
                )))
            }
            (None, _) => {}
        }
        if !m.adapters.is_empty() && m.family != Family::Vlsm {
            return Err(invalid(format!(
                "family `{family}` takes no [[adapter]] entries"
            )));
        }
        for (ix, a) in m.adapters.iter().enumerate() {
            if !is_sha256(&a.sha256) {
                return Err(invalid(format!(
                    "adapter `{}`: sha256 is not 64 hex digits",
                    a.name
                )));
            }
            if m.adapters[..ix].iter().any(|b| b.name == a.name) {
                return Err(invalid(format!("adapter `{}` is listed twice", a.name)));
            }
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
            if !is_sha256(&g.sha256) {
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

    /// The frame preprocessing of a 2D family.
    ///
    /// # Panics
    /// On a `sam3d` manifest, which has none; [`Manifest::parse`] guarantees every other family
    /// has one.
    pub fn input(&self) -> &InputSpec {
        self.input
            .as_ref()
            .expect("2D families have [input] (checked at parse)")
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

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl VolumeSpec {
    fn check(&self) -> Result<(), String> {
        if self.spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(format!(
                "volume.spacing {:?} must be positive millimetres",
                self.spacing
            ));
        }
        if !(0.0..=0.9).contains(&self.overlap) {
            return Err(format!("volume.overlap {} is outside 0..0.9", self.overlap));
        }
        let ordered = |pair: Option<[f64; 2]>, key: &str, range: Option<(f64, f64)>| match pair {
            None => Err(format!(
                "volume.normalize = \"{key}\" needs volume.{}",
                if key == "window" {
                    "window"
                } else {
                    "percentiles"
                }
            )),
            Some([lo, hi]) if !(lo.is_finite() && hi.is_finite() && lo < hi) => Err(format!(
                "volume bounds [{lo}, {hi}] must be finite with low < high"
            )),
            Some([lo, hi]) if range.is_some_and(|(a, b)| lo < a || hi > b) => Err(format!(
                "volume.percentiles [{lo}, {hi}] must lie in 0..100"
            )),
            Some(_) => Ok(()),
        };
        match self.normalize {
            VolumeNormalize::Zscore => Ok(()),
            VolumeNormalize::Window => ordered(self.window, "window", None),
            VolumeNormalize::Percentile => {
                ordered(self.percentiles, "percentile", Some((0.0, 100.0)))
            }
        }
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
        assert_eq!(m.input().resize, Resize::Stretch);
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
