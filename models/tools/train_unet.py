"""Trains one of the two phantom U-Nets (unet_common.py) from scratch on CPU, on procedural
phantoms written by the runtime's own generator:

  edgeseg phantoms --out models/tools/.cache/unet/train    --count 4000 --seed 11  --size 128x128
  edgeseg phantoms --out models/tools/.cache/unet/train320 --count 600  --seed 12  --size 320x240
  edgeseg phantoms --out models/tools/.cache/unet/heldout  --count 200  --seed 999 --size 128x128
  nice -n 5 python train_unet.py --kind conditioned --time-budget 11 --out models/tools/.cache/unet/conditioned.pt
  nice -n 5 python train_unet.py --kind plain       --time-budget 11 --out models/tools/.cache/unet/plain.pt

--kind conditioned: every frame of a batch (--batch frames) is trained twice, once per
  structure of its modality (lesion/vessel for ultrasound, polyp/tool for endoscopy), with
  modality_id the frame's modality and target = that structure's mask; the unconditioned
  encoder runs once per frame, the FiLM-conditioned bottleneck and decoder once per (frame,
  task). With probability --absent-frac a slot's task is one of the OTHER modality's structures
  instead (absent from the frame), target = empty mask, so asking for a structure that is not
  there gives nothing. Loss: binary cross-entropy + soft Dice on the single logit plane.
--kind plain: ultrasound frames only; target = label map (0 background, 1 lesion, 2 vessel).
  Loss: cross-entropy + soft Dice of the two foreground classes.

Preprocessing is the runtime's: stretch (PIL bilinear) to 128x128, 0..1 RGB, ImageNet mean/std.
Augmentation: horizontal flip, brightness/contrast jitter (+-10 %). For the first --crop-frac
(0.6) of the schedule each sample is a random --crop (80) pixel square of the 128x128 frame
(same scale, 39 % of the compute; the network is fully convolutional), then whole frames.
AdamW, linear warm-up and cosine decay; with --time-budget (minutes) the schedule follows the
clock (the number of steps depends on the machine and its load, and is recorded), with
--time-budget 0 it is a cosine over --steps and the run is deterministic for a given seed.
torch uses one thread. Decoded frames are cached beside the phantoms (frames-*.npz).

At the end it prints the Dice (mask = sigmoid > 0.5, resp. argmax == class) on the held-out
folder (per modality/task, resp. per class, averaged over frames; 1.0 when prediction and
target are both empty; conditioned also the share of frames left empty when asked for a
structure of the other modality) and on --eval-train (100) training frames, and saves the
checkpoint (state dict, configuration, figures, a description for model.toml) to --out,
outside the repository. Runs offline.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import unet_common as uc  # noqa: E402

TASKS_OF = {m: [t for t, tm in uc.TASK_MODALITY.items() if tm == m] for m in uc.MODALITIES}
PAIR = 2  # conditioned: targets per frame in a batch (both structures of its modality)


def forward_train(kind: str, model, inputs):
    """Training forward. Conditioned: the encoder (unconditioned) runs once per frame, the FiLM
    bottleneck and decoder once per (frame, task)."""
    if kind == "plain":
        return model(*inputs)
    x, t, m = inputs
    feats, skips = model.encode(x)
    rep = lambda a: a.repeat_interleave(PAIR, 0)  # noqa: E731
    return model.decode(rep(feats), [rep(s) for s in skips], model.films(t, m))


def keep_heap():
    """glibc: keep freed activation buffers in the heap instead of returning them to the kernel
    every step (saves the page-fault time of re-mapping them; ~7 % of a step)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except OSError:
        pass


def to_tensor(images_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(uc.normalize(images_u8))


def augment(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, per_image: int = 1):
    """Horizontal flip and brightness/contrast jitter on normalised images; y flipped alike
    (`per_image` consecutive targets per image)."""
    b = x.shape[0]
    flip = torch.from_numpy(rng.random(b) < 0.5)
    if flip.any():
        x[flip] = x[flip].flip(-1)
        fy = flip.repeat_interleave(per_image)
        y[fy] = y[fy].flip(-1)
    contrast = torch.from_numpy(rng.uniform(0.9, 1.1, (b, 1, 1, 1)).astype(np.float32))
    bright = torch.from_numpy(rng.uniform(-0.1, 0.1, (b, 1, 1, 1)).astype(np.float32))
    std = torch.tensor(uc.STD, dtype=torch.float32).view(1, 3, 1, 1)
    return x * contrast + bright / std, y


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per sample and plane ([B,C,H,W]), averaged."""
    inter = (prob * target).sum((2, 3))
    denom = prob.sum((2, 3)) + target.sum((2, 3))
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).mean()


class Batches:
    def __init__(self, kind: str, data: uc.PhantomFrames, batch: int, absent_frac: float, seed: int):
        self.kind, self.data, self.batch, self.absent = kind, data, batch, absent_frac
        self.rng = np.random.default_rng(seed)

    def crop_boxes(self, n: int, crop: int | None):
        """Per sample (top, left, size): a random crop x crop window, or the whole frame."""
        size = self.data.images.shape[1]
        if not crop or crop >= size:
            return [(0, 0, size)] * n
        return [(int(self.rng.integers(0, size - crop + 1)), int(self.rng.integers(0, size - crop + 1)), crop)
                for _ in range(n)]

    def next(self, crop: int | None = None):
        idx = self.rng.integers(0, len(self.data), self.batch)
        boxes = self.crop_boxes(len(idx), crop)
        x = to_tensor(np.stack([self.data.images[i][t:t + c, l:l + c] for i, (t, l, c) in zip(idx, boxes)]))
        if self.kind == "plain":
            y = torch.from_numpy(np.stack([self.data.label_map(i)[t:t + c, l:l + c]
                                           for i, (t, l, c) in zip(idx, boxes)]))
            x, y = augment(x, y, self.rng)
            return (x,), y
        # Conditioned: every frame twice, once per structure of its modality; each slot is, with
        # probability --absent-frac, a structure of the other modality instead (empty target).
        tasks, mods, ys = [], [], []
        for i, (t, l, c) in zip(idx, boxes):
            mod = self.data.modalities[i]
            for task in TASKS_OF[mod]:
                if self.rng.random() < self.absent:
                    other = [m for m in uc.MODALITIES if m != mod]
                    task = TASKS_OF[other[self.rng.integers(len(other))]][self.rng.integers(2)]
                tasks.append(uc.TASKS[task])
                mods.append(uc.MODALITIES[mod])
                ys.append(self.data.target(i, task)[t:t + c, l:l + c])
        y = torch.from_numpy(np.stack(ys)[:, None].astype(np.float32))
        x, y = augment(x, y, self.rng, per_image=PAIR)
        t = torch.tensor(tasks, dtype=torch.long)[:, None]
        m = torch.tensor(mods, dtype=torch.long)[:, None]
        return (x, t, m), y


def loss_fn(kind: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind == "conditioned":
        return F.binary_cross_entropy_with_logits(logits, y) + soft_dice_loss(torch.sigmoid(logits), y)
    ce = F.cross_entropy(logits, y)
    onehot = F.one_hot(y, logits.shape[1]).permute(0, 3, 1, 2).float()
    return ce + soft_dice_loss(torch.softmax(logits, 1)[:, 1:], onehot[:, 1:])


@torch.inference_mode()
def evaluate(kind: str, model, data: uc.PhantomFrames, limit: int | None = None, batch: int = 16) -> dict:
    """Mean Dice per modality/task (conditioned; plus the share of empty predictions when the
    task's structure is absent) or per class (plain)."""
    model.eval()
    n = len(data) if limit is None else min(limit, len(data))
    scores = defaultdict(list)
    # Rank of each frame among the frames of its modality (picks the absent structure).
    seen: dict[str, int] = defaultdict(int)
    rank = []
    for i in range(n):
        rank.append(seen[data.modalities[i]])
        seen[data.modalities[i]] += 1
    for start in range(0, n, batch):
        idx = list(range(start, min(n, start + batch)))
        x = to_tensor(data.images[idx])
        if kind == "plain":
            pred = model(x).argmax(1).numpy()
            for j, i in enumerate(idx):
                gt = data.label_map(i)
                for k, name in enumerate(uc.PLAIN_LABELS):
                    scores[name].append(uc.dice(pred[j] == k, gt == k))
            continue
        # Per frame: both structures of its modality (slots 0, 1), and one structure of the other
        # modality (slot 2, alternating over the frames of a modality), absent from the frame.
        m = torch.tensor([uc.MODALITIES[data.modalities[i]] for i in idx], dtype=torch.long)[:, None]
        for slot in range(3):
            names = []
            for i in idx:
                mod = data.modalities[i]
                if slot < 2:
                    names.append(TASKS_OF[mod][slot])
                else:
                    other = [t for t, tm in uc.TASK_MODALITY.items() if tm != mod]
                    names.append(other[rank[i] % len(other)])
            t = torch.tensor([uc.TASKS[n] for n in names], dtype=torch.long)[:, None]
            pred = (model(x, t, m)[:, 0] > 0).numpy()
            for j, (i, task) in enumerate(zip(idx, names)):
                mod = data.modalities[i]
                if slot < 2:
                    scores[f"{mod}/{task}"].append(uc.dice(pred[j], data.target(i, task)))
                else:
                    scores[f"absent:{mod}/{task}"].append(float(pred[j].sum() == 0))
    out = {k: float(np.mean(v)) for k, v in sorted(scores.items())}
    if kind == "plain":
        out["mean_foreground"] = float(np.mean([out[c] for c in uc.PLAIN_LABELS[1:]]))
    else:
        present = [k for k in out if not k.startswith("absent")]
        absent = [k for k in out if k.startswith("absent")]
        out["mean"] = float(np.mean([out[k] for k in present]))
        out["absent_empty_rate"] = float(np.mean([out[k] for k in absent]))
    out["frames"] = n
    return out


def describe(kind: str, params: int, args, steps: int, minutes: float, n_frames: int, held: dict, train: dict) -> str:
    w = "-".join(str(c) for c in uc.WIDTHS)
    if kind == "conditioned":
        model = (f"Demo conditioned U-Net (Hermes-style task and modality priors): 4-level U-Net {w}, "
                 f"3x3 Conv+BatchNorm(folded)+ReLU, task and modality embeddings (dim {args.cond_dim}) "
                 f"-> FiLM scale/shift in the bottleneck and decoder stages, {params / 1e3:.0f} k parameters")
        data = (f"trained from scratch on CPU on {n_frames} procedural ultrasound and endoscopy phantoms from "
                f"`edgeseg phantoms` (seed 11, 128x128, and seed 12, 320x240 stretched to 128x128), every "
                f"frame with both tasks of its modality, i.e. the four pairs US/lesion, US/vessel, ES/polyp, "
                f"ES/tool ({args.absent_frac:.0%} of slots with the other modality's task and an empty "
                f"target), {steps} steps of {args.batch} frames (the first {args.crop_frac:.0%} on random {args.crop}x{args.crop} crops; "
                f"{minutes:.1f} min, one CPU thread)")
        keys = ["US/lesion", "US/vessel", "ES/polyp", "ES/tool"]
        hd = ", ".join(f"{k} {held[k]:.3f}" for k in keys)
        td = ", ".join(f"{k} {train[k]:.3f}" for k in keys)
        figs = (f"Held-out Dice (seed 999, {held['frames']} frames, mask = sigmoid > 0.5): {held['mean']:.3f} mean; "
                f"{hd}; absent-structure requests left empty on {held['absent_empty_rate']:.0%} of frames. "
                f"Training-set Dice ({train['frames']} frames): {train['mean']:.3f} mean; {td}.")
    else:
        model = (f"Demo plain U-Net (LVM-Med-style image-only encoder-decoder): 4-level U-Net {w}, "
                 f"3x3 Conv+BatchNorm(folded)+ReLU, softmax over background/lesion/vessel, "
                 f"{params / 1e3:.0f} k parameters")
        data = (f"trained from scratch on CPU on {n_frames} procedural ultrasound phantoms from `edgeseg phantoms` "
                f"(seed 11, 128x128, and seed 12, 320x240 stretched to 128x128), label map target, "
                f"{steps} steps of {args.batch} (the first {args.crop_frac:.0%} on random {args.crop}x{args.crop} crops; "
                f"{minutes:.1f} min, one CPU thread)")
        figs = (f"Held-out Dice (seed 999, {held['frames']} ultrasound frames, argmax label map): "
                f"lesion {held['lesion']:.3f}, vessel {held['vessel']:.3f}, background {held['background']:.3f}. "
                f"Training-set Dice ({train['frames']} frames): lesion {train['lesion']:.3f}, "
                f"vessel {train['vessel']:.3f}.")
    return f"{model}; {data}. {figs} A demonstration model for phantoms only, not for clinical images."


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=["conditioned", "plain"], required=True)
    ap.add_argument("--train", nargs="+", default=[str(uc.CACHE_DIR / "train"), str(uc.CACHE_DIR / "train320")])
    ap.add_argument("--heldout", default=str(uc.CACHE_DIR / "heldout"))
    ap.add_argument("--out", default=None, help="checkpoint (default .cache/unet/<kind>.pt)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=80, help="random crop side for the first --crop-frac of training")
    ap.add_argument("--crop-frac", type=float, default=0.6, help="share of the schedule trained on crops")
    ap.add_argument("--eval-train", type=int, default=100, help="training frames scored at the end")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--steps", type=int, default=450, help="schedule length when --time-budget is 0")
    ap.add_argument("--time-budget", type=float, default=11.0, help="minutes of training (0: use --steps)")
    ap.add_argument("--cond-dim", type=int, default=16)
    ap.add_argument("--absent-frac", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=25)
    args = ap.parse_args()

    torch.set_num_threads(1)
    keep_heap()
    torch.manual_seed(args.seed)
    out = Path(args.out or uc.CACHE_DIR / f"{args.kind}.pt")
    mods = ("US",) if args.kind == "plain" else ("US", "ES")
    t0 = time.time()
    train = uc.PhantomFrames(args.train, mods)
    held = uc.PhantomFrames(args.heldout, mods)
    print(f"{args.kind}: {len(train)} training frames, {len(held)} held-out frames ({time.time() - t0:.0f} s to load)")

    model = uc.build_model(args.kind, args.cond_dim)
    params = uc.count_parameters(model)
    print(f"parameters: {params:,}")
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or "emb" in n]
    decay = [p for n, p in model.named_parameters() if not (p.ndim <= 1 or "emb" in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    batches = Batches(args.kind, train, args.batch, args.absent_frac, args.seed)
    budget = args.time_budget * 60.0

    def lr_at(step: int, frac: float) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        return args.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))

    start = time.time()
    step, running = 0, []
    while True:
        elapsed = time.time() - start
        frac = elapsed / budget if budget > 0 else step / args.steps
        if frac >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, frac)
        model.train()
        inputs, y = batches.next(args.crop if frac < args.crop_frac else None)
        loss = loss_fn(args.kind, forward_train(args.kind, model, inputs), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(loss.item())
        step += 1
        if step % args.log_every == 0:
            print(f"step {step:5d}  {elapsed / 60:5.1f} min  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"loss {np.mean(running):.4f}", flush=True)
            running = []
    minutes = (time.time() - start) / 60.0
    print(f"trained {step} steps in {minutes:.1f} min")

    t1 = time.time()
    held_scores = evaluate(args.kind, model, held)
    train_scores = evaluate(args.kind, model, train, limit=args.eval_train)
    print(f"held-out ({args.heldout}): {json.dumps(held_scores, indent=1)}")
    print(f"training (first {train_scores['frames']} frames): {json.dumps(train_scores, indent=1)}")
    print(f"evaluation {time.time() - t1:.0f} s")
    desc = describe(args.kind, params, args, step, minutes, len(train), held_scores, train_scores)
    print(desc)
    uc.save_checkpoint(out, model, args.kind, args.cond_dim, {
        "args": vars(args), "steps": step, "train_minutes": minutes, "parameters": params,
        "heldout": held_scores, "train_scores": train_scores, "description": desc,
        "train_frames": len(train),
    })
    print(f"saved {out}")


if __name__ == "__main__":
    main()
