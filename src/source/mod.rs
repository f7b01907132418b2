//! Live frame sources behind one trait: where the frames of a live run come from.
//!
//! Every source implements [`Source`]: `next_frame` waits until the next frame is due and
//! returns it, `Ok(None)` when the source has ended for good, or an error for one frame that
//! failed (the caller reports it and calls again). The sources:
//!
//! | kind | type | frames |
//! |---|---|---|
//! | `phantom` | [`PhantomSource`] | procedural ultrasound/endoscopy phantoms from a ring generated at open, 30 fps by default |
//! | `folder` | [`FolderSource`] | the image and DICOM files of a folder (or a list of files) in name order, every frame of a multi-frame file |
//! | `dicom` | [`DicomCineSource`] | a multi-frame DICOM cine loop at its own frame time |
//! | `raw` | [`RawSource`] | fixed-size raw frames (`gray8`, `rgb24`, `yuyv`) on a reader, e.g. stdin |
//! | `v4l2` | [`V4l2Source`] | a V4L2 capture device (YUYV, MJPEG, GREY, RGB24), reopened with back-off when it fails |
//!
//! A source is described by a [`SourceConfig`] (a TOML/JSON table or a CLI spec, see
//! [`SourceConfig::from_spec`]) and built by [`open`], which checks the configuration first.
//! Paced sources share [`pacing::Pacer`]: waits sleep in short slices and end within
//! [`pacing::STOP_CHECK_INTERVAL`] once the stop flag is set; a late frame re-anchors the
//! schedule rather than causing a burst. [`pixel`] converts device and raw pixel formats to
//! RGB8.

pub mod dicom;
pub mod folder;
pub mod pacing;
pub mod phantom;
pub mod pixel;
pub mod raw;
pub mod v4l2;

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::frame::Frame;
use crate::input::InputError;
use crate::phantom::PhantomError;

pub use dicom::DicomCineSource;
pub use folder::FolderSource;
pub use phantom::{PhantomModality, PhantomSource};
pub use pixel::{PixelError, PixelFormat};
pub use raw::{RawFormat, RawSource};
pub use v4l2::{V4l2Settings, V4l2Source};

/// A live source of frames.
pub trait Source: Send {
    /// What this source is, for logs ("folder samples/ at 30 fps, looping").
    fn describe(&self) -> String;

    /// Waits until the next frame is due (pacing) and returns it; `Ok(None)` when the source
    /// has ended for good. `Err(e)` means this frame failed (a corrupt file, a device that
    /// vanished): the caller reports it and calls again; a device source reopens its device on
    /// a later call. Waits end promptly (within [`pacing::STOP_CHECK_INTERVAL`]) once `stop`
    /// is set, returning `Ok(None)`; the one exception is a read that blocks on a silent
    /// writer ([`RawSource`] on stdin), which no flag can interrupt.
    fn next_frame(&mut self, stop: &AtomicBool) -> Result<Option<Frame>, SourceError>;
}

/// Why a source could not be opened, or why one frame failed. Every variant names the file,
/// device, stream or configuration key at fault.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SourceError {
    /// A configuration value that cannot be used.
    #[error("source configuration: `{key}` {reason}")]
    Config {
        /// The key at fault, as written in the configuration.
        key: &'static str,
        reason: String,
    },
    /// A `--source` spec that cannot be parsed.
    #[error("source spec {spec:?}: {reason}")]
    Spec { spec: String, reason: String },
    /// A folder that cannot be listed.
    #[error("{}: cannot list folder: {source}", path.display())]
    Folder {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A folder (or list) without any image or DICOM file.
    #[error("{}: no image or DICOM files ({})", path.display(), folder::LISTED_FILES)]
    NoFiles { path: PathBuf },
    /// A file list without any file.
    #[error("the list of files to play is empty")]
    EmptyList,
    /// A file that could not become frames (names the file).
    #[error(transparent)]
    Input(#[from] InputError),
    /// A `dicom` source given a file that is not DICOM.
    #[error("{}: not a DICOM file (an image file belongs in a `folder` source)", path.display())]
    NotDicom { path: PathBuf },
    /// A raw stream that could not be opened or read.
    #[error("{origin}: cannot read raw frame {frame}: {source}")]
    RawRead {
        /// `stdin` or the file's path.
        origin: String,
        /// Zero-based index of the frame being read.
        frame: u64,
        #[source]
        source: io::Error,
    },
    /// A raw stream that ended inside a frame.
    #[error(
        "{origin}: stream ended inside raw frame {frame}: got {got} of {expected} bytes; the \
         partial frame is dropped"
    )]
    RawTruncated {
        origin: String,
        frame: u64,
        got: usize,
        expected: usize,
    },
    /// Bytes from a raw stream or a device that do not convert to a frame.
    #[error("{origin}: frame {frame}: {source}")]
    Pixels {
        /// `stdin`, a file path or a device path.
        origin: String,
        frame: u64,
        #[source]
        source: PixelError,
    },
    /// Phantom generation failed (a size out of range).
    #[error("phantom source: {0}")]
    Phantom(#[from] PhantomError),
    /// A V4L2 device that could not be opened, configured or read.
    #[error("{}: cannot {action}: {source}", device.display())]
    Device {
        device: PathBuf,
        /// What was being done, e.g. `open V4L2 device`.
        action: &'static str,
        #[source]
        source: io::Error,
    },
    /// A V4L2 device that opened but cannot serve this source (not a capture device, a pixel
    /// format this build cannot convert, a frame the driver marked corrupt).
    #[error("{}: {reason}", device.display())]
    DeviceFormat { device: PathBuf, reason: String },
}

/// Which kind of source a [`SourceConfig`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Procedural phantoms ([`PhantomSource`]).
    Phantom,
    /// The image and DICOM files of a folder, or one file ([`FolderSource`]).
    Folder,
    /// A DICOM cine loop ([`DicomCineSource`]).
    Dicom,
    /// Raw frames on stdin or a file/FIFO ([`RawSource`]).
    Raw,
    /// A V4L2 capture device ([`V4l2Source`]).
    V4l2,
}

impl SourceKind {
    /// The name used in configurations and specs.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Phantom => "phantom",
            SourceKind::Folder => "folder",
            SourceKind::Dicom => "dicom",
            SourceKind::Raw => "raw",
            SourceKind::V4l2 => "v4l2",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Phantom frame size when the configuration gives none.
pub const DEFAULT_PHANTOM_SIZE: (u32, u32) = (320, 240);

/// Phantom frame rate when the configuration gives none.
pub const DEFAULT_PHANTOM_FPS: f64 = 30.0;

/// V4L2 capture size when the configuration gives none.
pub const DEFAULT_V4L2_SIZE: (u32, u32) = (640, 480);

/// V4L2 pixel format when the configuration gives none.
pub const DEFAULT_V4L2_FORMAT: PixelFormat = PixelFormat::Yuyv;

/// The `path` that means standard input for a `raw` source.
pub const STDIN_PATH: &str = "-";

/// Where frames come from, as written in a configuration file (the `[source]` table) or built
/// by [`SourceConfig::from_spec`]. Keys that do not apply to the `kind` are errors, so a typo
/// or a misplaced key never goes unnoticed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `phantom`, `folder`, `dicom`, `raw` or `v4l2`.
    pub kind: SourceKind,
    /// The folder or file (`folder`), the DICOM file (`dicom`), the stream (`raw`: `-` for
    /// stdin, else a file or FIFO) or the capture device (`v4l2`, e.g. `/dev/video0`).
    /// Required for every kind but `phantom`, which takes none.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Frames per second, in (0, 1000]. Absent: `phantom` runs at 30 fps, `dicom` at the
    /// file's own frame time (as fast as possible if it records none), `folder` and `raw` as
    /// fast as possible, `v4l2` at the device's current rate (a given rate is requested from
    /// the driver).
    #[serde(default)]
    pub fps: Option<f64>,
    /// Start again after the last frame (`folder`, `dicom`); false by default.
    #[serde(default, rename = "loop")]
    pub looping: bool,
    /// Frame width in pixels: required for `raw`; `phantom` defaults to 320, `v4l2` to 640.
    #[serde(default)]
    pub width: Option<u32>,
    /// Frame height in pixels: required for `raw`; `phantom` defaults to 240, `v4l2` to 480.
    #[serde(default)]
    pub height: Option<u32>,
    /// Pixel format: `gray8` (or `grey`), `rgb24` or `yuyv` for `raw` (required); those or
    /// `mjpeg` for `v4l2` (default `yuyv`).
    #[serde(default)]
    pub format: Option<PixelFormat>,
    /// Phantom modality: `ultrasound`, `endoscopy` or `alternate` (the default).
    #[serde(default)]
    pub modality: Option<PhantomModality>,
    /// Phantom seed (default 0); the same seed gives the same frames.
    #[serde(default)]
    pub seed: Option<u64>,
}

impl SourceConfig {
    /// A configuration of `kind` with every optional key absent.
    pub fn new(kind: SourceKind) -> SourceConfig {
        SourceConfig {
            kind,
            path: None,
            fps: None,
            looping: false,
            width: None,
            height: None,
            format: None,
            modality: None,
            seed: None,
        }
    }

    /// Parses a command-line source spec:
    ///
    /// | spec | source |
    /// |---|---|
    /// | `phantom`, `phantom:ultrasound`, `phantom:endoscopy`, `phantom:alternate` | phantoms at 30 fps, 320×240 |
    /// | `folder:DIR` (or `folder:FILE`) | the folder's image and DICOM files once, as fast as possible |
    /// | `dicom:FILE` | a DICOM cine at its own frame time, once |
    /// | `raw:WxH:FORMAT` | raw frames on stdin, FORMAT `gray8`, `rgb24` or `yuyv` |
    /// | `v4l2:DEVICE` | a V4L2 device (e.g. `v4l2:/dev/video0`), 640×480 YUYV |
    ///
    /// Paths are taken verbatim after the first `:` (they may contain `:`). Rate, looping and
    /// the other keys come from the configuration file, or can be set on the result.
    pub fn from_spec(spec: &str) -> Result<SourceConfig, SourceError> {
        let bad = |reason: String| SourceError::Spec {
            spec: spec.to_string(),
            reason,
        };
        let (kind, rest) = match spec.split_once(':') {
            Some((kind, rest)) => (kind, Some(rest)),
            None => (spec, None),
        };
        let needs_path = |what: &str| -> Result<PathBuf, SourceError> {
            match rest {
                Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
                _ => Err(bad(format!("expected {kind}:{what}"))),
            }
        };
        let config = match kind {
            "phantom" => {
                let mut config = SourceConfig::new(SourceKind::Phantom);
                if let Some(modality) = rest {
                    config.modality = Some(modality.parse().map_err(bad)?);
                }
                config
            }
            "folder" => SourceConfig {
                path: Some(needs_path("DIR")?),
                ..SourceConfig::new(SourceKind::Folder)
            },
            "dicom" => SourceConfig {
                path: Some(needs_path("FILE")?),
                ..SourceConfig::new(SourceKind::Dicom)
            },
            "raw" => {
                let format: RawFormat = rest
                    .ok_or_else(|| bad("expected raw:WxH:FORMAT, e.g. raw:640x480:yuyv".into()))?
                    .parse()
                    .map_err(bad)?;
                SourceConfig {
                    path: Some(PathBuf::from(STDIN_PATH)),
                    width: Some(format.width()),
                    height: Some(format.height()),
                    format: Some(format.format()),
                    ..SourceConfig::new(SourceKind::Raw)
                }
            }
            "v4l2" => SourceConfig {
                path: Some(needs_path("DEVICE")?),
                ..SourceConfig::new(SourceKind::V4l2)
            },
            _ => {
                return Err(bad(format!(
                    "unknown source kind {kind:?} (expected phantom, folder:DIR, dicom:FILE, \
                     raw:WxH:FORMAT or v4l2:DEVICE)"
                )))
            }
        };
        Ok(config)
    }

    /// The checked frame interval: `fps` converted, or `None` when absent.
    fn interval(&self) -> Result<Option<Duration>, SourceError> {
        self.fps
            .map(|fps| {
                pacing::interval_from_fps(fps).ok_or_else(|| SourceError::Config {
                    key: "fps",
                    reason: format!(
                        "is {fps}, expected a number of frames per second in (0, {}]",
                        pacing::MAX_FPS
                    ),
                })
            })
            .transpose()
    }

    /// Rejects keys that the kind does not use.
    fn reject_unused(&self, used: &[&str]) -> Result<(), SourceError> {
        let set = [
            ("path", self.path.is_some()),
            ("loop", self.looping),
            ("width", self.width.is_some()),
            ("height", self.height.is_some()),
            ("format", self.format.is_some()),
            ("modality", self.modality.is_some()),
            ("seed", self.seed.is_some()),
        ];
        match set
            .iter()
            .find(|(key, present)| *present && !used.contains(key))
        {
            Some(&(key, _)) => Err(SourceError::Config {
                key,
                reason: format!("does not apply to a {} source", self.kind),
            }),
            None => Ok(()),
        }
    }

    /// The required `path`.
    fn path(&self) -> Result<&Path, SourceError> {
        self.path.as_deref().ok_or_else(|| SourceError::Config {
            key: "path",
            reason: format!("is required for a {} source", self.kind),
        })
    }

    /// `width` and `height`, both given or both absent (then `default`, if any).
    fn size(&self, default: Option<(u32, u32)>) -> Result<(u32, u32), SourceError> {
        let missing = |key| SourceError::Config {
            key,
            reason: match default {
                Some(_) => "is missing: give both width and height, or neither".to_string(),
                None => format!("is required for a {} source", self.kind),
            },
        };
        match (self.width, self.height, default) {
            (Some(w), Some(h), _) => Ok((w, h)),
            (None, None, Some(size)) => Ok(size),
            (None, _, _) => Err(missing("width")),
            (Some(_), None, _) => Err(missing("height")),
        }
    }
}

/// Checks `config` and opens the source it describes.
///
/// Errors name the key at fault (a `raw` source without `width`, `fps = 0`, `seed` on a
/// `folder` source) or the file or device that could not be opened. A `v4l2` device is opened
/// here once, so a wrong device path fails at start; later failures are retried by the
/// source itself.
pub fn open(config: &SourceConfig) -> Result<Box<dyn Source>, SourceError> {
    let interval = config.interval()?;
    match config.kind {
        SourceKind::Phantom => {
            config.reject_unused(&["width", "height", "modality", "seed"])?;
            let (width, height) = config.size(Some(DEFAULT_PHANTOM_SIZE))?;
            let interval = interval.or(pacing::interval_from_fps(DEFAULT_PHANTOM_FPS));
            Ok(Box::new(PhantomSource::new(
                config.modality.unwrap_or(PhantomModality::Alternate),
                width,
                height,
                config.seed.unwrap_or(0),
                interval,
            )?))
        }
        SourceKind::Folder => {
            config.reject_unused(&["path", "loop"])?;
            let path = config.path()?;
            let source = if path.is_file() {
                FolderSource::from_files(vec![path.to_path_buf()], interval, config.looping)?
            } else {
                FolderSource::from_dir(path, interval, config.looping)?
            };
            Ok(Box::new(source))
        }
        SourceKind::Dicom => {
            config.reject_unused(&["path", "loop"])?;
            Ok(Box::new(DicomCineSource::open(
                config.path()?,
                interval,
                config.looping,
            )?))
        }
        SourceKind::Raw => {
            config.reject_unused(&["path", "width", "height", "format"])?;
            let path = config.path()?;
            let (width, height) = config.size(None)?;
            let format = config.format.ok_or_else(|| SourceError::Config {
                key: "format",
                reason: "is required for a raw source (gray8, rgb24 or yuyv)".to_string(),
            })?;
            let format = RawFormat::new(width, height, format).map_err(|reason| {
                if format == PixelFormat::Mjpeg {
                    SourceError::Config {
                        key: "format",
                        reason: format!("cannot be used: {reason}"),
                    }
                } else {
                    SourceError::Config {
                        key: "width",
                        reason: format!("and `height` ({width}x{height}) cannot be used: {reason}"),
                    }
                }
            })?;
            if path == Path::new(STDIN_PATH) {
                Ok(Box::new(RawSource::new(
                    io::stdin(),
                    "stdin",
                    format,
                    interval,
                )))
            } else {
                let origin = path.display().to_string();
                let file = File::open(path).map_err(|source| SourceError::RawRead {
                    origin: origin.clone(),
                    frame: 0,
                    source,
                })?;
                Ok(Box::new(RawSource::new(file, origin, format, interval)))
            }
        }
        SourceKind::V4l2 => {
            config.reject_unused(&["path", "width", "height", "format"])?;
            let (width, height) = config.size(Some(DEFAULT_V4L2_SIZE))?;
            let settings = V4l2Settings {
                device: config.path()?.to_path_buf(),
                width,
                height,
                format: config.format.unwrap_or(DEFAULT_V4L2_FORMAT),
                interval,
            };
            Ok(Box::new(V4l2Source::open(settings)?))
        }
    }
}

/// `at 30 fps` or `as fast as possible`, for descriptions.
fn rate_text(interval: Option<Duration>) -> String {
    match interval {
        Some(interval) if !interval.is_zero() => {
            let fps = (100.0 / interval.as_secs_f64()).round() / 100.0;
            format!("at {fps} fps")
        }
        _ => "as fast as possible".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_err(config: &SourceConfig) -> (&'static str, String) {
        match open(config) {
            Err(SourceError::Config { key, reason }) => (key, reason),
            Err(other) => panic!("expected a config error, got {other}"),
            Ok(source) => panic!("expected a config error, opened {}", source.describe()),
        }
    }

    #[test]
    fn specs_parse_to_configs() {
        let phantom = SourceConfig::from_spec("phantom").unwrap();
        assert_eq!(phantom, SourceConfig::new(SourceKind::Phantom));
        let us = SourceConfig::from_spec("phantom:ultrasound").unwrap();
        assert_eq!(us.modality, Some(PhantomModality::Ultrasound));
        let folder = SourceConfig::from_spec("folder:C:/frames").unwrap();
        assert_eq!(folder.path, Some(PathBuf::from("C:/frames")));
        assert_eq!(folder.kind, SourceKind::Folder);
        let dicom = SourceConfig::from_spec("dicom:cine.dcm").unwrap();
        assert_eq!(dicom.kind, SourceKind::Dicom);
        let raw = SourceConfig::from_spec("raw:640x480:yuyv").unwrap();
        assert_eq!(
            (raw.path.as_deref(), raw.width, raw.height, raw.format),
            (
                Some(Path::new("-")),
                Some(640),
                Some(480),
                Some(PixelFormat::Yuyv)
            )
        );
        let v4l2 = SourceConfig::from_spec("v4l2:/dev/video0").unwrap();
        assert_eq!(v4l2.path, Some(PathBuf::from("/dev/video0")));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, needle) in [
            ("camera", "unknown source kind \"camera\""),
            ("folder", "expected folder:DIR"),
            ("folder:", "expected folder:DIR"),
            ("raw", "expected raw:WxH:FORMAT"),
            ("raw:640:yuyv", "640"),
            ("raw:640x480:nv12", "nv12"),
            ("phantom:xray", "xray"),
            ("v4l2", "expected v4l2:DEVICE"),
        ] {
            let err = SourceConfig::from_spec(spec).unwrap_err().to_string();
            assert!(err.contains(needle), "{spec}: {err}");
            assert!(err.contains(&format!("{spec:?}")), "{spec}: {err}");
        }
    }

    #[test]
    fn toml_configs_deserialize_and_unknown_keys_are_refused() {
        let config: SourceConfig = toml::from_str(
            "kind = \"raw\"\npath = \"-\"\nwidth = 4\nheight = 2\nformat = \"GREY\"\nfps = 25",
        )
        .unwrap();
        assert_eq!(config.format, Some(PixelFormat::Gray8));
        assert_eq!(config.fps, Some(25.0));
        let looped: SourceConfig =
            toml::from_str("kind = \"folder\"\npath = \"x\"\nloop = true").unwrap();
        assert!(looped.looping);
        let err = toml::from_str::<SourceConfig>("kind = \"folder\"\nfolder = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `folder`"), "{err}");
        let err = toml::from_str::<SourceConfig>("kind = \"raw\"\nformat = \"nv12\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nv12"), "{err}");
        let err = toml::from_str::<SourceConfig>("kind = \"webcam\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("webcam"), "{err}");
    }

    #[test]
    fn open_names_the_key_at_fault() {
        let raw = SourceConfig {
            path: Some("-".into()),
            height: Some(2),
            format: Some(PixelFormat::Gray8),
            ..SourceConfig::new(SourceKind::Raw)
        };
        let (key, reason) = config_err(&raw);
        assert_eq!(key, "width");
        assert!(reason.contains("required for a raw source"), "{reason}");

        let no_format = SourceConfig {
            width: Some(4),
            format: None,
            ..raw.clone()
        };
        assert_eq!(config_err(&no_format).0, "format");

        let mjpeg = SourceConfig {
            width: Some(4),
            format: Some(PixelFormat::Mjpeg),
            ..raw.clone()
        };
        let (key, reason) = config_err(&mjpeg);
        assert_eq!(key, "format");
        assert!(reason.contains("mjpeg"), "{reason}");

        let odd = SourceConfig {
            width: Some(3),
            format: Some(PixelFormat::Yuyv),
            ..raw.clone()
        };
        assert!(config_err(&odd).1.contains("even width"));

        let fps = SourceConfig {
            fps: Some(0.0),
            ..SourceConfig::new(SourceKind::Phantom)
        };
        let (key, reason) = config_err(&fps);
        assert_eq!(key, "fps");
        assert!(reason.contains("is 0"), "{reason}");

        let seed = SourceConfig {
            path: Some("frames".into()),
            seed: Some(3),
            ..SourceConfig::new(SourceKind::Folder)
        };
        let (key, reason) = config_err(&seed);
        assert_eq!(key, "seed");
        assert_eq!(reason, "does not apply to a folder source");

        let no_path = SourceConfig::new(SourceKind::Dicom);
        assert_eq!(config_err(&no_path).0, "path");

        let half = SourceConfig {
            width: Some(64),
            ..SourceConfig::new(SourceKind::Phantom)
        };
        let (key, reason) = config_err(&half);
        assert_eq!(key, "height");
        assert!(reason.contains("both"), "{reason}");

        let looping_phantom = SourceConfig {
            looping: true,
            ..SourceConfig::new(SourceKind::Phantom)
        };
        assert_eq!(config_err(&looping_phantom).0, "loop");
    }

    #[test]
    fn rate_text_reads_well() {
        assert_eq!(rate_text(Some(Duration::from_millis(20))), "at 50 fps");
        assert_eq!(
            rate_text(Some(Duration::from_secs_f64(0.0333))),
            "at 30.03 fps"
        );
        assert_eq!(rate_text(None), "as fast as possible");
    }
}
