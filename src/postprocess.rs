//! Model logits → probability map and mask at frame size, and the measures reported for them.
//!
//! [`segment`] activates the logits at model resolution (sigmoid, or softmax foreground
//! probability), undoes the letterbox recorded in a [`Geometry`], resamples the *probability*
//! bilinearly to the frame size (half-pixel centres, edges clamped to the frame's own image so
//! padding never bleeds in) and only then thresholds, so mask edges are as smooth as the model
//! allows rather than blocky copies of model pixels.
//!
//! Non-finite logits never stop a stream: a NaN logit (or, for softmax, a NaN in any class at
//! that pixel) gives probability 0; infinite logits saturate to 0 or 1.
//!
//! Nothing here does I/O.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::frame::{Mask, PixelSpacing, MAX_SIDE};
use crate::preprocess::Geometry;

/// Errors turning logits into a mask, or comparing masks.
#[derive(Debug, Clone, Error, PartialEq)]
#[non_exhaustive]
pub enum PostprocessError {
    #[error("model output has a zero dimension ({width}x{height})")]
    ModelSize { width: u32, height: u32 },
    #[error("frame size {width}x{height} is empty or exceeds the {MAX_SIDE}-pixel side limit")]
    FrameSize { width: u32, height: u32 },
    #[error("sigmoid output needs exactly 1 class, got {found}")]
    SigmoidClasses { found: usize },
    #[error("softmax output needs at least 2 classes, got {found}")]
    SoftmaxClasses { found: usize },
    #[error(
        "logits for {classes} class(es) of {width}x{height} need {expected} values, found {found}"
    )]
    LogitsLength {
        classes: usize,
        width: u32,
        height: u32,
        expected: usize,
        found: usize,
    },
    #[error("threshold {threshold} is not a probability in 0..=1")]
    Threshold { threshold: f32 },
    #[error("masks differ in size: {a_width}x{a_height} vs {b_width}x{b_height}")]
    MaskSize {
        a_width: u32,
        a_height: u32,
        b_width: u32,
        b_height: u32,
    },
}

/// How logits become a foreground probability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// One class; probability = sigmoid(logit).
    Sigmoid,
    /// Two or more classes, class 0 the background; probability = 1 − p(class 0).
    Softmax,
}

/// A segmentation at frame size.
#[derive(Debug, Clone, PartialEq)]
pub struct Segmentation {
    /// Foreground probability per frame pixel, row-major, `width * height` values in 0..=1.
    pub probability: Vec<f32>,
    /// `probability > threshold`.
    pub mask: Mask,
}

/// What is reported about one mask.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measures {
    /// Number of mask pixels.
    pub area_px: usize,
    /// Mask area in mm², when the pixel spacing is known.
    pub area_mm2: Option<f64>,
    /// Bounding box `[x0, y0, x1, y1]`, inclusive, in frame pixels; `None` for an empty mask.
    pub bbox: Option<[u32; 4]>,
    /// Mean probability over the mask pixels; `None` for an empty mask.
    pub mean_probability: Option<f32>,
}

/// Turns logits into a probability map and mask of `frame_w` x `frame_h` pixels.
///
/// `logits` holds `classes` planes of `model_w` x `model_h` values (`[classes, model_h,
/// model_w]`, the batch dimension dropped). The logit grid covers the same field of view as the
/// model input described by `geometry`, possibly at another resolution (e.g. a decoder's
/// low-resolution masks). `frame_w` x `frame_h` is normally `geometry.frame_size()`; another
/// size renders the same image area at that size.
///
/// [`Activation::Sigmoid`] needs `classes == 1`. [`Activation::Softmax`] needs at least two
/// classes and gives the probability of "not class 0"; with two classes and a threshold of
/// 0.5 the mask is exactly `argmax != 0`. With more classes the mask marks pixels whose
/// non-background probability exceeds the threshold. The mask is `probability > threshold`
/// after resampling.
///
/// NaN logits give probability 0 and infinite ones saturate, so a corrupt output yields a
/// (possibly empty) mask rather than an error; sizes, class counts and the threshold
/// (0..=1) are checked and reported with their values.
#[allow(clippy::too_many_arguments)] // the parameters are one flat description of the output
pub fn segment(
    logits: &[f32],
    model_w: u32,
    model_h: u32,
    classes: usize,
    activation: Activation,
    threshold: f32,
    geometry: Geometry,
    frame_w: u32,
    frame_h: u32,
) -> Result<Segmentation, PostprocessError> {
    match activation {
        Activation::Sigmoid if classes != 1 => {
            return Err(PostprocessError::SigmoidClasses { found: classes })
        }
        Activation::Softmax if classes < 2 => {
            return Err(PostprocessError::SoftmaxClasses { found: classes })
        }
        _ => {}
    }
    let plane = check_sizes(logits, model_w, model_h, classes, frame_w, frame_h)?;
    if !(0.0..=1.0).contains(&threshold) {
        return Err(PostprocessError::Threshold { threshold });
    }
    let model_prob = activate(logits, plane, classes, activation);

    let (input_w, input_h) = geometry.model_size();
    let [cx, cy, cw, ch] = geometry.content();
    let xs = axis_taps(model_w, input_w, cx, cw, frame_w);
    let ys = axis_taps(model_h, input_h, cy, ch, frame_h);

    let probability = resample(&model_prob, model_w as usize, &xs, &ys);
    let bits = probability.iter().map(|&p| p > threshold).collect();
    // The size was checked above, so this cannot fail; map the error rather than unwrap.
    let mask = Mask::new(frame_w, frame_h, bits).map_err(|_| PostprocessError::FrameSize {
        width: frame_w,
        height: frame_h,
    })?;
    Ok(Segmentation { probability, mask })
}

/// Checks the model and frame sizes and the logit count; returns the plane size.
fn check_sizes(
    logits: &[f32],
    model_w: u32,
    model_h: u32,
    classes: usize,
    frame_w: u32,
    frame_h: u32,
) -> Result<usize, PostprocessError> {
    if model_w == 0 || model_h == 0 {
        return Err(PostprocessError::ModelSize {
            width: model_w,
            height: model_h,
        });
    }
    if frame_w == 0 || frame_h == 0 || frame_w > MAX_SIDE || frame_h > MAX_SIDE {
        return Err(PostprocessError::FrameSize {
            width: frame_w,
            height: frame_h,
        });
    }
    let plane = (model_w as usize).checked_mul(model_h as usize);
    let expected = plane.and_then(|p| p.checked_mul(classes));
    match (plane, expected) {
        (Some(plane), Some(expected)) if expected == logits.len() && classes > 0 => Ok(plane),
        _ => Err(PostprocessError::LogitsLength {
            classes,
            width: model_w,
            height: model_h,
            expected: expected.unwrap_or(usize::MAX),
            found: logits.len(),
        }),
    }
}

/// The class of every frame pixel: the argmax over `classes` logit planes, each resampled
/// bilinearly to the frame as [`segment`] resamples probabilities (ties go to the lower class).
/// Sizes are checked as in [`segment`]; at most 256 classes.
pub fn label_map(
    logits: &[f32],
    (model_w, model_h): (u32, u32),
    classes: usize,
    geometry: Geometry,
    (frame_w, frame_h): (u32, u32),
) -> Result<Vec<u8>, PostprocessError> {
    if !(2..=256).contains(&classes) {
        return Err(PostprocessError::SoftmaxClasses { found: classes });
    }
    let plane = check_sizes(logits, model_w, model_h, classes, frame_w, frame_h)?;
    let (input_w, input_h) = geometry.model_size();
    let [cx, cy, cw, ch] = geometry.content();
    let xs = axis_taps(model_w, input_w, cx, cw, frame_w);
    let ys = axis_taps(model_h, input_h, cy, ch, frame_h);
    let mut best = resample(&logits[..plane], model_w as usize, &xs, &ys);
    let mut labels = vec![0u8; best.len()];
    for k in 1..classes {
        let z = resample(
            &logits[k * plane..(k + 1) * plane],
            model_w as usize,
            &xs,
            &ys,
        );
        for ((b, l), &v) in best.iter_mut().zip(&mut labels).zip(&z) {
            // NaN never wins.
            if v > *b || b.is_nan() && !v.is_nan() {
                *b = v;
                *l = k as u8;
            }
        }
    }
    Ok(labels)
}

/// Bilinear resampling of one `width`-wide plane through per-axis taps: one value per
/// (`ys`, `xs`) pair, row-major.
fn resample(plane: &[f32], width: usize, xs: &[Tap], ys: &[Tap]) -> Vec<f32> {
    let fw = xs.len();
    // Horizontal pass over the rows the vertical taps use, then a vertical pass that blends
    // two of those rows per output row (contiguous, so it vectorises).
    let first_row = ys.iter().map(|t| t.0).min().unwrap_or(0);
    let last_row = ys.iter().map(|t| t.1).max().unwrap_or(0);
    let mut wide = vec![0.0f32; (last_row - first_row + 1) * fw];
    for (r, dst) in wide.chunks_exact_mut(fw).enumerate() {
        let row = &plane[(first_row + r) * width..(first_row + r + 1) * width];
        for (d, &(x0, x1, wx)) in dst.iter_mut().zip(xs) {
            *d = row[x0] + wx * (row[x1] - row[x0]);
        }
    }
    let mut out = vec![0.0f32; fw * ys.len()];
    for (dst, &(y0, y1, wy)) in out.chunks_exact_mut(fw.max(1)).zip(ys) {
        let top = &wide[(y0 - first_row) * fw..(y0 - first_row + 1) * fw];
        let bottom = &wide[(y1 - first_row) * fw..(y1 - first_row + 1) * fw];
        for ((d, &t), &b) in dst.iter_mut().zip(top).zip(bottom) {
            *d = t + wy * (b - t);
        }
    }
    out
}

/// Foreground probability per model pixel; non-finite results become 0.
fn activate(logits: &[f32], plane: usize, classes: usize, activation: Activation) -> Vec<f32> {
    let nan_to_zero = |p: f32| if p.is_nan() { 0.0 } else { p };
    match (activation, classes) {
        (Activation::Sigmoid, _) => logits.iter().map(|&z| nan_to_zero(sigmoid(z))).collect(),
        (Activation::Softmax, 2) => {
            let (bg, fg) = logits.split_at(plane);
            bg.iter()
                .zip(fg)
                .map(|(&z0, &z1)| nan_to_zero(sigmoid(saturate(z1) - saturate(z0))))
                .collect()
        }
        (Activation::Softmax, _) => (0..plane)
            .map(|i| {
                let z = |k: usize| saturate(logits[k * plane + i]);
                let mut max = z(0);
                for k in 1..classes {
                    max = max.max(z(k));
                }
                let background = (z(0) - max).exp();
                let mut foreground = 0.0;
                let mut nan = z(0).is_nan();
                for k in 1..classes {
                    let zk = z(k);
                    nan |= zk.is_nan();
                    foreground += (zk - max).exp();
                }
                if nan {
                    0.0
                } else {
                    nan_to_zero(foreground / (background + foreground))
                }
            })
            .collect(),
    }
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Infinite logits become the largest finite ones, so softmax differences stay defined; NaN
/// stays NaN.
fn saturate(z: f32) -> f32 {
    z.clamp(-f32::MAX, f32::MAX)
}

/// One bilinear tap: `(i0, i1, weight of i1)`.
type Tap = (usize, usize, f32);

/// Bilinear taps `(i0, i1, weight of i1)` into a logit axis of `len` samples for each of
/// `out_len` frame pixels.
///
/// The logit axis spans the model input axis of `input_len` pixels; the frame's image occupies
/// `content_len` input pixels from `content_start`. Frame pixel centres map linearly onto that
/// span and are clamped to the logit pixels whose centres lie inside it (edges included), so
/// padding is never sampled.
fn axis_taps(
    len: u32,
    input_len: u32,
    content_start: u32,
    content_len: u32,
    out_len: u32,
) -> Vec<Tap> {
    let r = f64::from(len) / f64::from(input_len.max(1));
    let a = f64::from(content_start) * r;
    let b = f64::from(content_start + content_len) * r;
    let last = f64::from(len - 1);
    let (mut lo, mut hi) = ((a - 0.5).ceil(), (b - 0.5).floor());
    if lo > hi {
        // The image covers less than one logit pixel centre: use the nearest one.
        lo = ((a + b) / 2.0 - 0.5).round();
        hi = lo;
    }
    let (lo, hi) = (lo.clamp(0.0, last), hi.clamp(0.0, last));
    let step = (b - a) / f64::from(out_len);
    (0..out_len)
        .map(|i| {
            let c = (a + (f64::from(i) + 0.5) * step - 0.5).clamp(lo, hi);
            let i0 = c.floor();
            let i1 = (i0 + 1.0).min(hi);
            (i0 as usize, i1 as usize, (c - i0) as f32)
        })
        .collect()
}

/// Area, bounding box and mean probability of a segmentation; the area in mm² when `spacing`
/// is known.
pub fn measure(seg: &Segmentation, spacing: Option<PixelSpacing>) -> Measures {
    let width = (seg.mask.width() as usize).max(1);
    let mut area = 0usize;
    let mut sum = 0.0f64;
    let mut bbox: Option<[u32; 4]> = None;
    for (row, bits) in seg.mask.bits().chunks(width).enumerate() {
        let row_area = bits.iter().filter(|&&b| b).count();
        if row_area == 0 {
            continue;
        }
        area += row_area;
        // Both exist because the row has a set pixel.
        let first = bits.iter().position(|&b| b).unwrap_or(0);
        let last = bits.iter().rposition(|&b| b).unwrap_or(first);
        let (x0, x1, y) = (first as u32, last as u32, row as u32);
        bbox = Some(match bbox {
            None => [x0, y, x1, y],
            Some([bx0, by0, bx1, _]) => [bx0.min(x0), by0, bx1.max(x1), y],
        });
        let start = row * width;
        match seg.probability.get(start + first..=start + last) {
            Some(probs) => sum += masked_sum(&bits[first..=last], probs),
            // A probability map shorter than the mask (the fields are public): missing
            // values count as 0.
            None => {
                for (x, _) in bits.iter().enumerate().filter(|(_, &b)| b) {
                    sum += f64::from(seg.probability.get(start + x).copied().unwrap_or(0.0));
                }
            }
        }
    }
    Measures {
        area_px: area,
        area_mm2: spacing.map(|s| area as f64 * s.pixel_area_mm2()),
        bbox,
        mean_probability: (area > 0).then(|| (sum / area as f64) as f32),
    }
}

/// Sum of `probs` where `bits` is set, in eight independent lanes so it vectorises.
fn masked_sum(bits: &[bool], probs: &[f32]) -> f64 {
    let mut lanes = [0.0f32; 8];
    let (bit_chunks, prob_chunks) = (bits.chunks_exact(8), probs.chunks_exact(8));
    let tail: f32 = bit_chunks
        .remainder()
        .iter()
        .zip(prob_chunks.remainder())
        .map(|(&b, &p)| if b { p } else { 0.0 })
        .sum();
    for (b, p) in bit_chunks.zip(prob_chunks) {
        for k in 0..8 {
            lanes[k] += if b[k] { p[k] } else { 0.0 };
        }
    }
    lanes.iter().map(|&l| f64::from(l)).sum::<f64>() + f64::from(tail)
}

/// Counts of (pixels in both, pixels in `a`, pixels in `b`).
fn overlap(a: &Mask, b: &Mask) -> Result<(usize, usize, usize), PostprocessError> {
    if a.width() != b.width() || a.height() != b.height() {
        return Err(PostprocessError::MaskSize {
            a_width: a.width(),
            a_height: a.height(),
            b_width: b.width(),
            b_height: b.height(),
        });
    }
    let both = a
        .bits()
        .iter()
        .zip(b.bits())
        .filter(|(&x, &y)| x && y)
        .count();
    Ok((both, a.area(), b.area()))
}

/// Dice coefficient `2|A∩B| / (|A| + |B|)`; 1.0 when both masks are empty.
pub fn dice(a: &Mask, b: &Mask) -> Result<f64, PostprocessError> {
    let (both, na, nb) = overlap(a, b)?;
    Ok(if na + nb == 0 {
        1.0
    } else {
        2.0 * both as f64 / (na + nb) as f64
    })
}

/// Intersection over union `|A∩B| / |A∪B|`; 1.0 when both masks are empty.
pub fn iou(a: &Mask, b: &Mask) -> Result<f64, PostprocessError> {
    let (both, na, nb) = overlap(a, b)?;
    let union = na + nb - both;
    Ok(if union == 0 {
        1.0
    } else {
        both as f64 / union as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;
    use crate::preprocess::{Normalize, Preprocessor, Resize};

    const IDENTITY: Normalize = Normalize {
        mean: [0.0; 3],
        std: [1.0; 3],
    };

    /// A mask as rows of '#' (set) and '.' (clear).
    fn ascii(mask: &Mask) -> String {
        mask.to_ascii()
    }

    fn mask(picture: &str) -> Mask {
        Mask::from_ascii(picture)
    }

    fn geometry(resize: Resize, model: (u32, u32), frame: (u32, u32)) -> Geometry {
        Preprocessor::new(model.0, model.1, resize, IDENTITY)
            .unwrap()
            .geometry(frame.0, frame.1)
    }

    fn sigmoid_at_frame_size(logits: &[f32], w: u32, h: u32) -> Segmentation {
        let g = geometry(Resize::Stretch, (w, h), (w, h));
        segment(logits, w, h, 1, Activation::Sigmoid, 0.5, g, w, h).unwrap()
    }

    fn assert_close(found: &[f32], expected: &[f32]) {
        assert_eq!(found.len(), expected.len(), "{found:?} vs {expected:?}");
        for (a, b) in found.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5, "{found:?}\n!=\n{expected:?}");
        }
    }

    #[test]
    fn identity_size_sigmoid() {
        let logits = [-3.0, 0.0, 3.0, 0.1, -0.1, 20.0];
        let seg = sigmoid_at_frame_size(&logits, 3, 2);
        let expected: Vec<f32> = logits.iter().map(|&z| 1.0 / (1.0 + (-z).exp())).collect();
        assert_close(&seg.probability, &expected);
        // 0.0 gives exactly 0.5, which is not above the threshold.
        assert_eq!(ascii(&seg.mask), "..#\n#.#");
    }

    #[test]
    fn non_finite_logits_do_not_stop_segmentation() {
        let logits = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 5.0];
        let seg = sigmoid_at_frame_size(&logits, 2, 2);
        assert_close(
            &seg.probability,
            &[0.0, 1.0, 0.0, 1.0 / (1.0 + (-5.0f32).exp())],
        );
        assert_eq!(ascii(&seg.mask), ".#\n.#");

        // Softmax: NaN in any class → 0; +inf foreground → 1; +inf background → 0.
        let g = geometry(Resize::Stretch, (4, 1), (4, 1));
        let (inf, nan) = (f32::INFINITY, f32::NAN);
        let background = [0.0, nan, 0.0, inf];
        let foreground = [nan, 0.0, inf, inf];
        let logits = [background, foreground].concat();
        let seg = segment(&logits, 4, 1, 2, Activation::Softmax, 0.5, g, 4, 1).unwrap();
        assert_close(&seg.probability, &[0.0, 0.0, 1.0, 0.5]);
        let logits = [[inf, 0.0, 0.0], [0.0, nan, 0.0], [0.0, 0.0, inf]].concat();
        let g = geometry(Resize::Stretch, (3, 1), (3, 1));
        let seg = segment(&logits, 3, 1, 3, Activation::Softmax, 0.5, g, 3, 1).unwrap();
        assert_close(&seg.probability, &[0.0, 0.0, 1.0]);
    }

    #[test]
    fn stretch_upsamples_the_probability_bilinearly() {
        // Logits chosen so the probabilities are 0.1, 0.9 / 0.5, 0.3.
        let logit = |p: f32| (p / (1.0 - p)).ln();
        let logits = [0.1, 0.9, 0.5, 0.3].map(logit);
        let g = geometry(Resize::Stretch, (2, 2), (4, 4));
        let seg = segment(&logits, 2, 2, 1, Activation::Sigmoid, 0.5, g, 4, 4).unwrap();
        let row = |a: f32, b: f32| [a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b];
        let (top, bottom) = (row(0.1, 0.9), row(0.5, 0.3));
        let mix = |w: f32| -> Vec<f32> {
            top.iter()
                .zip(&bottom)
                .map(|(t, b)| t + w * (b - t))
                .collect()
        };
        let expected: Vec<f32> = [mix(0.0), mix(0.25), mix(0.75), mix(1.0)].concat();
        assert_close(&seg.probability, &expected);
        assert_eq!(
            ascii(&seg.mask),
            "..##\n\
             ..##\n\
             ....\n\
             ...."
        );
    }

    /// Logits (±10) for `picture` as the model would see it: each model pixel inside the
    /// frame's image takes the value of the frame pixel it comes from; padding is background.
    fn fake_logits(picture: &Mask, g: Geometry) -> Vec<f32> {
        let (mw, mh) = g.model_size();
        let (fw, fh) = (picture.width() as f64, picture.height() as f64);
        let mut logits = Vec::new();
        for my in 0..mh {
            for mx in 0..mw {
                let (fx, fy) = g.to_frame(f64::from(mx), f64::from(my));
                let (fx, fy) = (fx.round(), fy.round());
                let inside = fx >= 0.0 && fy >= 0.0 && fx < fw && fy < fh;
                let set = inside && picture.get(fx as u32, fy as u32);
                logits.push(if set { 10.0 } else { -10.0 });
            }
        }
        logits
    }

    #[test]
    fn letterbox_round_trip_restores_the_mask() {
        // (model size, frame picture)
        let cases = [
            (
                (8, 8),
                "........
                 ..####..
                 ..#..##.
                 ........",
            ),
            (
                (8, 8),
                "#.....
                 ##....
                 ###...
                 ####..
                 #####.
                 ######
                 ....##
                 .....#",
            ),
            (
                (12, 12), // enlarged 2x, padded left and right
                "#..#
                 .##.
                 .##.
                 #..#
                 ...#
                 ##.#",
            ),
            (
                (9, 6), // 3x, no padding
                "#.#
                 .#.",
            ),
            (
                (16, 10), // 4x, padded top and bottom
                "##..
                 .#..",
            ),
            (
                (4, 4), // shrunk 2x: shapes aligned to 2x2 blocks survive
                "........
                 ........
                 ..####..
                 ..####..
                 ##....##
                 ##....##
                 ..##....
                 ..##....",
            ),
        ];
        for (model, picture) in cases {
            let frame_mask = mask(picture);
            let frame = (frame_mask.width(), frame_mask.height());
            let g = geometry(Resize::Letterbox, model, frame);
            let logits = fake_logits(&frame_mask, g);
            let seg = segment(
                &logits,
                model.0,
                model.1,
                1,
                Activation::Sigmoid,
                0.5,
                g,
                frame.0,
                frame.1,
            )
            .unwrap();
            assert_eq!(
                ascii(&seg.mask),
                ascii(&frame_mask),
                "model {model:?}, content {:?}",
                g.content()
            );
        }
    }

    #[test]
    fn padding_never_bleeds_into_the_frame() {
        // A 4x2 frame letterboxed into 4x4 and enlarged back to 8x4: the padded rows are
        // foreground but the frame's image is background, so nothing is set.
        let g = geometry(Resize::Letterbox, (4, 4), (4, 2));
        let mut logits = vec![10.0; 16];
        logits[4..12].fill(-10.0);
        let seg = segment(&logits, 4, 4, 1, Activation::Sigmoid, 0.5, g, 8, 4).unwrap();
        assert_eq!(seg.mask.area(), 0, "{}", ascii(&seg.mask));
        assert!(seg.probability.iter().all(|&p| p < 1e-4));
    }

    #[test]
    fn low_resolution_logits_cover_the_model_input() {
        // Logits at half the 8x8 input. The 8x4 frame sits in input rows 2..6, i.e. logit rows
        // 1 and 2; rows 0 and 3 are padding (set to foreground here, and never sampled).
        let g = geometry(Resize::Letterbox, (8, 8), (8, 4));
        let logits = [
            [10.0; 4],
            [10.0, 10.0, -10.0, -10.0],
            [10.0, 10.0, -10.0, -10.0],
            [10.0; 4],
        ]
        .concat();
        let seg = segment(&logits, 4, 4, 1, Activation::Sigmoid, 0.5, g, 8, 4).unwrap();
        assert_eq!(
            ascii(&seg.mask),
            "####....\n\
             ####....\n\
             ####....\n\
             ####...."
        );
        assert!(seg.probability[7] < 1e-3 && seg.probability[31] < 1e-3);
    }

    #[test]
    fn output_size_follows_the_requested_frame_size() {
        for (model, frame) in [((4, 4), (1, 1)), ((3, 5), (17, 2)), ((8, 8), (5, 13))] {
            for resize in [Resize::Stretch, Resize::Letterbox] {
                let g = geometry(resize, model, frame);
                let logits = vec![1.0; (model.0 * model.1) as usize];
                let seg = segment(
                    &logits,
                    model.0,
                    model.1,
                    1,
                    Activation::Sigmoid,
                    0.5,
                    g,
                    frame.0,
                    frame.1,
                )
                .unwrap();
                assert_eq!((seg.mask.width(), seg.mask.height()), frame);
                assert_eq!(seg.probability.len(), (frame.0 * frame.1) as usize);
                assert_eq!(seg.mask.area(), (frame.0 * frame.1) as usize);
            }
        }
    }

    #[test]
    fn any_sizes_and_values_give_a_frame_size_mask_without_panicking() {
        // A deterministic sweep standing in for a property test: odd sizes, logit grids at
        // other resolutions than the input, and logits that include NaN and infinities.
        let mut state = 0x2545_f491_u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0];
        for _ in 0..300 {
            let input = (1 + next() % 9, 1 + next() % 9);
            let frame = (1 + next() % 23, 1 + next() % 23);
            let logit_size = (1 + next() % 12, 1 + next() % 12);
            let resize = [Resize::Stretch, Resize::Letterbox][next() as usize % 2];
            let (activation, classes) = match next() % 3 {
                0 => (Activation::Sigmoid, 1),
                n => (Activation::Softmax, 1 + n as usize),
            };
            let n = (logit_size.0 * logit_size.1) as usize * classes;
            let logits: Vec<f32> = (0..n)
                .map(|_| match next() % 10 {
                    0 => specials[next() as usize % 4],
                    _ => (next() % 2000) as f32 / 100.0 - 10.0,
                })
                .collect();
            let g = geometry(resize, input, frame);
            let threshold = (next() % 101) as f32 / 100.0;
            let seg = segment(
                &logits,
                logit_size.0,
                logit_size.1,
                classes,
                activation,
                threshold,
                g,
                frame.0,
                frame.1,
            )
            .unwrap();
            assert_eq!((seg.mask.width(), seg.mask.height()), frame);
            assert_eq!(seg.probability.len(), (frame.0 * frame.1) as usize);
            assert!(
                seg.probability.iter().all(|p| (0.0..=1.0).contains(p)),
                "{:?}",
                seg.probability
            );
            let m = measure(&seg, None);
            assert_eq!(m.area_px, seg.mask.area());
        }
    }

    #[test]
    fn softmax_two_classes_is_argmax() {
        // Planes: background, then foreground.
        let background = [1.0, 0.0, -2.0, 3.0, 0.5, 0.0];
        let foreground = [0.0, 1.0, 2.0, 3.0, 0.4, -5.0];
        let logits = [background, foreground].concat();
        let g = geometry(Resize::Stretch, (3, 2), (3, 2));
        let seg = segment(&logits, 3, 2, 2, Activation::Softmax, 0.5, g, 3, 2).unwrap();
        let expected: Vec<f32> = background
            .iter()
            .zip(&foreground)
            .map(|(b, f)| f.exp() / (b.exp() + f.exp()))
            .collect();
        assert_close(&seg.probability, &expected);
        // argmax != 0 (ties go to background)
        assert_eq!(ascii(&seg.mask), ".##\n...");
    }

    #[test]
    fn softmax_many_classes_gives_non_background_probability() {
        let (b, f1, f2) = ([2.0, 0.0, 0.0], [0.0, 1.0, 0.2], [1.0, 1.0, 0.1]);
        let logits = [b, f1, f2].concat();
        let g = geometry(Resize::Stretch, (3, 1), (3, 1));
        let seg = segment(&logits, 3, 1, 3, Activation::Softmax, 0.5, g, 3, 1).unwrap();
        let expected: Vec<f32> = (0..3)
            .map(|i| {
                let e = [b[i], f1[i], f2[i]].map(f32::exp);
                (e[1] + e[2]) / (e[0] + e[1] + e[2])
            })
            .collect();
        assert_close(&seg.probability, &expected);
        assert_eq!(ascii(&seg.mask), ".##");
    }

    #[test]
    fn bad_arguments_are_errors_with_values() {
        let g = geometry(Resize::Stretch, (2, 2), (2, 2));
        let ok = [0.0; 4];
        type Case<'a> = (&'a [f32], u32, u32, usize, Activation, f32, u32, u32);
        let cases: [(Case, PostprocessError); 8] = [
            (
                (&ok[..3], 2, 2, 1, Activation::Sigmoid, 0.5, 2, 2),
                PostprocessError::LogitsLength {
                    classes: 1,
                    width: 2,
                    height: 2,
                    expected: 4,
                    found: 3,
                },
            ),
            (
                (&ok, 2, 2, 2, Activation::Softmax, 0.5, 2, 2),
                PostprocessError::LogitsLength {
                    classes: 2,
                    width: 2,
                    height: 2,
                    expected: 8,
                    found: 4,
                },
            ),
            (
                (&ok, 2, 2, 2, Activation::Sigmoid, 0.5, 2, 2),
                PostprocessError::SigmoidClasses { found: 2 },
            ),
            (
                (&ok, 2, 2, 1, Activation::Softmax, 0.5, 2, 2),
                PostprocessError::SoftmaxClasses { found: 1 },
            ),
            (
                (&ok, 0, 2, 1, Activation::Sigmoid, 0.5, 2, 2),
                PostprocessError::ModelSize {
                    width: 0,
                    height: 2,
                },
            ),
            (
                (&ok, 2, 2, 1, Activation::Sigmoid, 0.5, 2, 0),
                PostprocessError::FrameSize {
                    width: 2,
                    height: 0,
                },
            ),
            (
                (&ok, 2, 2, 1, Activation::Sigmoid, 0.5, MAX_SIDE + 1, 2),
                PostprocessError::FrameSize {
                    width: MAX_SIDE + 1,
                    height: 2,
                },
            ),
            (
                (&ok, 2, 2, 1, Activation::Sigmoid, 1.5, 2, 2),
                PostprocessError::Threshold { threshold: 1.5 },
            ),
        ];
        for ((logits, mw, mh, classes, act, t, fw, fh), expected) in cases {
            let err = segment(logits, mw, mh, classes, act, t, g, fw, fh).unwrap_err();
            assert_eq!(err, expected);
        }
        let nan = segment(&ok, 2, 2, 1, Activation::Sigmoid, f32::NAN, g, 2, 2).unwrap_err();
        assert!(matches!(nan, PostprocessError::Threshold { .. }));
        // Overflowing sizes are reported, not multiplied into a panic.
        let huge = segment(
            &ok,
            u32::MAX,
            u32::MAX,
            usize::MAX,
            Activation::Softmax,
            0.5,
            g,
            2,
            2,
        )
        .unwrap_err();
        assert!(matches!(
            huge,
            PostprocessError::LogitsLength { found: 4, .. }
        ));
    }

    #[test]
    fn logits_length_error_names_expected_and_found() {
        let g = geometry(Resize::Stretch, (4, 3), (4, 3));
        let err = segment(&[0.0; 11], 4, 3, 1, Activation::Sigmoid, 0.5, g, 4, 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "logits for 1 class(es) of 4x3 need 12 values, found 11"
        );
    }

    #[test]
    fn activation_parses_lowercase() {
        let parse = |s: &str| serde_json::from_str::<Activation>(s).ok();
        assert_eq!(parse(r#""sigmoid""#), Some(Activation::Sigmoid));
        assert_eq!(parse(r#""softmax""#), Some(Activation::Softmax));
        assert_eq!(parse(r#""Softmax""#), None);
    }

    fn seg_from(picture: &str, probability: Vec<f32>) -> Segmentation {
        Segmentation {
            probability,
            mask: mask(picture),
        }
    }

    #[test]
    fn measures_table() {
        let spacing = PixelSpacing {
            row_mm: 0.5,
            col_mm: 0.2,
        };
        // (picture, probabilities, spacing) → measures
        let cases = [
            (
                "....
                 .##.
                 ..#.",
                vec![0.1, 0.2, 0.3, 0.4, 0.0, 0.6, 0.9, 0.0, 0.0, 0.0, 0.75, 0.0],
                Some(spacing),
                Measures {
                    area_px: 3,
                    area_mm2: Some(0.3),
                    bbox: Some([1, 1, 2, 2]),
                    mean_probability: Some(0.75),
                },
            ),
            (
                "#...
                 ....
                 ...#",
                vec![1.0; 12],
                None,
                Measures {
                    area_px: 2,
                    area_mm2: None,
                    bbox: Some([0, 0, 3, 2]),
                    mean_probability: Some(1.0),
                },
            ),
            (
                "...#
                 #...",
                vec![0.5; 8],
                None,
                Measures {
                    area_px: 2,
                    area_mm2: None,
                    bbox: Some([0, 0, 3, 1]),
                    mean_probability: Some(0.5),
                },
            ),
            (
                "...
                 ...",
                vec![0.4; 6],
                Some(spacing),
                Measures {
                    area_px: 0,
                    area_mm2: Some(0.0),
                    bbox: None,
                    mean_probability: None,
                },
            ),
        ];
        for (picture, probability, spacing, expected) in cases {
            let m = measure(&seg_from(picture, probability), spacing);
            assert_eq!(m.area_px, expected.area_px, "{picture}");
            assert_eq!(m.bbox, expected.bbox, "{picture}");
            match (m.area_mm2, expected.area_mm2) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-12, "{a} vs {b}"),
                (a, b) => assert_eq!(a, b),
            }
            match (m.mean_probability, expected.mean_probability) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-6, "{a} vs {b}"),
                (a, b) => assert_eq!(a, b),
            }
        }
    }

    #[test]
    fn measure_tolerates_a_short_probability_map() {
        // The fields are public, so a caller can break the size invariant; no panic.
        let m = measure(&seg_from("##\n##", vec![1.0]), None);
        assert_eq!(m.area_px, 4);
        assert_eq!(m.mean_probability, Some(0.25));
    }

    #[test]
    fn measures_of_a_segmented_frame() {
        let frame = Frame::from_gray(3, 2, &[0; 6])
            .unwrap()
            .with_spacing(Some(PixelSpacing {
                row_mm: 2.0,
                col_mm: 3.0,
            }));
        let seg = sigmoid_at_frame_size(&[-5.0, 5.0, 5.0, -5.0, -5.0, 5.0], 3, 2);
        let m = measure(&seg, frame.spacing());
        assert_eq!(
            (m.area_px, m.area_mm2, m.bbox),
            (3, Some(18.0), Some([1, 0, 2, 1]))
        );
        let p = 1.0 / (1.0 + (-5.0f32).exp());
        assert!((m.mean_probability.unwrap() - p).abs() < 1e-6);
    }

    #[test]
    fn dice_and_iou_table() {
        // (a, b, dice, iou)
        let cases = [
            ("....\n....", "....\n....", 1.0, 1.0),
            ("##..\n....", "....\n....", 0.0, 0.0),
            ("##..\n##..", "##..\n##..", 1.0, 1.0),
            ("##..\n##..", ".##.\n.##.", 0.5, 1.0 / 3.0),
            ("###.\n....", "#...\n....", 0.5, 1.0 / 3.0),
            ("####\n####", "....\n####", 2.0 / 3.0, 0.5),
        ];
        for (a, b, d, i) in cases {
            let (a, b) = (mask(a), mask(b));
            assert!(
                (dice(&a, &b).unwrap() - d).abs() < 1e-12,
                "dice {a:?} {b:?}"
            );
            assert!((iou(&a, &b).unwrap() - i).abs() < 1e-12, "iou {a:?} {b:?}");
            // Symmetric.
            assert_eq!(dice(&a, &b), dice(&b, &a));
            assert_eq!(iou(&a, &b), iou(&b, &a));
        }
    }

    #[test]
    fn dice_and_iou_reject_size_mismatch() {
        let (a, b) = (mask("##\n##"), mask("###"));
        let expected = PostprocessError::MaskSize {
            a_width: 2,
            a_height: 2,
            b_width: 3,
            b_height: 1,
        };
        assert_eq!(dice(&a, &b), Err(expected.clone()));
        assert_eq!(iou(&a, &b), Err(expected));
    }
}
