//! What `edgeseg::model::conv` swaps in, against tract's operators, one operator per plan, on
//! one thread, in the same process, on the same input:
//! - the U-Nets' 3×3 convolution layers and their ReLU (`Conv3x3`), shapes from
//!   `models/tools/unet_common.py` (3×3, stride 1, padding 1), named
//!   `conv3x3/<cin>-<cout>@<size>/<runtime>`; multiply–adds cin · cout · 9 · size²;
//! - products with a constant matrix and their bias (`ConstProduct`), shapes from the
//!   transformer graphs and the SAM-3D decoder, named `product/<einsum> <m>x<k>x<n>/<runtime>`;
//!   multiply–adds m · k · n;
//! - attention products of two computed tensors (`BatchedProduct`), shapes from the CLIPSeg
//!   image graph and the SAM encoder, named `batched/<einsum> <batches>x<m>x<k>x<n>/<runtime>`;
//!   multiply–adds batches · m · k · n.
//!
//! Runtime is `tract` or `edgeseg`; GFLOP/s = 2 · multiply–adds / time. On CPUs without AVX2
//! and FMA nothing is swapped and only the `tract` benchmarks run.
//!
//! `cargo bench --bench conv` (about two minutes), or a filter: `cargo bench --bench conv -- 128-64`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
use tract_core::ops::einsum::EinSum;
use tract_core::ops::math::{Add, Max};
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

/// Products (einsum, m, k, n; `a` has length 1) with a bias along n where `bias`: the
/// transformers' linear layers (CLIPSeg, SAM, SAM-3D) and the SAM-3D decoder's per-voxel head.
const PRODUCTS: [(&str, usize, usize, usize, bool); 9] = [
    ("akm,kn->mn", 65, 64, 64, true),
    ("amk,kn->mn", 65, 64, 64, true),
    ("akm,kn->mn", 216, 96, 96, true),
    ("akm,kn->mn", 1728, 64, 32, true),
    ("mk,kn->mn", 1024, 32, 128, true),
    ("mk,kn->mn", 256, 384, 96, true),
    ("k,nk->n", 1, 64, 64, true),
    ("akm,kn->mn", 13824, 16, 24, false),
    ("m,n->mn", 13824, 1, 24, false),
];

/// Attention products (einsum, lengths of the batch axes a and b, m, k, n): Q·Kᵀ and the
/// weighted sum of V of the CLIPSeg image graph (4 heads of 65 tokens) and the SAM encoder
/// (25 windows × 2 heads and 9 windows × 4 heads of 49 tokens).
const BATCHED: [(&str, usize, usize, usize, usize, usize); 4] = [
    ("mbk,nbk->bmn", 1, 4, 65, 16, 65),
    ("bmk,kbn->mbn", 1, 4, 65, 65, 16),
    ("ambk,anbk->abmn", 25, 2, 49, 16, 49),
    ("abmk,akbn->ambn", 9, 4, 49, 49, 24),
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

/// The plan of one product and its bias: tract's, or with edgeseg's product swapped in.
fn product_plan(
    expr: &str,
    m: usize,
    k: usize,
    n: usize,
    bias: bool,
    swap: bool,
) -> Option<Arc<TypedSimplePlan>> {
    let axes: AxesMapping = expr.parse().unwrap();
    let len = |c: char| match c {
        'm' => m,
        'k' => k,
        'n' => n,
        _ => 1,
    };
    let shape = |letters: &str| letters.chars().map(len).collect::<TVec<usize>>();
    let (inputs, output) = expr.split_once("->").unwrap();
    let (a, b) = inputs.split_once(',').unwrap();
    let mut model = TypedModel::default();
    let x = model.add_source("x", f32::fact(shape(a))).unwrap();
    let (b_shape, out_shape) = (shape(b), shape(output));
    let w = tensor1(&values(b_shape.iter().product()))
        .into_shape(&b_shape)
        .unwrap();
    let w = model.add_const("w", w).unwrap();
    let mut y = model
        .wire_node("product", EinSum::new(axes, f32::datum_type()), &[x, w])
        .unwrap();
    if bias {
        let along_n: TVec<usize> = out_shape
            .iter()
            .zip(output.chars())
            .map(|(&d, c)| if c == 'n' { d } else { 1 })
            .collect();
        let b = tensor1(&values(n)).into_shape(&along_n).unwrap();
        let b = model.add_const("b", b).unwrap();
        y = model
            .wire_node("bias", TypedBinOp(Box::new(Add), None), &[y[0], b])
            .unwrap();
    }
    model.select_output_outlets(&y).unwrap();
    if swap && edgeseg::model::conv::replace(&mut model).unwrap() == 0 {
        return None;
    }
    Some(model.into_optimized().unwrap().into_runnable().unwrap())
}

fn product(c: &mut Criterion) {
    let mut group = c.benchmark_group("product");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sampling_mode(SamplingMode::Flat);
    for (expr, m, k, n, bias) in PRODUCTS {
        let a = expr.split(',').next().unwrap();
        let a_shape: TVec<usize> = a
            .chars()
            .map(|c| match c {
                'm' => m,
                'k' => k,
                _ => 1,
            })
            .collect();
        let input = tensor1(&values(m * k))
            .into_shape(&a_shape)
            .unwrap()
            .into_tvalue();
        for (runtime, swap) in [("tract", false), ("edgeseg", true)] {
            let Some(plan) = product_plan(expr, m, k, n, bias, swap) else {
                continue;
            };
            let name = format!("product/{expr} {m}x{k}x{n}/{runtime}");
            group.bench_function(name, |b| b.iter(|| plan.run(tvec!(input.clone())).unwrap()));
        }
    }
    group.finish();
}

fn batched(c: &mut Criterion) {
    let mut group = c.benchmark_group("batched");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sampling_mode(SamplingMode::Flat);
    for (expr, a, b, m, k, n) in BATCHED {
        let len = |c: char| match c {
            'a' => a,
            'b' => b,
            'm' => m,
            'k' => k,
            _ => n,
        };
        let shape = |letters: &str| letters.chars().map(len).collect::<TVec<usize>>();
        let (x, y) = expr.split_once("->").unwrap().0.split_once(',').unwrap();
        let operand = |letters: &str| {
            let shape = shape(letters);
            let values = values(shape.iter().product());
            tensor1(&values).into_shape(&shape).unwrap().into_tvalue()
        };
        let inputs = tvec!(operand(x), operand(y));
        for (runtime, swap) in [("tract", false), ("edgeseg", true)] {
            let mut model = TypedModel::default();
            let sources = [("x", x), ("y", y)]
                .map(|(name, letters)| model.add_source(name, f32::fact(shape(letters))).unwrap());
            let op = EinSum::new(expr.parse().unwrap(), f32::datum_type());
            let product = model.wire_node("product", op, &sources).unwrap();
            model.select_output_outlets(&product).unwrap();
            if swap && edgeseg::model::conv::replace(&mut model).unwrap() == 0 {
                continue;
            }
            let plan = model.into_optimized().unwrap().into_runnable().unwrap();
            let name = format!("batched/{expr} {}x{m}x{k}x{n}/{runtime}", a * b);
            group.bench_function(name, |bench| {
                bench.iter(|| plan.run(inputs.clone()).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, conv, product, batched);
criterion_main!(benches);
