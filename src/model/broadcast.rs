//! f32 addition, subtraction, multiplication and division with broadcasting, swapped into
//! optimised plans where tract keeps its generic operator.
//!
//! tract turns a binary operator into a fast one when one input is a scalar or both have the
//! same shape, or folds it into a matrix product; any other broadcast (a per-head attention
//! bias over windows, `[25, 2, 49, 49] + [1, 2, 49, 49]` in the SAM encoder; distances of
//! every voxel to every click, `[1, 13824, 1, 3] − [1, 1, 4, 3]` in the SAM-3D decoder; a bias
//! along the last axis after a product) goes through its per-element index arithmetic at
//! 3–12 ns a value (operator profile, 1 thread, x86-64). [`Broadcast`] merges the output's axes
//! where both inputs are laid out alike, then runs flat loops over the innermost axis (an
//! input either advancing or repeating one value), which the compiler vectorises (AVX2 where
//! the CPU has it).
//!
//! Only these four operators on f32 inputs of the same rank whose shapes differ are replaced;
//! the arithmetic is the same, so results are bit-identical.

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::math::{Add, Div, Mul, Sub};

/// The arithmetic of a [`Broadcast`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

/// `a ∘ b` with numpy broadcasting, for f32 inputs of the same rank.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Broadcast(pub Arith);

impl Op for Broadcast {
    fn name(&self) -> StaticName {
        format!("Broadcast{:?}", self.0).into()
    }

    op_as_typed_op!();
}

impl EvalOp for Broadcast {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        let shape = broadcast_shape(a.shape(), b.shape())?;
        // SAFETY: `apply` writes every value of the output.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        if output.len() > 0 {
            let layout = Layout::new(&shape, a.shape(), b.shape());
            let (a, b) = (a.try_as_plain_ram()?, b.try_as_plain_ram()?);
            let mut out = output.try_as_plain_ram_mut()?;
            let (a, b, out) = (
                a.as_slice::<f32>()?,
                b.as_slice::<f32>()?,
                out.as_slice_mut::<f32>()?,
            );
            match self.0 {
                Arith::Add => apply(&layout, a, b, out, |x, y| x + y),
                Arith::Sub => apply(&layout, a, b, out, |x, y| x - y),
                Arith::Mul => apply(&layout, a, b, out, |x, y| x * y),
                Arith::Div => apply(&layout, a, b, out, |x, y| x / y),
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Broadcast {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (a, b) = (&inputs[0].shape, &inputs[1].shape);
        ensure!(a.rank() == b.rank());
        let shape: TVec<TDim> = a
            .iter()
            .zip(b.iter())
            .map(|(x, y)| if x.is_one() { y.clone() } else { x.clone() })
            .collect();
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// The output shape of two same-rank input shapes.
fn broadcast_shape(a: &[usize], b: &[usize]) -> TractResult<TVec<usize>> {
    ensure!(
        a.len() == b.len(),
        "shapes {a:?} and {b:?} of different ranks"
    );
    a.iter()
        .zip(b)
        .map(|(&x, &y)| match (x, y) {
            _ if x == y || y == 1 => Ok(x),
            (1, _) => Ok(y),
            _ => bail!("shapes {a:?} and {b:?} do not broadcast"),
        })
        .collect()
}

/// The output's axes, merged where both inputs repeat or both advance along them (axes of
/// length 1 dropped), with each input's stride along each (0 where it repeats).
#[derive(Debug, PartialEq)]
struct Layout {
    dims: TVec<usize>,
    a: TVec<usize>,
    b: TVec<usize>,
}

impl Layout {
    fn new(out: &[usize], a: &[usize], b: &[usize]) -> Layout {
        let mut dims: TVec<usize> = tvec![];
        let mut repeats: TVec<(bool, bool)> = tvec![];
        for ((&d, &da), &db) in out.iter().zip(a).zip(b) {
            if d == 1 {
                continue;
            }
            let r = (da == 1, db == 1);
            match (dims.last_mut(), repeats.last()) {
                (Some(last), Some(&previous)) if previous == r => *last *= d,
                _ => {
                    dims.push(d);
                    repeats.push(r);
                }
            }
        }
        let strides = |repeat: &dyn Fn(&(bool, bool)) -> bool| {
            let mut strides = tvec![0; dims.len()];
            let mut size = 1;
            for i in (0..dims.len()).rev() {
                if !repeat(&repeats[i]) {
                    strides[i] = size;
                    size *= dims[i];
                }
            }
            strides
        };
        let (sa, sb) = (strides(&|r| r.0), strides(&|r| r.1));
        Layout { dims, a: sa, b: sb }
    }
}

/// `out = a ∘ b` over `layout`, with AVX2 where the CPU has it (the body is the same; the
/// wider vectors are the compiler's).
fn apply(
    layout: &Layout,
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    f: impl Fn(f32, f32) -> f32 + Copy,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has the features the function is compiled for.
        unsafe { apply_avx2(layout, a, b, out, f) };
        return;
    }
    apply_any(layout, a, b, out, f);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn apply_avx2(
    layout: &Layout,
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    f: impl Fn(f32, f32) -> f32 + Copy,
) {
    apply_any(layout, a, b, out, f);
}

#[inline(always)]
fn apply_any(
    layout: &Layout,
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    f: impl Fn(f32, f32) -> f32 + Copy,
) {
    let outer = layout.dims.len().saturating_sub(1);
    let inner = layout.dims.last().copied().unwrap_or(1);
    let (step_a, step_b) = (
        layout.a.last().copied().unwrap_or(0),
        layout.b.last().copied().unwrap_or(0),
    );
    let mut index: TVec<usize> = tvec![0; outer];
    let (mut at_a, mut at_b) = (0, 0);
    for row in out.chunks_exact_mut(inner) {
        match (step_a, step_b) {
            (0, 0) => row.fill(f(a[at_a], b[at_b])),
            (0, _) => {
                let x = a[at_a];
                row.iter_mut()
                    .zip(&b[at_b..at_b + inner])
                    .for_each(|(o, &y)| *o = f(x, y));
            }
            (_, 0) => {
                let y = b[at_b];
                row.iter_mut()
                    .zip(&a[at_a..at_a + inner])
                    .for_each(|(o, &x)| *o = f(x, y));
            }
            _ => {
                let pairs = a[at_a..at_a + inner].iter().zip(&b[at_b..at_b + inner]);
                row.iter_mut()
                    .zip(pairs)
                    .for_each(|(o, (&x, &y))| *o = f(x, y));
            }
        }
        // The next row: the last outer axis advances, carrying into the ones before it.
        for axis in (0..outer).rev() {
            index[axis] += 1;
            at_a += layout.a[axis];
            at_b += layout.b[axis];
            if index[axis] < layout.dims[axis] {
                break;
            }
            index[axis] = 0;
            at_a -= layout.a[axis] * layout.dims[axis];
            at_b -= layout.b[axis] * layout.dims[axis];
        }
    }
}

/// Replaces every f32 add, subtract, multiply and divide of `model` (an optimised plan's model)
/// whose same-rank inputs have different shapes with [`Broadcast`]; returns how many.
pub fn replace(model: &mut TypedModel) -> TractResult<usize> {
    super::rewrite::swap_ops(model, |model, node| {
        let Some(op) = node.op_as::<TypedBinOp>() else {
            return Ok(None);
        };
        let arith = if op.0.is::<Add>() {
            Arith::Add
        } else if op.0.is::<Sub>() {
            Arith::Sub
        } else if op.0.is::<Mul>() {
            Arith::Mul
        } else if op.0.is::<Div>() {
            Arith::Div
        } else {
            return Ok(None);
        };
        let facts = model.node_input_facts(node.id)?;
        let out = model.outlet_fact(node.id.into())?;
        let shapes = (facts[0].shape.as_concrete(), facts[1].shape.as_concrete());
        let (Some(a), Some(b)) = shapes else {
            return Ok(None);
        };
        let all_f32 = [facts[0], facts[1], out]
            .iter()
            .all(|f| f.datum_type == f32::datum_type());
        let eligible = all_f32 && a.len() == b.len() && a != b && broadcast_shape(a, b).is_ok();
        Ok(eligible.then(|| Box::new(Broadcast(arith)) as Box<dyn TypedOp>))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::binary::BinMiniOp;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 + seed * 13) % 41) as f32 * 0.25 - 5.0 + 0.125)
            .collect()
    }

    #[test]
    fn axes_merge_where_both_inputs_are_laid_out_alike() {
        let layout = Layout::new(&[25, 2, 49, 49], &[25, 2, 49, 49], &[1, 2, 49, 49]);
        assert_eq!(layout.dims.as_slice(), [25, 4802]);
        assert_eq!(
            (layout.a.as_slice(), layout.b.as_slice()),
            ([4802, 1].as_slice(), [0, 1].as_slice())
        );
        let layout = Layout::new(&[1, 13824, 4, 3], &[1, 13824, 1, 3], &[1, 1, 4, 3]);
        assert_eq!(layout.dims.as_slice(), [13824, 4, 3]);
        assert_eq!(
            (layout.a.as_slice(), layout.b.as_slice()),
            ([3, 0, 1].as_slice(), [0, 3, 1].as_slice())
        );
    }

    #[test]
    fn every_broadcast_gives_tract_s_bits() {
        let pairs: [(&[usize], &[usize]); 6] = [
            (&[2, 3, 4], &[1, 3, 4]),
            (&[1, 5, 1, 3], &[1, 1, 4, 3]),
            (&[6, 7], &[1, 7]),
            (&[6, 1], &[1, 7]),
            (&[3, 1, 5], &[3, 4, 1]),
            (&[1, 1], &[4, 9]),
        ];
        let ops: [(Box<dyn BinMiniOp>, Arith); 4] = [
            (Box::new(Add), Arith::Add),
            (Box::new(Sub), Arith::Sub),
            (Box::new(Mul), Arith::Mul),
            (Box::new(Div), Arith::Div),
        ];
        for (sa, sb) in pairs {
            for (op, arith) in &ops {
                let mut model = TypedModel::default();
                let a = model.add_source("a", f32::fact(sa)).unwrap();
                let b = model.add_source("b", f32::fact(sb)).unwrap();
                let y = model
                    .wire_node("op", TypedBinOp(op.clone(), None), &[a, b])
                    .unwrap();
                model.select_output_outlets(&y).unwrap();
                let inputs = tvec![
                    tensor1(&values(sa.iter().product(), 1))
                        .into_shape(sa)
                        .unwrap()
                        .into_tvalue(),
                    tensor1(&values(sb.iter().product(), 2))
                        .into_shape(sb)
                        .unwrap()
                        .into_tvalue(),
                ];
                let want = model
                    .clone()
                    .into_runnable()
                    .unwrap()
                    .run(inputs.clone())
                    .unwrap();
                assert_eq!(replace(&mut model).unwrap(), 1);
                let name = format!("Broadcast{arith:?}");
                assert!(
                    model.nodes().iter().any(|n| n.op().name() == name),
                    "{name}"
                );
                let got = model.into_runnable().unwrap().run(inputs).unwrap();
                assert_eq!(got[0].shape(), want[0].shape(), "{sa:?} {arith:?} {sb:?}");
                let bits = |t: &TValue| {
                    let t = t.try_as_plain_ram().unwrap();
                    t.as_slice::<f32>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>()
                };
                assert_eq!(bits(&got[0]), bits(&want[0]), "{sa:?} {arith:?} {sb:?}");
            }
        }
    }

    #[test]
    fn inputs_of_the_same_shape_keep_tract_s_operator() {
        let mut model = TypedModel::default();
        let a = model.add_source("a", f32::fact([2, 3])).unwrap();
        let b = model.add_source("b", f32::fact([2, 3])).unwrap();
        let y = model
            .wire_node("add", TypedBinOp(Box::new(Add), None), &[a, b])
            .unwrap();
        model.select_output_outlets(&y).unwrap();
        assert_eq!(replace(&mut model).unwrap(), 0);
    }
}
