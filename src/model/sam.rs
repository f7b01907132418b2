//! The SAM family (Segment Anything, 2D): an `encoder` graph turns the frame into an image
//! embedding once, and a `decoder` graph turns that embedding plus clicks and an optional box
//! into low-resolution mask logits and their predicted IoU. The embedding is cached, so every
//! new set of clicks on the same frame costs one decoder run.
//!
//! Contract (DESIGN.md, the official SAM decoder names): the decoder is exported without its
//! final resize, so it returns `low_res_masks` `[1,K,4h,4w]` over the padded S×S input; the
//! runtime upsamples them bilinearly, drops the padding and resizes to the frame in one step
//! ([`postprocess::segment`] with the letterbox [`Geometry`]). The frame is resized by its
//! longest side and padded right and bottom (`resize = "longest"`).
//!
//! The decoder takes a fixed number N of points: clicks (label 1 foreground, 0 background),
//! then the box corners (labels 2 and 3), then padding points (0, 0) with label -1, as SAM's
//! ONNX example pads. Coordinates are frame pixels scaled by the resize, as SAM's
//! `ResizeLongestSide.apply_coords`. The mask input is always empty (`has_mask_input` 0).
//!
//! Which of the K masks: SAM's rule for its ONNX export. With K = 4 (one single-mask output and
//! three multimask outputs) a lone click is ambiguous, so the multimask output with the best
//! predicted IoU wins; with several clicks or a box the single-mask output 0 is used. Other K:
//! the best predicted IoU.

use std::time::Instant;

use tract_onnx::prelude::Tensor;

use super::{elapsed_ms as ms, Family, Graph, ModelError, Package, Precision, Session};
use crate::frame::Frame;
use crate::output::Timings;
use crate::postprocess::{self, Activation, Segmentation};
use crate::preprocess::{Geometry, Preprocessor};

/// One click in frame pixel coordinates (continuous: pixel `i` has its centre at `i`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Click {
    pub x: f64,
    pub y: f64,
    /// Foreground (label 1) or background (label 0).
    pub positive: bool,
}

/// What the user pointed at: clicks and/or a box `[x0, y0, x1, y1]` in frame pixels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamPrompt {
    pub clicks: Vec<Click>,
    pub bbox: Option<[f64; 4]>,
}

/// A loaded SAM package at one precision.
#[derive(Debug, Clone)]
pub struct Sam {
    package: Package,
    precision: Precision,
    encoder: Graph,
    decoder: Graph,
    preprocessor: Preprocessor,
    /// N: points the decoder takes.
    points: usize,
    /// K, and the low-resolution mask grid (width, height).
    masks: usize,
    low_res: (u32, u32),
}

/// What one prompt produced.
#[derive(Debug, Clone)]
pub struct SamResult {
    /// Index of the chosen mask among the K outputs.
    pub chosen: usize,
    /// Predicted IoU of every output.
    pub iou: Vec<f32>,
    /// The chosen mask, or all K with `all_masks`, at frame size.
    pub masks: Vec<Segmentation>,
    /// Decoder and postprocess times (the encoder's are reported by [`SamSession::set_image`]).
    pub timings: Timings,
}

const ENCODER_IN: &str = "image";
const EMBEDDINGS: &str = "image_embeddings";
const LOW_RES: &str = "low_res_masks";
const IOU: &str = "iou_predictions";

impl Sam {
    /// Loads and optimises the encoder and decoder for `precision` on `threads` threads.
    pub fn load(package: Package, precision: Precision, threads: usize) -> Result<Sam, ModelError> {
        package.require(Family::Sam)?;
        let [encoder, decoder] = package.load_graphs(["encoder", "decoder"], precision, threads)?;
        let contract = |graph: &Graph, message: String| ModelError::Contract {
            path: graph.path().to_path_buf(),
            message,
        };
        let embed = encoder.shape_of(EMBEDDINGS)?.to_vec();
        if decoder.shape_of(EMBEDDINGS)? != embed.as_slice() {
            return Err(contract(
                &decoder,
                format!(
                    "decoder takes image_embeddings {:?}, the encoder gives {embed:?}",
                    decoder.shape_of(EMBEDDINGS)?
                ),
            ));
        }
        let points = match decoder.shape_of("point_coords")? {
            [1, n, 2] if *n > 0 => *n,
            other => {
                return Err(contract(
                    &decoder,
                    format!("point_coords must be [1,N,2], manifest says {other:?}"),
                ))
            }
        };
        let (masks, low_res) = match decoder.shape_of(LOW_RES)? {
            [1, k, h, w] if *k > 0 => (*k, (*w as u32, *h as u32)),
            other => {
                return Err(contract(
                    &decoder,
                    format!("low_res_masks must be [1,K,H,W], manifest says {other:?}"),
                ))
            }
        };
        if decoder.shape_of(IOU)? != [1, masks] {
            return Err(contract(
                &decoder,
                format!("iou_predictions must be [1,{masks}]"),
            ));
        }
        let preprocessor = package.preprocessor()?;
        Ok(Sam {
            package,
            precision,
            encoder,
            decoder,
            preprocessor,
            points,
            masks,
            low_res,
        })
    }

    pub fn package(&self) -> &Package {
        &self.package
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Points the decoder takes (clicks plus two per box).
    pub fn max_points(&self) -> usize {
        self.points
    }

    /// A session for one stream of frames.
    pub fn session(&self) -> Result<SamSession, ModelError> {
        let d = &self.decoder;
        let (w, h) = self.low_res;
        let no_mask = [
            (
                "mask_input",
                d.tensor(d.shape_of("mask_input")?, &vec![0f32; (w * h) as usize])?,
            ),
            ("has_mask_input", d.tensor(&[1], &[0f32])?),
        ];
        Ok(SamSession {
            model: self.clone(),
            encoder: self.encoder.session()?,
            decoder: self.decoder.session()?,
            pixels: Vec::new(),
            image: None,
            no_mask,
        })
    }
}

/// The frame the cached embedding belongs to.
struct Embedded {
    embedding: Tensor,
    geometry: Geometry,
}

/// Per-stream state: run states and the cached image embedding.
pub struct SamSession {
    model: Sam,
    encoder: Session,
    decoder: Session,
    pixels: Vec<f32>,
    image: Option<Embedded>,
    /// The empty mask input, made once.
    no_mask: [(&'static str, Tensor); 2],
}

impl SamSession {
    /// Encodes `frame` and keeps its embedding for the prompts that follow. Returns the
    /// preprocess and encoder times.
    pub fn set_image(&mut self, frame: &Frame) -> Result<Timings, ModelError> {
        let mut timings = Timings::default();
        let t0 = Instant::now();
        let geometry = self.model.preprocessor.run(frame, &mut self.pixels);
        let encoder = &self.model.encoder;
        let image = encoder.tensor(encoder.shape_of(ENCODER_IN)?, &self.pixels)?;
        let inputs = encoder.order_inputs(vec![(ENCODER_IN, image)])?;
        timings.preprocess = ms(t0);
        let t1 = Instant::now();
        let mut outputs = self.encoder.run(inputs)?;
        timings.inference = ms(t1);
        self.image = Some(Embedded {
            embedding: outputs.swap_remove(0),
            geometry,
        });
        Ok(timings)
    }

    /// Runs the decoder on the cached embedding. `all_masks` returns every output instead of
    /// the chosen one.
    pub fn predict(
        &mut self,
        prompt: &SamPrompt,
        all_masks: bool,
    ) -> Result<SamResult, ModelError> {
        let image = self
            .image
            .as_ref()
            .ok_or_else(|| ModelError::Prompt("no image encoded before the prompt".into()))?;
        let (frame_w, frame_h) = image.geometry.frame_size();
        let (coords, labels) = point_inputs(prompt, self.model.points, (frame_w, frame_h))?;
        let (sx, sy) = image.geometry.scale();
        let coords: Vec<f32> = coords
            .chunks_exact(2)
            .zip(&labels)
            .flat_map(|(xy, &label)| {
                if label < 0.0 {
                    [0.0, 0.0]
                } else {
                    [(xy[0] * sx) as f32, (xy[1] * sy) as f32]
                }
            })
            .collect();
        let mut timings = Timings::default();
        let t0 = Instant::now();
        let d = &self.model.decoder;
        let n = self.model.points;
        let (lw, lh) = self.model.low_res;
        let mut named = vec![
            (EMBEDDINGS, image.embedding.clone()),
            ("point_coords", d.tensor(&[1, n, 2], &coords)?),
            ("point_labels", d.tensor(&[1, n], &labels)?),
        ];
        named.extend(self.no_mask.iter().cloned());
        let inputs = d.order_inputs(named)?;
        let outputs = self.decoder.run(inputs)?;
        timings.inference = ms(t0);

        let t1 = Instant::now();
        let d = &self.model.decoder;
        let out_ix = |name: &str| {
            d.spec()
                .outputs
                .iter()
                .position(|t| t.name == name)
                .ok_or_else(|| d.error(format!("no output `{name}`")))
        };
        let logits = d.values(&outputs[out_ix(LOW_RES)?])?;
        let iou = d.values(&outputs[out_ix(IOU)?])?.to_vec();
        let chosen = choose(&iou, prompt);
        let m = self.model.package.manifest();
        let plane = (lw * lh) as usize;
        let wanted: Vec<usize> = if all_masks {
            (0..self.model.masks).collect()
        } else {
            vec![chosen]
        };
        let masks = wanted
            .into_iter()
            .map(|k| {
                postprocess::segment(
                    &logits[k * plane..(k + 1) * plane],
                    lw,
                    lh,
                    1,
                    Activation::Sigmoid,
                    m.output.threshold,
                    image.geometry,
                    frame_w,
                    frame_h,
                )
                .map_err(|e| d.error(e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        timings.postprocess = ms(t1);
        Ok(SamResult {
            chosen,
            iou,
            masks,
            timings,
        })
    }

    pub fn model(&self) -> &Sam {
        &self.model
    }
}

/// Point coordinates (frame pixels, x y interleaved) and labels for `n` slots; checks the prompt
/// against the frame.
fn point_inputs(
    prompt: &SamPrompt,
    n: usize,
    (width, height): (u32, u32),
) -> Result<(Vec<f64>, Vec<f32>), ModelError> {
    let needed = prompt.clicks.len() + if prompt.bbox.is_some() { 2 } else { 0 };
    if needed == 0 {
        return Err(ModelError::Prompt(
            "a SAM model needs at least one click (--point X,Y) or a box (--box X0,Y0,X1,Y1)"
                .into(),
        ));
    }
    if needed > n {
        return Err(ModelError::Prompt(format!(
            "this decoder takes at most {n} points (a box counts as 2); the prompt has {needed}"
        )));
    }
    let (w, h) = (f64::from(width), f64::from(height));
    let inside = |x: f64, y: f64| {
        x.is_finite() && y.is_finite() && (0.0..w).contains(&x) && (0.0..h).contains(&y)
    };
    let mut coords = Vec::with_capacity(2 * n);
    let mut labels = Vec::with_capacity(n);
    for c in &prompt.clicks {
        if !inside(c.x, c.y) {
            return Err(ModelError::Prompt(format!(
                "click ({}, {}) lies outside the {width}x{height} image",
                c.x, c.y
            )));
        }
        coords.extend([c.x, c.y]);
        labels.push(if c.positive { 1.0 } else { 0.0 });
    }
    if let Some([x0, y0, x1, y1]) = prompt.bbox {
        if !inside(x0, y0) || !inside(x1, y1) || x0 >= x1 || y0 >= y1 {
            return Err(ModelError::Prompt(format!(
                "box ({x0}, {y0})–({x1}, {y1}) must lie inside the {width}x{height} image with x0 < x1 and y0 < y1"
            )));
        }
        coords.extend([x0, y0, x1, y1]);
        labels.extend([2.0, 3.0]);
    }
    coords.resize(2 * n, 0.0);
    labels.resize(n, -1.0);
    Ok((coords, labels))
}

/// SAM's choice among K outputs (see the module docs).
fn choose(iou: &[f32], prompt: &SamPrompt) -> usize {
    let best = |from: usize| {
        (from..iou.len())
            .max_by(|&a, &b| iou[a].total_cmp(&iou[b]))
            .unwrap_or(0)
    };
    match iou.len() {
        4 if prompt.clicks.len() == 1 && prompt.bbox.is_none() => best(1),
        4 => 0,
        _ => best(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn click(x: f64, y: f64) -> Click {
        Click {
            x,
            y,
            positive: true,
        }
    }

    #[test]
    fn points_are_clicks_then_box_then_padding() {
        let prompt = SamPrompt {
            clicks: vec![
                click(10.0, 20.0),
                Click {
                    positive: false,
                    ..click(5.0, 6.0)
                },
            ],
            bbox: Some([1.0, 2.0, 30.0, 40.0]),
        };
        let (coords, labels) = point_inputs(&prompt, 6, (64, 48)).unwrap();
        assert_eq!(labels, vec![1.0, 0.0, 2.0, 3.0, -1.0, -1.0]);
        assert_eq!(
            coords,
            vec![10.0, 20.0, 5.0, 6.0, 1.0, 2.0, 30.0, 40.0, 0.0, 0.0, 0.0, 0.0]
        );
    }

    #[test]
    fn bad_prompts_are_errors_naming_the_problem() {
        let err = |prompt: SamPrompt| point_inputs(&prompt, 3, (64, 48)).unwrap_err().to_string();
        assert!(err(SamPrompt::default()).contains("at least one click"));
        assert!(err(SamPrompt {
            clicks: vec![click(64.0, 1.0)],
            bbox: None
        })
        .contains("click (64, 1) lies outside the 64x48 image"));
        assert!(err(SamPrompt {
            clicks: vec![click(f64::NAN, 1.0)],
            bbox: None
        })
        .contains("outside"));
        assert!(err(SamPrompt {
            clicks: vec![click(1.0, 1.0); 2],
            bbox: Some([0.0, 0.0, 5.0, 5.0])
        })
        .contains("at most 3 points"));
        assert!(err(SamPrompt {
            clicks: vec![],
            bbox: Some([5.0, 0.0, 5.0, 5.0])
        })
        .contains("x0 < x1"));
    }

    #[test]
    fn one_click_picks_the_best_multimask_output_otherwise_mask_zero() {
        let iou = [0.99, 0.2, 0.7, 0.5];
        let one = SamPrompt {
            clicks: vec![click(1.0, 1.0)],
            bbox: None,
        };
        assert_eq!(choose(&iou, &one), 2);
        let two = SamPrompt {
            clicks: vec![click(1.0, 1.0); 2],
            bbox: None,
        };
        assert_eq!(choose(&iou, &two), 0);
        let boxed = SamPrompt {
            clicks: vec![],
            bbox: Some([0.0, 0.0, 1.0, 1.0]),
        };
        assert_eq!(choose(&iou, &boxed), 0);
        assert_eq!(choose(&[0.1, 0.9, 0.3], &one), 1);
    }
}
