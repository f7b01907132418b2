//! The U-Nets' 3×3 convolution layers, one convolution and its ReLU per plan, on one thread:
//! tract's operator against `Conv3x3`, which `edgeseg::model::conv` swaps in for it, in the
//! same process, on the same input. Shapes are the U-Nets' (`models/tools/unet_common.py`):
//! 3×3, stride 1, padding 1.
//!
//! Benchmarks are named `conv3x3/<cin>-<cout>@<size>/<runtime>`, runtime `tract` or
//! `edgeseg`. The multiply–adds of a layer are cin · cout · 9 · size²: GFLOP/s = 2 · that /
//! time. On CPUs without AVX2 and FMA nothing is swapped and only the `tract` benchmarks run.
//!
//! `cargo bench --bench conv` (about a minute), or a filter: `cargo bench --bench conv -- 128-64`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
use tract_core::ops::math::Max;
use tract_core::ops::nn::DataFormat;

/// The 3×3 layers (input channels, output channels, height = width) of the U-Nets.
const CONV3X3: [(usize, usize, usize); 6] = [
    (16, 16, 128),
    (32, 16, 128),
    (32, 32, 64),
    (64, 64, 32),
    (128, 64, 32),
    (96, 96, 16),
];

/// Values in −1..1 that do not repeat with any small period.
fn values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 2003) as f32 / 1001.5 - 1.0)
        .collect()
}

/// 3×3 windows, stride 1, padding 1.
fn spec(cin: usize, cout: usize) -> PoolSpec {
    PoolSpec {
        data_format: DataFormat::NCHW,
        kernel_shape: tvec!(3, 3),
        padding: PaddingSpec::Explicit(tvec!(1, 1), tvec!(1, 1)),
        dilations: None,
        strides: None,
        input_channels: cin,
        output_channels: cout,
    }
}

/// The plan of one layer and its ReLU: tract's, or with edgeseg's convolution swapped in
/// (`None` where nothing is swapped: a CPU without AVX2 and FMA).
fn plan(cin: usize, cout: usize, size: usize, swap: bool) -> Option<Arc<TypedSimplePlan>> {
    let mut model = TypedModel::default();
    let x = model
        .add_source("x", f32::fact([1, cin, size, size]))
        .unwrap();
    let k = tensor1(&values(cout * cin * 9))
        .into_shape(&[cout, cin, 3, 3])
        .unwrap();
    let k = model.add_const("k", k).unwrap();
    let b = model.add_const("b", tensor1(&values(cout))).unwrap();
    let zero = model.add_const("zero", tensor4(&[[[[0f32]]]])).unwrap();
    let conv = Conv::new(spec(cin, cout), KernelFormat::OIHW, 1, None);
    let y = model.wire_node("conv", conv, &[x, k, b]).unwrap()[0];
    let relu = TypedBinOp(Box::new(Max), None);
    let out = model.wire_node("relu", relu, &[y, zero]).unwrap();
    model.select_output_outlets(&out).unwrap();
    if swap && edgeseg::model::conv::replace(&mut model).unwrap() == 0 {
        return None;
    }
    Some(model.into_optimized().unwrap().into_runnable().unwrap())
}

fn conv(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sampling_mode(SamplingMode::Flat);
    for (cin, cout, size) in CONV3X3 {
        let input = tensor1(&values(cin * size * size))
            .into_shape(&[1, cin, size, size])
            .unwrap()
            .into_tvalue();
        for (runtime, swap) in [("tract", false), ("edgeseg", true)] {
            let Some(plan) = plan(cin, cout, size, swap) else {
                continue;
            };
            let name = format!("conv3x3/{cin}-{cout}@{size}/{runtime}");
            group.bench_function(name, |b| b.iter(|| plan.run(tvec!(input.clone())).unwrap()));
        }
    }
    group.finish();
}

criterion_group!(benches, conv);
criterion_main!(benches);
