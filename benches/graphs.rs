//! One run of each graph of each shipped package (`models/*/model.toml`), at each precision
//! its manifest serves, on one thread, through `Graph::load`, `Graph::session` and
//! `Session::run`: the engine's own cost (input checks and casts, the tract plan, output casts),
//! without preprocessing or postprocessing. The inputs are the committed parity inputs of
//! `tests/fixtures/parity/<package>/<case>.toml` (the first case, in file-name order, of each
//! graph file), so every run sees realistic values.
//!
//! Benchmarks are named `<package>/<role>/<precision>`. A graph is loaded and optimised only
//! when its benchmark runs (not measured), so a filter skips the others' loading too. Ten
//! samples of equal run counts in about 2 s (at least one run each).
//!
//! f16 is tract's translation of the f32 graph: emulated, and slow, on CPUs without native fp16
//! arithmetic (most x86), where the two U-Nets' f16 runs take seconds each and most of the
//! whole run's time.
//!
//! `cargo bench --bench graphs` (about 6 minutes on two x86 cores, 1 without f16), or a
//! filter (a regular expression on the names): `cargo bench --bench graphs -- sam-phantom/`,
//! `-- 'f32|int8'`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode};
use edgeseg::model::{Graph, GraphSpec, Package, Precision, Session};
use tract_onnx::prelude::Tensor;

#[path = "../tests/common/case.rs"]
mod case;

use case::Case;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The inputs of the first parity case of `spec`'s graph file in the package's fixture folder
/// `dir`, in manifest order.
fn case_inputs(dir: &Path, spec: &GraphSpec) -> Vec<Tensor> {
    let mut cases: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    cases
        .iter()
        .map(|p| Case::read(p))
        .find(|c| c.graph == spec.file)
        .unwrap_or_else(|| panic!("{}: no parity case for {}", dir.display(), spec.file))
        .inputs_for(dir, spec)
}

/// Loads the graph on one thread, opens a session and runs it once (warm-up).
fn load(package: &Package, spec: &GraphSpec, precision: Precision) -> (Session, Vec<Tensor>) {
    let bytes = package.read_graph(spec).expect("graph file");
    let graph = Graph::load(&bytes, &package.path(&spec.file), spec, precision, 1)
        .unwrap_or_else(|e| panic!("{e}"));
    let name = package.dir().file_name().expect("package folder name");
    let inputs = case_inputs(&root().join("tests/fixtures/parity").join(name), spec);
    let mut session = graph.session().expect("session");
    session.run(inputs.clone()).expect("first run");
    (session, inputs)
}

fn graphs(c: &mut Criterion) {
    let packages = Package::discover(&root().join("models")).expect("models/");
    for dir in packages {
        let package = Package::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        let mut group = c.benchmark_group(package.name().to_string());
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .sampling_mode(SamplingMode::Flat);
        for spec in &package.manifest().graphs {
            for &precision in &spec.precisions {
                let mut loaded = None;
                group.bench_function(format!("{}/{precision}", spec.role), |b| {
                    let (session, inputs) =
                        loaded.get_or_insert_with(|| load(&package, spec, precision));
                    b.iter_batched(
                        || inputs.clone(),
                        |inputs| session.run(inputs).expect("run"),
                        BatchSize::SmallInput,
                    )
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, graphs);
criterion_main!(benches);
