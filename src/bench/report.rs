//! What `edgeseg bench` reports: the machine, and per run its load and first-frame times,
//! per-stage and per-graph latency percentiles, throughput, CPU time and peak memory. As a
//! comparison table for people, JSON (the whole report) and CSV (one row per stage or graph of
//! each run) for machines.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::histogram::Percentiles;
use crate::model::engine::{GraphRuns, OpTime};

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub edgeseg: String,
    pub machine: Machine,
    /// Wall time of the whole sweep, seconds.
    pub wall_s: f64,
    pub runs: Vec<Run>,
}

/// What the figures were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub logical_cpus: usize,
    pub arch: String,
    /// The CPU's vector and dot-product features that matter to the kernels.
    pub features: Vec<String>,
    /// Whether the CPU does f16 arithmetic natively (Arm `asimdhp`, x86 `avx512_fp16`); without
    /// it, f16 graphs are emulated and slower than f32.
    pub native_f16: bool,
}

/// CPU flags (x86 `flags`, Arm `Features`) worth naming in a report.
const FEATURES: &[&str] = &[
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_int8",
    "asimd",
    "fphp",
    "asimdhp",
    "asimddp",
    "i8mm",
    "sve",
    "bf16",
];

impl Machine {
    /// This machine, from `/proc/cpuinfo` where there is one.
    pub fn this() -> Machine {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |key: &str| {
            info.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_string())
            })
        };
        let cpu = field("model name")
            .or_else(|| field("Model"))
            .or_else(|| field("CPU part").map(|p| format!("CPU part {p}")))
            .unwrap_or_else(|| "unknown".into());
        let flags = field("flags")
            .or_else(|| field("Features"))
            .unwrap_or_default();
        let present: Vec<&str> = flags.split_whitespace().collect();
        Machine {
            native_f16: present.contains(&"asimdhp") || present.contains(&"avx512_fp16"),
            cpu,
            logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            arch: std::env::consts::ARCH.to_string(),
            features: FEATURES
                .iter()
                .filter(|f| present.contains(f))
                .map(|f| f.to_string())
                .collect(),
        }
    }
}

/// One model × precision × thread count.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Run {
    pub model: String,
    pub dir: String,
    pub family: String,
    pub precision: String,
    pub threads: usize,
    pub source: String,
    /// What was segmented (prompt, clicks, task).
    pub label: String,
    /// Timed frames (volumes for sam3d) and untimed warm-up frames.
    pub frames: usize,
    pub warmup: usize,
    /// Package open and model load, graphs optimised and ready.
    pub load_ms: f64,
    /// The first frame after loading (lazy allocations land here).
    pub first_frame_ms: f64,
    /// Per stage: `preprocess`, `inference`, `postprocess`, `encode` (serial framing) for
    /// frames, `volume` (resampling, cropping, pasting) and `inference` for volumes; both have
    /// `end_to_end` and `overhead` (end-to-end minus inference).
    pub stages: BTreeMap<String, Percentiles>,
    pub graphs: Vec<GraphReport>,
    /// Timed frames done per second, one after the other.
    pub throughput_fps: f64,
    /// CPU time (all threads) per timed frame.
    pub cpu_ms_per_frame: f64,
    pub peak_rss_mib: f64,
    /// Frames the live loop's mailbox dropped because inference was busy (`--live` only).
    pub dropped: u64,
    /// Frames that failed (warm-up included), and the last error.
    pub failed: u64,
    pub last_error: Option<String>,
    /// End-to-end cumulative distribution: (milliseconds, fraction at or below).
    pub end_to_end_cdf: Vec<(f64, f64)>,
}

/// The runs of one graph within a run's timed frames.
#[derive(Debug, Clone, Serialize)]
pub struct GraphReport {
    /// File name inside the package (for f16, the f32 file tract translates).
    pub file: String,
    pub role: String,
    pub precision: String,
    pub fmas: u64,
    /// Threads the graph ran on: the run's, or fewer for a small graph.
    pub threads: usize,
    pub latency: Percentiles,
    /// 2 × multiply–adds per second at the median, 10⁹.
    pub gflops: f64,
    /// The dumped first inputs (toml file name), when asked for.
    pub inputs: Option<String>,
    /// Milliseconds per run of each operator type, largest first, when profiled.
    pub ops: Vec<OpTime>,
}

/// Operator types the table shows per profiled graph.
const TOP_OPS: usize = 6;

impl GraphReport {
    pub fn new(runs: &GraphRuns, inputs: Option<String>) -> GraphReport {
        let latency = runs.latency.percentiles();
        let graph = &runs.graph;
        GraphReport {
            file: graph.spec().file.clone(),
            role: graph.spec().role.clone(),
            precision: graph.precision().to_string(),
            fmas: graph.fmas(),
            threads: graph.threads(),
            gflops: if latency.p50 > 0.0 {
                2.0 * graph.fmas() as f64 / (latency.p50 * 1e-3) / 1e9
            } else {
                0.0
            },
            latency,
            inputs,
            ops: Vec::new(),
        }
    }
}

impl Run {
    pub fn stage(&self, name: &str) -> Percentiles {
        self.stages.get(name).copied().unwrap_or_default()
    }

    /// p99 over p50 of the end-to-end time: how much the tail stretches.
    pub fn tail_ratio(&self) -> f64 {
        let e = self.stage("end_to_end");
        if e.p50 > 0.0 {
            e.p99 / e.p50
        } else {
            0.0
        }
    }
}

/// Stages in the order the tables and plots show them.
pub const STAGE_ORDER: &[&str] = &[
    "wait",
    "preprocess",
    "volume",
    "inference",
    "postprocess",
    "encode",
    "emit",
    "end_to_end",
    "overhead",
];

impl Report {
    /// The report of `runs` on this machine, for a sweep begun at `started`.
    pub fn new(runs: Vec<Run>, started: std::time::Instant) -> Report {
        Report {
            edgeseg: env!("CARGO_PKG_VERSION").to_string(),
            machine: Machine::this(),
            wall_s: started.elapsed().as_secs_f64(),
            runs,
        }
    }

    /// The comparison table: one line per run, then one per graph of each run.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let m = &self.machine;
        let _ = writeln!(
            t,
            "machine: {} ({} logical CPUs, {}; {})",
            m.cpu,
            m.logical_cpus,
            m.arch,
            m.features.join(" ")
        );
        let _ = writeln!(
            t,
            "{:<28} {:>4} {:>3} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>7} {:>7} {:>7}",
            "run (ms)",
            "prec",
            "thr",
            "load",
            "first",
            "e2e p50",
            "e2e p99",
            "p99/50",
            "infer50",
            "ovhd p50",
            "fps",
            "cpu/fr",
            "MiB"
        );
        for r in &self.runs {
            let e = r.stage("end_to_end");
            let _ = writeln!(
                t,
                "{:<28} {:>4} {:>3} {:>8.1} {:>8.2} {:>8.2} {:>8.2} {:>7.2} {:>8.2} {:>8.2} {:>7.1} {:>7.2} {:>7.1}",
                r.model,
                r.precision,
                r.threads,
                r.load_ms,
                r.first_frame_ms,
                e.p50,
                e.p99,
                r.tail_ratio(),
                r.stage("inference").p50,
                r.stage("overhead").p50,
                r.throughput_fps,
                r.cpu_ms_per_frame,
                r.peak_rss_mib
            );
        }
        if self.runs.iter().any(|r| !r.graphs.is_empty()) {
            self.graph_table(&mut t);
        }
        self.notes(&mut t);
        t
    }

    /// One line per graph of each run.
    fn graph_table(&self, t: &mut String) {
        let _ = writeln!(
            t,
            "\n{:<44} {:<8} {:>4} {:>3} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7}",
            "graph (ms)", "role", "prec", "thr", "GFMA", "min", "p50", "p99", "max", "GFLOP/s"
        );
        for r in &self.runs {
            for g in &r.graphs {
                let l = &g.latency;
                let _ = writeln!(
                    t,
                    "{:<44} {:<8} {:>4} {:>3} {:>8.3} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7.1}",
                    format!("{}/{}", r.model, g.file),
                    g.role,
                    g.precision,
                    g.threads,
                    g.fmas as f64 / 1e9,
                    l.min,
                    l.p50,
                    l.p99,
                    l.max,
                    g.gflops
                );
            }
        }
        for r in &self.runs {
            for g in r.graphs.iter().filter(|g| !g.ops.is_empty()) {
                let total: f64 = g.ops.iter().map(|o| o.ms).sum();
                let _ = write!(
                    t,
                    "\nops of {}/{} {} {}t ({total:.2} ms in operators, {:.2} ms median run):",
                    r.model, g.file, g.precision, g.threads, g.latency.p50
                );
                for o in g.ops.iter().take(TOP_OPS) {
                    let _ = write!(t, " {} {:.2} ({:.0}%)", o.op, o.ms, 100.0 * o.ms / total);
                }
            }
        }
        if self
            .runs
            .iter()
            .any(|r| r.graphs.iter().any(|g| !g.ops.is_empty()))
        {
            t.push('\n');
        }
    }

    /// Emulated f16, dropped and failed frames.
    fn notes(&self, t: &mut String) {
        if !self.machine.native_f16 && self.runs.iter().any(|r| r.precision == "f16") {
            let _ = writeln!(
                t,
                "note: this CPU has no native f16 arithmetic: the f16 runs are emulated and slower than f32"
            );
        }
        for r in self.runs.iter().filter(|r| r.dropped > 0) {
            let _ = writeln!(
                t,
                "{} {} {}t: {} frame(s) dropped while inference was busy",
                r.model, r.precision, r.threads, r.dropped
            );
        }
        for r in self.runs.iter().filter(|r| r.failed > 0) {
            let _ = writeln!(
                t,
                "{} {} {}t: {} frame(s) failed, last: {}",
                r.model,
                r.precision,
                r.threads,
                r.failed,
                r.last_error.as_deref().unwrap_or("")
            );
        }
    }

    /// CSV: one row per stage and per graph of each run, with the run's scalars repeated.
    pub fn csv(&self) -> String {
        let mut t = String::from(
            "model,precision,threads,frames,load_ms,first_frame_ms,throughput_fps,cpu_ms_per_frame,\
             peak_rss_mib,kind,name,count,min,p50,p90,p99,p999,max,mean,stddev\n",
        );
        for r in &self.runs {
            let stages = STAGE_ORDER
                .iter()
                .filter_map(|s| r.stages.get(*s).map(|p| ("stage", s.to_string(), p)));
            let graphs = r
                .graphs
                .iter()
                .map(|g| ("graph", g.file.clone(), &g.latency));
            for (kind, name, p) in stages.chain(graphs) {
                let _ = writeln!(
                    t,
                    "{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.1},{kind},{name},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3}",
                    r.model,
                    r.precision,
                    r.threads,
                    r.frames,
                    r.load_ms,
                    r.first_frame_ms,
                    r.throughput_fps,
                    r.cpu_ms_per_frame,
                    r.peak_rss_mib,
                    p.count,
                    p.min,
                    p.p50,
                    p.p90,
                    p.p99,
                    p.p999,
                    p.max,
                    p.mean,
                    p.stddev
                );
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(model: &str, p50: f64, p99: f64) -> Run {
        let p = Percentiles {
            count: 10,
            min: p50 / 2.0,
            p50,
            p90: p50,
            p99,
            p999: p99,
            max: p99,
            mean: p50,
            stddev: 1.0,
        };
        Run {
            model: model.into(),
            precision: "f32".into(),
            threads: 1,
            frames: 10,
            stages: [("end_to_end".to_string(), p), ("inference".to_string(), p)].into(),
            ..Run::default()
        }
    }

    #[test]
    fn the_table_and_csv_hold_every_run_and_stage() {
        let report = Report {
            edgeseg: "0".into(),
            machine: Machine::this(),
            wall_s: 1.0,
            runs: vec![run("a", 10.0, 13.0), run("b", 4.0, 8.0)],
        };
        assert!((report.runs[0].tail_ratio() - 1.3).abs() < 1e-9);
        let table = report.table();
        assert!(table.contains("\na "), "{table}");
        assert!(table.contains("\nb "), "{table}");
        let csv = report.csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 1 + 4, "{csv}");
        let columns = lines[0].split(',').count();
        assert!(
            lines.iter().all(|l| l.split(',').count() == columns),
            "{csv}"
        );
        assert!(lines[1].starts_with("a,f32,1,10,") && lines[1].contains(",stage,inference,"));
        assert!(lines[2].contains(",stage,end_to_end,10,5.000,10.000,"));
    }
}
