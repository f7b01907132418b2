//! The VLSM family (CLIPSeg architecture): image + text prompt → mask. Two package forms:
//! **split** (`text` graph: tokens → `conditional_embeddings`; `image` graph: `pixel_values` +
//! embeddings → `logits`), where a prompt is encoded once and cached so each frame runs only
//! the image graph; and **joint** (the Hugging Face single graph: tokens + `pixel_values` →
//! `logits`), where only the tokens are cached and every frame runs the whole model.

use std::collections::HashMap;
use std::time::Instant;

use tract_onnx::prelude::{Tensor, TractResult};

use super::{Family, Graph, ModelError, Package, Precision, Session, TensorSpec};
use crate::frame::Frame;
use crate::output::Timings;
use crate::postprocess::{self, Segmentation};
use crate::preprocess::{Normalize, Preprocessor};
use crate::tokenizer::{ClipTokenizer, TokenizedPrompt};

/// Prompt encodings kept per session; more distinct prompts than this clears the cache.
const PROMPT_CACHE: usize = 64;

#[derive(Debug, Clone)]
enum Form {
    Split { text: Graph, image: Graph },
    Joint(Graph),
}

/// A loaded VLSM package at one precision.
#[derive(Debug, Clone)]
pub struct Vlsm {
    package: Package,
    precision: Precision,
    tokenizer: ClipTokenizer,
    form: Form,
    preprocessor: Preprocessor,
}

/// What one frame produced.
#[derive(Debug, Clone)]
pub struct FrameResult {
    pub segmentation: Segmentation,
    pub timings: Timings,
}

impl Vlsm {
    /// Loads and optimises the package's graphs for `precision` on `threads` threads.
    pub fn load(
        package: Package,
        precision: Precision,
        threads: usize,
    ) -> Result<Vlsm, ModelError> {
        let m = package.manifest();
        if m.family != Family::Vlsm {
            return Err(ModelError::Family {
                model: m.name.clone(),
                expected: Family::Vlsm.as_str(),
                found: m.family.as_str(),
            });
        }
        let prompt = m
            .prompt
            .as_ref()
            .expect("vlsm manifests have [prompt] (checked at parse)");
        let tokenizer =
            ClipTokenizer::from_file(&package.path(&prompt.tokenizer), prompt.context_length)?;
        let form = if m.graphs.iter().any(|g| g.role == "joint") {
            Form::Joint(package.load_graph("joint", precision, threads)?)
        } else {
            Form::Split {
                text: package.load_graph("text", precision, threads)?,
                image: package.load_graph("image", precision, threads)?,
            }
        };
        let [w, h] = m.input.size;
        let normalize = Normalize {
            mean: m.input.mean,
            std: m.input.std,
        };
        let preprocessor = Preprocessor::new(w, h, m.input.resize, normalize).map_err(|e| {
            ModelError::Manifest {
                path: package.path(super::package::MANIFEST),
                message: e.to_string(),
            }
        })?;
        Ok(Vlsm {
            package,
            precision,
            tokenizer,
            form,
            preprocessor,
        })
    }

    pub fn package(&self) -> &Package {
        &self.package
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// A session for one stream of frames.
    pub fn session(&self) -> Result<VlsmSession, ModelError> {
        let (text, image) = match &self.form {
            Form::Split { text, image } => (Some(text.session()?), image.session()?),
            Form::Joint(joint) => (None, joint.session()?),
        };
        Ok(VlsmSession {
            model: self.clone(),
            text,
            image,
            cache: HashMap::new(),
            current: None,
            pixels: Vec::new(),
        })
    }
}

/// Per-stream state: run states, the prompt cache and the input buffer.
pub struct VlsmSession {
    model: Vlsm,
    text: Option<Session>,
    image: Session,
    /// Prompt → what the per-frame graph needs for it (embedding or tokens).
    cache: HashMap<String, Vec<Tensor>>,
    current: Option<String>,
    pixels: Vec<f32>,
}

fn tensor_err(graph: &Graph) -> impl Fn(anyhow::Error) -> ModelError + '_ {
    move |e| ModelError::Run {
        path: graph.path().to_path_buf(),
        message: format!("{e:#}"),
    }
}

/// Orders named tensors as the graph's manifest lists its inputs.
fn in_manifest_order(
    specs: &[TensorSpec],
    named: Vec<(&str, Tensor)>,
    graph: &Graph,
) -> Result<Vec<Tensor>, ModelError> {
    let mut named: HashMap<&str, Tensor> = named.into_iter().collect();
    specs
        .iter()
        .map(|s| {
            named
                .remove(s.name.as_str())
                .ok_or_else(|| ModelError::Contract {
                    path: graph.path().to_path_buf(),
                    message: format!(
                        "vlsm graphs take input `{}`, which this runtime cannot provide",
                        s.name
                    ),
                })
        })
        .collect()
}

fn token_tensors(tokens: &TokenizedPrompt) -> TractResult<[Tensor; 2]> {
    let l = tokens.input_ids.len();
    Ok([
        Tensor::from_shape(&[1, l], &tokens.input_ids)?,
        Tensor::from_shape(&[1, l], &tokens.attention_mask)?,
    ])
}

impl VlsmSession {
    /// Makes `prompt` the current prompt; encodes it unless cached. Returns the milliseconds
    /// spent encoding (0 on a cache hit). An empty prompt is refused unless `allow_empty`
    /// (the benchmark's P0 level, asked for explicitly).
    pub fn set_prompt(&mut self, prompt: &str, allow_empty: bool) -> Result<f64, ModelError> {
        if prompt.trim().is_empty() && !allow_empty {
            return Err(ModelError::Prompt(format!(
                "model `{}` needs a text prompt and the prompt is empty (give --prompt or --attributes; --prompt-type P0 asks for the empty prompt on purpose)",
                self.model.package.name()
            )));
        }
        self.current = Some(prompt.to_string());
        if self.cache.contains_key(prompt) {
            return Ok(0.0);
        }
        let start = Instant::now();
        let tokens = self.model.tokenizer.encode(prompt)?;
        let encoded = match &mut self.text {
            Some(text) => {
                let graph = text.graph().clone();
                let [ids, mask] = token_tensors(&tokens).map_err(tensor_err(&graph))?;
                let inputs = in_manifest_order(
                    &graph.spec().inputs,
                    vec![("input_ids", ids), ("attention_mask", mask)],
                    &graph,
                )?;
                let mut out = text.run(inputs)?;
                vec![out.swap_remove(0)]
            }
            None => {
                let graph = self.image.graph().clone();
                token_tensors(&tokens).map_err(tensor_err(&graph))?.to_vec()
            }
        };
        if self.cache.len() >= PROMPT_CACHE {
            self.cache.clear();
        }
        self.cache.insert(prompt.to_string(), encoded);
        Ok(start.elapsed().as_secs_f64() * 1e3)
    }

    /// Segments one frame with the current prompt.
    pub fn segment(&mut self, frame: &Frame) -> Result<FrameResult, ModelError> {
        let prompt = self
            .current
            .as_ref()
            .ok_or_else(|| ModelError::Prompt("no prompt set before segmenting".into()))?;
        let encoded = self
            .cache
            .get(prompt)
            .expect("set_prompt caches the current prompt");
        let mut timings = Timings::default();

        let t0 = Instant::now();
        let geometry = self.model.preprocessor.run(frame, &mut self.pixels);
        let graph = self.image.graph();
        let m = self.model.package.manifest();
        let [w, h] = m.input.size;
        let pixels = Tensor::from_shape(&[1, 3, h as usize, w as usize], &self.pixels)
            .map_err(tensor_err(graph))?;
        let named = match &self.text {
            Some(_) => vec![
                ("pixel_values", pixels),
                ("conditional_embeddings", encoded[0].clone()),
            ],
            None => vec![
                ("input_ids", encoded[0].clone()),
                ("attention_mask", encoded[1].clone()),
                ("pixel_values", pixels),
            ],
        };
        let inputs = in_manifest_order(&graph.spec().inputs, named, graph)?;
        timings.preprocess = ms(t0);

        let t1 = Instant::now();
        let outputs = self.image.run(inputs)?;
        timings.inference = ms(t1);

        let t2 = Instant::now();
        let graph = self.image.graph();
        let view = outputs[0].try_as_plain_ram().map_err(tensor_err(graph))?;
        let logits = view.as_slice::<f32>().map_err(tensor_err(graph))?;
        let segmentation = postprocess::segment(
            logits,
            w,
            h,
            1,
            m.output.activation,
            m.output.threshold,
            geometry,
            frame.width(),
            frame.height(),
        )
        .map_err(|e| ModelError::Run {
            path: graph.path().to_path_buf(),
            message: e.to_string(),
        })?;
        timings.postprocess = ms(t2);
        Ok(FrameResult {
            segmentation,
            timings,
        })
    }

    pub fn model(&self) -> &Vlsm {
        &self.model
    }
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}
