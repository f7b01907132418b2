//! One-graph image models: **plain** (image-only encoder–decoder, `image` → `logits`
//! `[1,K,H,W]`, e.g. an LVM-Med-style U-Net) and **conditioned** (Hermes-style task and modality
//! priors: the same plus `task_ids` i64 `[1,1]` and `modality_id` i64 `[1,1]`, whose ids the
//! manifest's `[conditioning]` tables give by name).
//!
//! Sigmoid models (K = 1) give a foreground mask; softmax models give the mask of "not
//! background" and, with K ≥ 3, a label map (the class of every frame pixel).

use std::time::Instant;

use super::{
    elapsed_ms as ms, Family, FrameResult, Graph, ModelError, Package, Precision, Session,
};
use crate::frame::Frame;
use crate::output::Timings;
use crate::postprocess;
use crate::preprocess::Preprocessor;

const IMAGE: &str = "image";
const LOGITS: &str = "logits";
const TASK: &str = "task_ids";
const MODALITY: &str = "modality_id";

/// A loaded plain or conditioned package at one precision.
#[derive(Debug, Clone)]
pub struct Dense {
    package: Package,
    precision: Precision,
    graph: Graph,
    preprocessor: Preprocessor,
    /// K and the logit grid (width, height).
    classes: usize,
    grid: (u32, u32),
}

/// Task and modality ids of a conditioned model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Condition {
    pub task: i64,
    pub modality: i64,
}

impl Dense {
    /// Loads and optimises the package's `model` graph.
    pub fn load(
        package: Package,
        precision: Precision,
        threads: usize,
    ) -> Result<Dense, ModelError> {
        let family = package.manifest().family;
        if !matches!(family, Family::Plain | Family::Conditioned) {
            return Err(ModelError::Family {
                model: package.name().to_string(),
                expected: "plain or conditioned",
                found: family.as_str(),
            });
        }
        let graph = package.load_graph("model", precision, threads)?;
        let (classes, grid) = match graph.shape_of(LOGITS)? {
            [1, k, h, w] if *k > 0 => (*k, (*w as u32, *h as u32)),
            other => {
                return Err(ModelError::Contract {
                    path: graph.path().to_path_buf(),
                    message: format!("logits must be [1,K,H,W], manifest says {other:?}"),
                })
            }
        };
        if family == Family::Conditioned {
            for name in [TASK, MODALITY] {
                if graph.shape_of(name)? != [1, 1] {
                    return Err(ModelError::Contract {
                        path: graph.path().to_path_buf(),
                        message: format!("`{name}` must be i64 [1,1]"),
                    });
                }
            }
        }
        let labels = &package.manifest().output.labels;
        if !labels.is_empty() && labels.len() != classes {
            return Err(ModelError::Contract {
                path: graph.path().to_path_buf(),
                message: format!(
                    "output.labels names {} classes, the graph gives {classes}",
                    labels.len()
                ),
            });
        }
        let preprocessor = package.preprocessor()?;
        Ok(Dense {
            package,
            precision,
            graph,
            preprocessor,
            classes,
            grid,
        })
    }

    pub fn package(&self) -> &Package {
        &self.package
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Classes of the output (K).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Resolves task and modality names through the manifest. A conditioned model needs both;
    /// a plain one takes neither. Unknown names are errors listing the known ones.
    pub fn condition(
        &self,
        task: Option<&str>,
        modality: Option<&str>,
    ) -> Result<Option<Condition>, ModelError> {
        let m = self.package.manifest();
        let Some(tables) = &m.conditioning else {
            return match task.or(modality) {
                None => Ok(None),
                Some(_) => Err(ModelError::Prompt(format!(
                    "model `{}` is family `{}`: it takes no --task or --modality",
                    m.name,
                    m.family.as_str()
                ))),
            };
        };
        let lookup = |kind: &str,
                      flag: &str,
                      name: Option<&str>,
                      table: &std::collections::BTreeMap<String, i64>| {
            let known = table.keys().cloned().collect::<Vec<_>>().join(", ");
            let name = name.ok_or_else(|| {
                ModelError::Prompt(format!("model `{}` needs {flag} (one of: {known})", m.name))
            })?;
            table.get(name).copied().ok_or_else(|| {
                ModelError::Prompt(format!(
                    "unknown {kind} `{name}` for model `{}` (known: {known})",
                    m.name
                ))
            })
        };
        Ok(Some(Condition {
            task: lookup("task", "--task", task, &tables.tasks)?,
            modality: lookup("modality", "--modality", modality, &tables.modalities)?,
        }))
    }

    /// A session for one stream of frames; a conditioned model needs
    /// [`DenseSession::set_condition`] before its first frame.
    pub fn session(&self) -> Result<DenseSession, ModelError> {
        Ok(DenseSession {
            model: self.clone(),
            session: self.graph.session()?,
            pixels: Vec::new(),
            condition: None,
        })
    }
}

/// Per-stream state: the run state, the input buffer and the condition.
pub struct DenseSession {
    model: Dense,
    session: Session,
    pixels: Vec<f32>,
    condition: Option<Condition>,
}

impl DenseSession {
    /// Sets the task and modality (from [`Dense::condition`]); `None` for a plain model.
    pub fn set_condition(&mut self, condition: Option<Condition>) -> Result<(), ModelError> {
        let needs = self.model.package.manifest().family == Family::Conditioned;
        if needs != condition.is_some() {
            return Err(ModelError::Prompt(format!(
                "model `{}` {} a task and a modality",
                self.model.package.name(),
                if needs { "needs" } else { "takes no" }
            )));
        }
        self.condition = condition;
        Ok(())
    }

    /// Segments one frame.
    pub fn segment(&mut self, frame: &Frame) -> Result<FrameResult, ModelError> {
        if self.condition.is_none() && self.model.package.manifest().family == Family::Conditioned {
            return Err(ModelError::Prompt(format!(
                "model `{}` needs a task and a modality before the first frame",
                self.model.package.name()
            )));
        }
        let mut timings = Timings::default();
        let t0 = Instant::now();
        let geometry = self.model.preprocessor.run(frame, &mut self.pixels);
        let g = &self.model.graph;
        let mut named = vec![(IMAGE, g.tensor(g.shape_of(IMAGE)?, &self.pixels)?)];
        if let Some(c) = self.condition {
            named.push((TASK, g.tensor(&[1, 1], &[c.task])?));
            named.push((MODALITY, g.tensor(&[1, 1], &[c.modality])?));
        }
        let inputs = g.order_inputs(named)?;
        timings.preprocess = ms(t0);

        let t1 = Instant::now();
        let outputs = self.session.run(inputs)?;
        timings.inference = ms(t1);

        let t2 = Instant::now();
        let logits = g.values(&outputs[0])?;
        let out = &self.model.package.manifest().output;
        let (w, h) = self.model.grid;
        let frame_size = (frame.width(), frame.height());
        let segmentation = postprocess::segment(
            logits,
            w,
            h,
            self.model.classes,
            out.activation,
            out.threshold,
            geometry,
            frame_size.0,
            frame_size.1,
        )
        .map_err(|e| g.error(e))?;
        let labels = (self.model.classes >= 3)
            .then(|| {
                postprocess::label_map(logits, (w, h), self.model.classes, geometry, frame_size)
            })
            .transpose()
            .map_err(|e| g.error(e))?;
        timings.postprocess = ms(t2);
        Ok(FrameResult {
            segmentation,
            labels,
            timings,
        })
    }

    pub fn model(&self) -> &Dense {
        &self.model
    }
}
