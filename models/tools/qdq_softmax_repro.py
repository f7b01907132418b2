"""The smallest ONNX graph with the pattern a default static QDQ quantization puts around every
attention softmax:

    x (f32) -> QuantizeLinear -> DequantizeLinear -> Softmax -> QuantizeLinear -> DequantizeLinear -> y (f32)

Five nodes, opset 17, fixed shape [1, 8]. A runtime that folds `DequantizeLinear -> Softmax ->
QuantizeLinear` into an element-wise lookup table gets it wrong, because softmax is not
element-wise: every output of such a table is the same function of its own input only (e.g. all
1.0) instead of summing to one along the axis.

Writes the graph (default tests/fixtures/qdq-softmax/qdq-softmax.onnx), runs it in onnxruntime and prints the
input and the output; `--save-io` also writes them as raw little-endian f32 beside the graph.

  python qdq_softmax_repro.py [--out tests/fixtures/qdq-softmax/qdq-softmax.onnx] [--save-io]

The Rust test tests/qdq_softmax.rs runs the committed graph through tract.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Quantization parameters of the kind onnxruntime's static quantizer picks: uint8 activations,
# the softmax output on [0, 1] with scale 1/256 and zero point 0.
IN_SCALE, IN_ZP = 0.05, 128
OUT_SCALE, OUT_ZP = 1.0 / 256.0, 0
INPUT = np.array([[-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 3.0, 4.0]], dtype=np.float32)


def build() -> onnx.ModelProto:
    inits = [
        numpy_helper.from_array(np.array(IN_SCALE, dtype=np.float32), "in_scale"),
        numpy_helper.from_array(np.array(IN_ZP, dtype=np.uint8), "in_zp"),
        numpy_helper.from_array(np.array(OUT_SCALE, dtype=np.float32), "out_scale"),
        numpy_helper.from_array(np.array(OUT_ZP, dtype=np.uint8), "out_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "in_scale", "in_zp"], ["x_q"], name="quantize_in"),
        helper.make_node("DequantizeLinear", ["x_q", "in_scale", "in_zp"], ["x_dq"], name="dequantize_in"),
        helper.make_node("Softmax", ["x_dq"], ["p"], name="softmax", axis=-1),
        helper.make_node("QuantizeLinear", ["p", "out_scale", "out_zp"], ["p_q"], name="quantize_out"),
        helper.make_node("DequantizeLinear", ["p_q", "out_scale", "out_zp"], ["y"], name="dequantize_out"),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq_softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(INPUT.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(INPUT.shape))],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="qdq_softmax_repro")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    ap = argparse.ArgumentParser(description="Writes and runs the five-node QDQ softmax graph.")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests/fixtures/qdq-softmax/qdq-softmax.onnx"))
    ap.add_argument("--save-io", action="store_true", help="also write x.bin / y.bin (raw f32 LE) beside it")
    args = ap.parse_args()

    import onnxruntime as ort

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build(), str(out))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": INPUT})[0]
    exact = np.exp(INPUT - INPUT.max()) / np.exp(INPUT - INPUT.max()).sum()
    np.set_printoptions(precision=6, suppress=True)
    print(f"graph: {out} ({', '.join(n.op_type for n in build().graph.node)})")
    print(f"x {list(INPUT.shape)} f32 = {INPUT.ravel().tolist()}")
    print(f"onnxruntime y = {y.ravel().tolist()}  (sum {float(y.sum()):.6f})")
    print(f"exact softmax  = {exact.ravel().round(6).tolist()}")
    print("a runtime that turns DequantizeLinear -> Softmax -> QuantizeLinear into a per-element "
          "lookup table returns a row that does not sum to 1 (e.g. all 1.0)")
    if args.save_io:
        INPUT.astype("<f4").tofile(out.parent / "x.bin")
        y.astype("<f4").tofile(out.parent / "y.bin")
        print(f"wrote {out.parent / 'x.bin'} and {out.parent / 'y.bin'}")


if __name__ == "__main__":
    main()
