"""Exports a SAM of MobileSAM's architecture to ONNX in the "sam" family's two graphs, makes and
compares the int8 candidates, and writes a model package.

Sources (one of):
  --checkpoint mobile_sam.pt   MobileSAM vit_t with its official weights (S = 1024)
  --random                     MobileSAM vit_t with random weights (timing, parity, tract checks)
  --tiny CKPT                  the phantom model trained by train_sam.py (S = 256)

Graphs (opset 17, every shape fixed):
  encoder-f32.onnx  image f32 [1,3,S,S] -> image_embeddings f32 [1,C,S/16,S/16]
  decoder-f32.onnx  image_embeddings, point_coords f32 [1,N,2], point_labels f32 [1,N],
                    mask_input f32 [1,1,S/4,S/4], has_mask_input f32 [1]
                    -> low_res_masks f32 [1,4,S/4,S/4], iou_predictions f32 [1,4]
  (the decoder is MobileSAM's SamOnnxModel without the final resize and without select_masks;
  export checks it against SamOnnxModel's own low-res masks and scores in torch.)
int8 candidates (--quantize), each checked in onnxruntime against the f32 graphs on held-out
phantoms (Dice with ground truth and with the f32 masks, at the frame size, 1 click and box);
int8 graphs run in onnxruntime with graph optimisations off, op by op as tract runs them (its
default session fuses QDQ into int8 kernels that saturate on CPUs without VNNI):
  <role>-int8-qdq.onnx      static QDQ on Conv/MatMul/Gemm only (per-tensor; QInt8 symmetric
                            weights, QUInt8 asymmetric activations by default (--qdq-activations);
                            MinMax calibration on phantom frames; the decoder's point-encoding
                            MatMul, coordinates x random Fourier matrix, stays f32)
  <role>-int8-dynamic.onnx  quantize_dynamic on Conv/MatMul/Gemm (QInt8 weights)

Usage:
  python export_sam.py --tiny models/tools/.cache/sam/ckpt.pt --quantize --package models/sam-phantom
  python export_sam.py --random --out-dir models/tools/.cache/sam/random --quantize
  python export_sam.py --checkpoint mobile_sam.pt --out-dir models/tools/.cache/sam/mobilesam \
      --quantize --package models/mobilesam

--package DIR copies the f32 graphs and the int8 forms named by --int8-encoder / --int8-decoder
into DIR and writes its model.toml (family "sam", sha256 of every graph). Afterwards run
`sam_reference.py fixtures` for the parity fixtures. Runs offline; deterministic.
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
import sam_common as sc  # noqa: E402

OPSET = 17
ENC_IN, ENC_OUT = ["image"], ["image_embeddings"]
DEC_IN = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"]
DEC_OUT = ["low_res_masks", "iou_predictions"]
HELDOUT = [sc.CACHE_DIR / "phantoms/heldout256", sc.CACHE_DIR / "phantoms/heldout320"]
CALIB = sc.CACHE_DIR / "phantoms/train256"


def graph_io(model):
    """[(name, dtype, shape)] inputs and outputs of both graphs."""
    S = model.image_encoder.img_size
    C = model.prompt_encoder.embed_dim
    h, w = model.prompt_encoder.image_embedding_size
    N = sc.NUM_POINTS
    enc = ([("image", "f32", [1, 3, S, S])], [("image_embeddings", "f32", [1, C, h, w])])
    dec = (
        [("image_embeddings", "f32", [1, C, h, w]), ("point_coords", "f32", [1, N, 2]),
         ("point_labels", "f32", [1, N]), ("mask_input", "f32", [1, 1, 4 * h, 4 * w]),
         ("has_mask_input", "f32", [1])],
        [("low_res_masks", "f32", [1, sc.NUM_MASKS, 4 * h, 4 * w]), ("iou_predictions", "f32", [1, sc.NUM_MASKS])],
    )
    return enc, dec


def example_case(heldout: list[Path]):
    """A held-out ultrasound frame with a lesion: (image path, lesion mask, vessel mask or None)."""
    for d in heldout:
        d = Path(d)
        if not (d / "samples.jsonl").exists():
            continue
        samples = sc.read_samples(d)
        for s in samples:
            if (s.get("attributes") or {}).get("class") == "lesion" and s["attributes"].get("count") == "one":
                vessel = next((t for t in samples if t["image"] == s["image"] and t is not s), None)
                return (d / s["image"], sc.load_mask(d / s["mask"]),
                        sc.load_mask(d / vessel["mask"]) if vessel else None)
    return None


def example_inputs(model, heldout):
    """Real example inputs: a phantom frame (random if none) and one click on its lesion."""
    from PIL import Image

    S = model.image_encoder.img_size
    case = example_case(heldout)
    if case is None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 3, S, S, generator=g)
        click = np.array([[S * 0.4, S * 0.5]])
    else:
        img = Image.open(case[0])
        xn, _ = sc.preprocess(img, S)
        x = torch.from_numpy(xn)
        click = sc.map_coords([sc.centre_point(case[1])], (img.size[1], img.size[0]), S)
    with torch.no_grad():
        emb = model.image_encoder(x)
    coords, labels = sc.prompt_arrays(click, [1])
    h, w = emb.shape[-2:]
    dec_args = (emb, torch.from_numpy(coords), torch.from_numpy(labels), torch.zeros(1, 1, 4 * h, 4 * w),
                torch.zeros(1))
    return (x,), dec_args, case


def export_graph(module, args, path: Path, input_names, output_names, exporter: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = dict(input_names=input_names, output_names=output_names, opset_version=OPSET)
    if exporter == "dynamo":
        torch.onnx.export(module, args, str(path), dynamo=True, external_data=False, optimize=True, **kwargs)
    else:
        torch.onnx.export(module, args, str(path), dynamo=False, do_constant_folding=True, **kwargs)
    side = path.with_name(path.name + ".data")
    if side.exists():
        side.unlink()
    dedupe_constants(path)


def dedupe_constants(path: Path, min_bytes: int = 1024) -> int:
    """Makes every large constant tensor appear once: the legacy exporter's constant folding
    writes the decoder's dense positional encoding once per transformer layer. Consumers of a
    duplicate Constant node or initializer read the first copy (initializers first, so the
    graph stays topologically sorted). Returns the bytes saved."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    seen, rename, saved = {}, {}, 0

    def key(t):
        a = numpy_helper.to_array(t)
        return (t.data_type, tuple(t.dims), a.tobytes()) if a.nbytes >= min_bytes else None

    keep = []
    for init in g.initializer:
        k = key(init)
        if k is not None and k in seen:
            rename[init.name] = seen[k]
            saved += len(k[2])
            continue
        if k is not None:
            seen[k] = init.name
        keep.append(init)
    nodes = []
    for n in g.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            k = key(n.attribute[0].t)
            if k is not None and k in seen:
                rename[n.output[0]] = seen[k]
                saved += len(k[2])
                continue
            if k is not None:
                seen[k] = n.output[0]
        nodes.append(n)
    if not rename:
        return 0
    outputs = {o.name for o in g.output}
    for n in nodes:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    if outputs & set(rename):
        return 0  # a graph output is a constant: leave the file as it is
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return saved


def op_types(path: Path) -> list[str]:
    import onnx

    return sorted({n.op_type for n in onnx.load(str(path)).graph.node if n.op_type not in ("Constant", "Identity")})


def check_graph(path: Path, module, args, names, out_names) -> dict:
    """onnx checker, fixed shapes, onnxruntime vs torch: max abs error per output."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    for v in list(model.graph.input) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise SystemExit(f"{path.name}: {v.name} has a symbolic dimension")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    outs = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})
    with torch.no_grad():
        ref = module(*args)
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    return {n: float(np.abs(o - r.numpy()).max()) for n, o, r in zip(out_names, outs, ref)}


def check_against_samonnx(model, dec_args) -> dict:
    """LowResDecoder vs MobileSAM's SamOnnxModel (its third output is the low-res masks)."""
    from mobile_sam.utils.onnx import SamOnnxModel

    S = model.image_encoder.img_size
    with torch.no_grad():
        ours = sc.LowResDecoder(model)(*dec_args)
        ref = SamOnnxModel(model, return_single_mask=False)(*dec_args, torch.tensor([S, S], dtype=torch.float32))
    return {"low_res_masks": float((ours[0] - ref[2]).abs().max()),
            "iou_predictions": float((ours[1] - ref[1]).abs().max())}


def export_f32(model, out_dir: Path, exporter: str, heldout) -> dict:
    enc_args, dec_args, _ = example_inputs(model, heldout)
    specs = {
        "encoder-f32.onnx": (sc.Encoder(model), enc_args, ENC_IN, ENC_OUT),
        "decoder-f32.onnx": (sc.LowResDecoder(model), dec_args, DEC_IN, DEC_OUT),
    }
    report = {"decoder_vs_SamOnnxModel": check_against_samonnx(model, dec_args)}
    print(f"LowResDecoder vs SamOnnxModel (torch): max abs diff {report['decoder_vs_SamOnnxModel']}")
    for name, (module, args, ins, outs) in specs.items():
        module.eval()
        path = out_dir / name
        t0 = time.time()
        export_graph(module, args, path, ins, outs, exporter)
        err = check_graph(path, module, args, ins, outs)
        ops = op_types(path)
        size = path.stat().st_size
        print(f"{name}: {size / 1e6:.2f} MB, {time.time() - t0:.1f} s, max |ort - torch| = "
              + ", ".join(f"{k} {v:.2e}" for k, v in err.items()))
        print(f"  ops: {' '.join(ops)}")
        report[name] = {"bytes": size, "max_abs_err_vs_torch": err, "ops": ops}
    return report


# ---------------------------------------------------------------------------------------------
# int8


def _session(path: Path, threads: int = 1):
    """onnxruntime; int8 graphs op by op (sam_common.ort_session)."""
    return sc.ort_session(path, threads)


def calibration_feeds(f32_dir: Path, calib_dir: Path, count: int, S: int, seed: int = 123):
    """(encoder feeds, decoder feeds) from `count` phantom frames: each frame's embeddings
    (f32 encoder) with a one-click, a two-click and a box prompt on one of its structures."""
    from PIL import Image

    samples = sc.read_samples(calib_dir)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(samples))[:count]
    enc = _session(f32_dir / "encoder-f32.onnx")
    enc_feeds, dec_feeds = [], []
    for i in idx:
        s = samples[i]
        img = Image.open(calib_dir / s["image"])
        hw = (img.size[1], img.size[0])
        x, _ = sc.preprocess(img, S)
        enc_feeds.append({"image": x})
        emb = enc.run(None, {"image": x})[0]
        m = sc.load_mask(calib_dir / s["mask"])
        if not m.any():
            continue
        ys, xs = np.nonzero(m)
        fg = [(xs[j], ys[j]) for j in rng.integers(len(ys), size=2)]
        by, bx = np.nonzero(~m)
        bg = (bx[rng.integers(len(by))], by[rng.integers(len(by))])
        b = sc.bbox(m)
        h, w = emb.shape[-2:]
        prompts = [
            sc.prompt_arrays(sc.map_coords(fg[:1], hw, S), [1]),
            sc.prompt_arrays(sc.map_coords([fg[1], bg], hw, S), [1, 0]),
            sc.prompt_arrays(box=sc.map_coords([b[:2], b[2:]], hw, S).reshape(-1)),
        ]
        for coords, labels in prompts:
            dec_feeds.append({"image_embeddings": emb, "point_coords": coords, "point_labels": labels,
                              "mask_input": np.zeros((1, 1, 4 * h, 4 * w), dtype=np.float32),
                              "has_mask_input": np.zeros((1,), dtype=np.float32)})
    return enc_feeds, dec_feeds


class _Reader:
    def __init__(self, feeds):
        self.items = iter(feeds)

    def get_next(self):
        return next(self.items, None)


def point_encoding_nodes(path: Path) -> list[str]:
    """MatMul nodes whose second input is the prompt encoder's random Fourier matrix [2, C/2]
    (point coordinates x Gaussian frequencies): quantizing them would quantize coordinates."""
    import onnx

    g = onnx.load(str(path)).graph
    inits = {i.name: list(i.dims) for i in g.initializer}
    consts = {}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = list(a.t.dims)
    names = []
    for n in g.node:
        if n.op_type == "MatMul":
            dims = inits.get(n.input[1], consts.get(n.input[1]))
            if dims is not None and len(dims) == 2 and dims[0] == 2:
                names.append(n.name)
    return names


def quantize_role(f32_path: Path, out_dir: Path, role: str, feeds: list[dict], exclude: list[str],
                  activations: str = "u8") -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_dir.mkdir(parents=True, exist_ok=True)
    pre = out_dir / f"{role}-f32-preprocessed.onnx"
    quant_pre_process(str(f32_path), str(pre), skip_symbolic_shape=True)
    paths = {}
    t0 = time.time()
    dyn = out_dir / f"{role}-int8-dynamic.onnx"
    quantize_dynamic(str(pre), str(dyn), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                     nodes_to_exclude=exclude)
    paths["dynamic"] = dyn
    print(f"{role} dynamic: {time.time() - t0:.1f} s")
    t0 = time.time()
    qdq = out_dir / f"{role}-int8-qdq.onnx"
    quantize_static(
        str(pre), str(qdq), _Reader(feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Conv", "Gemm"],
        nodes_to_exclude=exclude,
        per_channel=False,
        activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": activations == "s8", "WeightSymmetric": True},
    )
    paths["qdq"] = qdq
    print(f"{role} static QDQ (Conv/MatMul/Gemm): {time.time() - t0:.1f} s")
    pre.unlink()
    return paths


def compare_int8(f32_dir: Path, cands: dict, heldout, eval_count: int, S: int) -> dict:
    """Held-out Dice of every encoder/decoder pairing against ground truth and against f32."""
    cases = sc.eval_cases(heldout)
    if eval_count and len(cases) > eval_count:
        step = len(cases) / eval_count
        cases = [cases[int(i * step)] for i in range(eval_count)]
    f32 = {"encoder": f32_dir / "encoder-f32.onnx", "decoder": f32_dir / "decoder-f32.onnx"}
    combos = [("f32", "f32")]
    combos += [(k, "f32") for k in cands["encoder"]]
    combos += [("f32", k) for k in cands["decoder"]]
    combos += [(k, k) for k in cands["encoder"] if k in cands["decoder"]]
    results = {}
    ref_logits = None
    for e, d in combos:
        ep = f32["encoder"] if e == "f32" else cands["encoder"][e]
        dp = f32["decoder"] if d == "f32" else cands["decoder"][d]
        enc, dec = sc.ort_fns(_session(ep), _session(dp))
        t0 = time.time()
        res = sc.evaluate(enc, dec, cases, S, keep_logits=True)
        logits = res.pop("logits")
        if ref_logits is None:
            ref_logits = logits
        agree = [sc.dice(a > 0, b > 0) for a, b in zip(logits, ref_logits)]
        err = [float(np.abs(a - b).max()) for a, b in zip(logits, ref_logits)]
        key = f"encoder {e} + decoder {d}"
        results[key] = {"dice_click": res["click"]["mean"], "dice_box": res["box"]["mean"],
                        "dice_vs_f32_mean": float(np.mean(agree)), "dice_vs_f32_min": float(np.min(agree)),
                        "max_abs_logit_err_vs_f32": float(np.max(err)), "n": res["click"]["n"]}
        r = results[key]
        print(f"{key}: Dice 1 click {r['dice_click']:.4f}, box {r['dice_box']:.4f}; vs f32 masks mean "
              f"{r['dice_vs_f32_mean']:.4f} (min {r['dice_vs_f32_min']:.4f}), max |logit err| "
              f"{r['max_abs_logit_err_vs_f32']:.3f} ({r['n']} structures, {time.time() - t0:.0f} s)")
    for role, c in cands.items():
        for k, p in c.items():
            print(f"{p.name}: {p.stat().st_size / 1e6:.2f} MB; ops: {' '.join(op_types(p))}")
    return results


# ---------------------------------------------------------------------------------------------
# package


def _toml_list(values) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _io_lines(items) -> str:
    rows = [f'  {{ name = "{n}", dtype = "{d}", shape = [{", ".join(str(x) for x in s)}] }},' for n, d, s in items]
    return "[\n" + "\n".join(rows) + "\n]"


def _graph_entry(role, precisions, file, digest, io) -> str:
    return (
        f"[[graph]]\n"
        f'role = "{role}"\n'
        f"precisions = {_toml_list(precisions)}\n"
        f'file = "{file}"\n'
        f'sha256 = "{digest}"\n'
        f"inputs = {_io_lines(io[0])}\n"
        f"outputs = {_io_lines(io[1])}\n"
    )


def write_package(pkg: Path, model, f32_dir: Path, int8: dict, description: str):
    """pkg/model.toml + graphs. int8: role -> int8 graph path (or absent: the f32 graph also
    serves int8)."""
    pkg.mkdir(parents=True, exist_ok=True)
    for old in pkg.glob("*.onnx"):
        old.unlink()
    S = model.image_encoder.img_size
    enc_io, dec_io = graph_io(model)
    text = (
        f'name = "{pkg.name}"\n'
        f'family = "sam"\n'
        f"description = {json.dumps(description)}\n\n"
        f"[input]\n"
        f"size = [{S}, {S}]\n"
        f'resize = "longest"\n'
        f"mean = {_toml_list(sc.MEAN)}\n"
        f"std = {_toml_list(sc.STD)}\n\n"
        f"[output]\n"
        f'activation = "sigmoid"\n'
        f"threshold = 0.5\n"
    )
    for role, io in (("encoder", enc_io), ("decoder", dec_io)):
        f32 = f"{role}-f32.onnx"
        shutil.copyfile(f32_dir / f32, pkg / f32)
        precisions = ["f32", "f16"] + ([] if role in int8 else ["int8"])
        text += "\n" + _graph_entry(role, precisions, f32, sc.sha256(pkg / f32), io)
        if role in int8:
            q = f"{role}-int8.onnx"
            shutil.copyfile(int8[role], pkg / q)
            text += "\n" + _graph_entry(role, ["int8"], q, sc.sha256(pkg / q), io)
    (pkg / "model.toml").write_text(text)
    total = sum(p.stat().st_size for p in pkg.iterdir())
    print(f"wrote {pkg} ({total / 1e6:.2f} MB)")


def describe(source: str, model, ckpt: dict, int8: dict, int8_report: dict | None) -> str:
    params = sc.exported_parameters(model)
    if source == "tiny":
        fig = ckpt.get("figures", {})
        cfg = ckpt["config"]
        e = cfg["encoder"]
        d = cfg["decoder"]
        ho = fig.get("heldout", {})
        a = fig.get("args", {})
        per = ho.get("click", {}).get("per_class", {})
        perb = ho.get("box", {}).get("per_class", {})
        text = (
            f"Demo SAM (MobileSAM architecture at {cfg['image_size']}x{cfg['image_size']}, "
            f"{params['total'] / 1e6:.2f} M parameters: TinyViT {'/'.join(map(str, e['embed_dims']))} "
            f"depths {'/'.join(map(str, e['depths']))}, prompt encoder {cfg['prompt_embed_dim']}, two-way transformer "
            f"{d['depth']}x{cfg['prompt_embed_dim']} mlp {d['mlp_dim']}, 3 multimask outputs) trained from scratch on "
            f"CPU on {fig.get('train_images', '?')} procedural ultrasound and endoscopy phantoms from "
            f"`edgeseg phantoms` "
            f"({', '.join(f'{n} at {k}' for k, n in fig.get('train_sizes', {}).items())} after the longest-side "
            f"resize) for {fig.get('steps', '?')} steps of {a.get('images_per_step', '?')} frames x "
            f"{a.get('prompts_per_image', '?')} prompts ({fig.get('train_minutes', 0):.0f} min); "
            f"prompts: one click (loss on the best of masks 1..3), 2-3 clicks or a jittered box (mask 0). "
            f"Held-out Dice at the frame size (seeds 999 and 998, {ho.get('click', {}).get('n', '?')} structures): "
            f"one click at the centre-most interior point {ho.get('click', {}).get('mean', float('nan')):.3f} ("
            + ", ".join(f"{k} {v:.3f}" for k, v in per.items())
            + f"); bounding box {ho.get('box', {}).get('mean', float('nan')):.3f} ("
            + ", ".join(f"{k} {v:.3f}" for k, v in perb.items())
            + "). A demonstration model for phantoms only, not for clinical images."
        )
    elif source == "checkpoint":
        text = ("MobileSAM (vit_t: TinyViT encoder, SAM prompt encoder and mask decoder, "
                f"{params['total'] / 1e6:.2f} M parameters) with its published weights, exported by export_sam.py.")
    else:
        text = (f"MobileSAM vit_t architecture with RANDOM weights ({params['total'] / 1e6:.2f} M parameters), "
                "for timing and parity checks only; it segments nothing.")
    if int8:
        text += (" int8: " + ", ".join(f"{r} {Path(p).stem.split('-int8-')[-1]}" for r, p in int8.items())
                 + " (onnxruntime-checked against f32 on held-out phantoms).")
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="MobileSAM weights (mobile_sam.pt)")
    src.add_argument("--random", action="store_true", help="full-size MobileSAM with random weights")
    src.add_argument("--tiny", help="checkpoint from train_sam.py")
    ap.add_argument("--out-dir", default=None, help="where the graphs go (default .cache/sam/onnx-<source>)")
    ap.add_argument("--exporter", choices=["legacy", "dynamo"], default="legacy")
    ap.add_argument("--quantize", action="store_true", help="make and compare the int8 candidates")
    ap.add_argument("--calib-data", default=str(CALIB), help="phantom folder for calibration")
    ap.add_argument("--calib-count", type=int, default=48)
    ap.add_argument("--eval-data", nargs="+", default=[str(p) for p in HELDOUT], help="held-out phantom folders")
    ap.add_argument("--eval-count", type=int, default=200, help="held-out structures for the int8 comparison")
    ap.add_argument("--package", default=None, help="write a model package into this folder")
    ap.add_argument("--qdq-activations", choices=["u8", "s8"], default="u8",
                    help="QDQ activations: u8 = asymmetric QUInt8 (as the U-Net packages), s8 = symmetric QInt8")
    ap.add_argument("--int8-encoder", choices=["qdq", "dynamic", "none"], default="qdq")
    ap.add_argument("--int8-decoder", choices=["qdq", "dynamic", "none"], default="none")
    ap.add_argument("--report", default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(1)
    ckpt = {}
    if args.tiny:
        source = "tiny"
        model, ckpt = sc.load_tiny(args.tiny)
    elif args.checkpoint:
        source = "checkpoint"
        model = sc.load_mobilesam(args.checkpoint)
    else:
        source = "random"
        model = sc.build_sam(sc.FULL_CONFIG)
        model.train()
        model.eval()
    out_dir = Path(args.out_dir or sc.CACHE_DIR / f"onnx-{source}")
    S = model.image_encoder.img_size
    heldout = [Path(p) for p in args.eval_data]
    report = {"source": source, "exporter": args.exporter, "opset": OPSET, "image_size": S,
              "parameters": sc.exported_parameters(model)}
    print(f"{source}: S = {S}, parameters in the graphs {report['parameters']}; "
          f"exporter {args.exporter}, opset {OPSET}")
    report["f32"] = export_f32(model, out_dir, args.exporter, heldout)

    cands = {"encoder": {}, "decoder": {}}
    if args.quantize:
        enc_feeds, dec_feeds = calibration_feeds(out_dir, Path(args.calib_data), args.calib_count, S)
        cands["encoder"] = quantize_role(out_dir / "encoder-f32.onnx", out_dir, "encoder", enc_feeds, [],
                                         args.qdq_activations)
        excl = point_encoding_nodes(out_dir / "decoder-f32.onnx")
        print(f"decoder: kept in f32: {excl}")
        cands["decoder"] = quantize_role(out_dir / "decoder-f32.onnx", out_dir, "decoder", dec_feeds, excl,
                                         args.qdq_activations)
        report["int8"] = compare_int8(out_dir, cands, heldout, args.eval_count, S)
    if args.package:
        int8 = {}
        for role, choice in (("encoder", args.int8_encoder), ("decoder", args.int8_decoder)):
            if choice != "none":
                p = out_dir / f"{role}-int8-{choice}.onnx"
                if not p.exists():
                    raise SystemExit(f"{p} missing: run with --quantize")
                int8[role] = p
        write_package(Path(args.package), model, out_dir, int8, describe(source, model, ckpt, int8, report.get("int8")))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
