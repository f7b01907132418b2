//! `edgeseg bench` through the command line: the report's structure (every timed frame in every
//! stage histogram, every graph of the family recorded with its multiply–adds), the JSON, CSV
//! and SVG outputs, dumped inputs that reproduce a graph run, volume runs, and clear errors.
//! Nothing here asserts a time: figures are measured and reported, not tested.

#[path = "common/case.rs"]
mod case;
mod common;

use std::fs;

use common::{check_failure, edgeseg, scratch, text};
use edgeseg::model::{Graph, Package, Precision};
use serde_json::Value;

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_sweep_reports_every_run_stage_and_graph_and_writes_its_files() {
    let dir = scratch("sweep");
    let (json, csv, svg, dump) = (
        dir.join("b.json"),
        dir.join("b.csv"),
        dir.join("b.svg"),
        dir.join("inputs"),
    );
    let out = edgeseg(&[
        "bench",
        "--frames",
        "4",
        "--warmup",
        "1",
        "--precision",
        "f32,int8",
        "--threads",
        "1,2",
        "--json",
        json.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
        "--dump-inputs",
        dump.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("machine: "), "{stdout}");

    let report = read_json(&json);
    let runs = report["runs"].as_array().unwrap();
    let configs: Vec<(String, u64)> = runs
        .iter()
        .map(|r| {
            (
                r["precision"].as_str().unwrap().to_string(),
                r["threads"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, u64)> = [("f32", 1), ("f32", 2), ("int8", 1), ("int8", 2)]
        .iter()
        .map(|(p, t)| (p.to_string(), *t))
        .collect();
    assert_eq!(configs, expected);
    for r in runs {
        assert_eq!(r["model"], "clipseg-phantom");
        assert_eq!(r["failed"], 0);
        assert!(r["load_ms"].as_f64().unwrap() > 0.0);
        assert!(r["first_frame_ms"].as_f64().unwrap() > 0.0);
        assert!(r["peak_rss_mib"].as_f64().unwrap() > 10.0);
        assert!(r["cpu_ms_per_frame"].as_f64().unwrap() > 0.0);
        for stage in [
            "preprocess",
            "inference",
            "postprocess",
            "encode",
            "end_to_end",
            "overhead",
        ] {
            let p = &r["stages"][stage];
            assert_eq!(p["count"], 4, "{stage}: {p}");
            let (min, p50, max) = (
                p["min"].as_f64().unwrap(),
                p["p50"].as_f64().unwrap(),
                p["max"].as_f64().unwrap(),
            );
            assert!(min <= p50 && p50 <= max, "{stage}: {p}");
        }
        let e2e = r["stages"]["end_to_end"]["p50"].as_f64().unwrap();
        let inference = r["stages"]["inference"]["p50"].as_f64().unwrap();
        assert!(e2e >= inference, "{r}");
        let cdf = r["end_to_end_cdf"].as_array().unwrap();
        assert_eq!(cdf.last().unwrap()[1], 1.0);
        // The image graph runs once per frame; the text graph ran at load, before timing.
        let graphs = r["graphs"].as_array().unwrap();
        assert_eq!(graphs.len(), 1, "{graphs:?}");
        assert_eq!(graphs[0]["role"], "image");
        assert_eq!(graphs[0]["latency"]["count"], 4);
        assert!(graphs[0]["fmas"].as_u64().unwrap() > 1_000_000);
        assert!(graphs[0]["inputs"].as_str().unwrap().ends_with(".toml"));
    }

    let csv = fs::read_to_string(&csv).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4 * (6 + 1), "{csv}");
    let svg = fs::read_to_string(&svg).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 4);

    // The dumped inputs reproduce a run of the graph they were taken from.
    let case_dir = dump.join("clipseg-phantom");
    let case = case::Case::read(&case_dir.join("image-int8-int8.toml"));
    assert_eq!(case.graph, "image-int8.onnx");
    assert!(case.outputs.is_empty());
    let package = Package::open(&common::root().join("models/clipseg-phantom")).unwrap();
    let spec = package
        .manifest()
        .graphs
        .iter()
        .find(|g| g.file == case.graph)
        .unwrap();
    let bytes = package.read_graph(spec).unwrap();
    let graph = Graph::load(&bytes, &package.path(&spec.file), spec, Precision::Int8, 1).unwrap();
    let inputs = case.inputs_for(&case_dir, spec);
    let outputs = graph.session().unwrap().run(inputs).unwrap();
    let logits = graph.values(&outputs[0]).unwrap();
    assert!(logits.iter().all(|v| v.is_finite()));
    assert!(logits.iter().any(|&v| v > 0.0) && logits.iter().any(|&v| v < 0.0));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_family_is_benchmarked_with_its_default_request() {
    let dir = scratch("families");
    let json = dir.join("b.json");
    let out = edgeseg(&[
        "bench",
        "--frames",
        "2",
        "--warmup",
        "0",
        "--model",
        "models/sam-phantom",
        "--model",
        "models/unet-conditioned-phantom",
        "--model",
        "models/sam3d-phantom",
        "--precision",
        "f32,f16,int8",
        "--volume",
        "tests/fixtures/volumes/lesion.nii.gz",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // sam3d serves no int8: skipped, and said so.
    assert!(
        common::stderr(&out).contains("skipped: sam3d-phantom does not serve int8"),
        "{}",
        text(&out)
    );
    let report = read_json(&json);
    // f16 on a CPU without f16 arithmetic is emulated, and the table says so.
    let emulated = report["machine"]["native_f16"] == false;
    let note = String::from_utf8_lossy(&out.stdout).contains("f16 runs are emulated");
    assert_eq!(emulated, note, "{}", text(&out));
    let runs = report["runs"].as_array().unwrap();
    let found: Vec<String> = runs
        .iter()
        .map(|r| format!("{} {}", r["model"].as_str().unwrap(), r["precision"]))
        .collect();
    assert_eq!(runs.len(), 8, "{found:?}");
    let sam = &runs[0];
    assert_eq!(sam["label"], "click (160, 120)");
    let roles: Vec<&str> = sam["graphs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["encoder", "decoder"]);
    let conditioned = &runs[3];
    assert_eq!(conditioned["model"], "unet-conditioned-phantom");
    assert!(conditioned["label"].as_str().unwrap().contains('('));
    let volume = &runs[6];
    assert_eq!(volume["model"], "sam3d-phantom");
    assert_eq!(volume["stages"]["volume"]["count"], 2);
    assert_eq!(volume["stages"]["inference"]["count"], 2);
    assert!(volume["source"].as_str().unwrap().contains("64x56x32"));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_live_run_measures_the_profile_loop_at_its_serial_link() {
    let dir = scratch("live");
    let profile = dir.join("profile.toml");
    fs::write(
        &profile,
        format!(
            "[source]\nkind = \"phantom\"\nfps = 60\n\n[model]\nprompt = \"dark oval lesion\"\n\n\
             [serial]\nport = \"{0}/tty\"\nloopback_log = \"{0}/serial.log\"\nbaud = 921600\n",
            dir.display()
        ),
    )
    .unwrap();
    let json = dir.join("live.json");
    let out = edgeseg(&[
        "bench",
        "--live",
        "--config",
        profile.to_str().unwrap(),
        "--frames",
        "20",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report = read_json(&json);
    let run = &report["runs"][0];
    assert_eq!(run["family"], "live");
    assert_eq!(run["model"], "clipseg-phantom");
    assert!(run["dir"]
        .as_str()
        .unwrap()
        .ends_with("models/clipseg-phantom"));
    assert_eq!(run["frames"], 20);
    assert!(run["label"]
        .as_str()
        .unwrap()
        .ends_with("(end-to-end at the serial sink)"));
    // Every processed frame went through every stage and out of the link (the loop flushes
    // its sinks before it reports).
    for stage in [
        "wait",
        "preprocess",
        "inference",
        "postprocess",
        "emit",
        "end_to_end",
        "overhead",
    ] {
        assert_eq!(run["stages"][stage]["count"], 20, "{stage}: {run}");
    }
    assert!(run["throughput_fps"].as_f64().unwrap() > 0.0);
    assert!(
        fs::read_to_string(dir.join("serial.log"))
            .unwrap()
            .lines()
            .count()
            >= 20
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_corrupt_file_in_the_source_is_skipped_and_said() {
    let dir = scratch("corrupt");
    fs::copy(
        common::root().join("samples/us_0000.png"),
        dir.join("a.png"),
    )
    .unwrap();
    fs::write(dir.join("b.png"), b"\x89PNG not really").unwrap();
    let source = format!("folder:{}", dir.display());
    let out = edgeseg(&[
        "bench", "--source", &source, "--frames", "2", "--warmup", "0",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let err = common::stderr(&out);
    assert!(err.contains("b.png") && err.contains("skipped"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("clipseg-phantom"));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_benches_fail_with_one_clear_line() {
    let out = edgeseg(&["bench", "--model", "models/no-such-model", "--frames", "1"]);
    check_failure(&out, 2, &["no-such-model"]);
    let out = edgeseg(&["bench", "--model", "models/sam3d-phantom", "--frames", "1"]);
    check_failure(&out, 2, &["--volume"]);
    let out = edgeseg(&[
        "bench",
        "--source",
        "folder:/no/such/folder",
        "--frames",
        "1",
    ]);
    check_failure(&out, 2, &["/no/such/folder"]);
    let out = edgeseg(&["bench", "--source", "folder:samples", "--size", "64x64"]);
    check_failure(&out, 2, &["width"]);
    let out = edgeseg(&[
        "bench",
        "--model",
        "models/unet-plain-phantom",
        "--prompt",
        "lesion",
    ]);
    check_failure(&out, 2, &["unet-plain-phantom", "prompt"]);
}
