//! The work the inference thread does on one frame: crop to the region of interest, run the
//! model, map its output back to the full frame, and smooth over time there (so a re-detected
//! region does not reset the smoothing). Pure computation: no I/O. Task-adapter switches
//! arrive on a channel and are made between frames.

use std::sync::mpsc::Receiver;
use std::time::Instant;

use crate::frame::{Frame, Mask};
use crate::model::{FrameModel, FrameResult, ModelError};
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
    /// Switches the task adapter; returns the milliseconds it took.
    fn set_adapter(&mut self, name: &str) -> Result<f64, ModelError>;
}

impl Segmenter for FrameModel {
    fn label(&self) -> &str {
        FrameModel::label(self)
    }

    fn threshold(&self) -> f32 {
        FrameModel::threshold(self)
    }

    fn segment(&mut self, frame: &Frame) -> Result<FrameResult, ModelError> {
        let mut segmented = FrameModel::segment(self, frame)?;
        Ok(segmented.results.swap_remove(segmented.chosen))
    }

    fn set_adapter(&mut self, name: &str) -> Result<f64, ModelError> {
        FrameModel::set_adapter(self, name)
    }
}

/// One task-adapter switch during a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AdapterSwitch {
    pub adapter: String,
    /// Time the switch took (tensor swap, plus prompt re-encoding for adapted text graphs).
    pub ms: f64,
    /// Why it failed; the previous adapter stays active.
    pub error: Option<String>,
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
    /// Adapter names to switch to, from the run's control channel.
    control: Option<Receiver<String>>,
    switches: Vec<AdapterSwitch>,
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
            control: None,
            switches: Vec::new(),
        }
    }

    /// Switch adapters to the names received on `control`, between frames.
    pub fn with_control(mut self, control: Receiver<String>) -> Stages {
        self.control = Some(control);
        self
    }

    /// The adapter switches made so far.
    pub fn switches(&self) -> &[AdapterSwitch] {
        &self.switches
    }

    /// Makes every adapter switch that arrived since the last frame.
    fn switch_adapters(&mut self) {
        let Some(control) = &self.control else {
            return;
        };
        while let Ok(adapter) = control.try_recv() {
            let (ms, error) = match self.segmenter.set_adapter(&adapter) {
                Ok(ms) => {
                    log::info!("adapter `{adapter}` active after {ms:.2} ms");
                    (ms, None)
                }
                Err(e) => {
                    log::warn!("adapter switch: {e}");
                    (0.0, Some(e.to_string()))
                }
            };
            self.switches.push(AdapterSwitch { adapter, ms, error });
        }
    }

    /// What is segmented.
    pub fn label(&self) -> &str {
        self.segmenter.label()
    }

    /// Segments `frame` and returns its mask at the frame's full size.
    pub fn process(&mut self, frame: &Frame) -> anyhow::Result<Processed> {
        self.switch_adapters();
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
