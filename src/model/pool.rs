//! A 2×2, stride 2 max pooling of f32 NCHW tensors, swapped into decluttered graphs for
//! tract's `MaxPool`.
//!
//! The U-Nets pool 2×2 with stride 2 between levels. tract's own 2×2 kernel vectorises stride
//! 1 only; at stride 2 it takes a scalar path that tests both window bounds at every output
//! pixel, and the three pools took 1.2–1.8 ms of the 18 ms U-Net (operator profile, 1 thread,
//! x86-64). [`MaxPool2x2`] takes the larger of each pair of rows in one flat loop the compiler
//! vectorises, then the larger of each pair of columns.
//!
//! Only f32, NCHW or CHW, 2×2 windows, stride 2, no padding, no dilation and no index output is
//! replaced; any other pooling keeps tract's operator. An odd last row or column is dropped, as
//! ONNX's floor rounding of the output size does. The comparison is tract's (`a < b`), so a NaN
//! is kept only where it comes first in its window.

use tract_core::internal::*;
use tract_core::ops::cnn::{MaxPool, PaddingSpec, PoolSpec};
use tract_core::ops::nn::DataFormat;

/// Max pooling over 2×2 windows with stride 2 of an f32 tensor whose last two axes are H, W.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MaxPool2x2;

impl Op for MaxPool2x2 {
    fn name(&self) -> StaticName {
        "MaxPool2x2".into()
    }

    op_as_typed_op!();
}

impl EvalOp for MaxPool2x2 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape();
        ensure!(
            shape.len() >= 2,
            "MaxPool2x2 on a tensor of rank {}",
            shape.len()
        );
        let (h, w) = (shape[shape.len() - 2], shape[shape.len() - 1]);
        let mut out_shape: TVec<usize> = shape.into();
        let rank = out_shape.len();
        out_shape[rank - 2] = h / 2;
        out_shape[rank - 1] = w / 2;
        let mut output = Tensor::zero::<f32>(&out_shape)?;
        if h >= 2 && w >= 2 {
            let input = input.try_as_plain_ram()?;
            let mut out = output.try_as_plain_ram_mut()?;
            pool_planes(input.as_slice::<f32>()?, h, w, out.as_slice_mut::<f32>()?);
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for MaxPool2x2 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.to_tvec();
        let rank = shape.len();
        ensure!(rank >= 2);
        for axis in rank - 2..rank {
            shape[axis] = shape[axis].clone() / 2;
        }
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// Pools each `h`×`w` plane of `input` into the `(h / 2)`×`(w / 2)` planes of `output`.
fn pool_planes(input: &[f32], h: usize, w: usize, output: &mut [f32]) {
    let (oh, ow) = (h / 2, w / 2);
    let mut pairs = vec![0f32; 2 * ow];
    for (plane, out) in input
        .chunks_exact(h * w)
        .zip(output.chunks_exact_mut(oh * ow))
    {
        for (oy, out_row) in out.chunks_exact_mut(ow).enumerate() {
            let top = &plane[2 * oy * w..][..2 * ow];
            let bottom = &plane[(2 * oy + 1) * w..][..2 * ow];
            for ((p, &a), &b) in pairs.iter_mut().zip(top).zip(bottom) {
                *p = larger(a, b);
            }
            for (o, pair) in out_row.iter_mut().zip(pairs.chunks_exact(2)) {
                *o = larger(pair[0], pair[1]);
            }
        }
    }
}

/// tract's comparison: `b` where `a < b`, else `a`.
#[inline(always)]
fn larger(a: f32, b: f32) -> f32 {
    if a < b {
        b
    } else {
        a
    }
}

/// Whether `spec` slides undilated 2D `size`×`size` windows at stride `stride` over its input,
/// with `pad` zeros on every side (ONNX's defaults: stride and dilation 1).
pub fn square_windows(spec: &PoolSpec, size: usize, stride: usize, pad: usize) -> bool {
    let all = |v: &Option<TVec<usize>>, n: usize| {
        v.as_ref().map_or(n == 1, |v| v.iter().all(|&d| d == n))
    };
    let padded = match &spec.padding {
        PaddingSpec::Valid => pad == 0,
        PaddingSpec::Explicit(before, after) => before.iter().chain(after).all(|&p| p == pad),
        _ => false,
    };
    spec.kernel_shape[..] == [size, size]
        && all(&spec.strides, stride)
        && all(&spec.dilations, 1)
        && padded
}

/// Replaces every eligible max pooling of `model` (a decluttered model) with [`MaxPool2x2`];
/// returns how many were replaced.
pub fn replace(model: &mut TypedModel) -> TractResult<usize> {
    super::rewrite::swap_ops(model, |model, node| {
        let Some(pool) = node.op_as::<MaxPool>() else {
            return Ok(None);
        };
        let spec = &pool.pool_spec;
        let eligible = pool.with_index_outputs.is_none()
            && matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
            && square_windows(spec, 2, 2, 0)
            && model.outlet_fact(node.inputs[0])?.datum_type == f32::datum_type();
        Ok(eligible.then(|| Box::new(MaxPool2x2) as Box<dyn TypedOp>))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_graph(c: usize, h: usize, w: usize, stride: usize) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, c, h, w])).unwrap();
        let pool = MaxPool {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec!(2, 2),
                padding: PaddingSpec::Valid,
                dilations: None,
                strides: Some(tvec!(stride, stride)),
                input_channels: c,
                output_channels: c,
            },
            with_index_outputs: None,
        };
        let out = model.wire_node("pool", pool, &[x]).unwrap();
        model.select_output_outlets(&out).unwrap();
        model
    }

    fn run(model: TypedModel, x: &Tensor) -> Tensor {
        let plan = model.into_runnable().unwrap();
        plan.run(tvec!(x.clone().into_tvalue()))
            .unwrap()
            .remove(0)
            .into_tensor()
    }

    #[test]
    fn matches_tract_s_pooling_on_even_and_odd_sizes() {
        for (c, h, w) in [(3, 8, 8), (2, 5, 7), (4, 6, 33), (1, 2, 2)] {
            let values: Vec<f32> = (0..c * h * w)
                .map(|i| ((i * 7919 % 211) as f32) - 105.0)
                .collect();
            let x = tensor1(&values).into_shape(&[1, c, h, w]).unwrap();
            let tract = pool_graph(c, h, w, 2);
            let mut ours = tract.clone();
            assert_eq!(replace(&mut ours).unwrap(), 1);
            assert_eq!(run(ours, &x), run(tract, &x), "{c}×{h}×{w}");
        }
    }

    #[test]
    fn a_single_row_pools_to_an_empty_output() {
        // tract's own operator divides by zero here (its output planes are empty).
        let mut model = pool_graph(2, 1, 4, 2);
        replace(&mut model).unwrap();
        let out = run(model, &Tensor::zero::<f32>(&[1, 2, 1, 4]).unwrap());
        assert_eq!(out.shape(), [1, 2, 0, 2]);
    }

    #[test]
    fn other_strides_keep_tract_s_operator() {
        let mut model = pool_graph(2, 8, 8, 1);
        assert_eq!(replace(&mut model).unwrap(), 0);
    }

    #[test]
    fn windows_are_read_with_onnx_defaults() {
        let spec = |strides: Option<TVec<usize>>, padding: PaddingSpec| PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec!(3, 3),
            padding,
            dilations: None,
            strides,
            input_channels: 1,
            output_channels: 1,
        };
        let one = PaddingSpec::Explicit(tvec!(1, 1), tvec!(1, 1));
        assert!(square_windows(&spec(None, one.clone()), 3, 1, 1));
        assert!(!square_windows(&spec(None, one.clone()), 3, 2, 1));
        assert!(!square_windows(
            &spec(Some(tvec!(2, 1)), one.clone()),
            3,
            2,
            1
        ));
        assert!(!square_windows(&spec(None, one), 3, 1, 0));
        assert!(square_windows(
            &spec(Some(tvec!(2, 2)), PaddingSpec::Valid),
            3,
            2,
            0
        ));
        assert!(!square_windows(
            &spec(None, PaddingSpec::SameUpper),
            3,
            1,
            1
        ));
        assert!(!square_windows(&spec(None, PaddingSpec::Valid), 2, 1, 0));
    }
}
