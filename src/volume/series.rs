//! A folder of single-frame DICOM slices (one series) as a [`Volume`].
//!
//! Every file goes through the input module's DICOM checks and must be monochrome, with Image
//! Position (Patient), Image Orientation (Patient) and a pixel spacing; values are modality
//! values (Rescale Slope/Intercept applied). All slices must share rows, columns, orientation
//! and pixel spacing. They are sorted by their position projected on the slice normal (row
//! direction × column direction); the gaps between consecutive positions must be the same
//! within 1% (a missing slice, or two series in one folder, breaks this) and no two positions
//! may coincide. The positions must lie on a line (within half a pixel), which allows the
//! shear of a tilted gantry.
//!
//! Geometry: voxel `(i, j, k)` is column `i`, row `j` of the `k`-th slice in that order. In
//! DICOM's LPS frame the affine's columns are the row direction × column spacing, the column
//! direction × row spacing, and the step from the first slice's position to the last's over
//! `n - 1`; the translation is the first slice's position. The volume's affine is that
//! matrix with its x and y rows negated (LPS → RAS, as nibabel and dcm2niix). The spacing is
//! `[column spacing, row spacing, slice gap along the normal]`, so that its product is the
//! voxel volume even when the slices are sheared.

use std::path::{Path, PathBuf};

use super::{grid_voxels, Volume, VolumeError};
use crate::input::{self, MonoImage};

/// Allowed spread of the slice gaps, relative to their median.
const GAP_TOLERANCE: f64 = 0.01;
/// Positions closer than this along the normal (mm) are the same position.
const DUPLICATE_MM: f64 = 1e-3;
/// Allowed relative difference of orientation cosines and pixel spacings between slices.
const SAME_TOLERANCE: f64 = 1e-4;

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// One slice as read, before sorting.
struct Slice<'a> {
    path: &'a Path,
    image: MonoImage,
    /// Position along the slice normal, mm.
    along: f64,
}

/// Reads the series in `folder`, whose files (sorted, at most [`MAX_SIDE`](super::MAX_SIDE))
/// are `files`.
pub(crate) fn load(folder: &Path, files: &[PathBuf]) -> Result<Volume, VolumeError> {
    let slices_err = |path: &Path, reason: String| VolumeError::Slices {
        path: path.to_path_buf(),
        reason,
    };
    if files.len() < 2 {
        return Err(slices_err(
            folder,
            format!(
                "a DICOM series needs at least 2 slices to know its slice spacing, found {}",
                files.len()
            ),
        ));
    }
    let mut slices: Vec<Slice> = Vec::with_capacity(files.len());
    for path in files {
        let image = input::load_mono_dicom(path)?;
        if image.frames != 1 {
            return Err(slices_err(
                path,
                format!(
                    "holds {} frames; a series folder takes single-frame slices",
                    image.frames
                ),
            ));
        }
        let Some(first) = slices.first() else {
            grid_voxels([image.cols as usize, image.rows as usize, files.len()])
                .map_err(VolumeError::grid(folder))?;
            let normal = cross(image.orientation[0], image.orientation[1]);
            let along = dot(image.position, normal);
            slices.push(Slice { path, image, along });
            continue;
        };
        let (a, b) = (&first.image, &image);
        let first_name = file_name(first.path);
        if (a.cols, a.rows) != (b.cols, b.rows) {
            return Err(slices_err(
                path,
                format!(
                    "slice is {}x{}, the first slice ({first_name}) is {}x{}",
                    b.cols, b.rows, a.cols, a.rows
                ),
            ));
        }
        let cosines = |m: &MonoImage| [m.orientation[0], m.orientation[1]].concat();
        let same_orientation = cosines(a)
            .iter()
            .zip(cosines(b))
            .all(|(x, y)| (x - y).abs() <= SAME_TOLERANCE);
        if !same_orientation {
            return Err(slices_err(
                path,
                format!(
                    "orientation {:?} differs from the first slice's ({first_name}) {:?}",
                    b.orientation, a.orientation
                ),
            ));
        }
        let close = |x: f64, y: f64| (x - y).abs() <= SAME_TOLERANCE * x.max(y);
        if !close(a.spacing.row_mm, b.spacing.row_mm) || !close(a.spacing.col_mm, b.spacing.col_mm)
        {
            return Err(slices_err(
                path,
                format!(
                    "pixel spacing {}\\{} mm differs from the first slice's ({first_name}) \
                     {}\\{} mm",
                    b.spacing.row_mm, b.spacing.col_mm, a.spacing.row_mm, a.spacing.col_mm
                ),
            ));
        }
        let normal = cross(a.orientation[0], a.orientation[1]);
        let along = dot(image.position, normal);
        slices.push(Slice { path, image, along });
    }
    slices.sort_by(|a, b| a.along.total_cmp(&b.along));
    let (spacing, affine) = geometry(folder, &slices)?;
    let first = &slices[0].image;
    let dims = [first.cols as usize, first.rows as usize, slices.len()];
    let mut data = Vec::with_capacity(dims.iter().product());
    for slice in slices {
        data.extend_from_slice(&slice.image.values);
    }
    Volume::new(dims, spacing, affine, data).map_err(VolumeError::grid(folder))
}

/// Spacing and RAS affine of sorted slices, after checking their gaps and alignment.
fn geometry(folder: &Path, slices: &[Slice]) -> Result<([f64; 3], [[f64; 4]; 4]), VolumeError> {
    let fail = |reason: String| {
        Err(VolumeError::Slices {
            path: folder.to_path_buf(),
            reason,
        })
    };
    let gaps: Vec<f64> = slices.windows(2).map(|w| w[1].along - w[0].along).collect();
    if let Some(i) = gaps.iter().position(|&g| g < DUPLICATE_MM) {
        return fail(format!(
            "slices {} and {} lie at the same position ({:.3} mm along the slice normal): \
             duplicate slices, or more than one series in the folder",
            file_name(slices[i].path),
            file_name(slices[i + 1].path),
            slices[i].along
        ));
    }
    let mut sorted = gaps.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    if let Some(i) = gaps
        .iter()
        .position(|g| (g - median).abs() > GAP_TOLERANCE * median)
    {
        return fail(format!(
            "slice gaps differ by more than 1% ({}; the first odd one is {:.3} mm between {} \
             and {}): a missing slice, or more than one series in the folder",
            gap_summary(&gaps),
            gaps[i],
            file_name(slices[i].path),
            file_name(slices[i + 1].path)
        ));
    }

    let first = &slices[0].image;
    let last = &slices[slices.len() - 1].image;
    let steps = (slices.len() - 1) as f64;
    let step: [f64; 3] = std::array::from_fn(|a| (last.position[a] - first.position[a]) / steps);
    let half_pixel = 0.5 * first.spacing.row_mm.min(first.spacing.col_mm);
    for (k, slice) in slices.iter().enumerate() {
        let expected: [f64; 3] = std::array::from_fn(|a| first.position[a] + k as f64 * step[a]);
        let off = (0..3)
            .map(|a| (slice.image.position[a] - expected[a]).powi(2))
            .sum::<f64>()
            .sqrt();
        if off > half_pixel {
            return fail(format!(
                "slice {} lies {off:.3} mm off the line through the first and last slice \
                 positions (more than half a pixel)",
                file_name(slice.path)
            ));
        }
    }

    let [row, col] = first.orientation;
    let (dx, dy) = (first.spacing.col_mm, first.spacing.row_mm);
    let mut affine = super::IDENTITY;
    for a in 0..3 {
        // LPS → RAS: x and y change sign (adding 0 turns the -0 of a negated 0 into 0)
        let sign = if a < 2 { -1.0 } else { 1.0 };
        affine[a] = [row[a] * dx, col[a] * dy, step[a], first.position[a]].map(|v| sign * v + 0.0);
    }
    let dz = (slices[slices.len() - 1].along - slices[0].along) / steps;
    Ok(([dx, dy, dz], affine))
}

/// The distinct gaps (to 0.001 mm) with their counts, in order of appearance, at most eight.
fn gap_summary(gaps: &[f64]) -> String {
    let mut distinct: Vec<(f64, usize)> = Vec::new();
    for &g in gaps {
        let g = (g * 1000.0).round() / 1000.0;
        match distinct.iter_mut().find(|(v, _)| *v == g) {
            Some((_, n)) => *n += 1,
            None => distinct.push((g, 1)),
        }
    }
    let shown: Vec<String> = distinct
        .iter()
        .take(8)
        .map(|(g, n)| format!("{g} mm x{n}"))
        .collect();
    let more = if distinct.len() > 8 { ", ..." } else { "" };
    format!("gaps {}{more}", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::test_dir;

    /// One explicit VR little endian element.
    fn element(out: &mut Vec<u8>, group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) {
        let mut value = value.to_vec();
        if value.len() % 2 == 1 {
            value.push(if vr == b"UI" { 0 } else { b' ' });
        }
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&elem.to_le_bytes());
        out.extend_from_slice(vr);
        if [b"OB", b"OW"].contains(&vr) {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(&value);
    }

    fn decimals(values: &[f64]) -> Vec<u8> {
        let text: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        text.join("\\").into_bytes()
    }

    /// A CT-like slice: signed 16-bit, `value(x, y)` stored, rescale 2x - 1000.
    struct Slice {
        cols: u16,
        rows: u16,
        position: Option<[f64; 3]>,
        orientation: [f64; 6],
        spacing: [f64; 2],
        photometric: &'static str,
        value: fn(usize, usize) -> i16,
    }

    impl Default for Slice {
        fn default() -> Slice {
            Slice {
                cols: 4,
                rows: 3,
                position: Some([0.0; 3]),
                orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                spacing: [0.5, 0.75],
                photometric: "MONOCHROME2",
                value: |x, y| (x + 10 * y) as i16,
            }
        }
    }

    impl Slice {
        fn write(&self, path: &Path) {
            let mut meta = Vec::new();
            element(&mut meta, 0x0002, 0x0001, b"OB", &[0, 1]);
            element(
                &mut meta,
                0x0002,
                0x0002,
                b"UI",
                b"1.2.840.10008.5.1.4.1.1.2",
            );
            element(&mut meta, 0x0002, 0x0003, b"UI", b"1.2.3.4");
            element(&mut meta, 0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.1");
            let mut out = vec![0u8; 128];
            out.extend_from_slice(b"DICM");
            element(
                &mut out,
                0x0002,
                0x0000,
                b"UL",
                &(meta.len() as u32).to_le_bytes(),
            );
            out.extend(meta);
            let us = |v: u16| v.to_le_bytes();
            element(
                &mut out,
                0x0008,
                0x0016,
                b"UI",
                b"1.2.840.10008.5.1.4.1.1.2",
            );
            element(&mut out, 0x0008, 0x0018, b"UI", b"1.2.3.4");
            if let Some(p) = self.position {
                element(&mut out, 0x0020, 0x0032, b"DS", &decimals(&p));
            }
            element(
                &mut out,
                0x0020,
                0x0037,
                b"DS",
                &decimals(&self.orientation),
            );
            element(&mut out, 0x0028, 0x0002, b"US", &us(1));
            element(&mut out, 0x0028, 0x0004, b"CS", self.photometric.as_bytes());
            element(&mut out, 0x0028, 0x0010, b"US", &us(self.rows));
            element(&mut out, 0x0028, 0x0011, b"US", &us(self.cols));
            element(&mut out, 0x0028, 0x0030, b"DS", &decimals(&self.spacing));
            element(&mut out, 0x0028, 0x0100, b"US", &us(16));
            element(&mut out, 0x0028, 0x0101, b"US", &us(16));
            element(&mut out, 0x0028, 0x0102, b"US", &us(15));
            element(&mut out, 0x0028, 0x0103, b"US", &us(1));
            element(&mut out, 0x0028, 0x1052, b"DS", b"-1000");
            element(&mut out, 0x0028, 0x1053, b"DS", b"2");
            let pixels: Vec<u8> = (0..self.rows as usize)
                .flat_map(|y| (0..self.cols as usize).map(move |x| (x, y)))
                .flat_map(|(x, y)| (self.value)(x, y).to_le_bytes())
                .collect();
            element(&mut out, 0x7FE0, 0x0010, b"OW", &pixels);
            std::fs::write(path, out).expect("write slice");
        }
    }

    /// Writes one slice per position (file names in reverse order of position) and loads
    /// the folder.
    fn series(name: &str, slices: &[Slice]) -> (PathBuf, Result<Volume, VolumeError>) {
        let dir = test_dir(name);
        let files: Vec<PathBuf> = slices
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let path = dir.join(format!("im{:02}.dcm", slices.len() - i));
                s.write(&path);
                path
            })
            .collect();
        let mut sorted = files.clone();
        sorted.sort();
        let result = load(&dir, &sorted);
        (dir, result)
    }

    fn at(position: [f64; 3]) -> Slice {
        Slice {
            position: Some(position),
            ..Slice::default()
        }
    }

    #[test]
    fn slices_are_sorted_along_the_normal_with_an_ras_affine() {
        let positions = [
            [10.0, 20.0, 5.0],
            [10.0, 20.0, 2.5],
            [10.0, 20.0, 7.5],
            [10.0, 20.0, 0.0],
        ];
        let slices: Vec<Slice> = positions
            .iter()
            .enumerate()
            .map(|(i, &p)| Slice {
                value: [|x, y| (x + 10 * y) as i16, |_, _| 2, |_, _| 3, |_, _| 0][i],
                ..at(p)
            })
            .collect();
        let (_, v) = series("series-sort", &slices);
        let v = v.expect("series");
        assert_eq!(v.dims(), [4, 3, 4]);
        assert_eq!(v.spacing(), [0.75, 0.5, 2.5]);
        // stored z 0 → 0, z 1 (2.5 mm) → 2, z 2 (5 mm) → the ramp, z 3 → 3; then 2v - 1000
        assert_eq!(v.get(0, 0, 0), -1000.0);
        assert_eq!(v.get(0, 0, 1), -996.0);
        assert_eq!(v.get(3, 2, 2), (2 * 23 - 1000) as f32);
        assert_eq!(v.get(1, 1, 3), -994.0);
        assert_eq!(
            v.affine(),
            [
                [-0.75, 0.0, 0.0, -10.0],
                [0.0, -0.5, 0.0, -20.0],
                [0.0, 0.0, 2.5, 0.0],
                [0.0, 0.0, 0.0, 1.0]
            ]
        );
    }

    #[test]
    fn oblique_and_sheared_series_keep_their_geometry() {
        // rows along y, columns along -z: the normal is -x; slices step by -2 in x and 0.5 in y
        let orientation = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0];
        let slices: Vec<Slice> = (0..3)
            .map(|k| Slice {
                orientation,
                ..at([-2.0 * k as f64, 0.5 * k as f64, 0.0])
            })
            .collect();
        let v = series("series-oblique", &slices).1.expect("series");
        assert_eq!(v.spacing(), [0.75, 0.5, 2.0]);
        let a = v.affine();
        assert_eq!([a[0][0], a[1][0], a[2][0]], [0.0, -0.75, 0.0]);
        assert_eq!([a[0][1], a[1][1], a[2][1]], [0.0, 0.0, -0.5]);
        assert_eq!([a[0][2], a[1][2], a[2][2]], [2.0, -0.5, 0.0]);
    }

    #[test]
    fn uneven_gaps_and_duplicates_are_refused_naming_the_files() {
        let (dir, v) = series(
            "series-gap",
            &[
                at([0.0; 3]),
                at([0.0, 0.0, 2.0]),
                at([0.0, 0.0, 4.0]),
                at([0.0, 0.0, 8.0]),
            ],
        );
        let msg = v.expect_err("missing slice").to_string();
        assert!(
            msg.starts_with(&format!("{}: slice gaps differ", dir.display())),
            "{msg}"
        );
        assert!(msg.contains("gaps 2 mm x2, 4 mm x1"), "{msg}");
        assert!(
            msg.contains("4.000 mm between im02.dcm and im01.dcm"),
            "{msg}"
        );

        let (_, v) = series(
            "series-dup",
            &[at([0.0; 3]), at([0.0, 0.0, 2.0]), at([0.0, 0.0, 2.0])],
        );
        let msg = v.expect_err("duplicate").to_string();
        assert!(msg.contains("lie at the same position (2.000 mm"), "{msg}");

        let (_, v) = series(
            "series-line",
            &[at([0.0; 3]), at([3.0, 0.0, 2.0]), at([0.0, 0.0, 4.0])],
        );
        let msg = v.expect_err("off the line").to_string();
        assert!(
            msg.contains("slice im02.dcm lies 3.000 mm off the line"),
            "{msg}"
        );

        let (_, v) = series("series-one", &[at([0.0; 3])]);
        let msg = v.expect_err("one slice").to_string();
        assert!(msg.contains("at least 2 slices"), "{msg}");
    }

    #[test]
    fn slices_must_agree_in_size_orientation_and_spacing() {
        let cases: [(Slice, &str); 3] = [
            (
                Slice {
                    cols: 5,
                    ..at([0.0, 0.0, 2.0])
                },
                "slice is 5x3, the first slice (im01.dcm) is 4x3",
            ),
            (
                Slice {
                    orientation: [0.0, 1.0, 0.0, 1.0, 0.0, 0.0],
                    ..at([0.0, 0.0, 2.0])
                },
                "differs from the first slice's (im01.dcm)",
            ),
            (
                Slice {
                    spacing: [0.5, 0.8],
                    ..at([0.0, 0.0, 2.0])
                },
                "pixel spacing 0.5\\0.8 mm differs from the first slice's (im01.dcm) 0.5\\0.75 mm",
            ),
        ];
        for (i, (odd, needle)) in cases.into_iter().enumerate() {
            // written first, the odd slice is named im02.dcm and read after im01.dcm
            let (_, v) = series(&format!("series-mismatch-{i}"), &[odd, at([0.0; 3])]);
            let msg = v.expect_err(needle).to_string();
            assert!(msg.contains("im02.dcm: "), "{msg}");
            assert!(msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn slices_without_geometry_or_in_colour_are_refused_by_the_input_checks() {
        let (_, v) = series(
            "series-nopos",
            &[
                Slice {
                    position: None,
                    ..at([0.0; 3])
                },
                at([0.0, 0.0, 1.0]),
            ],
        );
        let msg = v.expect_err("no position").to_string();
        assert!(
            msg.ends_with("im02.dcm: missing Image Position (Patient) (0020,0032)"),
            "{msg}"
        );

        let bad = Slice {
            orientation: [1.0, 0.0, 0.0, 1.0, 0.0, 0.0],
            ..Slice::default()
        };
        let (_, v) = series("series-iop", &[bad, at([0.0, 0.0, 1.0])]);
        let msg = v.expect_err("parallel").to_string();
        let want = "Image Orientation (Patient) (0020,0037) is 1\\0\\0\\1\\0\\0, expected two \
                    orthogonal unit vectors";
        assert!(msg.contains(want), "{msg}");

        let rgb = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom/rgb_8bit.dcm");
        let msg = input::load_mono_dicom(&rgb)
            .expect_err("colour")
            .to_string();
        let want = "Photometric Interpretation (0028,0004) is \"RGB\", expected MONOCHROME1 or \
                    MONOCHROME2";
        assert!(msg.contains(want), "{msg}");
    }
}
