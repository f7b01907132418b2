//! Per-frame latency of the bundled VLSM: the image graph alone (`inference`) and the whole
//! per-frame path (preprocess + inference + postprocess), at each precision the package
//! serves and at 1 and 2 threads, on phantom frames. Prints min / p50 / p90 / p99 / max from
//! the sorted samples of one run of this process, so ratios between rows are like for like.
//!
//! `cargo bench --bench latency` (FRAMES=n to change the sample count, default 60).

use std::time::Instant;

use edgeseg::model::{Package, Vlsm};
use edgeseg::phantom::{self, Modality};

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn row(label: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{label:<34} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
        ms[0],
        percentile(&ms, 0.5),
        percentile(&ms, 0.9),
        percentile(&ms, 0.99),
        ms[ms.len() - 1]
    );
}

fn main() {
    let frames: usize = std::env::var("FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let package = Package::open(&Package::default_dir()).expect("bundled model package");
    let inputs: Vec<_> = (0..8u64)
        .map(|i| {
            let modality = if i % 2 == 0 {
                Modality::Ultrasound
            } else {
                Modality::Endoscopy
            };
            phantom::generate(modality, 320, 240, 100 + i)
                .expect("phantom")
                .frame
        })
        .collect();
    println!("{} frames of 320x240 per row; milliseconds", frames);
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "run", "min", "p50", "p90", "p99", "max"
    );
    for precision in package.manifest().precisions() {
        for threads in [1, 2] {
            let start = Instant::now();
            let model = Vlsm::load(package.clone(), precision, threads).expect("model loads");
            let load_ms = start.elapsed().as_secs_f64() * 1e3;
            let mut session = model.session().expect("session");
            session
                .set_prompt("dark round lesion", false)
                .expect("prompt");
            for frame in inputs.iter().take(3) {
                session.segment(frame).expect("warm-up frame");
            }
            let (mut graph, mut total) = (Vec::new(), Vec::new());
            for i in 0..frames {
                let t = Instant::now();
                let r = session.segment(&inputs[i % inputs.len()]).expect("frame");
                total.push(t.elapsed().as_secs_f64() * 1e3);
                graph.push(r.timings.inference);
            }
            row(&format!("{precision} {threads}t image graph"), graph);
            row(
                &format!("{precision} {threads}t per frame (load {load_ms:.0} ms)"),
                total,
            );
        }
    }
}
