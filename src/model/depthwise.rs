//! The depthwise 3×3, stride 1, padding 1 convolution of f32 CHW (or NCHW, N = 1) tensors,
//! swapped into decluttered graphs for tract's.
//!
//! The SAM encoder's convolutional stages and its MLPs' local mixing run a 3×3 filter per
//! channel. tract's `DepthWiseConv` took 1.3–1.6 ms of the encoder at 2–9 GFLOP/s (operator
//! profile, 1 thread, x86-64). [`Depthwise3x3`] computes each output row from the three input
//! rows it reads: one flat loop per row sums the three taps of each of the three rows over the
//! row's interior (the compiler vectorises it: AVX2 where the CPU has it, NEON on Arm), and
//! the two edge columns are done apart.
//!
//! Only f32 convolutions with one group per channel, 3×3 windows, stride 1, dilation 1 and one
//! zero of padding on every side, with a constant kernel and bias, are replaced; the others
//! (the encoder's two strided ones among them) keep tract's operator. Summation order differs
//! from tract's, so results agree within float rounding.

use tract_core::internal::*;
use tract_core::ops::cnn::conv::{Conv, KernelFormat};
use tract_core::ops::nn::DataFormat;

use super::pool::square_windows;
use super::rewrite::{replace_chains, same_bits};

/// A 3×3 filter per channel, stride 1, padding 1, with a bias per channel.
#[derive(Debug, Clone)]
pub struct Depthwise3x3 {
    /// `[channels][3][3]`.
    weights: Arc<[f32]>,
    /// `[channels]`.
    bias: Arc<[f32]>,
}

/// Equal when they compute the same: the same bits of every parameter.
impl PartialEq for Depthwise3x3 {
    fn eq(&self, other: &Depthwise3x3) -> bool {
        same_bits(&self.weights, &other.weights) && same_bits(&self.bias, &other.bias)
    }
}

impl Eq for Depthwise3x3 {}

impl Op for Depthwise3x3 {
    fn name(&self) -> StaticName {
        "Depthwise3x3".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Depthwise3x3 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape();
        let rank = shape.len();
        ensure!(
            (rank == 3 || (rank == 4 && shape[0] == 1)) && shape[rank - 3] == self.bias.len(),
            "Depthwise3x3 of {} channels on {shape:?}",
            self.bias.len()
        );
        let (h, w) = (shape[rank - 2], shape[rank - 1]);
        // SAFETY: `filter` writes every value of the output.
        let mut output = unsafe { Tensor::uninitialized::<f32>(shape)? };
        if output.len() > 0 {
            let x = input.try_as_plain_ram()?;
            let mut y = output.try_as_plain_ram_mut()?;
            filter(x.as_slice::<f32>()?, y.as_slice_mut::<f32>()?, h, w, self);
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Depthwise3x3 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let values: TDim = inputs[0].shape.iter().product();
        Ok(tvec!((Cost::FMA(f32::datum_type()), values * 9)))
    }

    as_op!();
}

/// Filters every `h × w` plane of `x` into `y`, with AVX2 and FMA where the CPU has them (the
/// body is the same; the wider vectors are the compiler's).
fn filter(x: &[f32], y: &mut [f32], h: usize, w: usize, op: &Depthwise3x3) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        unsafe { filter_avx2(x, y, h, w, op) };
        return;
    }
    filter_any(x, y, h, w, op);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn filter_avx2(x: &[f32], y: &mut [f32], h: usize, w: usize, op: &Depthwise3x3) {
    filter_any(x, y, h, w, op);
}

#[inline(always)]
fn filter_any(x: &[f32], y: &mut [f32], h: usize, w: usize, op: &Depthwise3x3) {
    let planes = x.chunks_exact(h * w).zip(y.chunks_exact_mut(h * w));
    for ((x, y), (taps, &bias)) in planes.zip(op.weights.chunks_exact(9).zip(&*op.bias)) {
        for (r, out) in y.chunks_exact_mut(w).enumerate() {
            out.fill(bias);
            for (dy, taps) in taps.chunks_exact(3).enumerate() {
                // Input row r + dy − 1, where there is one (the padding adds nothing).
                let Some(row) = (r + dy).checked_sub(1).filter(|&i| i < h) else {
                    continue;
                };
                add_row(out, &x[row * w..][..w], [taps[0], taps[1], taps[2]]);
            }
        }
    }
}

/// `out[x] += k0·row[x − 1] + k1·row[x] + k2·row[x + 1]`, zero outside the row.
#[inline(always)]
fn add_row(out: &mut [f32], row: &[f32], [k0, k1, k2]: [f32; 3]) {
    let w = out.len();
    if w == 1 {
        out[0] += k1 * row[0];
        return;
    }
    out[0] += k1 * row[0] + k2 * row[1];
    out[w - 1] += k0 * row[w - 2] + k1 * row[w - 1];
    let neighbours = row.iter().zip(&row[1..]).zip(&row[2..]);
    for (o, ((a, b), c)) in out[1..w - 1].iter_mut().zip(neighbours) {
        *o += k0 * a + k1 * b + k2 * c;
    }
}

/// The operator for `node` if it is an eligible depthwise convolution.
fn eligible(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Depthwise3x3>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    let channels = conv.input_channels();
    let input = model.outlet_fact(node.inputs[0])?;
    let layout = match spec.data_format {
        DataFormat::CHW => input.rank() == 3,
        DataFormat::NCHW => input
            .shape
            .as_concrete()
            .is_some_and(|s| s.len() == 4 && s[0] == 1),
        _ => false,
    };
    let eligible = conv.q_params.is_none()
        && conv.group == channels
        && conv.output_channels() == channels
        && conv.kernel_fmt == KernelFormat::OIHW
        && layout
        && square_windows(spec, 3, 1, 1)
        && input.datum_type == f32::datum_type();
    let (kernel, bias) = (
        &model.outlet_fact(node.inputs[1])?.konst,
        &model.outlet_fact(node.inputs[2])?.konst,
    );
    let (Some(kernel), Some(bias), true) = (kernel, bias, eligible) else {
        return Ok(None);
    };
    let f32_params =
        kernel.datum_type() == f32::datum_type() && bias.datum_type() == f32::datum_type();
    if !f32_params || kernel.shape() != [channels, 1, 3, 3] || ![1, channels].contains(&bias.len())
    {
        return Ok(None);
    }
    let bias = bias.try_as_plain_ram()?;
    let bias = bias.as_slice::<f32>()?;
    let kernel = kernel.try_as_plain_ram()?;
    Ok(Some(Depthwise3x3 {
        weights: kernel.as_slice::<f32>()?.into(),
        bias: (0..channels).map(|c| bias[c % bias.len()]).collect(),
    }))
}

/// Replaces every eligible depthwise convolution of `model` (a decluttered model) with
/// [`Depthwise3x3`]; returns how many were replaced.
pub fn replace(model: &mut TypedModel) -> TractResult<usize> {
    replace_chains(model, |model, node| {
        Ok(eligible(model, node)?.map(|op| {
            (
                Box::new(op) as Box<dyn TypedOp>,
                tvec![node.inputs[0]],
                node.id.into(),
            )
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{assert_close, run};
    use tract_core::ops::cnn::{PaddingSpec, PoolSpec};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 131) % 2003) as f32 / 1001.5 - 1.0)
            .collect()
    }

    /// One depthwise 3×3 convolution of `shape` (`format`) at `stride`, as tract's `Conv`.
    fn graph(shape: &[usize], format: DataFormat, stride: usize) -> TypedModel {
        let c = shape[shape.len() - 3];
        let spec = PoolSpec {
            data_format: format,
            kernel_shape: tvec!(3, 3),
            padding: PaddingSpec::Explicit(tvec!(1, 1), tvec!(1, 1)),
            dilations: None,
            strides: Some(tvec!(stride, stride)),
            input_channels: c,
            output_channels: c,
        };
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(shape)).unwrap();
        let k = tensor1(&values(c * 9, 1))
            .into_shape(&[c, 1, 3, 3])
            .unwrap();
        let k = model.add_const("k", k).unwrap();
        let b = model.add_const("b", tensor1(&values(c, 2))).unwrap();
        let conv = Conv::new(spec, KernelFormat::OIHW, c, None);
        let y = model.wire_node("conv", conv, &[x, k, b]).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    #[test]
    fn every_shape_matches_tract_s_convolution() {
        let shapes: [(&[usize], DataFormat); 5] = [
            (&[3, 1, 1], DataFormat::CHW),
            (&[2, 1, 7], DataFormat::CHW),
            (&[2, 5, 2], DataFormat::CHW),
            (&[4, 13, 17], DataFormat::CHW),
            (&[1, 5, 16, 16], DataFormat::NCHW),
        ];
        for (shape, format) in shapes {
            let mut model = graph(shape, format, 1);
            let x = tensor1(&values(shape.iter().product(), 3))
                .into_shape(shape)
                .unwrap();
            let want = run(model.clone(), &x, None);
            assert_eq!(replace(&mut model).unwrap(), 1, "{shape:?}");
            assert!(model
                .nodes()
                .iter()
                .any(|n| n.op().name() == "Depthwise3x3"));
            let got = run(model, &x, None);
            assert_close(&got, &want, &format!("{shape:?}"));
        }
    }

    #[test]
    fn strided_convolutions_keep_tract_s_operator() {
        let mut model = graph(&[4, 8, 8], DataFormat::CHW, 2);
        assert_eq!(replace(&mut model).unwrap(), 0);
    }
}
