"""Exports the phantom U-Nets (see train_unet.py) to ONNX, makes and checks their int8 form, and
writes the packages models/unet-conditioned-phantom/ and models/unet-plain-phantom/ with their
parity fixtures.

Graphs (opset 17, legacy exporter, BatchNorm folded, every shape fixed):
  conditioned  model-f32.onnx  image f32 [1,3,128,128], task_ids i64 [1,1], modality_id i64 [1,1]
                               -> logits f32 [1,1,128,128]
  plain        model-f32.onnx  image f32 [1,3,128,128] -> logits f32 [1,3,128,128]
  both         model-int8.onnx the same inputs and outputs; static QDQ on Conv only (per-tensor,
                               QInt8 weights, QUInt8 activations (--act-type), MinMax calibration
                               on --calib-count training phantoms); ConvTranspose, Gemm (FiLM),
                               Gather and the element-wise ops stay f32.

int8 reference semantics. onnxruntime's default (optimised) session fuses DequantizeLinear ->
Conv -> QuantizeLinear into QLinearConv; on x86 CPUs with AVX2 but without VNNI (this machine)
its U8S8 kernel adds pairs of u8*s8 products in int16 (VPMADDUBSW), which saturates, and its
output then differs from the graph's own QDQ semantics by up to 20 % of the logit range, in a
way that depends on the CPU. tract computes the QDQ semantics. So every int8 figure here (Dice
vs f32, vs truth) and the int8 parity fixtures come from onnxruntime with graph optimisations
off (ORT_DISABLE_ALL: each op as the ONNX spec defines it); the optimised session's difference
is reported as fused_vs_op_by_op_rel. (7-bit weights, --reduce-range, shrink but do not remove
that difference.) f32 fixtures use make_references.session (default optimisations).

Checks, printed and written to --report:
  - onnx.checker, fixed input/output shapes equal to the contract's, the op types of each graph;
  - onnxruntime f32 vs torch on --check-count held-out frames (every task of the frame's
    modality for conditioned): max |logit difference|;
  - int8 vs f32 on the held-out frames: mask Dice (conditioned: sigmoid > 0.5 per frame and task;
    plain: per class of the argmax label map), Dice vs the ground truth for both, max |logit
    difference|. The int8 graph is packaged only when its mean Dice vs f32 is >= --min-int8-dice
    (0.97) for every task / foreground class.

--package writes models/<package>/{model-f32.onnx, model-int8.onnx, model.toml} (sha256 of every
graph; description from the checkpoint plus the int8 agreement) and the parity cases
tests/fixtures/parity/<package>/ (make_references.write_case) on a real held-out phantom frame:
  conditioned  model-f32-lesion-us, model-f32-polyp-es, model-int8-lesion-us, model-int8-polyp-es
  plain        model-f32, model-int8

  python export_unet.py --kind conditioned --package
  python export_unet.py --kind plain --package

Runs offline; deterministic (fixed seeds, one thread).
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

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
import unet_common as uc  # noqa: E402
from make_references import session, write_case  # noqa: E402

OPSET = 17
S = uc.IMAGE_SIZE
TASKS_OF = {m: [t for t, tm in uc.TASK_MODALITY.items() if tm == m] for m in uc.MODALITIES}


def io_spec(kind: str):
    if kind == "conditioned":
        inputs = [("image", "f32", [1, 3, S, S]), ("task_ids", "i64", [1, 1]), ("modality_id", "i64", [1, 1])]
        outputs = [("logits", "f32", [1, 1, S, S])]
    else:
        inputs = [("image", "f32", [1, 3, S, S])]
        outputs = [("logits", "f32", [1, len(uc.PLAIN_LABELS), S, S])]
    return inputs, outputs


def feeds(kind: str, image: np.ndarray, task: str | None = None, modality: str | None = None) -> dict:
    if kind == "plain":
        return {"image": image}
    return {
        "image": image,
        "task_ids": np.array([[uc.TASKS[task]]], dtype=np.int64),
        "modality_id": np.array([[uc.MODALITIES[modality]]], dtype=np.int64),
    }


def export_f32(kind: str, model: uc.UNet, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = torch.zeros(1, 3, S, S)
    if kind == "conditioned":
        module = uc.ConditionedGraph(model).eval()
        args = (image, torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long))
        names = ["image", "task_ids", "modality_id"]
    else:
        module = uc.PlainGraph(model).eval()
        args = (image,)
        names = ["image"]
    torch.onnx.export(module, args, str(path), dynamo=False, do_constant_folding=True, opset_version=OPSET,
                      input_names=names, output_names=["logits"])


def check_graph(kind: str, path: Path) -> list[str]:
    """onnx.checker, fixed shapes equal to the contract's; returns the op types."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    want_in, want_out = io_spec(kind)
    got = [(v.name, [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim])
           for v in list(model.graph.input) + list(model.graph.output)]
    want = [(n, s) for n, _, s in want_in + want_out]
    if got != want:
        raise SystemExit(f"{path.name}: inputs/outputs {got} differ from the contract {want}")
    return sorted({n.op_type for n in model.graph.node})


def held_cases(kind: str, data: uc.PhantomFrames, count: int):
    """(feeds, target, key) on the first `count` held-out frames: conditioned, each frame with
    both tasks of its modality (target = mask); plain, each frame (target = label map)."""
    out = []
    for i in range(min(count, len(data))):
        image = uc.normalize(data.images[i])[None]
        mod = data.modalities[i]
        if kind == "plain":
            out.append((feeds(kind, image), data.label_map(i), "US"))
        else:
            for task in TASKS_OF[mod]:
                out.append((feeds(kind, image, task, mod), data.target(i, task), f"{mod}/{task}"))
    return out


def torch_vs_ort(kind: str, model: uc.UNet, path: Path, cases) -> float:
    sess = session(path)
    worst = 0.0
    with torch.inference_mode():
        for f, _, _ in cases:
            ref = model(*[torch.from_numpy(f[k]) for k in f]).numpy()
            out = sess.run(None, f)[0]
            worst = max(worst, float(np.abs(out - ref).max()))
    return worst


def masks_of(kind: str, logits: np.ndarray):
    """Logits [1,K,H,W] -> list of (name, bool mask): the sigmoid > 0.5 mask, or one per class."""
    if kind == "conditioned":
        return [("mask", logits[0, 0] > 0)]
    lab = logits[0].argmax(0)
    return [(name, lab == k) for k, name in enumerate(uc.PLAIN_LABELS)]


def reference_session(path: Path):
    """onnxruntime without graph optimisations: the QDQ graph evaluated op by op (float
    convolutions on dequantized tensors), the semantics tract implements (see the module text)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def agreement(kind: str, f32_path: Path, q_path: Path, cases) -> dict:
    """Dice of the int8 graph (op by op) vs f32 and vs ground truth, per task (conditioned) or
    class (plain); the largest logit difference int8 vs f32; and onnxruntime's optimised int8
    run vs its op-by-op run, relative to max(1, max|logit|) as tests/parity.rs measures."""
    f32, q_ref, q_fused = session(f32_path), reference_session(q_path), session(q_path)
    vs_f32, vs_gt, f32_gt, fused_f32 = {}, {}, {}, {}
    maxerr = fused_vs_ref = 0.0
    for f, target, key in cases:
        a = f32.run(None, f)[0]
        b = q_ref.run(None, f)[0]
        c = q_fused.run(None, f)[0]
        maxerr = max(maxerr, float(np.abs(a - b).max()))
        fused_vs_ref = max(fused_vs_ref, float(np.abs(c - b).max() / max(1.0, np.abs(b).max())))
        for (name, ma), (_, mb), (_, mc) in zip(masks_of(kind, a), masks_of(kind, b), masks_of(kind, c)):
            k = key if kind == "conditioned" else name
            gt = target if kind == "conditioned" else target == uc.PLAIN_LABELS.index(name)
            vs_f32.setdefault(k, []).append(uc.dice(mb, ma))
            vs_gt.setdefault(k, []).append(uc.dice(mb, gt))
            f32_gt.setdefault(k, []).append(uc.dice(ma, gt))
            fused_f32.setdefault(k, []).append(uc.dice(mc, ma))
    mean = lambda d: {k: float(np.mean(v)) for k, v in sorted(d.items())}  # noqa: E731
    return {"dice_int8_vs_f32": mean(vs_f32), "dice_int8_vs_gt": mean(vs_gt), "dice_f32_vs_gt": mean(f32_gt),
            "max_abs_logit_diff": maxerr, "fused_vs_op_by_op_rel": fused_vs_ref,
            "dice_fused_int8_vs_f32": mean(fused_f32), "cases": len(cases)}


class _Reader:
    def __init__(self, items):
        self.items = iter(items)

    def get_next(self):
        return next(self.items, None)


def quantize(kind: str, f32_path: Path, q_path: Path, calib: uc.PhantomFrames, count: int, act_type: str,
             reduce_range: bool = False) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    rng = np.random.default_rng(123)
    idx = rng.permutation(len(calib))[:count]
    items = []
    for n, i in enumerate(idx):
        image = uc.normalize(calib.images[i])[None]
        mod = calib.modalities[i]
        items.append(feeds(kind, image, TASKS_OF[mod][n % 2], mod) if kind == "conditioned" else feeds(kind, image))
    pre = q_path.with_name(q_path.stem + "-pre.onnx")
    quant_pre_process(str(f32_path), str(pre), skip_symbolic_shape=True)
    act = QuantType.QInt8 if act_type == "qint8" else QuantType.QUInt8
    quantize_static(
        str(pre), str(q_path), _Reader(items),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        per_channel=False,
        activation_type=act,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        reduce_range=reduce_range,
        extra_options={"ActivationSymmetric": act_type == "qint8", "WeightSymmetric": True},
    )
    pre.unlink()


# ---------------------------------------------------------------------------------------------
# package


def _toml_list(values) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _io_lines(items) -> str:
    rows = [f'  {{ name = "{n}", dtype = "{d}", shape = [{", ".join(str(x) for x in s)}] }},' for n, d, s in items]
    return "[\n" + "\n".join(rows) + "\n]"


def _graph_entry(precisions, file, digest, inputs, outputs) -> str:
    return (f"[[graph]]\nrole = \"model\"\nprecisions = {_toml_list(precisions)}\nfile = \"{file}\"\n"
            f"sha256 = \"{digest}\"\ninputs = {_io_lines(inputs)}\noutputs = {_io_lines(outputs)}\n")


def write_package(kind: str, pkg: Path, f32_path: Path, q_path: Path | None, description: str) -> list[str]:
    pkg.mkdir(parents=True, exist_ok=True)
    for stale in pkg.glob("*.onnx"):
        stale.unlink()
    shutil.copyfile(f32_path, pkg / "model-f32.onnx")
    files = ["model-f32.onnx"]
    text = (f'name = "{pkg.name}"\nfamily = "{kind}"\ndescription = {json.dumps(description)}\n\n'
            f"[input]\nsize = [{S}, {S}]\nresize = \"stretch\"\nmean = {_toml_list(uc.MEAN)}\n"
            f"std = {_toml_list(uc.STD)}\n\n[output]\n")
    if kind == "conditioned":
        text += 'activation = "sigmoid"\nthreshold = 0.5\n\n[conditioning]\n'
        text += "tasks = { " + ", ".join(f"{k} = {v}" for k, v in uc.TASKS.items()) + " }\n"
        # The short names, and the dataset's long ones as aliases (edgeseg eval passes a sample's
        # `modality` field, e.g. "ultrasound").
        names = dict(uc.MODALITIES) | {long: uc.MODALITIES[short] for long, short in uc.MODALITY_NAMES.items()}
        text += "modalities = { " + ", ".join(f"{k} = {v}" for k, v in names.items()) + " }\n\n"
    else:
        text += f'activation = "softmax"\nlabels = {_toml_list(uc.PLAIN_LABELS)}\n\n'
    ins, outs = io_spec(kind)
    text += _graph_entry(["f32", "f16"], "model-f32.onnx", uc.sha256(pkg / "model-f32.onnx"), ins, outs)
    if q_path is not None:
        shutil.copyfile(q_path, pkg / "model-int8.onnx")
        files.append("model-int8.onnx")
        text += "\n" + _graph_entry(["int8"], "model-int8.onnx", uc.sha256(pkg / "model-int8.onnx"), ins, outs)
    (pkg / "model.toml").write_text(text)
    total = sum((pkg / f).stat().st_size for f in pkg.iterdir())
    print(f"wrote {pkg} ({total / 1e6:.2f} MB)")
    return files


def pick_frame(data: uc.PhantomFrames, modality: str, task: str) -> int:
    """The first held-out frame of `modality` whose `task` structure covers >= 2 % of the frame."""
    for i in range(len(data)):
        if data.modalities[i] == modality and data.target(i, task).mean() >= 0.02:
            return i
    return next(i for i in range(len(data)) if data.modalities[i] == modality)


def write_fixtures(kind: str, pkg: Path, fixtures: Path, files: list[str], data: uc.PhantomFrames,
                   heldout_dir: str) -> dict:
    out_dir = fixtures / pkg.name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    cases = [("lesion", "US"), ("polyp", "ES")] if kind == "conditioned" else [(None, "US")]
    try:
        heldout_dir = str(Path(heldout_dir).resolve().relative_to(uc.REPO_DIR))
    except ValueError:
        pass
    report = {}
    for file in files:
        # int8: the QDQ semantics (op by op), which tract computes; see the module text.
        sess = reference_session(pkg / file) if "int8" in file else session(pkg / file)
        for task, mod in cases:
            i = pick_frame(data, mod, task or "lesion")
            f = feeds(kind, uc.normalize(data.images[i])[None], task, mod)
            logits = sess.run(None, f)[0]
            stem = Path(file).stem
            case = f"{stem}-{task}-{mod.lower()}" if task else stem
            what = f"task {task} ({uc.TASKS[task]}), modality {mod} ({uc.MODALITIES[mod]}); " if task else ""
            comment = (f"{what}phantom {data.names[i]} from {heldout_dir} (edgeseg phantoms --seed 999 --size "
                       f"128x128), stretched to 128x128, ImageNet mean/std; onnxruntime {file}"
                       + (" with graph optimisations off (QDQ semantics op by op)" if "int8" in file else ""))
            write_case(out_dir, case, file, f, {"logits": logits}, comment)
            report[case] = {"frame": data.names[i], "max_abs_logit": float(np.abs(logits).max())}
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=["conditioned", "plain"], required=True)
    ap.add_argument("--checkpoint", default=None, help="default .cache/unet/<kind>.pt")
    ap.add_argument("--out-dir", default=str(uc.CACHE_DIR / "onnx"))
    ap.add_argument("--calib-data", default=str(uc.CACHE_DIR / "train"))
    ap.add_argument("--calib-count", type=int, default=64)
    ap.add_argument("--heldout", default=str(uc.CACHE_DIR / "heldout"))
    ap.add_argument("--check-count", type=int, default=200, help="held-out frames for the checks")
    ap.add_argument("--act-type", choices=["quint8", "qint8"], default="quint8")
    ap.add_argument("--min-int8-dice", type=float, default=0.97)
    ap.add_argument("--reduce-range", action="store_true", help="7-bit int8 weights")
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--package", action="store_true")
    ap.add_argument("--models-dir", default=str(uc.REPO_DIR / "models"))
    ap.add_argument("--fixtures-dir", default=str(uc.REPO_DIR / "tests/fixtures/parity"))
    ap.add_argument("--report", default=None, help="default <out-dir>/<kind>-report.json")
    args = ap.parse_args()

    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(1)
    kind = args.kind
    model, ckpt = uc.load_checkpoint(args.checkpoint or uc.CACHE_DIR / f"{kind}.pt")
    mods = ("US",) if kind == "plain" else ("US", "ES")
    out_dir = Path(args.out_dir)
    f32_path = out_dir / f"{kind}-f32.onnx"
    q_path = out_dir / f"{kind}-int8.onnx"
    report = {"kind": kind, "parameters": uc.count_parameters(model), "opset": OPSET}
    print(f"{kind}: {report['parameters']:,} parameters")

    t0 = time.time()
    export_f32(kind, model, f32_path)
    report["f32_ops"] = check_graph(kind, f32_path)
    report["f32_bytes"] = f32_path.stat().st_size
    print(f"{f32_path.name}: {report['f32_bytes'] / 1e6:.2f} MB ({time.time() - t0:.1f} s); ops: {' '.join(report['f32_ops'])}")

    held = uc.PhantomFrames(args.heldout, mods)
    cases = held_cases(kind, held, args.check_count)
    report["f32_max_abs_diff_vs_torch"] = torch_vs_ort(kind, model, f32_path, cases)
    print(f"onnxruntime vs torch on {len(cases)} held-out cases: max |logit diff| {report['f32_max_abs_diff_vs_torch']:.2e}")

    ship_int8 = False
    if not args.no_int8:
        t0 = time.time()
        quantize(kind, f32_path, q_path, uc.PhantomFrames(args.calib_data, mods), args.calib_count, args.act_type,
                 args.reduce_range)
        report["int8_ops"] = check_graph(kind, q_path)
        report["int8_bytes"] = q_path.stat().st_size
        print(f"{q_path.name}: {report['int8_bytes'] / 1e6:.2f} MB ({time.time() - t0:.1f} s); ops: {' '.join(report['int8_ops'])}")
        agree = agreement(kind, f32_path, q_path, cases)
        report["int8"] = agree
        print(json.dumps(agree, indent=1))
        keys = [k for k in agree["dice_int8_vs_f32"] if k != "background"]
        worst = min(agree["dice_int8_vs_f32"][k] for k in keys)
        ship_int8 = worst >= args.min_int8_dice
        report["int8_shipped"] = ship_int8
        print(f"int8: worst mean Dice vs f32 {worst:.4f} (needs >= {args.min_int8_dice}) -> "
              f"{'ship' if ship_int8 else 'do not ship'}; onnxruntime optimised vs op by op "
              f"{agree['fused_vs_op_by_op_rel']:.2e} of the logit range")

    if args.package:
        desc = ckpt["description"]
        if ship_int8:
            a = report["int8"]["dice_int8_vs_f32"]
            keys = [k for k in a if k != "background"]
            per = ", ".join(f"{k} {a[k]:.3f}" for k in keys)
            desc = desc.replace(
                " A demonstration model",
                f" int8 graph: static QDQ on Conv only (per-tensor {'7-bit ' if args.reduce_range else ''}int8 "
                f"weights, {'uint8' if args.act_type == 'quint8' else 'int8'} activations, MinMax on "
                f"{args.calib_count} training phantoms); held-out mask Dice int8 vs f32 (QDQ semantics) {per}."
                f" A demonstration model")
        pkg = Path(args.models_dir) / uc.PACKAGES[kind]
        files = write_package(kind, pkg, f32_path, q_path if ship_int8 else None, desc)
        report["package_bytes"] = sum(p.stat().st_size for p in pkg.iterdir())
        report["fixtures"] = write_fixtures(kind, pkg, Path(args.fixtures_dir), files, held, args.heldout)
    rpath = Path(args.report or out_dir / f"{kind}-report.json")
    rpath.write_text(json.dumps(report, indent=2))
    print(f"report {rpath}")


if __name__ == "__main__":
    main()
