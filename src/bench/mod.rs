//! `edgeseg bench`: the field latency instrument.
//!
//! For each model × precision × thread count of a sweep it loads the model (timed), runs a
//! first frame (timed: lazy allocations land there), then `warmup` frames it does not count,
//! then `frames` frames in a closed loop through the same per-frame path as the live loop
//! ([`Stages`]: region of interest → model → smoothing), plus the serial link's framing of the
//! mask. Each stage, the end-to-end time and every graph run are recorded in histograms
//! ([`crate::histogram`]), so percentiles come from all samples, never from averages.
//!
//! - Frames are captured from the source once, before the loop (at most [`CAPTURE`] of them,
//!   cycled), so capture and decode time are not in the figures; a live run with capture is
//!   `edgeseg run`. Volume models (sam3d) segment one volume per iteration instead.
//! - The bench also measures CPU time per frame and the peak resident set of each run
//!   ([`resources`]), and can dump each graph's first inputs so another runtime can be timed on
//!   exactly the same tensors (`benches/reference/`).
//! - [`live`] measures a device profile's live loop instead (`--live`): frames at the source's
//!   rate through the mailbox and the real sinks.
//! - [`report`] turns the runs into the comparison table, JSON and CSV; [`svg`] draws them.

pub mod live;
pub mod report;
pub mod resources;
pub mod svg;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context;
use tract_onnx::prelude::Tensor;

use crate::frame::{Frame, Mask};
use crate::histogram::Histogram;
use crate::live::Stages;
use crate::model::{engine, Click, Family, FrameModel, Package, Precision, Request, Sam3d};
use crate::protocol::{self, Message};
use crate::roi::{Roi, RoiConfig};
use crate::serial::{self, Encoding};
use crate::smoothing::{Smoother, SmoothingConfig};
use crate::source::{self, SourceConfig};
use crate::volume::segment::Click as VolumeClick;
use crate::volume::{self, LoadOptions, Volume};

pub use report::{GraphReport, Machine, Report, Run};

/// The most distinct frames captured for a run; the loop cycles through them.
pub const CAPTURE: usize = 30;

/// The line rate the serial framing is sized for (the demo profile's).
const SERIAL_BAUD: u32 = 921_600;

/// The prompt a VLSM is benchmarked with when none is given (prompt encoding is cached, so its
/// words do not change the per-frame time).
pub const DEFAULT_PROMPT: &str = "lesion";

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Model package folders.
    pub models: Vec<PathBuf>,
    pub precisions: Vec<Precision>,
    pub threads: Vec<usize>,
    /// Timed frames (or volumes) per run.
    pub frames: usize,
    /// Untimed frames after the first one.
    pub warmup: usize,
    /// Where frames come from (frame models).
    pub source: SourceConfig,
    /// The volume sam3d models segment.
    pub volume: Option<PathBuf>,
    pub volume_options: LoadOptions,
    /// sam3d clicks in voxels (default: one at the volume's centre).
    pub volume_clicks: Vec<VolumeClick>,
    /// Write each graph's first inputs here (per model: `<file stem>-<precision>.toml` + .bin).
    pub dump_inputs: Option<PathBuf>,
    /// After the timed frames, run each graph [`PROFILE_RUNS`] more times on its first inputs,
    /// timing each operator (where a graph's time goes).
    pub profile_ops: bool,
}

/// Runs per graph when profiling operators.
pub const PROFILE_RUNS: usize = 10;

/// What the bench reports while it runs.
pub enum Progress<'a> {
    /// A run starts: its label and the number of frames it will time.
    Start(&'a str, usize),
    /// Timed frames done so far.
    Frame(usize),
    /// The run ended.
    Done(&'a Run),
    /// A configuration left out of the sweep, and why.
    Skipped(String),
}

/// Runs the sweep. `request` gives the request for each frame-model package (what to segment);
/// the bench fills what a family needs and the request leaves out: a VLSM prompt
/// ([`DEFAULT_PROMPT`]), a SAM click at the frame centre, a conditioned model's first task and
/// modality. A run whose model fails to load or whose every frame fails stops the sweep with
/// its error; single failed frames are counted in the run.
pub fn run(
    options: &Options,
    request: &dyn Fn(&Package) -> anyhow::Result<Request>,
    progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut frames: Option<Vec<Frame>> = None;
    let mut volume: Option<Volume> = None;
    let mut runs = Vec::new();
    for dir in &options.models {
        let package = Package::open(dir)?;
        let family = package.manifest().family;
        let served = package.manifest().precisions();
        for &precision in &options.precisions {
            if !served.contains(&precision) {
                progress(Progress::Skipped(format!(
                    "{} does not serve {precision} (it serves {})",
                    package.name(),
                    served
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
                continue;
            }
            for &threads in &options.threads {
                let config = Config {
                    package: &package,
                    precision,
                    threads: threads.max(1),
                };
                let run = if family == Family::Sam3d {
                    if volume.is_none() {
                        volume = Some(load_volume(options)?);
                    }
                    let volume = volume.as_ref().expect("loaded above");
                    run_volume(options, &config, volume, progress)?
                } else {
                    if frames.is_none() {
                        frames = Some(capture(&options.source)?);
                    }
                    let frames = frames.as_deref().expect("captured above");
                    let request = fill_request(request(&package)?, &package, &frames[0]);
                    run_frames(options, &config, &request, frames, progress)?
                };
                progress(Progress::Done(&run));
                runs.push(run);
            }
        }
    }
    Ok(Report::new(runs, started))
}

/// One point of the sweep.
struct Config<'a> {
    package: &'a Package,
    precision: Precision,
    threads: usize,
}

impl Config<'_> {
    fn label(&self) -> String {
        format!(
            "{} {} {}t",
            self.package.name(),
            self.precision,
            self.threads
        )
    }

    /// A run with the parts every family fills the same way.
    fn run(&self, source: String, frames: usize, warmup: usize) -> Run {
        Run {
            model: self.package.name().to_string(),
            dir: self.package.dir().display().to_string(),
            family: self.package.manifest().family.as_str().to_string(),
            precision: self.precision.to_string(),
            threads: self.threads,
            source,
            frames,
            warmup,
            ..Run::default()
        }
    }
}

/// Up to [`CAPTURE`] frames from the source. A frame the source fails on (a corrupt file in a
/// folder) is reported and skipped, as in the live loop; more failures than [`CAPTURE`] end
/// the capture with the last one.
fn capture(config: &SourceConfig) -> anyhow::Result<Vec<Frame>> {
    let mut source = source::open(config)?;
    let stop = AtomicBool::new(false);
    let mut frames = Vec::new();
    let mut errors = 0;
    while frames.len() < CAPTURE {
        match source.next_frame(&stop) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => break,
            Err(e) if errors < CAPTURE => {
                errors += 1;
                log::warn!("{}: {e} (skipped)", source.describe());
            }
            Err(e) => return Err(e).context(source.describe()),
        }
    }
    anyhow::ensure!(!frames.is_empty(), "{}: no frames", source.describe());
    Ok(frames)
}

/// `request` with what the family needs and the request leaves out.
fn fill_request(mut request: Request, package: &Package, first: &Frame) -> Request {
    let manifest = package.manifest();
    match manifest.family {
        Family::Vlsm if request.prompt.is_none() => {
            request.prompt = Some(DEFAULT_PROMPT.to_string());
        }
        Family::Sam if request.sam.clicks.is_empty() && request.sam.bbox.is_none() => {
            request.sam.clicks.push(Click {
                x: f64::from(first.width()) / 2.0,
                y: f64::from(first.height()) / 2.0,
                positive: true,
            });
        }
        Family::Conditioned => {
            if let Some(tables) = &manifest.conditioning {
                let first_key =
                    |t: &std::collections::BTreeMap<String, i64>| t.keys().next().cloned();
                request.task = request.task.or_else(|| first_key(&tables.tasks));
                request.modality = request.modality.or_else(|| first_key(&tables.modalities));
            }
        }
        _ => {}
    }
    request
}

/// The serial link's message for a mask, as the serial sink frames it at 30 fps.
fn serial_frame(seq: u64, mask: &Mask) -> Vec<u8> {
    let budget = serial::frame_budget(SERIAL_BAUD, 30.0);
    protocol::encode(&Message {
        seq: seq as u32,
        capture_us: 0,
        width: mask.width() as u16,
        height: mask.height() as u16,
        flags: 0,
        payload: serial::mask_payload(mask, Encoding::Auto, budget),
    })
}

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

/// Per-stage histograms of a run, in the order the table shows them.
#[derive(Default)]
struct Stats {
    stages: Vec<(&'static str, Histogram)>,
}

impl Stats {
    fn record(&mut self, stage: &'static str, micros: u64) {
        match self.stages.iter_mut().find(|(s, _)| *s == stage) {
            Some((_, h)) => h.record(micros),
            None => {
                let mut h = Histogram::default();
                h.record(micros);
                self.stages.push((stage, h));
            }
        }
    }

    fn end_to_end(&self) -> Option<&Histogram> {
        self.stages
            .iter()
            .find(|(s, _)| *s == "end_to_end")
            .map(|(_, h)| h)
    }
}

/// The timed part of a run, shared by frame and volume runs: warm-up, then `frames` calls of
/// `step` (which records its stages, or fails for that frame), with CPU time, peak memory and
/// graph runs recorded around them. A failed frame, warm-up or timed, is counted in `failed`
/// and the run goes on; a run whose every timed frame failed is an error.
fn timed(
    options: &Options,
    run: &mut Run,
    progress: &mut dyn FnMut(Progress),
    mut step: impl FnMut(usize, &mut Stats) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut last_error = None;
    let mut scratch = Stats::default();
    for i in 0..options.warmup {
        if let Err(e) = step(i + 1, &mut scratch) {
            run.failed += 1;
            last_error = Some(format!("{e:#}"));
        }
    }
    let mut stats = Stats::default();
    let cpu = resources::cpu_time();
    engine::start_recording();
    let start = Instant::now();
    let mut timed_failed = 0;
    for i in 0..options.frames {
        if let Err(e) = step(options.warmup + 1 + i, &mut stats) {
            timed_failed += 1;
            last_error = Some(format!("{e:#}"));
        }
        progress(Progress::Frame(i + 1));
    }
    let wall = start.elapsed().as_secs_f64();
    let graphs = engine::finish_recording();
    run.failed += timed_failed;
    let done = options.frames as u64 - timed_failed;
    if done == 0 {
        return Err(anyhow::anyhow!(
            "{}: every frame failed: {}",
            run.model,
            last_error.unwrap_or_default()
        ));
    }
    run.last_error = last_error;
    run.throughput_fps = done as f64 / wall;
    run.cpu_ms_per_frame = (resources::cpu_time() - cpu).as_secs_f64() * 1e3 / done as f64;
    run.peak_rss_mib = resources::peak_rss_mib();
    run.stages = stats
        .stages
        .iter()
        .map(|(s, h)| (s.to_string(), h.percentiles()))
        .collect();
    run.end_to_end_cdf = stats.end_to_end().map(Histogram::cdf).unwrap_or_default();
    let dump = options.dump_inputs.as_ref().map(|d| d.join(&run.model));
    for g in graphs {
        let inputs = match &dump {
            Some(dir) => Some(dump_inputs(dir, &g)?),
            None => None,
        };
        let mut report = GraphReport::new(&g, inputs);
        if options.profile_ops {
            let inputs: Vec<Tensor> = g.first_inputs.iter().map(|(_, t)| t.clone()).collect();
            report.ops = g.graph.session()?.profile_ops(&inputs, PROFILE_RUNS)?;
        }
        run.graphs.push(report);
    }
    Ok(())
}

/// One frame-model run.
fn run_frames(
    options: &Options,
    config: &Config,
    request: &Request,
    frames: &[Frame],
    progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<Run> {
    let first = &frames[0];
    let mut run = config.run(
        format!(
            "{} ({} frames of {}x{})",
            source_name(&options.source),
            frames.len(),
            first.width(),
            first.height()
        ),
        options.frames,
        options.warmup,
    );
    let label = config.label();
    resources::reset_peak_rss();
    let start = Instant::now();
    let model = FrameModel::open(
        config.package.clone(),
        config.precision,
        config.threads,
        request,
    )?;
    run.load_ms = start.elapsed().as_secs_f64() * 1e3;
    run.label = model.label().to_string();
    let mut stages = Stages::new(
        Roi::new(&RoiConfig::default())?,
        Box::new(model),
        Smoother::new(&SmoothingConfig::default())?,
    );
    let start = Instant::now();
    let processed = stages.process(first)?;
    std::hint::black_box(serial_frame(0, &processed.mask));
    run.first_frame_ms = start.elapsed().as_secs_f64() * 1e3;

    progress(Progress::Start(&label, options.frames));
    timed(options, &mut run, progress, |i, stats| {
        let frame = &frames[i % frames.len()];
        let start = Instant::now();
        let processed = stages.process(frame)?;
        let encode = Instant::now();
        std::hint::black_box(serial_frame(i as u64, &processed.mask));
        let encode_us = micros(encode);
        let end_to_end = micros(start);
        let m = processed.micros;
        stats.record("preprocess", m.preprocess);
        stats.record("inference", m.inference);
        stats.record("postprocess", m.postprocess);
        stats.record("encode", encode_us);
        stats.record("end_to_end", end_to_end);
        stats.record("overhead", end_to_end.saturating_sub(m.inference));
        Ok(())
    })?;
    Ok(run)
}

fn load_volume(options: &Options) -> anyhow::Result<Volume> {
    let path = options
        .volume
        .as_deref()
        .context("a volume model (sam3d) needs --volume FILE (a NIfTI file or DICOM series)")?;
    Ok(volume::load(path, &options.volume_options)?)
}

/// One volume-model run: each iteration segments the whole volume.
fn run_volume(
    options: &Options,
    config: &Config,
    volume: &Volume,
    progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<Run> {
    let dims = volume.dims();
    let clicks = if options.volume_clicks.is_empty() {
        vec![VolumeClick {
            pos: dims.map(|d| (d as f64 - 1.0) / 2.0),
            positive: true,
        }]
    } else {
        options.volume_clicks.clone()
    };
    let path = options.volume.as_deref().unwrap_or(Path::new(""));
    let mut run = config.run(
        format!("{} ({}x{}x{})", path.display(), dims[0], dims[1], dims[2]),
        options.frames,
        options.warmup,
    );
    run.label = format!("{} click(s)", clicks.len());
    let label = config.label();
    resources::reset_peak_rss();
    let start = Instant::now();
    let model = Sam3d::load(config.package.clone(), config.precision, config.threads)?;
    let mut session = model.session()?;
    run.load_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    session.segment(volume, &clicks)?;
    run.first_frame_ms = start.elapsed().as_secs_f64() * 1e3;

    progress(Progress::Start(&label, options.frames));
    timed(options, &mut run, progress, |_, stats| {
        let start = Instant::now();
        let (_, t) = session.segment(volume, &clicks)?;
        let end_to_end = micros(start);
        let inference = ((t.encoder_ms + t.decoder_ms) * 1e3).round() as u64;
        stats.record("volume", (t.volume_ms * 1e3).round() as u64);
        stats.record("inference", inference);
        stats.record("end_to_end", end_to_end);
        stats.record("overhead", end_to_end.saturating_sub(inference));
        Ok(())
    })?;
    Ok(run)
}

fn source_name(config: &SourceConfig) -> String {
    match &config.path {
        Some(p) => format!("{} {}", config.kind, p.display()),
        None => config.kind.to_string(),
    }
}

/// Writes the first inputs of `graph` as `<dir>/<file stem>-<precision>.toml` plus one `.bin`
/// per input (little-endian, C order), the format of the parity fixtures. Returns the toml's
/// file name.
fn dump_inputs(dir: &Path, graph: &engine::GraphRuns) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let file = &graph.graph.spec().file;
    let stem = file.strip_suffix(".onnx").unwrap_or(file);
    let case = format!("{stem}-{}", graph.graph.precision());
    let mut toml = format!("graph = \"{file}\"\noutputs = []\n");
    for (name, tensor) in &graph.first_inputs {
        let (dtype, bytes) = tensor_bytes(tensor)?;
        let bin = format!("{case}.{name}.bin");
        let path = dir.join(&bin);
        std::fs::write(&path, bytes).with_context(|| format!("{}", path.display()))?;
        let shape: Vec<String> = tensor.shape().iter().map(|d| d.to_string()).collect();
        toml.push_str(&format!(
            "\n[[inputs]]\nname = \"{name}\"\ndtype = \"{dtype}\"\nshape = [{}]\nfile = \"{bin}\"\n",
            shape.join(", ")
        ));
    }
    let name = format!("{case}.toml");
    let path = dir.join(&name);
    std::fs::write(&path, toml).with_context(|| format!("{}", path.display()))?;
    Ok(name)
}

/// A tensor's element type name (as manifests write it) and its little-endian bytes.
fn tensor_bytes(t: &Tensor) -> anyhow::Result<(&'static str, Vec<u8>)> {
    fn le<T: tract_onnx::prelude::Datum + Copy, const N: usize>(
        t: &Tensor,
        to: fn(T) -> [u8; N],
    ) -> anyhow::Result<Vec<u8>> {
        Ok(t.try_as_plain_ram()?
            .as_slice::<T>()?
            .iter()
            .flat_map(|&v| to(v))
            .collect())
    }
    use tract_onnx::prelude::DatumType as D;
    Ok(match t.datum_type() {
        D::F32 => ("f32", le::<f32, 4>(t, f32::to_le_bytes)?),
        D::I64 => ("i64", le::<i64, 8>(t, i64::to_le_bytes)?),
        D::I32 => ("i32", le::<i32, 4>(t, i32::to_le_bytes)?),
        D::U8 => ("u8", le::<u8, 1>(t, u8::to_le_bytes)?),
        D::I8 => ("i8", le::<i8, 1>(t, i8::to_le_bytes)?),
        D::Bool => ("bool", le::<bool, 1>(t, |b| [u8::from(b)])?),
        other => anyhow::bail!("cannot dump a {other:?} tensor"),
    })
}
