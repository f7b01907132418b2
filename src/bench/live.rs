//! `edgeseg bench --live`: the live loop of a device profile, measured with the bench's
//! instrument. Unlike the closed loop, frames come from the source at its own rate (the demo's
//! phantom at 30 fps), wait in the mailbox, and go out through the profile's real sinks; the
//! figures are what that device would show: sustained rate, end-to-end latency and its tail at
//! the link, and what the pipeline adds to inference.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use crate::live::{self, RunReport};
use crate::model::Precision;
use crate::profile::{Overrides, Profile};

use super::report::{Report, Run};
use super::{resources, Progress};

/// What `--live` sweeps; an empty list keeps the profile's setting.
#[derive(Debug, Clone, Default)]
pub struct Sweep {
    pub models: Vec<PathBuf>,
    pub precisions: Vec<Precision>,
    pub threads: Vec<usize>,
    /// Processed frames per run.
    pub frames: u64,
}

/// `values` as overrides, or one `None` (the profile's own) when empty.
fn overrides<T: Clone>(values: &[T]) -> Vec<Option<T>> {
    if values.is_empty() {
        vec![None]
    } else {
        values.iter().cloned().map(Some).collect()
    }
}

/// Runs `profile`'s loop once per model × precision × thread count of `sweep`.
pub fn sweep(
    profile: &Profile,
    sweep: &Sweep,
    progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut runs = Vec::new();
    for model in overrides(&sweep.models) {
        for precision in overrides(&sweep.precisions) {
            for threads in overrides(&sweep.threads) {
                let mut profile = profile.clone();
                profile.apply(&Overrides {
                    model: model.clone(),
                    precision,
                    threads,
                    frames: Some(sweep.frames),
                    ..Overrides::default()
                })?;
                let label = format!(
                    "live {} {}t",
                    profile.model.precision, profile.model.threads
                );
                progress(Progress::Start(&label, sweep.frames as usize));
                let run = run(&profile)?;
                progress(Progress::Done(&run));
                runs.push(run);
            }
        }
    }
    Ok(Report::new(runs, started))
}

/// The sink whose end-to-end time a live run reports: the serial link when there is one (what
/// the device at the far end sees), else the first sink.
const PREFERRED_SINK: &str = "serial";

/// Runs the loop `profile` describes until its limits, and reports it as a bench run.
pub fn run(profile: &Profile) -> anyhow::Result<Run> {
    resources::reset_peak_rss();
    let setup = live::setup(profile)?;
    let cpu = resources::cpu_time();
    let stop = Arc::new(AtomicBool::new(false));
    let report = live::run(setup.source, setup.stages, setup.sinks, setup.limits, stop);
    let cpu = resources::cpu_time() - cpu;
    if let Some(loopback) = setup.loopback {
        loopback.finish()?;
    }
    let mut run = from_report(&report);
    run.precision = profile.model.precision.to_string();
    run.threads = profile.model.threads;
    run.dir = setup.model_dir.display().to_string();
    run.model = setup.model;
    run.load_ms = setup.load.as_secs_f64() * 1e3;
    run.cpu_ms_per_frame = cpu.as_secs_f64() * 1e3 / report.processed.max(1) as f64;
    run.peak_rss_mib = resources::peak_rss_mib();
    Ok(run)
}

/// The bench's view of a live run's report.
fn from_report(report: &RunReport) -> Run {
    let s = &report.stages;
    let mut stages: std::collections::BTreeMap<String, _> = [
        ("wait", s.wait),
        ("preprocess", s.preprocess),
        ("inference", s.inference),
        ("postprocess", s.postprocess),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let sink = report
        .sinks
        .iter()
        .find(|k| k.name == PREFERRED_SINK)
        .or(report.sinks.first());
    if let Some(sink) = sink {
        stages.insert("emit".into(), sink.emit);
        stages.insert("end_to_end".into(), sink.end_to_end);
        stages.insert("overhead".into(), sink.overhead);
    }
    Run {
        family: "live".into(),
        source: report.source.clone(),
        label: match sink {
            Some(k) => format!("{} (end-to-end at the {} sink)", report.label, k.name),
            None => report.label.clone(),
        },
        frames: report.processed as usize,
        stages,
        throughput_fps: report.fps,
        dropped: report.dropped,
        failed: report.failed,
        last_error: report.last_failure.clone(),
        ..Run::default()
    }
}
