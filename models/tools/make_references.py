"""Writes the onnxruntime reference outputs that tests/parity.rs compares tract against, for
every graph listed in the CLIPSeg phantom packages' model.toml files.

Fixed inputs: one real 128x128 phantom frame (an ultrasound frame with a lesion from the
held-out phantom folder, preprocessed exactly as in training: 0..1 RGB, CLIP mean/std) and real
prompts through the package's CLIP BPE tokenizer (77 tokens, padded with <|endoftext|>). The
image graph's `conditional_embeddings` are the text graph's onnxruntime output for the first
prompt.

Cases written to tests/fixtures/parity/<package>/ (raw little-endian tensors beside each .toml):
  text-f32.toml           first prompt (e.g. "dark round lesion")
  text-f32-prompt2.toml   second, longer prompt (an endoscopy tool at prompt level P6)
  image-f32.toml          phantom + first prompt's embedding
  image-int8.toml         the same inputs, when the manifest lists image-int8.onnx
  joint-f32.toml          phantom + first prompt (joint package)
With --candidates DIR, it also writes an `image-int8.toml` case for every int8 candidate graph
in DIR (image-int8-*.onnx) into DIR/parity-<candidate>/, ready to copy beside the package's
fixtures once one candidate ships as image-int8.onnx.

  python make_references.py [--models-dir models] [--fixtures-dir tests/fixtures/parity] \
      [--phantoms models/tools/.cache/phantoms/heldout] [--candidates models/tools/.cache/vlsm/int8]

Re-run after every re-export. Deterministic; offline.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vlsm_common as vc  # noqa: E402

PACKAGES = ("clipseg-phantom", "clipseg-phantom-joint")
DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.int64): "i64"}


def write_case(out_dir: Path, case: str, graph_file: str, inputs: dict, outputs: dict, comment: str):
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f'graph = "{graph_file}"', ""]
    for section, tensors in (("inputs", inputs), ("outputs", outputs)):
        for name, arr in tensors.items():
            arr = np.ascontiguousarray(arr)
            fname = f"{case}.{name}.bin"
            arr.astype(arr.dtype.newbyteorder("<")).tofile(out_dir / fname)
            lines += [
                f"[[{section}]]",
                f'name = "{name}"',
                f'dtype = "{DTYPES[arr.dtype]}"',
                f"shape = [{', '.join(str(d) for d in arr.shape)}]",
                f'file = "{fname}"',
                "",
            ]
    (out_dir / f"{case}.toml").write_text("\n".join(lines))
    print(f"wrote {out_dir / (case + '.toml')}")


def session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def pick_inputs(phantoms: Path, first_prompt: str | None, second_prompt: str | None):
    """(image path, first prompt, second prompt) from the held-out phantom folder."""
    samples = vc.read_samples(phantoms)
    lesion = next(
        (s for s in samples if s.get("modality") == "ultrasound" and (s.get("attributes") or {}).get("class") == "lesion"
         and (s.get("attributes") or {}).get("shape") == "round"),
        next(s for s in samples if s.get("modality") == "ultrasound"),
    )
    tool = next((s for s in samples if (s.get("attributes") or {}).get("class") == "tool"), samples[-1])
    p1 = first_prompt or lesion["prompts"]["P3"]
    p2 = second_prompt or tool["prompts"]["P6"]
    return phantoms / lesion["image"], p1, p2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", default=str(vc.REPO_DIR / "models"))
    ap.add_argument("--fixtures-dir", default=str(vc.REPO_DIR / "tests/fixtures/parity"))
    ap.add_argument("--phantoms", default=str(vc.CACHE_DIR / "phantoms/heldout"),
                    help="phantom folder (edgeseg phantoms --seed 999 --size 128x128)")
    ap.add_argument("--image", default=None, help="use this frame instead of the first round lesion frame")
    ap.add_argument("--prompt", default=None, help="first prompt (default: that lesion's P3 prompt)")
    ap.add_argument("--prompt2", default=None, help="second prompt (default: a tool's P6 prompt)")
    ap.add_argument("--candidates", default=None, help="folder with image-int8-*.onnx candidates")
    args = ap.parse_args()

    from PIL import Image

    models = Path(args.models_dir)
    fixtures = Path(args.fixtures_dir)
    image_path, p1, p2 = pick_inputs(Path(args.phantoms), args.prompt, args.prompt2)
    if args.image:
        image_path = Path(args.image)
    pixel_values = vc.preprocess_image(Image.open(image_path))[None]
    tok = vc.load_tokenizer_json(models / PACKAGES[0] / "tokenizer.json")
    ids1, am1 = vc.tokenize(tok, [p1])
    ids2, am2 = vc.tokenize(tok, [p2])
    source = f"phantom {image_path.name} ({image_path.parent.name}), 128x128, CLIP mean/std"
    print(f"image {image_path}; prompt 1 {p1!r}; prompt 2 {p2!r}")

    # Split package.
    pkg = models / PACKAGES[0]
    manifest = tomllib.loads((pkg / "model.toml").read_text())
    text_file = next(g["file"] for g in manifest["graph"] if g["role"] == "text")
    text = session(pkg / text_file)
    emb1 = text.run(None, {"input_ids": ids1, "attention_mask": am1})[0]
    emb2 = text.run(None, {"input_ids": ids2, "attention_mask": am2})[0]
    out_dir = fixtures / PACKAGES[0]
    stem = Path(text_file).stem
    write_case(out_dir, stem, text_file, {"input_ids": ids1, "attention_mask": am1},
               {"conditional_embeddings": emb1}, f"prompt: {p1!r}")
    write_case(out_dir, f"{stem}-prompt2", text_file, {"input_ids": ids2, "attention_mask": am2},
               {"conditional_embeddings": emb2}, f"prompt: {p2!r}")
    image_inputs = {"pixel_values": pixel_values, "conditional_embeddings": emb1}
    comment = f"{source}; conditional_embeddings = {text_file} output for {p1!r}"
    for g in manifest["graph"]:
        if g["role"] != "image":
            continue
        logits = session(pkg / g["file"]).run(None, image_inputs)[0]
        write_case(out_dir, Path(g["file"]).stem, g["file"], image_inputs, {"logits": logits}, comment)
        print(f"  {g['file']}: {int((logits > 0).sum())} mask pixels at p > 0.5")

    # Joint package.
    pkg = models / PACKAGES[1]
    if (pkg / "model.toml").exists():
        manifest = tomllib.loads((pkg / "model.toml").read_text())
        for g in manifest["graph"]:
            inputs = {"input_ids": ids1, "attention_mask": am1, "pixel_values": pixel_values}
            logits = session(pkg / g["file"]).run(None, inputs)[0]
            write_case(fixtures / PACKAGES[1], Path(g["file"]).stem, g["file"], inputs, {"logits": logits},
                       f"{source}; prompt {p1!r}")

    # int8 candidates, outside the package fixtures.
    if args.candidates:
        cand_dir = Path(args.candidates)
        for path in sorted(cand_dir.glob("image-int8-*.onnx")):
            logits = session(path).run(None, image_inputs)[0]
            name = path.stem.removeprefix("image-int8-")
            write_case(cand_dir / f"parity-{name}", "image-int8", "image-int8.onnx", image_inputs,
                       {"logits": logits}, f"candidate {path.name}; {comment}")


if __name__ == "__main__":
    main()
