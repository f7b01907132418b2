//! What the operator swaps share: replacing nodes of a tract graph one for one, finding the
//! only reader of a node's output, and comparing operator parameters bit for bit (tract's
//! operators must be `Eq`, which f32 parameters are not by themselves).

use tract_core::internal::*;

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
