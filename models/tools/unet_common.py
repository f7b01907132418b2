"""Shared pieces of the phantom U-Net model tools (train_unet.py, export_unet.py): the small
U-Net both demo packages use, the FiLM conditioning of the `conditioned` family, the id tables,
preprocessing and the phantom reader.

Two kinds, one backbone (4 levels, widths 16-32-64-96; encoder levels and bottleneck: two 3x3
Conv + BatchNorm + ReLU; max-pool down; 2x2 transposed convolution up, skip concatenation, one
3x3 Conv + BatchNorm + ReLU per decoder level; 1x1 Conv head):

  conditioned  (Hermes-style task and modality priors)
      image f32 [1,3,128,128], task_ids i64 [1,1], modality_id i64 [1,1] -> logits f32 [1,1,128,128]
      task and modality embeddings (Gather on a table) -> small MLP -> FiLM (scale, shift) after
      the BatchNorm of both bottleneck convolutions and of the three decoder convolutions.
      Sigmoid output: the mask of the requested structure.
  plain  (LVM-Med-style image-only encoder-decoder)
      image f32 [1,3,128,128] -> logits f32 [1,3,128,128], softmax over background/lesion/vessel
      (ultrasound only).

BatchNorm is folded into the convolutions by the ONNX exporter (eval mode). Every shape in the
exported graphs is fixed; the only data-dependent op is the Gather of the id tables.

Not a script; imported by the tools beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

TOOLS_DIR = Path(__file__).resolve().parent
REPO_DIR = TOOLS_DIR.parent.parent
CACHE_DIR = TOOLS_DIR / ".cache" / "unet"  # phantoms, checkpoints, graphs (ignored by git)

IMAGE_SIZE = 128
# ImageNet normalisation on 0..1 RGB (the manifest's [input] mean/std).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
WIDTHS = (16, 32, 64, 96)

# The [conditioning] tables of the conditioned package.
TASKS = {"lesion": 0, "vessel": 1, "polyp": 2, "tool": 3}
MODALITIES = {"US": 0, "ES": 1}
# samples.jsonl "modality" -> [conditioning] modality name.
MODALITY_NAMES = {"ultrasound": "US", "endoscopy": "ES"}
# The modality each phantom structure occurs in.
TASK_MODALITY = {"lesion": "US", "vessel": "US", "polyp": "ES", "tool": "ES"}
# The plain package's classes (label map values).
PLAIN_LABELS = ["background", "lesion", "vessel"]

PACKAGES = {"conditioned": "unet-conditioned-phantom", "plain": "unet-plain-phantom"}


# ---------------------------------------------------------------------------------------------
# Model


class ConvBN(nn.Module):
    """3x3 convolution + BatchNorm (+ FiLM when given) + ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x, film=None):
        x = self.bn(self.conv(x))
        if film is not None:
            scale, shift = film
            x = x * scale + shift
        return F.relu(x)


class Stage(nn.Module):
    """Two ConvBN; `film` (scale, shift), each [B,C,1,1], modulates both."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.a = ConvBN(cin, cout)
        self.b = ConvBN(cout, cout)

    def forward(self, x, film=None):
        return self.b(self.a(x, film), film)


class UNet(nn.Module):
    """The shared backbone. `out_channels` logit planes; `cond_dim` > 0 adds the task/modality
    embeddings and the FiLM generators of the bottleneck and decoder stages."""

    def __init__(self, out_channels: int = 1, widths=WIDTHS, cond_dim: int = 0, n_tasks: int = 4,
                 n_modalities: int = 2):
        super().__init__()
        w = list(widths)
        self.widths = w
        self.enc = nn.ModuleList([Stage(3, w[0])] + [Stage(w[i - 1], w[i]) for i in range(1, len(w) - 1)])
        self.bottleneck = Stage(w[-2], w[-1])
        self.ups = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(len(w) - 1, 0, -1):
            self.ups.append(nn.ConvTranspose2d(w[i], w[i - 1], 2, stride=2))
            # One ConvBN per decoder level (upsampled + skip -> C): keeps each package, f32 and
            # int8 graphs together, under 2 MB.
            self.dec.append(ConvBN(2 * w[i - 1], w[i - 1]))
        self.head = nn.Conv2d(w[0], out_channels, 1)
        self.cond_dim = cond_dim
        if cond_dim:
            self.task_emb = nn.Embedding(n_tasks, cond_dim)
            self.modality_emb = nn.Embedding(n_modalities, cond_dim)
            self.cond_mlp = nn.Sequential(nn.Linear(2 * cond_dim, 2 * cond_dim), nn.ReLU())
            # One (scale, shift) generator per conditioned stage: bottleneck, then decoders.
            film_widths = [w[-1]] + [w[i - 1] for i in range(len(w) - 1, 0, -1)]
            self.film = nn.ModuleList([nn.Linear(2 * cond_dim, 2 * c) for c in film_widths])
            for lin in self.film:  # start as the identity modulation
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    def films(self, task_ids, modality_id):
        """[(scale, shift)] per conditioned stage, each [B,C,1,1]; ids are i64 [B,1]."""
        # Embedding -> Gather on the table; flatten(1) keeps shapes static ([B,1,D] -> [B,D]).
        c = torch.cat([self.task_emb(task_ids).flatten(1), self.modality_emb(modality_id).flatten(1)], dim=1)
        h = self.cond_mlp(c)
        out = []
        for lin in self.film:
            y = lin(h)
            c = lin.out_features // 2  # a Python int: constant Slice bounds, no Shape ops
            gamma, beta = y[:, :c], y[:, c:]
            out.append(((1.0 + gamma)[:, :, None, None], beta[:, :, None, None]))
        return out

    def encode(self, image):
        """Unconditioned encoder levels: (pooled features, skips)."""
        skips = []
        x = image
        for stage in self.enc:
            x = stage(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        return x, skips

    def decode(self, x, skips, films):
        """Bottleneck, decoder and head; `films` as from films(), or Nones."""
        x = self.bottleneck(x, films[0])
        for j, (up, stage) in enumerate(zip(self.ups, self.dec)):
            x = up(x)
            x = stage(torch.cat([x, skips[-1 - j]], dim=1), films[j + 1])
        return self.head(x)

    def forward(self, image, task_ids=None, modality_id=None):
        films = self.films(task_ids, modality_id) if self.cond_dim else [None] * (len(self.dec) + 1)
        return self.decode(*self.encode(image), films)


def build_model(kind: str, cond_dim: int = 16, widths=WIDTHS) -> UNet:
    if kind == "conditioned":
        return UNet(out_channels=1, widths=widths, cond_dim=cond_dim, n_tasks=len(TASKS),
                    n_modalities=len(MODALITIES))
    if kind == "plain":
        return UNet(out_channels=len(PLAIN_LABELS), widths=widths)
    raise ValueError(f"unknown kind {kind!r} (conditioned or plain)")


class ConditionedGraph(nn.Module):
    """Export wrapper: image, task_ids, modality_id -> logits [1,1,H,W]."""

    def __init__(self, model: UNet):
        super().__init__()
        self.model = model

    def forward(self, image, task_ids, modality_id):
        return self.model(image, task_ids, modality_id)


class PlainGraph(nn.Module):
    """Export wrapper: image -> logits [1,K,H,W]."""

    def __init__(self, model: UNet):
        super().__init__()
        self.model = model

    def forward(self, image):
        return self.model(image)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(path, model: UNet, kind: str, cond_dim: int, extra: dict):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": kind, "cond_dim": cond_dim, "widths": list(model.widths),
                "state_dict": model.state_dict(), **extra}, path)


def load_checkpoint(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(ckpt["kind"], ckpt.get("cond_dim", 16), tuple(ckpt.get("widths", WIDTHS)))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


# ---------------------------------------------------------------------------------------------
# Data


def normalize(rgb_u8: np.ndarray) -> np.ndarray:
    """[..., H, W, 3] uint8 -> [..., 3, H, W] float32, 0..1 then ImageNet mean/std."""
    x = rgb_u8.astype(np.float32) / 255.0
    x = (x - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def load_image_u8(path, size: int = IMAGE_SIZE) -> np.ndarray:
    """RGB frame stretched (PIL bilinear) to size x size, uint8 [H,W,3] (the runtime's "stretch")."""
    img = Image.open(path).convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def preprocess_image(path, size: int = IMAGE_SIZE) -> np.ndarray:
    """Frame file -> [1,3,size,size] float32 as the runtime feeds the graph."""
    return normalize(load_image_u8(path, size))[None]


def load_mask(path, size: int = IMAGE_SIZE) -> np.ndarray:
    """Binary mask PNG -> bool [size, size] (nearest-neighbour stretch)."""
    m = Image.open(path).convert("L")
    if m.size != (size, size):
        m = m.resize((size, size), Image.NEAREST)
    return np.asarray(m) > 0


def read_samples(dataset_dir) -> list[dict]:
    import json

    out = []
    with open(Path(dataset_dir) / "samples.jsonl") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line))
    return out


class PhantomFrames:
    """Every frame of one or more phantom folders in memory: uint8 images [N,H,W,3], modality
    names ("US"/"ES") and, per frame, a bool mask per structure present in samples.jsonl.
    Decoded frames are cached in <folder>/frames-<modalities>.npz (rebuilt when samples.jsonl
    is newer)."""

    def __init__(self, roots, modalities=("US", "ES")):
        roots = [Path(r) for r in ([roots] if isinstance(roots, (str, os.PathLike)) else roots)]
        parts = [self._load(root, tuple(modalities)) for root in roots]
        self.images = np.concatenate([p[0] for p in parts])
        self.modalities = [m for p in parts for m in p[1]]
        self.masks = [m for p in parts for m in p[2]]
        self.names = [n for p in parts for n in p[3]]

    @staticmethod
    def _load(root: Path, modalities: tuple):
        cache = root / f"frames-{'-'.join(modalities)}.npz"
        if cache.exists() and cache.stat().st_mtime >= (root / "samples.jsonl").stat().st_mtime:
            with np.load(cache, allow_pickle=False) as z:
                images, classes, present = z["images"], [str(c) for c in z["classes"]], z["present"]
                w = images.shape[2]
                stack = np.unpackbits(z["masks"], axis=-1, count=w).astype(bool)
                mods, names = [str(m) for m in z["modalities"]], [str(n) for n in z["names"]]
            masks = [{c: stack[i, k] for k, c in enumerate(classes) if present[i, k]} for i in range(len(images))]
            return images, mods, masks, names
        f = PhantomFrames._decode(root, modalities)
        classes = sorted({c for m in f[2] for c in m})
        h, w = f[0].shape[1:3]
        stack = np.zeros((len(f[0]), len(classes), h, w), dtype=bool)
        present = np.zeros((len(f[0]), len(classes)), dtype=bool)
        for i, m in enumerate(f[2]):
            for k, c in enumerate(classes):
                if c in m:
                    stack[i, k] = m[c]
                    present[i, k] = True
        np.savez(cache, images=f[0], modalities=np.array(f[1]), names=np.array(f[3]),
                 classes=np.array(classes), masks=np.packbits(stack, axis=-1), present=present)
        return f

    @staticmethod
    def _decode(root: Path, modalities: tuple):
        index: dict[str, int] = {}
        images, mods, masks, names = [], [], [], []
        for s in read_samples(root):
            mod = MODALITY_NAMES[s["modality"]]
            if mod not in modalities:
                continue
            key = s["image"]
            if key not in index:
                index[key] = len(images)
                images.append(load_image_u8(root / s["image"]))
                mods.append(mod)
                masks.append({})
                names.append(f"{root.name}/{s['image']}")
            cls = (s.get("attributes") or {}).get("class")
            m = load_mask(root / s["mask"])
            i = index[key]
            masks[i][cls] = masks[i][cls] | m if cls in masks[i] else m
        return np.stack(images), mods, masks, names

    def __len__(self):
        return len(self.images)

    def target(self, i: int, task: str) -> np.ndarray:
        """The frame's mask for `task` (empty when the structure is absent)."""
        m = self.masks[i].get(task)
        return m if m is not None else np.zeros(self.images.shape[1:3], dtype=bool)

    def label_map(self, i: int, labels=PLAIN_LABELS) -> np.ndarray:
        """int64 [H,W]: 0 background, k for labels[k] (later classes win where masks overlap)."""
        out = np.zeros(self.images.shape[1:3], dtype=np.int64)
        for k, name in enumerate(labels[1:], start=1):
            out[self.target(i, name)] = k
        return out


def dice(pred: np.ndarray, target: np.ndarray, eps: float = 1e-6) -> float:
    """Dice of two binary masks; 1.0 when both are empty."""
    p = pred.astype(bool)
    t = target.astype(bool)
    denom = p.sum() + t.sum()
    if denom == 0:
        return 1.0
    return float(2.0 * (p & t).sum() / (denom + eps))


def sha256(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
