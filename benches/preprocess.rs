//! Frame preparation before inference, on 320x240 phantom frames (ultrasound and endoscopy):
//!
//! - `preprocess/<package>/<modality>`: the package's own preprocessing (resize, normalise,
//!   planar RGB into a reused buffer) plus the input tensor built from it, as each 2D family
//!   does per frame; `clipseg-phantom` is the bundled VLSM (128x128 stretch), `sam-phantom` the
//!   longest-side resize to 256 with padding.
//! - `roi/<mode>/crop`: the region-of-interest crop of the live loop with the region already
//!   known (the per-frame path); `roi/<mode>/detect_and_crop`: the same after a reset, so the
//!   fan or border is detected first (the first frame, and every `redetect_every` frames).
//!
//! `cargo bench --bench preprocess` (add `-- --quick` for a short run, or a name filter such
//! as `-- roi`).

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use edgeseg::model::Package;
use edgeseg::phantom::{self, Modality};
use edgeseg::roi::{Roi, RoiConfig, RoiMode};
use tract_onnx::prelude::Tensor;

const WIDTH: u32 = 320;
const HEIGHT: u32 = 240;

fn frames() -> [(Modality, edgeseg::frame::Frame); 2] {
    [Modality::Ultrasound, Modality::Endoscopy].map(|modality| {
        let frame = phantom::generate(modality, WIDTH, HEIGHT, 7)
            .expect("phantom")
            .frame;
        (modality, frame)
    })
}

fn preprocess(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut group = c.benchmark_group("preprocess");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for name in ["clipseg-phantom", "sam-phantom"] {
        let package = Package::open(&root.join(name)).expect("model package");
        let preprocessor = package.preprocessor().expect("preprocessor");
        let shape = [
            1,
            3,
            preprocessor.height() as usize,
            preprocessor.width() as usize,
        ];
        for (modality, frame) in frames() {
            let mut pixels = Vec::new();
            group.bench_function(format!("{name}/{modality}"), |b| {
                b.iter(|| {
                    let geometry = preprocessor.run(black_box(&frame), &mut pixels);
                    let tensor = Tensor::from_shape(&shape, &pixels).expect("input tensor");
                    (geometry, tensor)
                })
            });
        }
    }
    group.finish();
}

fn roi(c: &mut Criterion) {
    let mut group = c.benchmark_group("roi");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for ((modality, frame), mode) in frames().into_iter().zip([RoiMode::Fan, RoiMode::Border]) {
        let config = RoiConfig {
            mode,
            redetect_every: Some(0),
            ..RoiConfig::default()
        };
        let mut roi = Roi::new(&config).expect("roi config");
        let rect = roi.apply(&frame).expect("roi").region.rect();
        println!("roi {mode} on the {modality} phantom: {rect} of {WIDTH}x{HEIGHT}");
        group.bench_function(format!("{mode}/crop"), |b| {
            b.iter(|| roi.apply(black_box(&frame)).expect("roi").frame.width())
        });
        group.bench_function(format!("{mode}/detect_and_crop"), |b| {
            b.iter(|| {
                roi.reset();
                roi.apply(black_box(&frame)).expect("roi").frame.width()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, preprocess, roi);
criterion_main!(benches);
