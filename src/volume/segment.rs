//! The volume pipeline of a promptable 3D model, independent of the model itself:
//!
//! 1. resample the volume trilinearly to the model spacing ([`resample`](super::resample));
//! 2. normalise the whole resampled volume ([`Normalization`]);
//! 3. with clicks: one patch centred on the mean of the clicks (mapped to the model grid),
//!    voxels outside the volume filled with the normalised minimum; every click must lie in
//!    the volume and all of them in that one patch. Without clicks: sliding windows over the
//!    whole grid with the configured overlap;
//! 4. run the model on each patch: `run(patch, points)` gets the patch (x fastest, dims
//!    [`VolumeConfig::patch`]) and the clicks in patch coordinates (voxel centres at integers)
//!    with labels 1 (foreground) and 0 (background), empty without clicks, and returns
//!    probabilities on the patch grid. Padding the points to the graph's fixed count (label
//!    -1), and upsampling low-resolution logits to the patch with
//!    [`upsample_trilinear`](super::resample::upsample_trilinear) before the activation, are
//!    the caller's part;
//! 5. blend patch probabilities with the importance map (one patch: pasted as is; voxels of
//!    the grid no patch covers are 0), resample them trilinearly to the input grid, and
//!    threshold (`probability > threshold`).
//!
//! Nothing here does I/O.

use std::error::Error;

use thiserror::Error;

use super::normalize::{Normalization, NormalizeError};
use super::patch::{importance_map, sliding_windows, Blender, Importance, Patch};
use super::resample::{map_position, resample, resampled_dims, Interpolation};
use super::{check_spacing, grid_voxels, shape, GridError, Volume};

/// One click on the input volume.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Click {
    /// Continuous voxel coordinates `[x, y, z]` of the input volume, voxel centres at
    /// integers.
    pub pos: [f64; 3],
    /// Foreground (`true`) or background.
    pub positive: bool,
}

/// A click handed to the model: patch coordinates and label (1 foreground, 0 background).
pub type Point = ([f32; 3], f32);

/// A model run on one patch: the patch (x fastest) and the clicks in it, to probabilities on
/// the patch grid.
pub type PatchModel<'a, E> = dyn FnMut(&[f32], &[Point]) -> Result<Vec<f32>, E> + 'a;

/// How the pipeline runs a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VolumeConfig {
    /// Millimetres per voxel of the model grid, `[x, y, z]`.
    pub spacing: [f64; 3],
    pub normalization: Normalization,
    /// Patch size `[x, y, z]` of the model input.
    pub patch: [usize; 3],
    /// Sliding-window overlap, a fraction of the patch in `[0, 0.9]`.
    pub overlap: f64,
    /// A voxel is in the mask when its probability exceeds this (0..=1).
    pub threshold: f32,
    pub importance: Importance,
}

/// The result on the input grid.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeMask {
    /// 1 inside, 0 outside, x fastest.
    pub mask: Vec<u8>,
    /// Foreground probability per voxel, x fastest.
    pub probability: Vec<f32>,
    pub dims: [usize; 3],
    pub spacing: [f64; 3],
    /// The input volume's affine.
    pub affine: [[f64; 4]; 4],
    /// Voxels in the mask.
    pub voxels: usize,
    /// Their volume in millilitres.
    pub volume_ml: f64,
}

/// Why a volume could not be segmented.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SegmentError {
    #[error("volume settings: {reason}")]
    Config { reason: String },
    #[error("volume settings: {0}")]
    Normalize(#[from] NormalizeError),
    #[error("resampling: {0}")]
    Grid(#[from] GridError),
    #[error(
        "click {} at ({}, {}, {}) lies outside the volume of {} voxels \
         (x, y, z from -0.5 to {}x{}x{} - 0.5)",
        index + 1, pos[0], pos[1], pos[2], shape(*dims), dims[0], dims[1], dims[2]
    )]
    ClickOutside {
        /// Zero-based (the message counts from 1).
        index: usize,
        pos: [f64; 3],
        dims: [usize; 3],
    },
    #[error(
        "the clicks span {:.1} x {:.1} x {:.1} mm, more than one patch of {} voxels at \
         {:?} mm covers; segment distant targets separately",
        extent_mm[0], extent_mm[1], extent_mm[2], shape(*patch), spacing
    )]
    ClicksSpread {
        extent_mm: [f64; 3],
        patch: [usize; 3],
        spacing: [f64; 3],
    },
    #[error("model on patch {} of {patches}: {source}", index + 1)]
    Model {
        index: usize,
        patches: usize,
        #[source]
        source: Box<dyn Error + Send + Sync>,
    },
    #[error("model on patch {} of {patches}: {reason}", index + 1)]
    Output {
        index: usize,
        patches: usize,
        reason: String,
    },
}

impl VolumeConfig {
    /// Checks every setting.
    pub fn check(&self) -> Result<(), SegmentError> {
        let config = |reason: String| Err(SegmentError::Config { reason });
        if check_spacing(self.spacing).is_err() {
            return config(format!(
                "spacing {:?} mm is not three finite positive numbers",
                self.spacing
            ));
        }
        if grid_voxels(self.patch).is_err() {
            return config(format!(
                "patch {} is empty or beyond the volume limits",
                shape(self.patch)
            ));
        }
        if !(0.0..=0.9).contains(&self.overlap) {
            return config(format!("overlap {} is not in [0, 0.9]", self.overlap));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return config(format!(
                "threshold {} is not a probability in 0..=1",
                self.threshold
            ));
        }
        Ok(self.normalization.check()?)
    }
}

/// Segments `volume` with the model `run` (see the module docs).
pub fn segment_volume<E>(
    volume: &Volume,
    clicks: &[Click],
    config: &VolumeConfig,
    run: &mut PatchModel<'_, E>,
) -> Result<VolumeMask, SegmentError>
where
    E: Into<Box<dyn Error + Send + Sync>>,
{
    config.check()?;
    let dims = volume.dims();
    for (index, click) in clicks.iter().enumerate() {
        let inside = (0..3).all(|a| (-0.5..=dims[a] as f64 - 0.5).contains(&click.pos[a]));
        if !inside {
            return Err(SegmentError::ClickOutside {
                index,
                pos: click.pos,
                dims,
            });
        }
    }

    let grid = resampled_dims(dims, volume.spacing(), config.spacing)?;
    let mut data = resample(volume.data(), dims, grid, Interpolation::Linear)?;
    config.normalization.apply(&mut data)?;
    let fill = data.iter().copied().fold(f32::INFINITY, f32::min);

    let (patches, points) = if clicks.is_empty() {
        (
            sliding_windows(grid, config.patch, config.overlap),
            Vec::new(),
        )
    } else {
        let on_grid: Vec<[f64; 3]> = clicks
            .iter()
            .map(|c| map_position(c.pos, dims, grid))
            .collect();
        let mean = std::array::from_fn(|a| {
            on_grid.iter().map(|p| p[a]).sum::<f64>() / on_grid.len() as f64
        });
        let patch = Patch::centred(mean, config.patch);
        if !on_grid.iter().all(|p| patch.contains(patch.to_patch(*p))) {
            let grid_spacing: [f64; 3] =
                std::array::from_fn(|a| volume.spacing()[a] * dims[a] as f64 / grid[a] as f64);
            let extent_mm = std::array::from_fn(|a| {
                let (lo, hi) = on_grid
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                        (lo.min(p[a]), hi.max(p[a]))
                    });
                (hi - lo) * grid_spacing[a]
            });
            return Err(SegmentError::ClicksSpread {
                extent_mm,
                patch: config.patch,
                spacing: config.spacing,
            });
        }
        let points = clicks
            .iter()
            .zip(&on_grid)
            .map(|(c, p)| {
                let [x, y, z] = patch.to_patch(*p);
                (
                    [x as f32, y as f32, z as f32],
                    if c.positive { 1.0 } else { 0.0 },
                )
            })
            .collect();
        (vec![patch], points)
    };

    let importance = importance_map(config.patch, config.importance);
    let mut blender = Blender::new(grid)?;
    let count = patches.len();
    for (index, patch) in patches.iter().enumerate() {
        let input = patch.crop(&data, grid, fill)?;
        let output = run(&input, &points).map_err(|e| SegmentError::Model {
            index,
            patches: count,
            source: e.into(),
        })?;
        let output_err = |reason: String| SegmentError::Output {
            index,
            patches: count,
            reason,
        };
        if output.len() != patch.voxels() {
            return Err(output_err(format!(
                "returned {} probabilities, the patch of {} needs {}",
                output.len(),
                shape(patch.size),
                patch.voxels()
            )));
        }
        if let Some(bad) = output.iter().find(|p| !(0.0..=1.0).contains(*p)) {
            return Err(output_err(format!(
                "returned {bad}, not a probability in 0..=1"
            )));
        }
        blender.add(patch, &output, &importance)?;
    }
    drop(data);

    let probability = resample(&blender.finish(), grid, dims, Interpolation::Linear)?;
    let mask: Vec<u8> = probability
        .iter()
        .map(|&p| u8::from(p > config.threshold))
        .collect();
    let voxels = mask.iter().filter(|&&m| m == 1).count();
    Ok(VolumeMask {
        mask,
        probability,
        dims,
        spacing: volume.spacing(),
        affine: volume.affine(),
        voxels,
        volume_ml: voxels as f64 * volume.voxel_volume_ml(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::IDENTITY;

    /// 40x40x16 voxels of 1 x 1 x 2.5 mm holding a smooth gradient.
    fn anisotropic() -> Volume {
        let dims = [40, 40, 16];
        let data = (0..dims.iter().product::<usize>())
            .map(|i| (i % 40) as f32 + 0.5 * ((i / 1600) as f32))
            .collect();
        let mut affine = IDENTITY;
        affine[2][2] = 2.5;
        Volume::new(dims, [1.0, 1.0, 2.5], affine, data).unwrap()
    }

    fn config() -> VolumeConfig {
        VolumeConfig {
            spacing: [1.0; 3],
            normalization: Normalization::ZScore,
            patch: [32, 32, 32],
            overlap: 0.5,
            threshold: 0.5,
            importance: Importance::Gaussian,
        }
    }

    /// A fake model: 1 within `radius` patch voxels of the first point, else 0.
    fn sphere(
        radius: f32,
        size: [usize; 3],
    ) -> impl FnMut(&[f32], &[Point]) -> Result<Vec<f32>, String> {
        move |patch, points| {
            assert_eq!(patch.len(), size.iter().product::<usize>());
            let ([cx, cy, cz], _) = *points.first().ok_or("no click")?;
            let mut out = Vec::with_capacity(patch.len());
            for z in 0..size[2] {
                for y in 0..size[1] {
                    for x in 0..size[0] {
                        let d2 = (x as f32 - cx).powi(2)
                            + (y as f32 - cy).powi(2)
                            + (z as f32 - cz).powi(2);
                        out.push(if d2 <= radius * radius { 1.0 } else { 0.0 });
                    }
                }
            }
            Ok(out)
        }
    }

    #[test]
    fn a_click_gives_the_sphere_in_the_right_place_after_anisotropic_resampling() {
        let volume = anisotropic();
        let click = Click {
            pos: [20.0, 18.0, 8.0],
            positive: true,
        };
        let mut seen = Vec::new();
        let mut model = sphere(6.0, [32; 3]);
        let mut run = |patch: &[f32], points: &[Point]| {
            seen.push(points.to_vec());
            model(patch, points)
        };
        let out = segment_volume(&volume, &[click], &config(), &mut run).expect("segment");
        assert_eq!(seen.len(), 1, "one patch for clicks");
        // the click on the 40x40x40 model grid is (20, 18, 20.75): z = (8 + 0.5) * 40 / 16 - 0.5;
        // the patch centred there starts at round(p - 15.5) = (5, 3, 5)
        assert_eq!(seen[0], vec![([15.0, 15.0, 15.75], 1.0)]);
        assert_eq!(out.dims, [40, 40, 16]);
        assert_eq!(out.affine, volume.affine());
        // a 6 mm sphere is 904.8 mm³: 361.9 voxels of 2.5 mm³
        let expected = 4.0 / 3.0 * std::f64::consts::PI * 216.0 / 2.5;
        assert!(
            (out.voxels as f64 - expected).abs() < 0.08 * expected,
            "{} voxels, expected about {expected:.0}",
            out.voxels
        );
        assert!((out.volume_ml - out.voxels as f64 * 0.0025).abs() < 1e-12);
        let mut centroid = [0.0; 3];
        for (i, &m) in out.mask.iter().enumerate() {
            if m == 1 {
                let p = [i % 40, (i / 40) % 40, i / 1600];
                for a in 0..3 {
                    centroid[a] += p[a] as f64 / out.voxels as f64;
                }
            }
        }
        for a in 0..3 {
            assert!(
                (centroid[a] - click.pos[a]).abs() < 0.3,
                "centroid {centroid:?}"
            );
        }
        assert_eq!(out.mask.len(), out.probability.len());
    }

    #[test]
    fn patches_past_the_edge_are_filled_with_the_normalised_minimum() {
        let volume = anisotropic();
        let click = Click {
            pos: [0.0, 0.0, 0.0],
            positive: false,
        };
        let mut run = |patch: &[f32], points: &[Point]| -> Result<Vec<f32>, String> {
            assert_eq!(points[0].1, 0.0, "a background click");
            let min = patch.iter().copied().fold(f32::INFINITY, f32::min);
            assert_eq!(patch[0], min, "outside voxels hold the minimum");
            assert!(patch.iter().filter(|&&v| v == min).count() > 16 * 32 * 32);
            Ok(vec![0.0; patch.len()])
        };
        let out = segment_volume(&volume, &[click], &config(), &mut run).expect("segment");
        assert_eq!(out.voxels, 0);
    }

    #[test]
    fn without_clicks_sliding_windows_blend_to_the_constant() {
        let volume = anisotropic();
        let mut calls = 0;
        let mut run = |patch: &[f32], points: &[Point]| -> Result<Vec<f32>, String> {
            assert!(points.is_empty());
            calls += 1;
            Ok(vec![0.7; patch.len()])
        };
        let config = VolumeConfig {
            patch: [16, 16, 16],
            ..config()
        };
        let out = segment_volume(&volume, &[], &config, &mut run).expect("segment");
        // 40 voxels per axis, patch 16, step 8: ceil(24 / 8) + 1 = 4 windows per axis
        assert_eq!(calls, 64);
        assert!(out.probability.iter().all(|&p| (p - 0.7).abs() < 1e-5));
        assert_eq!(out.voxels, 40 * 40 * 16);
    }

    fn error(clicks: &[Click], config: &VolumeConfig, output: Vec<f32>) -> String {
        let mut run = |_: &[f32], _: &[Point]| -> Result<Vec<f32>, String> { Ok(output.clone()) };
        let msg = segment_volume(&anisotropic(), clicks, config, &mut run)
            .expect_err("an error")
            .to_string();
        assert!(!msg.contains('\n'), "{msg}");
        msg
    }

    #[test]
    fn clicks_outside_or_apart_and_bad_settings_are_errors() {
        let click = |pos| Click {
            pos,
            positive: true,
        };
        let ok = vec![0.0; 32 * 32 * 32];
        let msg = error(
            &[click([1.0, 1.0, 1.0]), click([20.0, 40.0, 3.0])],
            &config(),
            ok.clone(),
        );
        assert_eq!(
            msg,
            "click 2 at (20, 40, 3) lies outside the volume of 40x40x16 voxels (x, y, z from \
             -0.5 to 40x40x16 - 0.5)"
        );
        let msg = error(
            &[click([1.0, 1.0, 1.0]), click([38.0, 1.0, 1.0])],
            &config(),
            ok.clone(),
        );
        assert!(
            msg.starts_with("the clicks span 37.0 x 0.0 x 0.0 mm, more than one patch of 32x32x32"),
            "{msg}"
        );
        let bad = [
            (
                VolumeConfig {
                    overlap: 0.95,
                    ..config()
                },
                "overlap 0.95 is not in [0, 0.9]",
            ),
            (
                VolumeConfig {
                    threshold: 1.5,
                    ..config()
                },
                "threshold 1.5 is not a probability",
            ),
            (
                VolumeConfig {
                    patch: [0, 8, 8],
                    ..config()
                },
                "patch 0x8x8 is empty",
            ),
            (
                VolumeConfig {
                    spacing: [1.0, 0.0, 1.0],
                    ..config()
                },
                "spacing [1.0, 0.0, 1.0] mm",
            ),
            (
                VolumeConfig {
                    normalization: Normalization::Window {
                        low: 2.0,
                        high: 1.0,
                    },
                    ..config()
                },
                "window [2, 1] needs finite bounds",
            ),
        ];
        for (config, needle) in bad {
            let msg = error(&[], &config, ok.clone());
            assert!(
                msg.starts_with("volume settings: ") && msg.contains(needle),
                "{msg}"
            );
        }
    }

    #[test]
    fn model_failures_and_bad_outputs_name_the_patch() {
        let clicked = [Click {
            pos: [20.0, 20.0, 8.0],
            positive: true,
        }];
        let msg = error(&clicked, &config(), vec![0.5; 10]);
        assert_eq!(
            msg,
            "model on patch 1 of 1: returned 10 probabilities, the patch of 32x32x32 needs 32768"
        );
        let mut out = vec![0.5; 32 * 32 * 32];
        out[7] = f32::NAN;
        let msg = error(&clicked, &config(), out);
        assert_eq!(
            msg,
            "model on patch 1 of 1: returned NaN, not a probability in 0..=1"
        );
        let mut run =
            |_: &[f32], _: &[Point]| -> Result<Vec<f32>, String> { Err("tract failed".into()) };
        let msg = segment_volume(&anisotropic(), &[], &config(), &mut run)
            .expect_err("model error")
            .to_string();
        assert_eq!(msg, "model on patch 1 of 8: tract failed");
    }
}
