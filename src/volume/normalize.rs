//! Intensity normalisation of a whole volume, as a `sam3d` package's `[volume]` table asks
//! (it runs after resampling to the model spacing, before patches are cut):
//! - `zscore`: `(v - mean) / max(std, 1e-8)`, population standard deviation (nnU-Net);
//! - `window = [low, high]`: clip to the window, then `(v - low) / (high - low)`;
//! - `percentiles = [plow, phigh]`: the volume's percentiles `a` and `b` (linear
//!   interpolation between order statistics, numpy's default method), clip to them, then
//!   `(v - a) / (b - a)`; a volume with `a == b` becomes 0.
//!
//! Sums run in `f64`. Percentiles are found by selection on a copy (linear time).

use thiserror::Error;

/// A normalisation whose parameters cannot be used.
#[derive(Debug, Clone, Error, PartialEq)]
#[non_exhaustive]
pub enum NormalizeError {
    #[error("window [{low}, {high}] needs finite bounds with low < high")]
    Window { low: f64, high: f64 },
    #[error("percentiles [{low}, {high}] need 0 <= low < high <= 100")]
    Percentiles { low: f64, high: f64 },
}

/// How intensities are mapped before a model sees them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normalization {
    ZScore,
    Window { low: f64, high: f64 },
    Percentile { low: f64, high: f64 },
}

impl Normalization {
    /// Checks the parameters.
    pub fn check(&self) -> Result<(), NormalizeError> {
        match *self {
            Normalization::ZScore => Ok(()),
            Normalization::Window { low, high } => {
                if low.is_finite() && high.is_finite() && low < high {
                    Ok(())
                } else {
                    Err(NormalizeError::Window { low, high })
                }
            }
            Normalization::Percentile { low, high } => {
                if 0.0 <= low && low < high && high <= 100.0 {
                    Ok(())
                } else {
                    Err(NormalizeError::Percentiles { low, high })
                }
            }
        }
    }

    /// Normalises `data` in place (see the module docs).
    pub fn apply(&self, data: &mut [f32]) -> Result<(), NormalizeError> {
        self.check()?;
        let (low, high) = match *self {
            Normalization::ZScore => {
                let n = data.len().max(1) as f64;
                let mean = data.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                let var = data
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>()
                    / n;
                let std = var.sqrt().max(1e-8);
                for v in data.iter_mut() {
                    *v = ((f64::from(*v) - mean) / std) as f32;
                }
                return Ok(());
            }
            Normalization::Window { low, high } => (low, high),
            Normalization::Percentile { low, high } => match percentiles(data, [low, high]) {
                Some([a, b]) => (a, b),
                None => return Ok(()),
            },
        };
        let range = high - low;
        for v in data.iter_mut() {
            *v = if range > 0.0 {
                ((f64::from(*v).clamp(low, high) - low) / range) as f32
            } else {
                0.0
            };
        }
        Ok(())
    }
}

/// The `q` percentiles (each in 0..=100) of finite `data`, interpolated linearly between
/// order statistics as numpy's default method does; `None` when `data` is empty.
pub fn percentiles<const N: usize>(data: &[f32], q: [f64; N]) -> Option<[f64; N]> {
    let mut copy = data.to_vec();
    let last = copy.len().checked_sub(1)?;
    Some(q.map(|q| {
        let pos = q / 100.0 * last as f64;
        let i = (pos.floor() as usize).min(last);
        let t = pos - i as f64;
        let (_, &mut lo, above) = copy.select_nth_unstable_by(i, f32::total_cmp);
        let a = f64::from(lo);
        let b = above
            .iter()
            .copied()
            .min_by(f32::total_cmp)
            .map_or(a, f64::from);
        // numpy's _lerp: from the nearer end, so t = 1 gives b exactly
        let diff = b - a;
        if t >= 0.5 {
            b - diff * (1.0 - t)
        } else {
            a + diff * t
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    #[test]
    fn zscore_uses_the_population_std() {
        let mut v = [1.0, 2.0, 3.0, 4.0];
        Normalization::ZScore.apply(&mut v).unwrap();
        // mean 2.5, std sqrt(1.25)
        assert!(
            close(&v, &[-1.341_641, -0.447_214, 0.447_214, 1.341_641]),
            "{v:?}"
        );
        let mut flat = [7.0; 5];
        Normalization::ZScore.apply(&mut flat).unwrap();
        assert_eq!(flat, [0.0; 5]);
    }

    #[test]
    fn window_clips_then_scales() {
        let mut v = [-1000.0, -160.0, 40.0, 240.0, 500.0];
        let w = Normalization::Window {
            low: -160.0,
            high: 240.0,
        };
        w.apply(&mut v).unwrap();
        assert_eq!(v, [0.0, 0.0, 0.5, 1.0, 1.0]);
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        // np.percentile([4, 1, 3, 2], [0.5, 99.5]) = [1.015, 3.985]
        let [a, b] = percentiles(&[4.0, 1.0, 3.0, 2.0], [0.5, 99.5]).unwrap();
        assert!(
            (a - 1.015).abs() < 1e-12 && (b - 3.985).abs() < 1e-12,
            "{a} {b}"
        );
        assert_eq!(percentiles(&[5.0], [0.0, 100.0]), Some([5.0, 5.0]));
        assert_eq!(percentiles(&[], [50.0]), None);
        // np.percentile(range(11), [10, 90]) = [1, 9]: 5 → 0.5, the ends clip
        let mut v: Vec<f32> = (0..=10).map(|i| i as f32).collect();
        let p = Normalization::Percentile {
            low: 10.0,
            high: 90.0,
        };
        p.apply(&mut v).unwrap();
        assert_eq!((v[0], v[1], v[5], v[9], v[10]), (0.0, 0.0, 0.5, 1.0, 1.0));
        let mut flat = [3.0; 4];
        p.apply(&mut flat).unwrap();
        assert_eq!(flat, [0.0; 4]);
    }

    #[test]
    fn unusable_parameters_are_refused() {
        let mut v = [1.0];
        for bad in [
            Normalization::Window {
                low: 1.0,
                high: 1.0,
            },
            Normalization::Window {
                low: f64::NAN,
                high: 1.0,
            },
        ] {
            assert!(matches!(
                bad.apply(&mut v),
                Err(NormalizeError::Window { .. })
            ));
        }
        let p = Normalization::Percentile {
            low: 50.0,
            high: 101.0,
        };
        assert_eq!(
            p.check().unwrap_err().to_string(),
            "percentiles [50, 101] need 0 <= low < high <= 100"
        );
        assert_eq!(v, [1.0], "untouched on error");
    }
}
