//! Products of a tensor with a constant matrix (`EinSum`s such as `akm,kn->mn`: the linear
//! layers of the transformers, the SAM-3D decoder's per-voxel heads), on the convolution's
//! micro-kernel, swapped into decluttered graphs for tract's matrix product.
//!
//! The shapes here are small or thin: 65 × 64 by 64 × 64 in the CLIPSeg image graph, 13 824 ×
//! 16 by 16 × 24 and outer products (13 824 × 1 by 1 × 24) in the SAM-3D decoder. tract runs
//! them at 17–40 GFLOP/s, and the outer products at 0.5, paying its packing and per-tile work
//! on every call (operator profile, 1 thread, x86-64). Here the constant is laid out once, in
//! one of two ways:
//! - where the first operand's rows are contiguous (`akm,kn->mn`, the common form after
//!   tract's declutter), vectors run along them: [`kernel::sum`] reads 3 vectors of 8 rows in
//!   place for each summed index and 4 of the constant's columns from its packed layout, as it
//!   reads pixels and output channels in a convolution (with AVX-512, [`kernel::sum_wide`] 3
//!   vectors of 16 rows and 8 columns); the tile is transposed on its store,
//!   or stored as it is where the output is laid out `[columns][rows]`;
//! - otherwise vectors run along the constant's columns, and each tile of 4 rows of the first
//!   operand (a pair of them with AVX-512) is gathered into the kernel's weight layout; the tile is transposed on its store
//!   where the output is laid out `[columns][rows]` (`mbk,bkn->anm`, eight of the CLIPSeg
//!   image graph's products).
//!
//! The bias of an `Add` that alone reads the product is added before the one store.
//!
//! Only f32 products whose second input is a constant, with one axis of each operand kept in
//! the output (other than axes of size 1), the summed axes adjacent in the first input, the
//! output laid out as `[rows][columns]` or `[columns][rows]`, and, for gathered tiles, a size
//! where they are the faster (`MAX_FMAS`), are replaced; every other `EinSum` keeps tract's
//! operator. Summation order differs from tract's and onnxruntime's, so results agree within
//! float rounding.

use std::arch::x86_64::*;

use tract_core::internal::*;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::math::Add;

use super::kernel::{self, Output, CO, LANES, WIDE_LANES};
use crate::model::rewrite::{
    along_axis, bin_op, constant_operand, only_reader, replace_chains, same_bits,
};

/// Where the first operand's rows are not contiguous, the products taken: those of up to this
/// many multiply–adds, and any with a summed length of up to [`SHORT_K`]. On larger products
/// with longer sums, gathering each tile of 4 rows costs more than tract's kernel, which packs
/// the first operand once (`cargo bench --bench conv -- product`, gathered tiles:
/// 256 × 384 × 96 at 0.71× tract's speed, 216 × 96 × 96 at 0.83×, 1728 × 64 × 32 at 0.58×;
/// 65 × 64 × 64 at 1.4×, 1024 × 32 × 128 at 1.4×). With AVX-512 every size is taken: tiles
/// of 8 rows with vectors of 16 lanes ran 256 × 384 × 96 at 1.07× tract's AVX-512 speed, and
/// the SAM encoder's products (tract's OptMatMul and its packing, and ours) in 2.5 ms instead of
/// 3.1 (operator profile, Zen 5).
const MAX_FMAS: usize = 1 << 20;
/// See [`MAX_FMAS`].
const SHORT_K: usize = 32;

/// Whether gathered tiles would be slower than tract's kernel on an m × k by k × n product
/// ([`MAX_FMAS`]; never with AVX-512).
pub(super) fn too_large_to_gather(m: usize, k: usize, n: usize) -> bool {
    k > SHORT_K && m * k * n > MAX_FMAS && !kernel::wide()
}

/// `output[i][j] = Σ_k a(i, k) · b[k][j] + bias[j]`, `a` read with strides from the first
/// input, `b` a constant.
#[derive(Debug, Clone)]
pub struct ConstProduct {
    /// Rows, summed length, columns.
    m: usize,
    k: usize,
    n: usize,
    /// Strides of the first input's row and summed indices, in values (0 when absent).
    a_m: usize,
    a_k: usize,
    /// Whether vectors run along the rows (the first operand's rows are contiguous, `a_m` = 1,
    /// and read in place; a tile holds 4 columns) or along the columns (a tile of 4 rows of the
    /// first operand is gathered).
    along_rows: bool,
    /// Whether the output is laid out `[columns][rows]`: tiles along rows are then stored as
    /// they are, a plane per column as a convolution stores its channels, and gathered tiles
    /// are transposed on their store.
    columns_first: bool,
    /// The constant: along rows, [`kernel::pack`]ed as `[column tile][k][CO]`; along columns,
    /// `[k][padded_width(n)]`. Zero past `n`.
    b: Arc<[f32]>,
    /// One value per column, rounded up to whole tiles (along rows) or vectors (along
    /// columns); zero without a bias.
    bias: Arc<[f32]>,
    input_shape: TVec<usize>,
    output_shape: TVec<usize>,
}

/// Equal when they compute the same: the same geometry and bits of every parameter.
impl PartialEq for ConstProduct {
    fn eq(&self, other: &ConstProduct) -> bool {
        let layout = (self.along_rows, self.columns_first);
        (self.m, self.k, self.n, self.a_m, self.a_k, layout)
            == (
                other.m,
                other.k,
                other.n,
                other.a_m,
                other.a_k,
                (other.along_rows, other.columns_first),
            )
            && self.input_shape == other.input_shape
            && self.output_shape == other.output_shape
            && same_bits(&self.b, &other.b)
            && same_bits(&self.bias, &other.bias)
    }
}

impl Eq for ConstProduct {}

impl ConstProduct {
    /// The product of `input` (`input_shape`) into `output` (`m × n` values), in bands of row
    /// tiles over the calling thread's tract executor.
    fn run(&self, input: &[f32], output: &mut [f32]) -> TractResult<()> {
        ensure!(kernel::available(), "ConstProduct needs AVX2 and FMA");
        ensure!(output.len() == self.m * self.n && self.k > 0);
        let last = (self.m.max(1) - 1) * self.a_m + (self.k - 1) * self.a_k;
        ensure!(last < input.len(), "an input of {} values", input.len());
        let output = Output(output.as_mut_ptr());
        // SAFETY: the features were checked above; every read index is at most `last`, and
        // the output has m·n values, of which each band writes its own rows.
        let wide = kernel::wide();
        if self.along_rows {
            let lanes = if wide { kernel::WIDE_LANES } else { LANES };
            let blocks: Vec<_> = kernel::blocks(self.m.div_ceil(lanes)).collect();
            kernel::in_bands(blocks.len(), |from, to| unsafe {
                self.row_blocks(input, &output, &blocks[from..to], wide)
            });
        } else {
            let gathered = Gathered {
                m: self.m,
                k: self.k,
                n: self.n,
                a_m: self.a_m,
                a_k: self.a_k,
                out_stride: if self.columns_first { self.m } else { self.n },
                columns_first: self.columns_first,
            };
            kernel::in_bands(self.m.div_ceil(CO), |from, to| unsafe {
                gathered.tiles(input, &self.b, &self.bias, output.ptr(), from..to, wide)
            });
        }
        Ok(())
    }

    /// Row `blocks` (first vector, vectors) of the product, vectors along the rows: of 16
    /// lanes and tiles by pairs ([`kernel::sum_wide`]) where `wide`, else of 8 lanes.
    ///
    /// # Safety
    /// AVX2 and FMA are available, and AVX-512 F where `wide`; `input` holds every value the
    /// strides reach, and `a_m` is 1; `output` has m·n values, and the rows of `blocks` are
    /// written by this call alone.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn row_blocks(
        &self,
        input: &[f32],
        output: &Output,
        blocks: &[(usize, usize)],
        wide: bool,
    ) {
        let lanes = if wide { kernel::WIDE_LANES } else { LANES };
        let tiles = self.n.div_ceil(CO);
        let mut tail = Vec::new();
        for &(v, n) in blocks {
            let first = v * lanes;
            let valid = (self.m - first).min(n * lanes);
            // n·lanes values from `first` in each of the k rows: in place, or for the last
            // block a zero-padded copy.
            let (a, step) = if valid == n * lanes {
                (input[first..].as_ptr(), self.a_k * 4)
            } else {
                tail.resize(self.k * n * lanes, 0.0);
                for (k, row) in tail.chunks_exact_mut(n * lanes).enumerate() {
                    row[..valid].copy_from_slice(&input[first + k * self.a_k..][..valid]);
                }
                (tail.as_ptr(), n * lanes * 4)
            };
            let store = |tile: usize, sums: &mut kernel::Sums| {
                let columns = (self.n - tile * CO).min(CO);
                let vectors = n * lanes / LANES;
                if self.columns_first {
                    let out = output.ptr().add(tile * CO * self.m + first);
                    kernel::store(sums, vectors, &[], out, self.m, columns, valid);
                } else {
                    let out = output.ptr().add(first * self.n + tile * CO);
                    store_transposed(sums, vectors, out, self.n, columns, valid);
                }
            };
            let (weights, bias) = (&self.b[..], &self.bias[..]);
            kernel::each_tile(wide, n, a, step, &[0], self.k, weights, bias, tiles, store);
        }
    }
}

/// A product whose first operand is gathered in tiles of [`CO`] rows, read at its strides, with
/// vectors along the columns of a second operand laid out `[k][padded_width(n)]`
/// (a constant packed once in [`ConstProduct`], each batch's operand packed at each run in
/// [`super::batched`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Gathered {
    /// Rows, summed length, columns.
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// Strides of the first operand's row and summed indices, in values.
    pub a_m: usize,
    pub a_k: usize,
    /// The output's stride between rows, or between columns where `columns_first`; the other
    /// index is contiguous.
    pub out_stride: usize,
    pub columns_first: bool,
}

impl Gathered {
    /// Row tiles `tiles` of `a` times `b`, plus `bias` (one value per column, [`padded_width`]),
    /// into `out`: by pairs of tiles with vectors of 16 lanes where `wide` and the sums have 8
    /// terms or more, else tile by tile with vectors of 8 (with fewer terms the stores and the
    /// work around each sum set the pace, and cost less in the narrow form: outer products
    /// 13 824 × 1 × 24 took 217 µs wide against 89 µs).
    ///
    /// # Safety
    /// AVX2 and FMA are available, and AVX-512 F where `wide`; `a` holds every value the strides
    /// reach and `b` k rows of [`padded_width`] values; `out` is writable at every row and column
    /// of the tiles, which this call alone writes.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tiles(
        &self,
        a: &[f32],
        b: &[f32],
        bias: &[f32],
        out: *mut f32,
        tiles: std::ops::Range<usize>,
        wide: bool,
    ) {
        let wide = wide && self.k >= LANES;
        let (lanes, per_sum) = if wide { (WIDE_LANES, 2) } else { (LANES, 1) };
        let step = padded_width(self.n) * 4;
        // The `[k][CO]` rows of each tile the kernel sums at once, one after the other.
        let mut tile_a = vec![0f32; per_sum * self.k * CO];
        for first in tiles.clone().step_by(per_sum) {
            let count = per_sum.min(tiles.end - first);
            let rows = |tile: usize| (self.m - tile * CO).min(CO);
            for (i, gathered) in tile_a.chunks_exact_mut(self.k * CO).take(count).enumerate() {
                let from = &a[(first + i) * CO * self.a_m..];
                for (k, lanes) in gathered.chunks_exact_mut(CO).enumerate() {
                    for (r, lane) in lanes.iter_mut().enumerate().take(rows(first + i)) {
                        *lane = from[r * self.a_m + k * self.a_k];
                    }
                }
            }
            for (v, n) in kernel::blocks(self.n.div_ceil(lanes)) {
                let column = v * lanes;
                let valid = (self.n - column).min(n * lanes);
                let vectors = n * lanes / LANES;
                // `b` has k rows of `width` values: n·lanes values from `column` in each.
                let b = b[column..].as_ptr();
                let zero = [0.0; 2 * CO];
                let each = |i: usize, sums: &mut kernel::Sums| {
                    let tile = first + i;
                    for lane in sums.iter_mut() {
                        for (j, s) in lane.iter_mut().take(vectors).enumerate() {
                            let bias = _mm256_loadu_ps(bias[column + j * LANES..].as_ptr());
                            *s = _mm256_add_ps(*s, bias);
                        }
                    }
                    if self.columns_first {
                        let out = out.add(column * self.out_stride + tile * CO);
                        store_transposed(sums, vectors, out, self.out_stride, rows(tile), valid);
                    } else {
                        let out = out.add(tile * CO * self.out_stride + column);
                        kernel::store(sums, vectors, &[], out, self.out_stride, rows(tile), valid);
                    }
                };
                kernel::each_tile(wide, n, b, step, &[0], self.k, &tile_a, &zero, count, each);
            }
        }
    }
}

/// The length of each of the k rows of the second operand of [`Gathered::tiles`], and of its
/// bias: n rounded up to whole vectors of 16 lanes (zero past n), for either vector width.
pub(super) fn padded_width(n: usize) -> usize {
    n.div_ceil(WIDE_LANES) * WIDE_LANES
}

/// Stores the first `n` vectors of `sums`, which hold [`CO`] columns × 8 rows each, as rows:
/// of each of the first `valid` rows from `out` on, `row` values apart, the first `columns`.
/// (Gathered tiles of a `[columns][rows]` output: [`CO`] rows × 8 columns each.)
///
/// # Safety
/// AVX2 is available; `out` is writable for `columns` values in each of `valid` rows.
#[target_feature(enable = "avx2,fma")]
unsafe fn store_transposed(
    sums: &kernel::Sums,
    n: usize,
    out: *mut f32,
    row: usize,
    columns: usize,
    valid: usize,
) {
    let [s0, s1, s2, s3] = sums;
    for (v, (((&c0, &c1), &c2), &c3)) in s0.iter().zip(s1).zip(s2).zip(s3).take(n).enumerate() {
        let (t0, t1) = (_mm256_unpacklo_ps(c0, c1), _mm256_unpackhi_ps(c0, c1));
        let (t2, t3) = (_mm256_unpacklo_ps(c2, c3), _mm256_unpackhi_ps(c2, c3));
        // Row i of the vector in the low half of rows[i], row 4 + i in the high half.
        let rows = [
            _mm256_shuffle_ps::<0x44>(t0, t2),
            _mm256_shuffle_ps::<0xEE>(t0, t2),
            _mm256_shuffle_ps::<0x44>(t1, t3),
            _mm256_shuffle_ps::<0xEE>(t1, t3),
        ];
        for r in 0..LANES.min(valid.saturating_sub(v * LANES)) {
            let x = if r < 4 {
                _mm256_castps256_ps128(rows[r])
            } else {
                _mm256_extractf128_ps::<1>(rows[r - 4])
            };
            let dst = out.add((v * LANES + r) * row);
            if columns == CO {
                _mm_storeu_ps(dst, x);
            } else {
                let mut tmp = [0f32; CO];
                _mm_storeu_ps(tmp.as_mut_ptr(), x);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, columns);
            }
        }
    }
}

impl Op for ConstProduct {
    fn name(&self) -> StaticName {
        "ConstProduct".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{}×{} by {}×{}",
            self.m, self.k, self.k, self.n
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for ConstProduct {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        ensure!(
            input.shape() == &*self.input_shape,
            "ConstProduct expects {:?}, got {:?}",
            self.input_shape,
            input.shape()
        );
        // SAFETY: `run` writes every value of the output.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&self.output_shape)? };
        if output.len() > 0 {
            let input = input.try_as_plain_ram()?;
            let mut out = output.try_as_plain_ram_mut()?;
            self.run(input.as_slice::<f32>()?, out.as_slice_mut::<f32>()?)?;
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for ConstProduct {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].shape.as_concrete() == Some(&*self.input_shape));
        Ok(tvec!(f32::fact(&*self.output_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let fmas = self.m * self.k * self.n;
        Ok(tvec!((Cost::FMA(f32::datum_type()), fmas.to_dim())))
    }

    as_op!();
}

/// Row-major strides of `shape`, in values.
pub(super) fn strides(shape: &[usize]) -> TVec<usize> {
    let mut strides: TVec<usize> = tvec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// An axis of a product: its position in the first input, the second input and the output,
/// and its length.
pub(super) type Place = (Option<usize>, Option<usize>, Option<usize>, usize);

/// The operator for `node` if it is an eligible product, and the outlet it replaces (the
/// product's, or that of the bias `Add` that alone reads it).
fn eligible(model: &TypedModel, node: &TypedNode) -> TractResult<Option<(ConstProduct, OutletId)>> {
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
    let (Some(konst), Some(a_shape), Some(out_shape)) =
        (&b.konst, a.shape.as_concrete(), out.shape.as_concrete())
    else {
        return Ok(None);
    };
    if op.q_params.is_some() || op.operating_dt != f32::datum_type() || !f32_only {
        return Ok(None);
    }
    let b_shape = konst.shape();
    // Each axis: kept from the first input (rows), kept from the second (columns), or summed.
    let (mut rows, mut columns, mut summed) =
        (Vec::<Place>::new(), None::<Place>, Vec::<Place>::new());
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
            .or(po.map(|p| out_shape[p]));
        let place = (pa, pb, po, len.unwrap_or(1));
        match (pa, pb, po) {
            _ if place.3 == 1 => {}
            (Some(_), None, Some(_)) => rows.push(place),
            (None, Some(_), Some(_)) if columns.is_none() => columns = Some(place),
            (Some(_), Some(_), None) => summed.push(place),
            _ => return Ok(None),
        }
    }
    // The row axes and the summed axes are each one run of the first input; the output is
    // [rows][columns] or [columns][rows], the row axes in the same order as in the first input.
    rows.sort_by_key(|r| r.0);
    summed.sort_by_key(|s| s.0);
    let a_strides = strides(a_shape);
    let one_run = |axes: &[Place]| {
        axes.windows(2)
            .all(|w| a_strides[w[0].0.unwrap_or(0)] == w[1].3 * a_strides[w[1].0.unwrap_or(0)])
    };
    let in_order = |axes: Vec<&Place>| axes.windows(2).all(|w| w[0].2 < w[1].2);
    let rows_first = in_order(rows.iter().chain(&columns).collect());
    let columns_first = !rows_first && in_order(columns.iter().chain(&rows).collect());
    if !one_run(&rows) || !one_run(&summed) || !(rows_first || columns_first) {
        return Ok(None);
    }
    let stride_in_a = |place: Option<&Place>| place.and_then(|p| p.0).map_or(0, |p| a_strides[p]);
    let m: usize = rows.iter().map(|r| r.3).product();
    let n = columns.map_or(1, |c| c.3);
    let k: usize = summed.iter().map(|s| s.3).product();
    // Vectors along contiguous rows read the first operand in place, but store through a
    // transposition: for sums of fewer than 8 terms the store sets the pace, and is faster
    // along the columns (13 824 × 1 × 24: 190 against 119 µs).
    let a_m = stride_in_a(rows.last());
    let along_rows = a_m == 1 && m >= LANES && k >= LANES;
    if !along_rows && too_large_to_gather(m, k, n) {
        return Ok(None);
    }
    let konst = konst.try_as_plain_ram()?;
    let values = konst.as_slice::<f32>()?;
    let b_strides = strides(b_shape);
    let column_stride = columns.and_then(|c| c.1).map_or(0, |p| b_strides[p]);
    // b(kk, j): kk's index along each summed axis, the last the fastest.
    let b_at = |kk: usize, j: usize| {
        let mut rest = kk;
        let mut at = j * column_stride;
        for s in summed.iter().rev() {
            at += (rest % s.3) * s.1.map_or(0, |p| b_strides[p]);
            rest /= s.3;
        }
        values[at]
    };
    let b: Arc<[f32]> = if along_rows {
        let transposed: Vec<f32> = (0..n * k).map(|i| b_at(i % k, i / k)).collect();
        kernel::pack(&transposed, n, k, 1)
    } else {
        let width = padded_width(n);
        (0..k * width)
            .map(|i| {
                if i % width < n {
                    b_at(i / width, i % width)
                } else {
                    0.0
                }
            })
            .collect()
    };
    let padded = |bias: &[f32]| -> Arc<[f32]> {
        let width = if along_rows {
            kernel::tiles(n) * CO
        } else {
            padded_width(n)
        };
        (0..width)
            .map(|j| bias.get(j).copied().unwrap_or(0.0))
            .collect()
    };
    let mut product = ConstProduct {
        m,
        k,
        n,
        a_m,
        a_k: stride_in_a(summed.last()),
        along_rows,
        columns_first,
        b,
        bias: padded(&[]),
        input_shape: a_shape.into(),
        output_shape: out_shape.into(),
    };
    // A bias along the columns added to the product alone.
    let mut output = OutletId::from(node.id);
    if let (Some((_, _, Some(c), _)), Some(next)) = (columns, only_reader(model, node)?) {
        let bias = constant_operand(model, next)?
            .filter(|_| bin_op::<Add>(next))
            .and_then(|(konst, _)| along_axis(&konst, out_shape.len(), c, n));
        let same_shape = model.outlet_fact(next.id.into())?.shape == out.shape;
        if let Some(bias) = bias.filter(|_| same_shape) {
            product.bias = padded(&bias);
            output = next.id.into();
        }
    }
    Ok(Some((product, output)))
}

/// Replaces every eligible product of `model` with [`ConstProduct`]; returns how many.
pub fn replace(model: &mut TypedModel) -> TractResult<usize> {
    replace_chains(model, |model, node| {
        Ok(eligible(model, node)?.map(|(op, output)| {
            (
                Box::new(op) as Box<dyn TypedOp>,
                tvec![node.inputs[0]],
                output,
            )
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{assert_close, ops, run};
    use tract_core::ops::binary::TypedBinOp;
    use tract_linalg::multithread::Executor;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 101) % 2003) as f32 / 1001.5 - 1.0)
            .collect()
    }

    /// One `expr` product of a source by a constant, lengths by letter (1 for others), with a
    /// bias along `n` if `bias`; the second input a source too unless `constant`.
    fn graph(expr: &str, len: impl Fn(char) -> usize, bias: bool, constant: bool) -> TypedModel {
        let shape = |letters: &str| letters.chars().map(&len).collect::<TVec<usize>>();
        let (inputs, output) = expr.split_once("->").unwrap();
        let (a, b) = inputs.split_once(',').unwrap();
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(shape(a))).unwrap();
        let b_shape = shape(b);
        let w = if constant {
            let w = tensor1(&values(b_shape.iter().product(), 1));
            model
                .add_const("w", w.into_shape(&b_shape).unwrap())
                .unwrap()
        } else {
            model.add_source("w", f32::fact(b_shape)).unwrap()
        };
        let op = EinSum::new(expr.parse().unwrap(), f32::datum_type());
        let mut y = model.wire_node("product", op, &[x, w]).unwrap();
        if bias {
            let along_n: TVec<usize> = output
                .chars()
                .map(|c| if c == 'n' { len(c) } else { 1 })
                .collect();
            let b = tensor1(&values(len('n'), 2)).into_shape(&along_n).unwrap();
            let b = model.add_const("b", b).unwrap();
            let add = TypedBinOp(Box::new(Add), None);
            y = model.wire_node("bias", add, &[y[0], b]).unwrap();
        }
        model.select_output_outlets(&y).unwrap();
        model
    }

    fn input(model: &TypedModel) -> Tensor {
        let shape = model
            .input_fact(0)
            .unwrap()
            .shape
            .as_concrete()
            .unwrap()
            .to_vec();
        tensor1(&values(shape.iter().product(), 3))
            .into_shape(&shape)
            .unwrap()
    }

    #[test]
    fn every_form_matches_tract_s_product() {
        if !kernel::available() {
            return;
        }
        // Gathered tiles: rows that fill no tile, one, and part of the last; columns of part of
        // a vector, and of 3 + 2 vectors and a part; summed lengths of 1 and over two axes.
        // Vectors along the rows: 29 rows (2 + 2 vectors of 8, the last in part), 83 and 50
        // (3 + 2 and 3 + 1 vectors of 16), columns that end in part of a tile or of a tile pair,
        // and exactly one vector and one tile; two row axes.
        let lens = |m, k, n| {
            move |c| match c {
                'm' => m,
                'k' => k,
                'n' => n,
                'b' => 3,
                _ => 1,
            }
        };
        let forms = [
            ("akm,kn->mn", 13, 5, 20),
            ("amk,kn->amn", 4, 7, 41),
            ("mk,kn->mn", 3, 16, 8),
            ("mbk,bkn->amn", 9, 4, 17),
            ("akm,n->mn", 10, 1, 24),
            ("m,n->mn", 1, 1, 3),
            ("k,nk->n", 1, 64, 33),
            ("akm,kn->mn", 29, 9, 14),
            ("akm,kn->amn", 8, 12, 4),
            ("akxm,kn->xmn", 7, 9, 10),
            ("mbk,bkn->anm", 29, 4, 14),
            ("akm,n->anm", 5, 1, 9),
            ("akm,kn->nm", 8, 8, 4),
            ("akm,kn->mn", 83, 9, 21),
            ("akm,kn->nm", 50, 8, 12),
        ];
        kernel::tests::each_width(|width| {
            for &(expr, m, k, n) in &forms {
                for bias in [false, true] {
                    let mut model = graph(expr, lens(m, k, n), bias, true);
                    let x = input(&model);
                    let want = run(model.clone(), &x, None);
                    assert_eq!(replace(&mut model).unwrap(), 1, "{expr}");
                    assert_eq!(
                        ops(&model),
                        ["Source", "ConstProduct"],
                        "{expr} bias {bias}"
                    );
                    let got = run(model, &x, None);
                    assert_close(&got, &want, &format!("{expr} bias {bias}, {width}"));
                }
            }
        });
    }

    #[test]
    fn bands_on_two_threads_give_the_same_bits_as_one_thread() {
        if !kernel::available() {
            return;
        }
        let lens = |c| match c {
            'm' => 37,
            'k' => 24,
            'n' => 40,
            _ => 1,
        };
        for expr in ["akm,kn->mn", "amk,kn->mn", "akm,kn->nm", "amk,kn->nm"] {
            let mut model = graph(expr, lens, true, true);
            assert_eq!(replace(&mut model).unwrap(), 1);
            let x = input(&model);
            let one = run(model.clone(), &x, None);
            let two = run(model, &x, Some(Executor::multithread(2)));
            assert!(same_bits(&one, &two), "{expr}");
        }
    }

    #[test]
    fn other_products_keep_tract_s_operator() {
        let lens = |c| match c {
            'm' => 256,
            'k' => 384,
            'n' => 96,
            'b' => 2,
            _ => 1,
        };
        for (expr, constant) in [
            ("kbm,kn->nmb", true),  // columns before rows, in another order
            ("bmk,bkn->bmn", true), // an axis kept from both
            ("kbm,kn->mbn", true),  // rows in another order
            ("mk,kn->mn", false),   // no constant
        ] {
            let mut model = graph(expr, lens, false, constant);
            assert_eq!(replace(&mut model).unwrap(), 0, "{expr}");
        }
        // Large, with a long sum: tract's is faster than gathered tiles of 8 lanes, not of 16.
        kernel::tests::each_width(|width| {
            let mut model = graph("mk,kn->mn", lens, false, true);
            let taken = replace(&mut model).unwrap();
            assert_eq!(taken, usize::from(kernel::wide()), "{width}");
        });
    }
}
