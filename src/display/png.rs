//! The PNG snapshot back end: every N-th shown frame is written to a directory as
//! `display_<seq>.png` (the frame's sequence number, six digits at least), 8-bit RGB.
//!
//! A snapshot is encoded in memory, written to a hidden temporary file in the same directory
//! and renamed into place, so a viewer watching the directory never reads a partial file.

use std::fs;
use std::path::{Path, PathBuf};

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};

use super::canvas::Canvas;
use super::{DisplayError, Screen};

/// The file name of the snapshot of frame `seq`: `display_000123.png`.
pub fn snapshot_name(seq: u64) -> String {
    format!("display_{seq:06}.png")
}

/// Writes every `every`-th frame it is offered into a directory.
#[derive(Debug)]
pub struct PngSnapshots {
    dir: PathBuf,
    every: u64,
    /// Frames offered so far.
    offered: u64,
}

impl PngSnapshots {
    /// Creates `dir` (and its parents) when missing. `every` must be at least 1.
    pub fn open(dir: &Path, every: u32) -> Result<PngSnapshots, DisplayError> {
        if every == 0 {
            return Err(DisplayError::Config {
                key: "every",
                reason: "must be at least 1".to_string(),
            });
        }
        fs::create_dir_all(dir).map_err(|source| DisplayError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(PngSnapshots {
            dir: dir.to_path_buf(),
            every: u64::from(every),
            offered: 0,
        })
    }
}

impl Screen for PngSnapshots {
    fn size(&self) -> Option<(u32, u32)> {
        None
    }

    /// True for the first frame offered and every `every`-th after it.
    fn wants(&mut self) -> bool {
        let due = self.offered.is_multiple_of(self.every);
        self.offered += 1;
        due
    }

    fn show(&mut self, canvas: &Canvas, seq: u64) -> Result<(), DisplayError> {
        let name = snapshot_name(seq);
        let path = self.dir.join(&name);
        let mut png = Vec::new();
        PngEncoder::new(&mut png)
            .write_image(
                canvas.rgb(),
                canvas.width(),
                canvas.height(),
                ExtendedColorType::Rgb8,
            )
            .map_err(|source| DisplayError::Png {
                path: path.clone(),
                source,
            })?;
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DisplayError::Io { path, source }
        };
        fs::write(&tmp, &png).map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("edgeseg-png-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn names_have_six_digits_at_least() {
        assert_eq!(snapshot_name(123), "display_000123.png");
        assert_eq!(snapshot_name(1_234_567), "display_1234567.png");
    }

    #[test]
    fn offers_the_first_and_every_nth_frame() {
        let dir = scratch("every");
        let mut png = PngSnapshots::open(&dir, 3).unwrap();
        let due: Vec<bool> = (0..7).map(|_| png.wants()).collect();
        assert_eq!(due, [true, false, false, true, false, false, true]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_zero_is_a_config_error() {
        let err = PngSnapshots::open(&scratch("zero"), 0).unwrap_err();
        assert_eq!(err.to_string(), "display.every: must be at least 1");
    }

    #[test]
    fn writes_the_canvas_exactly() {
        let dir = scratch("write").join("nested");
        let mut png = PngSnapshots::open(&dir, 1).unwrap();
        let mut canvas = Canvas::new(3, 2).unwrap();
        canvas.rgb_mut().copy_from_slice(&[
            1, 2, 3, 4, 5, 6, 7, 8, 9, //
            10, 11, 12, 13, 14, 15, 16, 17, 18,
        ]);
        png.show(&canvas, 42).unwrap();
        let written = image::open(dir.join("display_000042.png"))
            .unwrap()
            .into_rgb8();
        assert_eq!(written.dimensions(), (3, 2));
        assert_eq!(written.as_raw().as_slice(), canvas.rgb());
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["display_000042.png"], "no temporary file left");
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn unwritable_directory_is_an_error_naming_it() {
        let file = scratch("file");
        fs::write(&file, b"not a directory").unwrap();
        let err = PngSnapshots::open(&file.join("sub"), 1).unwrap_err();
        assert!(err.to_string().contains("edgeseg-png-"), "{err}");
        fs::remove_file(&file).unwrap();
    }
}
