//! The work the inference thread does on one frame: crop to the region of interest, run the
//! model, map its output back to the full frame, and smooth over time there (so a re-detected
//! region does not reset the smoothing). Pure computation: no I/O.

use std::time::Instant;

use crate::frame::{Frame, Mask};
use crate::model::{FrameResult, ModelError, VlsmSession};
use crate::roi::Roi;
use crate::smoothing::Smoother;

/// A model that segments one frame at a time, holding its own per-stream state.
pub trait Segmenter: Send {
    /// What is segmented (the prompt), for labels and logs.
    fn label(&self) -> &str;
    /// The probability threshold the model's manifest sets.
    fn threshold(&self) -> f32;
    /// Segments `frame`; the result is at the frame's size.
    fn segment(&mut self, frame: &Frame) -> Result<FrameResult, ModelError>;
}

/// A VLSM session with its prompt already set.
pub struct VlsmSegmenter {
    session: VlsmSession,
    prompt: String,
}

impl VlsmSegmenter {
    /// Wraps `session`, setting `prompt` (an empty prompt only when `allow_empty`).
    pub fn new(
        mut session: VlsmSession,
        prompt: &str,
        allow_empty: bool,
    ) -> Result<VlsmSegmenter, ModelError> {
        session.set_prompt(prompt, allow_empty)?;
        Ok(VlsmSegmenter {
            session,
            prompt: prompt.to_string(),
        })
    }
}

impl Segmenter for VlsmSegmenter {
    fn label(&self) -> &str {
        &self.prompt
    }

    fn threshold(&self) -> f32 {
        self.session.model().package().manifest().output.threshold
    }

    fn segment(&mut self, frame: &Frame) -> Result<FrameResult, ModelError> {
        self.session.segment(frame)
    }
}

/// Stage durations of one frame in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageMicros {
    /// Region-of-interest crop plus the model's preprocessing.
    pub preprocess: u64,
    pub inference: u64,
    /// The model's postprocessing plus smoothing and mapping back to the full frame.
    pub postprocess: u64,
}

/// One frame's mask and the time each stage took.
#[derive(Debug)]
pub struct Processed {
    pub mask: Mask,
    pub micros: StageMicros,
}

/// Region of interest → model → temporal smoothing → full-frame mask.
pub struct Stages {
    roi: Roi,
    segmenter: Box<dyn Segmenter>,
    smoother: Smoother,
}

fn micros(ms: f64) -> u64 {
    (ms * 1e3).round().max(0.0) as u64
}

impl Stages {
    pub fn new(roi: Roi, segmenter: Box<dyn Segmenter>, smoother: Smoother) -> Stages {
        Stages {
            roi,
            segmenter,
            smoother,
        }
    }

    /// What is segmented.
    pub fn label(&self) -> &str {
        self.segmenter.label()
    }

    /// Segments `frame` and returns its mask at the frame's full size.
    pub fn process(&mut self, frame: &Frame) -> anyhow::Result<Processed> {
        let t0 = Instant::now();
        let cropped = self.roi.apply(frame)?;
        let crop_us = t0.elapsed().as_micros() as u64;
        let result = self.segmenter.segment(&cropped.frame)?;
        let t1 = Instant::now();
        let full = cropped.region.restore_segmentation(&result.segmentation)?;
        let threshold = self.segmenter.threshold();
        let mask =
            self.smoother
                .apply(&full.probability, frame.width(), frame.height(), threshold)?;
        let micros = StageMicros {
            preprocess: crop_us + micros(result.timings.preprocess),
            inference: micros(result.timings.inference),
            postprocess: micros(result.timings.postprocess) + t1.elapsed().as_micros() as u64,
        };
        Ok(Processed { mask, micros })
    }
}
