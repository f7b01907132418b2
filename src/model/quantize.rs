//! A vectorised f32 → u8/i8 `QuantizeLinear`, swapped into optimised plans for tract's own.
//!
//! An int8 graph quantizes every activation that feeds a quantized matrix product (the QDQ
//! form, [precision.md](../../docs/precision.md)). tract computes each element on its own,
//! rounding with a branch per value, and the operator profile put those quantizations at
//! 20–38 % of every int8 graph. [`QuantizeF32`] runs the same arithmetic in one flat loop the
//! compiler vectorises (AVX2 where the CPU has it): `clamp(round_half_even(x · scale) + zero
//! point)`, with `scale` the reciprocal tract already folded in. Its output is bit-identical to
//! tract's wherever x · scale is within ±2³¹ (tested over rounding ties, saturation and NaN);
//! beyond, infinities included, it saturates where tract's integer addition wraps.
//!
//! Only f32 inputs are replaced; tract's operator stays for f16 and i32 inputs.
//!
//! In the QDQ form nearly every quantization is read by one `DequantizeLinear` and nothing else:
//! the pair only rounds the activation to the 8-bit grid, in two passes over memory and an
//! 8-bit tensor between them. [`fuse_dequantize`] makes such a pair one [`QuantizeF32`] with
//! [`Dequantize`], which writes `(level − zero point) · scale` in f32 from the same loop,
//! bit-identical to the two operators. That map is a [`Grid`]; where such a pair reads a direct
//! convolution's output, `conv::direct` takes it into the convolution's store instead.

use tract_core::internal::*;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearI8, QuantizeLinearU8};

/// `QuantizeLinear` of an f32 tensor to u8 or i8.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeF32 {
    /// Multiplies the input (tract keeps the reciprocal of ONNX's scale).
    pub scale: f32,
    pub zero_point: i32,
    /// `U8` or `I8`: the levels' type.
    pub output: DatumType,
    /// When set, the levels are dequantized in the same pass and the output is f32.
    pub dequantize: Option<Dequantize>,
}

/// tract's `DequantizeLinearF32`: `(level − zero_point) · scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dequantize {
    pub scale: f32,
    pub zero_point: i32,
}

impl Eq for QuantizeF32 {}

impl Op for QuantizeF32 {
    fn name(&self) -> StaticName {
        match self.dequantize {
            None => "QuantizeF32".into(),
            Some(_) => "QuantizeDequantizeF32".into(),
        }
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "to {:?}, scale: {} zero_point: {}, then {:?}",
            self.output, self.scale, self.zero_point, self.dequantize
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QuantizeF32 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let plain = input.try_as_plain_ram()?;
        let xs = plain.as_slice::<f32>()?;
        let dt = self.output_type();
        // SAFETY: every element is written below.
        let mut output = unsafe { Tensor::uninitialized_dt(dt, input.shape())? };
        {
            let mut out = output.try_as_plain_ram_mut()?;
            match (self.output, &self.dequantize) {
                (DatumType::U8, None) => quantize(xs, out.as_slice_mut::<u8>()?, self),
                (DatumType::I8, None) => quantize(xs, out.as_slice_mut::<i8>()?, self),
                (DatumType::U8 | DatumType::I8, Some(dq)) => {
                    Grid::new(self, dq).round_slice(xs, out.as_slice_mut::<f32>()?)
                }
                (dt, _) => bail!("QuantizeF32 cannot output {dt:?}"),
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl QuantizeF32 {
    /// The output's element type: the levels', or f32 when they are dequantized.
    fn output_type(&self) -> DatumType {
        match self.dequantize {
            None => self.output,
            Some(_) => f32::datum_type(),
        }
    }
}

impl TypedOp for QuantizeF32 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.output_type().fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// The 8-bit outputs, with their range as floats.
trait Quantized: Copy {
    const MIN_LEVEL: f32;
    const MAX_LEVEL: f32;
    fn from_i32(v: i32) -> Self;
}

impl Quantized for u8 {
    const MIN_LEVEL: f32 = u8::MIN as f32;
    const MAX_LEVEL: f32 = u8::MAX as f32;
    fn from_i32(v: i32) -> Self {
        v as u8
    }
}

impl Quantized for i8 {
    const MIN_LEVEL: f32 = i8::MIN as f32;
    const MAX_LEVEL: f32 = i8::MAX as f32;
    fn from_i32(v: i32) -> Self {
        v as i8
    }
}

/// Quantizes `xs` into `ys`, with AVX2 and FMA where the CPU has them (the body is the same;
/// the wider vectors are the compiler's).
fn quantize<T: Quantized>(xs: &[f32], ys: &mut [T], op: &QuantizeF32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        unsafe { quantize_avx2(xs, ys, op.scale, op.zero_point) };
        return;
    }
    quantize_slice(xs, ys, op.scale, op.zero_point);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_avx2<T: Quantized>(xs: &[f32], ys: &mut [T], scale: f32, zero_point: i32) {
    quantize_slice(xs, ys, scale, zero_point);
}

/// A quantization to 8-bit levels and back as one f32 → f32 map: what a [`QuantizeF32`] with
/// [`Dequantize`] computes for each value, `(level(x) − dequantization zero point) · scale`. The
/// level and both zero points are integers exact in f32, so the difference is the same as
/// tract's in integers. `conv::direct` applies it to a convolution's input as it copies it and
/// in registers to its output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    scale: f32,
    zero: f32,
    min: f32,
    max: f32,
    dq_zero: f32,
    dq_scale: f32,
}

impl Grid {
    fn new(q: &QuantizeF32, dq: &Dequantize) -> Grid {
        let (min, max) = match q.output {
            DatumType::U8 => (u8::MIN_LEVEL, u8::MAX_LEVEL),
            _ => (i8::MIN_LEVEL, i8::MAX_LEVEL),
        };
        Grid {
            scale: q.scale,
            zero: q.zero_point as f32,
            min,
            max,
            dq_zero: dq.zero_point as f32,
            dq_scale: dq.scale,
        }
    }

    /// The grid `node` rounds to, with the node whose output carries the rounded values, where
    /// `node` is an f32 `QuantizeLinear` that one `DequantizeLinearF32` alone reads (a
    /// decluttered graph's form of the pair).
    pub fn at<'m>(
        model: &'m TypedModel,
        node: &TypedNode,
    ) -> TractResult<Option<(Grid, &'m TypedNode)>> {
        let Some(q) = tract_quantize(model, node)? else {
            return Ok(None);
        };
        let Some(next) = super::rewrite::only_reader(model, node)? else {
            return Ok(None);
        };
        Ok(next.op_as::<DequantizeLinearF32>().map(|dq| {
            let dq = Dequantize {
                scale: dq.scale,
                zero_point: dq.zero_point,
            };
            (Grid::new(&q, &dq), next)
        }))
    }

    #[inline(always)]
    pub fn round(&self, x: f32) -> f32 {
        (level(x, self.scale, self.zero, self.min, self.max) - self.dq_zero) * self.dq_scale
    }

    /// [`Grid::round`] on 8 values, bit for bit.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn round_avx2(&self, x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let zero = _mm256_set1_ps(self.zero);
        let scaled = _mm256_mul_ps(x, _mm256_set1_ps(self.scale));
        let q = _mm256_add_ps(
            _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(scaled),
            zero,
        );
        let q = _mm256_blendv_ps(q, zero, _mm256_cmp_ps::<_CMP_UNORD_Q>(q, q));
        let q = _mm256_min_ps(
            _mm256_max_ps(q, _mm256_set1_ps(self.min)),
            _mm256_set1_ps(self.max),
        );
        _mm256_mul_ps(
            _mm256_sub_ps(q, _mm256_set1_ps(self.dq_zero)),
            _mm256_set1_ps(self.dq_scale),
        )
    }

    /// Rounds `xs` into `ys`, with AVX2 and FMA where the CPU has them (the body is the same;
    /// the wider vectors are the compiler's).
    pub fn round_slice(&self, xs: &[f32], ys: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            unsafe { self.round_slice_avx2(xs, ys) };
            return;
        }
        self.round_each(xs, ys);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn round_slice_avx2(&self, xs: &[f32], ys: &mut [f32]) {
        self.round_each(xs, ys);
    }

    #[inline(always)]
    fn round_each(&self, xs: &[f32], ys: &mut [f32]) {
        for (x, y) in xs.iter().zip(ys.iter_mut()) {
            *y = self.round(*x);
        }
    }
}

/// The level of `x`, as a float: round half to even, add the zero point, saturate to
/// `min..=max`; NaN is the zero point.
#[inline(always)]
fn level(x: f32, scale: f32, zero: f32, min: f32, max: f32) -> f32 {
    let q = (x * scale).round_ties_even() + zero;
    let q = if q.is_nan() { zero } else { q };
    q.clamp(min, max)
}

/// tract's `quantize_linear_f32_{u8,i8}`: round half to even, add the zero point, saturate.
/// NaN becomes the zero point, as there (a float-to-integer cast of NaN is 0). Where x · scale
/// is beyond ±2³¹ (infinities), this saturates; tract's i32 addition wraps there.
#[inline(always)]
fn quantize_slice<T: Quantized>(xs: &[f32], ys: &mut [T], scale: f32, zero_point: i32) {
    // In floats up to the last step, so the loop vectorises (a saturating float-to-integer cast
    // does not). Rounded values and the zero point are integers, exact in f32 below 2²⁴, and
    // larger ones saturate either way.
    let zero = zero_point as f32;
    for (x, y) in xs.iter().zip(ys.iter_mut()) {
        let q = level(*x, scale, zero, T::MIN_LEVEL, T::MAX_LEVEL);
        // SAFETY: q is finite and within the output's range.
        *y = T::from_i32(unsafe { q.to_int_unchecked::<i32>() });
    }
}

/// Replaces every f32-input `QuantizeLinearU8`/`QuantizeLinearI8` of `model` (an optimised
/// plan's model) with [`QuantizeF32`]; returns how many were replaced.
pub fn replace(model: &mut TypedModel) -> TractResult<usize> {
    super::rewrite::swap_ops(model, |model, node| {
        Ok(tract_quantize(model, node)?.map(|op| Box::new(op) as Box<dyn TypedOp>))
    })
}

/// `node` as a [`QuantizeF32`] if it is tract's `QuantizeLinearU8`/`QuantizeLinearI8` of an
/// f32 tensor.
fn tract_quantize(model: &TypedModel, node: &TypedNode) -> TractResult<Option<QuantizeF32>> {
    let Some(ElementWiseOp(mini, None)) = node.op_as::<ElementWiseOp>() else {
        return Ok(None);
    };
    if model.outlet_fact(node.inputs[0])?.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let (scale, zero_point, output) = if let Some(q) = mini.downcast_ref::<QuantizeLinearU8>() {
        (q.scale, i32::from(q.zero_point), DatumType::U8)
    } else if let Some(q) = mini.downcast_ref::<QuantizeLinearI8>() {
        (q.scale, i32::from(q.zero_point), DatumType::I8)
    } else {
        return Ok(None);
    };
    Ok(Some(QuantizeF32 {
        scale,
        zero_point,
        output,
        dequantize: None,
    }))
}

/// Makes every [`QuantizeF32`] of `model` (after [`replace`]) that one `DequantizeLinearF32`
/// alone reads a [`QuantizeF32`] with [`Dequantize`] in place of both; returns how many.
pub fn fuse_dequantize(model: &mut TypedModel) -> TractResult<usize> {
    let mut fused = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(dq) = node.op_as::<DequantizeLinearF32>() else {
            continue;
        };
        let source = model.node(node.inputs[0].node);
        let Some(q) = source.op_as::<QuantizeF32>() else {
            continue;
        };
        let read_by_this_alone = !model.outputs.contains(&source.id.into())
            && model.single_succ(source.id)?.is_some_and(|n| n.id == id);
        if q.dequantize.is_some() || !read_by_this_alone {
            continue;
        }
        let op = QuantizeF32 {
            dequantize: Some(Dequantize {
                scale: dq.scale,
                zero_point: dq.zero_point,
            }),
            ..q.clone()
        };
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(model, source.inputs[0])?;
        let wire = patch.wire_node(&source.name, op, &[input])?;
        patch.shunt_outside(model, id.into(), wire[0])?;
        patch.apply(model)?;
        fused += 1;
    }
    if fused > 0 {
        model.compact()?;
    }
    Ok(fused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::quant::{quantize_linear_f32_i8, quantize_linear_f32_u8};

    /// Values around every rounding tie and both saturations, NaN and -0.
    fn inputs() -> Vec<f32> {
        let mut xs: Vec<f32> = (-3000..=3000).map(|i| i as f32 * 0.25).collect();
        xs.extend((-300..=300).map(|i| i as f32 * 0.5 + 1e-3));
        xs.extend([f32::NAN, -0.0, 1e6, -1e6]);
        xs
    }

    #[test]
    fn infinities_saturate() {
        let xs = [f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN];
        let mut ys = [0u8; 4];
        let op = QuantizeF32 {
            scale: 1.0,
            zero_point: 100,
            output: DatumType::U8,
            dequantize: None,
        };
        quantize(&xs, &mut ys, &op);
        assert_eq!(ys, [255, 0, 255, 0]);
    }

    #[test]
    fn matches_tract_bit_for_bit() {
        let xs = inputs();
        for (scale, zero_point) in [(1.0, 0), (0.5, 128), (3.7, 17), (40.0, 255), (1e-3, 3)] {
            let mut ys = vec![0u8; xs.len()];
            let op = QuantizeF32 {
                scale,
                zero_point,
                output: DatumType::U8,
                dequantize: None,
            };
            quantize(&xs, &mut ys, &op);
            for (x, y) in xs.iter().zip(&ys) {
                assert_eq!(*y, quantize_linear_f32_u8(*x, scale, zero_point), "u8 {x}");
            }
        }
        for (scale, zero_point) in [(1.0, 0), (0.5, -128), (3.7, 17), (40.0, 127), (2.0, -5)] {
            let mut ys = vec![0i8; xs.len()];
            let op = QuantizeF32 {
                scale,
                zero_point,
                output: DatumType::I8,
                dequantize: None,
            };
            quantize(&xs, &mut ys, &op);
            for (x, y) in xs.iter().zip(&ys) {
                assert_eq!(*y, quantize_linear_f32_i8(*x, scale, zero_point), "i8 {x}");
            }
        }
    }

    #[test]
    fn the_plan_swaps_f32_quantizations_only_and_computes_the_same() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([4, 300])).unwrap();
        let to_u8 = model
            .wire_node(
                "to_u8",
                ElementWiseOp(
                    Box::new(QuantizeLinearU8 {
                        scale: 2.5,
                        zero_point: 120,
                    }),
                    None,
                ),
                &[x],
            )
            .unwrap();
        let to_i8 = model
            .wire_node(
                "to_i8",
                ElementWiseOp(
                    Box::new(QuantizeLinearI8 {
                        scale: 0.75,
                        zero_point: -3,
                    }),
                    None,
                ),
                &[x],
            )
            .unwrap();
        let i = model.add_source("i", i32::fact([4])).unwrap();
        let int = model
            .wire_node(
                "from_i32",
                ElementWiseOp(
                    Box::new(QuantizeLinearU8 {
                        scale: 1.0,
                        zero_point: 0,
                    }),
                    None,
                ),
                &[i],
            )
            .unwrap();
        model
            .select_output_outlets(&[to_u8[0], to_i8[0], int[0]])
            .unwrap();
        let before = model.clone().into_runnable().unwrap();
        assert_eq!(replace(&mut model).unwrap(), 2);
        let quantize_f32 = model
            .nodes()
            .iter()
            .filter(|n| n.op_is::<QuantizeF32>())
            .count();
        assert_eq!(quantize_f32, 2);
        let after = model.into_runnable().unwrap();
        let data: Vec<f32> = (0..1200).map(|i| (i as f32 - 600.0) * 0.37).collect();
        let inputs = || {
            tvec![
                Tensor::from_shape(&[4, 300], &data).unwrap().into(),
                Tensor::from_shape(&[4], &[-7i32, 0, 100, 300])
                    .unwrap()
                    .into(),
            ]
        };
        let (a, b) = (before.run(inputs()).unwrap(), after.run(inputs()).unwrap());
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(a, b);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_grid_rounds_8_values_in_registers_to_the_same_bits_as_one_at_a_time() {
        use std::arch::x86_64::*;
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        let mut xs = inputs();
        xs.extend([f32::INFINITY, f32::NEG_INFINITY]);
        xs.resize(xs.len().next_multiple_of(8), 0.5);
        for (output, scale, zero_point) in [(DatumType::U8, 2.5, 120), (DatumType::I8, 0.75, -3)] {
            let q = QuantizeF32 {
                scale,
                zero_point,
                output,
                dequantize: None,
            };
            let grid = Grid::new(
                &q,
                &Dequantize {
                    scale: 0.4,
                    zero_point: 17,
                },
            );
            for x in xs.chunks_exact(8) {
                let mut y = [0f32; 8];
                // SAFETY: the CPU has AVX2 and FMA (checked above); both are 8 values.
                unsafe {
                    let v = grid.round_avx2(_mm256_loadu_ps(x.as_ptr()));
                    _mm256_storeu_ps(y.as_mut_ptr(), v);
                }
                for (x, y) in x.iter().zip(y) {
                    assert_eq!(y.to_bits(), grid.round(*x).to_bits(), "{output:?} {x}");
                }
            }
        }
    }

    #[test]
    fn a_dequantized_quantization_becomes_one_pass_with_the_same_bits() {
        let mut model = TypedModel::default();
        let xs = inputs();
        let x = model.add_source("x", f32::fact([xs.len()])).unwrap();
        let q = |model: &mut TypedModel, name: &str, mini: Box<dyn ElementWiseMiniOp>| {
            model
                .wire_node(name, ElementWiseOp(mini, None), &[x])
                .unwrap()[0]
        };
        let dq =
            |model: &mut TypedModel, name: &str, from: OutletId, scale: f32, zero_point: i32| {
                model
                    .wire_node(name, DequantizeLinearF32 { scale, zero_point }, &[from])
                    .unwrap()[0]
            };
        let to_u8 = q(
            &mut model,
            "to_u8",
            Box::new(QuantizeLinearU8 {
                scale: 2.5,
                zero_point: 120,
            }),
        );
        let to_i8 = q(
            &mut model,
            "to_i8",
            Box::new(QuantizeLinearI8 {
                scale: 0.75,
                zero_point: -3,
            }),
        );
        let shared = q(
            &mut model,
            "shared",
            Box::new(QuantizeLinearU8 {
                scale: 1.5,
                zero_point: 7,
            }),
        );
        let outputs = [
            dq(&mut model, "u8", to_u8, 0.4, 120),
            dq(&mut model, "i8", to_i8, 1.3, -3),
            // Two readers: the levels stay a tensor of their own.
            dq(&mut model, "first", shared, 0.7, 7),
            dq(&mut model, "second", shared, 0.2, 5),
        ];
        model.select_output_outlets(&outputs).unwrap();
        let before = model.clone().into_runnable().unwrap();
        assert_eq!(replace(&mut model).unwrap(), 3);
        assert_eq!(fuse_dequantize(&mut model).unwrap(), 2);
        let names: Vec<_> = model
            .nodes()
            .iter()
            .map(|n| n.op.name().to_string())
            .collect();
        assert_eq!(
            names
                .iter()
                .filter(|n| *n == "QuantizeDequantizeF32")
                .count(),
            2
        );
        assert_eq!(
            names.iter().filter(|n| *n == "DequantizeLinearF32").count(),
            2
        );
        let after = model.into_runnable().unwrap();
        let input = || tvec![tensor1(&xs).into_tvalue()];
        for (a, b) in before
            .run(input())
            .unwrap()
            .iter()
            .zip(&after.run(input()).unwrap())
        {
            let (a, b) = (a.try_as_plain_ram().unwrap(), b.try_as_plain_ram().unwrap());
            let (a, b) = (a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
            assert!(a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}
