//! The 2×2, stride 2 transposed convolution: [`Deconv2x2`], swapped for tract's `Deconv`.
//!
//! Each input pixel (y, x) makes the 2×2 output block (2y + dy, 2x + dx) of every output
//! channel o: `b[o] + Σᵢ in[i][y][x] · k[o][i][dy][dx]`, a 1×1 convolution with four outputs
//! per output channel. One register tile of [`kernel::sum`] holds the four (dy, dx) of one
//! output channel for up to 24 input pixels of a row (with AVX-512, [`kernel::sum_wide`] two
//! channels for up to 48); the store interleaves dx = 0 and 1 into the two output rows. tract
//! runs this as a matrix product, its packing and a scatter (`DeconvSum`).

use std::arch::x86_64::*;

use tract_core::internal::*;
use tract_core::ops::cnn::{Deconv, KernelFormat};
use tract_core::ops::nn::DataFormat;

use super::kernel::{self, Output, Sums, LANES};
use crate::model::pool::square_windows;
use crate::model::rewrite::same_bits;

/// A 2×2, stride 2, unpadded transposed convolution of an f32 NCHW tensor (N = 1) whose rows
/// are whole vectors (W a multiple of 8), with its bias.
#[derive(Debug, Clone)]
pub struct Deconv2x2 {
    cin: usize,
    cout: usize,
    /// [`kernel::pack`]ed, one tap, output channel o's (dy, dx) on lanes 2·dy + dx of tile o.
    weights: Arc<[f32]>,
    /// Each channel's bias on its tile's four lanes, in whole tile pairs.
    bias: Arc<[f32]>,
}

/// Equal when they compute the same: the same shapes and bits of every parameter.
impl PartialEq for Deconv2x2 {
    fn eq(&self, other: &Deconv2x2) -> bool {
        (self.cin, self.cout) == (other.cin, other.cout)
            && same_bits(&self.weights, &other.weights)
            && same_bits(&self.bias, &other.bias)
    }
}

impl Eq for Deconv2x2 {}

impl Deconv2x2 {
    /// The operator for OIHW `kernel` (`[cout, cin, 2, 2]`) and `bias` (`[cout]`, or one value
    /// for all).
    pub fn new(kernel: &Tensor, bias: &Tensor) -> TractResult<Deconv2x2> {
        let &[cout, cin, 2, 2] = kernel.shape() else {
            bail!("a 2×2 OIHW kernel, got {:?}", kernel.shape());
        };
        let kernel = kernel.try_as_plain_ram()?;
        let kernel = kernel.as_slice::<f32>()?;
        // As a 1×1 kernel of 4·cout output channels, (o, dy, dx) being channel 4·o + 2·dy + dx.
        let mut one_by_one = vec![0f32; cout * 4 * cin];
        for o in 0..cout {
            for i in 0..cin {
                for l in 0..4 {
                    one_by_one[(o * 4 + l) * cin + i] = kernel[(o * cin + i) * 4 + l];
                }
            }
        }
        let bias = bias.try_as_plain_ram()?;
        Ok(Deconv2x2 {
            cin,
            cout,
            weights: kernel::pack(&one_by_one, cout * 4, cin, 1),
            bias: kernel::tile_bias(bias.as_slice::<f32>()?, cout, 4)?,
        })
    }

    /// The transposed convolution of `input` (`[1, cin, h, w]`) into `output`
    /// (`[1, cout, 2h, 2w]`), on the threads of the calling thread's tract executor.
    fn run(&self, input: &[f32], h: usize, w: usize, output: &mut [f32]) -> TractResult<()> {
        ensure!(kernel::available(), "Deconv2x2 needs AVX2 and FMA");
        ensure!(
            w.is_multiple_of(LANES),
            "rows of {w} pixels, not whole vectors"
        );
        ensure!(input.len() == self.cin * h * w && output.len() == self.cout * 4 * h * w);
        let output = Output(output.as_mut_ptr());
        let wide = kernel::wide() && w.is_multiple_of(kernel::WIDE_LANES);
        let lanes = if wide { kernel::WIDE_LANES } else { LANES };
        kernel::in_bands(h, |from, to| {
            for y in from..to {
                for (v, n) in kernel::blocks(w / lanes) {
                    let x = v * lanes;
                    let pixels = input[y * w + x..].as_ptr();
                    // SAFETY: the features were checked above; rows are whole vectors, so
                    // every channel has n·lanes values from x on; output rows 2y and 2y + 1
                    // are this band's alone, and the output has cout·4·h·w values.
                    unsafe {
                        let step = h * w * 4;
                        let (weights, bias) = (&self.weights[..], &self.bias[..]);
                        let store = |o: usize, sums: &mut Sums| {
                            let top = output.ptr().add((o * 2 * h + 2 * y) * 2 * w + 2 * x);
                            store_interleaved(sums, n * lanes / LANES, top, 2 * w);
                        };
                        let (cin, cout) = (self.cin, self.cout);
                        kernel::each_tile(
                            wide,
                            n,
                            pixels,
                            step,
                            &[0],
                            cin,
                            weights,
                            bias,
                            cout,
                            store,
                        );
                    }
                }
            }
        });
        Ok(())
    }
}

/// Stores one output channel's block: for dy = 0 and 1, lanes 2·dy (dx = 0) and 2·dy + 1
/// (dx = 1) of the first `n` vectors of `sums`, interleaved, at `top` + dy·`row`.
///
/// # Safety
/// AVX2 is available; `top` and `top + row` are writable for 16·n values.
#[target_feature(enable = "avx2,fma")]
unsafe fn store_interleaved(sums: &Sums, n: usize, top: *mut f32, row: usize) {
    for dy in 0..2 {
        let dst = top.add(dy * row);
        let pairs = sums[2 * dy].iter().zip(&sums[2 * dy + 1]);
        for (v, (&left, &right)) in pairs.take(n).enumerate() {
            // [l0 r0 l1 r1 | l4 r4 l5 r5] and [l2 r2 l3 r3 | l6 r6 l7 r7].
            let low = _mm256_unpacklo_ps(left, right);
            let high = _mm256_unpackhi_ps(left, right);
            _mm256_storeu_ps(dst.add(16 * v), _mm256_permute2f128_ps(low, high, 0x20));
            _mm256_storeu_ps(dst.add(16 * v + 8), _mm256_permute2f128_ps(low, high, 0x31));
        }
    }
}

impl Op for Deconv2x2 {
    fn name(&self) -> StaticName {
        "Deconv2x2".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{}→{}", self.cin, self.cout)])
    }

    op_as_typed_op!();
}

impl EvalOp for Deconv2x2 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let &[1, cin, h, w] = input.shape() else {
            bail!("Deconv2x2 expects [1, C, H, W], got {:?}", input.shape());
        };
        ensure!(
            cin == self.cin,
            "{cin} input channels, expected {}",
            self.cin
        );
        // SAFETY: `run` writes every value of the output.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&[1, self.cout, 2 * h, 2 * w])? };
        let input = input.try_as_plain_ram()?;
        let mut out = output.try_as_plain_ram_mut()?;
        self.run(input.as_slice::<f32>()?, h, w, out.as_slice_mut::<f32>()?)?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Deconv2x2 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let s = &inputs[0].shape;
        ensure!(s.len() == 4 && s[1] == self.cin.to_dim());
        Ok(tvec!(f32::fact([
            s[0].clone(),
            self.cout.to_dim(),
            s[2].clone() * 2,
            s[3].clone() * 2
        ])))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let s = &inputs[0].shape;
        let fmas = s[0].clone() * s[2].clone() * s[3].clone() * (self.cin * self.cout * 4);
        Ok(tvec!((Cost::FMA(f32::datum_type()), fmas)))
    }

    as_op!();
}

/// The operator for `node` if it is an eligible transposed convolution.
fn eligible(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Deconv2x2>> {
    let Some(deconv) = node.op_as::<Deconv>() else {
        return Ok(None);
    };
    let spec = &deconv.pool_spec;
    let input = model.outlet_fact(node.inputs[0])?;
    let whole_rows = input
        .shape
        .as_concrete()
        .is_some_and(|s| s.len() == 4 && s[0] == 1 && s[3].is_multiple_of(LANES));
    if deconv.group != 1
        || deconv.kernel_format != KernelFormat::OIHW
        || deconv.adjustments.iter().any(|&a| a != 0)
        || spec.data_format != DataFormat::NCHW
        || !square_windows(spec, 2, 2, 0)
        || input.datum_type != f32::datum_type()
        || !whole_rows
        || node.inputs.len() != 3
    {
        return Ok(None);
    }
    let (Some(kernel), Some(bias)) = (
        model.outlet_fact(node.inputs[1])?.konst.clone(),
        model.outlet_fact(node.inputs[2])?.konst.clone(),
    ) else {
        return Ok(None);
    };
    if kernel.datum_type() != f32::datum_type() || bias.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    Ok(Some(Deconv2x2::new(&kernel, &bias)?))
}

/// Replaces every eligible transposed convolution of `model` with [`Deconv2x2`]; returns how
/// many.
pub fn replace(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        if let Some(op) = eligible(model, node)? {
            // The kernel and bias are the operator's own now: only the data stays wired.
            TypedModelPatch::replace_single_op(model, node, &node.inputs[..1], op)?.apply(model)?;
            replaced += 1;
        }
    }
    if replaced > 0 {
        model.compact()?;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{assert_close, run};
    use tract_core::ops::cnn::{PaddingSpec, PoolSpec};

    /// tract's transposed convolution (2×2, stride 2) on `[1, cin, h, w]`.
    fn graph(k: &Tensor, b: &Tensor, h: usize, w: usize) -> TypedModel {
        let (cout, cin) = (k.shape()[0], k.shape()[1]);
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, cin, h, w])).unwrap();
        let k = model.add_const("k", k.clone()).unwrap();
        let b = model.add_const("b", b.clone()).unwrap();
        let deconv = Deconv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec!(2, 2),
                padding: PaddingSpec::Valid,
                dilations: None,
                strides: Some(tvec!(2, 2)),
                input_channels: cin,
                output_channels: cout,
            },
            kernel_format: KernelFormat::OIHW,
            adjustments: tvec!(0, 0),
            group: 1,
        };
        let out = model.wire_node("deconv", deconv, &[x, k, b]).unwrap();
        model.select_output_outlets(&out).unwrap();
        model
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 7919) % 2003) as f32 / 1001.5 - 1.0)
            .collect()
    }

    #[test]
    fn matches_tract_s_transposed_convolution() {
        if !kernel::available() {
            return;
        }
        // Rows of 1, 2, 4 and 5 vectors of 8 (1 and 2 of 16); output channels in any number.
        let shapes = [
            (3, 2, 2, 8),
            (5, 7, 3, 16),
            (4, 3, 1, 32),
            (2, 5, 4, 40),
            (3, 1, 2, 48),
        ];
        kernel::tests::each_width(|width| {
            for (cin, cout, h, w) in shapes {
                let x = tensor1(&values(cin * h * w, 1))
                    .into_shape(&[1, cin, h, w])
                    .unwrap();
                let k = tensor1(&values(cout * cin * 4, 2))
                    .into_shape(&[cout, cin, 2, 2])
                    .unwrap();
                let b = tensor1(&values(cout, 3));
                let tract = graph(&k, &b, h, w);
                let mut ours = tract.clone();
                assert_eq!(replace(&mut ours).unwrap(), 1);
                let (want, got) = (run(tract, &x, None), run(ours, &x, None));
                assert_close(&got, &want, &format!("{cin}→{cout} {h}×{w}, {width}"));
            }
        });
    }

    #[test]
    fn rows_that_are_not_whole_vectors_keep_tract_s_operator() {
        let k = tensor1(&values(2 * 3 * 4, 0))
            .into_shape(&[2, 3, 2, 2])
            .unwrap();
        let mut model = graph(&k, &tensor1(&[0f32, 1.0]), 4, 12);
        assert_eq!(replace(&mut model).unwrap(), 0);
    }
}
