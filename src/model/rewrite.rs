//! What the operator swaps share: replacing nodes of a tract graph one for one or a chain of
//! them by one operator, finding the only reader of a node's output, comparing operator parameters bit for bit (tract's
//! operators must be `Eq`, which f32 parameters are not by themselves), and reading the
//! constant operand of a binary operator.

use tract_core::internal::*;
use tract_core::ops::binary::{BinMiniOp, TypedBinOp};

/// Replaces each node of `model` for which `swap` gives an operator with that operator, on the
/// same inputs; returns how many were replaced. This is how `softmax`, `quantize` and `pool`
/// put their operators in.
pub fn swap_ops(
    model: &mut TypedModel,
    swap: impl Fn(&TypedModel, &TypedNode) -> TractResult<Option<Box<dyn TypedOp>>>,
) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        if let Some(op) = swap(model, node)? {
            let inputs = node.inputs.clone();
            TypedModelPatch::replace_single_op(model, node, &inputs, op)?.apply(model)?;
            replaced += 1;
        }
    }
    Ok(replaced)
}

/// What replaces a part of a graph: one operator, the outlets it reads, and the outlet whose
/// readers it takes over.
pub type Chain = (Box<dyn TypedOp>, TVec<OutletId>, OutletId);

/// Replaces, for each node of `model` (in evaluation order) for which `find` gives a
/// [`Chain`], the nodes between the chain's inputs and its output with its operator; returns
/// how many were replaced. This is how `conv`, `norm` and `depthwise` put in operators that
/// take over one or several of tract's.
pub fn replace_chains(
    model: &mut TypedModel,
    find: impl Fn(&TypedModel, &TypedNode) -> TractResult<Option<Chain>>,
) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some((op, inputs, output)) = find(model, node)? else {
            continue;
        };
        let mut patch = TypedModelPatch::default();
        let taps = patch.taps(model, &inputs)?;
        let wire = patch.wire_node(&node.name, op, &taps)?;
        patch.shunt_outside(model, output, wire[0])?;
        patch.apply(model)?;
        replaced += 1;
    }
    if replaced > 0 {
        model.compact()?;
    }
    Ok(replaced)
}

/// `node`'s only reader, when `node` has one and is not an output of the model.
pub fn only_reader<'m>(
    model: &'m TypedModel,
    node: &TypedNode,
) -> TractResult<Option<&'m TypedNode>> {
    if model.outputs.contains(&node.id.into()) {
        return Ok(None);
    }
    Ok(model
        .single_succ(node.id)?
        .filter(|next| next.inputs.iter().filter(|&&i| i == node.id.into()).count() == 1))
}

/// Whether two parameter arrays hold the same bits.
pub fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.iter()
        .map(|v| v.to_bits())
        .eq(b.iter().map(|v| v.to_bits()))
}

/// The binary operator of `node` when it is a `B`.
pub fn bin_op<B: BinMiniOp>(node: &TypedNode) -> bool {
    node.op_as::<TypedBinOp>().is_some_and(|op| op.0.is::<B>())
}

/// The constant input of a binary `node` and its other input, when exactly one is constant.
pub fn constant_operand(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(Arc<Tensor>, OutletId)>> {
    let [a, b] = node.inputs[..] else {
        return Ok(None);
    };
    let (ka, kb) = (&model.outlet_fact(a)?.konst, &model.outlet_fact(b)?.konst);
    Ok(match (ka, kb) {
        (Some(k), None) => Some((k.clone(), b)),
        (None, Some(k)) => Some((k.clone(), a)),
        _ => None,
    })
}

/// The `n` values along `axis` of a rank-`rank` tensor that `konst` (f32, of the same rank, as
/// tract's binary operators take them) broadcasts to, when it is constant along every other
/// axis.
pub fn along_axis(konst: &Tensor, rank: usize, axis: usize, n: usize) -> Option<Arc<[f32]>> {
    let shape = konst.shape();
    let per_axis = shape.len() == rank
        && shape
            .iter()
            .enumerate()
            .all(|(i, &d)| d == 1 || (i == axis && d == n));
    if konst.datum_type() != f32::datum_type() || !per_axis {
        return None;
    }
    let values = konst.try_as_plain_ram().ok()?;
    let values = values.as_slice::<f32>().ok()?;
    Some(match values {
        [one] => vec![*one; n].into(),
        _ => values.into(),
    })
}
