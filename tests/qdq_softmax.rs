//! Why the shipped int8 graphs quantize only matrix products and convolutions.
//!
//! A default static QDQ quantization wraps every attention softmax as
//! `DequantizeLinear → Softmax → QuantizeLinear`. tract's declutter pass folds that chain into an
//! element-wise lookup table on the quantized values — but softmax is not element-wise (each
//! output depends on the whole row), so every output becomes the same table entry (≈ 1.0) and a
//! transformer quantized that way gives masks far from onnxruntime's. The graph here is that
//! chain alone (`models/tools/qdq_softmax_repro.py`): five nodes, one row of eight values.
//!
//! The first test pins the behaviour of the tract version we ship with; if it starts failing,
//! tract no longer folds the chain and fully quantized QDQ graphs are worth another look.

use std::path::PathBuf;

use tract_onnx::prelude::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/qdq-softmax")
        .join(name)
}

fn floats(name: &str) -> Vec<f32> {
    std::fs::read(fixture(name))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn run(model: TypedModel) -> Vec<f32> {
    let x = Tensor::from_shape(&[1, 8], &floats("x.bin")).unwrap();
    let out = model.into_runnable().unwrap().run(tvec!(x.into())).unwrap();
    out[0]
        .try_as_plain_ram()
        .unwrap()
        .as_slice::<f32>()
        .unwrap()
        .to_vec()
}

fn typed() -> TypedModel {
    tract_onnx::onnx()
        .model_for_path(fixture("qdq-softmax.onnx"))
        .unwrap()
        .into_typed()
        .unwrap()
}

#[test]
fn tract_folds_quantized_softmax_into_a_per_element_table() {
    let onnxruntime = floats("y.bin");
    let sum: f32 = onnxruntime.iter().sum();
    assert!((sum - 1.0).abs() < 0.05, "onnxruntime's row sums to {sum}");
    let folded = run(typed().into_optimized().unwrap());
    assert!(
        folded.iter().all(|&v| v > 0.99),
        "tract no longer folds DequantizeLinear → Softmax → QuantizeLinear: {folded:?}"
    );
}

#[test]
fn without_declutter_tract_matches_onnxruntime() {
    assert_eq!(run(typed()), floats("y.bin"));
}
