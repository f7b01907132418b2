//! Any 2D model family behind one face: a [`Request`] says what to segment (a text prompt and
//! adapter for VLSMs, clicks and a box for SAM, a task and modality for conditioned models,
//! nothing for plain ones), and a [`FrameModel`] segments frame after frame with it. The
//! `segment` command, `eval` and the live loop all use this, so each family is wired once.
//!
//! A request that does not fit the family (clicks for a VLSM, a prompt for a plain model) is
//! an error naming the family, never silently ignored.

use super::{
    Dense, DenseSession, Family, FrameResult, ModelError, Package, Precision, Sam, SamPrompt,
    SamSession, Vlsm, VlsmSession,
};
use crate::frame::Frame;

/// What to segment, for whichever family the model is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    /// VLSM text prompt.
    pub prompt: Option<String>,
    /// Allow an empty VLSM prompt (prompt level P0, asked for on purpose).
    pub allow_empty: bool,
    /// VLSM task adapter (default: the package's first).
    pub adapter: Option<String>,
    /// SAM clicks and box.
    pub sam: SamPrompt,
    /// SAM: return all K masks instead of the chosen one.
    pub all_masks: bool,
    /// Conditioned models: task and modality names.
    pub task: Option<String>,
    pub modality: Option<String>,
}

enum Kind {
    Vlsm(Box<VlsmSession>),
    Sam {
        session: Box<SamSession>,
        prompt: SamPrompt,
        all_masks: bool,
    },
    Dense(Box<DenseSession>),
}

/// A loaded 2D model with its request applied.
pub struct FrameModel {
    kind: Kind,
    package: Package,
    precision: Precision,
    label: String,
}

impl FrameModel {
    /// Loads `package` at `precision` on `threads` threads and applies `request`.
    pub fn open(
        package: Package,
        precision: Precision,
        threads: usize,
        request: &Request,
    ) -> Result<FrameModel, ModelError> {
        let kind = match package.manifest().family {
            Family::Vlsm => Kind::Vlsm(Box::new(
                Vlsm::load(package.clone(), precision, threads)?.session()?,
            )),
            Family::Sam => Kind::Sam {
                session: Box::new(Sam::load(package.clone(), precision, threads)?.session()?),
                prompt: SamPrompt::default(),
                all_masks: false,
            },
            Family::Plain | Family::Conditioned => {
                Kind::Dense(Box::new(
                    Dense::load(package.clone(), precision, threads)?.session()?,
                ))
            }
            Family::Sam3d => {
                return Err(ModelError::Prompt(format!(
                    "model `{}` is a volume model (sam3d): give it a volume (.nii, .nii.gz or a DICOM series folder)",
                    package.name()
                )))
            }
        };
        let mut model = FrameModel {
            kind,
            package,
            precision,
            label: String::new(),
        };
        model.apply(request)?;
        Ok(model)
    }

    /// Makes `request` the one every following frame is segmented with; the model is not
    /// reloaded (a VLSM caches prompt encodings, a conditioned model only swaps two ids).
    pub fn apply(&mut self, request: &Request) -> Result<(), ModelError> {
        let family = self.package.manifest().family;
        let name = self.package.name();
        let misfit = |what: &str| {
            Err(ModelError::Prompt(format!(
                "model `{name}` is family `{}`, which takes no {what}",
                family.as_str()
            )))
        };
        let has_sam = !request.sam.clicks.is_empty() || request.sam.bbox.is_some();
        let has_condition = request.task.is_some() || request.modality.is_some();
        self.label = match &mut self.kind {
            Kind::Vlsm(session) => {
                if has_sam {
                    return misfit("clicks or boxes (--point/--box are for `sam` models)");
                }
                if has_condition {
                    return misfit(
                        "task or modality (--task/--modality are for `conditioned` models)",
                    );
                }
                if let Some(adapter) = &request.adapter {
                    session.set_adapter(adapter)?;
                }
                let prompt = request.prompt.clone().unwrap_or_default();
                session.set_prompt(&prompt, request.allow_empty)?;
                vlsm_label(session)
            }
            Kind::Sam {
                prompt, all_masks, ..
            } => {
                if request.prompt.is_some() || request.adapter.is_some() || has_condition {
                    return misfit("text prompt, adapter, task or modality (give --point/--box)");
                }
                if !has_sam {
                    return Err(ModelError::Prompt(format!(
                        "model `{name}` is a SAM model: give at least one --point X,Y or a --box X0,Y0,X1,Y1"
                    )));
                }
                *prompt = request.sam.clone();
                *all_masks = request.all_masks;
                describe_points(prompt)
            }
            Kind::Dense(session) => {
                if request.prompt.is_some() || request.adapter.is_some() || has_sam {
                    return misfit("text prompt, adapter, clicks or box");
                }
                let condition = session
                    .model()
                    .condition(request.task.as_deref(), request.modality.as_deref())?;
                session.set_condition(condition)?;
                match (&request.task, &request.modality) {
                    (Some(t), Some(m)) => format!("{t} ({m})"),
                    _ => match self.package.manifest().output.labels.get(1..) {
                        Some(classes) if !classes.is_empty() => classes.join(", "),
                        _ => name.to_string(),
                    },
                }
            }
        };
        Ok(())
    }

    pub fn package(&self) -> &Package {
        &self.package
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// What is segmented, for labels and summaries.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The probability threshold the manifest sets.
    pub fn threshold(&self) -> f32 {
        self.package.manifest().output.threshold
    }

    /// Switches a VLSM's task adapter; returns the milliseconds the switch took.
    pub fn set_adapter(&mut self, name: &str) -> Result<f64, ModelError> {
        match &mut self.kind {
            Kind::Vlsm(session) => {
                let ms = session.set_adapter(name)?;
                self.label = vlsm_label(session);
                Ok(ms)
            }
            _ => Err(ModelError::Prompt(format!(
                "model `{}` has no adapters",
                self.package.name()
            ))),
        }
    }

    /// Segments one frame. SAM encodes the frame and then decodes the request's points; its
    /// encoder time is counted as inference and added to the decoder's.
    pub fn segment(&mut self, frame: &Frame) -> Result<Segmented, ModelError> {
        let one = |result| Segmented {
            results: vec![result],
            chosen: 0,
            output: 0,
            scores: Vec::new(),
        };
        match &mut self.kind {
            Kind::Vlsm(session) => Ok(one(session.segment(frame)?)),
            Kind::Dense(session) => Ok(one(session.segment(frame)?)),
            Kind::Sam {
                session,
                prompt,
                all_masks,
            } => {
                let encoded = session.set_image(frame)?;
                let result = session.predict(prompt, *all_masks)?;
                let mut timings = result.timings;
                timings.preprocess += encoded.preprocess;
                timings.inference += encoded.inference;
                Ok(Segmented {
                    output: result.chosen,
                    chosen: if *all_masks { result.chosen } else { 0 },
                    results: result
                        .masks
                        .into_iter()
                        .map(|segmentation| FrameResult {
                            segmentation,
                            labels: None,
                            timings,
                        })
                        .collect(),
                    scores: result.iou,
                })
            }
        }
    }
}

/// What one frame produced: one result, or SAM's K results with `all_masks`.
#[derive(Debug, Clone)]
pub struct Segmented {
    pub results: Vec<FrameResult>,
    /// Index into `results` of the mask that answers the request.
    pub chosen: usize,
    /// Which of the model's outputs that mask is (SAM: 0..K; 0 for other families).
    pub output: usize,
    /// SAM's predicted IoU of each of its K outputs (empty for other families).
    pub scores: Vec<f32>,
}

impl Segmented {
    /// The mask that answers the request.
    pub fn best(&self) -> &FrameResult {
        &self.results[self.chosen]
    }
}

/// "prompt", or "prompt [adapter]" for an adapted package.
fn vlsm_label(session: &VlsmSession) -> String {
    let prompt = session.prompt().unwrap_or_default();
    match session.adapter() {
        Some(a) => format!("{prompt} [{a}]"),
        None => prompt.to_string(),
    }
}

/// "click (x, y), background (x, y), box (x0, y0)–(x1, y1)".
fn describe_points(prompt: &SamPrompt) -> String {
    let mut parts: Vec<String> = prompt
        .clicks
        .iter()
        .map(|c| {
            let kind = if c.positive { "click" } else { "background" };
            format!("{kind} ({}, {})", c.x, c.y)
        })
        .collect();
    if let Some([x0, y0, x1, y1]) = prompt.bbox {
        parts.push(format!("box ({x0}, {y0})–({x1}, {y1})"));
    }
    parts.join(", ")
}
