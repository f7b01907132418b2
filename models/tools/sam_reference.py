"""onnxruntime references for a "sam" family package (e.g. models/sam-phantom/):

  check     runs a package's graphs on one image with clicks and/or a box exactly as the runtime
            should (contract preprocessing, coordinate mapping, padding to N, mask choice,
            low-res logits -> S x S bilinear -> crop the padding -> frame size bilinear ->
            logit > 0) and prints the chosen mask, its area and bounding box at the frame size,
            so the Rust runtime can be checked end to end;
  fixtures  writes the parity fixtures tests/fixtures/parity/<package>/ (with write_case from
            make_references.py): an encoder case per encoder graph on a real phantom frame (the
            first single-lesion 320x240 frame of the held-out set, seed 998), and
            decoder cases per decoder graph on that frame's onnxruntime embeddings (the int8
            encoder's for an int8 decoder): one click at the lesion's centre-most interior point,
            and a click at the other structure's (the vessel's) centre-most interior point plus
            its bounding box.

  python sam_reference.py check --package models/sam-phantom --image FRAME.png --click 120,88
  python sam_reference.py check --package models/sam-phantom --image FRAME.png --box 90,60,150,120
  python sam_reference.py fixtures --package models/sam-phantom

Clicks and boxes are in input-image pixels (x, y); --click takes x,y or x,y,label (label 1
foreground, 0 background); a box is x0,y0,x1,y1 (top-left and bottom-right corners).
Deterministic; offline.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

import numpy as np
from PIL import Image

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
import sam_common as sc  # noqa: E402
from make_references import session as _f32_session, write_case  # noqa: E402

DEFAULT_IMAGE_DIR = sc.CACHE_DIR / "phantoms/heldout320"


def session(path: Path):
    """make_references.session for f32 graphs; int8 graphs op by op (ORT_DISABLE_ALL, the QDQ
    semantics tract implements; see sam_common.ort_session)."""
    return sc.ort_session(path) if "int8" in Path(path).name else _f32_session(path)


def load_package(pkg: Path):
    manifest = tomllib.loads((pkg / "model.toml").read_text())
    if manifest.get("family") != "sam":
        raise SystemExit(f"{pkg}: family {manifest.get('family')!r}, not \"sam\"")
    return manifest


def graph_for(manifest, role: str, precision: str) -> dict:
    for g in manifest["graph"]:
        if g["role"] == role and precision in g["precisions"]:
            return g
    raise SystemExit(f"no {role} graph serves {precision}")


def default_frame():
    """A held-out 320x240 ultrasound frame with one lesion (exercises the bottom padding):
    (image path, lesion mask, other structure's mask)."""
    samples = sc.read_samples(DEFAULT_IMAGE_DIR)
    for s in samples:
        a = s.get("attributes") or {}
        if a.get("class") == "lesion" and a.get("count") == "one":
            other = next(t for t in samples if t["image"] == s["image"] and t is not s)
            return (DEFAULT_IMAGE_DIR / s["image"], sc.load_mask(DEFAULT_IMAGE_DIR / s["mask"]),
                    sc.load_mask(DEFAULT_IMAGE_DIR / other["mask"]), s, other)
    raise SystemExit(f"no single-lesion frame in {DEFAULT_IMAGE_DIR}")


def run(pkg: Path, manifest, image_path: Path, clicks, box, precision: str):
    S = manifest["input"]["size"][0]
    enc = session(pkg / graph_for(manifest, "encoder", precision)["file"])
    dec = session(pkg / graph_for(manifest, "decoder", precision)["file"])
    img = Image.open(image_path)
    orig_hw = (img.size[1], img.size[0])
    x, new_hw = sc.preprocess(img, S)
    emb = enc.run(None, {"image": x})[0]
    pts = sc.map_coords([c[:2] for c in clicks], orig_hw, S) if clicks else np.zeros((0, 2))
    mbox = sc.map_coords([box[:2], box[2:]], orig_hw, S).reshape(-1) if box else None
    coords, labels = sc.prompt_arrays(pts, [c[2] for c in clicks], box=mbox)
    _, dec_fn = sc.ort_fns(enc, dec)
    low, iou = dec_fn(emb, coords, labels)
    k = sc.choose_mask(labels, iou)
    logits = sc.upsample_to_image(low[0, k], S, new_hw, orig_hw)
    return dict(S=S, orig_hw=orig_hw, new_hw=new_hw, coords=coords, labels=labels, iou=iou[0], k=k,
                logits=logits, low=low, emb=emb, x=x)


def cmd_check(args):
    pkg = Path(args.package)
    manifest = load_package(pkg)
    image = Path(args.image) if args.image else default_frame()[0]
    clicks = []
    for c in args.click or []:
        v = [float(t) for t in c.split(",")]
        clicks.append((v[0], v[1], v[2] if len(v) > 2 else 1.0))
    box = [float(t) for t in args.box.split(",")] if args.box else None
    if not clicks and not box:
        lesion = default_frame()[1] if not args.image else None
        if lesion is None:
            raise SystemExit("give --click and/or --box")
        cx, cy = sc.centre_point(lesion)
        clicks = [(float(cx), float(cy), 1.0)]
    r = run(pkg, manifest, image, clicks, box, args.precision)
    mask = r["logits"] > 0
    print(f"package {pkg} ({args.precision}); image {image} {r['orig_hw'][1]}x{r['orig_hw'][0]} (WxH)")
    print(f"S {r['S']}; resized (pre-padding) {r['new_hw'][1]}x{r['new_hw'][0]} (WxH)")
    print(f"clicks {clicks} box {box}")
    print(f"point_coords {np.round(r['coords'][0], 4).tolist()}")
    print(f"point_labels {r['labels'][0].tolist()}")
    print(f"iou_predictions {np.round(r['iou'], 4).tolist()}; chosen mask {r['k']}")
    print(f"low-res logits of mask {r['k']}: min {r['low'][0, r['k']].min():.4f} max {r['low'][0, r['k']].max():.4f}, "
          f"{int((r['low'][0, r['k']] > 0).sum())} positive of {r['low'][0, r['k']].size}")
    area = int(mask.sum())
    if area:
        x0, y0, x1, y1 = sc.bbox(mask)
        prob = 1 / (1 + np.exp(-r["logits"][mask]))
        print(f"mask at frame size: area {area} px, bbox x {x0}..{x1}, y {y0}..{y1} (inclusive), "
              f"mean probability inside {prob.mean():.4f}")
    else:
        print("mask at frame size: empty")
    one = sc.one_step_probability(r["low"][0, r["k"]], r["S"], r["new_hw"], r["orig_hw"]) > 0.5
    if one.any():
        x0, y0, x1, y1 = sc.bbox(one)
        print(f"  (the Rust runtime's one-step resize of probabilities, emulated: area {int(one.sum())} px, "
              f"bbox x {x0}..{x1}, y {y0}..{y1}; {int((one != mask).sum())} pixels differ from the two-step mask)")
    if args.truth:
        t = sc.load_mask(args.truth)
        print(f"Dice with {args.truth}: {sc.dice(mask, t):.4f}")
    if args.write_mask:
        Image.fromarray((mask * 255).astype(np.uint8)).save(args.write_mask)
        print(f"wrote {args.write_mask}")


def share_identical_inputs(out: Path):
    """Cases written by write_case each carry their own input files; an input identical to an
    earlier case's points at that file instead (the int8 encoder case reads the f32 case's 786 KB
    frame, the decoder cases its embeddings)."""
    import re

    seen = {}
    order = sorted(out.glob("*.toml"), key=lambda p: ("int8" in p.name, not p.name.startswith("encoder"), p.name))
    for toml_path in order:
        text = toml_path.read_text()
        for fname in re.findall(r'file = "([^"]+)"', text):
            data = (out / fname).read_bytes()
            if len(data) < 65536:
                continue
            if data in seen and seen[data] != fname:
                text = text.replace(f'file = "{fname}"', f'file = "{seen[data]}"')
                (out / fname).unlink()
            else:
                seen.setdefault(data, fname)
        toml_path.write_text(text)


def cmd_fixtures(args):
    pkg = Path(args.package)
    manifest = load_package(pkg)
    out = Path(args.fixtures_dir) / pkg.name
    frame = default_frame()
    image, lesion, other, s_lesion, s_other = frame
    S = manifest["input"]["size"][0]
    img = Image.open(image)
    orig_hw = (img.size[1], img.size[0])
    x, new_hw = sc.preprocess(img, S)
    click = sc.centre_point(lesion)
    click2 = sc.centre_point(other)
    box = sc.bbox(other)
    src = (f"phantom {image.name} ({image.parent.name}), {orig_hw[1]}x{orig_hw[0]} resized to "
           f"{new_hw[1]}x{new_hw[0]}, padded to {S}x{S}, SAM mean/std")
    print(f"image {image}; click {click} on the {s_lesion['attributes']['class']}; click {click2} and box {box} "
          f"on the {s_other['attributes']['class']}")
    for old in out.glob("*"):
        old.unlink()
    encs = [g for g in manifest["graph"] if g["role"] == "encoder"]
    decs = [g for g in manifest["graph"] if g["role"] == "decoder"]
    emb_by_precision = {}
    for g in encs:
        emb = session(pkg / g["file"]).run(None, {"image": x})[0]
        for p in g["precisions"]:
            emb_by_precision[p] = (emb, g["file"])
        write_case(out, Path(g["file"]).stem, g["file"], {"image": x}, {"image_embeddings": emb}, src)
    c_click, l_click = sc.prompt_arrays(sc.map_coords([click], orig_hw, S), [1])
    mbox = sc.map_coords([box[:2], box[2:]], orig_hw, S).reshape(-1)
    c_both, l_both = sc.prompt_arrays(sc.map_coords([click2], orig_hw, S), [1], box=mbox)
    h, w = emb_by_precision["f32"][0].shape[-2:]
    for g in decs:
        p = "int8" if g["precisions"] == ["int8"] else "f32"
        emb, enc_file = emb_by_precision[p]
        sess = session(pkg / g["file"])
        stem = Path(g["file"]).stem
        for case, coords, labels, what in ((f"{stem}-click", c_click, l_click, f"one click {click} (input px)"),
                                           (f"{stem}-click-box", c_both, l_both,
                                            f"click {click2} + box {box} (input px)")):
            feeds = {"image_embeddings": emb, "point_coords": coords, "point_labels": labels,
                     "mask_input": np.zeros((1, 1, 4 * h, 4 * w), dtype=np.float32),
                     "has_mask_input": np.zeros((1,), dtype=np.float32)}
            low, iou = sess.run(None, feeds)
            k = sc.choose_mask(labels, iou)
            write_case(out, case, g["file"], feeds, {"low_res_masks": low, "iou_predictions": iou},
                       f"{src}; image_embeddings = {enc_file} output; {what}; runtime picks mask {k}")
            print(f"  {case}: iou {np.round(iou[0], 3).tolist()}, mask {k}, "
                  f"{int((low[0, k] > 0).sum())} positive low-res logits")
    share_identical_inputs(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="one image, clicks/box -> chosen mask, area, bbox")
    c.add_argument("--package", default=str(sc.REPO_DIR / "models/sam-phantom"))
    c.add_argument("--image", default=None, help="default: a held-out 320x240 lesion frame")
    c.add_argument("--click", action="append", help="x,y[,label] in input pixels (repeatable)")
    c.add_argument("--box", default=None, help="x0,y0,x1,y1 in input pixels")
    c.add_argument("--precision", choices=["f32", "int8"], default="f32")
    c.add_argument("--truth", default=None, help="ground-truth mask PNG for a Dice")
    c.add_argument("--write-mask", default=None, help="write the mask PNG here")
    f = sub.add_parser("fixtures", help="parity fixtures for tests/parity.rs")
    f.add_argument("--package", default=str(sc.REPO_DIR / "models/sam-phantom"))
    f.add_argument("--fixtures-dir", default=str(sc.REPO_DIR / "tests/fixtures/parity"))
    args = ap.parse_args()
    {"check": cmd_check, "fixtures": cmd_fixtures}[args.cmd](args)


if __name__ == "__main__":
    main()
