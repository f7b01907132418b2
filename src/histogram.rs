//! A latency histogram: log-linear buckets with under 0.4 % relative error, exact minimum,
//! maximum and mean, and percentiles read off the bucket counts (never averages of averages).
//!
//! Values are microseconds. Values below 256 µs have a bucket each; above that every power of
//! two is split into 128 buckets, so a long run costs a few kilobytes however many frames it
//! sees.

use serde::Serialize;

const LINEAR: u64 = 256;
const SUB_BITS: u32 = 7;

/// Counts of latencies in microseconds.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    sum_sq: f64,
    min: u64,
    max: u64,
}

/// Percentiles and moments of a [`Histogram`], in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub stddev: f64,
}

fn bucket(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // ≥ 8
    let shift = exp - SUB_BITS;
    let mantissa = (v >> shift) - (1 << SUB_BITS); // 0..128
    (LINEAR + u64::from(shift - 1) * (1 << SUB_BITS) + mantissa) as usize
}

/// The lowest and highest value of a bucket.
fn bounds(index: usize) -> (u64, u64) {
    let i = index as u64;
    if i < LINEAR {
        return (i, i);
    }
    let rest = i - LINEAR;
    let shift = rest / (1 << SUB_BITS) + 1;
    let mantissa = rest % (1 << SUB_BITS) + (1 << SUB_BITS);
    let low = mantissa << shift;
    (low, low + (1 << shift) - 1)
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, micros: u64) {
        let b = bucket(micros);
        if self.counts.len() <= b {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        if self.total == 0 || micros < self.min {
            self.min = micros;
        }
        self.max = self.max.max(micros);
        self.total += 1;
        self.sum += u128::from(micros);
        self.sum_sq += (micros as f64) * (micros as f64);
    }

    /// The number of recorded values.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1) in microseconds, by nearest rank: the midpoint of the
    /// bucket holding that rank, clamped to the exact minimum and maximum. None when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, high) = bounds(i);
                return Some((low + (high - low) / 2).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// The cumulative distribution: for each non-empty bucket, its upper bound in
    /// milliseconds (clamped to the maximum) and the fraction of values at or below it.
    pub fn cdf(&self) -> Vec<(f64, f64)> {
        let mut seen = 0;
        let mut points = Vec::new();
        for (i, &c) in self.counts.iter().enumerate().filter(|(_, &c)| c > 0) {
            seen += c;
            let high = bounds(i).1.min(self.max);
            points.push((high as f64 / 1e3, seen as f64 / self.total as f64));
        }
        points
    }

    /// Summary in milliseconds; all zero when empty.
    pub fn percentiles(&self) -> Percentiles {
        if self.total == 0 {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1e3;
        let q = |p: f64| ms(self.quantile(p).unwrap_or(0));
        let n = self.total as f64;
        let mean = self.sum as f64 / n;
        let var = (self.sum_sq / n - mean * mean).max(0.0);
        Percentiles {
            count: self.total,
            min: ms(self.min),
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: ms(self.max),
            mean: mean / 1e3,
            stddev: var.sqrt() / 1e3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut expected_low = 0;
        for i in 0..(LINEAR as usize + 128 * 40) {
            let (low, high) = bounds(i);
            assert_eq!(low, expected_low, "bucket {i}");
            assert_eq!(bucket(low), i);
            assert_eq!(bucket(high), i);
            assert!(
                (high - low) as f64 <= low as f64 / 128.0 + 0.5,
                "bucket {i}"
            );
            expected_low = high + 1;
        }
        assert_eq!(bucket(u64::MAX), bucket(u64::MAX - 1));
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 100); // 0.1 ms .. 100 ms
        }
        let p = h.percentiles();
        assert_eq!(p.count, 1000);
        assert_eq!(p.min, 0.1);
        assert_eq!(p.max, 100.0);
        for (got, want) in [(p.p50, 50.0), (p.p90, 90.0), (p.p99, 99.0), (p.p999, 99.9)] {
            assert!((got - want).abs() / want < 0.005, "{got} vs {want}");
        }
        assert!((p.mean - 50.05).abs() < 1e-9);
        assert!((p.stddev - 28.866).abs() < 0.01, "{}", p.stddev);
    }

    #[test]
    fn the_cdf_rises_to_one_at_the_maximum() {
        let mut h = Histogram::default();
        assert!(h.cdf().is_empty());
        for v in [100, 100, 200, 5_000, 90_000] {
            h.record(v);
        }
        let cdf = h.cdf();
        assert_eq!(cdf.len(), 4);
        assert_eq!(cdf[0], (0.1, 0.4));
        assert!(cdf.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
        assert_eq!(*cdf.last().unwrap(), (90.0, 1.0));
        let five_ms = cdf[2].0;
        assert!((5.0..5.04).contains(&five_ms), "{five_ms}");
    }

    #[test]
    fn a_single_value_is_exact_and_an_empty_histogram_is_zero() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        assert_eq!(h.percentiles(), Percentiles::default());
        h.record(12_345);
        assert_eq!(h.quantile(0.0), Some(12_345));
        assert_eq!(h.quantile(0.99), Some(12_345));
        assert_eq!(h.percentiles().stddev, 0.0);
    }

    #[test]
    fn the_tail_is_not_averaged_away() {
        let mut h = Histogram::default();
        for _ in 0..990 {
            h.record(5_000);
        }
        for _ in 0..10 {
            h.record(200_000);
        }
        let p = h.percentiles();
        assert!((p.p50 - 5.0).abs() < 0.02);
        assert!((p.p99 - 5.0).abs() < 0.02);
        assert!((p.p999 - 200.0).abs() < 1.0);
        assert_eq!(p.max, 200.0);
    }
}
