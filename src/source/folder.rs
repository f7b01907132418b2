//! The image and DICOM files of a folder, or an explicit list of files, as a paced sequence.
//!
//! A folder is listed once, when the source opens: its regular files (not sub-folders, not
//! hidden files) whose extension is one of [`EXTENSIONS`], or that have no extension (DICOM
//! files often have none), sorted by file name byte-wise, so zero-padded numbers
//! (`frame_0009`, `frame_0010`) play in order. Each file is loaded when its turn comes, through
//! [`crate::input::load`]; a multi-frame file yields all its frames in order, paced like
//! single frames (its own cine frame time is not used here; see
//! [`DicomCineSource`](super::DicomCineSource) for that). A file that fails to load is an
//! error for that turn; the next call goes on with the next file.
//!
//! With looping, the sequence starts over after the last file; a pass in which no file gave a
//! frame ends the source instead, so a folder of broken files does not spin forever.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::pacing::Pacer;
use super::{rate_text, Source, SourceError};
use crate::frame::Frame;
use crate::input;

/// File extensions (ASCII case ignored) a folder listing takes, besides files without one.
pub const EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "dcm", "dicom"];

/// What a folder listing takes, for messages.
pub(crate) const LISTED_FILES: &str =
    "looked for .png, .jpg, .jpeg, .bmp, .dcm, .dicom and files without an extension";

/// Frames from a list of files, in order, optionally looping.
pub struct FolderSource {
    /// `folder samples/` or `3 files`, for descriptions.
    label: String,
    files: Vec<PathBuf>,
    next_file: usize,
    /// Frames of the current file not yet returned.
    pending: VecDeque<Frame>,
    looping: bool,
    /// Frames loaded since the current pass started.
    frames_this_pass: usize,
    pacer: Pacer,
}

impl FolderSource {
    /// The image and DICOM files of `dir` (see the module docs for which and in what order),
    /// one frame per `interval` (`None`: as fast as asked).
    pub fn from_dir(
        dir: &Path,
        interval: Option<Duration>,
        looping: bool,
    ) -> Result<FolderSource, SourceError> {
        let list_err = |source| SourceError::Folder {
            path: dir.to_path_buf(),
            source,
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(list_err)? {
            let entry = entry.map_err(list_err)?;
            let path = entry.path();
            if is_listed(&path) && path.is_file() {
                files.push(path);
            }
        }
        if files.is_empty() {
            return Err(SourceError::NoFiles {
                path: dir.to_path_buf(),
            });
        }
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        let label = format!("folder {} ({} files)", dir.display(), files.len());
        Ok(FolderSource::with_label(label, files, interval, looping))
    }

    /// The given files in the given order (any names; each file's content decides how it is
    /// read). An empty list is an error.
    pub fn from_files(
        files: Vec<PathBuf>,
        interval: Option<Duration>,
        looping: bool,
    ) -> Result<FolderSource, SourceError> {
        let label = match files.as_slice() {
            [] => return Err(SourceError::EmptyList),
            [one] => format!("file {}", one.display()),
            many => format!("{} files", many.len()),
        };
        Ok(FolderSource::with_label(label, files, interval, looping))
    }

    fn with_label(
        label: String,
        files: Vec<PathBuf>,
        interval: Option<Duration>,
        looping: bool,
    ) -> FolderSource {
        FolderSource {
            label,
            files,
            next_file: 0,
            pending: VecDeque::new(),
            looping,
            frames_this_pass: 0,
            pacer: Pacer::new(interval),
        }
    }

    /// The files played, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

/// Whether a folder listing takes `path` (by name; the caller checks it is a file).
fn is_listed(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with('.') {
        return false;
    }
    match path.extension().and_then(|e| e.to_str()) {
        None => true,
        Some(ext) => EXTENSIONS
            .iter()
            .any(|known| ext.eq_ignore_ascii_case(known)),
    }
}

impl Source for FolderSource {
    fn describe(&self) -> String {
        let once = if self.looping { "looping" } else { "once" };
        format!(
            "{} {}, {once}",
            self.label,
            rate_text(self.pacer.interval())
        )
    }

    fn next_frame(&mut self, stop: &AtomicBool) -> Result<Option<Frame>, SourceError> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Ok(self.pacer.wait(stop).then_some(frame));
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            if self.next_file == self.files.len() {
                if !self.looping || self.frames_this_pass == 0 {
                    return Ok(None);
                }
                self.next_file = 0;
                self.frames_this_pass = 0;
            }
            let path = &self.files[self.next_file];
            self.next_file += 1;
            let loaded = input::load(path)?;
            self.frames_this_pass += loaded.frames.len();
            self.pending.extend(loaded.frames);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_takes_images_dicom_and_extensionless_files_only() {
        for name in [
            "a.png", "b.JPG", "c.jpeg", "d.bmp", "e.dcm", "f.DICOM", "IM0001",
        ] {
            assert!(is_listed(Path::new(name)), "{name}");
        }
        for name in [".hidden.png", "notes.txt", "samples.jsonl", ".DS_Store"] {
            assert!(!is_listed(Path::new(name)), "{name}");
        }
    }

    #[test]
    fn an_empty_list_is_an_error() {
        let err = FolderSource::from_files(Vec::new(), None, false)
            .err()
            .unwrap();
        assert!(matches!(err, SourceError::EmptyList), "{err}");
    }
}
