//! Layer normalisation as one f32 operator, swapped into decluttered graphs for the six that
//! tract makes of it.
//!
//! Every transformer graph here normalises its tokens (and SAM's neck its NCHW channels), and
//! tract's declutter turns each `LayerNormalization` into a sum over the axis, a scaling by
//! 1/n, a subtraction, its `RmsNorm`, a multiplication by the scale and an addition of the
//! shift: six passes, and on the CLIPSeg image graph, whose tokens are normalised along a
//! strided axis (`[1, 64, 65]`, channels first), 30–42 µs per normalisation of 4160 values
//! (operator profile, 1 thread, x86-64). [`LayerNorm`] reads the input twice (mean, then
//! variance) and writes the output once. Along a strided axis it goes row after row of the
//! normalised axis, keeping a mean and a scale per position, so every loop reads contiguous
//! values and the compiler vectorises both forms (AVX2 where the CPU has it, NEON on Arm).
//!
//! Only the exact chain on an f32 tensor is replaced, where every node in it but the last is
//! read by the next alone, and where the scale and the shift (either may be missing) are
//! constants along the normalised axis. The variance is computed from the centred values, as
//! onnxruntime's `LayerNormalization` does, so results agree within float rounding.

use tract_core::internal::*;
use tract_core::ops::binary::BinMiniOp;
use tract_core::ops::math::{Add, Mul, Sub};
use tract_core::ops::nn::{Reduce, Reducer, RmsNorm};

use super::rewrite::{
    along_axis, bin_op, constant_operand, only_reader, replace_chains, same_bits,
};

/// Lanes of the vectorised loops.
const LANES: usize = 8;

/// `(x − mean) / sqrt(var + eps) · scale + shift` along one axis of an f32 tensor.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    axis: usize,
    eps: f32,
    /// One value per position along the axis.
    scale: Arc<[f32]>,
    /// One value per position along the axis.
    shift: Arc<[f32]>,
}

/// Equal when they compute the same: the same axis and bits of every parameter.
impl PartialEq for LayerNorm {
    fn eq(&self, other: &LayerNorm) -> bool {
        self.axis == other.axis
            && self.eps.to_bits() == other.eps.to_bits()
            && same_bits(&self.scale, &other.scale)
            && same_bits(&self.shift, &other.shift)
    }
}

impl Eq for LayerNorm {}

impl Op for LayerNorm {
    fn name(&self) -> StaticName {
        "LayerNorm".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("axis: {}, eps: {}", self.axis, self.eps)])
    }

    op_as_typed_op!();
}

impl EvalOp for LayerNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape();
        ensure!(
            shape.get(self.axis) == Some(&self.scale.len()),
            "LayerNorm over axis {} of {} values, input {:?}",
            self.axis,
            self.scale.len(),
            shape
        );
        let inner: usize = shape[self.axis + 1..].iter().product();
        // SAFETY: `normalize` writes every value of the output.
        let mut output = unsafe { Tensor::uninitialized::<f32>(shape)? };
        if output.len() > 0 {
            let x = input.try_as_plain_ram()?;
            let mut y = output.try_as_plain_ram_mut()?;
            normalize(x.as_slice::<f32>()?, y.as_slice_mut::<f32>()?, inner, self);
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for LayerNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// Normalises `x` into `y` (both `[outer, n, inner]`, n the length of `norm`'s axis), with
/// AVX2 and FMA where the CPU has them (the body is the same; the wider vectors are the
/// compiler's).
fn normalize(x: &[f32], y: &mut [f32], inner: usize, norm: &LayerNorm) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        unsafe { normalize_avx2(x, y, inner, norm) };
        return;
    }
    normalize_any(x, y, inner, norm);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn normalize_avx2(x: &[f32], y: &mut [f32], inner: usize, norm: &LayerNorm) {
    normalize_any(x, y, inner, norm);
}

#[inline(always)]
fn normalize_any(x: &[f32], y: &mut [f32], inner: usize, norm: &LayerNorm) {
    let block = norm.scale.len() * inner;
    let (mut mean, mut r) = (vec![0f32; inner], vec![0f32; inner]);
    for (x, y) in x.chunks_exact(block).zip(y.chunks_exact_mut(block)) {
        if inner == 1 {
            row(x, y, norm);
        } else {
            rows(x, y, &mut mean, &mut r, norm);
        }
    }
}

/// One contiguous row (the normalised axis is the last).
#[inline(always)]
fn row(x: &[f32], y: &mut [f32], norm: &LayerNorm) {
    let n = x.len() as f32;
    let mean = lane_sum(x.iter().copied()) / n;
    let var = lane_sum(x.iter().map(|v| (v - mean) * (v - mean))) / n;
    let r = 1.0 / (var + norm.eps).sqrt();
    for (((y, x), scale), shift) in y.iter_mut().zip(x).zip(&*norm.scale).zip(&*norm.shift) {
        *y = (x - mean) * r * scale + shift;
    }
}

/// The sum of `values` in [`LANES`] partial sums, so the loop vectorises.
#[inline(always)]
fn lane_sum(values: impl Iterator<Item = f32>) -> f32 {
    let mut sums = [0f32; LANES];
    for (i, v) in values.enumerate() {
        sums[i % LANES] += v;
    }
    sums.iter().sum()
}

/// One block whose normalised axis has stride `inner` > 1: `n` rows of `inner` values, each
/// position normalised over the rows. Row after row, so every loop reads contiguous values;
/// `mean` and `r` are `inner` long.
#[inline(always)]
fn rows(x: &[f32], y: &mut [f32], mean: &mut [f32], r: &mut [f32], norm: &LayerNorm) {
    let n = norm.scale.len() as f32;
    let inner = mean.len();
    mean.fill(0.0);
    for row in x.chunks_exact(inner) {
        mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
    }
    mean.iter_mut().for_each(|m| *m /= n);
    r.fill(0.0);
    for row in x.chunks_exact(inner) {
        for ((s, v), m) in r.iter_mut().zip(row).zip(&*mean) {
            *s += (v - m) * (v - m);
        }
    }
    r.iter_mut()
        .for_each(|s| *s = 1.0 / (*s / n + norm.eps).sqrt());
    let pairs = x.chunks_exact(inner).zip(y.chunks_exact_mut(inner));
    for ((row, out), (scale, shift)) in pairs.zip(norm.scale.iter().zip(&*norm.shift)) {
        for (((y, v), m), r) in out.iter_mut().zip(row).zip(&*mean).zip(&*r) {
            *y = (v - m) * r * scale + shift;
        }
    }
}

/// The only reader of `node` (its id) when it is a `B` of `node` and a constant along `axis`
/// (of `n` values, in a rank-`rank` tensor), with that constant's values.
fn per_axis<B: BinMiniOp>(
    model: &TypedModel,
    node: &TypedNode,
    rank: usize,
    axis: usize,
    n: usize,
) -> TractResult<Option<(usize, Arc<[f32]>)>> {
    let Some(next) = only_reader(model, node)?.filter(|next| bin_op::<B>(next)) else {
        return Ok(None);
    };
    let values =
        constant_operand(model, next)?.and_then(|(konst, _)| along_axis(&konst, rank, axis, n));
    Ok(values.map(|values| (next.id, values)))
}

/// The chain ending in the `RmsNorm` `node` when it is a layer normalisation: the operator and
/// its input, and the outlet it replaces (with the scale and shift that follow, if any).
fn layer_norm(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(LayerNorm, OutletId, OutletId)>> {
    let Some(rms) = node.op_as::<RmsNorm>() else {
        return Ok(None);
    };
    let fact = model.outlet_fact(node.inputs[0])?;
    let Some(shape) = fact.shape.as_concrete() else {
        return Ok(None);
    };
    let (rank, axis) = (shape.len(), rms.axis);
    let (Some(&n), Ok(eps)) = (shape.get(axis), rms.eps.cast_to_scalar::<f32>()) else {
        return Ok(None);
    };
    if fact.datum_type != f32::datum_type() || n == 0 {
        return Ok(None);
    }
    // x − sum(x) · (1/n), each read by the next alone.
    let sub = model.node(node.inputs[0].node);
    if !bin_op::<Sub>(sub) || only_reader(model, sub)?.map(|r| r.id) != Some(node.id) {
        return Ok(None);
    }
    let (x, mean) = (sub.inputs[0], model.node(sub.inputs[1].node));
    let Some((inverse, sum)) = constant_operand(model, mean)? else {
        return Ok(None);
    };
    let sum = model.node(sum.node);
    let reduce = sum.op_as::<Reduce>();
    let is_sum = reduce.is_some_and(|r| r.reducer == Reducer::Sum && r.axes[..] == [axis]);
    let is_mean = bin_op::<Mul>(mean)
        && inverse.len() == 1
        && inverse.cast_to_scalar::<f32>()? == 1.0 / n as f32
        && only_reader(model, mean)?.map(|r| r.id) == Some(sub.id);
    if !is_sum
        || !is_mean
        || sum.inputs[0] != x
        || only_reader(model, sum)?.map(|r| r.id) != Some(mean.id)
    {
        return Ok(None);
    }
    // Then a constant scale and a constant shift, if they follow.
    let mut norm = LayerNorm {
        axis,
        eps,
        scale: vec![1.0; n].into(),
        shift: vec![0.0; n].into(),
    };
    let mut last = node;
    if let Some((next, scale)) = per_axis::<Mul>(model, last, rank, axis, n)? {
        norm.scale = scale;
        last = model.node(next);
    }
    if let Some((next, shift)) = per_axis::<Add>(model, last, rank, axis, n)? {
        norm.shift = shift;
        last = model.node(next);
    }
    Ok(Some((norm, x, last.id.into())))
}

/// Replaces every layer normalisation chain of `model` (a decluttered model) with
/// [`LayerNorm`]; returns how many were replaced.
pub fn replace(model: &mut TypedModel) -> TractResult<usize> {
    replace_chains(model, |model, node| {
        Ok(layer_norm(model, node)?
            .map(|(op, x, output)| (Box::new(op) as Box<dyn TypedOp>, tvec![x], output)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{assert_close, ops, run};
    use tract_core::ops::binary::TypedBinOp;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 + seed * 11) % 29) as f32 * 0.3 - 4.0 + seed as f32)
            .collect()
    }

    /// Layer normalisation of `[outer, n, inner]` `x` along its middle axis, in f64.
    fn reference(
        x: &[f32],
        n: usize,
        inner: usize,
        eps: f32,
        scale: &[f32],
        shift: &[f32],
    ) -> Vec<f32> {
        let mut y = vec![0f32; x.len()];
        for (o, block) in x.chunks_exact(n * inner).enumerate() {
            for j in 0..inner {
                let at = |c: usize| f64::from(block[c * inner + j]);
                let mean = (0..n).map(at).sum::<f64>() / n as f64;
                let var = (0..n).map(|c| (at(c) - mean).powi(2)).sum::<f64>() / n as f64;
                for c in 0..n {
                    let v = (at(c) - mean) / (var + f64::from(eps)).sqrt();
                    y[o * n * inner + c * inner + j] =
                        (v * f64::from(scale[c]) + f64::from(shift[c])) as f32;
                }
            }
        }
        y
    }

    #[test]
    fn every_layout_matches_a_double_precision_normalisation() {
        for (outer, n, inner) in [
            (1, 1, 1),
            (3, 64, 1),
            (2, 7, 1),
            (2, 5, 13),
            (1, 64, 65),
            (2, 32, 256),
        ] {
            let norm = LayerNorm {
                axis: 1,
                eps: 1e-5,
                scale: values(n, 1).into(),
                shift: values(n, 2).into(),
            };
            let x = values(outer * n * inner, 3);
            let mut y = vec![f32::NAN; x.len()];
            normalize(&x, &mut y, inner, &norm);
            let want = reference(&x, n, inner, norm.eps, &norm.scale, &norm.shift);
            assert_close(&y, &want, &format!("{outer}×{n}×{inner}"));
        }
    }

    /// tract's decluttered form of a layer normalisation of `x` along `axis`, with `scale` and
    /// `shift` constants when given; returns the output.
    fn chain(
        model: &mut TypedModel,
        x: OutletId,
        axis: usize,
        scale: Option<Tensor>,
        shift: Option<Tensor>,
    ) -> OutletId {
        let rank = model.outlet_fact(x).unwrap().rank();
        let n = model.outlet_fact(x).unwrap().shape[axis]
            .to_usize()
            .unwrap();
        let bin = |op: Box<dyn BinMiniOp>| TypedBinOp(op, None);
        let sum = model
            .wire_node("sum", Reduce::new(tvec![axis], Reducer::Sum), &[x])
            .unwrap();
        let inverse = tensor0(1.0 / n as f32).broadcast_into_rank(rank).unwrap();
        let inverse = model.add_const("inverse", inverse).unwrap();
        let mean = model
            .wire_node("mean", bin(Box::new(Mul)), &[sum[0], inverse])
            .unwrap();
        let centred = model
            .wire_node("centred", bin(Box::new(Sub)), &[x, mean[0]])
            .unwrap();
        let rms = RmsNorm {
            axis,
            eps: rctensor0(1e-5f32),
        };
        let mut out = model.wire_node("rms", rms, &centred).unwrap()[0];
        for (name, konst, op) in [
            ("scale", scale, bin(Box::new(Mul))),
            ("shift", shift, bin(Box::new(Add))),
        ] {
            if let Some(konst) = konst {
                let konst = model.add_const(name, konst).unwrap();
                out = model
                    .wire_node(format!("{name}d"), op, &[konst, out])
                    .unwrap()[0];
            }
        }
        out
    }

    #[test]
    fn the_chain_becomes_one_operator_that_computes_the_same() {
        // Channels first (the CLIPSeg image graph's form), with a scale and a shift.
        let n = 6;
        let per_channel = |seed| Tensor::from_shape(&[1, n, 1], &values(n, seed)).unwrap();
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, n, 10])).unwrap();
        let y = chain(&mut model, x, 1, Some(per_channel(1)), Some(per_channel(2)));
        model.select_output_outlets(&[y]).unwrap();
        let input = Tensor::from_shape(&[2, n, 10], &values(120, 3)).unwrap();
        let before = run(model.clone(), &input, None);
        assert_eq!(replace(&mut model).unwrap(), 1);
        assert_eq!(ops(&model), ["Source", "LayerNorm"]);
        assert_close(&run(model, &input, None), &before, "channels first");

        // The last axis, a scalar shift.
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([3, 8])).unwrap();
        let y = chain(
            &mut model,
            x,
            1,
            Some(Tensor::from_shape(&[1, 8], &values(8, 4)).unwrap()),
            Some(Tensor::from_shape(&[1, 1], &[0.5f32]).unwrap()),
        );
        model.select_output_outlets(&[y]).unwrap();
        let input = Tensor::from_shape(&[3, 8], &values(24, 5)).unwrap();
        let before = run(model.clone(), &input, None);
        assert_eq!(replace(&mut model).unwrap(), 1);
        assert_eq!(ops(&model), ["Source", "LayerNorm"]);
        assert_close(&run(model, &input, None), &before, "last axis");
    }

    #[test]
    fn a_shared_step_or_a_scale_across_the_axis_stays_outside() {
        // The centred values are also an output of the model: nothing is replaced.
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 4, 3])).unwrap();
        let y = chain(&mut model, x, 1, None, None);
        let centred = model.node(model.node(y.node).inputs[0].node).id.into();
        model.select_output_outlets(&[y, centred]).unwrap();
        assert_eq!(replace(&mut model).unwrap(), 0);

        // A scale that varies along another axis stays a multiplication after the operator.
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 4, 3])).unwrap();
        let across = Tensor::from_shape(&[1, 4, 3], &values(12, 6)).unwrap();
        let y = chain(&mut model, x, 1, Some(across), None);
        model.select_output_outlets(&[y]).unwrap();
        let input = Tensor::from_shape(&[2, 4, 3], &values(24, 7)).unwrap();
        let before = run(model.clone(), &input, None);
        assert_eq!(replace(&mut model).unwrap(), 1);
        assert_eq!(ops(&model), ["Source", "LayerNorm", "Const", "Mul"]);
        assert_close(&run(model, &input, None), &before, "scale across the axis");
    }
}
