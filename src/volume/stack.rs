//! Volumes from 2D frames with a spacing the caller gives: a folder of images (sorted by file
//! name, one slice per file) or a multi-frame DICOM cine (a freehand or motorised sweep, one
//! slice per frame).
//!
//! Files are read by the input module (every check of [`crate::input::load`] applies), so a
//! value is the displayed gray level: the BT.601 luminance of the 8-bit RGB frame. The affine
//! is `diag(spacing)`: no orientation or origin is known. Sort order is byte order of the
//! names, so number files with leading zeros (`slice_002.png` before `slice_010.png`).

use std::path::{Path, PathBuf};

use super::{check_spacing, grid_voxels, Volume, VolumeError};
use crate::frame::Frame;
use crate::input;

/// Frames stacked into `f32` luminance, checked against the first frame's size.
struct Stacker {
    size: Option<(u32, u32)>,
    slices: usize,
    data: Vec<f32>,
}

impl Stacker {
    fn new(slices: usize) -> Stacker {
        Stacker {
            size: None,
            slices,
            data: Vec::new(),
        }
    }

    /// Appends `frame` (from `path`); the first frame fixes the size and the buffer.
    fn push(&mut self, path: &Path, frame: &Frame) -> Result<(), VolumeError> {
        let size = (frame.width(), frame.height());
        match self.size {
            None => {
                let voxels = grid_voxels([size.0 as usize, size.1 as usize, self.slices])
                    .map_err(VolumeError::grid(path))?;
                self.data.reserve_exact(voxels);
                self.size = Some(size);
            }
            Some(first) if first != size => {
                return Err(VolumeError::Slices {
                    path: path.to_path_buf(),
                    reason: format!(
                        "image is {}x{}, the first slice is {}x{}",
                        size.0, size.1, first.0, first.1
                    ),
                })
            }
            Some(_) => {}
        }
        self.data.extend(
            frame.rgb().chunks_exact(3).map(|p| {
                0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])
            }),
        );
        Ok(())
    }

    fn finish(self, path: &Path, spacing: [f64; 3]) -> Result<Volume, VolumeError> {
        let (w, h) = self.size.unwrap_or((0, 0));
        let mut affine = super::IDENTITY;
        for (a, s) in spacing.iter().enumerate() {
            affine[a][a] = *s;
        }
        Volume::new(
            [w as usize, h as usize, self.slices],
            spacing,
            affine,
            self.data,
        )
        .map_err(VolumeError::grid(path))
    }
}

/// The images in `files` (one frame each, all the same size) as slices of `folder`.
pub(crate) fn from_images(
    folder: &Path,
    files: &[PathBuf],
    spacing: [f64; 3],
) -> Result<Volume, VolumeError> {
    check_spacing(spacing).map_err(VolumeError::grid(folder))?;
    let mut stacker = Stacker::new(files.len());
    for path in files {
        let loaded = input::load(path)?;
        let [frame] = loaded.frames.as_slice() else {
            return Err(VolumeError::Slices {
                path: path.clone(),
                reason: format!(
                    "holds {} frames; an image stack takes one image per file",
                    loaded.frames.len()
                ),
            });
        };
        stacker.push(path, frame)?;
    }
    stacker.finish(folder, spacing)
}

/// The frames of a DICOM cine as slices.
pub(crate) fn from_cine(path: &Path, spacing: [f64; 3]) -> Result<Volume, VolumeError> {
    check_spacing(spacing).map_err(VolumeError::grid(path))?;
    let loaded = input::load(path)?;
    let mut stacker = Stacker::new(loaded.frames.len());
    for frame in &loaded.frames {
        stacker.push(path, frame)?;
    }
    stacker.finish(path, spacing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{load, test_dir, LoadOptions};

    fn png(path: &Path, width: u32, height: u32, rgb: impl Fn(u32, u32) -> [u8; 3]) {
        let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb(rgb(x, y)));
        img.save(path).expect("write png");
    }

    fn with_spacing(spacing: [f64; 3]) -> LoadOptions {
        LoadOptions {
            volume_index: None,
            spacing: Some(spacing),
        }
    }

    #[test]
    fn images_sorted_by_name_become_slices_of_luminance() {
        let dir = test_dir("stack-images");
        // written out of order; z follows the names
        for z in [2u8, 0, 1] {
            png(&dir.join(format!("s{z:03}.png")), 3, 2, |x, y| {
                let g = z * 100 + (x + 3 * y) as u8;
                [g, g, g]
            });
        }
        png(&dir.join("s003.png"), 3, 2, |_, _| [255, 0, 0]);
        std::fs::write(dir.join("notes.json"), "{}").expect("sidecar");
        let v = load(&dir, &with_spacing([0.5, 0.5, 2.0])).expect("stack");
        assert_eq!(v.dims(), [3, 2, 4]);
        assert_eq!(v.spacing(), [0.5, 0.5, 2.0]);
        assert_eq!(v.get(2, 1, 1), 105.0);
        assert_eq!(v.get(0, 0, 2), 200.0);
        assert!((v.get(1, 1, 3) - 0.299 * 255.0).abs() < 1e-3);
        assert_eq!(v.affine()[2], [0.0, 0.0, 2.0, 0.0]);
    }

    #[test]
    fn stacks_need_a_spacing_and_images_of_one_size() {
        let dir = test_dir("stack-bad");
        png(&dir.join("a.png"), 3, 2, |_, _| [0; 3]);
        png(&dir.join("b.png"), 2, 3, |_, _| [0; 3]);
        let msg = load(&dir, &LoadOptions::default())
            .expect_err("no spacing")
            .to_string();
        assert!(
            msg.contains("a folder of 2D images records no voxel spacing"),
            "{msg}"
        );
        let msg = load(&dir, &with_spacing([1.0; 3]))
            .expect_err("sizes")
            .to_string();
        assert!(
            msg.ends_with("b.png: image is 2x3, the first slice is 3x2"),
            "{msg}"
        );
        let msg = load(&dir, &with_spacing([1.0, 0.0, 1.0]))
            .expect_err("zero spacing")
            .to_string();
        assert!(
            msg.contains("spacing [1.0, 0.0, 1.0] mm is not three finite positive"),
            "{msg}"
        );
    }

    #[test]
    fn a_cine_is_a_sweep_of_its_frames() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom/multiframe_3.dcm");
        let v = load(&path, &with_spacing([0.3, 0.3, 1.0])).expect("cine");
        // frame k: gradient 4x, a white square at rows 8..20, columns 4 + 20k .. 16 + 20k
        assert_eq!(v.dims(), [64, 48, 3]);
        assert_eq!(v.get(2, 0, 0), 8.0);
        assert_eq!(v.get(25, 10, 1), 255.0);
        assert_eq!(v.get(25, 10, 0), 100.0);
        let msg = load(&path, &LoadOptions::default())
            .expect_err("no spacing")
            .to_string();
        assert!(
            msg.contains("a multi-frame DICOM cine records no voxel spacing"),
            "{msg}"
        );
    }
}
