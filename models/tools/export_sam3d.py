"""Exports the SAM-3D adapter phantom model (see train_sam3d.py) to the two ONNX graphs of the
manifest family "sam3d", checks them against torch in onnxruntime, and (with --package) writes
models/sam3d-phantom/ and its parity fixtures.

Graphs (opset 17, legacy exporter, every shape fixed, plain MatMul/Softmax attention):
  encoder-f32.onnx  volume f32 [1,1,P,P,P] -> image_embeddings f32 [1,E,P/2,P/2,P/2]
  decoder-f32.onnx  image_embeddings, point_coords f32 [1,N,3] (x,y,z patch voxels),
                    point_labels f32 [1,N] (1 fg, 0 bg, -1 padding) -> low_res_masks f32 [1,1,P/2,P/2,P/2]
The op types of each graph are listed and checked against a deny list (If, Loop, Scan, Resize,
NonZero, Range, Where, ...): no runtime-valued shapes, no control flow.

Checks: max |onnxruntime - torch| on a real patch (the first volume of
tests/fixtures/volumes/eval/, resampled, normalised and cropped around its click exactly as the
runtime does) and on random inputs; the mask Dice of the onnxruntime pair against the truth for
every sample of that folder through the runtime's whole path.

Parity fixtures (--package; tests/fixtures/parity/sam3d-phantom/, via make_references.write_case):
  encoder-f32.toml          the real patch -> image_embeddings (onnxruntime)
  decoder-f32.toml          those embeddings (onnxruntime encoder output) + one click at the
                            patch centre (the mapped click of samples.jsonl line 1)
  decoder-f32-clicks.toml   the same embeddings + two positive clicks, one negative, one padding

Usage:
  python export_sam3d.py --checkpoint models/tools/.cache/sam3d/ckpt.pt --package --precisions f32,f16
(f16 = tract's f32_to_f16 translation of the f32 files; it was checked on the parity cases in tract
0.23.9: worst error 6.2e-3 of max(1, |ref|) on the encoder, 2.3e-3 on the decoder, against the
parity test's 5e-2. No int8 form is made.)
  python export_sam3d.py --random --out-dir /tmp/sam3d-random         # random weights, no package
Deterministic; offline.
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
import sam3d_common as sc  # noqa: E402
import volumes as vg  # noqa: E402

OPSET = 17
PACKAGE = "sam3d-phantom"
DENY = {"If", "Loop", "Scan", "Resize", "Upsample", "NonZero", "Range", "Where", "ConstantOfShape", "Expand",
        "Tile", "Shape", "Size"}


class EncoderGraph(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder = model.encoder

    def forward(self, volume):
        return self.encoder(volume)


class DecoderGraph(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.decoder = model.decoder

    def forward(self, image_embeddings, point_coords, point_labels):
        return self.decoder(image_embeddings, point_coords, point_labels)


def io_specs(cfg):
    p, e, g = cfg["patch"], cfg["embed_dim"], cfg["embed_grid"]
    n = cfg["n_points"]
    enc = ([("volume", "f32", [1, 1, p, p, p])], [("image_embeddings", "f32", [1, e, g, g, g])])
    dec = ([("image_embeddings", "f32", [1, e, g, g, g]), ("point_coords", "f32", [1, n, 3]),
            ("point_labels", "f32", [1, n])], [("low_res_masks", "f32", [1, 1, g, g, g])])
    return enc, dec


def export(module, args, path: Path, ins, outs):
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    torch.onnx.export(module, args, str(path), input_names=ins, output_names=outs, opset_version=OPSET,
                      dynamo=False, do_constant_folding=True)


def check(path: Path, spec) -> list[str]:
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    ins, outs = spec
    for v, (name, _, shape) in zip(list(model.graph.input), ins):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        if v.name != name or dims != shape:
            raise SystemExit(f"{path.name}: input {v.name} {dims}, expected {name} {shape}")
    for v, (name, _, shape) in zip(list(model.graph.output), outs):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        if v.name != name or dims != shape:
            raise SystemExit(f"{path.name}: output {v.name} {dims}, expected {name} {shape}")
    ops = sorted({n.op_type for n in model.graph.node})
    bad = sorted(set(ops) & DENY)
    if bad:
        raise SystemExit(f"{path.name}: denied op types {bad}")
    return ops


def real_patch(fixtures: Path):
    """(patch [1,1,P,P,P], click in patch coords (x,y,z), sample dict, model-grid info) from the
    first line of samples.jsonl, through the runtime's path."""
    import nibabel as nib

    s = json.loads((fixtures / "samples.jsonl").read_text().splitlines()[0])
    img = nib.load(str(fixtures / s["volume"]))
    data = img.get_fdata(dtype=np.float32)
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    vol = sc.to_model_grid(data, spacing)
    mshape = (vol.shape[2], vol.shape[1], vol.shape[0])
    pt = sc.point_to_model(s["points"][0], data.shape, mshape)
    start = sc.patch_start([pt])
    patch = sc.crop(vol, start, sc.PATCH, fill=float(vol.min()))
    rel = [pt[0] - start[0], pt[1] - start[1], pt[2] - start[2]]
    return patch[None, None].astype(np.float32), rel, s, {"spacing": spacing, "shape": data.shape,
                                                          "model_shape": mshape, "start": start}


def ort_predictor(enc_path: Path, dec_path: Path):
    from make_references import session

    enc = session(enc_path)
    dec = session(dec_path)
    return sc.Predictor(
        lambda v: enc.run(None, {"volume": v})[0],
        lambda e, c, l: dec.run(None, {"image_embeddings": e, "point_coords": c, "point_labels": l})[0],
    )


def fixture_dice(pred, fixtures: Path) -> list[float]:
    import nibabel as nib

    out = []
    for line in (fixtures / "samples.jsonl").read_text().splitlines():
        s = json.loads(line)
        img = nib.load(str(fixtures / s["volume"]))
        data = img.get_fdata(dtype=np.float32)
        m = np.asarray(nib.load(str(fixtures / s["mask"])).dataobj) > 0
        mask = sc.runtime_click_mask(pred, data, tuple(float(z) for z in img.header.get_zooms()[:3]), s["points"])
        out.append(sc.dice(mask, m))
    return out


def _toml_list(values) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _io_lines(items) -> str:
    rows = [f'  {{ name = "{n}", dtype = "{d}", shape = [{", ".join(str(x) for x in s)}] }},' for n, d, s in items]
    return "[\n" + "\n".join(rows) + "\n]"


def _graph_entry(role, precisions, file, digest, spec) -> str:
    return (f"[[graph]]\nrole = \"{role}\"\nprecisions = {_toml_list(precisions)}\nfile = \"{file}\"\n"
            f"sha256 = \"{digest}\"\ninputs = {_io_lines(spec[0])}\noutputs = {_io_lines(spec[1])}\n")


def describe(ckpt: dict, nparams: int) -> str:
    cfg, f = ckpt["config"], ckpt["figures"]
    p = cfg["patch"]
    return (
        f"Demo SAM-3D adapter model ({nparams / 1e6:.2f} M parameters): a 3-D ViT patch encoder ({cfg['depth']} blocks "
        f"of width {cfg['width']} on {p // cfg['token_patch']}^3 tokens of a {p}^3 patch at {ckpt['spacing']} mm, "
        f"3^3 conv stem, a depthwise-3-D-conv bottleneck adapter after every block, SAM-like neck to "
        f"{cfg['embed_dim']}x{cfg['embed_grid']}^3 embeddings) and a SAM-like prompt decoder (Fourier-encoded click "
        f"tokens, two-way transformer, hypernetwork mask head; plus Gaussian click maps, click-feature "
        f"differences and a small conv refinement) giving {cfg['embed_grid']}^3 logits. Trained from scratch on CPU "
        f"(1 thread, {ckpt['train_minutes']:.1f} min, {ckpt['steps']} steps of {ckpt['args']['batch']} patches x "
        f"{ckpt['args']['prompts']} prompts) on {ckpt['args']['pool_count']} synthetic CT-like and ultrasound-like "
        f"volumes from models/tools/volumes.py (ellipsoid lesions, curved vessels, anisotropic spacings). Held-out "
        f"Dice ({f['heldout_volumes']} volumes, {f['lesions']} lesions, one click at the lesion voxel farthest from "
        f"its boundary): {f['dice_1click_grid_lesion']:.3f} on the model grid, {f['dice_1click_runtime_lesion']:.3f} "
        f"through the runtime path on the input grids; without clicks (sliding windows, all lesions): "
        f"{f['dice_noclick_sliding_runtime']:.3f}. A demonstration model for synthetic phantoms only, not for "
        f"clinical images."
    )


def write_package(pkg: Path, onnx_dir: Path, cfg, description: str, precisions):
    pkg.mkdir(parents=True, exist_ok=True)
    enc_spec, dec_spec = io_specs(cfg)
    for f in ("encoder-f32.onnx", "decoder-f32.onnx"):
        shutil.copyfile(onnx_dir / f, pkg / f)
    text = (
        f'name = "{PACKAGE}"\n'
        f'family = "sam3d"\n'
        f"description = {json.dumps(description)}\n\n"
        f"[volume]\n"
        f"spacing = {_toml_list([sc.SPACING] * 3)}\n"
        f'normalize = "percentile"\n'
        f"percentiles = {_toml_list(list(sc.PERCENTILES))}\n"
        f"overlap = {sc.OVERLAP}\n\n"
        f"[output]\n"
        f'activation = "sigmoid"\n'
        f"threshold = 0.5\n\n"
    )
    text += _graph_entry("encoder", precisions, "encoder-f32.onnx", sc.sha256(pkg / "encoder-f32.onnx"), enc_spec)
    text += "\n" + _graph_entry("decoder", precisions, "decoder-f32.onnx", sc.sha256(pkg / "decoder-f32.onnx"), dec_spec)
    (pkg / "model.toml").write_text(text)
    print(f"wrote {pkg}")


def write_parity(pkg: Path, fixtures_out: Path, patch, rel, sample, info):
    from make_references import session, write_case

    enc = session(pkg / "encoder-f32.onnx")
    dec = session(pkg / "decoder-f32.onnx")
    emb = enc.run(None, {"volume": patch})[0]
    src = (f"eval/{sample['volume']} ({'x'.join(str(d) for d in info['shape'])} at "
           f"{'x'.join(f'{s:g}' for s in info['spacing'])} mm) resampled to {sc.SPACING} mm "
           f"({'x'.join(str(d) for d in info['model_shape'])}), percentile {sc.PERCENTILES[0]}/{sc.PERCENTILES[1]} "
           f"normalised, {sc.PATCH}^3 patch at model-grid origin {info['start']} centred on the click {sample['points'][0]}")
    for f in fixtures_out.glob("*"):
        f.unlink()
    write_case(fixtures_out, "encoder-f32", "encoder-f32.onnx", {"volume": patch}, {"image_embeddings": emb}, src)
    c, l = sc.pad_points([rel], [1.0])
    low = dec.run(None, {"image_embeddings": emb, "point_coords": c, "point_labels": l})[0]
    write_case(fixtures_out, "decoder-f32", "decoder-f32.onnx",
               {"image_embeddings": emb, "point_coords": c, "point_labels": l}, {"low_res_masks": low},
               f"{src}\nimage_embeddings = encoder-f32.onnx output (onnxruntime); one click at {np.round(rel, 3).tolist()}")
    print(f"  decoder-f32: {int((low > 0).sum())} of {low.size} low-res logits > 0")
    pts = [rel, [rel[0] + 2.0, rel[1] - 1.0, rel[2] + 1.0], [rel[0] + 14.0, rel[1] + 9.0, rel[2] - 6.0]]
    c2, l2 = sc.pad_points(pts, [1.0, 1.0, 0.0])
    low2 = dec.run(None, {"image_embeddings": emb, "point_coords": c2, "point_labels": l2})[0]
    write_case(fixtures_out, "decoder-f32-clicks", "decoder-f32.onnx",
               {"image_embeddings": emb, "point_coords": c2, "point_labels": l2}, {"low_res_masks": low2},
               f"{src}\nimage_embeddings = encoder-f32.onnx output (onnxruntime); clicks {np.round(pts, 3).tolist()} "
               f"labels [1, 1, 0, -1]")
    return emb, low


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(sc.CACHE_DIR / "ckpt.pt"))
    ap.add_argument("--random", action="store_true")
    ap.add_argument("--out-dir", default=str(sc.CACHE_DIR / "onnx"))
    ap.add_argument("--fixtures", default=str(sc.REPO_DIR / "tests/fixtures/volumes/eval"))
    ap.add_argument("--package", action="store_true", help=f"write models/{PACKAGE}/ and its parity fixtures")
    ap.add_argument("--models-dir", default=str(sc.REPO_DIR / "models"))
    ap.add_argument("--parity-dir", default=str(sc.REPO_DIR / "tests/fixtures/parity"))
    ap.add_argument("--precisions", default="f32", help="comma list for the manifest (f16 only once checked in tract)")
    ap.add_argument("--report", default=None)
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    sc.FUSED_ATTENTION = False
    if args.random:
        model, ckpt = sc.Sam3D().eval(), {}
    else:
        model, ckpt = sc.load_checkpoint(args.checkpoint)
    cfg = model.cfg
    out = Path(args.out_dir)
    enc_spec, dec_spec = io_specs(cfg)
    fixtures = Path(args.fixtures)
    patch, rel, sample, info = real_patch(fixtures)
    c, l = sc.pad_points([rel], [1.0])
    report = {"parameters": sc.count_parameters(model), "opset": OPSET, "config": cfg}

    t0 = time.time()
    export(EncoderGraph(model), (torch.from_numpy(patch),), out / "encoder-f32.onnx", ["volume"], ["image_embeddings"])
    with torch.no_grad():
        emb_t = model.encoder(torch.from_numpy(patch))
    export(DecoderGraph(model), (emb_t, torch.from_numpy(c), torch.from_numpy(l)), out / "decoder-f32.onnx",
           ["image_embeddings", "point_coords", "point_labels"], ["low_res_masks"])
    print(f"exported in {time.time() - t0:.1f} s")
    for name, spec in (("encoder-f32.onnx", enc_spec), ("decoder-f32.onnx", dec_spec)):
        ops = check(out / name, spec)
        size = (out / name).stat().st_size
        report[name] = {"bytes": size, "ops": ops}
        print(f"{name}: {size / 1e6:.3f} MB; ops: {' '.join(ops)}")

    # onnxruntime vs torch
    from make_references import session

    enc = session(out / "encoder-f32.onnx")
    dec = session(out / "decoder-f32.onnx")
    rng = np.random.default_rng(0)
    cases = {
        "real patch, 1 click": (patch, c, l),
        "real patch, no click": (patch, *sc.pad_points([], [])),
        "random volume, 3 clicks": (rng.uniform(0, 1, patch.shape).astype(np.float32),
                                    *sc.pad_points(rng.uniform(0, sc.PATCH - 1, (3, 3)).tolist(), [1.0, 0.0, 1.0])),
    }
    for label, (v, cc, ll) in cases.items():
        with torch.no_grad():
            e_t = model.encoder(torch.from_numpy(v))
            m_t = model.decoder(e_t, torch.from_numpy(cc), torch.from_numpy(ll)).numpy()
        e_o = enc.run(None, {"volume": v})[0]
        m_o = dec.run(None, {"image_embeddings": e_o, "point_coords": cc, "point_labels": ll})[0]
        m_o2 = dec.run(None, {"image_embeddings": e_t.numpy(), "point_coords": cc, "point_labels": ll})[0]
        r = {"encoder_max_abs": float(np.abs(e_o - e_t.numpy()).max()), "embedding_max_abs": float(np.abs(e_t.numpy()).max()),
             "decoder_max_abs_same_input": float(np.abs(m_o2 - m_t).max()),
             "pipeline_max_abs": float(np.abs(m_o - m_t).max()), "logit_max_abs": float(np.abs(m_t).max()),
             "mask_agreement": float(((m_o > 0) == (m_t > 0)).mean())}
        report[label] = r
        print(f"{label}: |ort - torch| encoder {r['encoder_max_abs']:.2e} (max |emb| {r['embedding_max_abs']:.2f}), "
              f"decoder {r['decoder_max_abs_same_input']:.2e}, encoder+decoder {r['pipeline_max_abs']:.2e} "
              f"(max |logit| {r['logit_max_abs']:.2f})")
    if not args.random and (fixtures / "samples.jsonl").exists():
        d_ort = fixture_dice(ort_predictor(out / "encoder-f32.onnx", out / "decoder-f32.onnx"), fixtures)
        report["fixture_eval_dice_ort"] = d_ort
        print(f"eval fixtures, runtime path with onnxruntime: Dice {np.mean(d_ort):.4f} ({', '.join(f'{d:.3f}' for d in d_ort)})")

    if args.package:
        if args.random:
            raise SystemExit("--package needs a trained checkpoint")
        pkg = Path(args.models_dir) / PACKAGE
        precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
        write_package(pkg, out, cfg, describe(ckpt, report["parameters"]), precisions)
        write_parity(pkg, Path(args.parity_dir) / PACKAGE, patch, rel, sample, info)
        report["package_bytes"] = sum(f.stat().st_size for f in pkg.iterdir())
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
