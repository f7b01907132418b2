//! The command line on bad input: every case prints one line naming the file and the problem,
//! exits non-zero without a panic, and — for inputs — still processes the other inputs of the
//! same run. Bad model packages are made from the bundled one in a temporary folder.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edgeseg::model::package::hex;
use sha2::{Digest, Sha256};

use common::{check_failure, edgeseg, root, scratch, stderr};

const MODEL: &str = "models/clipseg-phantom";

/// A copy of the bundled package whose manifest and files `edit` may change.
fn bad_package(name: &str, edit: impl FnOnce(&Path, &mut String)) -> PathBuf {
    let dir = scratch(name).join("pkg");
    fs::create_dir_all(&dir).unwrap();
    for entry in fs::read_dir(root().join(MODEL)).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let mut manifest = fs::read_to_string(dir.join("model.toml")).unwrap();
    edit(&dir, &mut manifest);
    fs::write(dir.join("model.toml"), manifest).unwrap();
    dir
}

/// Replaces a graph file's bytes and its hash in the manifest, so only the content is bad.
fn replace_graph(dir: &Path, manifest: &mut String, file: &str, bytes: &[u8]) {
    let old = hex(&Sha256::digest(fs::read(dir.join(file)).unwrap()));
    fs::write(dir.join(file), bytes).unwrap();
    *manifest = manifest.replace(&old, &hex(&Sha256::digest(bytes)));
}

fn segment_with(model: &Path) -> Output {
    edgeseg(&[
        "segment",
        "samples/us_0000.png",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "lesion",
        "--out",
        scratch("out").to_str().unwrap(),
    ])
}

#[test]
fn missing_model_folder() {
    let out = segment_with(Path::new("/nonexistent/model"));
    check_failure(&out, 2, &["/nonexistent/model/model.toml"]);
}

#[test]
fn hash_mismatch_names_the_file() {
    let dir = bad_package("hash", |dir, _| {
        let mut bytes = fs::read(dir.join("image-f32.onnx")).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(dir.join("image-f32.onnx"), bytes).unwrap();
    });
    check_failure(&segment_with(&dir), 2, &["image-f32.onnx", "sha256"]);
}

#[test]
fn truncated_and_corrupt_graphs() {
    let truncated = bad_package("truncated", |dir, m| {
        let bytes = fs::read(dir.join("image-f32.onnx")).unwrap();
        replace_graph(dir, m, "image-f32.onnx", &bytes[..bytes.len() / 2]);
    });
    check_failure(
        &segment_with(&truncated),
        2,
        &["image-f32.onnx", "not a loadable ONNX graph"],
    );
    let garbage = bad_package("garbage", |dir, m| {
        replace_graph(dir, m, "text-f32.onnx", b"\x08\x07garbage")
    });
    check_failure(&segment_with(&garbage), 2, &["text-f32.onnx"]);
    let missing = bad_package("missing", |dir, _| {
        fs::remove_file(dir.join("image-f32.onnx")).unwrap()
    });
    check_failure(
        &segment_with(&missing),
        2,
        &["image-f32.onnx", "No such file"],
    );
}

#[test]
fn contract_mismatches_name_tensor_and_shapes() {
    let renamed = bad_package("names", |_, m| {
        *m = m.replace("\"pixel_values\"", "\"pixels\"")
    });
    check_failure(
        &segment_with(&renamed),
        2,
        &["image-f32.onnx", "pixel_values", "pixels"],
    );
    let shape = bad_package("shape", |_, m| {
        *m = m.replace("[1, 3, 128, 128]", "[1, 3, 64, 64]")
    });
    check_failure(
        &segment_with(&shape),
        2,
        &["image-f32.onnx", "[1,3,64,64]", "[1,3,128,128]"],
    );
    let out_shape = bad_package("outshape", |_, m| {
        *m = m.replace("shape = [1, 128, 128]", "shape = [1, 1, 128, 128]")
    });
    check_failure(&segment_with(&out_shape), 2, &["image-f32.onnx", "logits"]);
}

#[test]
fn unknown_family_and_manifest_keys() {
    let family = bad_package("family", |_, m| {
        *m = m.replace("family = \"vlsm\"", "family = \"unet\"")
    });
    check_failure(
        &segment_with(&family),
        2,
        &["model.toml", "unknown variant `unet`"],
    );
    let key = bad_package("key", |_, m| m.push_str("\ncolour = \"red\"\n"));
    check_failure(&segment_with(&key), 2, &["model.toml", "colour"]);
}

#[test]
fn empty_prompt_is_refused_unless_p0_is_asked_for() {
    let out = edgeseg(&[
        "segment",
        "samples/us_0000.png",
        "--prompt",
        " ",
        "--out",
        scratch("empty").to_str().unwrap(),
    ]);
    check_failure(&out, 2, &["prompt is empty"]);
    let out = edgeseg(&[
        "segment",
        "samples/us_0000.png",
        "--attributes",
        "class=lesion",
        "--prompt-type",
        "P0",
        "--out",
        scratch("p0").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn bad_inputs_fail_alone_and_the_rest_is_processed() {
    let dir = scratch("inputs");
    let png = fs::read(root().join("samples/us_0000.png")).unwrap();
    fs::write(dir.join("truncated.png"), &png[..png.len() / 3]).unwrap();
    fs::write(dir.join("zero.png"), b"").unwrap();
    let fixtures = root().join("tests/fixtures/dicom");
    let cases: Vec<(PathBuf, &str)> = vec![
        (dir.join("truncated.png"), "truncated.png"),
        (dir.join("zero.png"), "zero.png"),
        (dir.join("absent.png"), "absent.png"),
        (fixtures.join("jpeg2000.dcm"), "1.2.840.10008.1.2.4.90"),
        (fixtures.join("huge_side.dcm"), "huge_side.dcm"),
        (fixtures.join("corrupt.dcm"), "corrupt.dcm"),
        (fixtures.join("empty.dcm"), "empty.dcm"),
    ];
    let out_dir = dir.join("out");
    let mut args = vec!["segment".to_string(), "samples/us_0000.png".to_string()];
    args.extend(cases.iter().map(|(p, _)| p.display().to_string()));
    args.extend(["samples/endo_0001.png", "--prompt", "lesion", "--out"].map(String::from));
    args.push(out_dir.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = edgeseg(&args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), cases.len(), "{err}");
    for ((_, needle), line) in cases.iter().zip(&errors) {
        assert!(line.contains(needle), "`{line}` lacks `{needle}`");
    }
    for good in ["us_0000", "endo_0001"] {
        assert!(
            out_dir.join(format!("{good}_mask.png")).exists(),
            "{good} not processed"
        );
        assert!(
            out_dir.join(format!("{good}.json")).exists(),
            "{good} summary missing"
        );
    }
}

#[test]
fn multi_frame_dicom_gives_one_mask_per_frame() {
    let out_dir = scratch("multiframe");
    let out = edgeseg(&[
        "segment",
        "tests/fixtures/dicom/multiframe_3.dcm",
        "--prompt",
        "lesion",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for f in 0..3 {
        assert!(out_dir.join(format!("multiframe_3_f{f}_mask.png")).exists());
        assert!(out_dir
            .join(format!("multiframe_3_f{f}_overlay.png"))
            .exists());
    }
    let summary: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out_dir.join("multiframe_3.json")).unwrap())
            .unwrap();
    assert_eq!(summary["frames"].as_array().unwrap().len(), 3);
}

#[test]
fn pixel_spacing_turns_area_into_square_millimetres() {
    let out_dir = scratch("spacing");
    for name in ["pixel_spacing", "us_regions_spacing"] {
        let path = format!("tests/fixtures/dicom/{name}.dcm");
        let out = edgeseg(&[
            "segment",
            &path,
            "--prompt",
            "lesion",
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let spacing = edgeseg::input::load(&root().join(&path)).unwrap().frames[0]
            .spacing()
            .expect("fixture has a spacing");
        let summary: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(out_dir.join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        let frame = &summary["frames"][0];
        let area_px = frame["area_px"].as_f64().unwrap();
        assert!(area_px > 0.0, "{name}: empty mask");
        let area_mm2 = frame["area_mm2"].as_f64().expect("area in mm²");
        assert!(
            (area_mm2 - area_px * spacing.pixel_area_mm2()).abs() < 1e-9,
            "{name}: {area_mm2}"
        );
    }
}

/// The demo profile with its output paths moved into `dir`.
fn demo_profile(dir: &Path) -> PathBuf {
    let text = fs::read_to_string(root().join("firmware-config/demo.toml"))
        .unwrap()
        .replace("out/demo", &dir.display().to_string());
    let path = dir.join("demo.toml");
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn run_drives_the_demo_through_every_sink_and_prints_the_summary() {
    let dir = scratch("run-demo");
    let profile = demo_profile(&dir);
    let out = edgeseg(&[
        "run",
        "--config",
        profile.to_str().unwrap(),
        "--frames",
        "15",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains(" 15 processed"), "{text}");
    for row in [
        "inference",
        "display end-to-end",
        "serial overhead",
        "telemetry emit",
    ] {
        assert!(text.contains(row), "no `{row}` row in {text}");
    }
    // The loopback receiver decoded every mask the serial sink sent, none rejected or lost.
    let log = fs::read_to_string(dir.join("serial.log")).unwrap();
    let masks = log.lines().filter(|l| l.starts_with("mask ")).count();
    assert_eq!(masks, 15, "{log}");
    let last = log.lines().last().unwrap();
    assert!(last.contains("masks=15") && last.contains("rejected=0") && last.contains("lost=0"));
    let lines = fs::read_to_string(dir.join("telemetry.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 15);
    let summary: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["processed"], 15);
    // The display is a view: its one-frame queue keeps the newest frame, and its PNG thread runs
    // in the idle scheduling class, so on a busy machine frame 0 may be replaced before it is
    // shown. The first frame it is offered is written, whichever that is.
    let snapshots = fs::read_dir(dir.join("display"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("display_"))
        .count();
    assert!(snapshots >= 1, "no display snapshot in {}", dir.display());
}

#[test]
fn run_refuses_a_profile_with_an_unknown_key() {
    let dir = scratch("run-bad-profile");
    let profile = demo_profile(&dir);
    let text = fs::read_to_string(&profile)
        .unwrap()
        .replace("fps = 30", "fsp = 30");
    fs::write(&profile, text).unwrap();
    let out = edgeseg(&["run", "--config", profile.to_str().unwrap()]);
    check_failure(&out, 2, &["demo.toml", "[source]", "unknown field `fsp`"]);
}

#[test]
fn run_refuses_a_missing_serial_port_at_start() {
    let dir = scratch("run-no-port");
    let profile = demo_profile(&dir);
    let args = ["run", "--config", profile.to_str().unwrap()];
    let out = edgeseg(&[&args[..], &["--serial", "/dev/ttyNOPE9", "--frames", "1"]].concat());
    check_failure(&out, 2, &["/dev/ttyNOPE9"]);
}

#[test]
fn listen_on_a_missing_port_is_one_error_line() {
    let out = edgeseg(&["listen", "--port", "/dev/ttyNOPE9"]);
    check_failure(&out, 2, &["/dev/ttyNOPE9", "cannot open"]);
}

#[test]
fn sigint_stops_the_run_cleanly_with_the_summary() {
    let dir = scratch("run-sigint");
    let profile = demo_profile(&dir);
    let child = Command::new(env!("CARGO_BIN_EXE_edgeseg"))
        .args([
            "run",
            "--config",
            profile.to_str().unwrap(),
            "--seconds",
            "60",
        ])
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until frames flow (the telemetry file has lines), then interrupt.
    let start = std::time::Instant::now();
    while fs::read_to_string(dir.join("telemetry.jsonl")).map_or(0, |t| t.lines().count()) < 3 {
        assert!(start.elapsed().as_secs() < 30, "no frames within 30 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: plain kill(2) on the child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(start.elapsed().as_secs() < 30);
    assert!(text.contains("processed"), "{text}");
    // The sinks were flushed: the receiver's summary closes the serial log.
    let log = fs::read_to_string(dir.join("serial.log")).unwrap();
    assert!(log.lines().last().unwrap().starts_with("summary:"), "{log}");
    assert!(dir.join("summary.json").exists());
}
