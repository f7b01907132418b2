//! What a live run reports when it ends: counts, rates, and latency percentiles per stage and
//! per sink, as a table for people and JSON for machines.

use std::fmt::Write as _;

use serde::Serialize;

use super::stages::AdapterSwitch;
use crate::histogram::Percentiles;

/// Percentiles of each stage, over processed frames.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// Capture → the inference thread takes the frame (time in the mailbox).
    pub wait: Percentiles,
    pub preprocess: Percentiles,
    pub inference: Percentiles,
    pub postprocess: Percentiles,
}

/// What one sink did.
#[derive(Debug, Clone, Serialize)]
pub struct SinkReport {
    pub name: String,
    pub emitted: u64,
    /// Frames its queue dropped because the sink was busy.
    pub queue_dropped: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// Time inside the sink's emit.
    pub emit: Percentiles,
    /// Emit end − capture.
    pub end_to_end: Percentiles,
    /// End-to-end minus inference: what the pipeline itself costs.
    pub overhead: Percentiles,
}

/// The summary of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub source: String,
    /// The source ran out of frames (rather than the run being stopped).
    pub source_ended: bool,
    pub label: String,
    pub captured: u64,
    pub processed: u64,
    /// Frames replaced in the mailbox before inference took them.
    pub dropped: u64,
    /// Frames whose processing failed.
    pub failed: u64,
    pub source_errors: u64,
    pub last_source_error: Option<String>,
    pub last_failure: Option<String>,
    /// Wall time of the run, seconds.
    pub wall_s: f64,
    /// Processed frames per second between the first capture and the last processed frame.
    pub fps: f64,
    pub stages: StageReport,
    pub sinks: Vec<SinkReport>,
    /// Task-adapter switches made during the run, in order.
    pub adapter_switches: Vec<AdapterSwitch>,
}

fn row(table: &mut String, name: &str, p: &Percentiles) {
    let _ = writeln!(
        table,
        "           {name:<22} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
        p.p50, p.p90, p.p99, p.max, p.mean
    );
}

impl RunReport {
    /// The summary table printed at the end of `edgeseg run`.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "source     {}", self.source);
        let _ = writeln!(
            t,
            "frames     {} in, {} processed, {} dropped, {} failed, {} source errors",
            self.captured, self.processed, self.dropped, self.failed, self.source_errors
        );
        let _ = writeln!(
            t,
            "rate       {:.1} fps processed over {:.1} s",
            self.fps, self.wall_s
        );
        let _ = writeln!(
            t,
            "latency    {:<22} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "(ms)", "p50", "p90", "p99", "max", "mean"
        );
        row(&mut t, "mailbox wait", &self.stages.wait);
        row(&mut t, "preprocess", &self.stages.preprocess);
        row(&mut t, "inference", &self.stages.inference);
        row(&mut t, "postprocess", &self.stages.postprocess);
        for s in &self.sinks {
            row(&mut t, &format!("{} emit", s.name), &s.emit);
            row(&mut t, &format!("{} end-to-end", s.name), &s.end_to_end);
            row(&mut t, &format!("{} overhead", s.name), &s.overhead);
        }
        for s in &self.adapter_switches {
            let _ = match &s.error {
                None => writeln!(t, "adapter    `{}` in {:.2} ms", s.adapter, s.ms),
                Some(e) => writeln!(t, "adapter    `{}` failed: {e}", s.adapter),
            };
        }
        for s in &self.sinks {
            let _ = write!(
                t,
                "sink       {}: {} emitted, {} dropped (busy), {} errors",
                s.name, s.emitted, s.queue_dropped, s.errors
            );
            match &s.last_error {
                Some(e) => {
                    let _ = writeln!(t, " (last: {e})");
                }
                None => t.push('\n'),
            }
        }
        if let Some(e) = &self.last_source_error {
            let _ = writeln!(t, "source     last error: {e}");
        }
        if let Some(e) = &self.last_failure {
            let _ = writeln!(t, "inference  last failure: {e}");
        }
        t
    }
}
