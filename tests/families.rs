//! Every model family through the command line on real models and real inputs: what a user
//! gets (masks that cover the target, label maps, NIfTI masks with volumes, adapter switches)
//! and what a mistake gets (one error line naming the problem, never a panic).
//!
//! Quality floors here are loose on purpose (the demo models' held-out scores are in their
//! manifests); they catch a runtime that maps clicks, classes or voxels to the wrong place.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use edgeseg::eval::read_mask;
use edgeseg::postprocess::dice;

use common::{check_failure, edgeseg, root, scratch, text};

/// Held-out phantoms (a seed no model was trained on) with their masks and samples.jsonl.
fn phantoms(name: &str, count: usize) -> PathBuf {
    let dir = scratch(name).join("data");
    edgeseg::phantom::write_dataset(&dir, count, 256, 256, 999).unwrap();
    dir
}

fn summary(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn conditioned_model_follows_the_task_and_names_unknown_ones() {
    let data = phantoms("cond", 2);
    let out_dir = scratch("cond-out");
    let out = edgeseg(&[
        "segment",
        "--model",
        "models/unet-conditioned-phantom",
        "--task",
        "lesion",
        "--modality",
        "US",
        "--out",
        out_dir.to_str().unwrap(),
        data.join("us_0000.png").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let predicted = read_mask(&out_dir.join("us_0000_mask.png")).unwrap();
    let truth = read_mask(&data.join("us_0000_lesion.png")).unwrap();
    let d = dice(&predicted, &truth).unwrap();
    assert!(d > 0.6, "lesion Dice {d}");
    assert_eq!(
        summary(&out_dir.join("us_0000.json"))["prompt"],
        "lesion (US)"
    );

    let out = edgeseg(&[
        "segment",
        "--model",
        "models/unet-conditioned-phantom",
        "--task",
        "tumour",
        "--modality",
        "US",
        data.join("us_0000.png").to_str().unwrap(),
    ]);
    check_failure(
        &out,
        2,
        &["unknown task `tumour`", "lesion, polyp, tool, vessel"],
    );
    let out = edgeseg(&[
        "segment",
        "--model",
        "models/unet-conditioned-phantom",
        "--task",
        "lesion",
        data.join("us_0000.png").to_str().unwrap(),
    ]);
    check_failure(&out, 2, &["needs --modality"]);
}

#[test]
fn plain_model_writes_a_label_map_with_class_areas() {
    let data = phantoms("plain", 2);
    let out_dir = scratch("plain-out");
    let out = edgeseg(&[
        "segment",
        "--model",
        "models/unet-plain-phantom",
        "--out",
        out_dir.to_str().unwrap(),
        data.join("us_0000.png").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = summary(&out_dir.join("us_0000.json"));
    let frame = &s["frames"][0];
    let areas = &frame["class_areas"];
    let total: u64 = ["background", "lesion", "vessel"]
        .iter()
        .map(|c| areas[c].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(total, 256 * 256, "{areas}");
    // The label map's lesion pixels are where the phantom's lesion is.
    let labels = image::open(out_dir.join(frame["label_map"].as_str().unwrap()))
        .unwrap()
        .to_luma8();
    let lesion: Vec<bool> = labels.pixels().map(|p| p.0[0] == 1).collect();
    let predicted = edgeseg::frame::Mask::new(256, 256, lesion).unwrap();
    let truth = read_mask(&data.join("us_0000_lesion.png")).unwrap();
    let d = dice(&predicted, &truth).unwrap();
    assert!(d > 0.6, "lesion Dice {d}");

    let out = edgeseg(&[
        "segment",
        "--model",
        "models/unet-plain-phantom",
        "--prompt",
        "lesion",
        data.join("us_0000.png").to_str().unwrap(),
    ]);
    check_failure(&out, 2, &["family `plain`", "takes no text prompt"]);
}

/// The ultrasound samples of a phantom folder, copied to their own folder (the plain model
/// knows only ultrasound classes; eval refuses a class the model lacks).
fn ultrasound_only(data: &Path) -> PathBuf {
    let dir = data.parent().unwrap().join("us");
    fs::create_dir_all(&dir).unwrap();
    let index = fs::read_to_string(data.join("samples.jsonl")).unwrap();
    let mut kept = String::new();
    for line in index.lines().filter(|l| l.contains("\"ultrasound\"")) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for key in ["image", "mask"] {
            let f = v[key].as_str().unwrap();
            fs::copy(data.join(f), dir.join(f)).unwrap();
        }
        kept += line;
        kept.push('\n');
    }
    fs::write(dir.join("samples.jsonl"), kept).unwrap();
    dir
}

#[test]
fn eval_scores_the_image_families_on_held_out_phantoms() {
    let data = phantoms("eval", 4);
    let us = ultrasound_only(&data);
    for (model, data, floor) in [
        ("models/unet-conditioned-phantom", &data, 0.6),
        ("models/unet-plain-phantom", &us, 0.5),
        ("models/sam-phantom", &data, 0.5),
    ] {
        let out = edgeseg(&["eval", "--model", model, "--data", data.to_str().unwrap()]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(0), "{t}");
        let all: f64 = t
            .lines()
            .find(|l| l.starts_with("all "))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no `all` row: {t}"));
        assert!(all > floor, "{model}: mean Dice {all}\n{t}");
    }
    let out = edgeseg(&[
        "eval",
        "--model",
        "models/unet-plain-phantom",
        "--data",
        data.to_str().unwrap(),
    ]);
    check_failure(&out, 2, &["class `polyp` is not one of the model's labels"]);
}

#[test]
fn adapters_switch_the_task_without_reloading_and_unknown_ones_are_named() {
    use edgeseg::model::{FrameModel, Package, Precision, Request};
    let package = Package::open(&root().join("models/clipseg-phantom-adapters")).unwrap();
    let request = Request {
        prompt: Some("round lesion".into()),
        ..Request::default()
    };
    let mut model = FrameModel::open(package, Precision::F32, 1, &request).unwrap();
    let frame = edgeseg::phantom::generate(edgeseg::phantom::Modality::Ultrasound, 128, 128, 7)
        .unwrap()
        .frame;
    let names: Vec<String> = {
        let m = model.package().manifest();
        m.adapters.iter().map(|a| a.name.clone()).collect()
    };
    assert!(names.len() >= 2, "{names:?}");
    let mut probabilities = Vec::new();
    for name in &names {
        model.set_adapter(name).unwrap();
        assert!(model.label().ends_with(&format!("[{name}]")));
        let seg = model.segment(&frame).unwrap();
        probabilities.push(seg.best().segmentation.probability.clone());
    }
    let diff = probabilities[0]
        .iter()
        .zip(&probabilities[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff > 1e-3, "two adapters gave the same output");
    // Back to the first: the same output as before, bit for bit.
    model.set_adapter(&names[0]).unwrap();
    assert_eq!(
        model
            .segment(&frame)
            .unwrap()
            .best()
            .segmentation
            .probability,
        probabilities[0]
    );
    let err = model.set_adapter("nope").unwrap_err().to_string();
    assert!(
        err.contains("unknown adapter `nope`") && err.contains(&names[1]),
        "{err}"
    );
}

#[test]
fn run_switches_adapters_from_a_control_file() {
    let dir = scratch("adapter-run");
    let control = dir.join("control");
    let names: Vec<String> = {
        let p =
            edgeseg::model::Package::open(&root().join("models/clipseg-phantom-adapters")).unwrap();
        p.manifest()
            .adapters
            .iter()
            .map(|a| a.name.clone())
            .collect()
    };
    fs::write(&control, format!("adapter {}\nadapter nope\n", names[1])).unwrap();
    let summary_path = dir.join("summary.json");
    let out = edgeseg(&[
        "run",
        "--model",
        "models/clipseg-phantom-adapters",
        "--prompt",
        "round lesion",
        "--control",
        control.to_str().unwrap(),
        "--display",
        "none",
        "--serial",
        "none",
        "--frames",
        "20",
        "--summary",
        summary_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = summary(&summary_path);
    let switches = s["adapter_switches"].as_array().unwrap();
    assert_eq!(switches.len(), 2, "{s}");
    assert_eq!(switches[0]["adapter"], names[1].as_str());
    assert!(switches[0]["error"].is_null());
    assert!(switches[1]["error"]
        .as_str()
        .unwrap()
        .contains("unknown adapter"));
}

fn volumes() -> PathBuf {
    root().join("tests/fixtures/volumes")
}

#[test]
fn sam3d_segments_a_nifti_lesion_from_one_click_and_keeps_the_affine() {
    use edgeseg::volume::{load, LoadOptions};
    let out_dir = scratch("sam3d-out");
    let out = edgeseg(&[
        "segment",
        "--model",
        "models/sam3d-phantom",
        "--point",
        "31,18,23",
        "--out",
        out_dir.to_str().unwrap(),
        volumes().join("lesion.nii.gz").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = summary(&out_dir.join("lesion.json"));
    let options = LoadOptions::default();
    let mask = load(&out_dir.join("lesion_mask.nii.gz"), &options).unwrap();
    let input = load(&volumes().join("lesion.nii.gz"), &options).unwrap();
    let truth = load(&volumes().join("lesion_mask.nii.gz"), &options).unwrap();
    assert_eq!(mask.dims(), input.dims());
    assert_eq!(mask.affine(), input.affine());
    let voxels = mask.data().iter().filter(|&&v| v > 0.5).count();
    assert_eq!(s["voxels"].as_u64().unwrap() as usize, voxels);
    let ml = s["volume_ml"].as_f64().unwrap();
    assert!(
        (ml - voxels as f64 * 0.8 * 0.8 * 2.0 / 1000.0).abs() < 1e-6,
        "{ml}"
    );
    let both = mask
        .data()
        .iter()
        .zip(truth.data())
        .filter(|(&p, &t)| p > 0.5 && t > 0.5)
        .count();
    let truth_voxels = truth.data().iter().filter(|&&t| t > 0.5).count();
    let d = 2.0 * both as f64 / (voxels + truth_voxels) as f64;
    assert!(d > 0.6, "lesion Dice {d}");
}

#[test]
fn sam3d_reads_series_and_sweeps_and_refuses_bad_volumes_clearly() {
    let run = |extra: &[&str]| {
        let out_dir = scratch("sam3d-bad");
        let mut args = vec![
            "segment",
            "--model",
            "models/sam3d-phantom",
            "--out",
            out_dir.to_str().unwrap(),
        ];
        let owned: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend(owned.iter().map(String::as_str));
        edgeseg(&args)
    };
    let v = |f: &str| volumes().join(f).to_str().unwrap().to_string();
    // A DICOM series folder and a PNG sweep with its spacing.
    assert_eq!(
        run(&["--point", "32,32,12", &v("series")]).status.code(),
        Some(0)
    );
    let out = run(&[
        "--point",
        "24,20,16",
        "--spacing",
        "0.5,0.5,1.0",
        &v("sweep"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Bad volumes: exit 1, one line naming the file and the problem.
    check_failure(
        &run(&["--point", "1,1,1", &v("truncated.nii.gz")]),
        1,
        &["truncated.nii.gz"],
    );
    check_failure(
        &run(&["--point", "1,1,1", &v("4d.nii.gz")]),
        1,
        &["4d.nii.gz", "--volume-index"],
    );
    assert_eq!(
        run(&["--point", "10,10,8", "--volume-index", "1", &v("4d.nii.gz")])
            .status
            .code(),
        Some(0)
    );
    check_failure(
        &run(&["--point", "1,1,1", &v("degenerate_spacing.nii")]),
        1,
        &["degenerate_spacing.nii"],
    );
    check_failure(
        &run(&["--point", "1,1,1", &v("huge_dims.nii")]),
        1,
        &["huge_dims.nii"],
    );
    check_failure(&run(&["--point", "1,1,1", &v("sweep")]), 1, &["--spacing"]);
    // Clicks outside the volume, and 2D clicks for a volume model.
    check_failure(
        &run(&["--point", "100,5,5", &v("lesion.nii.gz")]),
        1,
        &["outside the volume"],
    );
    check_failure(
        &run(&["--point", "5,5", &v("lesion.nii.gz")]),
        2,
        &["X,Y,Z"],
    );
}

#[test]
fn eval_scores_sam3d_per_volume() {
    let out = edgeseg(&[
        "eval",
        "--model",
        "models/sam3d-phantom",
        "--data",
        volumes().join("eval").to_str().unwrap(),
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert_eq!(t.lines().filter(|l| l.starts_with('v')).count(), 6, "{t}");
    let all: f64 = t
        .lines()
        .find(|l| l.starts_with("all "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(all > 0.7, "mean Dice {all}\n{t}");
}

#[test]
fn interactive_sam_reads_prompt_lines_and_reports_bad_ones() {
    let data = phantoms("sam-int", 2);
    let out_dir = scratch("sam-int-out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgeseg"))
        .args([
            "segment",
            "--model",
            "models/sam-phantom",
            "--interactive",
            "--out",
            out_dir.to_str().unwrap(),
            data.join("us_0000.png").to_str().unwrap(),
        ])
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"128,128\n128,128 40,40,0\nbox 10,10,200,200\n999,5\nnonsense\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{}", text(&out));
    assert!(lines[0]["encoder_ms"].as_f64().unwrap() > 0.0);
    for l in &lines[1..] {
        assert!(l["decoder_ms"].as_f64().unwrap() > 0.0, "{l}");
        assert!(out_dir.join(l["mask"].as_str().unwrap()).exists());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("prompt 3: click (999, 5) lies outside"),
        "{err}"
    );
    assert!(err.contains("prompt 4: `nonsense`"), "{err}");
    assert!(!err.contains("panicked"));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn sam_click_segments_the_lesion_and_reports_the_output_it_chose() {
    let data = phantoms("sam", 2);
    let truth = read_mask(&data.join("us_0000_lesion.png")).unwrap();
    let (x, y) = edgeseg::eval::interior_point(&truth).unwrap();
    let out_dir = scratch("sam-out");
    let point = format!("{x},{y}");
    let out = edgeseg(&[
        "segment",
        "--model",
        "models/sam-phantom",
        "--point",
        &point,
        "--out",
        out_dir.to_str().unwrap(),
        data.join("us_0000.png").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let predicted = read_mask(&out_dir.join("us_0000_mask.png")).unwrap();
    let d = dice(&predicted, &truth).unwrap();
    assert!(d > 0.6, "lesion Dice {d}");
    // One click: SAM's rule picks the best of the multimask outputs 1..3 by predicted IoU.
    let frame = &summary(&out_dir.join("us_0000.json"))["frames"][0];
    let iou: Vec<f64> = frame["iou_predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let chosen = frame["chosen"].as_u64().unwrap() as usize;
    assert_eq!(iou.len(), 4);
    assert!((1..4).contains(&chosen));
    assert!(
        (1..4).all(|k| iou[k] <= iou[chosen]),
        "{iou:?} chose {chosen}"
    );

    let out = edgeseg(&[
        "segment",
        "--model",
        "models/sam-phantom",
        data.join("us_0000.png").to_str().unwrap(),
    ]);
    check_failure(&out, 2, &["--point"]);
}
