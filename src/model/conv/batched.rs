//! Batched products of two computed tensors (`EinSum`s such as `ambk,anbk->abmn`): the
//! attention products of the transformers, Q·Kᵀ and the weighted sum of V, batched over heads
//! and windows, swapped into decluttered graphs for tract's matrix product.
//!
//! Each is small: 65 × 16 by 16 × 65 for each of 4 heads in the CLIPSeg image graph, 49 × 16
//! by 16 × 49 for each of 50 windows and heads in the SAM encoder. tract packs both operands of
//! every batch and runs them at 14–31 GFLOP/s (operator profile, 1 thread, x86-64). Here, for
//! each batch, the second operand is laid out `[k][n rounded up to whole vectors of 16]` once,
//! and `Gathered::tiles` (the gathered form of [`super::product`]) gathers tiles of 4 rows of
//! the first operand (8 with AVX-512) at its strides and sums them against it on the
//! convolution's micro-kernels. Batches are split into one band per thread of the graph's pool.
//!
//! Only f32 products with both inputs computed are replaced, with one row axis, one summed
//! axis and one column axis (other than axes of size 1), every other axis kept from both
//! inputs (a batch), the columns contiguous in the output, and each batch of a size where
//! gathered tiles are the faster (`product::MAX_FMAS`, any size with AVX-512). Every other `EinSum` keeps tract's
//! operator. Summation order differs from tract's, so results agree within float rounding.

use std::cell::RefCell;

use tract_core::internal::*;
use tract_core::ops::einsum::EinSum;

use super::kernel::{self, Output};
use super::product::{padded_width, strides, too_large_to_gather, Gathered, Place};
use crate::model::rewrite::replace_chains;

/// `output[batch][i][j] = Σ_k a(batch, i, k) · b(batch, k, j)`, both inputs computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchedProduct {
    /// One batch's product; `a_m`, `a_k` and the output's row stride are the inputs'.
    product: Gathered,
    /// Strides of the second input's summed and column indices, in values.
    b_k: usize,
    b_n: usize,
    /// Each batch axis: its length and its strides in the first input, the second and the
    /// output.
    batches: TVec<[usize; 4]>,
    a_shape: TVec<usize>,
    b_shape: TVec<usize>,
    output_shape: TVec<usize>,
}

thread_local! {
    /// One batch's second operand laid out for [`Gathered::tiles`], kept between runs.
    static PACKED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl BatchedProduct {
    /// The product of `a` and `b` into `output`, batches in bands over the calling thread's
    /// tract executor.
    fn run(&self, a: &[f32], b: &[f32], output: &mut [f32]) -> TractResult<()> {
        ensure!(kernel::available(), "BatchedProduct needs AVX2 and FMA");
        let p = &self.product;
        ensure!(p.m > 0 && p.k > 0 && p.n > 0);
        // The last value each operand's strides reach, over every batch.
        let reach = |strides: &[usize], lens: &[usize]| -> usize {
            strides.iter().zip(lens).map(|(s, l)| s * (l - 1)).sum()
        };
        let lens: TVec<usize> = self.batches.iter().map(|b| b[0]).collect();
        let along = |i: usize| self.batches.iter().map(move |b| b[i]).collect::<TVec<_>>();
        let (a_batch, b_batch, o_batch) = (along(1), along(2), along(3));
        ensure!(reach(&a_batch, &lens) + reach(&[p.a_m, p.a_k], &[p.m, p.k]) < a.len());
        ensure!(reach(&b_batch, &lens) + reach(&[self.b_k, self.b_n], &[p.k, p.n]) < b.len());
        let rows = reach(&[p.out_stride, 1], &[p.m, p.n]);
        ensure!(reach(&o_batch, &lens) + rows < output.len());
        let width = padded_width(p.n);
        let wide = kernel::wide();
        let zeros = vec![0f32; width];
        let output = Output(output.as_mut_ptr());
        kernel::in_bands(lens.iter().product(), |from, to| {
            PACKED.with_borrow_mut(|packed| {
                packed.resize(p.k * width, 0.0);
                for batch in from..to {
                    let (mut rest, mut at) = (batch, [0usize; 3]);
                    for b in self.batches.iter().rev() {
                        let i = rest % b[0];
                        rest /= b[0];
                        for (at, stride) in at.iter_mut().zip(&b[1..]) {
                            *at += i * stride;
                        }
                    }
                    for (kk, row) in packed.chunks_exact_mut(width).enumerate() {
                        for (j, v) in row[..p.n].iter_mut().enumerate() {
                            *v = b[at[1] + kk * self.b_k + j * self.b_n];
                        }
                    }
                    // SAFETY: the features were checked above; the reads of `a` are checked
                    // by its slice; the output offsets were checked above, and each batch is
                    // written by its band alone.
                    unsafe {
                        let out = output.ptr().add(at[2]);
                        p.tiles(
                            &a[at[0]..],
                            packed,
                            &zeros,
                            out,
                            0..p.m.div_ceil(kernel::CO),
                            wide,
                        );
                    }
                }
            })
        });
        Ok(())
    }
}

impl Op for BatchedProduct {
    fn name(&self) -> StaticName {
        "BatchedProduct".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let p = &self.product;
        let batches: TVec<usize> = self.batches.iter().map(|b| b[0]).collect();
        Ok(vec![format!(
            "{batches:?} × {}×{} by {}×{}",
            p.m, p.k, p.k, p.n
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for BatchedProduct {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        ensure!(
            a.shape() == &*self.a_shape && b.shape() == &*self.b_shape,
            "BatchedProduct expects {:?} and {:?}, got {:?} and {:?}",
            self.a_shape,
            self.b_shape,
            a.shape(),
            b.shape()
        );
        // SAFETY: `run` writes every value of the output.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&self.output_shape)? };
        if output.len() > 0 {
            let (a, b) = (a.try_as_plain_ram()?, b.try_as_plain_ram()?);
            let mut out = output.try_as_plain_ram_mut()?;
            self.run(a.as_slice()?, b.as_slice()?, out.as_slice_mut::<f32>()?)?;
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for BatchedProduct {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].shape.as_concrete() == Some(&*self.a_shape));
        ensure!(inputs[1].shape.as_concrete() == Some(&*self.b_shape));
        Ok(tvec!(f32::fact(&*self.output_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let p = &self.product;
        let batches: usize = self.batches.iter().map(|b| b[0]).product();
        let fmas = batches * p.m * p.k * p.n;
        Ok(tvec!((Cost::FMA(f32::datum_type()), fmas.to_dim())))
    }

    as_op!();
}

/// The operator for `node` if it is an eligible batched product.
fn eligible(model: &TypedModel, node: &TypedNode) -> TractResult<Option<BatchedProduct>> {
    let Some(op) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    let [a, b] = node.inputs[..] else {
        return Ok(None);
    };
    let (a, b) = (model.outlet_fact(a)?, model.outlet_fact(b)?);
    let out = model.outlet_fact(node.id.into())?;
    let f32_only = [a, b, out]
        .iter()
        .all(|f| f.datum_type == f32::datum_type());
    let (Some(a_shape), Some(b_shape), Some(out_shape)) = (
        a.shape.as_concrete(),
        b.shape.as_concrete(),
        out.shape.as_concrete(),
    ) else {
        return Ok(None);
    };
    if op.q_params.is_some()
        || op.operating_dt != f32::datum_type()
        || !f32_only
        || a.konst.is_some()
        || b.konst.is_some()
    {
        return Ok(None);
    }
    let (mut rows, mut columns, mut summed, mut batches) = (
        Vec::<Place>::new(),
        Vec::<Place>::new(),
        Vec::<Place>::new(),
        Vec::<Place>::new(),
    );
    for axis in op.axes.iter_all_axes() {
        let one = |at: &TVec<usize>| (at.len() <= 1).then(|| at.first().copied());
        let (Some(pa), Some(pb), Some(po)) = (
            one(&axis.inputs[0]),
            one(&axis.inputs[1]),
            one(&axis.outputs[0]),
        ) else {
            return Ok(None);
        };
        let len = pa
            .map(|p| a_shape[p])
            .or(pb.map(|p| b_shape[p]))
            .or(po.map(|p| out_shape[p]))
            .unwrap_or(1);
        let place = (pa, pb, po, len);
        match (pa, pb, po) {
            _ if len == 1 => {}
            (Some(_), None, Some(_)) => rows.push(place),
            (None, Some(_), Some(_)) => columns.push(place),
            (Some(_), Some(_), None) => summed.push(place),
            (Some(_), Some(_), Some(_)) => batches.push(place),
            _ => return Ok(None),
        }
    }
    let ([row], [column], [sum]) = (&rows[..], &columns[..], &summed[..]) else {
        return Ok(None);
    };
    let (sa, sb, so) = (strides(a_shape), strides(b_shape), strides(out_shape));
    let at = |strides: &[usize], p: Option<usize>| p.map_or(0, |p| strides[p]);
    if at(&so, column.2) != 1 {
        return Ok(None);
    }
    let product = Gathered {
        m: row.3,
        k: sum.3,
        n: column.3,
        a_m: at(&sa, row.0),
        a_k: at(&sa, sum.0),
        out_stride: at(&so, row.2),
        columns_first: false,
    };
    if too_large_to_gather(product.m, product.k, product.n) {
        return Ok(None);
    }
    Ok(Some(BatchedProduct {
        product,
        b_k: at(&sb, sum.1),
        b_n: at(&sb, column.1),
        batches: batches
            .iter()
            .map(|b| [b.3, at(&sa, b.0), at(&sb, b.1), at(&so, b.2)])
            .collect(),
        a_shape: a_shape.into(),
        b_shape: b_shape.into(),
        output_shape: out_shape.into(),
    }))
}

/// Replaces every eligible batched product of `model` with [`BatchedProduct`]; returns how
/// many were replaced.
pub fn replace(model: &mut TypedModel) -> TractResult<usize> {
    replace_chains(model, |model, node| {
        Ok(eligible(model, node)?.map(|op| {
            (
                Box::new(op) as Box<dyn TypedOp>,
                node.inputs.iter().copied().collect(),
                OutletId::from(node.id),
            )
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{assert_close, ops, values_of};
    use tract_linalg::multithread::Executor;

    /// The `EinSum` `expr` of two sources, the lengths of its axes given by letter.
    fn graph(expr: &str, len: impl Fn(char) -> usize) -> TypedModel {
        let shape = |letters: &str| letters.chars().map(&len).collect::<TVec<usize>>();
        let (a, b) = expr.split_once("->").unwrap().0.split_once(',').unwrap();
        let mut model = TypedModel::default();
        let a = model.add_source("a", f32::fact(shape(a))).unwrap();
        let b = model.add_source("b", f32::fact(shape(b))).unwrap();
        let op = EinSum::new(expr.parse().unwrap(), f32::datum_type());
        let y = model.wire_node("product", op, &[a, b]).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    /// Values in −1..1 that do not repeat with any small period, for each input.
    fn inputs(model: &TypedModel) -> TVec<TValue> {
        (0..2)
            .map(|i| {
                let fact = model.input_fact(i).unwrap();
                let shape = fact.shape.as_concrete().unwrap();
                let n: usize = shape.iter().product();
                let v: Vec<f32> = (0..n)
                    .map(|j| ((j * 7919 + i * 31) % 2003) as f32 / 1001.5 - 1.0)
                    .collect();
                tensor1(&v).into_shape(shape).unwrap().into_tvalue()
            })
            .collect()
    }

    fn run(model: TypedModel, inputs: &TVec<TValue>, executor: Option<Executor>) -> Vec<f32> {
        let options = RunOptions {
            executor,
            ..RunOptions::default()
        };
        let plan = model.into_runnable_with_options(&options).unwrap();
        values_of(&plan.run(inputs.clone()).unwrap()[0])
    }

    fn lens(m: usize, k: usize, n: usize) -> impl Fn(char) -> usize {
        move |c| match c {
            'm' => m,
            'k' => k,
            'n' => n,
            'a' => 2,
            'b' => 3,
            _ => 1,
        }
    }

    #[test]
    fn every_attention_form_matches_tract_s_product() {
        if !kernel::available() {
            return;
        }
        // CLIPSeg's Q·Kᵀ and weighted sum of V, SAM's with two batch axes; rows that fill no
        // tile and part of the last, of a tile pair and part of the next, columns of part of a
        // vector and of 3 + 2 vectors and a part (of 8 lanes, or of 16), sums of 2 and 49.
        let forms = [
            ("mbk,nbk->bmn", 13, 5, 11),
            ("bmk,kbn->mbn", 6, 13, 16),
            ("ambk,anbk->abmn", 3, 16, 49),
            ("abmk,akbn->ambn", 9, 49, 16),
            ("bmk,bkn->bmn", 4, 2, 3),
            ("mbk,nbk->bmn", 10, 7, 81),
        ];
        kernel::tests::each_width(|width| {
            for &(expr, m, k, n) in &forms {
                let mut model = graph(expr, lens(m, k, n));
                let x = inputs(&model);
                let want = run(model.clone(), &x, None);
                assert_eq!(replace(&mut model).unwrap(), 1, "{expr}");
                assert_eq!(
                    ops(&model),
                    ["Source", "Source", "BatchedProduct"],
                    "{expr}"
                );
                let got = run(model, &x, None);
                assert_close(&got, &want, &format!("{expr}, {width}"));
            }
        });
    }

    #[test]
    fn batches_on_two_threads_give_the_same_bits_as_one_thread() {
        if !kernel::available() {
            return;
        }
        let mut model = graph("ambk,anbk->abmn", lens(17, 16, 20));
        assert_eq!(replace(&mut model).unwrap(), 1);
        let x = inputs(&model);
        let one = run(model.clone(), &x, None);
        let two = run(model, &x, Some(Executor::multithread(2)));
        assert!(crate::model::rewrite::same_bits(&one, &two));
    }

    #[test]
    fn other_products_keep_tract_s_operator() {
        for (expr, m, k, n) in [
            ("bmk,bkn->bnm", 8, 8, 8),   // columns not contiguous in the output
            ("bmk,bkn->mn", 8, 8, 8),    // a batch summed
            ("bmxk,bkn->bmxn", 8, 8, 8), // two row axes
        ] {
            let len = |c| if c == 'x' { 2 } else { lens(m, k, n)(c) };
            let mut model = graph(expr, len);
            assert_eq!(replace(&mut model).unwrap(), 0, "{expr}");
        }
        // Large, with a long sum: kept for tract with vectors of 8 lanes, not of 16.
        kernel::tests::each_width(|width| {
            let mut model = graph("bmk,bkn->bmn", lens(256, 384, 96));
            let taken = replace(&mut model).unwrap();
            assert_eq!(taken, usize::from(kernel::wide()), "{width}");
        });
    }
}
