//! Volumes: 3D scalar grids with their voxel spacing and voxel-to-world affine, read from
//! NIfTI-1 files, DICOM series, folders of 2D images and DICOM cine sweeps, and the
//! model-agnostic pipeline a volume model (family `sam3d`) runs on them.
//!
//! [`load`] picks the reader from the content, never from the extension alone:
//! - a file starting with the gzip magic, or whose first four bytes read 348 in either byte
//!   order: [`nifti`] (NIfTI-1 single file, `.nii` or `.nii.gz`);
//! - a file with `DICM` at offset 128: a multi-frame DICOM cine, stacked as a sweep by
//!   `stack` (needs [`LoadOptions::spacing`]);
//! - a folder of DICOM files: a series, by `series`;
//! - a folder of PNG, JPEG or BMP images: a stack, by `stack` (needs
//!   [`LoadOptions::spacing`]).
//!
//! In a folder, the slices are the files whose content is DICOM or a PNG, JPEG or BMP image,
//! sorted by name; other files (a `.json` sidecar, a README), hidden files, `DICOMDIR` and
//! subfolders are skipped. A folder mixing DICOM and images is refused.
//!
//! Conventions: voxel data is x fastest, then y, then z; `dims` and `spacing` are `[x, y, z]`;
//! the affine maps voxel indices `(i, j, k, 1)`, voxel centres at integers, to world
//! millimetres in NIfTI's RAS+ frame (+x towards the patient's right, +y anterior,
//! +z superior). DICOM's LPS coordinates are converted by negating x and y, as nibabel and
//! dcm2niix do.
//!
//! Limits, checked against headers before anything is allocated or fully decompressed: at
//! most [`MAX_SIDE`] voxels per side and [`MAX_VOXELS`] voxels in all (1 GiB of `f32`).
//! Every value of a [`Volume`] is finite, its spacing finite and positive, and its affine
//! finite and invertible.
//!
//! Invariant: bad input is a [`VolumeError`] naming the file or folder and the problem with
//! its values, never a panic.

pub mod nifti;
pub mod normalize;
pub mod patch;
pub mod resample;
pub mod segment;
mod series;
mod stack;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::input::{self, InputError, Sniffed};

/// Largest number of voxels along any axis of a volume.
pub const MAX_SIDE: usize = 2048;

/// Largest number of voxels in a volume (2^28: 1 GiB of `f32`).
pub const MAX_VOXELS: usize = 1 << 28;

/// The identity affine.
pub const IDENTITY: [[f64; 4]; 4] = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

/// `64x64x40`.
pub(crate) fn shape(dims: [usize; 3]) -> String {
    format!("{}x{}x{}", dims[0], dims[1], dims[2])
}

/// A volume whose parts do not fit together. No file is named: the errors that wrap it do.
#[derive(Debug, Clone, Error, PartialEq)]
#[non_exhaustive]
pub enum GridError {
    #[error("volume {} has a zero dimension", shape(*dims))]
    Empty { dims: [usize; 3] },
    #[error(
        "volume {} exceeds the limits ({MAX_SIDE} voxels per side, {MAX_VOXELS} voxels in all)",
        shape(*dims)
    )]
    TooLarge { dims: [usize; 3] },
    #[error("volume {} needs {expected} values, buffer has {found}", shape(*dims))]
    Length {
        dims: [usize; 3],
        expected: usize,
        found: usize,
    },
    #[error("spacing {spacing:?} mm is not three finite positive numbers")]
    Spacing { spacing: [f64; 3] },
    #[error("affine {affine:?} is not finite and invertible with a last row of 0 0 0 1")]
    Affine { affine: Box<[[f64; 4]; 4]> },
    #[error(
        "volume holds {count} non-finite values (NaN or infinity), the first at voxel \
         ({}, {}, {})",
        first[0], first[1], first[2]
    )]
    NonFinite { count: usize, first: [usize; 3] },
}

/// Checks dimensions against the limits; returns the number of voxels.
pub fn grid_voxels(dims: [usize; 3]) -> Result<usize, GridError> {
    if dims.contains(&0) {
        return Err(GridError::Empty { dims });
    }
    let voxels = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&v| v <= MAX_VOXELS);
    match voxels {
        Some(v) if dims.iter().all(|&d| d <= MAX_SIDE) => Ok(v),
        _ => Err(GridError::TooLarge { dims }),
    }
}

/// Whether `spacing` is three finite positive numbers.
pub(crate) fn check_spacing(spacing: [f64; 3]) -> Result<(), GridError> {
    if spacing.iter().all(|s| s.is_finite() && *s > 0.0) {
        Ok(())
    } else {
        Err(GridError::Spacing { spacing })
    }
}

/// A 3x3 matrix, row-major.
pub(crate) type Mat3 = [[f64; 3]; 3];

pub(crate) fn det3(m: &Mat3) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

/// The linear (3x3) part of an affine.
pub(crate) fn linear(a: &[[f64; 4]; 4]) -> Mat3 {
    std::array::from_fn(|i| std::array::from_fn(|j| a[i][j]))
}

/// Checks the parts of a volume other than its values: dimensions within the limits, `len`
/// values for them, a finite positive spacing, a finite invertible affine whose last row is
/// `0 0 0 1`.
pub(crate) fn check_grid(
    dims: [usize; 3],
    spacing: [f64; 3],
    affine: &[[f64; 4]; 4],
    len: usize,
) -> Result<(), GridError> {
    let expected = grid_voxels(dims)?;
    if len != expected {
        return Err(GridError::Length {
            dims,
            expected,
            found: len,
        });
    }
    check_spacing(spacing)?;
    let finite = affine.iter().flatten().all(|v| v.is_finite());
    if !finite || det3(&linear(affine)) == 0.0 || affine[3] != [0.0, 0.0, 0.0, 1.0] {
        return Err(GridError::Affine {
            affine: Box::new(*affine),
        });
    }
    Ok(())
}

/// A scalar volume: `dims` `[x, y, z]`, `spacing` in mm, `affine` from voxel indices to world
/// mm (RAS+), `data` x fastest.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    dims: [usize; 3],
    spacing: [f64; 3],
    affine: [[f64; 4]; 4],
    data: Vec<f32>,
}

impl Volume {
    /// A volume from its parts: dimensions within the limits, a buffer of that many finite
    /// values, a finite positive spacing, a finite invertible affine whose last row is
    /// `0 0 0 1`.
    pub fn new(
        dims: [usize; 3],
        spacing: [f64; 3],
        affine: [[f64; 4]; 4],
        data: Vec<f32>,
    ) -> Result<Volume, GridError> {
        check_grid(dims, spacing, &affine, data.len())?;
        let bad = data.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            let index = data.iter().position(|v| !v.is_finite()).unwrap_or(0);
            let (x, rest) = (index % dims[0], index / dims[0]);
            return Err(GridError::NonFinite {
                count: bad,
                first: [x, rest % dims[1], rest / dims[1]],
            });
        }
        Ok(Volume {
            dims,
            spacing,
            affine,
            data,
        })
    }

    /// Voxels along x, y, z.
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    /// Millimetres per voxel along x, y, z.
    pub fn spacing(&self) -> [f64; 3] {
        self.spacing
    }

    /// Voxel indices `(i, j, k, 1)` to world millimetres (RAS+).
    pub fn affine(&self) -> [[f64; 4]; 4] {
        self.affine
    }

    /// The values, x fastest.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The value at voxel `(x, y, z)`; callers stay inside the volume.
    pub fn get(&self, x: usize, y: usize, z: usize) -> f32 {
        self.data[x + self.dims[0] * (y + self.dims[1] * z)]
    }

    /// Volume of one voxel in millilitres (the product of the spacings, in cm³).
    pub fn voxel_volume_ml(&self) -> f64 {
        self.spacing.iter().product::<f64>() / 1000.0
    }
}

/// How [`load`] reads what the file does not say.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadOptions {
    /// Which volume of a 4D NIfTI file (zero-based); required when it holds more than one.
    pub volume_index: Option<usize>,
    /// Voxel spacing in mm `[x, y, z]` for an image stack or a cine sweep, which record none
    /// (or only an in-plane one). Refused for NIfTI files and DICOM series, which have their
    /// own.
    pub spacing: Option<[f64; 3]>,
}

/// Why a volume could not be read or written. Every variant names the file or folder.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum VolumeError {
    /// The file or folder could not be opened, listed or read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file could not be written.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A DICOM or image file the input module refused (its message names the file).
    #[error(transparent)]
    Input(#[from] InputError),
    /// Content that is none of the volume formats.
    #[error("{}: not a volume: {reason}", path.display())]
    UnknownFormat { path: PathBuf, reason: String },
    /// A NIfTI header this reader refuses.
    #[error("{}: NIfTI-1: {reason}", path.display())]
    Nifti { path: PathBuf, reason: String },
    /// A file that ends (or a gzip stream that stops) before the data its header declares;
    /// byte counts are of the decompressed stream for a gzip file.
    #[error("{}: truncated {what}: needs {expected} bytes, found {found}", path.display())]
    Truncated {
        path: PathBuf,
        /// What was being read, e.g. `voxel data`.
        what: &'static str,
        expected: u64,
        found: u64,
    },
    /// A 4D file read without choosing a volume, or with an index beyond its volumes.
    #[error("{}: {}", path.display(), volume_choice(*volumes, *index))]
    VolumeIndex {
        path: PathBuf,
        volumes: usize,
        index: Option<usize>,
    },
    /// An option that does not apply to this kind of input.
    #[error("{}: {option} does not apply: {reason}", path.display())]
    NotApplicable {
        path: PathBuf,
        option: &'static str,
        reason: &'static str,
    },
    /// A stack or sweep read without the spacing it cannot know.
    #[error(
        "{}: {kind} records no voxel spacing; give one (--spacing SX,SY,SZ in mm)",
        path.display()
    )]
    NeedsSpacing { path: PathBuf, kind: &'static str },
    /// Slices that do not make one volume (sizes, orientations, positions); `reason` names the
    /// files at fault.
    #[error("{}: {reason}", path.display())]
    Slices { path: PathBuf, reason: String },
    /// Parts that do not make a volume (dimensions, spacing, affine, values).
    #[error("{}: {source}", path.display())]
    Grid {
        path: PathBuf,
        #[source]
        source: GridError,
    },
}

fn volume_choice(volumes: usize, index: Option<usize>) -> String {
    let last = volumes.saturating_sub(1);
    match index {
        None => format!(
            "the file holds {volumes} volumes; choose one with --volume-index (0 to {last})"
        ),
        Some(i) => format!(
            "volume index {i} is out of range: the file holds {volumes} volume{} (0 to {last})",
            if volumes == 1 { "" } else { "s" }
        ),
    }
}

impl VolumeError {
    /// `GridError` about `path`.
    pub(crate) fn grid(path: &Path) -> impl FnOnce(GridError) -> VolumeError + '_ {
        move |source| VolumeError::Grid {
            path: path.to_path_buf(),
            source,
        }
    }

    /// `Io` about `path`.
    pub(crate) fn io(path: &Path) -> impl FnOnce(io::Error) -> VolumeError + '_ {
        move |source| VolumeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Reads a volume, choosing the reader from the content (see the module docs).
pub fn load(path: &Path, options: &LoadOptions) -> Result<Volume, VolumeError> {
    let meta = fs::metadata(path).map_err(VolumeError::io(path))?;
    if meta.is_dir() {
        let (files, kind) = folder_slices(path)?;
        return match kind {
            Sniffed::Dicom => {
                refuse_options(path, options)?;
                series::load(path, &files)
            }
            Sniffed::Image(_) => {
                if options.volume_index.is_some() {
                    return Err(VolumeError::NotApplicable {
                        path: path.to_path_buf(),
                        option: "--volume-index",
                        reason: "an image stack holds one volume",
                    });
                }
                let spacing = options.spacing.ok_or_else(|| VolumeError::NeedsSpacing {
                    path: path.to_path_buf(),
                    kind: "a folder of 2D images",
                })?;
                stack::from_images(path, &files, spacing)
            }
        };
    }
    let head = read_head(path)?;
    if nifti::sniff(&head) {
        if options.spacing.is_some() {
            return Err(VolumeError::NotApplicable {
                path: path.to_path_buf(),
                option: "--spacing",
                reason: "a NIfTI file records its own spacing",
            });
        }
        return nifti::read(path, options.volume_index);
    }
    match input::sniff(&head) {
        Some(Sniffed::Dicom) => {
            if options.volume_index.is_some() {
                return Err(VolumeError::NotApplicable {
                    path: path.to_path_buf(),
                    option: "--volume-index",
                    reason: "a DICOM cine holds one sweep",
                });
            }
            let spacing = options.spacing.ok_or_else(|| VolumeError::NeedsSpacing {
                path: path.to_path_buf(),
                kind: "a multi-frame DICOM cine",
            })?;
            stack::from_cine(path, spacing)
        }
        Some(Sniffed::Image(_)) => Err(VolumeError::UnknownFormat {
            path: path.to_path_buf(),
            reason: "a single 2D image; give the folder of images as a stack".to_string(),
        }),
        None => Err(VolumeError::UnknownFormat {
            path: path.to_path_buf(),
            reason: "expected NIfTI-1 (.nii, .nii.gz), a multi-frame DICOM file, or a folder \
                     of DICOM slices or 2D images"
                .to_string(),
        }),
    }
}

/// A DICOM series has its own spacing and one volume: neither option applies.
fn refuse_options(path: &Path, options: &LoadOptions) -> Result<(), VolumeError> {
    let refused = |option, reason| {
        Err(VolumeError::NotApplicable {
            path: path.to_path_buf(),
            option,
            reason,
        })
    };
    if options.spacing.is_some() {
        return refused("--spacing", "a DICOM series records its own spacing");
    }
    if options.volume_index.is_some() {
        return refused("--volume-index", "a DICOM series holds one volume");
    }
    Ok(())
}

/// The first bytes of a file (up to 348, a NIfTI-1 header).
fn read_head(path: &Path) -> Result<Vec<u8>, VolumeError> {
    let mut file = File::open(path).map_err(VolumeError::io(path))?;
    let mut head = vec![0u8; 348];
    let n = input::read_up_to(&mut file, &mut head).map_err(VolumeError::io(path))?;
    head.truncate(n);
    Ok(head)
}

/// The slices of a folder, sorted by name, and whether they are DICOM or images: the files
/// whose content is DICOM or a PNG, JPEG or BMP image (others, such as a `.json` sidecar, are
/// skipped, as are hidden files, `DICOMDIR` and subfolders). The first slice decides the
/// kind; a slice of the other kind is an error. At least one slice, at most [`MAX_SIDE`].
fn folder_slices(folder: &Path) -> Result<(Vec<PathBuf>, Sniffed), VolumeError> {
    let slices_err = |path: &Path, reason: String| VolumeError::Slices {
        path: path.to_path_buf(),
        reason,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(folder).map_err(VolumeError::io(folder))? {
        let entry = entry.map_err(VolumeError::io(folder))?;
        let name = entry.file_name();
        let visible =
            !name.to_string_lossy().starts_with('.') && !name.eq_ignore_ascii_case("DICOMDIR");
        if visible && entry.path().is_file() {
            names.push(entry.path());
        }
    }
    names.sort();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut first: Option<(Sniffed, PathBuf)> = None;
    for path in names {
        let Some(kind) = input::sniff(&read_head(&path)?) else {
            continue;
        };
        match &first {
            None => first = Some((kind, path.clone())),
            Some((first_kind, first_path)) => {
                let dicom = |k: Sniffed| k == Sniffed::Dicom;
                if dicom(kind) != dicom(*first_kind) {
                    let what = |k| if dicom(k) { "DICOM" } else { "an image" };
                    return Err(slices_err(
                        &path,
                        format!(
                            "is {}, but the folder's first slice ({}) is {}: a folder holds one \
                             series or one stack",
                            what(kind),
                            first_path.display(),
                            what(*first_kind)
                        ),
                    ));
                }
            }
        }
        files.push(path);
        if files.len() > MAX_SIDE {
            return Err(slices_err(
                folder,
                format!("the folder holds more than the {MAX_SIDE} slices a volume may have"),
            ));
        }
    }
    match first {
        Some((kind, _)) => Ok((files, kind)),
        None => Err(slices_err(
            folder,
            "the folder holds no DICOM or PNG, JPEG or BMP files".to_string(),
        )),
    }
}

/// A fresh, empty folder for one test's files.
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edgeseg-volume-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create a temp folder");
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_checks_its_parts() {
        let ok = Volume::new([2, 2, 1], [1.0, 2.0, 3.0], IDENTITY, vec![0.0; 4]).expect("valid");
        assert_eq!(ok.voxel_volume_ml(), 0.006);
        let new = |dims, spacing, affine, data| Volume::new(dims, spacing, affine, data);
        assert_eq!(
            new([2, 2, 1], [1.0; 3], IDENTITY, vec![0.0; 3]),
            Err(GridError::Length {
                dims: [2, 2, 1],
                expected: 4,
                found: 3
            })
        );
        assert_eq!(
            new([0, 2, 1], [1.0; 3], IDENTITY, vec![]),
            Err(GridError::Empty { dims: [0, 2, 1] })
        );
        assert!(matches!(
            new([1, 1, 1], [1.0, f64::NAN, 1.0], IDENTITY, vec![0.0]),
            Err(GridError::Spacing { .. })
        ));
        assert!(matches!(
            new([1, 1, 1], [1.0, -1.0, 1.0], IDENTITY, vec![0.0]),
            Err(GridError::Spacing { .. })
        ));
        let mut flat = IDENTITY;
        flat[2][2] = 0.0;
        assert!(matches!(
            new([1, 1, 1], [1.0; 3], flat, vec![0.0]),
            Err(GridError::Affine { .. })
        ));
        let err = new(
            [2, 1, 2],
            [1.0; 3],
            IDENTITY,
            vec![0.0, 0.0, f32::INFINITY, 0.0],
        )
        .expect_err("infinity");
        assert_eq!(
            err.to_string(),
            "volume holds 1 non-finite values (NaN or infinity), the first at voxel (0, 0, 1)"
        );
    }

    #[test]
    fn limits_hold_per_side_and_in_all() {
        assert_eq!(grid_voxels([2048, 2048, 64]), Ok(1 << 28));
        assert!(matches!(
            grid_voxels([2048, 2048, 65]),
            Err(GridError::TooLarge { .. })
        ));
        assert!(matches!(
            grid_voxels([2049, 1, 1]),
            Err(GridError::TooLarge { .. })
        ));
        assert!(matches!(
            grid_voxels([usize::MAX, usize::MAX, 2]),
            Err(GridError::TooLarge { .. })
        ));
    }

    #[test]
    fn load_refuses_what_is_not_a_volume_and_options_that_do_not_apply() {
        let dir = test_dir("load-dispatch");
        let text = dir.join("notes.txt");
        fs::write(&text, "hello").expect("write");
        let msg = load(&text, &LoadOptions::default())
            .expect_err("text")
            .to_string();
        assert!(
            msg.contains("notes.txt: not a volume: expected NIfTI-1"),
            "{msg}"
        );

        let empty = dir.join("empty");
        fs::create_dir(&empty).expect("mkdir");
        fs::write(empty.join(".hidden.png"), "x").expect("write");
        let msg = load(&empty, &LoadOptions::default())
            .expect_err("empty")
            .to_string();
        assert!(
            msg.ends_with("empty: the folder holds no DICOM or PNG, JPEG or BMP files"),
            "{msg}"
        );

        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let png = dir.join("a.png");
        image::RgbImage::new(2, 2).save(&png).expect("png");
        let msg = load(&png, &LoadOptions::default())
            .expect_err("one image")
            .to_string();
        assert!(msg.contains("a single 2D image"), "{msg}");

        let mixed = dir.join("mixed");
        fs::create_dir(&mixed).expect("mkdir");
        fs::copy(fixtures.join("dicom/mono2_8bit.dcm"), mixed.join("a.dcm")).expect("copy");
        fs::copy(&png, mixed.join("b.png")).expect("copy");
        let msg = load(&mixed, &LoadOptions::default())
            .expect_err("mixed")
            .to_string();
        assert!(
            msg.contains("b.png: is an image, but the folder's first slice"),
            "{msg}"
        );

        let nii = fixtures.join("volumes/uint8.nii");
        let spacing = LoadOptions {
            volume_index: None,
            spacing: Some([1.0; 3]),
        };
        let msg = load(&nii, &spacing).expect_err("spacing").to_string();
        assert!(
            msg.contains("--spacing does not apply: a NIfTI file records its own"),
            "{msg}"
        );
        let index = LoadOptions {
            volume_index: Some(0),
            spacing: Some([1.0; 3]),
        };
        let cine = fixtures.join("dicom/multiframe_3.dcm");
        let msg = load(&cine, &index).expect_err("index").to_string();
        assert!(msg.contains("--volume-index does not apply"), "{msg}");
        let series = fixtures.join("volumes/series");
        let msg = load(&series, &spacing).expect_err("series").to_string();
        assert!(
            msg.contains("a DICOM series records its own spacing"),
            "{msg}"
        );
    }
}
