//! A DICOM multi-frame cine loop replayed as a live source.
//!
//! The file is read whole when the source opens (through [`crate::input::load`], whose limits
//! bound its size), then its frames are replayed in order. The pace is the given rate if any,
//! else the file's own frame interval (Frame Time, Cine Rate or Recommended Display Frame
//! Rate, see [`crate::input::InputKind::Dicom`]); a file that records none, or a nonsensical
//! one (not a positive number of milliseconds up to a minute), plays as fast as asked.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::pacing::Pacer;
use super::{rate_text, Source, SourceError};
use crate::frame::Frame;
use crate::input::{self, InputKind};

/// Longest frame interval taken from a file; larger values are treated as absent.
const MAX_FRAME_TIME_MS: f64 = 60_000.0;

/// Replays the frames of one DICOM file, optionally looping.
pub struct DicomCineSource {
    path: PathBuf,
    frames: Vec<Frame>,
    next: usize,
    looping: bool,
    /// The interval recorded in the file, if usable.
    file_interval: Option<Duration>,
    pacer: Pacer,
}

impl DicomCineSource {
    /// Reads `path`, which must be a DICOM file, and paces its frames at `interval`, or at the
    /// file's own frame interval when `interval` is `None`.
    pub fn open(
        path: &Path,
        interval: Option<Duration>,
        looping: bool,
    ) -> Result<DicomCineSource, SourceError> {
        let loaded = input::load(path)?;
        let frame_time_ms = match loaded.kind {
            InputKind::Dicom { frame_time_ms, .. } => frame_time_ms,
            InputKind::Image => {
                return Err(SourceError::NotDicom {
                    path: path.to_path_buf(),
                })
            }
        };
        let file_interval = frame_time_ms
            .filter(|ms| ms.is_finite() && *ms > 0.0 && *ms <= MAX_FRAME_TIME_MS)
            .map(|ms| Duration::from_secs_f64(ms / 1000.0));
        if frame_time_ms.is_some() && file_interval.is_none() {
            log::warn!(
                "{}: ignoring frame time {:?} ms (expected 0 to {MAX_FRAME_TIME_MS} ms)",
                path.display(),
                frame_time_ms
            );
        }
        Ok(DicomCineSource {
            path: path.to_path_buf(),
            frames: loaded.frames,
            next: 0,
            looping,
            file_interval,
            pacer: Pacer::new(interval.or(file_interval)),
        })
    }

    /// Number of frames in the file.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// The frame interval the file records, when it records a usable one.
    pub fn file_interval(&self) -> Option<Duration> {
        self.file_interval
    }

    /// The interval frames are paced at (`None`: as fast as asked).
    pub fn interval(&self) -> Option<Duration> {
        self.pacer.interval()
    }
}

impl Source for DicomCineSource {
    fn describe(&self) -> String {
        let origin = match (self.pacer.interval(), self.file_interval) {
            (Some(paced), Some(file)) if paced == file => " (the file's frame time)",
            _ => "",
        };
        format!(
            "DICOM cine {} ({} frames) {}{origin}, {}",
            self.path.display(),
            self.frames.len(),
            rate_text(self.pacer.interval()),
            if self.looping { "looping" } else { "once" }
        )
    }

    fn next_frame(&mut self, stop: &AtomicBool) -> Result<Option<Frame>, SourceError> {
        if self.next >= self.frames.len() && self.looping {
            self.next = 0;
        }
        let Some(frame) = self.frames.get(self.next).cloned() else {
            return Ok(None);
        };
        if !self.pacer.wait(stop) {
            return Ok(None);
        }
        self.next += 1;
        Ok(Some(frame))
    }
}
