//! Resampling between voxel grids that cover the same physical extent.
//!
//! Voxel centres are aligned as in PyTorch's `interpolate(..., align_corners=False)`: along an
//! axis of `n` source and `m` output voxels, output voxel `o` samples the source at the
//! continuous position `(o + 0.5) * n / m - 0.5`, clamped to the first and last voxels at the
//! edges. Trilinear interpolation is three separable linear passes (shrinking axes first),
//! which gives exactly the trilinear weights; nearest picks the voxel containing that
//! position.
//!
//! A grid resampled to a target spacing has `m = round(n * spacing / target)` voxels per axis
//! (halves to even, as numpy rounds; at least one): its extent `n * spacing` is the source's,
//! so its actual spacing is `spacing * n / m`, close to the target. Output sizes are checked
//! against the volume limits before anything is allocated.

use std::borrow::Cow;

use super::{check_spacing, grid_voxels, GridError, Volume};

/// How values between voxel centres are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    /// Trilinear: for intensities and probabilities.
    Linear,
    /// Nearest voxel: for label masks.
    Nearest,
}

/// The dimensions of a grid with (about) `target` spacing covering the extent of `dims` at
/// `spacing`: `round(dims * spacing / target)` (halves to even), at least 1, within the volume
/// limits.
pub fn resampled_dims(
    dims: [usize; 3],
    spacing: [f64; 3],
    target: [f64; 3],
) -> Result<[usize; 3], GridError> {
    check_spacing(spacing)?;
    check_spacing(target)?;
    // `as` saturates, so an absurd ratio becomes a size the limit check refuses
    let out = std::array::from_fn(|a| {
        ((dims[a] as f64 * spacing[a] / target[a]).round_ties_even() as usize).max(1)
    });
    grid_voxels(out)?;
    Ok(out)
}

/// Where the continuous voxel position `pos` of a grid of `from` dims lies on a grid of `to`
/// dims covering the same extent (the mapping [`resample`] uses, inverted).
pub fn map_position(pos: [f64; 3], from: [usize; 3], to: [usize; 3]) -> [f64; 3] {
    std::array::from_fn(|a| (pos[a] + 0.5) * to[a] as f64 / from[a] as f64 - 0.5)
}

/// Resamples `src` (x fastest, `src_dims`) to `dst_dims` (see the module docs).
pub fn resample(
    src: &[f32],
    src_dims: [usize; 3],
    dst_dims: [usize; 3],
    interpolation: Interpolation,
) -> Result<Vec<f32>, GridError> {
    let expected = grid_voxels(src_dims)?;
    if src.len() != expected {
        return Err(GridError::Length {
            dims: src_dims,
            expected,
            found: src.len(),
        });
    }
    grid_voxels(dst_dims)?;
    // shrinking axes first keeps the intermediate grids small
    let mut axes = [0, 1, 2];
    axes.sort_by(|&a, &b| {
        let ratio = |i: usize| dst_dims[i] as f64 / src_dims[i] as f64;
        ratio(a).total_cmp(&ratio(b))
    });
    let mut dims = src_dims;
    let mut data = Cow::Borrowed(src);
    for axis in axes {
        if dims[axis] != dst_dims[axis] {
            let (pass, pass_dims) = axis_pass(&data, dims, axis, dst_dims[axis], interpolation);
            (data, dims) = (Cow::Owned(pass), pass_dims);
        }
    }
    Ok(data.into_owned())
}

/// Trilinear resampling with `align_corners=False` semantics, e.g. a model's low-resolution
/// logits to its patch size.
pub fn upsample_trilinear(
    src: &[f32],
    src_dims: [usize; 3],
    dst_dims: [usize; 3],
) -> Result<Vec<f32>, GridError> {
    resample(src, src_dims, dst_dims, Interpolation::Linear)
}

/// For each output index along an axis of `n` source voxels resampled to `m`: the two source
/// indices and the weight of the second.
fn taps(n: usize, m: usize, interpolation: Interpolation) -> Vec<(usize, usize, f32)> {
    let scale = n as f64 / m as f64;
    (0..m)
        .map(|o| match interpolation {
            Interpolation::Linear => {
                let pos = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (pos.floor() as usize).min(n - 1);
                let i1 = (i0 + 1).min(n - 1);
                (i0, i1, (pos - i0 as f64) as f32)
            }
            Interpolation::Nearest => {
                let i = (((o as f64 + 0.5) * scale).floor() as usize).min(n - 1);
                (i, i, 0.0)
            }
        })
        .collect()
}

/// Resamples one axis to `m` voxels. Along x each output value blends two values of a row;
/// along y and z each output row (or plane) blends two contiguous rows (or planes).
fn axis_pass(
    src: &[f32],
    dims: [usize; 3],
    axis: usize,
    m: usize,
    interpolation: Interpolation,
) -> (Vec<f32>, [usize; 3]) {
    let taps = taps(dims[axis], m, interpolation);
    let mut out_dims = dims;
    out_dims[axis] = m;
    let mut out = Vec::with_capacity(out_dims.iter().product());
    let lerp = |a: f32, b: f32, w: f32| a + (b - a) * w;
    if axis == 0 {
        for row in src.chunks_exact(dims[0]) {
            out.extend(taps.iter().map(|&(i0, i1, w)| lerp(row[i0], row[i1], w)));
        }
    } else {
        // `inner` values per line along the axis, `n` lines per block
        let inner: usize = dims[..axis].iter().product();
        let n = dims[axis];
        for block in src.chunks_exact(inner * n) {
            for &(i0, i1, w) in &taps {
                let (a, b) = (&block[i0 * inner..][..inner], &block[i1 * inner..][..inner]);
                out.extend(a.iter().zip(b).map(|(&a, &b)| lerp(a, b, w)));
            }
        }
    }
    (out, out_dims)
}

impl Volume {
    /// This volume trilinearly resampled to (about) `target` spacing (see the module docs);
    /// the affine is updated so that every voxel keeps its world position.
    pub fn resampled(&self, target: [f64; 3]) -> Result<Volume, GridError> {
        let dims = resampled_dims(self.dims, self.spacing, target)?;
        let data = resample(&self.data, self.dims, dims, Interpolation::Linear)?;
        // output voxel o is source position r * o + (r - 1) / 2, with r = n / m per axis
        let ratio: [f64; 3] = std::array::from_fn(|a| self.dims[a] as f64 / dims[a] as f64);
        let mut affine = self.affine;
        for (row, src) in affine.iter_mut().zip(self.affine).take(3) {
            for a in 0..3 {
                row[a] = src[a] * ratio[a];
                row[3] += src[a] * (ratio[a] - 1.0) / 2.0;
            }
        }
        let spacing = std::array::from_fn(|a| self.spacing[a] * ratio[a]);
        Volume::new(dims, spacing, affine, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::IDENTITY;

    fn field(dims: [usize; 3], f: impl Fn(f64, f64, f64) -> f64) -> Vec<f32> {
        let mut out = Vec::new();
        for z in 0..dims[2] {
            for y in 0..dims[1] {
                for x in 0..dims[0] {
                    out.push(f(x as f64, y as f64, z as f64) as f32);
                }
            }
        }
        out
    }

    #[test]
    fn linear_matches_pytorch_align_corners_false() {
        // torch.nn.functional.interpolate([0, 1], size=4, mode="linear") = [0, .25, .75, 1]
        let up = resample(&[0.0, 1.0], [2, 1, 1], [4, 1, 1], Interpolation::Linear).unwrap();
        assert_eq!(up, [0.0, 0.25, 0.75, 1.0]);
        // size 3 → 2 samples at 0.25 and 1.75: [0.25, 1.75] of [0, 1, 2]
        let down = upsample_trilinear(&[0.0, 1.0, 2.0], [1, 1, 3], [1, 1, 2]).expect("resample");
        assert_eq!(down, [0.25, 1.75]);
        let nearest = resample(
            &[0.0, 1.0, 2.0],
            [3, 1, 1],
            [2, 1, 1],
            Interpolation::Nearest,
        )
        .unwrap();
        assert_eq!(nearest, [0.0, 2.0]);
    }

    #[test]
    fn a_smooth_field_up_then_down_is_itself() {
        let dims = [20, 16, 12];
        let f = |x: f64, y: f64, z: f64| (x * 0.3).sin() + (y * 0.2).cos() + 0.1 * z;
        let src = field(dims, f);
        let up = resample(&src, dims, [40, 32, 30], Interpolation::Linear).unwrap();
        let back = resample(&up, [40, 32, 30], dims, Interpolation::Linear).unwrap();
        let mut worst = 0.0f32;
        for z in 1..dims[2] - 1 {
            for y in 1..dims[1] - 1 {
                for x in 1..dims[0] - 1 {
                    let i = x + dims[0] * (y + dims[1] * z);
                    worst = worst.max((back[i] - src[i]).abs());
                }
            }
        }
        assert!(worst < 0.02, "worst interior error {worst}");
        // a linear field is reproduced exactly away from the clamped edges
        let lin = field(dims, |x, y, z| x + 2.0 * y - z);
        let up = resample(&lin, dims, [40, 32, 24], Interpolation::Linear).unwrap();
        let expect = field([40, 32, 24], |x, y, z| {
            let [sx, sy, sz] = map_position([x, y, z], [40, 32, 24], dims);
            sx + 2.0 * sy - sz
        });
        let i = 10 + 40 * (10 + 32 * 10);
        assert!((up[i] - expect[i]).abs() < 1e-4);
    }

    #[test]
    fn nearest_keeps_labels_and_round_trips_by_whole_factors() {
        let dims = [5, 4, 3];
        let mask = field(dims, |x, y, z| {
            f64::from(((x + y + z) as u32).is_multiple_of(3))
        });
        let up = resample(&mask, dims, [10, 12, 6], Interpolation::Nearest).unwrap();
        assert!(up.iter().all(|&v| v == 0.0 || v == 1.0));
        let back = resample(&up, [10, 12, 6], dims, Interpolation::Nearest).unwrap();
        assert_eq!(back, mask);
    }

    #[test]
    fn resampling_to_a_spacing_keeps_the_extent_and_world_positions() {
        let mut affine = IDENTITY;
        affine[0] = [0.0, -0.7, 0.0, 12.0];
        affine[1] = [0.7, 0.0, 0.0, -3.0];
        affine[2] = [0.0, 0.0, 2.5, 40.0];
        let dims = [30, 20, 9];
        let v = Volume::new(dims, [0.7, 0.7, 2.5], affine, vec![1.0; 30 * 20 * 9]).unwrap();
        let r = v.resampled([1.0, 1.0, 1.0]).expect("resample");
        // 21, 14 and 22.5, rounded half to even as numpy does
        assert_eq!(r.dims(), [21, 14, 22]);
        for (a, &n) in dims.iter().enumerate() {
            let extent = r.dims()[a] as f64 * r.spacing()[a];
            assert!((extent - n as f64 * v.spacing()[a]).abs() < 1e-9);
        }
        assert!(r.data().iter().all(|&x| (x - 1.0).abs() < 1e-6));
        let world = |a: [[f64; 4]; 4], p: [f64; 3]| -> [f64; 3] {
            std::array::from_fn(|i| a[i][0] * p[0] + a[i][1] * p[1] + a[i][2] * p[2] + a[i][3])
        };
        // the outer corners of the grids coincide, and so does any mapped position
        let corner = |d: [usize; 3]| d.map(|n| n as f64 - 0.5);
        for (p, q) in [([-0.5; 3], [-0.5; 3]), (corner(dims), corner(r.dims()))] {
            let (a, b) = (world(affine, p), world(r.affine(), q));
            assert!((0..3).all(|i| (a[i] - b[i]).abs() < 1e-9), "{a:?} vs {b:?}");
        }
        let p = [3.2, 11.0, 4.5];
        let (a, b) = (
            world(affine, p),
            world(r.affine(), map_position(p, dims, r.dims())),
        );
        assert!((0..3).all(|i| (a[i] - b[i]).abs() < 1e-9), "{a:?} vs {b:?}");
    }

    #[test]
    fn sizes_are_checked_before_allocating() {
        assert_eq!(
            resampled_dims([10, 10, 3], [1.0; 3], [100.0; 3]),
            Ok([1, 1, 1])
        );
        assert!(matches!(
            resampled_dims([512, 512, 300], [1.0; 3], [0.1; 3]),
            Err(GridError::TooLarge { .. })
        ));
        assert!(matches!(
            resampled_dims([4, 4, 4], [1.0; 3], [0.0, 1.0, 1.0]),
            Err(GridError::Spacing { .. })
        ));
        assert!(matches!(
            resample(&[0.0; 5], [2, 3, 1], [4, 4, 4], Interpolation::Linear),
            Err(GridError::Length {
                expected: 6,
                found: 5,
                ..
            })
        ));
        assert!(matches!(
            resample(&[0.0; 6], [2, 3, 1], [4096, 1, 1], Interpolation::Linear),
            Err(GridError::TooLarge { .. })
        ));
    }
}
