//! The tract CPU engine. A [`Graph`] is one ONNX file taken through tract's pipeline once:
//! parse → check the manifest contract (names, element types, fixed shapes) → type →
//! declutter → (f16 translation) → optimise → runnable plan. A [`Session`] is one stream's
//! reusable run state over that plan.
//!
//! **Threading.** tract runs a plan on the calling thread; its matrix products use more cores
//! only with `tract-linalg`'s `multithread-mm` feature *and* an executor in the run options.
//! We enable the feature and give each graph its own pool of `threads` workers when
//! `threads > 1`, so `--threads 1` is truly single-threaded (the honest baseline on a
//! one-core board) and `--threads N` is opt-in. Pools are per graph so two streams do not
//! contend on a global pool. A graph gets at most one thread per [`FMAS_PER_THREAD`]
//! multiply–adds: handing a small graph's many small products to a pool costs more wake-ups
//! than it saves (measured: the 26 M multiply–add CLIPSeg image graph took 4.1 ms on one
//! thread and 9.3 ms on two), so `--threads N` is a ceiling each graph fills as its size allows.
//!
//! **Recording.** For benchmarks, [`start_recording`] makes every [`Session::run`] on the
//! calling thread add its time to a per-graph histogram (with the graph's multiply–add count
//! and the inputs of its first run) until [`finish_recording`]; without it a run only checks a
//! thread-local flag.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::{DType, GraphSpec, ModelError, Precision, TensorSpec};
use crate::histogram::Histogram;

type Plan = Arc<TypedRunnableModel>;

/// Multiply–adds per run that earn a graph one more thread (see the module doc; measured on
/// this project's graphs with `edgeseg bench --threads 1,2`, docs/performance.md). 200 M until
/// the two-way splits of our operators ran on a spinning helper (`conv::helper`); since then
/// the SAM-3D graphs (156 M and 172 M) gain 1.3× from a second thread, the SAM encoder about
/// nothing, and smaller graphs lose.
pub const FMAS_PER_THREAD: u64 = 75_000_000;

/// The threads a graph of `fmas` multiply–adds runs on when `threads` are allowed.
pub fn graph_threads(threads: usize, fmas: u64) -> usize {
    let earned = usize::try_from(fmas / FMAS_PER_THREAD).unwrap_or(usize::MAX);
    threads.clamp(1, earned.max(1))
}

/// The runs of one graph at one precision while recording.
#[derive(Debug, Clone)]
pub struct GraphRuns {
    /// The graph (file, role, precision, multiply–adds, threads), to run again for profiling.
    pub graph: Graph,
    /// Time of each [`Session::run`], µs: input checks and casts, the plan, output casts.
    pub latency: Histogram,
    /// The inputs of the first recorded run, named, as the caller gave them (f32 for f16 plans).
    pub first_inputs: Vec<(String, Tensor)>,
}

/// The time one operator type takes in one run of a graph.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OpTime {
    pub op: String,
    pub ms: f64,
}

thread_local! {
    static RECORDING: RefCell<Option<Vec<GraphRuns>>> = const { RefCell::new(None) };
}

/// Starts recording graph runs on this thread (dropping any recording in progress).
pub fn start_recording() {
    RECORDING.set(Some(Vec::new()));
}

/// Stops recording on this thread; the graphs in the order they first ran.
pub fn finish_recording() -> Vec<GraphRuns> {
    RECORDING.take().unwrap_or_default()
}

/// Multiply–adds of one run of `model`, from tract's per-operator cost model.
fn count_fmas(model: &TypedModel) -> u64 {
    model
        .nodes()
        .iter()
        .filter_map(|node| {
            let facts = model.node_input_facts(node.id).ok()?;
            let costs = node.op.cost(&facts).ok()?;
            Some(
                costs
                    .iter()
                    .filter(|(c, _)| matches!(c, tract_core::ops::Cost::FMA(_)))
                    .filter_map(|(_, n)| n.to_i64().ok())
                    .map(|n| n.max(0) as u64)
                    .sum::<u64>(),
            )
        })
        .sum()
}

/// One optimised graph, ready to open sessions on.
#[derive(Debug, Clone)]
pub struct Graph {
    path: PathBuf,
    spec: GraphSpec,
    precision: Precision,
    fmas: u64,
    /// Threads the plan runs on.
    threads: usize,
    plan: Plan,
}

fn datum(dtype: DType) -> DatumType {
    match dtype {
        DType::F32 => f32::datum_type(),
        DType::F16 => f16::datum_type(),
        DType::I64 => i64::datum_type(),
        DType::I32 => i32::datum_type(),
        DType::U8 => u8::datum_type(),
        DType::I8 => i8::datum_type(),
        DType::Bool => bool::datum_type(),
    }
}

fn shape_text(dims: &[String]) -> String {
    format!("[{}]", dims.join(","))
}

fn spec_shape(spec: &TensorSpec) -> String {
    shape_text(&spec.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>())
}

impl Graph {
    /// Loads ONNX bytes read from `path` (already hash-checked), checks them against `spec`,
    /// and prepares a plan for `precision` on `threads` threads.
    pub fn load(
        bytes: &[u8],
        path: &Path,
        spec: &GraphSpec,
        precision: Precision,
        threads: usize,
    ) -> Result<Graph, ModelError> {
        let contract = |message: String| ModelError::Contract {
            path: path.to_path_buf(),
            message,
        };
        let onnx_err = |e: anyhow::Error| ModelError::Onnx {
            path: path.to_path_buf(),
            message: format!("{e:#}").replace('\n', " "),
        };
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .map_err(onnx_err)?;

        // Inputs: same names as the manifest, then the manifest's types and fixed shapes.
        let found: Vec<String> = model
            .input_outlets()
            .map_err(onnx_err)?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let expected: Vec<&str> = spec.inputs.iter().map(|t| t.name.as_str()).collect();
        let mut sorted_found: Vec<&str> = found.iter().map(String::as_str).collect();
        let mut sorted_expected = expected.clone();
        sorted_found.sort_unstable();
        sorted_expected.sort_unstable();
        if sorted_found != sorted_expected {
            return Err(contract(format!(
                "graph inputs are {found:?}, manifest expects {expected:?}"
            )));
        }
        model.set_input_names(&expected).map_err(onnx_err)?;
        for (ix, t) in spec.inputs.iter().enumerate() {
            let declared = model.input_fact(ix).map_err(onnx_err)?.clone();
            if let Some(dt) = declared.datum_type.concretize() {
                if dt != datum(t.dtype) {
                    return Err(contract(format!(
                        "input `{}` expects {} (manifest), model file gives {dt:?}",
                        t.name,
                        t.dtype.as_str()
                    )));
                }
            }
            let dims: Vec<String> = declared
                .shape
                .dims()
                .map(|d| {
                    d.concretize()
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| "?".into())
                })
                .collect();
            let rank_differs = !declared.shape.is_open() && dims.len() != t.shape.len();
            let dim_differs = dims
                .iter()
                .zip(&t.shape)
                .any(|(d, m)| d.parse::<usize>().is_ok_and(|d| d != *m));
            if rank_differs || dim_differs {
                return Err(contract(format!(
                    "input `{}` expects {} (manifest), model file gives {}",
                    t.name,
                    spec_shape(t),
                    shape_text(&dims)
                )));
            }
            model
                .set_input_fact(ix, InferenceFact::dt_shape(datum(t.dtype), t.shape.clone()))
                .map_err(onnx_err)?;
        }

        // Outputs: the manifest's names, in its order.
        let out_names: Vec<&str> = spec.outputs.iter().map(|t| t.name.as_str()).collect();
        model.select_outputs_by_name(&out_names).map_err(|e| {
            contract(format!(
                "outputs {out_names:?} (manifest) not all found in the graph: {e}"
            ))
        })?;

        let typed = model.into_typed().map_err(|e| {
            contract(format!(
                "cannot type the graph with the manifest's input shapes: {}",
                one_line(&e)
            ))
        })?;
        for (ix, t) in spec.outputs.iter().enumerate() {
            let fact = typed.output_fact(ix).map_err(onnx_err)?;
            let dims: Vec<String> = fact.shape.iter().map(|d| d.to_string()).collect();
            let same_shape = fact.shape.as_concrete() == Some(&t.shape[..]);
            if fact.datum_type != datum(t.dtype) || !same_shape {
                return Err(contract(format!(
                    "output `{}` expects {} {} (manifest), model gives {:?} {}",
                    t.name,
                    t.dtype.as_str(),
                    spec_shape(t),
                    fact.datum_type,
                    shape_text(&dims)
                )));
            }
        }

        let mut typed = typed.into_decluttered().map_err(onnx_err)?;
        let fmas = count_fmas(&typed);
        if precision == Precision::F16 {
            let translate = tract_core::transform::get_transform("f32_to_f16")
                .map_err(onnx_err)?
                .ok_or_else(|| onnx_err(anyhow::anyhow!("tract lacks the f32_to_f16 transform")))?;
            translate.transform(&mut typed).map_err(onnx_err)?;
        }
        super::conv::replace(&mut typed).map_err(onnx_err)?;
        super::pool::replace(&mut typed).map_err(onnx_err)?;
        super::norm::replace(&mut typed).map_err(onnx_err)?;
        super::depthwise::replace(&mut typed).map_err(onnx_err)?;
        let mut optimized = typed.into_optimized().map_err(onnx_err)?;
        super::softmax::replace(&mut optimized).map_err(onnx_err)?;
        super::broadcast::replace(&mut optimized).map_err(onnx_err)?;
        super::quantize::replace(&mut optimized).map_err(onnx_err)?;
        super::quantize::fuse_dequantize(&mut optimized).map_err(onnx_err)?;
        let threads = graph_threads(threads, fmas);
        let options = RunOptions {
            executor: (threads > 1)
                .then(|| tract_linalg::multithread::Executor::multithread(threads)),
            ..RunOptions::default()
        };
        let plan = optimized
            .into_runnable_with_options(&options)
            .map_err(onnx_err)?;
        Ok(Graph {
            path: path.to_path_buf(),
            spec: spec.clone(),
            precision,
            fmas,
            threads,
            plan,
        })
    }

    pub fn spec(&self) -> &GraphSpec {
        &self.spec
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Multiply–adds of one run.
    pub fn fmas(&self) -> u64 {
        self.fmas
    }

    /// Threads the plan runs on ([`graph_threads`] of what was asked).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The same file at the same precision (what recording keys its histograms by).
    fn same_as(&self, other: &Graph) -> bool {
        self.path == other.path && self.precision == other.precision
    }

    /// A run state for one stream; reuse it for every frame of that stream.
    pub fn session(&self) -> Result<Session, ModelError> {
        let state = TypedSimpleState::new(&self.plan).map_err(|e| self.run_err(e))?;
        Ok(Session {
            graph: self.clone(),
            state,
        })
    }

    fn run_err(&self, e: anyhow::Error) -> ModelError {
        self.error(one_line(&e))
    }

    /// A run error naming this graph's file.
    pub fn error(&self, message: impl std::fmt::Display) -> ModelError {
        ModelError::Run {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    /// Orders named tensors as the manifest lists this graph's inputs; an input the caller
    /// does not provide is a contract error naming it.
    pub fn order_inputs(&self, named: Vec<(&str, Tensor)>) -> Result<Vec<Tensor>, ModelError> {
        let mut named: std::collections::HashMap<&str, Tensor> = named.into_iter().collect();
        self.spec
            .inputs
            .iter()
            .map(|s| {
                named
                    .remove(s.name.as_str())
                    .ok_or_else(|| ModelError::Contract {
                        path: self.path.clone(),
                        message: format!(
                            "the graph takes input `{}`, which this model family does not provide",
                            s.name
                        ),
                    })
            })
            .collect()
    }

    /// The manifest shape of the input or output called `name`.
    pub fn shape_of(&self, name: &str) -> Result<&[usize], ModelError> {
        self.spec
            .inputs
            .iter()
            .chain(&self.spec.outputs)
            .find(|t| t.name == name)
            .map(|t| t.shape.as_slice())
            .ok_or_else(|| ModelError::Contract {
                path: self.path.clone(),
                message: format!(
                    "the graph has no tensor `{name}` (inputs {:?}, outputs {:?})",
                    self.spec.inputs.iter().map(|t| &t.name).collect::<Vec<_>>(),
                    self.spec
                        .outputs
                        .iter()
                        .map(|t| &t.name)
                        .collect::<Vec<_>>()
                ),
            })
    }

    /// A tensor of `shape` from `data`, or a run error naming this graph.
    pub fn tensor<T: Datum + Copy>(
        &self,
        shape: &[usize],
        data: &[T],
    ) -> Result<Tensor, ModelError> {
        Tensor::from_shape(shape, data).map_err(|e| self.run_err(e))
    }

    /// The f32 values of an output tensor.
    pub fn values<'t>(&self, tensor: &'t Tensor) -> Result<&'t [f32], ModelError> {
        tensor
            .try_as_plain_ram()
            .and_then(|v| v.as_slice::<f32>())
            .map_err(|e| self.run_err(e))
    }
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

/// One stream's run state over a [`Graph`].
pub struct Session {
    graph: Graph,
    state: TypedSimpleState,
}

impl Session {
    /// Runs the graph on inputs in manifest order. Inputs are checked against the manifest
    /// (type and shape) first; float inputs are cast to the plan's float type (f16 plans take
    /// f32 data) and float outputs come back as f32. Recorded when recording is on.
    pub fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        // None: not recording; Some(true): the first recorded run of this graph.
        let first = RECORDING.with_borrow(|r| {
            r.as_ref()
                .map(|runs| !runs.iter().any(|g| g.graph.same_as(&self.graph)))
        });
        let Some(first) = first else {
            return self.run_plan(inputs);
        };
        let named: Vec<(String, Tensor)> = if first {
            let names = self.graph.spec.inputs.iter().map(|t| t.name.clone());
            names.zip(inputs.iter().cloned()).collect()
        } else {
            Vec::new()
        };
        let start = Instant::now();
        let outputs = self.run_plan(inputs)?;
        let micros = start.elapsed().as_micros() as u64;
        let graph = &self.graph;
        RECORDING.with_borrow_mut(|r| {
            let Some(runs) = r else { return };
            if first {
                runs.push(GraphRuns {
                    graph: graph.clone(),
                    latency: Histogram::default(),
                    first_inputs: named,
                });
            }
            if let Some(g) = runs.iter_mut().find(|g| g.graph.same_as(graph)) {
                g.latency.record(micros);
            }
        });
        Ok(outputs)
    }

    fn run_plan(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        crate::alloc::keep_from_now();
        let values = self.plan_inputs(inputs)?;
        let graph = &self.graph;
        let outputs = self.state.run(values).map_err(|e| graph.run_err(e))?;
        outputs
            .into_iter()
            .map(|v| {
                let t = v.into_tensor();
                if t.datum_type() == f16::datum_type() {
                    Ok(t.cast_to::<f32>()
                        .map_err(|e| graph.run_err(e))?
                        .into_owned())
                } else {
                    Ok(t)
                }
            })
            .collect()
    }

    /// Time per operator type over `runs` runs on `inputs` (given as to [`Session::run`]),
    /// largest first: where a graph's time goes, in tract's optimised form.
    pub fn profile_ops(
        &mut self,
        inputs: &[Tensor],
        runs: usize,
    ) -> Result<Vec<OpTime>, ModelError> {
        let mut times: Vec<OpTime> = Vec::new();
        for _ in 0..runs.max(1) {
            let values = self.plan_inputs(inputs.to_vec())?;
            let mut per_node = Vec::new();
            self.state
                .run_plan_with_eval(values, |ctx, state, node, input| {
                    let start = Instant::now();
                    let out = tract_core::plan::eval(ctx, state, node, input);
                    per_node.push((node.op().name(), start.elapsed()));
                    out
                })
                .map_err(|e| self.graph.run_err(e))?;
            for (op, elapsed) in per_node {
                let ms = elapsed.as_secs_f64() * 1e3 / runs.max(1) as f64;
                match times.iter_mut().find(|t| t.op == op) {
                    Some(t) => t.ms += ms,
                    None => times.push(OpTime {
                        op: op.into_owned(),
                        ms,
                    }),
                }
            }
        }
        times.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(times)
    }

    /// Checks inputs against the manifest and casts floats to the plan's type.
    fn plan_inputs(&self, inputs: Vec<Tensor>) -> Result<TVec<TValue>, ModelError> {
        let graph = &self.graph;
        if inputs.len() != graph.spec.inputs.len() {
            return Err(graph.run_err(anyhow::anyhow!(
                "{} inputs given, graph takes {}",
                inputs.len(),
                graph.spec.inputs.len()
            )));
        }
        let mut values = TVec::new();
        for (ix, (tensor, t)) in inputs.into_iter().zip(&graph.spec.inputs).enumerate() {
            if tensor.shape() != t.shape.as_slice() || tensor.datum_type() != datum(t.dtype) {
                return Err(graph.run_err(anyhow::anyhow!(
                    "input `{}` expects {} {}, got {:?} {:?}",
                    t.name,
                    t.dtype.as_str(),
                    spec_shape(t),
                    tensor.datum_type(),
                    tensor.shape()
                )));
            }
            let want = graph
                .plan
                .model()
                .input_fact(ix)
                .map_err(|e| graph.run_err(e))?
                .datum_type;
            let tensor = if want != tensor.datum_type() {
                tensor
                    .cast_to_dt(want)
                    .map_err(|e| graph.run_err(e))?
                    .into_owned()
            } else {
                tensor
            };
            values.push(tensor.into_tvalue());
        }
        Ok(values)
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_graphs_take_fewer_threads_than_allowed() {
        assert_eq!(graph_threads(1, 10 * FMAS_PER_THREAD), 1);
        assert_eq!(graph_threads(4, FMAS_PER_THREAD / 10), 1);
        assert_eq!(graph_threads(4, FMAS_PER_THREAD * 2 + 1), 2);
        assert_eq!(graph_threads(2, FMAS_PER_THREAD * 9), 2);
        assert_eq!(graph_threads(0, 0), 1);
    }
}
