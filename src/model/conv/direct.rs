//! The direct 3×3 convolution: [`Conv3x3`], swapped for tract's `Conv` with what is next to it
//! where each alone reads the one before: before it, the channel concatenation and the
//! quantize–dequantize pair of the int8 QDQ form; after it, the `max(x, 0)` and such pairs
//! (`Concat → Q → DQ → Conv → Q → DQ → Relu → Q → DQ` in the int8 U-Nets).
//!
//! Each band of rows first copies the input rows it reads into a zero-bordered buffer (the
//! parts of a concatenation one after another, rounded to the 8-bit grid if the input's pair
//! was taken in), so no tap needs an edge test; each output row is then cut into blocks
//! ([`kernel::blocks`]) that [`kernel::each_tile`] sums over the 9 taps and every input
//! channel, and bias, ReLU and roundings to the 8-bit grid are applied in registers before the
//! one store, bit-identical to the operators they replace.

use std::cell::RefCell;

use tract_core::internal::*;
use tract_core::ops::array::TypedConcat;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cnn::conv::{Conv, KernelFormat};
use tract_core::ops::math::Max;
use tract_core::ops::nn::DataFormat;

use super::kernel::{self, Output, Step, CO, LANES};
use crate::model::pool::square_windows;
use crate::model::quantize::Grid;
use crate::model::rewrite::{only_reader, replace_chains, same_bits};

/// A 3×3, stride 1, padding 1 convolution of an f32 NCHW tensor (N = 1), with its bias and
/// element-wise steps after it; its input may come in parts along the channels.
#[derive(Debug, Clone)]
pub struct Conv3x3 {
    cin: usize,
    cout: usize,
    /// Applied to the input as it is copied (the QDQ form's rounding of an activation).
    input_grid: Option<Grid>,
    /// Applied to the output in order (ReLU, roundings to an 8-bit grid).
    epilogue: Vec<Step>,
    /// The kernel and bias when they are constants, packed once. Without them, they are the
    /// operator's last two inputs, packed at every run: the conditioned U-Net's FiLM scale is
    /// folded into its kernels by tract, so they are computed from the task and modality.
    packed: Option<Packed>,
}

/// A kernel and bias laid out for [`kernel::sum`].
#[derive(Debug, Clone)]
struct Packed {
    /// [`kernel::pack`]ed, 9 taps.
    weights: Arc<[f32]>,
    /// `[tiles × CO]`, zero past `cout`.
    bias: Arc<[f32]>,
}

impl Packed {
    /// Packs OIHW `kernel` (`[cout, cin, 3, 3]`) and `bias` (`[cout]`, or one value for all).
    fn new(kernel: &Tensor, bias: &Tensor, cout: usize, cin: usize) -> TractResult<Packed> {
        ensure!(
            kernel.shape() == [cout, cin, 3, 3],
            "a {cout}×{cin}×3×3 kernel, got {:?}",
            kernel.shape()
        );
        let kernel = kernel.try_as_plain_ram()?;
        let bias = bias.try_as_plain_ram()?;
        Ok(Packed {
            weights: kernel::pack(kernel.as_slice::<f32>()?, cout, cin, 9),
            bias: kernel::tile_bias(bias.as_slice::<f32>()?, cout, 1)?,
        })
    }
}

/// Equal when they compute the same: the same shapes, steps and bits of every parameter.
impl PartialEq for Conv3x3 {
    fn eq(&self, other: &Conv3x3) -> bool {
        let same_params = match (&self.packed, &other.packed) {
            (Some(a), Some(b)) => same_bits(&a.weights, &b.weights) && same_bits(&a.bias, &b.bias),
            (a, b) => a.is_none() && b.is_none(),
        };
        let steps = (&self.input_grid, &self.epilogue);
        (self.cin, self.cout, steps)
            == (other.cin, other.cout, (&other.input_grid, &other.epilogue))
            && same_params
    }
}

impl Eq for Conv3x3 {}

thread_local! {
    /// The zero-bordered input rows of the band of a convolution running on this thread, kept
    /// between runs so its pages are not faulted in again every frame.
    static PADDED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Conv3x3 {
    /// The operator for OIHW `kernel` (`[cout, cin, 3, 3]`) and `bias` (`[cout]`, or one value
    /// for all).
    pub fn new(kernel: &Tensor, bias: &Tensor) -> TractResult<Conv3x3> {
        let &[cout, cin, 3, 3] = kernel.shape() else {
            bail!("a 3×3 OIHW kernel, got {:?}", kernel.shape());
        };
        let packed = Some(Packed::new(kernel, bias, cout, cin)?);
        Ok(Conv3x3 {
            cin,
            cout,
            input_grid: None,
            epilogue: Vec::new(),
            packed,
        })
    }

    /// The operator for a `cin` → `cout` kernel and bias given as its last two inputs.
    pub fn wired(cin: usize, cout: usize) -> Conv3x3 {
        Conv3x3 {
            cin,
            cout,
            input_grid: None,
            epilogue: Vec::new(),
            packed: None,
        }
    }

    /// How many of `inputs` are data: all but the kernel and bias when they are wired.
    fn data_inputs(&self, inputs: usize) -> TractResult<usize> {
        let params = if self.packed.is_some() { 0 } else { 2 };
        ensure!(inputs > params, "Conv3x3 given {inputs} inputs");
        Ok(inputs - params)
    }

    /// The convolution of `input` (`[1, cin, h, w]`, in parts that follow one another along
    /// the channels) into `output` (`[1, cout, h, w]`), on the threads of the calling thread's
    /// tract executor.
    fn run(
        &self,
        input: &[&[f32]],
        h: usize,
        w: usize,
        params: &Packed,
        output: &mut [f32],
    ) -> TractResult<()> {
        ensure!(kernel::available(), "Conv3x3 needs AVX2 and FMA");
        ensure!(h > 0 && w > 0, "an empty {h}×{w} input");
        let values: usize = input.iter().map(|part| part.len()).sum();
        ensure!(values == self.cin * h * w && output.len() == self.cout * h * w);
        // Each band works on its own zero-bordered copy of the input rows it reads (its rows
        // and one more on each side), in the thread-local buffer of the thread running it, so
        // the copies are made in parallel too. Rows are `stride` long: w rounded up to whole
        // vectors, plus the two border columns. With AVX-512, blocks are of vectors of 16
        // pixels and tiles go by pairs ([`kernel::sum_wide`]).
        let wide = kernel::wide();
        let lanes = if wide { kernel::WIDE_LANES } else { LANES };
        let stride = w.div_ceil(lanes) * lanes + 2;
        let taps: [usize; 9] = std::array::from_fn(|t| ((t / 3) * stride + t % 3) * 4);
        let output = Output(output.as_mut_ptr());
        let tiles = self.cout.div_ceil(CO);
        kernel::in_bands(h, |from, to| {
            PADDED.with_borrow_mut(|padded| {
                let plane = (to - from + 2) * stride;
                if padded.len() < self.cin * plane {
                    padded.resize(self.cin * plane, 0.0);
                }
                let padded = &mut padded[..self.cin * plane];
                let planes = input.iter().flat_map(|part| part.chunks_exact(h * w));
                for (src, dst) in planes.zip(padded.chunks_exact_mut(plane)) {
                    // Every value is written: row r is input row from − 1 + r, or zeros.
                    for (r, d) in dst.chunks_exact_mut(stride).enumerate() {
                        match (from + r).checked_sub(1).filter(|&y| y < h) {
                            Some(y) => {
                                d[0] = 0.0;
                                let row = &src[y * w..][..w];
                                match &self.input_grid {
                                    Some(grid) => grid.round_slice(row, &mut d[1..=w]),
                                    None => d[1..=w].copy_from_slice(row),
                                }
                                d[w + 1..].fill(0.0);
                            }
                            None => d.fill(0.0),
                        }
                    }
                }
                let padded: &[f32] = padded;
                for y in from..to {
                    for (v, n) in kernel::blocks(w.div_ceil(lanes)) {
                        let x = v * lanes;
                        let input = padded[(y - from) * stride + x..].as_ptr();
                        let valid = (w - x).min(n * lanes);
                        let step = plane * 4;
                        let store = |tile: usize, sums: &mut kernel::Sums| {
                            let channels = (self.cout - tile * CO).min(CO);
                            let vectors = n * lanes / LANES;
                            // SAFETY: the features were checked above; row y of the output is
                            // this band's alone, and the output has cout·h·w values.
                            unsafe {
                                let out = output.ptr().add((tile * CO * h + y) * w + x);
                                kernel::store(
                                    sums,
                                    vectors,
                                    &self.epilogue,
                                    out,
                                    h * w,
                                    channels,
                                    valid,
                                )
                            }
                        };
                        // SAFETY: the features were checked above; every tap of every channel
                        // has n·lanes values in `padded` (rows are whole vectors plus the
                        // borders); the packed weights and bias hold whole tile pairs.
                        unsafe {
                            let (weights, bias) = (&params.weights[..], &params.bias[..]);
                            kernel::each_tile(
                                wide, n, input, step, &taps, self.cin, weights, bias, tiles, store,
                            );
                        }
                    }
                }
            });
        });
        Ok(())
    }
}

impl Op for Conv3x3 {
    fn name(&self) -> StaticName {
        "Conv3x3".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{}→{}, input rounded to {:?}, then {:?}",
            self.cin, self.cout, self.input_grid, self.epilogue
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Conv3x3 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (data, wired) = inputs.split_at(self.data_inputs(inputs.len())?);
        let &[1, _, h, w] = data[0].shape() else {
            bail!("Conv3x3 expects [1, C, H, W], got {:?}", data[0].shape());
        };
        let mut cin = 0;
        for input in data {
            let &[1, c, ih, iw] = input.shape() else {
                bail!("Conv3x3 expects [1, C, H, W], got {:?}", input.shape());
            };
            ensure!((ih, iw) == (h, w), "inputs of {h}×{w} and {ih}×{iw}");
            cin += c;
        }
        ensure!(
            cin == self.cin,
            "{cin} input channels, expected {}",
            self.cin
        );
        let packed_now;
        let params = match (&self.packed, wired) {
            (Some(packed), _) => packed,
            (None, [kernel, bias]) => {
                packed_now = Packed::new(kernel, bias, self.cout, self.cin)?;
                &packed_now
            }
            (None, _) => bail!("Conv3x3 without its kernel and bias"),
        };
        let views = data
            .iter()
            .map(|input| input.try_as_plain_ram())
            .collect::<TractResult<TVec<_>>>()?;
        let parts = views
            .iter()
            .map(|view| view.as_slice::<f32>())
            .collect::<TractResult<TVec<_>>>()?;
        // SAFETY: `run` writes every value of the output.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&[1, self.cout, h, w])? };
        let mut out = output.try_as_plain_ram_mut()?;
        self.run(&parts, h, w, params, out.as_slice_mut::<f32>()?)?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Conv3x3 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        let mut cin = TDim::from(0);
        for input in &inputs[..self.data_inputs(inputs.len())?] {
            let s = &input.shape;
            ensure!(s.len() == 4 && s[0] == shape[0] && s[2..] == shape[2..]);
            cin += s[1].clone();
        }
        ensure!(cin == self.cin.to_dim());
        Ok(tvec!(f32::fact([
            shape[0].clone(),
            self.cout.to_dim(),
            shape[2].clone(),
            shape[3].clone()
        ])))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let s = &inputs[0].shape;
        let fmas = s[0].clone() * s[2].clone() * s[3].clone() * (self.cin * self.cout * 9);
        Ok(tvec!((Cost::FMA(f32::datum_type()), fmas)))
    }

    as_op!();
}

/// The operator for `node` if it is an eligible convolution.
fn eligible(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Conv3x3>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    let input = model.outlet_fact(node.inputs[0])?;
    let batch_of_one = input
        .shape
        .as_concrete()
        .is_some_and(|s| s.len() == 4 && s[0] == 1 && s[2] > 0 && s[3] > 0);
    if conv.q_params.is_some()
        || conv.group != 1
        || conv.kernel_fmt != KernelFormat::OIHW
        || spec.data_format != DataFormat::NCHW
        || !square_windows(spec, 3, 1, 1)
        || input.datum_type != f32::datum_type()
        || !batch_of_one
    {
        return Ok(None);
    }
    let (kernel, bias) = (
        model.outlet_fact(node.inputs[1])?,
        model.outlet_fact(node.inputs[2])?,
    );
    let (cin, cout) = (conv.input_channels(), conv.output_channels());
    let kernel_shape = kernel.shape.as_concrete() == Some(&[cout, cin, 3, 3][..]);
    let bias_shape = bias
        .shape
        .as_concrete()
        .is_some_and(|s| [1, cout].contains(&s.iter().product()));
    if kernel.datum_type != f32::datum_type()
        || bias.datum_type != f32::datum_type()
        || !kernel_shape
        || !bias_shape
    {
        return Ok(None);
    }
    Ok(Some(match (&kernel.konst, &bias.konst) {
        (Some(kernel), Some(bias)) => Conv3x3::new(kernel, bias)?,
        _ => Conv3x3::wired(cin, cout),
    }))
}

/// Whether `node` is `max(x, 0)` with a constant zero, of the shape of `x`.
fn is_relu(model: &TypedModel, node: &TypedNode) -> TractResult<bool> {
    let Some(op) = node.op_as::<TypedBinOp>() else {
        return Ok(false);
    };
    let same_shape =
        model.outlet_fact(node.id.into())?.shape == model.outlet_fact(node.inputs[0])?.shape;
    if !op.0.is::<Max>() || node.inputs.len() != 2 || !same_shape {
        return Ok(false);
    }
    let zero = model
        .outlet_fact(node.inputs[1])?
        .uniform
        .as_ref()
        .and_then(|u| u.cast_to_scalar::<f32>().ok())
        == Some(0.0);
    Ok(zero)
}

/// Replaces every eligible convolution of `model` with [`Conv3x3`]; returns how many.
pub fn replace(model: &mut TypedModel) -> TractResult<usize> {
    replace_chains(model, |model, node| {
        let Some(mut op) = eligible(model, node)? else {
            return Ok(None);
        };
        // A rounding to an 8-bit grid of the input, read by this convolution alone, is done by
        // its padded copy; so is a channel concatenation that this convolution (or that
        // rounding) alone reads.
        let mut input = node.inputs[0];
        let source = model.node(input.node);
        if let Some(quantize) = source.inputs.first().map(|i| model.node(i.node)) {
            if let Some((grid, dequantized)) = Grid::at(model, quantize)? {
                if dequantized.id == source.id && only_reader(model, source)?.is_some() {
                    op.input_grid = Some(grid);
                    input = quantize.inputs[0];
                }
            }
        }
        let source = model.node(input.node);
        let concat = source
            .op_as::<TypedConcat>()
            .filter(|concat| concat.axis == 1)
            .is_some();
        let mut inputs: TVec<OutletId> = if concat && only_reader(model, source)?.is_some() {
            source.inputs.iter().copied().collect()
        } else {
            tvec![input]
        };
        if op.packed.is_none() {
            inputs.extend_from_slice(&node.inputs[1..3]);
        }
        // So are the ReLUs and roundings to an 8-bit grid that follow it, each alone reading
        // the one before.
        let mut last = node;
        while let Some(next) = only_reader(model, last)? {
            if is_relu(model, next)? && next.inputs[0] == last.id.into() {
                op.epilogue.push(Step::Relu);
                last = next;
            } else if let Some((grid, dequantized)) = Grid::at(model, next)? {
                op.epilogue.push(Step::Grid(grid));
                last = dequantized;
            } else {
                break;
            }
        }
        Ok(Some((
            Box::new(op) as Box<dyn TypedOp>,
            inputs,
            last.id.into(),
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing;
    use tract_core::ops::array::TypedConcat;
    use tract_core::ops::binary::TypedBinOp;
    use tract_core::ops::cnn::conv::{Conv, KernelFormat};
    use tract_core::ops::cnn::{PaddingSpec, PoolSpec};
    use tract_core::ops::math::Max;
    use tract_core::ops::nn::DataFormat;
    use tract_linalg::multithread::Executor;

    /// Values in −1..1 that do not repeat with any small period.
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 7919 + seed * 31) % 2003) as f32 / 1001.5 - 1.0)
            .collect()
    }

    /// The convolution summed in f64, with zero padding.
    #[allow(clippy::too_many_arguments)]
    fn direct(
        x: &[f32],
        k: &[f32],
        b: &[f32],
        cin: usize,
        cout: usize,
        h: usize,
        w: usize,
        relu: bool,
    ) -> Vec<f32> {
        let mut out = vec![0f32; cout * h * w];
        for o in 0..cout {
            for y in 0..h {
                for xx in 0..w {
                    let mut sum = f64::from(b[o]);
                    for i in 0..cin {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (sy, sx) = ((y + ky) as isize - 1, (xx + kx) as isize - 1);
                                if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                                    sum += f64::from(x[(i * h + sy as usize) * w + sx as usize])
                                        * f64::from(k[((o * cin + i) * 3 + ky) * 3 + kx]);
                                }
                            }
                        }
                    }
                    out[(o * h + y) * w + xx] = if relu { sum.max(0.0) } else { sum } as f32;
                }
            }
        }
        out
    }

    /// Asserts that `got` holds `want` within float rounding (summation orders differ).
    fn assert_close(got: &Tensor, want: &[f32], what: &str) {
        testing::assert_close(&testing::values_of(got), want, what);
    }

    /// A graph of tract's convolution (3×3, padding 1, given strides) on `[1, cin, h, w]`,
    /// optionally followed by `max(x, 0)`.
    /// tract's 3×3 convolution, padding 1.
    fn conv_op(cin: usize, cout: usize, stride: usize) -> Conv {
        Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec!(3, 3),
                padding: PaddingSpec::Explicit(tvec!(1, 1), tvec!(1, 1)),
                dilations: None,
                strides: Some(tvec!(stride, stride)),
                input_channels: cin,
                output_channels: cout,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: 1,
            q_params: None,
        }
    }

    fn graph(k: &Tensor, b: &Tensor, h: usize, w: usize, stride: usize, relu: bool) -> TypedModel {
        let (cout, cin) = (k.shape()[0], k.shape()[1]);
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, cin, h, w])).unwrap();
        let k = model.add_const("k", k.clone()).unwrap();
        let b = model.add_const("b", b.clone()).unwrap();
        let conv = conv_op(cin, cout, stride);
        let mut out = model.wire_node("conv", conv, &[x, k, b]).unwrap();
        if relu {
            let zero = model.add_const("zero", tensor4(&[[[[0f32]]]])).unwrap();
            out = model
                .wire_node("relu", TypedBinOp(Box::new(Max), None), &[out[0], zero])
                .unwrap();
        }
        model.select_output_outlets(&out).unwrap();
        model
    }

    fn run(model: TypedModel, x: &Tensor, executor: Option<Executor>) -> Tensor {
        let options = RunOptions {
            executor,
            ..RunOptions::default()
        };
        let plan = model.into_runnable_with_options(&options).unwrap();
        plan.run(tvec!(x.clone().into_tvalue()))
            .unwrap()
            .remove(0)
            .into_tensor()
    }

    fn ops(model: &TypedModel) -> Vec<String> {
        model
            .nodes()
            .iter()
            .map(|n| n.op.name().to_string())
            .filter(|n| n != "Source" && n != "Const")
            .collect()
    }

    #[test]
    fn every_shape_matches_a_direct_sum() {
        if !kernel::available() {
            return;
        }
        // Output channels that fill no tile, one, part of the last, a pair and a half; rows of
        // 1, 13, 17 and 33 pixels (partial vectors) and of 8, 16, 24, 40, 80 (blocks of 1, 2,
        // 3 and 3 + 2 vectors of 8 or of 16 lanes).
        let shapes = [
            (1, 1, 1, 1),
            (3, 16, 5, 8),
            (2, 5, 3, 13),
            (4, 9, 7, 40),
            (5, 4, 2, 16),
            (3, 7, 4, 24),
            (2, 3, 6, 17),
            (2, 12, 3, 80),
            (3, 9, 4, 33),
        ];
        kernel::tests::each_width(|width| {
            for (n, &(cin, cout, h, w)) in shapes.iter().enumerate() {
                for relu in [false, true] {
                    let (xv, kv, bv) = (
                        values(cin * h * w, n),
                        values(cout * cin * 9, n + 7),
                        values(cout, n + 13),
                    );
                    let x = tensor1(&xv).into_shape(&[1, cin, h, w]).unwrap();
                    let k = tensor1(&kv).into_shape(&[cout, cin, 3, 3]).unwrap();
                    let mut model = graph(&k, &tensor1(&bv), h, w, 1, relu);
                    assert_eq!(replace(&mut model).unwrap(), 1);
                    assert_eq!(
                        ops(&model),
                        ["Conv3x3"],
                        "the ReLU is taken into the convolution"
                    );
                    let got = run(model, &x, None);
                    assert_eq!(got.shape(), [1, cout, h, w]);
                    let want = direct(&xv, &kv, &bv, cin, cout, h, w, relu);
                    let what = format!("{cin}→{cout} {h}×{w} relu {relu}, {width}");
                    assert_close(&got, &want, &what);
                }
            }
        });
    }

    #[test]
    fn a_channel_concatenation_read_by_the_convolution_alone_is_taken_in() {
        if !kernel::available() {
            return;
        }
        let (cin, cout, h, w) = (5, 6, 4, 11);
        let (xv, kv, bv) = (
            values(cin * h * w, 5),
            values(cout * cin * 9, 6),
            values(cout, 7),
        );
        let k = tensor1(&kv).into_shape(&[cout, cin, 3, 3]).unwrap();
        // The same convolution on a concatenation of 2 and 3 channels.
        let concatenated = |extra_reader: bool| {
            let mut model = graph(&k, &tensor1(&bv), h, w, 1, true);
            let conv = model.node_by_name("conv").unwrap().id;
            let a = model.add_source("a", f32::fact([1, 2, h, w])).unwrap();
            let b = model.add_source("b", f32::fact([1, 3, h, w])).unwrap();
            let cat = model
                .wire_node("cat", TypedConcat::new(1), &[a, b])
                .unwrap()[0];
            model.add_edge(cat, InletId::new(conv, 0)).unwrap();
            model.inputs = vec![a, b];
            if extra_reader {
                let relu = model.node_by_name("relu").unwrap().id;
                model.select_output_outlets(&[relu.into(), cat]).unwrap();
            }
            model.compact().unwrap();
            model
        };
        let mut model = concatenated(false);
        assert_eq!(replace(&mut model).unwrap(), 1);
        assert_eq!(ops(&model), ["Conv3x3"]);
        let (first, second) = xv.split_at(2 * h * w);
        let plan = model.into_runnable().unwrap();
        let got = plan
            .run(tvec!(
                tensor1(first)
                    .into_shape(&[1, 2, h, w])
                    .unwrap()
                    .into_tvalue(),
                tensor1(second)
                    .into_shape(&[1, 3, h, w])
                    .unwrap()
                    .into_tvalue()
            ))
            .unwrap()
            .remove(0);
        let want = direct(&xv, &kv, &bv, cin, cout, h, w, true);
        assert_close(&got.into_tensor(), &want, "concatenated input");
        let mut shared = concatenated(true);
        assert_eq!(replace(&mut shared).unwrap(), 1);
        assert_eq!(ops(&shared), ["Concat", "Conv3x3"]);
    }

    #[test]
    fn a_kernel_computed_in_the_graph_is_packed_at_every_run() {
        if !kernel::available() {
            return;
        }
        let (cin, cout, h, w) = (3, 5, 4, 10);
        let (xv, kv, bv) = (
            values(cin * h * w, 8),
            values(cout * cin * 9, 9),
            values(cout, 10),
        );
        // The kernel and bias are inputs of the graph, as a FiLM scale folded into them makes
        // them outputs of other operators.
        let mut model = graph(
            &Tensor::zero::<f32>(&[cout, cin, 3, 3]).unwrap(),
            &tensor1(&bv),
            h,
            w,
            1,
            true,
        );
        let conv = model.node_by_name("conv").unwrap().id;
        let k = model.add_source("k", f32::fact([cout, cin, 3, 3])).unwrap();
        let b = model.add_source("bias", f32::fact([cout])).unwrap();
        model.add_edge(k, InletId::new(conv, 1)).unwrap();
        model.add_edge(b, InletId::new(conv, 2)).unwrap();
        model.compact().unwrap();
        assert_eq!(replace(&mut model).unwrap(), 1);
        assert_eq!(ops(&model), ["Conv3x3"]);
        let plan = model.into_runnable().unwrap();
        for scale in [1.0f32, -0.5] {
            let scaled: Vec<f32> = kv.iter().map(|v| v * scale).collect();
            let got = plan
                .run(tvec!(
                    tensor1(&xv)
                        .into_shape(&[1, cin, h, w])
                        .unwrap()
                        .into_tvalue(),
                    tensor1(&scaled)
                        .into_shape(&[cout, cin, 3, 3])
                        .unwrap()
                        .into_tvalue(),
                    tensor1(&bv).into_tvalue()
                ))
                .unwrap()
                .remove(0);
            let want = direct(&xv, &scaled, &bv, cin, cout, h, w, true);
            assert_close(&got.into_tensor(), &want, &format!("scale {scale}"));
        }
    }

    #[test]
    fn bands_on_two_threads_give_the_same_bits_as_one_thread() {
        if !kernel::available() {
            return;
        }
        let (cin, cout, h, w) = (6, 10, 9, 21);
        let x = tensor1(&values(cin * h * w, 1))
            .into_shape(&[1, cin, h, w])
            .unwrap();
        let k = tensor1(&values(cout * cin * 9, 2))
            .into_shape(&[cout, cin, 3, 3])
            .unwrap();
        let b = tensor1(&values(cout, 3));
        let mut model = graph(&k, &b, h, w, 1, true);
        replace(&mut model).unwrap();
        let one = run(model.clone(), &x, None);
        let two = run(model, &x, Some(Executor::multithread(2)));
        assert_eq!(one, two);
    }

    #[test]
    fn the_int8_form_s_roundings_around_a_convolution_go_into_its_copy_and_store_bit_for_bit() {
        use tract_core::ops::element_wise::ElementWiseOp;
        use tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearI8, QuantizeLinearU8};
        if !kernel::available() {
            return;
        }
        let (cin, cout, h, w) = (3, 6, 7, 19);
        let k = tensor1(&values(cout * 2 * cin * 9, 2))
            .into_shape(&[cout, 2 * cin, 3, 3])
            .unwrap();
        let b = tensor1(&values(cout, 3));
        let x = tensor1(&values(cin * h * w, 4))
            .into_shape(&[1, cin, h, w])
            .unwrap();
        // The int8 U-Nets' chain, Concat → Q → DQ → Conv → Q → DQ → Relu → Q → DQ, with levels
        // that saturate (u8 at 40 per unit) and an i8 grid.
        let mut model = TypedModel::default();
        let mut wire = model.add_source("x", f32::fact([1, cin, h, w])).unwrap();
        let rounded = |model: &mut TypedModel,
                       name: &str,
                       wire: OutletId,
                       levels: Box<dyn ElementWiseMiniOp>,
                       dq: DequantizeLinearF32| {
            let q = model
                .wire_node(format!("q {name}"), ElementWiseOp(levels, None), &[wire])
                .unwrap();
            model.wire_node(format!("dq {name}"), dq, &q).unwrap()[0]
        };
        let u8_levels = |scale, zero_point| Box::new(QuantizeLinearU8 { scale, zero_point });
        let dq = |scale, zero_point| DequantizeLinearF32 { scale, zero_point };
        wire = model
            .wire_node("cat", TypedConcat::new(1), &[wire, wire])
            .unwrap()[0];
        wire = rounded(
            &mut model,
            "in",
            wire,
            u8_levels(30.0, 110),
            dq(1.0 / 30.0, 110),
        );
        let (k, b) = (
            model.add_const("k", k).unwrap(),
            model.add_const("b", b).unwrap(),
        );
        let conv = conv_op(2 * cin, cout, 1);
        wire = model.wire_node("conv", conv, &[wire, k, b]).unwrap()[0];
        let conv = wire.node;
        wire = rounded(
            &mut model,
            "out",
            wire,
            u8_levels(40.0, 127),
            dq(0.025, 127),
        );
        let zero = model.add_const("zero", tensor4(&[[[[0f32]]]])).unwrap();
        wire = model
            .wire_node("relu", TypedBinOp(Box::new(Max), None), &[wire, zero])
            .unwrap()[0];
        let i8_levels = Box::new(QuantizeLinearI8 {
            scale: 9.5,
            zero_point: -4,
        });
        wire = rounded(&mut model, "relu", wire, i8_levels, dq(0.105, -4));
        model.select_output_outlets(&[wire]).unwrap();
        let mut fused = model.clone();
        assert_eq!(replace(&mut fused).unwrap(), 1);
        assert_eq!(ops(&fused), ["Conv3x3"]);
        // With the convolution's input and output also read elsewhere, the chain stays tract's
        // operators around ours: the same bits are wanted.
        let rounded_input = model.node(conv).inputs[0];
        model
            .select_output_outlets(&[wire, conv.into(), rounded_input])
            .unwrap();
        assert_eq!(replace(&mut model).unwrap(), 1);
        assert_eq!(ops(&model).len(), 9, "{:?}", ops(&model));
        let (want, got) = (testing::run(model, &x, None), testing::run(fused, &x, None));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want));
        let levels: std::collections::HashSet<u32> = bits(&got).into_iter().collect();
        assert!(levels.len() > 10, "only {} distinct values", levels.len());
    }

    #[test]
    fn strided_convolutions_keep_tract_s_operator_and_a_shared_output_keeps_its_relu() {
        if !kernel::available() {
            return;
        }
        let k = tensor1(&values(2 * 3 * 9, 0))
            .into_shape(&[2, 3, 3, 3])
            .unwrap();
        let b = tensor1(&[0.5f32, -0.5]);
        let mut strided = graph(&k, &b, 8, 8, 2, true);
        assert_eq!(replace(&mut strided).unwrap(), 0);
        // Without a following ReLU the bias is still taken, the output stays as it is.
        let x = tensor1(&values(3 * 8 * 8, 4))
            .into_shape(&[1, 3, 8, 8])
            .unwrap();
        let plain = graph(&k, &b, 8, 8, 1, false);
        let mut swapped = plain.clone();
        assert_eq!(replace(&mut swapped).unwrap(), 1);
        assert_eq!(ops(&swapped), ["Conv3x3"]);
        let (want, got) = (run(plain, &x, None), run(swapped, &x, None));
        want.close_enough(&got, true).unwrap();
        // A convolution whose output is also read elsewhere keeps its ReLU apart.
        let mut shared = graph(&k, &b, 8, 8, 1, true);
        let conv = shared.node_by_name("conv").unwrap().id;
        let relu = shared.node_by_name("relu").unwrap().id;
        shared
            .select_output_outlets(&[conv.into(), relu.into()])
            .unwrap();
        assert_eq!(replace(&mut shared).unwrap(), 1);
        assert_eq!(ops(&shared), ["Conv3x3", "Max"]);
    }
}
