//! Temporal smoothing of a stream's masks, against the frame-to-frame flicker of ultrasound
//! segmentations (speckle changes every frame, so borderline pixels switch on and off).
//!
//! Modes ([`SmoothingMode`]), off by default:
//! - `off`: the mask is exactly `probability > threshold`, as post-processing makes it.
//! - `ema`: an exponential moving average of the probability, `s = alpha * p + (1 - alpha) * s`
//!   per pixel (the first frame starts the average), thresholded as `s > threshold`. A
//!   one-frame spike or dropout moves `s` by only `alpha` of its size.
//! - `hysteresis`: per pixel and over time, a pixel turns on when its probability exceeds
//!   `high` and stays on until its probability falls below `low`. The model's threshold is not
//!   used. Per-pixel temporal hysteresis was chosen over spatial (component) hysteresis because
//!   the flicker it damps is temporal; it keeps edges where the model puts them.
//!
//! A [`Smoother`] keeps one plane of state per stream and starts afresh whenever the frame size
//! changes. Run it on full-frame planes (after [`crate::roi::Region::restore_probability`]), so
//! that a re-detected region of interest of another size does not reset it.
//!
//! Nothing here does I/O. Non-finite probabilities count as 0 so they cannot poison the state.

use serde::Deserialize;
use thiserror::Error;

use crate::frame::{FrameError, Mask};

/// Default `alpha` of `ema`.
const DEFAULT_ALPHA: f32 = 0.5;

/// How masks are smoothed over time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmoothingMode {
    /// No smoothing.
    #[default]
    Off,
    /// Exponential moving average of the probability.
    Ema,
    /// Per-pixel hysteresis between two thresholds.
    Hysteresis,
}

impl SmoothingMode {
    /// The configuration name: `off`, `ema` or `hysteresis`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SmoothingMode::Off => "off",
            SmoothingMode::Ema => "ema",
            SmoothingMode::Hysteresis => "hysteresis",
        }
    }
}

/// Smoothing settings, as written in a configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmoothingConfig {
    /// `off` (the default), `ema` or `hysteresis`.
    #[serde(default)]
    pub mode: SmoothingMode,
    /// `ema` only: weight of the newest frame, `0 < alpha <= 1` (1 is no smoothing).
    /// Default 0.5.
    pub alpha: Option<f32>,
    /// `hysteresis` only, required: a pixel turns on when its probability exceeds this
    /// (`low < high < 1`).
    pub high: Option<f32>,
    /// `hysteresis` only, required: an on pixel turns off when its probability falls below this
    /// (`0 <= low < high`).
    pub low: Option<f32>,
}

/// Errors of the smoothing stage.
#[derive(Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum SmoothingError {
    /// A configuration value is missing, out of range or not allowed with the mode.
    #[error("smoothing.{key}: {message}")]
    Config { key: &'static str, message: String },
    /// The probability plane does not hold `width * height` values.
    #[error("probability plane for {width}x{height} needs {expected} values, found {found}")]
    Length {
        width: u32,
        height: u32,
        expected: u64,
        found: usize,
    },
    /// The threshold is not a probability.
    #[error("threshold {threshold} is not a probability in 0..=1")]
    Threshold { threshold: f32 },
    /// The mask could not be built (a zero or too large side).
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Checked settings and the state they need.
#[derive(Debug, Clone, PartialEq)]
enum State {
    Off,
    /// The running average; empty before the first frame.
    Ema {
        alpha: f32,
        average: Vec<f32>,
    },
    /// The previous mask; empty before the first frame.
    Hysteresis {
        high: f32,
        low: f32,
        on: Vec<bool>,
    },
}

/// The smoothing stage of one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Smoother {
    state: State,
    size: (u32, u32),
}

impl Smoother {
    /// Checks `config` and builds the stage.
    ///
    /// Errors name the key: `alpha` outside `0 < alpha <= 1`, `high` or `low` missing for
    /// `hysteresis`, outside 0..1 or not `low < high`, or a key given with a mode that does not
    /// use it.
    pub fn new(config: &SmoothingConfig) -> Result<Smoother, SmoothingError> {
        let bad = |key, message: String| SmoothingError::Config { key, message };
        let mode = config.mode;
        let keys = [
            ("alpha", config.alpha, SmoothingMode::Ema),
            ("high", config.high, SmoothingMode::Hysteresis),
            ("low", config.low, SmoothingMode::Hysteresis),
        ];
        for (key, value, owner) in keys {
            if value.is_some() && mode != owner {
                return Err(bad(
                    key,
                    format!("applies to mode {}, not {}", owner.as_str(), mode.as_str()),
                ));
            }
        }
        let state = match mode {
            SmoothingMode::Off => State::Off,
            SmoothingMode::Ema => {
                let alpha = config.alpha.unwrap_or(DEFAULT_ALPHA);
                if !(alpha > 0.0 && alpha <= 1.0) {
                    return Err(bad("alpha", format!("{alpha} is outside 0 < alpha <= 1")));
                }
                State::Ema {
                    alpha,
                    average: Vec::new(),
                }
            }
            SmoothingMode::Hysteresis => {
                let required = |key, value: Option<f32>| {
                    value.ok_or_else(|| bad(key, "is required with mode hysteresis".into()))
                };
                let high = required("high", config.high)?;
                let low = required("low", config.low)?;
                if !(high > 0.0 && high < 1.0) {
                    return Err(bad("high", format!("{high} is outside 0 < high < 1")));
                }
                if !(low >= 0.0 && low < high) {
                    return Err(bad(
                        "low",
                        format!("{low} is outside 0 <= low < high ({high})"),
                    ));
                }
                State::Hysteresis {
                    high,
                    low,
                    on: Vec::new(),
                }
            }
        };
        Ok(Smoother {
            state,
            size: (0, 0),
        })
    }

    /// Forgets the past frames (a new stream).
    pub fn reset(&mut self) {
        match &mut self.state {
            State::Off => {}
            State::Ema { average, .. } => average.clear(),
            State::Hysteresis { on, .. } => on.clear(),
        }
        self.size = (0, 0);
    }

    /// The smoothed mask of this frame's probability plane (`width` x `height`, row-major).
    ///
    /// `threshold` is the model's mask threshold, used by `off` and `ema`. A frame of another
    /// size than the previous one starts the state afresh.
    pub fn apply(
        &mut self,
        probability: &[f32],
        width: u32,
        height: u32,
        threshold: f32,
    ) -> Result<Mask, SmoothingError> {
        let expected = u64::from(width) * u64::from(height);
        if probability.len() as u64 != expected {
            return Err(SmoothingError::Length {
                width,
                height,
                expected,
                found: probability.len(),
            });
        }
        if !(0.0..=1.0).contains(&threshold) {
            return Err(SmoothingError::Threshold { threshold });
        }
        if self.size != (width, height) {
            self.reset();
            self.size = (width, height);
        }
        let clean = |p: f32| {
            if p.is_finite() {
                p.clamp(0.0, 1.0)
            } else {
                0.0
            }
        };
        let bits = match &mut self.state {
            State::Off => probability.iter().map(|&p| p > threshold).collect(),
            State::Ema { alpha, average } => {
                if average.is_empty() {
                    average.extend(probability.iter().map(|&p| clean(p)));
                } else {
                    let keep = 1.0 - *alpha;
                    for (s, &p) in average.iter_mut().zip(probability) {
                        *s = *alpha * clean(p) + keep * *s;
                    }
                }
                average.iter().map(|&s| s > threshold).collect()
            }
            State::Hysteresis { high, low, on } => {
                if on.is_empty() {
                    on.extend(probability.iter().map(|&p| clean(p) > *high));
                } else {
                    for (o, &p) in on.iter_mut().zip(probability) {
                        let p = clean(p);
                        *o = if *o { p >= *low } else { p > *high };
                    }
                }
                on.clone()
            }
        };
        Ok(Mask::new(width, height, bits)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smoother(text: &str) -> Result<Smoother, String> {
        let config: SmoothingConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        Smoother::new(&config).map_err(|e| e.to_string())
    }

    /// The masks of a one-pixel stream, as 0/1 per frame.
    fn run(s: &mut Smoother, frames: &[f32], threshold: f32) -> Vec<u8> {
        frames
            .iter()
            .map(|&p| u8::from(s.apply(&[p], 1, 1, threshold).unwrap().get(0, 0)))
            .collect()
    }

    #[test]
    fn off_is_exactly_probability_above_threshold() {
        let mut s = smoother("").unwrap();
        let p = [0.0, 0.5, 0.50001, 1.0, 0.3, f32::NAN];
        let mask = s.apply(&p, 3, 2, 0.5).unwrap();
        assert_eq!(mask.bits(), [false, false, true, true, false, false]);
        // No memory: the same plane gives the same mask whatever came before.
        assert_eq!(s.apply(&p, 3, 2, 0.5).unwrap(), mask);
        assert_eq!(run(&mut s, &[0.9, 0.1, 0.9], 0.5), [1, 0, 1]);
    }

    #[test]
    fn ema_suppresses_a_one_frame_flicker_that_off_shows() {
        let spike = [0.2, 0.2, 0.9, 0.2, 0.2];
        let dropout = [0.9, 0.9, 0.1, 0.9, 0.9];
        let mut off = smoother("mode = \"off\"").unwrap();
        assert_eq!(run(&mut off, &spike, 0.5), [0, 0, 1, 0, 0]);
        assert_eq!(run(&mut off, &dropout, 0.5), [1, 1, 0, 1, 1]);
        let mut ema = smoother("mode = \"ema\"\nalpha = 0.3").unwrap();
        assert_eq!(run(&mut ema, &spike, 0.5), [0, 0, 0, 0, 0]);
        ema.reset();
        assert_eq!(run(&mut ema, &dropout, 0.5), [1, 1, 1, 1, 1]);
        // A lasting change still comes through, a few frames late.
        ema.reset();
        assert_eq!(
            run(&mut ema, &[0.1, 0.9, 0.9, 0.9, 0.9], 0.5),
            [0, 0, 1, 1, 1]
        );
        // alpha = 1 is no smoothing.
        let mut one = smoother("mode = \"ema\"\nalpha = 1.0").unwrap();
        assert_eq!(run(&mut one, &spike, 0.5), [0, 0, 1, 0, 0]);
    }

    #[test]
    fn hysteresis_keeps_a_pixel_on_between_low_and_high() {
        let mut s = smoother("mode = \"hysteresis\"\nhigh = 0.7\nlow = 0.3").unwrap();
        let p = [0.5, 0.8, 0.5, 0.35, 0.3, 0.29, 0.5, 0.71];
        // The model threshold (0.5 here) is not used.
        assert_eq!(run(&mut s, &p, 0.5), [0, 1, 1, 1, 1, 0, 0, 1]);
    }

    #[test]
    fn a_new_frame_size_starts_afresh() {
        let mut s = smoother("mode = \"ema\"\nalpha = 0.1").unwrap();
        assert!(s
            .apply(&[1.0; 4], 2, 2, 0.5)
            .unwrap()
            .bits()
            .iter()
            .all(|&b| b));
        // Same pixel count, another shape: no memory of the 1.0s.
        assert!(s
            .apply(&[0.0; 4], 4, 1, 0.5)
            .unwrap()
            .bits()
            .iter()
            .all(|&b| !b));
        let mut h = smoother("mode = \"hysteresis\"\nhigh = 0.8\nlow = 0.2").unwrap();
        assert_eq!(h.apply(&[0.9], 1, 1, 0.5).unwrap().area(), 1);
        assert_eq!(h.apply(&[0.5, 0.5], 2, 1, 0.5).unwrap().area(), 0);
    }

    #[test]
    fn non_finite_probabilities_do_not_poison_the_average() {
        let mut s = smoother("mode = \"ema\"\nalpha = 0.5").unwrap();
        let frames = [0.9, f32::NAN, f32::INFINITY, 0.9, 0.9];
        // NaN counts as 0 (0.45), +inf as 0 (0.225), then the average recovers (0.5625).
        assert_eq!(run(&mut s, &frames, 0.5), [1, 0, 0, 1, 1]);
    }

    #[test]
    fn bad_planes_and_thresholds_are_errors() {
        let mut s = smoother("mode = \"ema\"").unwrap();
        assert_eq!(
            s.apply(&[0.5; 5], 3, 2, 0.5).unwrap_err().to_string(),
            "probability plane for 3x2 needs 6 values, found 5"
        );
        for t in [-0.1, 1.5, f32::NAN] {
            assert!(matches!(
                s.apply(&[0.5; 6], 3, 2, t),
                Err(SmoothingError::Threshold { .. })
            ));
        }
        assert!(matches!(
            s.apply(&[], 0, 4, 0.5),
            Err(SmoothingError::Frame(FrameError::Empty { .. }))
        ));
    }

    #[test]
    fn bad_configs_are_errors_naming_the_key() {
        let cases = [
            ("mode = \"median\"", "mode"),
            ("mode = \"ema\"\nalfa = 0.5", "alfa"),
            (
                "mode = \"ema\"\nalpha = 0.0",
                "smoothing.alpha: 0 is outside 0 < alpha <= 1",
            ),
            (
                "mode = \"ema\"\nalpha = 1.5",
                "smoothing.alpha: 1.5 is outside",
            ),
            (
                "mode = \"ema\"\nalpha = nan",
                "smoothing.alpha: NaN is outside",
            ),
            (
                "mode = \"hysteresis\"\nlow = 0.2",
                "smoothing.high: is required",
            ),
            (
                "mode = \"hysteresis\"\nhigh = 0.6",
                "smoothing.low: is required",
            ),
            (
                "mode = \"hysteresis\"\nhigh = 1.0\nlow = 0.2",
                "smoothing.high: 1 is outside",
            ),
            (
                "mode = \"hysteresis\"\nhigh = 0.6\nlow = 0.6",
                "smoothing.low: 0.6 is outside 0 <= low < high (0.6)",
            ),
            (
                "mode = \"hysteresis\"\nhigh = 0.6\nlow = -0.1",
                "smoothing.low: -0.1",
            ),
            (
                "alpha = 0.5",
                "smoothing.alpha: applies to mode ema, not off",
            ),
            (
                "mode = \"ema\"\nhigh = 0.6",
                "smoothing.high: applies to mode hysteresis, not ema",
            ),
        ];
        for (text, expected) in cases {
            let err = smoother(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        assert!(smoother("mode = \"hysteresis\"\nhigh = 0.6\nlow = 0.0").is_ok());
    }
}
