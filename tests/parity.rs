//! Parity with onnxruntime: every shipped graph, at every precision it serves, run by tract on
//! the committed inputs of `tests/fixtures/parity/<package>/<case>.toml`, must match the
//! committed onnxruntime outputs (made by `models/tools/make_references.py`).
//!
//! Tolerances, per element, with `r` the onnxruntime value and `s` the largest |r| of the output:
//! - f32: |tract − r| ≤ 1e-4 · max(1, s)  (tract and onnxruntime differ only in summation order);
//! - int8: |tract − r| ≤ 5e-2 · max(1, s) against onnxruntime running the same int8 graph
//!   (the two round re-quantised activations differently by one step here and there, and a
//!   step early in the network moves a few logits by up to a few percent; the mask agreement
//!   that matters is checked in `tests/quality.rs`);
//! - f16: tract's f16 translation of the f32 graph against onnxruntime's f32 output,
//!   |tract − r| ≤ 5e-2 · max(1, s) (f16 has 11 significant bits).

use std::fs;
use std::path::{Path, PathBuf};

use edgeseg::model::{Graph, Package, Precision};

#[path = "common/case.rs"]
mod case;

use case::Case;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tolerance(p: Precision) -> f32 {
    match p {
        Precision::F32 => 1e-4,
        Precision::Int8 => 5e-2,
        Precision::F16 => 5e-2,
    }
}

/// Runs one case at every precision its graph serves; returns (precision, worst error / scale).
fn check_case(package_dir: &Path, case_path: &Path) -> Vec<(Precision, f32)> {
    let case = Case::read(case_path);
    let package = Package::open(package_dir).unwrap();
    let spec = package
        .manifest()
        .graphs
        .iter()
        .find(|g| g.file == case.graph)
        .unwrap_or_else(|| {
            panic!(
                "{}: graph {} not in the manifest",
                case_path.display(),
                case.graph
            )
        });
    let bytes = package.read_graph(spec).unwrap();
    let dir = case_path.parent().unwrap();
    let mut results = Vec::new();
    for &precision in &spec.precisions {
        let graph = Graph::load(&bytes, &package.path(&spec.file), spec, precision, 1).unwrap();
        let inputs = case.inputs_for(dir, spec);
        let outputs = graph.session().unwrap().run(inputs).unwrap();
        let mut worst = 0f32;
        for (spec_out, got) in spec.outputs.iter().zip(&outputs) {
            let want_file = case
                .outputs
                .iter()
                .find(|t| t.name == spec_out.name)
                .expect("fixture has every output");
            let want = want_file.read(dir);
            assert_eq!(
                got.shape(),
                want.shape(),
                "{}: {}",
                case.graph,
                spec_out.name
            );
            let got = got.try_as_plain_ram().unwrap();
            let want = want.try_as_plain_ram().unwrap();
            let (got, want) = (
                got.as_slice::<f32>().unwrap(),
                want.as_slice::<f32>().unwrap(),
            );
            let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
            let err = got
                .iter()
                .zip(want)
                .fold(0f32, |m, (g, w)| m.max((g - w).abs()))
                / scale;
            worst = worst.max(err);
        }
        let tol = tolerance(precision);
        assert!(
            worst <= tol,
            "{} at {precision}: max error {worst:e} (relative to max(1, max|ref|)) exceeds {tol:e}",
            case_path.display()
        );
        results.push((precision, worst));
    }
    results
}

#[test]
fn every_shipped_graph_matches_onnxruntime() {
    let fixtures = root().join("tests/fixtures/parity");
    let mut checked = 0;
    for package in Package::discover(&root().join("models")).unwrap() {
        let name = package.file_name().unwrap();
        let case_dir = fixtures.join(name);
        let mut cases: Vec<PathBuf> = fs::read_dir(&case_dir)
            .unwrap_or_else(|_| {
                panic!(
                    "package {} has no parity fixtures in {}",
                    name.to_string_lossy(),
                    case_dir.display()
                )
            })
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        cases.sort();
        // Every graph file of the package has at least one case.
        let p = Package::open(&package).unwrap();
        for g in &p.manifest().graphs {
            let covered = cases.iter().any(|c| Case::read(c).graph == g.file);
            assert!(
                covered,
                "{}: no parity case for {}",
                package.display(),
                g.file
            );
        }
        for case in &cases {
            for (precision, err) in check_case(&package, case) {
                println!(
                    "{} {precision}: max relative error {err:.3e}",
                    case.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no parity case ran");
}
