//! From model output to the full-frame mask of a 320x240 frame, as the live loop does per frame:
//!
//! - `postprocess/vlsm_segment`: the bundled VLSM's 128x128 logits (the committed parity output
//!   of `clipseg-phantom`'s image graph) → sigmoid → bilinear resample to the frame → threshold;
//! - `postprocess/measure`: area, bounding box and mean probability of that segmentation;
//! - `postprocess/plain_label_map`: the 3-class argmax label map of `unet-plain-phantom`'s
//!   logits (its parity output) at frame size;
//! - `postprocess/roi_restore`: a segmentation of the ultrasound fan's crop written back into
//!   the full frame (outside the fan cleared);
//! - `smoothing/ema`, `smoothing/hysteresis`: temporal smoothing of the full-frame probability,
//!   two alternating frames.
//!
//! `cargo bench --bench postprocess` (add `-- --quick` for a short run).

use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use edgeseg::model::Package;
use edgeseg::phantom::{self, Modality};
use edgeseg::postprocess::{self, Activation};
use edgeseg::roi::{Roi, RoiConfig, RoiMode};
use edgeseg::smoothing::{Smoother, SmoothingConfig, SmoothingMode};

const WIDTH: u32 = 320;
const HEIGHT: u32 = 240;
/// Side of both models' logit planes.
const SIDE: u32 = 128;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Little-endian f32 values of a parity fixture file.
fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

fn postprocess(c: &mut Criterion) {
    let fixtures = root().join("tests/fixtures/parity");
    let vlsm = Package::open(&root().join("models/clipseg-phantom")).expect("bundled VLSM");
    let output = &vlsm.manifest().output;
    let (activation, threshold) = (output.activation, output.threshold);
    let preprocessor = vlsm.preprocessor().expect("preprocessor");
    let logits = read_f32(&fixtures.join("clipseg-phantom/image-f32.logits.bin"));
    let segment = |w: u32, h: u32| {
        postprocess::segment(
            &logits,
            SIDE,
            SIDE,
            1,
            activation,
            threshold,
            preprocessor.geometry(w, h),
            w,
            h,
        )
        .expect("segmentation")
    };
    let plain_logits = read_f32(&fixtures.join("unet-plain-phantom/model-f32.logits.bin"));
    let plain = Package::open(&root().join("models/unet-plain-phantom")).expect("plain package");
    let plain_preprocessor = plain.preprocessor().expect("preprocessor");

    let mut group = c.benchmark_group("postprocess");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    assert_eq!(activation, Activation::Sigmoid);
    group.bench_function("vlsm_segment", |b| {
        b.iter(|| segment(black_box(WIDTH), HEIGHT))
    });
    let seg = segment(WIDTH, HEIGHT);
    group.bench_function("measure", |b| {
        b.iter(|| postprocess::measure(black_box(&seg), None))
    });
    group.bench_function("plain_label_map", |b| {
        b.iter(|| {
            postprocess::label_map(
                black_box(&plain_logits),
                (SIDE, SIDE),
                3,
                plain_preprocessor.geometry(WIDTH, HEIGHT),
                (WIDTH, HEIGHT),
            )
            .expect("label map")
        })
    });
    let frame = phantom::generate(Modality::Ultrasound, WIDTH, HEIGHT, 7)
        .expect("phantom")
        .frame;
    let mut roi = Roi::new(&RoiConfig {
        mode: RoiMode::Fan,
        ..RoiConfig::default()
    })
    .expect("roi config");
    let region = roi.apply(&frame).expect("roi").region;
    let rect = region.rect();
    let crop_seg = segment(rect.width, rect.height);
    group.bench_function("roi_restore", |b| {
        b.iter(|| {
            region
                .restore_segmentation(black_box(&crop_seg))
                .expect("restore")
        })
    });
    group.finish();

    let mut group = c.benchmark_group("smoothing");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    let planes = [
        seg.probability.clone(),
        seg.probability.iter().map(|p| p * 0.9).collect::<Vec<_>>(),
    ];
    let configs = [
        (
            "ema",
            SmoothingConfig {
                mode: SmoothingMode::Ema,
                alpha: Some(0.5),
                ..SmoothingConfig::default()
            },
        ),
        (
            "hysteresis",
            SmoothingConfig {
                mode: SmoothingMode::Hysteresis,
                high: Some(0.6),
                low: Some(0.4),
                ..SmoothingConfig::default()
            },
        ),
    ];
    for (name, config) in configs {
        let mut smoother = Smoother::new(&config).expect("smoothing config");
        let mut n = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                smoother
                    .apply(black_box(&planes[n % 2]), WIDTH, HEIGHT, threshold)
                    .expect("smoothed mask")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, postprocess);
criterion_main!(benches);
