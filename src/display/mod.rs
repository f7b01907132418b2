//! The display sink: draws each processed frame with its mask, the prompt and a status line
//! (fps, latency) onto a [`Canvas`] with embedded-graphics, and shows it on a [`Screen`].
//!
//! Back ends ([`Backend`]):
//! - `png`: snapshots every N-th frame into a directory ([`png`]); used by tests and demos.
//! - `fbdev`: a Linux framebuffer such as `/dev/fb0`, RGB565 or XRGB8888 ([`fbdev`]).
//! - `drm`: a DRM/KMS dumb buffer on `/dev/dri/card0` ([`drm`]), the display path of Jetson
//!   boards and of the Raspberry Pi's KMS driver.
//! - `none`: no display; the sink accepts frames and draws nothing.
//!
//! The canvas has the configured size, else the screen's mode (fbdev, drm), else the frame's
//! size (png). Frames are fitted into it with their aspect ratio kept ([`mod@render`]).
//!
//! The device back ends are opened once, when the sink is opened; a failed write is returned
//! as an error and the next frame is tried again.

pub mod canvas;
pub mod drm;
pub mod fbdev;
pub mod pixel;
pub mod png;
pub mod render;
mod sys;

use std::path::PathBuf;

use serde::Deserialize;
use thiserror::Error;

pub use canvas::Canvas;
pub use render::{render, Scene, Style};

use crate::frame::MAX_SIDE;
use crate::live::Overflow;
use crate::sink::{Emitted, Sink, SinkError};

/// Errors opening or driving a display.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DisplayError {
    /// A setting of the `[display]` section is out of range.
    #[error("display.{key}: {reason}")]
    Config { key: &'static str, reason: String },
    /// A canvas side is zero or above the frame size limit.
    #[error("canvas size {width}x{height} is outside 1..={MAX_SIDE} pixels a side")]
    CanvasSize { width: u32, height: u32 },
    /// The configured canvas does not fit the screen's mode.
    #[error(
        "canvas {canvas_width}x{canvas_height} is larger than the screen \
         {screen_width}x{screen_height}"
    )]
    CanvasTooLarge {
        canvas_width: u32,
        canvas_height: u32,
        screen_width: u32,
        screen_height: u32,
    },
    /// The mask's size differs from the frame's.
    #[error("mask is {mask_width}x{mask_height} but the frame is {frame_width}x{frame_height}")]
    MaskSize {
        frame_width: u32,
        frame_height: u32,
        mask_width: u32,
        mask_height: u32,
    },
    /// Opening, writing or mapping a file or device failed.
    #[error("{}: {source}{}", path.display(), access_hint(source))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Encoding a PNG snapshot failed.
    #[error("{}: cannot encode PNG: {source}", path.display())]
    Png {
        path: PathBuf,
        source: image::ImageError,
    },
    /// The framebuffer's pixel layout is neither RGB565 nor XRGB8888.
    #[error(
        "{}: unsupported pixel format ({format}); supported: RGB565, XRGB8888",
        path.display()
    )]
    UnsupportedFormat { path: PathBuf, format: String },
    /// A device ioctl failed.
    #[error("{}: {request} failed: {source}{}", path.display(), access_hint(source))]
    Ioctl {
        path: PathBuf,
        request: &'static str,
        source: std::io::Error,
    },
    /// No connector of the DRM device is connected with a mode.
    #[error("{}: no connected connector with a display mode", path.display())]
    NoConnector { path: PathBuf },
    /// A connected connector has no encoder that can reach a free CRTC.
    #[error("{}: no CRTC can drive connected connector {connector}", path.display())]
    NoCrtc { path: PathBuf, connector: u32 },
    /// The device reported values that cannot be used.
    #[error("{}: {reason}", path.display())]
    Device { path: PathBuf, reason: String },
}

/// A hint appended to permission errors on devices.
fn access_hint(err: &std::io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => {
            " (the user needs access to the device, usually the `video` group; \
             setting a DRM mode also needs no desktop session holding the display)"
        }
        _ => "",
    }
}

/// Where frames are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// PNG snapshots in a directory.
    Png,
    /// Linux framebuffer device.
    Fbdev,
    /// DRM/KMS dumb buffer.
    Drm,
    /// No display.
    None,
}

/// The `[display]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisplayConfig {
    /// Where frames are shown: `png`, `fbdev`, `drm` or `none`.
    pub backend: Backend,
    /// The PNG directory (default `display`) or the device (default `/dev/fb0` for fbdev,
    /// `/dev/dri/card0` for drm). Unused by `none`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// PNG: write the first frame and every `every`-th after it (default 30).
    #[serde(default = "default_every")]
    pub every: u32,
    /// Canvas width in pixels; set together with `height`. Default: the screen's mode for
    /// fbdev and drm, the frame's width for png.
    #[serde(default)]
    pub width: Option<u32>,
    /// Canvas height in pixels; set together with `width`.
    #[serde(default)]
    pub height: Option<u32>,
    /// Mask colour as `[r, g, b]` (default green, `[0, 255, 0]`).
    #[serde(default = "default_color")]
    pub color: [u8; 3],
    /// Length of the sink's frame queue in the live loop (default 1: always the newest frame).
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// What a full queue does with the next frame: `drop-oldest` (default) or `drop-newest`.
    #[serde(default)]
    pub overflow: Overflow,
}

fn default_every() -> u32 {
    30
}

fn default_color() -> [u8; 3] {
    [0, 255, 0]
}

fn default_queue() -> usize {
    1
}

impl DisplayConfig {
    /// The configured path, or the back end's default.
    pub fn path_or_default(&self) -> PathBuf {
        self.path.clone().unwrap_or_else(|| {
            PathBuf::from(match self.backend {
                Backend::Png => "display",
                Backend::Fbdev => "/dev/fb0",
                Backend::Drm => "/dev/dri/card0",
                Backend::None => "",
            })
        })
    }

    /// The configured canvas size, checked: both sides or neither, each 1..=[`MAX_SIDE`].
    pub fn canvas_size(&self) -> Result<Option<(u32, u32)>, DisplayError> {
        match (self.width, self.height) {
            (None, None) => Ok(None),
            (Some(width), Some(height)) => {
                if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
                    return Err(DisplayError::CanvasSize { width, height });
                }
                Ok(Some((width, height)))
            }
            (Some(_), None) => Err(DisplayError::Config {
                key: "height",
                reason: "must be set together with width".to_string(),
            }),
            (None, Some(_)) => Err(DisplayError::Config {
                key: "width",
                reason: "must be set together with height".to_string(),
            }),
        }
    }
}

/// A place frames are shown: a device or a directory.
pub trait Screen: Send {
    /// The screen's own size, when it has one (a display mode); `None` follows the frame.
    fn size(&self) -> Option<(u32, u32)>;

    /// Called once per frame before rendering: whether this frame will be shown (a screen
    /// that keeps only some frames skips the others' rendering). True by default.
    fn wants(&mut self) -> bool {
        true
    }

    /// Shows the canvas; `seq` is the frame's sequence number.
    fn show(&mut self, canvas: &Canvas, seq: u64) -> Result<(), DisplayError>;
}

/// Opens the screen for `config`, or `None` for the `none` back end.
fn open_screen(config: &DisplayConfig) -> Result<Option<Box<dyn Screen>>, DisplayError> {
    let path = config.path_or_default();
    Ok(match config.backend {
        Backend::Png => Some(Box::new(png::PngSnapshots::open(&path, config.every)?)),
        Backend::Fbdev => Some(Box::new(fbdev::Fbdev::open(&path)?)),
        Backend::Drm => Some(Box::new(drm::Drm::open(&path)?)),
        Backend::None => None,
    })
}

/// The display output of the live loop.
pub struct DisplaySink {
    /// `None` for the `none` back end.
    screen: Option<Box<dyn Screen>>,
    /// Canvas size fixed by the configuration or the screen; `None` follows each frame.
    size: Option<(u32, u32)>,
    style: Style,
    /// Reused between frames while the size stays the same.
    canvas: Option<Canvas>,
    /// The back end writes snapshots to files (`png`) rather than driving a screen.
    snapshots: bool,
}

impl std::fmt::Debug for DisplaySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DisplaySink")
            .field("enabled", &self.screen.is_some())
            .field("size", &self.size)
            .field("style", &self.style)
            .finish()
    }
}

impl DisplaySink {
    /// Checks `config` and opens its back end (a directory or a device).
    pub fn open(config: &DisplayConfig) -> Result<DisplaySink, DisplayError> {
        if config.queue == 0 {
            return Err(DisplayError::Config {
                key: "queue",
                reason: "must be at least 1".to_string(),
            });
        }
        let configured = config.canvas_size()?;
        let screen = open_screen(config)?;
        let native = screen.as_ref().and_then(|s| s.size());
        if let (Some((cw, ch)), Some((sw, sh))) = (configured, native) {
            if cw > sw || ch > sh {
                return Err(DisplayError::CanvasTooLarge {
                    canvas_width: cw,
                    canvas_height: ch,
                    screen_width: sw,
                    screen_height: sh,
                });
            }
        }
        Ok(DisplaySink {
            screen,
            size: configured.or(native),
            style: Style::new(config.color),
            canvas: None,
            snapshots: config.backend == Backend::Png,
        })
    }

    /// The canvas of the last drawn frame, if any.
    pub fn canvas(&self) -> Option<&Canvas> {
        self.canvas.as_ref()
    }

    /// Draws `out` and shows it, when the screen wants this frame.
    fn draw(&mut self, out: &Emitted) -> Result<(), DisplayError> {
        let Some(screen) = self.screen.as_mut() else {
            return Ok(());
        };
        if !screen.wants() {
            return Ok(());
        }
        let (width, height) = self.size.unwrap_or((out.frame.width(), out.frame.height()));
        let canvas = match self.canvas.take() {
            Some(c) if (c.width(), c.height()) == (width, height) => c,
            _ => Canvas::new(width, height)?,
        };
        let canvas = self.canvas.insert(canvas);
        let scene = Scene {
            frame: &out.frame,
            mask: &out.mask,
            label: &out.label,
            fps: out.fps,
            latency_ms: out.latency_ms,
        };
        render(canvas, &scene, &self.style)?;
        screen.show(canvas, out.seq)
    }
}

impl Sink for DisplaySink {
    fn name(&self) -> &str {
        "display"
    }

    fn emit(&mut self, out: &Emitted) -> Result<(), SinkError> {
        self.draw(out).map_err(SinkError::from)
    }

    /// PNG snapshots are looked at later; a screen shows the frame now.
    fn background(&self) -> bool {
        self.snapshots
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::frame::{Frame, Mask};
    use crate::sink::{Counters, Timestamps};

    fn parse(text: &str) -> Result<DisplayConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn config_defaults() {
        let c = parse("backend = \"png\"").unwrap();
        assert_eq!(c.backend, Backend::Png);
        assert_eq!(c.every, 30);
        assert_eq!(c.color, [0, 255, 0]);
        assert_eq!(c.queue, 1);
        assert_eq!(c.canvas_size().unwrap(), None);
        assert_eq!(c.path_or_default(), PathBuf::from("display"));
        let fb = parse("backend = \"fbdev\"").unwrap();
        assert_eq!(fb.path_or_default(), PathBuf::from("/dev/fb0"));
        let drm = parse("backend = \"drm\"").unwrap();
        assert_eq!(drm.path_or_default(), PathBuf::from("/dev/dri/card0"));
    }

    #[test]
    fn config_reads_every_key() {
        let c = parse(
            r#"
            backend = "drm"
            path = "/dev/dri/card1"
            every = 5
            width = 800
            height = 480
            color = [255, 0, 128]
            queue = 2
            "#,
        )
        .unwrap();
        assert_eq!(
            c,
            DisplayConfig {
                backend: Backend::Drm,
                path: Some(PathBuf::from("/dev/dri/card1")),
                every: 5,
                width: Some(800),
                height: Some(480),
                color: [255, 0, 128],
                queue: 2,
                overflow: Overflow::DropOldest,
            }
        );
        assert_eq!(c.canvas_size().unwrap(), Some((800, 480)));
    }

    #[test]
    fn config_rejects_unknown_keys_and_bad_values() {
        let err = parse("backend = \"png\"\ncolour = [1, 2, 3]").unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
        assert!(parse("backend = \"hdmi\"").is_err());
        assert!(parse("backend = \"png\"\ncolor = [256, 0, 0]").is_err());
        assert!(parse("every = 3").is_err(), "backend is required");
    }

    #[test]
    fn canvas_size_needs_both_sides_in_range() {
        let half = parse("backend = \"png\"\nwidth = 100").unwrap();
        assert_eq!(
            half.canvas_size().unwrap_err().to_string(),
            "display.height: must be set together with width"
        );
        let zero = parse("backend = \"png\"\nwidth = 0\nheight = 10").unwrap();
        assert!(matches!(
            zero.canvas_size(),
            Err(DisplayError::CanvasSize { width: 0, .. })
        ));
    }

    fn emitted(seq: u64, width: u32, height: u32) -> Emitted {
        let frame = Frame::from_gray(width, height, &vec![50; (width * height) as usize]).unwrap();
        let bits = (0..width * height).map(|i| i % width < width / 2).collect();
        Emitted {
            seq,
            timestamps: Timestamps::default(),
            frame: Arc::new(frame),
            mask: Arc::new(Mask::new(width, height, bits).unwrap()),
            label: Arc::from("left half"),
            area_px: 0,
            area_mm2: None,
            counters: Counters::default(),
            fps: 10.0,
            latency_ms: 5.0,
        }
    }

    #[test]
    fn none_backend_accepts_frames_and_draws_nothing() {
        let mut sink = DisplaySink::open(&parse("backend = \"none\"").unwrap()).unwrap();
        sink.emit(&emitted(0, 8, 8)).unwrap();
        assert!(sink.canvas().is_none());
        assert_eq!(sink.name(), "display");
        assert!(!sink.background(), "a screen shows frames now");
    }

    #[test]
    fn queue_zero_is_refused() {
        let err = DisplaySink::open(&parse("backend = \"none\"\nqueue = 0").unwrap()).unwrap_err();
        assert_eq!(err.to_string(), "display.queue: must be at least 1");
    }

    #[test]
    fn canvas_follows_the_frame_unless_sized() {
        let dir = std::env::temp_dir().join(format!("edgeseg-display-{}", std::process::id()));
        let config = |extra: &str| {
            parse(&format!(
                "backend = \"png\"\npath = {:?}\nevery = 1\n{extra}",
                dir.display().to_string()
            ))
            .unwrap()
        };
        let mut sink = DisplaySink::open(&config("")).unwrap();
        assert!(sink.background(), "PNG snapshots are looked at later");
        sink.emit(&emitted(0, 40, 30)).unwrap();
        assert_eq!(
            sink.canvas().map(|c| (c.width(), c.height())),
            Some((40, 30))
        );
        sink.emit(&emitted(1, 20, 50)).unwrap();
        assert_eq!(
            sink.canvas().map(|c| (c.width(), c.height())),
            Some((20, 50))
        );

        let mut sized = DisplaySink::open(&config("width = 64\nheight = 48")).unwrap();
        sized.emit(&emitted(2, 20, 50)).unwrap();
        assert_eq!(
            sized.canvas().map(|c| (c.width(), c.height())),
            Some((64, 48))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mismatched_mask_is_an_error_and_the_sink_goes_on() {
        let dir = std::env::temp_dir().join(format!("edgeseg-display-bad-{}", std::process::id()));
        let config = parse(&format!(
            "backend = \"png\"\npath = {:?}\nevery = 1",
            dir.display().to_string()
        ))
        .unwrap();
        let mut sink = DisplaySink::open(&config).unwrap();
        let mut bad = emitted(0, 16, 16);
        bad.mask = Arc::new(Mask::new(8, 8, vec![false; 64]).unwrap());
        let err = sink.emit(&bad).unwrap_err();
        assert_eq!(err.to_string(), "mask is 8x8 but the frame is 16x16");
        sink.emit(&emitted(1, 16, 16)).unwrap();
        assert!(dir.join("display_000001.png").is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn permission_errors_carry_a_hint() {
        let err = DisplayError::Io {
            path: PathBuf::from("/dev/fb0"),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        let text = err.to_string();
        assert!(text.starts_with("/dev/fb0: Permission denied"), "{text}");
        assert!(text.contains("`video` group"), "{text}");
    }
}
