"""Exports the phantom CLIPSeg (see train_vlsm.py) to ONNX in the forms the runtime loads, makes
the int8 image-graph candidates, and writes the model packages.

Graphs (opset 17, every shape fixed, Hugging Face tensor names):
  text-f32.onnx   input_ids i64 [1,77], attention_mask i64 [1,77] -> conditional_embeddings f32 [1,P]
  image-f32.onnx  pixel_values f32 [1,3,128,128], conditional_embeddings f32 [1,P] -> logits f32 [1,128,128]
  joint-f32.onnx  input_ids, attention_mask, pixel_values -> logits
int8 image candidates (with --quantize), compared with the f32 graph in onnxruntime on
held-out phantoms (mask Dice at probability 0.5, max/mean absolute logit error):
  image-int8-dynamic.onnx   quantize_dynamic (DynamicQuantizeLinear + MatMulInteger, QInt8 weights)
  image-int8-qdq.onnx       static QDQ on MatMul/Conv/Gemm only, calibrated on phantom frames
  image-int8-qdq-all.onnx   static QDQ on every op (default settings; kept out of the packages:
                            its DequantizeLinear -> Softmax -> QuantizeLinear chains break in tract)

Usage:
  python export_vlsm.py --checkpoint models/tools/.cache/vlsm/ckpt.pt --out-dir models/tools/.cache/vlsm/onnx \
      --quantize --calib-data models/tools/.cache/phantoms/train --eval-data models/tools/.cache/phantoms/heldout \
      --package
  python export_vlsm.py --random --out-dir /tmp/random-clipseg    # random weights, f32 only

--package copies the f32 graphs, the int8 candidate named by --ship-int8 (default qdq: correct in
tract and faster there than the dynamic form; see docs/precision.md) and the tokenizer into
models/clipseg-phantom/ and models/clipseg-phantom-joint/ and writes their model.toml (with
sha256 of every file).
Runs offline; deterministic (fixed seeds).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vlsm_common as vc  # noqa: E402

OPSET = 17


def dummy_inputs(proj_dim: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.full((1, vc.CONTEXT_LENGTH), vc.EOT_ID, dtype=torch.long)
    ids[0, :4] = torch.tensor([vc.SOT_ID, 1728, 14123, vc.EOT_ID])  # "round lesion"-like
    mask = torch.zeros((1, vc.CONTEXT_LENGTH), dtype=torch.long)
    mask[0, :4] = 1
    px = torch.randn(1, 3, vc.IMAGE_SIZE, vc.IMAGE_SIZE, generator=g)
    ce = torch.randn(1, proj_dim, generator=g)
    return ids, mask, px, ce


def export_graph(module, args, path: Path, input_names, output_names, exporter: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = dict(input_names=input_names, output_names=output_names, opset_version=OPSET)
    if exporter == "dynamo":
        torch.onnx.export(module, args, str(path), dynamo=True, external_data=False, optimize=True, **kwargs)
    else:
        torch.onnx.export(module, args, str(path), dynamo=False, do_constant_folding=True, **kwargs)
    # Leftover external-data sidecars from earlier runs would be confusing.
    side = path.with_name(path.name + ".data")
    if side.exists():
        side.unlink()


def check_graph(path: Path, module, args, names) -> float:
    """Loads the graph, checks fixed shapes, compares with torch; returns max abs error."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    for v in list(model.graph.input) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise SystemExit(f"{path.name}: {v.name} has a symbolic dimension")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    out = sess.run(None, feeds)[0]
    with torch.no_grad():
        ref = module(*args).numpy()
    return float(np.abs(out - ref).max())


def op_types(path: Path) -> list[str]:
    import onnx

    return sorted({n.op_type for n in onnx.load(str(path)).graph.node})


def export_f32(model, out_dir: Path, exporter: str) -> dict:
    proj = model.config.projection_dim
    ids, mask, px, ce = dummy_inputs(proj)
    specs = {
        "text-f32.onnx": (vc.TextGraph(model), (ids, mask), ["input_ids", "attention_mask"], ["conditional_embeddings"]),
        "image-f32.onnx": (vc.ImageGraph(model), (px, ce), ["pixel_values", "conditional_embeddings"], ["logits"]),
        "joint-f32.onnx": (
            vc.JointGraph(model),
            (ids, mask, px),
            ["input_ids", "attention_mask", "pixel_values"],
            ["logits"],
        ),
    }
    report = {}
    for name, (module, args, ins, outs) in specs.items():
        module.eval()
        path = out_dir / name
        t0 = time.time()
        export_graph(module, args, path, ins, outs, exporter)
        err = check_graph(path, module, args, ins)
        ops = op_types(path)
        size = path.stat().st_size
        print(f"{name}: {size / 1e6:.2f} MB, {time.time() - t0:.1f} s, max |ort - torch| = {err:.2e}")
        print(f"  ops: {' '.join(ops)}")
        report[name] = {"bytes": size, "max_abs_err_vs_torch": err, "ops": ops}
    return report


# ---------------------------------------------------------------------------------------------
# int8


def _phantom_batch(data_dir: Path, count: int, tokenizer, text_sess, seed: int):
    """`count` (pixel_values, conditional_embeddings, mask) triples from a phantom folder, one
    random prompt level P1..P9 each; the embedding comes from the f32 text graph."""
    from PIL import Image

    samples = vc.read_samples(data_dir)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(samples))[:count]
    out = []
    for i in idx:
        s = samples[i]
        levels = [k for k in s["prompts"] if k != "P0" and s["prompts"][k]]
        prompt = s["prompts"][levels[rng.integers(len(levels))]]
        ids, am = vc.tokenize(tokenizer, [prompt])
        ce = text_sess.run(None, {"input_ids": ids, "attention_mask": am})[0]
        px = vc.preprocess_image(Image.open(data_dir / s["image"]))[None]
        m = vc.load_mask(data_dir / s["mask"])
        out.append((px, ce, m, vc.sample_class(s)))
    return out


class _Reader:
    def __init__(self, batch):
        self.items = iter([{"pixel_values": px, "conditional_embeddings": ce} for px, ce, _, _ in batch])

    def get_next(self):
        return next(self.items, None)


def quantize_candidates(f32_dir: Path, int8_dir: Path, qdq_all_path: Path, calib_dir: Path, eval_dir: Path,
                        bpe_dir: Path, calib_count: int, eval_count: int) -> dict:
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    int8_dir.mkdir(parents=True, exist_ok=True)
    qdq_all_path.parent.mkdir(parents=True, exist_ok=True)
    tok = vc.load_tokenizer(bpe_dir)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    text = ort.InferenceSession(str(f32_dir / "text-f32.onnx"), so, providers=["CPUExecutionProvider"])
    calib = _phantom_batch(calib_dir, calib_count, tok, text, seed=123)
    held = _phantom_batch(eval_dir, eval_count, tok, text, seed=456)

    src = f32_dir / "image-f32.onnx"
    pre = int8_dir / "image-f32-preprocessed.onnx"
    # Shape inference + onnx optimiser pass, as onnxruntime recommends before quantizing.
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)

    t0 = time.time()
    dyn = int8_dir / "image-int8-dynamic.onnx"
    quantize_dynamic(str(pre), str(dyn), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm", "Conv"])
    print(f"dynamic: {time.time() - t0:.1f} s")

    t0 = time.time()
    qdq = int8_dir / "image-int8-qdq.onnx"
    quantize_static(
        str(pre),
        str(qdq),
        _Reader(calib),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Conv", "Gemm"],
        per_channel=False,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    print(f"static QDQ (MatMul/Conv/Gemm): {time.time() - t0:.1f} s")

    t0 = time.time()
    quantize_static(str(pre), str(qdq_all_path), _Reader(calib), quant_format=QuantFormat.QDQ)
    print(f"static QDQ (defaults, all ops): {time.time() - t0:.1f} s")
    pre.unlink()

    # Compare each candidate with f32 on held-out phantoms.
    f32 = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    ref = [f32.run(None, {"pixel_values": px, "conditional_embeddings": ce})[0][0] for px, ce, _, _ in held]
    report = {}
    for path in (dyn, qdq, qdq_all_path):
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        dices, gt_dices, maxerr, meanerr = [], [], [], []
        for (px, ce, m, _), r in zip(held, ref):
            o = sess.run(None, {"pixel_values": px, "conditional_embeddings": ce})[0][0]
            dices.append(vc.dice(o > 0, r > 0))  # sigmoid(x) > 0.5  <=>  x > 0
            gt_dices.append(vc.dice(o > 0, m > 0.5))
            maxerr.append(float(np.abs(o - r).max()))
            meanerr.append(float(np.abs(o - r).mean()))
        ops = op_types(path)
        rep = {
            "bytes": path.stat().st_size,
            "dice_vs_f32_mean": float(np.mean(dices)),
            "dice_vs_f32_min": float(np.min(dices)),
            "dice_vs_gt_mean": float(np.mean(gt_dices)),
            "max_abs_logit_err": float(np.max(maxerr)),
            "mean_abs_logit_err": float(np.mean(meanerr)),
            "ops": ops,
        }
        report[path.name] = rep
        print(
            f"{path.name}: {rep['bytes'] / 1e6:.2f} MB; Dice vs f32 mean {rep['dice_vs_f32_mean']:.4f} "
            f"(min {rep['dice_vs_f32_min']:.4f}), Dice vs ground truth {rep['dice_vs_gt_mean']:.4f}; "
            f"|logit err| max {rep['max_abs_logit_err']:.3f}, mean {rep['mean_abs_logit_err']:.4f}"
        )
        print(f"  ops: {' '.join(ops)}")
    f32_gt = float(np.mean([vc.dice(r > 0, m > 0.5) for (_, _, m, _), r in zip(held, ref)]))
    report["f32_dice_vs_gt_mean"] = f32_gt
    print(f"(f32 Dice vs ground truth on the same {len(held)} samples: {f32_gt:.4f})")
    return report


# ---------------------------------------------------------------------------------------------
# packages


def _toml_list(values) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _io_lines(items) -> str:
    rows = [
        f'  {{ name = "{n}", dtype = "{d}", shape = [{", ".join(str(x) for x in s)}] }},' for n, d, s in items
    ]
    return "[\n" + "\n".join(rows) + "\n]"


def _graph_entry(role, precisions, file, digest, inputs, outputs) -> str:
    return (
        f"[[graph]]\n"
        f'role = "{role}"\n'
        f"precisions = {_toml_list(precisions)}\n"
        f'file = "{file}"\n'
        f'sha256 = "{digest}"\n'
        f"inputs = {_io_lines(inputs)}\n"
        f"outputs = {_io_lines(outputs)}\n"
    )


def write_packages(f32_dir: Path, models_dir: Path, bpe_dir: Path, proj: int, description: str,
                   default_prompt: str, int8_graph: Path | None):
    L, S = vc.CONTEXT_LENGTH, vc.IMAGE_SIZE
    text_io = ([("input_ids", "i64", [1, L]), ("attention_mask", "i64", [1, L])],
               [("conditional_embeddings", "f32", [1, proj])])
    image_io = ([("pixel_values", "f32", [1, 3, S, S]), ("conditional_embeddings", "f32", [1, proj])],
                [("logits", "f32", [1, S, S])])
    joint_io = ([("input_ids", "i64", [1, L]), ("attention_mask", "i64", [1, L]), ("pixel_values", "f32", [1, 3, S, S])],
                [("logits", "f32", [1, S, S])])

    def header(name):
        return (
            f'name = "{name}"\n'
            f'family = "vlsm"\n'
            f"description = {json.dumps(description)}\n\n"
            f"[input]\n"
            f"size = [{S}, {S}]\n"
            f'resize = "stretch"\n'
            f"mean = {_toml_list(vc.CLIP_MEAN)}\n"
            f"std = {_toml_list(vc.CLIP_STD)}\n\n"
            f"[output]\n"
            f'activation = "sigmoid"\n'
            f"threshold = 0.5\n\n"
            f"[prompt]\n"
            f'tokenizer = "tokenizer.json"\n'
            f"context_length = {L}\n"
            f'default = "{default_prompt}"\n\n'
        )

    split = models_dir / "clipseg-phantom"
    joint = models_dir / "clipseg-phantom-joint"
    for d in (split, joint):
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bpe_dir / "tokenizer.json", d / "tokenizer.json")
    for f in ("text-f32.onnx", "image-f32.onnx"):
        shutil.copyfile(f32_dir / f, split / f)
    shutil.copyfile(f32_dir / "joint-f32.onnx", joint / "joint-f32.onnx")

    text = header("clipseg-phantom")
    text += _graph_entry("text", ["f32", "f16", "int8"], "text-f32.onnx", vc.sha256(split / "text-f32.onnx"), *text_io)
    text += "\n" + _graph_entry("image", ["f32", "f16"], "image-f32.onnx", vc.sha256(split / "image-f32.onnx"), *image_io)
    if int8_graph is not None:
        shutil.copyfile(int8_graph, split / "image-int8.onnx")
        text += "\n" + _graph_entry("image", ["int8"], "image-int8.onnx", vc.sha256(split / "image-int8.onnx"), *image_io)
    (split / "model.toml").write_text(text)

    text = header("clipseg-phantom-joint")
    text += _graph_entry("joint", ["f32", "f16"], "joint-f32.onnx", vc.sha256(joint / "joint-f32.onnx"), *joint_io)
    (joint / "model.toml").write_text(text)
    print(f"wrote {split} and {joint}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(vc.CACHE_DIR / "vlsm/ckpt.pt"))
    ap.add_argument("--random", action="store_true", help="export random weights (no checkpoint)")
    ap.add_argument("--out-dir", default=str(vc.CACHE_DIR / "vlsm/onnx"), help="where the f32 graphs go")
    ap.add_argument("--exporter", choices=["dynamo", "legacy"], default="dynamo")
    ap.add_argument("--quantize", action="store_true", help="make and compare the int8 image candidates")
    ap.add_argument("--int8-dir", default=str(vc.CACHE_DIR / "vlsm/int8"))
    ap.add_argument("--qdq-all", default=str(vc.CACHE_DIR / "image-int8-qdq-all.onnx"))
    ap.add_argument("--calib-data", default=str(vc.CACHE_DIR / "phantoms/train"), help="phantom folder for calibration")
    ap.add_argument("--calib-count", type=int, default=64)
    ap.add_argument("--eval-data", default=str(vc.CACHE_DIR / "phantoms/heldout"), help="held-out phantom folder")
    ap.add_argument("--eval-count", type=int, default=200)
    ap.add_argument("--bpe-dir", default=str(vc.DEFAULT_BPE_DIR))
    ap.add_argument("--package", action="store_true", help="write models/clipseg-phantom{,-joint}/")
    ap.add_argument("--ship-int8", choices=["qdq", "dynamic", "none"], default="qdq",
                    help="int8 candidate packaged as image-int8.onnx (qdq: correct in tract and the faster one)")
    ap.add_argument("--models-dir", default=str(vc.REPO_DIR / "models"))
    ap.add_argument("--default-prompt", default="P4")
    ap.add_argument("--report", default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(2)
    out_dir = Path(args.out_dir)
    report = {"exporter": args.exporter, "opset": OPSET}
    if args.random:
        model = vc.build_model().eval()
        ckpt = {}
    else:
        model, ckpt = vc.load_checkpoint(args.checkpoint)
    report["parameters"] = vc.count_parameters(model)
    print(f"parameters: {report['parameters']:,}; exporter: {args.exporter}, opset {OPSET}")
    report["f32"] = export_f32(model, out_dir, args.exporter)

    if args.quantize:
        report["int8"] = quantize_candidates(
            out_dir, Path(args.int8_dir), Path(args.qdq_all), Path(args.calib_data), Path(args.eval_data),
            Path(args.bpe_dir), args.calib_count, args.eval_count,
        )
    if args.package:
        if args.random:
            raise SystemExit("--package needs a trained checkpoint")
        int8_graph = None if args.ship_int8 == "none" else Path(args.int8_dir) / f"image-int8-{args.ship_int8}.onnx"
        if int8_graph is not None and not int8_graph.exists():
            raise SystemExit(f"{int8_graph} missing: run with --quantize first")
        write_packages(out_dir, Path(args.models_dir), Path(args.bpe_dir), model.config.projection_dim,
                       ckpt.get("description", "CLIPSeg phantom model"), args.default_prompt, int8_graph)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
