//! File sinks of the live loop: mask and overlay PNGs every N frames ([`FilesSink`]) and one
//! JSON line of telemetry per frame ([`TelemetrySink`]).
//!
//! File names: `frame_<seq>_mask.png` and `frame_<seq>_overlay.png`, `<seq>` zero-padded to 6
//! digits. A telemetry line holds the frame's sequence number, its stage timestamps in µs since
//! the run started, its size, the mask area and the loop counters; the file is flushed every
//! line, so a run that is killed keeps what it logged.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::live::Overflow;
use crate::output;
use crate::sink::{Counters, Emitted, Sink, SinkError};

fn default_every() -> u64 {
    1
}
fn default_files_queue() -> usize {
    2
}
fn default_telemetry_queue() -> usize {
    256
}
fn yes() -> bool {
    true
}
fn default_overlay_color() -> [u8; 3] {
    [255, 200, 0]
}

/// `[files]` in a profile: mask and overlay PNGs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// Folder for the PNGs (created).
    pub dir: PathBuf,
    /// Write every N-th processed frame (1 = all).
    #[serde(default = "default_every")]
    pub every: u64,
    /// Also write the overlay PNG (default true).
    #[serde(default = "yes")]
    pub overlay: bool,
    /// Overlay colour, [r, g, b].
    #[serde(default = "default_overlay_color")]
    pub color: [u8; 3],
    /// Frames queued while the disk is busy.
    #[serde(default = "default_files_queue")]
    pub queue: usize,
    /// What a full queue does: `drop-oldest` or `drop-newest`.
    #[serde(default)]
    pub overflow: Overflow,
}

/// Writes mask (and overlay) PNGs of every N-th frame.
pub struct FilesSink {
    config: FilesConfig,
    seen: u64,
}

impl FilesSink {
    /// Creates the folder; an `every` of 0 is refused.
    pub fn open(config: &FilesConfig) -> Result<FilesSink, SinkError> {
        if config.every == 0 {
            return Err("files: `every` must be at least 1".into());
        }
        fs::create_dir_all(&config.dir)
            .map_err(|e| format!("files: cannot create {}: {e}", config.dir.display()))?;
        Ok(FilesSink {
            config: config.clone(),
            seen: 0,
        })
    }
}

impl Sink for FilesSink {
    fn name(&self) -> &str {
        "files"
    }

    fn emit(&mut self, out: &Emitted) -> Result<(), SinkError> {
        self.seen += 1;
        if !(self.seen - 1).is_multiple_of(self.config.every) {
            return Ok(());
        }
        let stem = format!("frame_{:06}", out.seq);
        let dir = &self.config.dir;
        output::write_mask_png(&dir.join(format!("{stem}_mask.png")), &out.mask)?;
        if self.config.overlay {
            output::write_overlay_png(
                &dir.join(format!("{stem}_overlay.png")),
                &out.frame,
                &out.mask,
                self.config.color,
            )?;
        }
        Ok(())
    }
}

/// `[telemetry]` in a profile: JSON lines per frame and the final summary.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// JSON-lines file, one line per processed frame (its folder is created).
    pub path: PathBuf,
    /// Where the run's summary JSON goes at the end (optional).
    pub summary: Option<PathBuf>,
    /// Lines queued while the disk is busy.
    #[serde(default = "default_telemetry_queue")]
    pub queue: usize,
    /// What a full queue does: `drop-oldest` or `drop-newest`.
    #[serde(default)]
    pub overflow: Overflow,
}

/// One telemetry line.
#[derive(Debug, Serialize)]
struct Line<'a> {
    seq: u64,
    capture_us: u64,
    preprocess_start_us: u64,
    preprocess_end_us: u64,
    inference_end_us: u64,
    postprocess_end_us: u64,
    width: u32,
    height: u32,
    area_px: usize,
    area_mm2: Option<f64>,
    captured: u64,
    processed: u64,
    dropped: u64,
    label: &'a str,
}

/// Appends one JSON line per frame.
pub struct TelemetrySink {
    path: PathBuf,
    writer: BufWriter<File>,
}

impl TelemetrySink {
    /// Creates (truncates) the JSON-lines file.
    pub fn open(config: &TelemetryConfig) -> Result<TelemetrySink, SinkError> {
        let path = config.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .map_err(|e| format!("telemetry: cannot create {}: {e}", dir.display()))?;
        }
        let file = File::create(&path)
            .map_err(|e| format!("telemetry: cannot create {}: {e}", path.display()))?;
        Ok(TelemetrySink {
            path,
            writer: BufWriter::new(file),
        })
    }

    fn io(&self, e: std::io::Error) -> SinkError {
        format!("telemetry: {}: {e}", self.path.display()).into()
    }
}

impl Sink for TelemetrySink {
    fn name(&self) -> &str {
        "telemetry"
    }

    fn emit(&mut self, out: &Emitted) -> Result<(), SinkError> {
        let t = out.timestamps;
        let line = Line {
            seq: out.seq,
            capture_us: t.capture_us,
            preprocess_start_us: t.preprocess_start_us,
            preprocess_end_us: t.preprocess_end_us,
            inference_end_us: t.inference_end_us,
            postprocess_end_us: t.postprocess_end_us,
            width: out.frame.width(),
            height: out.frame.height(),
            area_px: out.area_px,
            area_mm2: out.area_mm2,
            captured: out.counters.captured,
            processed: out.counters.processed,
            dropped: out.counters.dropped,
            label: &out.label,
        };
        let mut bytes = serde_json::to_vec(&line)?;
        bytes.push(b'\n');
        let written = self
            .writer
            .write_all(&bytes)
            .and_then(|()| self.writer.flush());
        written.map_err(|e| self.io(e))
    }

    fn finish(&mut self, _counters: Counters) -> Result<(), SinkError> {
        let flushed = self.writer.flush();
        flushed.map_err(|e| self.io(e))
    }
}
