"""Trains the bundled demo VLSM: a Hugging Face `CLIPSegForImageSegmentation` with a small
configuration (vlsm_common.MODEL_CONFIG), from scratch on CPU, on procedural ultrasound and
endoscopy phantoms written by the runtime's own generator:

  edgeseg phantoms --out models/tools/.cache/phantoms/train --count 5000 --seed 1 --size 128x128
  edgeseg phantoms --out models/tools/.cache/phantoms/heldout --count 200 --seed 999 --size 128x128
  edgeseg phantoms --out models/tools/.cache/phantoms/train43 --count 1000 --seed 2 --size 320x240
  python train_vlsm.py --train models/tools/.cache/phantoms/train models/tools/.cache/phantoms/train43 \
      --heldout models/tools/.cache/phantoms/heldout \
      --patch 16 --lr 1.5e-3 --warmup 150 --epochs 12 --time-budget 40 --out models/tools/.cache/vlsm/ckpt.pt

One training sample is one line of `samples.jsonl` (an image and one of its structures); each
time a line is drawn, its prompt is one of its pre-built levels P1..P9 chosen at random, so the
text has to select the structure (every image holds several). Ultrasound and endoscopy are
pooled. Preprocessing is the runtime's: stretch to 128x128, 0..1 RGB, CLIP mean/std. Loss: binary
cross-entropy + soft Dice on the logits; AdamW with linear warm-up and cosine decay.

The whole model is trained (text encoder, vision encoder, decoder); the Hugging Face forward
runs the CLIP encoders under `no_grad` because the original CLIPSeg keeps CLIP frozen, so
training calls the same modules directly (vlsm_common.text_features / image_logits). The saved
state dict loads into the unchanged Hugging Face class.

At the end it prints the held-out Dice (mask = sigmoid > 0.5) per class and per prompt level,
averaged over every held-out (image, structure) line and every level P1..P9, and saves the
checkpoint (state dict, configuration, figures) to --out, outside the repository.
Deterministic for a given seed and thread count when `--time-budget 0` (the learning-rate
schedule is then a cosine over --epochs); with a time budget the schedule follows the clock, so
the number of steps depends on the machine (the checkpoint records it). Runs offline.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vlsm_common as vc  # noqa: E402

LEVELS = [f"P{i}" for i in range(1, 10)]


class PhantomSet:
    """A phantom folder held in memory: images (uint8), masks (bool), prompts tokenized."""

    def __init__(self, roots: Path | list[Path], tokenizer, max_images: int | None = None):
        roots = [roots] if isinstance(roots, Path) else roots
        samples = [(root, s) for root in roots for s in vc.read_samples(root)]
        image_index: dict[tuple, int] = {}
        images, masks, img_of, prompts, classes = [], [], [], [], []
        self.sources: dict[str, int] = {}  # frame size "WxH" -> number of images
        for root, s in samples:
            key = (root, s["image"])
            if key not in image_index:
                if max_images is not None and len(image_index) >= max_images:
                    continue
                image_index[key] = len(images)
                img = Image.open(root / s["image"]).convert("RGB")
                size = f"{img.size[0]}x{img.size[1]}"
                self.sources[size] = self.sources.get(size, 0) + 1
                if img.size != (vc.IMAGE_SIZE, vc.IMAGE_SIZE):
                    img = img.resize((vc.IMAGE_SIZE, vc.IMAGE_SIZE), Image.BILINEAR)
                images.append(np.asarray(img, dtype=np.uint8))
            img_of.append(image_index[key])
            masks.append(vc.load_mask(root / s["mask"]) > 0.5)
            levels = s.get("prompts") or {}
            p = [levels[k] for k in LEVELS if levels.get(k)]
            if not p and s.get("prompt"):
                p = [s["prompt"]]
            prompts.append(p)
            classes.append(vc.sample_class(s))
        self.images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # N,3,H,W uint8
        self.masks = torch.from_numpy(np.stack(masks))  # M,H,W bool
        self.img_of = torch.tensor(img_of)
        self.prompts = prompts
        self.classes = classes
        # Tokenize every distinct prompt once.
        uniq = sorted({p for ps in prompts for p in ps})
        ids, am = vc.tokenize(tokenizer, uniq)
        self.prompt_row = {p: i for i, p in enumerate(uniq)}
        self.ids = torch.from_numpy(ids)
        self.am = torch.from_numpy(am)
        print(f"{', '.join(str(r) for r in roots)}: {len(images)} images, {len(masks)} structures, {len(uniq)} distinct prompts")

    def __len__(self):
        return len(self.masks)


MEAN = torch.tensor(vc.CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(vc.CLIP_STD).view(1, 3, 1, 1)


def normalise(images_u8: torch.Tensor) -> torch.Tensor:
    return (images_u8.float() / 255.0 - MEAN) / STD


def forward(model, data: PhantomSet, lines: torch.Tensor, prompt_rows: torch.Tensor):
    px = normalise(data.images[data.img_of[lines]])
    # Encode each distinct prompt of the batch once.
    uniq, inverse = torch.unique(prompt_rows, return_inverse=True)
    emb = vc.text_features(model, data.ids[uniq], data.am[uniq])[inverse]
    return vc.image_logits(model, px, emb)


def loss_fn(logits, target):
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2))
    denom = p.sum((1, 2)) + target.sum((1, 2))
    soft_dice = 1 - (2 * inter + 1) / (denom + 1)
    return bce + soft_dice.mean()


@torch.no_grad()
def evaluate(model, data: PhantomSet, levels=LEVELS, batch: int = 64, limit: int | None = None):
    """Mean Dice over (line, level) pairs; per class and per level."""
    model.eval()
    per_class, per_level, all_d = defaultdict(list), defaultdict(list), []
    n = len(data) if limit is None else min(limit, len(data))
    pairs = []
    for i in range(n):
        for lv, p in zip(levels, data.prompts[i]):
            pairs.append((i, lv, data.prompt_row[p]))
    for k in range(0, len(pairs), batch):
        chunk = pairs[k : k + batch]
        lines = torch.tensor([c[0] for c in chunk])
        rows = torch.tensor([c[2] for c in chunk])
        pred = forward(model, data, lines, rows) > 0
        gt = data.masks[lines]
        inter = (pred & gt).sum((1, 2)).float()
        denom = (pred.sum((1, 2)) + gt.sum((1, 2))).float()
        d = torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.ones_like(denom))
        for (i, lv, _), v in zip(chunk, d.tolist()):
            per_class[data.classes[i]].append(v)
            per_level[lv].append(v)
            all_d.append(v)
    model.train()
    return (
        float(np.mean(all_d)),
        {c: (float(np.mean(v)), len(v)) for c, v in sorted(per_class.items())},
        {lv: float(np.mean(v)) for lv, v in sorted(per_level.items())},
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", nargs="+", default=[str(vc.CACHE_DIR / "phantoms/train")],
                    help="phantom folder(s); frames of another size are stretched to 128x128 like the runtime does")
    ap.add_argument("--heldout", default=str(vc.CACHE_DIR / "phantoms/heldout"), help="phantom folder (seed 999)")
    ap.add_argument("--bpe-dir", default=str(vc.DEFAULT_BPE_DIR))
    ap.add_argument("--out", default=str(vc.CACHE_DIR / "vlsm/ckpt.pt"))
    ap.add_argument("--epochs", type=float, default=12.0, help="upper bound; the time budget usually ends training first")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--weight-decay", type=float, default=0.02)
    ap.add_argument("--warmup", type=int, default=150, help="warm-up steps")
    ap.add_argument("--max-images", type=int, default=None, help="use at most this many training images")
    ap.add_argument("--time-budget", type=float, default=40.0,
                    help="minutes; the cosine schedule ends when they are spent (0: no limit, step-based only)")
    ap.add_argument("--eval-every", type=int, default=300, help="steps between quick held-out checks")
    ap.add_argument("--patch", type=int, default=vc.MODEL_CONFIG["vision"]["patch_size"], choices=[8, 16],
                    help="vision patch size (changes the configuration; stored in the checkpoint)")
    ap.add_argument("--init", default=None,
                    help="start from this checkpoint's weights (a further training cycle; its configuration is kept)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    tok = vc.load_tokenizer(args.bpe_dir)
    train = PhantomSet([Path(p) for p in args.train], tok, args.max_images)
    held = PhantomSet(Path(args.heldout), tok)

    prior_steps, prior_minutes = 0, 0.0
    if args.init:
        model, prior = vc.load_checkpoint(args.init)
        overrides = prior.get("config_overrides")
        prior_steps = prior["train"]["steps"] + prior["train"].get("prior_steps", 0)
        prior_minutes = prior["train"]["minutes"] + prior["train"].get("prior_minutes", 0.0)
        print(f"starting from {args.init} ({prior_steps} steps, {prior_minutes:.1f} min of training)")
    else:
        overrides = vc.patch_overrides(args.patch)
        model = vc.build_model(overrides)
        vc.reset_decoder_init(model)
        with torch.no_grad():  # start from "mostly background" (structures cover a few % of a frame)
            last = [m for m in model.decoder.transposed_convolution.modules()
                    if isinstance(m, torch.nn.ConvTranspose2d)][-1]
            last.bias.fill_(-2.0)
    model.train()
    n_params = vc.count_parameters(model)
    print(f"parameters: {n_params:,} (token embedding {model.clip.text_model.embeddings.token_embedding.weight.numel():,})")

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "norm" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    steps_per_epoch = math.ceil(len(train) / args.batch)
    total = int(args.epochs * steps_per_epoch)

    budget_s = args.time_budget * 60 if args.time_budget > 0 else float("inf")

    def lr_at(step):
        # Warm-up, then cosine decay over whichever runs out first: the steps or the time budget.
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = max((step - args.warmup) / max(1, total - args.warmup), (time.time() - t0) / budget_s)
        return args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    t0 = time.time()
    step, running = 0, []
    order = np.array([], dtype=np.int64)
    stopped_early = False
    while step < total:
        if len(order) < args.batch:
            order = np.concatenate([order, rng.permutation(len(train))])
        lines, order = order[: args.batch], order[args.batch :]
        rows = torch.tensor([train.prompt_row[ps[rng.integers(len(ps))]] for ps in (train.prompts[i] for i in lines)])
        lines = torch.from_numpy(lines)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = forward(model, train, lines, rows)
        loss = loss_fn(logits, train.masks[lines].float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running.append(loss.item())
        step += 1
        if step % 50 == 0:
            el = time.time() - t0
            print(f"step {step}/{total} epoch {step / steps_per_epoch:.2f} loss {np.mean(running):.4f} "
                  f"lr {lr_at(step):.2e} {el / 60:.1f} min", flush=True)
            running = []
        if step % args.eval_every == 0:
            d, _, _ = evaluate(model, held, levels=["P1", "P4", "P9"], limit=150)
            print(f"  quick held-out Dice (150 lines, P1/P4/P9): {d:.4f}", flush=True)
        if time.time() - t0 > budget_s:
            print(f"time budget of {args.time_budget} min spent at step {step}; stopping")
            stopped_early = True
            break
    train_s = time.time() - t0
    print(f"training: {step} steps, {train_s / 60:.1f} min")

    model.eval()
    t1 = time.time()
    mean, per_class, per_level = evaluate(model, held)
    print(f"held-out Dice (mean over {len(held)} structures x prompt levels P1..P9): {mean:.4f} "
          f"[{time.time() - t1:.0f} s]")
    for c, (v, n) in per_class.items():
        print(f"  {c:32s} {v:.4f}  (n={n})")
    print("  per level: " + ", ".join(f"{lv} {v:.3f}" for lv, v in per_level.items()))

    images = len(train.images)
    cfg = model.config
    description = (
        f"Demo CLIPSeg (Hugging Face CLIPSegForImageSegmentation, {n_params / 1e6:.1f} M parameters: "
        f"ViT {cfg.vision_config.num_hidden_layers}x{cfg.vision_config.hidden_size} patch {cfg.vision_config.patch_size}, "
        f"text transformer {cfg.text_config.num_hidden_layers}x{cfg.text_config.hidden_size} on CLIP BPE ids, "
        f"FiLM decoder {cfg.reduce_dim}) trained from scratch on CPU on {images} procedural "
        f"ultrasound and endoscopy phantoms from `edgeseg phantoms` ("
        + ", ".join(f"{n} at {size}" for size, n in train.sources.items())
        + f", stretched to {vc.IMAGE_SIZE}x{vc.IMAGE_SIZE}) "
        f"for {prior_steps + step} steps of {args.batch} ({(prior_minutes + train_s / 60):.0f} min); "
        f"one structure per sample, prompt level P1..P9 drawn at random. Held-out Dice "
        f"(seed 999, {len(held.images)} images, every structure x P1..P9, mask = sigmoid > 0.5): "
        f"{mean:.3f} mean; "
        + ", ".join(f"{c} {v:.3f}" for c, (v, _) in per_class.items())
        + ". A demonstration model for phantoms only, not for clinical images."
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "config_overrides": overrides,
            "model_config": cfg.to_dict(),
            "description": description,
            "heldout_dice": {"mean": mean, "per_class": per_class, "per_level": per_level},
            "train": {"images": images, "structures": len(train), "steps": step, "minutes": train_s / 60,
                      "prior_steps": prior_steps, "prior_minutes": prior_minutes,
                      "stopped_early": stopped_early, "args": vars(args)},
            "parameters": n_params,
        },
        out,
    )
    out.with_suffix(".json").write_text(json.dumps(
        {"description": description, "heldout_dice": {"mean": mean, "per_class": per_class, "per_level": per_level},
         "parameters": n_params, "steps": step, "minutes": train_s / 60,
         "prior_steps": prior_steps, "prior_minutes": prior_minutes}, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
