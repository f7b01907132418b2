//! Volume readers and the volume pipeline against the fixtures in `tests/fixtures/volumes/`
//! (made by `models/tools/volumes.py fixtures`; `expected.json` holds what nibabel and pydicom
//! report for each good file).

use std::path::{Path, PathBuf};

use edgeseg::volume::nifti::{self, write_mask};
use edgeseg::volume::{load, LoadOptions, Volume, VolumeError};
use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/volumes")
        .join(rel)
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn options_for(entry: &Value) -> LoadOptions {
    let spacing = (entry["format"] == "png-stack").then(|| {
        let s = floats(&entry["pixdim"]);
        [s[0], s[1], s[2]]
    });
    LoadOptions {
        volume_index: None,
        spacing,
    }
}

fn stats(v: &Volume) -> (f64, f64, f64) {
    let data = v.data();
    let min = data.iter().copied().fold(f32::INFINITY, f32::min);
    let max = data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mean = data.iter().map(|&x| f64::from(x)).sum::<f64>() / data.len() as f64;
    (f64::from(min), f64::from(max), mean)
}

#[test]
fn every_good_fixture_matches_nibabel() {
    let expected = expected();
    for (name, entry) in expected["good"].as_object().expect("good files") {
        let path = fixture(entry["file"].as_str().expect("file"));
        let v = load(&path, &options_for(entry)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let dims: Vec<usize> = floats(&entry["dims"]).iter().map(|&d| d as usize).collect();
        assert_eq!(v.dims().to_vec(), dims, "{name}");
        for (a, b) in v.spacing().iter().zip(floats(&entry["pixdim"])) {
            assert!((a - b).abs() < 1e-5, "{name}: spacing {:?}", v.spacing());
        }
        if let Some(affine) = entry.get("affine") {
            for (row, want) in v.affine().iter().zip(affine.as_array().expect("rows")) {
                for (a, b) in row.iter().zip(floats(want)) {
                    assert!((a - b).abs() < 1e-4, "{name}: affine {:?}", v.affine());
                }
            }
        }
        let (min, max, mean) = stats(&v);
        let want = |k: &str| entry[k].as_f64().expect("stat");
        assert!((min - want("min")).abs() < 1e-3, "{name}: min {min}");
        assert!((max - want("max")).abs() < 1e-3, "{name}: max {max}");
        assert!((mean - want("mean")).abs() < 1e-3, "{name}: mean {mean}");
        if let Some(mask) = entry.get("mask").and_then(Value::as_str) {
            let m = load(&fixture(mask), &LoadOptions::default()).expect("mask");
            assert_eq!(m.dims(), v.dims(), "{name}: mask grid");
            let voxels = m.data().iter().filter(|&&x| x > 0.5).count();
            assert_eq!(
                voxels as u64,
                entry["mask_voxels"].as_u64().expect("count"),
                "{name}"
            );
            let ml = voxels as f64 * v.voxel_volume_ml();
            let want_ml = entry["mask_volume_ml"].as_f64().expect("ml");
            assert!((ml - want_ml).abs() < 1e-3, "{name}: {ml} mL");
        }
    }
}

fn error_of(rel: &str, options: &LoadOptions) -> (VolumeError, String) {
    let path = fixture(rel);
    let err = load(&path, options).expect_err(rel);
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    (err, msg)
}

#[test]
fn every_bad_fixture_is_a_one_line_error_naming_the_file() {
    let none = LoadOptions::default();
    let (err, msg) = error_of("truncated.nii.gz", &none);
    assert!(matches!(err, VolumeError::Truncated { .. }), "{msg}");
    let (err, msg) = error_of("4d.nii.gz", &none);
    assert!(
        matches!(
            err,
            VolumeError::VolumeIndex {
                volumes: 2,
                index: None,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("--volume-index (0 to 1)"), "{msg}");
    let (_, msg) = error_of("degenerate_spacing.nii", &none);
    assert!(
        msg.contains("pixdim[1..=3]") && msg.contains("[0.0, "),
        "{msg}"
    );
    let (err, msg) = error_of("huge_dims.nii", &none);
    assert!(matches!(err, VolumeError::Grid { .. }), "{msg}");
    assert!(msg.contains("32767x32767x32767"), "{msg}");
    let (_, msg) = error_of("huge_dims_nifti2.nii", &none);
    assert!(msg.contains("NIfTI-2"), "{msg}");
}

#[test]
fn a_4d_file_gives_the_chosen_volume() {
    let path = fixture("4d.nii.gz");
    let pick = |i| {
        load(
            &path,
            &LoadOptions {
                volume_index: Some(i),
                spacing: None,
            },
        )
    };
    let (a, b) = (pick(0).expect("volume 0"), pick(1).expect("volume 1"));
    assert_eq!(a.dims(), [24, 20, 16]);
    assert_ne!(a.data(), b.data());
    let err = pick(2).expect_err("out of range").to_string();
    assert!(
        err.contains("volume index 2 is out of range: the file holds 2 volumes"),
        "{err}"
    );
}

#[test]
fn the_same_data_in_every_encoding_reads_the_same() {
    let read = |rel| load(&fixture(rel), &LoadOptions::default()).expect(rel);
    let (f64v, f32v, be) = (
        read("float64.nii"),
        read("float32.nii.gz"),
        read("big_endian.nii"),
    );
    assert_eq!(f64v.data(), f32v.data());
    let rounded: Vec<f32> = f64v.data().iter().map(|v| v.round()).collect();
    let diff = rounded
        .iter()
        .zip(be.data())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff <= 1.0, "int16 big-endian vs float64: {diff}");
}

#[test]
fn masks_written_and_read_back_keep_grid_and_voxels() {
    let mask = load(&fixture("lesion_mask.nii.gz"), &LoadOptions::default()).expect("mask");
    let bits: Vec<u8> = mask.data().iter().map(|&v| u8::from(v > 0.5)).collect();
    let dir = std::env::temp_dir().join(format!("edgeseg-volume-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for name in ["m.nii", "m.nii.gz"] {
        let out = dir.join(name);
        write_mask(&out, mask.dims(), mask.spacing(), &mask.affine(), &bits).expect("write");
        let back = nifti::read(&out, None).expect("read back");
        assert_eq!(back.dims(), mask.dims());
        assert_eq!(back.data(), mask.data());
        for (r, s) in back.affine().iter().zip(mask.affine()) {
            for (a, b) in r.iter().zip(s) {
                assert!((a - b).abs() < 1e-5);
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The pipeline's geometry end to end on the held-out volumes (some anisotropic): a stand-in
/// model that answers with the reference mask, cut from the model grid where the pipeline's
/// patch lies, must give the reference mask back on the input grid.
#[test]
fn an_oracle_model_gives_the_reference_masks_back() {
    use edgeseg::volume::normalize::Normalization;
    use edgeseg::volume::patch::{Importance, Patch};
    use edgeseg::volume::resample::{map_position, resample, resampled_dims, Interpolation};
    use edgeseg::volume::segment::{segment_volume, Click, Point, VolumeConfig};

    let config = VolumeConfig {
        spacing: [1.0, 1.0, 1.0],
        normalization: Normalization::Percentile {
            low: 0.5,
            high: 99.5,
        },
        patch: [48, 48, 48],
        overlap: 0.5,
        threshold: 0.5,
        importance: Importance::Gaussian,
    };
    let lines = std::fs::read_to_string(fixture("eval/samples.jsonl")).expect("samples");
    for line in lines.lines() {
        let sample: Value = serde_json::from_str(line).expect("sample");
        let volume = load(
            &fixture(&format!(
                "eval/{}",
                sample["volume"].as_str().expect("volume")
            )),
            &LoadOptions::default(),
        )
        .expect("volume");
        let reference = load(
            &fixture(&format!("eval/{}", sample["mask"].as_str().expect("mask"))),
            &LoadOptions::default(),
        )
        .expect("mask");
        let point = floats(&sample["points"][0]);
        let click = Click {
            pos: [point[0], point[1], point[2]],
            positive: true,
        };

        let dims = volume.dims();
        let grid = resampled_dims(dims, volume.spacing(), config.spacing).expect("grid");
        let on_grid = resample(reference.data(), dims, grid, Interpolation::Linear).expect("mask");
        let patch = Patch::centred(map_position(click.pos, dims, grid), config.patch);
        let mut oracle = |input: &[f32], points: &[Point]| -> Result<Vec<f32>, String> {
            assert_eq!(points.len(), 1);
            assert_eq!(input.len(), patch.voxels());
            Ok(patch.crop(&on_grid, grid, 0.0).expect("crop"))
        };
        let out = segment_volume(&volume, &[click], &config, &mut oracle).expect("segment");

        let truth: Vec<bool> = reference.data().iter().map(|&v| v > 0.5).collect();
        let both = out
            .mask
            .iter()
            .zip(&truth)
            .filter(|(&m, &t)| m == 1 && t)
            .count();
        let dice = 2.0 * both as f64 / (out.voxels + truth.iter().filter(|&&t| t).count()) as f64;
        assert!(dice > 0.95, "{line}: Dice {dice:.3}");
        let expected_ml = sample_ml(&reference, &volume);
        assert!(
            (out.volume_ml - expected_ml).abs() < 0.1 * expected_ml,
            "{line}"
        );
    }
}

fn sample_ml(mask: &Volume, volume: &Volume) -> f64 {
    mask.data().iter().filter(|&&v| v > 0.5).count() as f64 * volume.voxel_volume_ml()
}
