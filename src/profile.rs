//! Device profiles (`firmware-config/*.toml`): one file says what a deployment runs: its
//! source, model, region of interest, smoothing, display, serial link, files and telemetry.
//!
//! Every table refuses unknown keys, so a typo is an error naming the key and the line rather
//! than a setting silently ignored. Relative paths are taken from the current directory. Every
//! key is documented in `firmware-config/README.md`. Command-line options override the profile
//! through [`Overrides`].

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::display::DisplayConfig;
use crate::model::Precision;
use crate::recording::{FilesConfig, TelemetryConfig};
use crate::roi::RoiConfig;
use crate::serial::SerialConfig;
use crate::smoothing::SmoothingConfig;
use crate::source::SourceConfig;

/// The demo profile `edgeseg run` uses when given none.
pub const DEMO: &str = "firmware-config/demo.toml";

/// A profile that cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProfileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{flag}: {message}")]
    Override { flag: &'static str, message: String },
}

fn one() -> usize {
    1
}

/// `[model]`: which package, precision, threads and prompt.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model package folder; the bundled default when absent.
    pub path: Option<PathBuf>,
    /// `f32`, `f16` or `int8`.
    #[serde(default = "f32")]
    pub precision: Precision,
    /// Threads for the model's matrix products.
    #[serde(default = "one")]
    pub threads: usize,
    /// The text prompt (VLSM models).
    #[serde(default)]
    pub prompt: String,
    /// The task adapter to start with (adapted VLSM packages; default: the package's first).
    #[serde(default)]
    pub adapter: Option<String>,
    /// Where `adapter NAME` lines come from during the run: `stdin` or a file path.
    #[serde(default)]
    pub control: Option<String>,
    /// Task and modality names (conditioned models).
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub modality: Option<String>,
}

fn f32() -> Precision {
    Precision::F32
}

/// `[run]`: when the run stops by itself (Ctrl-C always stops it).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Stop after this many processed frames.
    pub frames: Option<u64>,
    /// Stop after this many seconds.
    pub seconds: Option<f64>,
    /// While running, keep every CPU's idle-state exit latency at or below this many
    /// microseconds (`live::idle`); costs power, needs write access to `/dev/cpu_dma_latency`.
    pub idle_latency_us: Option<u32>,
}

/// One device profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// What the profile is for, shown at start.
    #[serde(default)]
    pub description: String,
    pub source: SourceConfig,
    pub model: ModelConfig,
    #[serde(default)]
    pub roi: RoiConfig,
    #[serde(default)]
    pub smoothing: SmoothingConfig,
    pub display: Option<DisplayConfig>,
    pub serial: Option<SerialConfig>,
    pub files: Option<FilesConfig>,
    pub telemetry: Option<TelemetryConfig>,
    #[serde(default)]
    pub run: RunConfig,
}

impl Profile {
    /// Reads and checks a profile file.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = fs::read_to_string(path).map_err(|source| ProfileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Profile::parse(&text, path)
    }

    /// Parses and checks profile text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Profile, ProfileError> {
        let profile: Profile = toml::from_str(text).map_err(|e| ProfileError::Parse {
            path: path.to_path_buf(),
            message: one_line_toml(&e, text),
        })?;
        let invalid = |message: String| ProfileError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if profile.model.threads == 0 {
            return Err(invalid("model.threads must be at least 1".into()));
        }
        if let Some(s) = profile.run.seconds {
            if !(s.is_finite() && s > 0.0) {
                return Err(invalid(format!(
                    "run.seconds must be a positive number of seconds, not {s}"
                )));
            }
        }
        if profile.run.frames == Some(0) {
            return Err(invalid("run.frames must be at least 1".into()));
        }
        Ok(profile)
    }
}

/// toml's message spans several lines (a snippet with a caret); this keeps the reason and
/// where it is on one line: "line 4 (in [source]): unknown field `fsp`, expected one of …".
fn one_line_toml(e: &toml::de::Error, text: &str) -> String {
    let reason = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else {
        return reason;
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|t| format!(" (in {t})"))
        .unwrap_or_default();
    format!("line {line}{table}: {reason}")
}

/// Command-line settings that replace the profile's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `phantom`, `folder:DIR`, `dicom:FILE`, `raw:WxH:FORMAT` (stdin) or `v4l2:DEVICE`.
    pub source: Option<String>,
    pub model: Option<PathBuf>,
    pub precision: Option<Precision>,
    pub threads: Option<usize>,
    pub prompt: Option<String>,
    pub adapter: Option<String>,
    /// `stdin` or a control file path.
    pub control: Option<String>,
    pub task: Option<String>,
    pub modality: Option<String>,
    /// `none`, `png:DIR`, `fbdev[:DEVICE]` or `drm[:DEVICE]`.
    pub display: Option<String>,
    /// `none` or `PORT[@BAUD]`.
    pub serial: Option<String>,
    pub frames: Option<u64>,
    pub seconds: Option<f64>,
}

impl Profile {
    /// Applies command-line overrides; a malformed value names its flag.
    pub fn apply(&mut self, o: &Overrides) -> Result<(), ProfileError> {
        if let Some(spec) = &o.source {
            self.source = SourceConfig::from_spec(spec).map_err(|e| ProfileError::Override {
                flag: "--source",
                message: e.to_string(),
            })?;
        }
        if let Some(path) = &o.model {
            self.model.path = Some(path.clone());
        }
        if let Some(p) = o.precision {
            self.model.precision = p;
        }
        if let Some(t) = o.threads {
            if t == 0 {
                return Err(ProfileError::Override {
                    flag: "--threads",
                    message: "must be at least 1".into(),
                });
            }
            self.model.threads = t;
        }
        if let Some(p) = &o.prompt {
            self.model.prompt = p.clone();
        }
        for (value, field) in [
            (&o.adapter, &mut self.model.adapter),
            (&o.control, &mut self.model.control),
            (&o.task, &mut self.model.task),
            (&o.modality, &mut self.model.modality),
        ] {
            if value.is_some() {
                field.clone_from(value);
            }
        }
        if let Some(spec) = &o.display {
            self.display = display_override(spec, self.display.take())?;
        }
        if let Some(spec) = &o.serial {
            self.serial = serial_override(spec, self.serial.take())?;
        }
        if o.frames.is_some() || o.seconds.is_some() {
            self.run = RunConfig {
                frames: o.frames,
                seconds: o.seconds,
                ..self.run
            };
        }
        Ok(())
    }
}

fn display_override(
    spec: &str,
    current: Option<DisplayConfig>,
) -> Result<Option<DisplayConfig>, ProfileError> {
    let bad = |message: String| ProfileError::Override {
        flag: "--display",
        message,
    };
    if spec == "none" {
        return Ok(None);
    }
    let (backend, path) = match spec.split_once(':') {
        Some((b, p)) => (b, Some(PathBuf::from(p))),
        None => (spec, None),
    };
    let table = format!("backend = {backend:?}");
    let fresh: DisplayConfig = toml::from_str(&table).map_err(|_| {
        bad(format!(
            "`{spec}` is not none, png:DIR, fbdev[:DEVICE] or drm[:DEVICE]"
        ))
    })?;
    let mut config = current.unwrap_or_else(|| fresh.clone());
    config.backend = fresh.backend;
    config.path = path;
    Ok(Some(config))
}

fn serial_override(
    spec: &str,
    current: Option<SerialConfig>,
) -> Result<Option<SerialConfig>, ProfileError> {
    if spec == "none" {
        return Ok(None);
    }
    let (port, baud) = match spec.rsplit_once('@') {
        Some((port, baud)) => {
            let baud = baud.parse().map_err(|_| ProfileError::Override {
                flag: "--serial",
                message: format!("`{baud}` in `{spec}` is not a baud rate (PORT@BAUD)"),
            })?;
            (port, Some(baud))
        }
        None => (spec, None),
    };
    let mut config = current.unwrap_or_else(|| SerialConfig::new(port));
    config.port = PathBuf::from(port);
    config.loopback_log = None;
    if let Some(b) = baud {
        config.baud = b;
    }
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::display::Backend;

    const MINIMAL: &str = "[source]\nkind = \"phantom\"\n\n[model]\nprompt = \"lesion\"\n";

    fn parse(text: &str) -> Result<Profile, ProfileError> {
        Profile::parse(text, Path::new("p.toml"))
    }

    #[test]
    fn every_shipped_profile_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-config");
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let profile = Profile::load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(!profile.description.is_empty(), "{}", path.display());
                assert!(!profile.model.prompt.is_empty(), "{}", path.display());
                names.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
        names.sort();
        assert_eq!(
            names,
            [
                "demo.toml",
                "endoscopy-tower.toml",
                "jetson-orin-nano-pocus.toml",
                "rpi5-cpu.toml"
            ]
        );
    }

    #[test]
    fn defaults_fill_what_a_minimal_profile_leaves_out() {
        let p = parse(MINIMAL).unwrap();
        assert_eq!(p.model.precision, Precision::F32);
        assert_eq!(p.model.threads, 1);
        assert!(p.display.is_none() && p.serial.is_none() && p.telemetry.is_none());
        assert_eq!(p.run, RunConfig::default());
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line_and_table() {
        let text = MINIMAL.replace("kind = \"phantom\"", "kind = \"phantom\"\nfsp = 30");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("p.toml: line 3 (in [source]): "), "{e}");
        assert!(e.contains("unknown field `fsp`"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn bad_values_name_the_key_and_the_problem() {
        let e = parse(&format!("{MINIMAL}precision = \"f64\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 6 (in [model])") && e.contains("`f64`"),
            "{e}"
        );
        let e = parse(&format!("{MINIMAL}threads = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.threads must be at least 1"), "{e}");
        let e = parse(&format!("{MINIMAL}[run]\nseconds = -1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("run.seconds"), "{e}");
        let e = parse("[model]\nprompt = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("missing field `source`"), "{e}");
    }

    #[test]
    fn overrides_replace_only_what_they_name() {
        let text = format!(
            "{MINIMAL}[display]\nbackend = \"png\"\npath = \"a\"\nevery = 5\n\n\
             [serial]\nport = \"x/tty\"\nloopback_log = \"x/log\"\nheartbeat_ms = 250\n\n\
             [run]\nseconds = 9\nidle_latency_us = 0\n"
        );
        let mut p = parse(&text).unwrap();
        p.apply(&Overrides {
            display: Some("png:b".into()),
            serial: Some("/dev/ttyUSB1@9600".into()),
            prompt: Some("polyp".into()),
            frames: Some(3),
            ..Overrides::default()
        })
        .unwrap();
        let d = p.display.as_ref().unwrap();
        assert_eq!(
            (d.backend, d.path.as_deref(), d.every),
            (Backend::Png, Some(Path::new("b")), 5)
        );
        let s = p.serial.as_ref().unwrap();
        assert_eq!(s.port, Path::new("/dev/ttyUSB1"));
        assert_eq!(
            (s.baud, s.heartbeat_ms, s.loopback_log.is_none()),
            (9600, 250, true)
        );
        assert_eq!(p.model.prompt, "polyp");
        assert_eq!(
            (p.run.frames, p.run.seconds, p.run.idle_latency_us),
            (Some(3), None, Some(0))
        );

        p.apply(&Overrides {
            display: Some("none".into()),
            serial: Some("none".into()),
            ..Overrides::default()
        })
        .unwrap();
        assert!(p.display.is_none() && p.serial.is_none());
    }

    #[test]
    fn bad_overrides_name_their_flag() {
        let mut p = parse(MINIMAL).unwrap();
        for (o, flag) in [
            (
                Overrides {
                    display: Some("hdmi".into()),
                    ..Overrides::default()
                },
                "--display",
            ),
            (
                Overrides {
                    serial: Some("/dev/ttyS0@fast".into()),
                    ..Overrides::default()
                },
                "--serial",
            ),
            (
                Overrides {
                    source: Some("camera".into()),
                    ..Overrides::default()
                },
                "--source",
            ),
            (
                Overrides {
                    threads: Some(0),
                    ..Overrides::default()
                },
                "--threads",
            ),
        ] {
            let e = p.apply(&o).unwrap_err().to_string();
            assert!(e.starts_with(flag), "{e}");
        }
    }
}
