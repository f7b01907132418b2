//! The VLSM family (CLIPSeg architecture): image + text prompt → mask. Two package forms:
//! **split** (`text` graph: tokens → `conditional_embeddings`; `image` graph: `pixel_values` +
//! embeddings → `logits`), where a prompt is encoded once and cached so each frame runs only
//! the image graph; and **joint** (the Hugging Face single graph: tokens + `pixel_values` →
//! `logits`), where only the tokens are cached and every frame runs the whole model.
//!
//! **Adapters** (VLSM-Adapter): a split package whose graphs take extra `adapter.*` inputs
//! serves one frozen base and several small task adapters, each a file of those tensors listed
//! as an `[[adapter]]` in the manifest. All adapters are read (hash-checked) at load; switching
//! task swaps the tensors fed to the same optimised plans, and re-encodes the current prompt
//! when the text graph is adapted too. The first listed adapter is active after load.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use tract_onnx::prelude::Tensor;

use super::manifest::ADAPTER_PREFIX;
use super::{elapsed_ms as ms, Family, Graph, ModelError, Package, Precision, Session};
use crate::frame::Frame;
use crate::output::Timings;
use crate::postprocess::{self, Segmentation};
use crate::preprocess::Preprocessor;
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
    /// Adapter name → its tensors by input name, in manifest order (empty without adapters).
    adapters: Vec<Adapter>,
}

/// A named adapter: its tensors by graph input name, shared by every session.
type Adapter = (String, Arc<HashMap<String, Tensor>>);

/// What one frame produced.
#[derive(Debug, Clone)]
pub struct FrameResult {
    pub segmentation: Segmentation,
    /// The class of every frame pixel, for models with three or more classes.
    pub labels: Option<Vec<u8>>,
    pub timings: Timings,
}

impl Vlsm {
    /// Loads and optimises the package's graphs for `precision` on `threads` threads.
    pub fn load(
        package: Package,
        precision: Precision,
        threads: usize,
    ) -> Result<Vlsm, ModelError> {
        package.require(Family::Vlsm)?;
        let m = package.manifest();
        let prompt = m
            .prompt
            .as_ref()
            .expect("vlsm manifests have [prompt] (checked at parse)");
        // The tokenizer loads on another thread while the graphs are optimised (each on its
        // own): on a multi-core board that takes most of the tokenizer's load off the start.
        let (tokenizer, form) = std::thread::scope(|scope| {
            let tokenizer = scope.spawn(|| {
                ClipTokenizer::from_file(&package.path(&prompt.tokenizer), prompt.context_length)
            });
            let form = if m.graphs.iter().any(|g| g.role == "joint") {
                package
                    .load_graph("joint", precision, threads)
                    .map(Form::Joint)
            } else {
                package
                    .load_graphs(["text", "image"], precision, threads)
                    .map(|[text, image]| Form::Split { text, image })
            };
            let tokenizer = tokenizer
                .join()
                .expect("the tokenizer loader does not panic");
            (tokenizer, form)
        });
        let (tokenizer, form) = (tokenizer?, form?);
        let preprocessor = package.preprocessor()?;
        let graphs: Vec<&Graph> = match &form {
            Form::Split { text, image } => vec![text, image],
            Form::Joint(joint) => vec![joint],
        };
        let adapters = read_adapters(&package, &graphs)?;
        Ok(Vlsm {
            package,
            precision,
            tokenizer,
            form,
            preprocessor,
            adapters,
        })
    }

    /// Names of the package's adapters, in manifest order (empty for an unadapted package).
    pub fn adapters(&self) -> Vec<&str> {
        self.adapters.iter().map(|(n, _)| n.as_str()).collect()
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
            adapter: self.adapters.first().cloned(),
        })
    }
}

/// Reads every `[[adapter]]` file and splits it into the graphs' `adapter.*` inputs: the
/// concatenation, in lexicographic order of the input names, of each tensor as f32
/// little-endian with the shape the graphs declare.
fn read_adapters(package: &Package, graphs: &[&Graph]) -> Result<Vec<Adapter>, ModelError> {
    let m = package.manifest();
    let manifest_err = |message: String| ModelError::Manifest {
        path: package.path(super::package::MANIFEST),
        message,
    };
    let mut inputs: BTreeMap<&str, &[usize]> = BTreeMap::new();
    for g in graphs {
        for t in g
            .spec()
            .inputs
            .iter()
            .filter(|t| t.name.starts_with(ADAPTER_PREFIX))
        {
            if let Some(shape) = inputs.insert(&t.name, &t.shape) {
                if shape != t.shape.as_slice() {
                    return Err(manifest_err(format!(
                        "adapter input `{}` has shapes {shape:?} and {:?} in different graphs",
                        t.name, t.shape
                    )));
                }
            }
        }
    }
    match (inputs.is_empty(), m.adapters.is_empty()) {
        (true, true) => return Ok(Vec::new()),
        (false, true) => {
            return Err(manifest_err(format!(
                "the graphs take adapter inputs {:?} but no [[adapter]] is listed",
                inputs.keys().collect::<Vec<_>>()
            )))
        }
        (true, false) => {
            return Err(manifest_err(
                "[[adapter]] entries are listed but no graph takes `adapter.*` inputs".into(),
            ))
        }
        (false, false) => {}
    }
    let expected: usize = inputs.values().map(|s| s.iter().product::<usize>()).sum();
    m.adapters
        .iter()
        .map(|a| {
            let bytes = package.read_checked(&a.file, &a.sha256)?;
            if bytes.len() != expected * 4 {
                return Err(ModelError::Contract {
                    path: package.path(&a.file),
                    message: format!(
                        "adapter `{}` holds {} bytes, the graphs' adapter inputs need {} ({expected} f32 values)",
                        a.name,
                        bytes.len(),
                        expected * 4
                    ),
                });
            }
            let mut values = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            let mut tensors = HashMap::new();
            for (name, shape) in &inputs {
                let data: Vec<f32> = values.by_ref().take(shape.iter().product()).collect();
                let tensor = Tensor::from_shape(shape, &data).map_err(|e| ModelError::Contract {
                    path: package.path(&a.file),
                    message: format!("adapter `{}` input `{name}`: {e}", a.name),
                })?;
                tensors.insert(name.to_string(), tensor);
            }
            Ok((a.name.clone(), Arc::new(tensors)))
        })
        .collect()
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
    /// The active adapter, if the package has adapters.
    adapter: Option<Adapter>,
}

fn token_tensors(graph: &Graph, tokens: &TokenizedPrompt) -> Result<[Tensor; 2], ModelError> {
    let l = tokens.input_ids.len();
    Ok([
        graph.tensor(&[1, l], &tokens.input_ids)?,
        graph.tensor(&[1, l], &tokens.attention_mask)?,
    ])
}

/// The active adapter's tensors that `graph` takes, by input name.
fn adapter_inputs<'a>(graph: &Graph, adapter: &'a Option<Adapter>) -> Vec<(&'a str, Tensor)> {
    let Some((_, tensors)) = adapter else {
        return Vec::new();
    };
    tensors
        .iter()
        .filter(|(name, _)| graph.spec().inputs.iter().any(|t| &t.name == *name))
        .map(|(name, t)| (name.as_str(), t.clone()))
        .collect()
}

impl VlsmSession {
    /// Makes the adapter called `name` active; returns the milliseconds the switch took,
    /// including re-encoding the current prompt when the text graph is adapted (0 when it is
    /// already active).
    pub fn set_adapter(&mut self, name: &str) -> Result<f64, ModelError> {
        let start = Instant::now();
        if self.adapter() == Some(name) {
            return Ok(0.0);
        }
        let adapters = &self.model.adapters;
        let found = adapters.iter().find(|(n, _)| n == name).ok_or_else(|| {
            let known: Vec<&str> = adapters.iter().map(|(n, _)| n.as_str()).collect();
            ModelError::Prompt(if known.is_empty() {
                format!("model `{}` has no adapters", self.model.package.name())
            } else {
                format!(
                    "unknown adapter `{name}` for model `{}` (known: {})",
                    self.model.package.name(),
                    known.join(", ")
                )
            })
        })?;
        self.adapter = Some(found.clone());
        let text_adapted = self
            .text
            .as_ref()
            .is_some_and(|t| !adapter_inputs(t.graph(), &self.adapter).is_empty());
        if text_adapted {
            self.cache.clear();
            if let Some(prompt) = self.current.clone() {
                self.set_prompt(&prompt, true)?;
            }
        }
        Ok(ms(start))
    }

    /// The current prompt.
    pub fn prompt(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// The active adapter's name.
    pub fn adapter(&self) -> Option<&str> {
        self.adapter.as_ref().map(|(n, _)| n.as_str())
    }

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
                let graph = text.graph();
                let [ids, mask] = token_tensors(graph, &tokens)?;
                let mut named = vec![("input_ids", ids), ("attention_mask", mask)];
                named.extend(adapter_inputs(graph, &self.adapter));
                let inputs = graph.order_inputs(named)?;
                let mut out = text.run(inputs)?;
                vec![out.swap_remove(0)]
            }
            None => token_tensors(self.image.graph(), &tokens)?.to_vec(),
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
        let [w, h] = m.input().size;
        let pixels = graph.tensor(&[1, 3, h as usize, w as usize], &self.pixels)?;
        let mut named = match &self.text {
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
        named.extend(adapter_inputs(graph, &self.adapter));
        let inputs = graph.order_inputs(named)?;
        timings.preprocess = ms(t0);

        let t1 = Instant::now();
        let outputs = self.image.run(inputs)?;
        timings.inference = ms(t1);

        let t2 = Instant::now();
        let graph = self.image.graph();
        let logits = graph.values(&outputs[0])?;
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
        .map_err(|e| graph.error(e))?;
        timings.postprocess = ms(t2);
        Ok(FrameResult {
            segmentation,
            labels: None,
            timings,
        })
    }

    pub fn model(&self) -> &Vlsm {
        &self.model
    }
}
