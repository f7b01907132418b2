//! What the operator tests share: running a plan on one input, reading an f32 tensor, listing
//! a model's operators, and comparing values within float rounding.

use tract_core::internal::*;
use tract_linalg::multithread::Executor;

/// The values of an f32 `tensor`.
pub fn values_of(tensor: &Tensor) -> Vec<f32> {
    let plain = tensor.try_as_plain_ram().unwrap();
    plain.as_slice::<f32>().unwrap().to_vec()
}

/// The first output of `model` run on `input`, on `executor`'s threads when one is given.
pub fn run(model: TypedModel, input: &Tensor, executor: Option<Executor>) -> Vec<f32> {
    let options = RunOptions {
        executor,
        ..RunOptions::default()
    };
    let plan = model.into_runnable_with_options(&options).unwrap();
    let out = plan.run(tvec![input.clone().into_tvalue()]).unwrap();
    values_of(&out[0])
}

/// The names of `model`'s operators, in evaluation order.
pub fn ops(model: &TypedModel) -> Vec<String> {
    let order = model.eval_order().unwrap();
    order
        .into_iter()
        .map(|id| model.node(id).op().name().to_string())
        .collect()
}

/// Asserts that `got` is `want`, value by value, within 10⁻⁵ of 1 + |want|.
pub fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what} at {i}: {g} vs {w}"
        );
    }
}
