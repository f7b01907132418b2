//! Frame → model input tensor: resize (stretch, letterbox or SAM's longest side), scale to 0..1, normalise per
//! channel, and lay out as planar RGB (NCHW with N = 1).
//!
//! Resampling is a separable triangle (bilinear) filter on half-pixel centres: source
//! coordinate `(i + 0.5) * in / out - 0.5`, edges clamped. When enlarging this is exactly
//! bilinear interpolation as in PIL and torch (`align_corners=False`); when shrinking the
//! filter widens with the scale factor, as PIL's `BILINEAR` does (torch's `antialias=True`),
//! so large frames do not alias on their way down to the model size.
//!
//! Letterboxing keeps the aspect ratio, centres the frame in the model input and pads with the
//! normalised value of black; [`Resize::Longest`] puts the image top-left and pads with zeros
//! after normalisation, as Segment Anything does. The [`Geometry`] that [`Preprocessor::run`] returns says where the
//! frame landed, so post-processing can undo it.
//!
//! Nothing here does I/O. The per-frame path allocates nothing once it has seen a frame size:
//! resampling tables and a one-row buffer are kept and rebuilt only when the frame size
//! changes, and the caller's output vector is reused.

use std::sync::{Mutex, PoisonError};

use serde::Deserialize;
use thiserror::Error;

use crate::frame::{Frame, MAX_SIDE};

/// Errors building a [`Preprocessor`].
#[derive(Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum PreprocessError {
    #[error("model input has a zero dimension ({width}x{height})")]
    ZeroSize { width: u32, height: u32 },
    #[error("model input {width}x{height} exceeds the {MAX_SIDE}-pixel side limit")]
    TooLarge { width: u32, height: u32 },
    #[error(
        "normalisation of channel {channel} needs a finite mean and a finite, non-zero std \
         (mean {mean}, std {std})"
    )]
    Normalize { channel: usize, mean: f32, std: f32 },
}

/// How a frame is fitted to the model input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// Scale each axis independently to fill the input; the aspect ratio may change.
    Stretch,
    /// Scale uniformly to fit inside the input, centre, and pad the rest with black.
    Letterbox,
    /// Segment Anything's form: scale uniformly so the longest side fills the input (the other
    /// side rounded as `ResizeLongestSide` rounds it), place the image top-left, and pad the
    /// right and bottom with zeros *after* normalisation (the mean colour).
    Longest,
}

/// Per-channel normalisation `(value - mean) / std`, applied to RGB values scaled to 0..1.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Where a frame sits inside the model input, so model pixels can be mapped back to frame
/// pixels.
///
/// The frame covers the `content` rectangle of the model input (in model pixels); the rest is
/// padding. Coordinates in [`Geometry::to_frame`] and [`Geometry::to_model`] are continuous pixel
/// indices: pixel `i` spans `[i - 0.5, i + 0.5)` and has its centre at `i`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    model: (u32, u32),
    frame: (u32, u32),
    /// x, y, width, height of the frame's image inside the model input.
    content: [u32; 4],
}

impl Geometry {
    /// Model input width and height.
    pub fn model_size(&self) -> (u32, u32) {
        self.model
    }

    /// Width and height of the frame this geometry was computed for.
    pub fn frame_size(&self) -> (u32, u32) {
        self.frame
    }

    /// The rectangle `[x, y, width, height]` of the model input that holds the frame's image;
    /// the whole input for [`Resize::Stretch`].
    pub fn content(&self) -> [u32; 4] {
        self.content
    }

    /// Padding before the image, in model pixels: (left, top).
    pub fn pad(&self) -> (u32, u32) {
        (self.content[0], self.content[1])
    }

    /// Model pixels per frame pixel, horizontally and vertically.
    pub fn scale(&self) -> (f64, f64) {
        (
            f64::from(self.content[2]) / f64::from(self.frame.0),
            f64::from(self.content[3]) / f64::from(self.frame.1),
        )
    }

    /// The frame position of a model position (continuous pixel indices). Positions in the
    /// padding map outside `0..width` / `0..height` of the frame.
    pub fn to_frame(&self, model_x: f64, model_y: f64) -> (f64, f64) {
        let (sx, sy) = self.scale();
        let (px, py) = self.pad();
        (
            (model_x + 0.5 - f64::from(px)) / sx - 0.5,
            (model_y + 0.5 - f64::from(py)) / sy - 0.5,
        )
    }

    /// The model position of a frame position (continuous pixel indices).
    pub fn to_model(&self, frame_x: f64, frame_y: f64) -> (f64, f64) {
        let (sx, sy) = self.scale();
        let (px, py) = self.pad();
        (
            (frame_x + 0.5) * sx + f64::from(px) - 0.5,
            (frame_y + 0.5) * sy + f64::from(py) - 0.5,
        )
    }
}

/// Turns frames into model input tensors of one fixed size.
///
/// Build it once per model and reuse it for every frame: it keeps its resampling tables for
/// the last frame size it saw. It is `Send + Sync`; concurrent calls to [`Preprocessor::run`]
/// are correct but take turns.
pub struct Preprocessor {
    width: u32,
    height: u32,
    resize: Resize,
    /// Per channel: `out = byte * gain + offset` equals `(byte / 255 - mean) / std`.
    gain: [f32; 3],
    offset: [f32; 3],
    normalize: Normalize,
    scratch: Mutex<Scratch>,
}

impl std::fmt::Debug for Preprocessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preprocessor")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("resize", &self.resize)
            .field("normalize", &self.normalize)
            .finish_non_exhaustive()
    }
}

impl Clone for Preprocessor {
    /// A copy with the same settings and empty resampling caches.
    fn clone(&self) -> Self {
        Preprocessor {
            width: self.width,
            height: self.height,
            resize: self.resize,
            gain: self.gain,
            offset: self.offset,
            normalize: self.normalize,
            scratch: Mutex::new(Scratch::default()),
        }
    }
}

impl Preprocessor {
    /// A preprocessor for a model input of `width` x `height` pixels.
    ///
    /// Fails when a side is zero or above [`MAX_SIDE`], or when a mean or std is not finite or
    /// a std is zero.
    pub fn new(
        width: u32,
        height: u32,
        resize: Resize,
        normalize: Normalize,
    ) -> Result<Self, PreprocessError> {
        if width == 0 || height == 0 {
            return Err(PreprocessError::ZeroSize { width, height });
        }
        if width > MAX_SIDE || height > MAX_SIDE {
            return Err(PreprocessError::TooLarge { width, height });
        }
        let mut gain = [0.0; 3];
        let mut offset = [0.0; 3];
        for channel in 0..3 {
            let (mean, std) = (normalize.mean[channel], normalize.std[channel]);
            let (g, o) = (1.0 / (255.0 * std), -mean / std);
            if !mean.is_finite() || !std.is_finite() || !g.is_finite() || !o.is_finite() {
                return Err(PreprocessError::Normalize { channel, mean, std });
            }
            gain[channel] = g;
            offset[channel] = o;
        }
        Ok(Preprocessor {
            width,
            height,
            resize,
            gain,
            offset,
            normalize,
            scratch: Mutex::new(Scratch::default()),
        })
    }

    /// Model input width.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Model input height.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Where a frame of `frame_width` x `frame_height` lands in the model input; the same
    /// value [`Preprocessor::run`] returns for such a frame. Zero sides are treated as 1.
    pub fn geometry(&self, frame_width: u32, frame_height: u32) -> Geometry {
        let (fw, fh) = (frame_width.max(1), frame_height.max(1));
        let (mw, mh) = (self.width, self.height);
        let content = match self.resize {
            Resize::Stretch => [0, 0, mw, mh],
            Resize::Letterbox => {
                let (fw64, fh64, mw64, mh64) =
                    (u64::from(fw), u64::from(fh), u64::from(mw), u64::from(mh));
                // Compare mw / fw with mh / fh without rounding; the limiting side fills the
                // input exactly, the other is rounded to the nearest pixel.
                let (cw, ch) = if mw64 * fh64 <= mh64 * fw64 {
                    (mw64, (2 * fh64 * mw64 + fw64) / (2 * fw64))
                } else {
                    ((2 * fw64 * mh64 + fh64) / (2 * fh64), mh64)
                };
                // Both are at most the model side (≤ MAX_SIDE), so they fit in u32.
                let cw = cw.clamp(1, mw64) as u32;
                let ch = ch.clamp(1, mh64) as u32;
                [(mw - cw) / 2, (mh - ch) / 2, cw, ch]
            }
            Resize::Longest => {
                // SAM: scale = side / longest; new = int(old * scale + 0.5).
                let scale = f64::from(mw.min(mh)) / f64::from(fw.max(fh));
                let side =
                    |v: u32, limit: u32| ((f64::from(v) * scale + 0.5) as u32).clamp(1, limit);
                [0, 0, side(fw, mw), side(fh, mh)]
            }
        };
        Geometry {
            model: (mw, mh),
            frame: (fw, fh),
            content,
        }
    }

    /// Fills `out` with the model input for `frame`: `3 * width * height` values, planar RGB
    /// (all red, then all green, then all blue), row-major, normalised.
    ///
    /// `out` is resized to that length and overwritten; its allocation is reused, so with a
    /// vector that already has the capacity and frames of an unchanged size this allocates
    /// nothing.
    pub fn run(&self, frame: &Frame, out: &mut Vec<f32>) -> Geometry {
        let geometry = self.geometry(frame.width(), frame.height());
        let (mw, mh) = (self.width as usize, self.height as usize);
        let plane = mw * mh;
        out.resize(3 * plane, 0.0);

        let [px, py, cw, ch] = geometry.content.map(|v| v as usize);
        if cw < mw || ch < mh {
            for c in 0..3 {
                let value = match self.resize {
                    Resize::Longest => 0.0,
                    Resize::Stretch | Resize::Letterbox => self.offset[c],
                };
                fill_padding(
                    &mut out[c * plane..(c + 1) * plane],
                    (mw, mh),
                    [px, py, cw, ch],
                    value,
                );
            }
        }

        let mut scratch = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
        let scratch = &mut *scratch;
        let (fw, fh) = (frame.width() as usize, frame.height() as usize);
        if scratch.key != Some((fw, fh, cw, ch)) {
            scratch.x = Kernel::new(fw, cw);
            scratch.y = Kernel::new(fh, ch);
            scratch.row = vec![0.0; fw * 3];
            scratch.key = Some((fw, fh, cw, ch));
        }

        // Row by row: a vertical pass blends frame rows into one full-width row (contiguous,
        // so it vectorises), then a horizontal pass resamples that row into the planes.
        let rgb = frame.rgb();
        for j in 0..ch {
            let (start, weights) = scratch.y.taps(j);
            scratch.row.fill(0.0);
            for (k, &w) in weights.iter().enumerate() {
                let src = &rgb[(start + k) * fw * 3..(start + k + 1) * fw * 3];
                for (acc, &v) in scratch.row.iter_mut().zip(src) {
                    *acc += w * f32::from(v);
                }
            }
            let (row_px, _) = scratch.row.as_chunks::<3>();
            let row_start = (py + j) * mw + px;
            let (red, rest) = out[row_start..].split_at_mut(plane);
            let (green, blue) = rest.split_at_mut(plane);
            let mut planes = [&mut red[..cw], &mut green[..cw], &mut blue[..cw]];
            for i in 0..cw {
                let (start, weights) = scratch.x.taps(i);
                let mut acc = [0.0f32; 3];
                for (w, p) in weights.iter().zip(&row_px[start..]) {
                    acc[0] += w * p[0];
                    acc[1] += w * p[1];
                    acc[2] += w * p[2];
                }
                for (c, dst) in planes.iter_mut().enumerate() {
                    dst[i] = acc[c] * self.gain[c] + self.offset[c];
                }
            }
        }
        geometry
    }
}

/// Writes `value` to the parts of a `model` plane outside the `content` rectangle.
fn fill_padding(plane: &mut [f32], model: (usize, usize), content: [usize; 4], value: f32) {
    let (mw, mh) = model;
    let [px, py, cw, ch] = content;
    for (y, row) in plane.chunks_exact_mut(mw).enumerate().take(mh) {
        if y < py || y >= py + ch {
            row.fill(value);
        } else {
            row[..px].fill(value);
            row[px + cw..].fill(value);
        }
    }
}

/// Resampling state kept between frames of the same size.
#[derive(Default)]
struct Scratch {
    /// Frame width and height, content width and height the tables were built for.
    key: Option<(usize, usize, usize, usize)>,
    x: Kernel,
    y: Kernel,
    /// One vertically resampled row: frame width RGB values.
    row: Vec<f32>,
}

/// Triangle-filter taps for resampling one axis from `in_len` to `out_len` samples.
#[derive(Default)]
struct Kernel {
    /// First source index and number of taps for each output index.
    spans: Vec<(usize, usize)>,
    /// `stride` weights per output index, the first `spans[i].1` of them used.
    weights: Vec<f32>,
    stride: usize,
}

impl Kernel {
    fn new(in_len: usize, out_len: usize) -> Kernel {
        let scale = in_len as f64 / out_len as f64;
        let filter_scale = scale.max(1.0);
        // The triangle filter has a support of 1 source pixel, widened when shrinking.
        let support = filter_scale;
        let stride = (support.ceil() as usize) * 2 + 1;
        let mut spans = Vec::with_capacity(out_len);
        let mut weights = vec![0.0f32; out_len * stride];
        let mut taps = Vec::with_capacity(stride + 1);
        for i in 0..out_len {
            let center = (i as f64 + 0.5) * scale;
            let lo = ((center - support).floor().max(0.0)) as usize;
            let hi = ((center + support).ceil() as usize).min(in_len);
            taps.clear();
            let mut sum = 0.0;
            for x in lo..hi {
                let d = ((x as f64 + 0.5 - center) / filter_scale).abs();
                let w = (1.0 - d).max(0.0);
                taps.push((x, w));
                sum += w;
            }
            // Drop zero taps at both ends.
            let first = taps.iter().position(|&(_, w)| w > 0.0);
            let last = taps.iter().rposition(|&(_, w)| w > 0.0);
            let (start, used) = match (first, last, sum > 0.0) {
                (Some(f), Some(l), true) => {
                    for (k, &(_, w)) in taps[f..=l].iter().enumerate() {
                        weights[i * stride + k] = (w / sum) as f32;
                    }
                    (taps[f].0, l - f + 1)
                }
                // Unreachable for valid sizes (some tap always lies within half a pixel of
                // the centre); fall back to the nearest sample.
                _ => {
                    weights[i * stride] = 1.0;
                    ((center as usize).min(in_len - 1), 1)
                }
            };
            spans.push((start, used));
        }
        Kernel {
            spans,
            weights,
            stride,
        }
    }

    fn taps(&self, i: usize) -> (usize, &[f32]) {
        let (start, used) = self.spans[i];
        (
            start,
            &self.weights[i * self.stride..i * self.stride + used],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDENTITY: Normalize = Normalize {
        mean: [0.0; 3],
        std: [1.0; 3],
    };

    /// A normalisation that leaves byte values unchanged (0..255), so expectations read as bytes.
    const BYTES: Normalize = Normalize {
        mean: [0.0; 3],
        std: [1.0 / 255.0; 3],
    };

    fn gray(width: u32, height: u32, values: &[u8]) -> Frame {
        Frame::from_gray(width, height, values).unwrap()
    }

    /// One channel of `out`, as rows.
    fn plane(out: &[f32], width: usize, height: usize, channel: usize) -> Vec<Vec<f32>> {
        out[channel * width * height..(channel + 1) * width * height]
            .chunks(width)
            .map(<[f32]>::to_vec)
            .collect()
    }

    fn assert_close(found: &[Vec<f32>], expected: &[Vec<f32>]) {
        assert_eq!(
            found.len(),
            expected.len(),
            "rows: {found:?} vs {expected:?}"
        );
        for (f, e) in found.iter().zip(expected) {
            assert_eq!(f.len(), e.len(), "{found:?} vs {expected:?}");
            for (a, b) in f.iter().zip(e) {
                assert!((a - b).abs() < 1e-3, "{found:?}\n!=\n{expected:?}");
            }
        }
    }

    #[test]
    fn new_rejects_bad_settings() {
        let cases = [
            (
                0,
                4,
                IDENTITY,
                PreprocessError::ZeroSize {
                    width: 0,
                    height: 4,
                },
            ),
            (
                4,
                0,
                IDENTITY,
                PreprocessError::ZeroSize {
                    width: 4,
                    height: 0,
                },
            ),
            (
                MAX_SIDE + 1,
                4,
                IDENTITY,
                PreprocessError::TooLarge {
                    width: MAX_SIDE + 1,
                    height: 4,
                },
            ),
            (
                4,
                4,
                Normalize {
                    mean: [0.5; 3],
                    std: [0.2, 0.0, 0.2],
                },
                PreprocessError::Normalize {
                    channel: 1,
                    mean: 0.5,
                    std: 0.0,
                },
            ),
            (
                4,
                4,
                Normalize {
                    mean: [0.5, 0.5, f32::INFINITY],
                    std: [0.2; 3],
                },
                PreprocessError::Normalize {
                    channel: 2,
                    mean: f32::INFINITY,
                    std: 0.2,
                },
            ),
        ];
        for (w, h, norm, expected) in cases {
            assert_eq!(
                Preprocessor::new(w, h, Resize::Stretch, norm).unwrap_err(),
                expected
            );
        }
        let err = Preprocessor::new(
            4,
            4,
            Resize::Stretch,
            Normalize {
                mean: [0.0; 3],
                std: [f32::NAN; 3],
            },
        )
        .unwrap_err();
        assert!(matches!(err, PreprocessError::Normalize { channel: 0, .. }));
    }

    #[test]
    fn resize_parses_lowercase() {
        #[derive(Deserialize)]
        struct Input {
            resize: Resize,
        }
        let parse = |s: &str| serde_json::from_str::<Input>(s).map(|i| i.resize).ok();
        assert_eq!(parse(r#"{"resize":"stretch"}"#), Some(Resize::Stretch));
        assert_eq!(parse(r#"{"resize":"letterbox"}"#), Some(Resize::Letterbox));
        assert_eq!(parse(r#"{"resize":"Stretch"}"#), None);
    }

    #[test]
    fn stretch_2x2_to_4x4_is_bilinear_on_half_pixel_centres() {
        // Source columns sampled at -0.25, 0.25, 0.75, 1.25 (clamped at the edges): weights
        // (1, 0), (0.75, 0.25), (0.25, 0.75), (0, 1); rows likewise.
        let p = Preprocessor::new(4, 4, Resize::Stretch, BYTES).unwrap();
        let frame = gray(2, 2, &[0, 100, 200, 40]);
        let mut out = Vec::new();
        let g = p.run(&frame, &mut out);
        assert_eq!(out.len(), 3 * 16);
        let expected = vec![
            vec![0.0, 25.0, 75.0, 100.0],
            vec![50.0, 58.75, 76.25, 85.0],
            vec![150.0, 126.25, 78.75, 55.0],
            vec![200.0, 160.0, 80.0, 40.0],
        ];
        for c in 0..3 {
            assert_close(&plane(&out, 4, 4, c), &expected);
        }
        assert_eq!(g.content(), [0, 0, 4, 4]);
        assert_eq!(g.scale(), (2.0, 2.0));
    }

    #[test]
    fn same_size_stretch_is_a_copy() {
        let p = Preprocessor::new(3, 2, Resize::Stretch, BYTES).unwrap();
        let rgb: Vec<u8> = (0..18).map(|v| v * 10).collect();
        let frame = Frame::from_rgb(3, 2, rgb.clone()).unwrap();
        let mut out = Vec::new();
        p.run(&frame, &mut out);
        for c in 0..3 {
            let expected: Vec<Vec<f32>> = (0..2)
                .map(|y| {
                    (0..3)
                        .map(|x| f32::from(rgb[(y * 3 + x) * 3 + c]))
                        .collect()
                })
                .collect();
            assert_close(&plane(&out, 3, 2, c), &expected);
        }
    }

    #[test]
    fn shrinking_averages_like_pil() {
        // 4 → 2: the triangle widens to a support of 2 source pixels, so each output mixes
        // three sources, weighted by 1 - distance / 2 and normalised.
        let p = Preprocessor::new(2, 1, Resize::Stretch, BYTES).unwrap();
        let frame = gray(4, 1, &[0, 40, 80, 120]);
        let mut out = Vec::new();
        p.run(&frame, &mut out);
        // Output 0 centre at 1.0: x=0 (d=.5/2 → .75), x=1 (.75), x=2 (1.5/2 → .25); sum 1.75.
        let first = (0.75 * 0.0 + 0.75 * 40.0 + 0.25 * 80.0) / 1.75;
        let second = (0.25 * 40.0 + 0.75 * 80.0 + 0.75 * 120.0) / 1.75;
        assert_close(&plane(&out, 2, 1, 0), &[vec![first, second]]);
    }

    /// Stretches a gray `frame` of `values` to `model` size and compares the first plane, in
    /// byte units, with `expected` rows.
    fn check_stretch(frame: (u32, u32), values: &[u8], model: (u32, u32), expected: &[&[f32]]) {
        let p = Preprocessor::new(model.0, model.1, Resize::Stretch, BYTES).unwrap();
        let mut out = Vec::new();
        p.run(&gray(frame.0, frame.1, values), &mut out);
        let expected: Vec<Vec<f32>> = expected.iter().map(|r| r.to_vec()).collect();
        let (w, h) = (model.0 as usize, model.1 as usize);
        assert_close(&plane(&out, w, h, 0), &expected);
    }

    #[test]
    fn matches_pil_bilinear_resize() {
        // Expected values from Pillow 13: Image.fromarray(values, mode="F")
        // .resize(size, Image.BILINEAR), which resamples without rounding.
        check_stretch(
            (5, 4),
            &[
                0, 30, 60, 90, 120, //
                200, 10, 250, 40, 80, //
                5, 5, 100, 100, 255, //
                60, 70, 80, 90, 100,
            ],
            (3, 2),
            &[&[57.0408, 101.2698, 99.7959], &[46.6327, 89.5238, 130.8163]],
        );
        check_stretch(
            (3, 2),
            &[10, 200, 30, 90, 0, 255],
            (5, 3),
            &[
                &[10.0, 86.0, 200.0, 98.0, 30.0],
                &[50.0, 70.0, 100.0, 125.5, 142.5],
                &[90.0, 54.0, 0.0, 153.0, 255.0],
            ],
        );
    }

    #[test]
    fn letterbox_pads_top_and_bottom_with_normalised_black() {
        let norm = Normalize {
            mean: [0.5, 0.25, 0.0],
            std: [0.5, 0.25, 2.0],
        };
        let p = Preprocessor::new(4, 4, Resize::Letterbox, norm).unwrap();
        let frame = gray(4, 2, &[0, 51, 102, 153, 204, 255, 255, 0]);
        let mut out = Vec::new();
        let g = p.run(&frame, &mut out);
        assert_eq!(g.content(), [0, 1, 4, 2]);
        assert_eq!(g.pad(), (0, 1));
        assert_eq!(g.scale(), (1.0, 1.0));
        for c in 0..3 {
            let n = |byte: f32| (byte / 255.0 - norm.mean[c]) / norm.std[c];
            let black = n(0.0);
            let expected = vec![
                vec![black; 4],
                [0.0, 51.0, 102.0, 153.0].map(n).to_vec(),
                [204.0, 255.0, 255.0, 0.0].map(n).to_vec(),
                vec![black; 4],
            ];
            assert_close(&plane(&out, 4, 4, c), &expected);
        }
    }

    #[test]
    fn longest_side_puts_the_image_top_left_and_pads_with_zero() {
        let norm = Normalize {
            mean: [0.5, 0.25, 0.0],
            std: [0.5, 0.25, 2.0],
        };
        let p = Preprocessor::new(4, 4, Resize::Longest, norm).unwrap();
        let frame = gray(4, 2, &[0, 51, 102, 153, 204, 255, 255, 0]);
        let mut out = Vec::new();
        let g = p.run(&frame, &mut out);
        assert_eq!(g.content(), [0, 0, 4, 2]);
        for c in 0..3 {
            let n = |byte: f32| (byte / 255.0 - norm.mean[c]) / norm.std[c];
            let expected = vec![
                [0.0, 51.0, 102.0, 153.0].map(n).to_vec(),
                [204.0, 255.0, 255.0, 0.0].map(n).to_vec(),
                vec![0.0; 4],
                vec![0.0; 4],
            ];
            assert_close(&plane(&out, 4, 4, c), &expected);
        }
        // SAM's ResizeLongestSide: int(old * side / longest + 0.5).
        let cases = [
            ((1024, 1024), (1920, 1080), [0, 0, 1024, 576]),
            ((256, 256), (320, 240), [0, 0, 256, 192]),
            ((256, 256), (300, 1000), [0, 0, 77, 256]),
            ((256, 256), (1000, 1), [0, 0, 256, 1]),
        ];
        for (model, frame, content) in cases {
            let p = Preprocessor::new(model.0, model.1, Resize::Longest, IDENTITY).unwrap();
            assert_eq!(p.geometry(frame.0, frame.1).content(), content, "{frame:?}");
        }
    }

    #[test]
    fn letterbox_geometry_table() {
        // (model w, h), (frame w, h) → content [x, y, w, h]
        let cases = [
            ((4, 4), (4, 2), [0, 1, 4, 2]),
            ((4, 4), (2, 4), [1, 0, 2, 4]),
            ((4, 4), (8, 8), [0, 0, 4, 4]),
            ((8, 8), (3, 1), [0, 2, 8, 3]), // 8/3 = 2.67 rows, rounded
            ((352, 352), (1920, 1080), [0, 77, 352, 198]),
            ((10, 4), (3, 3), [3, 0, 4, 4]),
            ((4, 4), (1000, 1), [0, 1, 4, 1]), // never thinner than a pixel
        ];
        for (model, frame, content) in cases {
            let p = Preprocessor::new(model.0, model.1, Resize::Letterbox, IDENTITY).unwrap();
            let g = p.geometry(frame.0, frame.1);
            assert_eq!(g.content(), content, "model {model:?} frame {frame:?}");
            assert_eq!(g.model_size(), model);
            assert_eq!(g.frame_size(), frame);
        }
    }

    #[test]
    fn geometry_maps_model_pixel_centres_back_to_frame() {
        let p = Preprocessor::new(4, 4, Resize::Letterbox, IDENTITY).unwrap();
        let g = p.run(&gray(4, 2, &[0; 8]), &mut Vec::new());
        // (model x, y) → (frame x, y)
        let cases = [
            ((0.0, 1.0), (0.0, 0.0)),
            ((3.0, 2.0), (3.0, 1.0)),
            ((2.0, 0.0), (2.0, -1.0)), // padding: above the frame
            ((1.0, 3.0), (1.0, 2.0)),  // padding: below the frame
        ];
        for (model, frame) in cases {
            assert_eq!(g.to_frame(model.0, model.1), frame, "model {model:?}");
            assert_eq!(g.to_model(frame.0, frame.1), model, "frame {frame:?}");
        }

        // Enlarging 2x2 → 4x4: model centres 0 and 1 straddle frame pixel 0.
        let p = Preprocessor::new(4, 4, Resize::Stretch, IDENTITY).unwrap();
        let g = p.geometry(2, 2);
        assert_eq!(g.to_frame(0.0, 1.0), (-0.25, 0.25));
        assert_eq!(g.to_frame(3.0, 2.0), (1.25, 0.75));
        assert_eq!(g.to_model(0.0, 1.0), (0.5, 2.5));
    }

    #[test]
    fn mean_and_std_are_applied_per_channel() {
        let norm = Normalize {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        };
        let p = Preprocessor::new(1, 1, Resize::Stretch, norm).unwrap();
        let frame = Frame::from_rgb(1, 1, vec![255, 128, 0]).unwrap();
        let mut out = Vec::new();
        p.run(&frame, &mut out);
        let expected = [
            (1.0 - 0.485) / 0.229,
            (128.0 / 255.0 - 0.456) / 0.224,
            (0.0 - 0.406) / 0.225,
        ];
        for (found, expected) in out.iter().zip(expected) {
            assert!((found - expected).abs() < 1e-5, "{out:?}");
        }
    }

    #[test]
    fn channels_stay_planar_and_separate() {
        let p = Preprocessor::new(2, 1, Resize::Stretch, BYTES).unwrap();
        let frame = Frame::from_rgb(2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap();
        let mut out = Vec::new();
        p.run(&frame, &mut out);
        assert_close(&[out], &[vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]]);
    }

    #[test]
    fn output_buffer_is_reused_without_reallocation() {
        let p = Preprocessor::new(8, 8, Resize::Letterbox, IDENTITY).unwrap();
        let mut out = Vec::with_capacity(3 * 64);
        let ptr = out.as_ptr();
        let a = gray(5, 3, &[10; 15]);
        let b = gray(3, 5, &[200; 15]);
        for frame in [&a, &b, &a] {
            p.run(frame, &mut out);
            assert_eq!(out.len(), 3 * 64);
            assert_eq!(out.as_ptr(), ptr);
        }
        // A longer vector is truncated, keeping its allocation.
        let mut long = vec![7.0; 1000];
        let ptr = long.as_ptr();
        p.run(&a, &mut long);
        assert_eq!((long.len(), long.as_ptr()), (3 * 64, ptr));
    }

    #[test]
    fn results_do_not_depend_on_previous_frames() {
        // Alternating frame sizes rebuilds the cached tables; outputs must match a fresh run.
        let p = Preprocessor::new(6, 4, Resize::Letterbox, IDENTITY).unwrap();
        let a = gray(5, 3, &(0..15).map(|v| v * 17).collect::<Vec<_>>());
        let b = gray(2, 7, &(0..14).map(|v| 250 - v * 9).collect::<Vec<_>>());
        let fresh = |f: &Frame| {
            let mut out = Vec::new();
            p.clone().run(f, &mut out);
            out
        };
        let (ea, eb) = (fresh(&a), fresh(&b));
        let mut out = Vec::new();
        for _ in 0..2 {
            p.run(&a, &mut out);
            assert_eq!(out, ea);
            p.run(&b, &mut out);
            assert_eq!(out, eb);
        }
    }

    #[test]
    fn any_sizes_stay_in_range_without_panicking() {
        // A deterministic sweep standing in for a property test: the output has the model
        // size, and (the filter being a weighted average) stays within the frame's range.
        let mut state = 0x9e37_79b9_u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let mut out = Vec::new();
        for _ in 0..200 {
            let model = (1 + next() % 40, 1 + next() % 40);
            let frame = (1 + next() % 70, 1 + next() % 70);
            let resize = [Resize::Stretch, Resize::Letterbox][next() as usize % 2];
            let p = Preprocessor::new(model.0, model.1, resize, BYTES).unwrap();
            let values: Vec<u8> = (0..frame.0 * frame.1).map(|_| next() as u8).collect();
            let (lo, hi) = (values.iter().min().unwrap(), values.iter().max().unwrap());
            let (lo, hi) = (f32::from(*lo).min(0.0), f32::from(*hi));
            let g = p.run(&gray(frame.0, frame.1, &values), &mut out);
            assert_eq!(out.len(), (3 * model.0 * model.1) as usize);
            assert!(
                out.iter().all(|v| *v >= lo - 1e-3 && *v <= hi + 1e-3),
                "{model:?} {frame:?}"
            );
            let [x, y, w, h] = g.content();
            assert!(x + w <= model.0 && y + h <= model.1 && w >= 1 && h >= 1);
        }
    }

    #[test]
    fn uniform_frames_stay_uniform_at_any_scale() {
        // The filter weights sum to one, so a flat frame resamples to the same value.
        for (model, frame) in [
            ((7, 5), (13, 11)),
            ((13, 11), (7, 5)),
            ((352, 352), (97, 61)),
        ] {
            let p = Preprocessor::new(model.0, model.1, Resize::Stretch, BYTES).unwrap();
            let f = gray(frame.0, frame.1, &vec![123; (frame.0 * frame.1) as usize]);
            let mut out = Vec::new();
            p.run(&f, &mut out);
            assert!(
                out.iter().all(|v| (v - 123.0).abs() < 1e-3),
                "{model:?} {frame:?}"
            );
        }
    }
}
