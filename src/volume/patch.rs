//! Patches of a volume grid: cropping (voxels outside the volume take a fill value), click
//! coordinates in patch space, sliding-window tiling, importance maps, and blending patch
//! outputs back into the grid.
//!
//! A patch is an integer box `origin .. origin + size` of the grid; it may stick out of the
//! volume on any side. A patch centred on the continuous position `c` has
//! `origin = round(c - (size - 1) / 2)`, so `c` lies within half a voxel of the patch centre.
//!
//! Sliding windows follow nnU-Net: per axis, `ceil((n - size) / (size * (1 - overlap))) + 1`
//! windows, spread evenly so that the first starts at 0 and the last ends at `n`; an axis
//! shorter than the patch gets one window centred on it. Outputs are blended with an
//! importance map: a Gaussian with sigma = 1/8 of the patch side, peak 1 (nnU-Net), or a
//! linear tent; overlapping voxels take the importance-weighted mean.

use super::{grid_voxels, GridError};

/// An integer box of a voxel grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patch {
    /// Grid index of the patch's first voxel; may be negative.
    pub origin: [i64; 3],
    pub size: [usize; 3],
}

impl Patch {
    /// The patch of `size` centred on the continuous grid position `centre`.
    pub fn centred(centre: [f64; 3], size: [usize; 3]) -> Patch {
        Patch {
            origin: std::array::from_fn(|a| {
                (centre[a] - (size[a] as f64 - 1.0) / 2.0 + 0.5).floor() as i64
            }),
            size,
        }
    }

    /// Voxels in the patch.
    pub fn voxels(&self) -> usize {
        self.size.iter().product()
    }

    /// A grid position in patch coordinates (voxel centres at integers).
    pub fn to_patch(&self, pos: [f64; 3]) -> [f64; 3] {
        std::array::from_fn(|a| pos[a] - self.origin[a] as f64)
    }

    /// Whether a patch coordinate lies within the patch (voxel edges included).
    pub fn contains(&self, pos: [f64; 3]) -> bool {
        (0..3).all(|a| pos[a] >= -0.5 && pos[a] <= self.size[a] as f64 - 0.5)
    }

    /// The patch's voxels of `data` (x fastest, `dims`), `fill` where it leaves the volume.
    pub fn crop(&self, data: &[f32], dims: [usize; 3], fill: f32) -> Result<Vec<f32>, GridError> {
        check_len(data, dims)?;
        let voxels = grid_voxels(self.size)?;
        let w = self.size[0];
        let mut out = Vec::with_capacity(voxels);
        let (x0, x1) = self.x_span(dims);
        for (gy, gz) in self.rows() {
            if !inside(gy, gz, dims) || x0 == x1 {
                out.resize(out.len() + w, fill);
                continue;
            }
            let row = (gy as usize + dims[1] * gz as usize) * dims[0];
            let gx0 = (self.origin[0] + x0 as i64) as usize;
            out.resize(out.len() + x0, fill);
            out.extend_from_slice(&data[row + gx0..row + gx0 + (x1 - x0)]);
            out.resize(out.len() + (w - x1), fill);
        }
        Ok(out)
    }

    /// The patch's x range that lies in a grid of `dims`, in patch coordinates (empty when
    /// none does).
    fn x_span(&self, dims: [usize; 3]) -> (usize, usize) {
        let w = self.size[0] as i64;
        let x0 = 0i64.saturating_sub(self.origin[0]).clamp(0, w);
        let x1 = (dims[0] as i64).saturating_sub(self.origin[0]).clamp(x0, w);
        (x0 as usize, x1 as usize)
    }

    /// Grid `(y, z)` of each patch row, in patch order.
    fn rows(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        (0..self.size[2] as i64).flat_map(move |z| {
            (0..self.size[1] as i64).map(move |y| {
                (
                    self.origin[1].saturating_add(y),
                    self.origin[2].saturating_add(z),
                )
            })
        })
    }
}

/// Whether grid row `(y, z)` lies in a grid of `dims`.
fn inside(y: i64, z: i64, dims: [usize; 3]) -> bool {
    (0..dims[1] as i64).contains(&y) && (0..dims[2] as i64).contains(&z)
}

fn check_len(data: &[f32], dims: [usize; 3]) -> Result<(), GridError> {
    let expected = grid_voxels(dims)?;
    if data.len() != expected {
        return Err(GridError::Length {
            dims,
            expected,
            found: data.len(),
        });
    }
    Ok(())
}

/// Window origins along one axis of `n` voxels for a patch side `size`.
fn axis_origins(n: usize, size: usize, overlap: f64) -> Vec<i64> {
    if n <= size {
        return vec![-(((size - n) / 2) as i64)];
    }
    let step = (size as f64 * (1.0 - overlap)).max(1.0);
    let count = ((n - size) as f64 / step).ceil() as usize + 1;
    let actual = (n - size) as f64 / (count - 1) as f64;
    (0..count)
        .map(|i| (actual * i as f64).round() as i64)
        .collect()
}

/// Patches of `size` tiling a grid of `dims` with `overlap` (a fraction of the patch, below
/// 1), x fastest; together they cover every voxel.
pub fn sliding_windows(dims: [usize; 3], size: [usize; 3], overlap: f64) -> Vec<Patch> {
    let [xs, ys, zs] = std::array::from_fn(|a| axis_origins(dims[a], size[a], overlap));
    let mut out = Vec::with_capacity(xs.len() * ys.len() * zs.len());
    for &z in &zs {
        for &y in &ys {
            for &x in &xs {
                out.push(Patch {
                    origin: [x, y, z],
                    size,
                });
            }
        }
    }
    out
}

/// The weight of each patch voxel when overlapping outputs are blended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Importance {
    /// Gaussian, sigma = 1/8 of the side per axis, 1 at the centre (nnU-Net).
    #[default]
    Gaussian,
    /// Tent: falls linearly from the centre to half a voxel's weight beyond the edge.
    Linear,
}

/// The importance map of a patch of `size` (x fastest), every value in (0, 1].
pub fn importance_map(size: [usize; 3], kind: Importance) -> Vec<f32> {
    let profile = |n: usize| -> Vec<f64> {
        let c = (n as f64 - 1.0) / 2.0;
        (0..n)
            .map(|i| {
                let d = i as f64 - c;
                match kind {
                    Importance::Gaussian => {
                        let sigma = n as f64 / 8.0;
                        (-d * d / (2.0 * sigma * sigma)).exp()
                    }
                    Importance::Linear => 1.0 - d.abs() / (c + 1.0),
                }
            })
            .collect()
    };
    let [px, py, pz] = size.map(profile);
    let mut out = Vec::with_capacity(size.iter().product());
    for z in &pz {
        for y in &py {
            out.extend(px.iter().map(|x| (x * y * z) as f32));
        }
    }
    out
}

/// Accumulates weighted patch outputs over a grid.
#[derive(Debug, Clone)]
pub struct Blender {
    dims: [usize; 3],
    sum: Vec<f32>,
    weight: Vec<f32>,
}

impl Blender {
    /// An empty accumulator over a grid of `dims`.
    pub fn new(dims: [usize; 3]) -> Result<Blender, GridError> {
        let voxels = grid_voxels(dims)?;
        Ok(Blender {
            dims,
            sum: vec![0.0; voxels],
            weight: vec![0.0; voxels],
        })
    }

    /// Adds a patch's `values` weighted by `importance` (both x fastest over the patch);
    /// voxels outside the grid are dropped.
    pub fn add(
        &mut self,
        patch: &Patch,
        values: &[f32],
        importance: &[f32],
    ) -> Result<(), GridError> {
        for buffer in [values, importance] {
            check_len(buffer, patch.size)?;
        }
        let dims = self.dims;
        let (x0, x1) = patch.x_span(dims);
        for (k, (gy, gz)) in patch.rows().enumerate() {
            if !inside(gy, gz, dims) || x0 == x1 {
                continue;
            }
            let row = (gy as usize + dims[1] * gz as usize) * dims[0];
            let gx0 = (patch.origin[0] + x0 as i64) as usize;
            let span = row + gx0..row + gx0 + (x1 - x0);
            let at = k * patch.size[0] + x0..k * patch.size[0] + x1;
            let sums = self.sum[span.clone()]
                .iter_mut()
                .zip(&mut self.weight[span]);
            for ((s, w), (v, i)) in sums.zip(values[at.clone()].iter().zip(&importance[at])) {
                *s += v * i;
                *w += i;
            }
        }
        Ok(())
    }

    /// The blended grid: the weighted mean where any patch contributed, else 0.
    pub fn finish(self) -> Vec<f32> {
        self.sum
            .into_iter()
            .zip(self.weight)
            .map(|(s, w)| if w > 0.0 { s / w } else { 0.0 })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_fills_outside_the_volume() {
        let dims = [4, 3, 2];
        let data: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let patch = Patch {
            origin: [-1, 1, 1],
            size: [3, 3, 2],
        };
        let out = patch.crop(&data, dims, -9.0).expect("crop");
        #[rustfmt::skip]
        let want = [
            -9.0, 16.0, 17.0,   -9.0, 20.0, 21.0,   -9.0, -9.0, -9.0,
            -9.0, -9.0, -9.0,   -9.0, -9.0, -9.0,   -9.0, -9.0, -9.0,
        ];
        assert_eq!(out, want);
        let far = Patch {
            origin: [10, 0, 0],
            size: [2, 1, 1],
        };
        assert_eq!(far.crop(&data, dims, 0.5).unwrap(), [0.5, 0.5]);
        assert!(matches!(
            patch.crop(&data[..5], dims, 0.0),
            Err(GridError::Length { .. })
        ));
    }

    #[test]
    fn a_centred_patch_holds_its_centre_within_half_a_voxel() {
        let even = Patch::centred([5.0, 5.2, 4.8], [4, 4, 4]);
        assert_eq!(even.origin, [4, 4, 3]);
        let p = even.to_patch([5.0, 5.2, 4.8]);
        assert!(
            (0..3).all(|a| (p[a] - [1.0, 1.2, 1.8][a]).abs() < 1e-12),
            "{p:?}"
        );
        let odd = Patch::centred([5.0, 0.0, -3.0], [5, 5, 5]);
        assert_eq!(odd.origin, [3, -2, -5]);
        assert_eq!(odd.to_patch([5.0, 0.0, -3.0]), [2.0, 2.0, 2.0]);
        assert!(odd.contains([-0.5, 4.5, 0.0]));
        assert!(!odd.contains([-0.6, 0.0, 0.0]));
    }

    #[test]
    fn sliding_windows_follow_nnunet_and_cover_every_voxel() {
        // nnU-Net: image 100, tile 64, step 0.5 → origins 0, 18, 36
        assert_eq!(axis_origins(100, 64, 0.5), [0, 18, 36]);
        assert_eq!(axis_origins(64, 64, 0.5), [0]);
        assert_eq!(axis_origins(50, 64, 0.5), [-7]);
        assert_eq!(axis_origins(10, 4, 0.0), [0, 3, 6]);
        for dims in [[7, 9, 5], [16, 16, 16], [33, 20, 3]] {
            for size in [[4, 4, 4], [8, 5, 6], [16, 16, 2]] {
                for overlap in [0.0, 0.25, 0.5, 0.9] {
                    let windows = sliding_windows(dims, size, overlap);
                    let mut blender = Blender::new(dims).unwrap();
                    for w in &windows {
                        let ones = vec![1.0; w.voxels()];
                        blender.add(w, &ones, &ones).unwrap();
                    }
                    let covered = blender.weight.iter().all(|&w| w > 0.0);
                    assert!(covered, "{dims:?} {size:?} {overlap}");
                    for a in 0..3 {
                        if dims[a] >= size[a] {
                            let last = windows.iter().map(|w| w.origin[a]).max().unwrap();
                            assert_eq!(last as usize + size[a], dims[a], "flush end");
                            assert!(windows.iter().all(|w| w.origin[a] >= 0));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn importance_maps_peak_at_the_centre_and_stay_positive() {
        for kind in [Importance::Gaussian, Importance::Linear] {
            let map = importance_map([5, 3, 64], kind);
            assert_eq!(map.len(), 5 * 3 * 64);
            assert!(map.iter().all(|&w| w > 0.0 && w <= 1.0), "{kind:?}");
            let centre = map[2 + 5 * (1 + 3 * 31)];
            assert!(map.iter().all(|&w| w <= centre));
            assert_eq!(map[0], map[4], "symmetric in x");
        }
        let g = importance_map([9, 1, 1], Importance::Gaussian);
        assert_eq!(g[4], 1.0);
        // sigma = 9 / 8: one voxel out is exp(-1 / (2 * (9/8)^2))
        assert!((f64::from(g[5]) - (-1.0f64 / (2.0 * 1.265_625)).exp()).abs() < 1e-6);
        let t = importance_map([3, 1, 1], Importance::Linear);
        assert_eq!(t, [0.5, 1.0, 0.5]);
    }

    #[test]
    fn blending_constant_patches_gives_the_constant() {
        let dims = [20, 11, 7];
        for kind in [Importance::Gaussian, Importance::Linear] {
            let size = [8, 8, 8];
            let importance = importance_map(size, kind);
            let mut blender = Blender::new(dims).unwrap();
            for w in sliding_windows(dims, size, 0.5) {
                blender
                    .add(&w, &vec![0.25; w.voxels()], &importance)
                    .unwrap();
            }
            let out = blender.finish();
            assert!(out.iter().all(|&v| (v - 0.25).abs() < 1e-6), "{kind:?}");
        }
        // one pasted patch: its values inside, 0 elsewhere
        let mut blender = Blender::new([4, 4, 1]).unwrap();
        let patch = Patch {
            origin: [2, -1, 0],
            size: [3, 2, 1],
        };
        let ones = [1.0; 6];
        blender
            .add(&patch, &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], &ones)
            .unwrap();
        let out = blender.finish();
        assert_eq!(&out[..4], &[0.0, 0.0, 0.4, 0.5]);
        assert!(out[4..].iter().all(|&v| v == 0.0));
        let mut blender = Blender::new([4, 4, 1]).unwrap();
        assert!(blender.add(&patch, &[0.0; 5], &ones).is_err());
    }
}
