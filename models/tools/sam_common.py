"""Shared pieces of the SAM (MobileSAM architecture) model tools (train_sam.py, export_sam.py,
sam_reference.py): the full MobileSAM vit_t configuration and the tiny phantom configuration,
the export wrappers (encoder; decoder without the final resize), the preprocessing and
coordinate mapping of the "sam" family contract, the runtime's mask choice and postprocessing,
and prompt helpers.

Not a script; imported by the tools beside it. The model code is MobileSAM's own
(`mobilesam-mirror`: mobile_sam.modeling TinyViT, PromptEncoder, MaskDecoder,
TwoWayTransformer, Sam).

Contract (family "sam", see model.toml):
  encoder  image f32 [1,3,S,S] -> image_embeddings f32 [1,C,S/16,S/16]
  decoder  image_embeddings, point_coords f32 [1,N,2], point_labels f32 [1,N],
           mask_input f32 [1,1,S/4,S/4], has_mask_input f32 [1]
           -> low_res_masks f32 [1,4,S/4,S/4], iou_predictions f32 [1,4]
  image: longest side scaled to S (new = int(old*S/long + 0.5)), PIL bilinear, 0..1 RGB,
         (x - mean) / std, placed top-left, padded right/bottom with 0 after normalisation.
  point_coords: (x, y) input pixel * (new/old) (SAM ResizeLongestSide.apply_coords);
  labels 1 fg click, 0 bg click, 2/3 box top-left/bottom-right, -1 padding at (0, 0).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

TOOLS_DIR = Path(__file__).resolve().parent
REPO_DIR = TOOLS_DIR.parent.parent
CACHE_DIR = TOOLS_DIR / ".cache" / "sam"

# SAM pixel_mean / pixel_std divided by 255 (the manifest's [input] mean/std on 0..1 RGB).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NUM_POINTS = 6  # N, fixed by the decoder graph
NUM_MASKS = 4  # K: 0 = single-mask output, 1..3 = multimask outputs

# MobileSAM vit_t, as mobile_sam.build_sam.build_sam_vit_t.
FULL_CONFIG = dict(
    image_size=1024,
    encoder=dict(
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        num_classes=1000,  # unused classifier head, kept so the checkpoint loads
    ),
    prompt_embed_dim=256,
    mask_in_chans=16,
    decoder=dict(depth=2, mlp_dim=2048, num_heads=8, iou_head_depth=3, iou_head_hidden_dim=256),
)

# The phantom demo model: the same graph structure at S = 256 (embedding 16x16, low-res masks
# 64x64). Windows of 7 on the 32x32 and 16x16 stages keep the window padding and cropping of
# the full model (128, 64 and 64 are not multiples of 7 or 14 either).
TINY_CONFIG = dict(
    image_size=256,
    encoder=dict(
        embed_dims=[16, 32, 64, 96],
        depths=[1, 1, 2, 1],
        num_heads=[1, 2, 4, 4],
        window_sizes=[7, 7, 7, 7],
        mlp_ratio=4.0,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        num_classes=0,
    ),
    prompt_embed_dim=64,
    mask_in_chans=16,
    decoder=dict(depth=2, mlp_dim=256, num_heads=4, iou_head_depth=3, iou_head_hidden_dim=128),
)


def merge_config(base: dict, overrides: dict | None) -> dict:
    cfg = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


# ---------------------------------------------------------------------------------------------
# Models


def _tinyvit_class():
    from mobile_sam.modeling import TinyViT
    from mobile_sam.modeling.common import LayerNorm2d

    class TinyViTSam(TinyViT):
        """MobileSAM's TinyViT with the two constants that tie it to 1024x1024 made parameters:
        the neck's output channels (256 in MobileSAM) and the embedding grid (64x64, S/16).
        Like MobileSAM's (whose last stage has 320 channels, for which PatchMerging keeps
        stride 1), the last patch merging keeps the resolution, so the grid is S/16."""

        def __init__(self, img_size: int, out_chans: int, **kwargs):
            super().__init__(img_size=img_size, in_chans=3, drop_rate=0.0, drop_path_rate=0.0,
                             use_checkpoint=False, layer_lr_decay=1.0, **kwargs)
            self.embed_hw = img_size // 16
            last_merge = self.layers[-2].downsample
            last_merge.conv2.c.stride = (1, 1)
            dim = kwargs["embed_dims"][-1]
            if out_chans != 256:
                self.neck = torch.nn.Sequential(
                    torch.nn.Conv2d(dim, out_chans, kernel_size=1, bias=False),
                    LayerNorm2d(out_chans),
                    torch.nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
                    LayerNorm2d(out_chans),
                )

        def forward_features(self, x):
            x = self.patch_embed(x)
            for layer in self.layers:
                x = layer(x)
            b, _, c = x.size()
            x = x.view(b, self.embed_hw, self.embed_hw, c).permute(0, 3, 1, 2)
            return self.neck(x)

    return TinyViTSam


def build_sam(config: dict):
    """A mobile_sam.modeling.Sam for `config` (random weights, eval mode). FULL_CONFIG builds
    exactly mobile_sam.build_sam.build_sam_vit_t."""
    from mobile_sam.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    S = config["image_size"]
    D = config["prompt_embed_dim"]
    enc = dict(config["encoder"])
    if config is FULL_CONFIG or (S == 1024 and D == 256 and enc == FULL_CONFIG["encoder"]):
        from mobile_sam.build_sam import build_sam_vit_t

        model = build_sam_vit_t()
        model.eval()
        return model
    image_encoder = _tinyvit_class()(img_size=S, out_chans=D, **enc)
    dec = config["decoder"]
    model = Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=D,
            image_embedding_size=(S // 16, S // 16),
            input_image_size=(S, S),
            mask_in_chans=config["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=NUM_MASKS - 1,
            transformer=TwoWayTransformer(depth=dec["depth"], embedding_dim=D, mlp_dim=dec["mlp_dim"],
                                          num_heads=dec["num_heads"]),
            transformer_dim=D,
            iou_head_depth=dec["iou_head_depth"],
            iou_head_hidden_dim=dec["iou_head_hidden_dim"],
        ),
        pixel_mean=[m * 255 for m in MEAN],
        pixel_std=[s * 255 for s in STD],
    )
    model.eval()
    return model


def load_mobilesam(path) -> torch.nn.Module:
    """MobileSAM vit_t with the official weights (mobile_sam.pt). eval() runs after the state
    dict is loaded: TinyViT's attention caches its bias table (`ab`) when switched to eval."""
    model = build_sam(FULL_CONFIG)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.train()
    model.eval()
    return model


def load_tiny(path):
    """The tiny model saved by train_sam.py: (model, checkpoint dict)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = build_sam(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    model.train()
    model.eval()  # recompute TinyViT's cached attention biases from the loaded weights
    return model, ckpt


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def exported_parameters(model) -> dict:
    """Parameters that reach the graphs (MobileSAM's TinyViT carries an unused classifier head)."""
    enc = model.image_encoder
    unused = sum(p.numel() for n, p in enc.named_parameters() if n.startswith(("head.", "norm_head.")))
    e = count_parameters(enc) - unused
    d = count_parameters(model.prompt_encoder) + count_parameters(model.mask_decoder)
    return {"encoder": e, "decoder": d, "total": e + d}


# ---------------------------------------------------------------------------------------------
# Decoder: SamOnnxModel's _embed_points / _embed_masks and MaskDecoder.predict_masks, batched over
# prompts (one image embedding per prompt instead of repeat_interleave of one image).


def embed_points(model, point_coords, point_labels):
    pe = model.prompt_encoder
    coords = (point_coords + 0.5) / model.image_encoder.img_size
    emb = pe.pe_layer._pe_encoding(coords)
    labels = point_labels.unsqueeze(-1).expand_as(emb)
    emb = emb * (labels != -1)
    emb = emb + pe.not_a_point_embed.weight * (labels == -1)
    for i in range(pe.num_point_embeddings):
        emb = emb + pe.point_embeddings[i].weight * (labels == i)
    return emb


def embed_masks(model, mask_input, has_mask_input):
    pe = model.prompt_encoder
    emb = has_mask_input * pe.mask_downscaling(mask_input)
    return emb + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)


def predict_masks(decoder, image_embeddings, image_pe, sparse, dense):
    """MaskDecoder.predict_masks with image_embeddings already one per prompt ([B,C,h,w]);
    for B = 1 it is the same computation."""
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0)
    if sparse.size(0) != 1:
        output_tokens = output_tokens.expand(sparse.size(0), -1, -1)
    tokens = torch.cat((output_tokens, sparse), dim=1)
    src = image_embeddings + dense
    pos_src = image_pe if image_pe.shape[0] == src.shape[0] else image_pe.expand(src.shape[0], -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1:(1 + decoder.num_mask_tokens), :]
    src = src.transpose(1, 2).reshape(b, c, h, w)
    up = decoder.output_upscaling(src)
    hyper_in = torch.stack(
        [decoder.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in range(decoder.num_mask_tokens)],
        dim=1,
    )
    b, c, h, w = up.shape
    masks = (hyper_in @ up.reshape(b, c, h * w)).reshape(b, -1, h, w)
    iou_pred = decoder.iou_prediction_head(iou_token_out)
    return masks, iou_pred


def decode(model, image_embeddings, point_coords, point_labels, mask_input=None, has_mask_input=None,
           image_pe=None):
    """(low_res_masks [B,4,4h,4w], iou_predictions [B,4]) for B prompts and B embeddings."""
    b = image_embeddings.shape[0]
    h, w = image_embeddings.shape[-2:]
    if mask_input is None:
        mask_input = torch.zeros(b, 1, 4 * h, 4 * w)
    if has_mask_input is None:
        has_mask_input = torch.zeros(1)
    if image_pe is None:
        image_pe = model.prompt_encoder.get_dense_pe()
    sparse = embed_points(model, point_coords, point_labels)
    dense = embed_masks(model, mask_input, has_mask_input)
    return predict_masks(model.mask_decoder, image_embeddings, image_pe, sparse, dense)


class Encoder(torch.nn.Module):
    """image [1,3,S,S] (normalised, padded) -> image_embeddings [1,C,S/16,S/16]."""

    def __init__(self, model):
        super().__init__()
        self.image_encoder = model.image_encoder

    def forward(self, image):
        return self.image_encoder(image)


class LowResDecoder(torch.nn.Module):
    """SAM's ONNX decoder (SamOnnxModel) without the final resize to orig_im_size and without
    select_masks: (image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
    -> (low_res_masks [1,4,4h,4w], iou_predictions [1,4]). The dense positional encoding is a
    constant of the graph."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        with torch.no_grad():
            self.register_buffer("image_pe", model.prompt_encoder.get_dense_pe().clone(), persistent=False)

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        return decode(self.model, image_embeddings, point_coords, point_labels, mask_input, has_mask_input,
                      image_pe=self.image_pe)


# ---------------------------------------------------------------------------------------------
# Preprocessing, coordinates, postprocessing (the runtime's side of the contract)


def resized_shape(h: int, w: int, S: int) -> tuple[int, int]:
    """SAM ResizeLongestSide.get_preprocess_shape: (new_h, new_w)."""
    scale = S * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_rgb(img: Image.Image, S: int) -> np.ndarray:
    """RGB image -> uint8 [new_h, new_w, 3] (PIL bilinear, longest side S)."""
    img = img.convert("RGB")
    w, h = img.size
    nh, nw = resized_shape(h, w, S)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def normalise_pad(rgb: np.ndarray, S: int) -> np.ndarray:
    """uint8 [h, w, 3] -> f32 [3, S, S]: 0..1, (x - mean) / std, zero padding right/bottom."""
    x = rgb.astype(np.float32) / 255.0
    x = (x - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    out = np.zeros((3, S, S), dtype=np.float32)
    out[:, : x.shape[0], : x.shape[1]] = x.transpose(2, 0, 1)
    return out


def preprocess(img: Image.Image, S: int) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB image -> (image f32 [1,3,S,S], (new_h, new_w))."""
    rgb = resize_rgb(img, S)
    return normalise_pad(rgb, S)[None], rgb.shape[:2]


def map_coords(xy, orig_hw: tuple[int, int], S: int) -> np.ndarray:
    """Input-pixel (x, y) -> model coordinates (ResizeLongestSide.apply_coords)."""
    old_h, old_w = orig_hw
    new_h, new_w = resized_shape(old_h, old_w, S)
    xy = np.array(xy, dtype=np.float64).reshape(-1, 2).copy()
    xy[:, 0] *= new_w / old_w
    xy[:, 1] *= new_h / old_h
    return xy


def prompt_arrays(points=(), labels=(), box=None, n: int = NUM_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Model-coordinate points/labels and an optional box (x0, y0, x1, y1) -> point_coords
    f32 [1,n,2], point_labels f32 [1,n] padded with (0, 0) / -1 (clicks first, then the box's
    two corners, as SAM's predictor orders them)."""
    pts = [tuple(p) for p in np.asarray(points, dtype=np.float64).reshape(-1, 2)]
    lab = [float(v) for v in labels]
    if box is not None:
        pts += [(box[0], box[1]), (box[2], box[3])]
        lab += [2.0, 3.0]
    if len(pts) > n:
        raise ValueError(f"{len(pts)} prompt points; the graph takes {n}")
    coords = np.zeros((1, n, 2), dtype=np.float32)
    labels_out = np.full((1, n), -1.0, dtype=np.float32)
    if pts:
        coords[0, : len(pts)] = np.array(pts, dtype=np.float32)
        labels_out[0, : len(lab)] = np.array(lab, dtype=np.float32)
    return coords, labels_out


def choose_mask(point_labels: np.ndarray, iou: np.ndarray) -> int:
    """The runtime's (SamOnnxModel's) rule: exactly one real point and no box -> the best
    predicted IoU among masks 1..3; otherwise mask 0."""
    lab = np.asarray(point_labels).reshape(-1)
    real = lab != -1
    has_box = bool(np.isin(lab, (2, 3)).any())
    if real.sum() == 1 and not has_box:
        return 1 + int(np.argmax(np.asarray(iou).reshape(-1)[1:]))
    return 0


def upsample_to_image(low_res: np.ndarray | torch.Tensor, S: int, new_hw: tuple[int, int],
                      orig_hw: tuple[int, int]) -> np.ndarray:
    """Low-res logits [..., 4h, 4w] -> logits at the original image size: bilinear
    (align_corners=False) to S x S, crop the unpadded new_h x new_w, bilinear to the original
    size (Sam.postprocess_masks)."""
    t = torch.as_tensor(np.asarray(low_res, dtype=np.float32))
    lead = t.shape[:-2]
    t = t.reshape(1, -1, *t.shape[-2:])
    t = F.interpolate(t, size=(S, S), mode="bilinear", align_corners=False)
    t = t[..., : new_hw[0], : new_hw[1]]
    t = F.interpolate(t, size=tuple(orig_hw), mode="bilinear", align_corners=False)
    return t.reshape(*lead, *orig_hw).numpy()


def _axis_taps(length: int, input_len: int, start: int, content_len: int, out_len: int):
    import math

    r = length / max(input_len, 1)
    a, b = start * r, (start + content_len) * r
    last = length - 1
    lo, hi = math.ceil(a - 0.5), math.floor(b - 0.5)
    if lo > hi:
        lo = hi = math.floor((a + b) / 2 - 0.5 + 0.5)
    lo, hi = min(max(lo, 0), last), min(max(hi, 0), last)
    step = (b - a) / out_len
    c = np.clip(a + (np.arange(out_len) + 0.5) * step - 0.5, lo, hi)
    i0 = np.floor(c)
    i1 = np.minimum(i0 + 1, hi)
    return i0.astype(int), i1.astype(int), (c - i0).astype(np.float32)


def one_step_probability(low_res: np.ndarray, S: int, new_hw: tuple[int, int], orig_hw: tuple[int, int]) -> np.ndarray:
    """The Rust runtime's postprocessing (src/postprocess.rs `segment`, checked against it by
    reading, not by running): sigmoid on the low-res logits, then one bilinear step from frame
    pixel centres straight to low-res pixels through the letterbox (the padding dropped, taps
    clamped to the content's logit centres). Differs from the two-step SAM resize of
    upsample_to_image by a few edge pixels; threshold the result at 0.5."""
    lr = np.asarray(low_res, dtype=np.float32)
    lh, lw = lr.shape
    p = (1.0 / (1.0 + np.exp(-lr.astype(np.float64)))).astype(np.float32)
    x0, x1, wx = _axis_taps(lw, S, 0, new_hw[1], orig_hw[1])
    y0, y1, wy = _axis_taps(lh, S, 0, new_hw[0], orig_hw[0])
    rows = p[:, x0] + wx[None, :] * (p[:, x1] - p[:, x0])
    return rows[y0, :] + wy[:, None] * (rows[y1, :] - rows[y0, :])


# ---------------------------------------------------------------------------------------------
# Masks and prompts


def load_mask(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L")) > 0


def components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a binary mask, largest first."""
    im = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).copy()
    out = []
    label = 1
    while label < 255:
        ys, xs = np.nonzero(np.asarray(im) == 255)
        if len(ys) == 0:
            break
        ImageDraw.floodfill(im, (int(xs[0]), int(ys[0])), label)
        out.append(np.asarray(im) == label)
        label += 1
    out.sort(key=lambda m: -int(m.sum()))
    return out


def erosion_depth(mask: np.ndarray) -> np.ndarray:
    """Per-pixel depth inside the mask: the number of erosions (alternating 3x3 square and
    cross, an octagonal distance) the pixel survives, + 1; 0 outside."""
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    depth = torch.zeros_like(t)
    cross = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float32)[None, None]
    k = 0
    while t.sum() > 0:
        depth += t
        if k % 2 == 0:
            t = -F.max_pool2d(-F.pad(t, (1, 1, 1, 1)), 3, stride=1)
        else:
            n = F.conv2d(F.pad(t, (1, 1, 1, 1)), cross)
            t = (n >= 5).float()
        k += 1
    return depth[0, 0].numpy()


def centre_point(mask: np.ndarray) -> tuple[int, int]:
    """The centre-most interior pixel (x, y): deepest by erosion_depth, ties to the one closest
    to the mask's centroid, then the first in row-major order."""
    d = erosion_depth(mask)
    ys, xs = np.nonzero(d == d.max())
    cy, cx = np.nonzero(mask)
    cy, cx = cy.mean(), cx.mean()
    i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return int(xs[i]), int(ys[i])


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the first and last mask pixel in x and y."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def dice(pred: np.ndarray, target: np.ndarray, eps: float = 1e-6) -> float:
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


# ---------------------------------------------------------------------------------------------
# Phantom folders and the held-out evaluation (shared by train_sam.py and export_sam.py)


def read_samples(dataset_dir) -> list[dict]:
    """The lines of `samples.jsonl` written by `edgeseg phantoms` (one structure per line)."""
    import json

    out = []
    with open(Path(dataset_dir) / "samples.jsonl") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line))
    return out


def sample_class(s: dict) -> str:
    attrs = s.get("attributes") or {}
    return f"{s.get('modality', '?')}/{attrs.get('class', '?')}"


def structure_targets(mask: np.ndarray, sample: dict, min_fraction: float = 0.1) -> list[np.ndarray]:
    """The objects a single click can mean: the connected components (at least `min_fraction`
    of the area) when the structure is several objects ("count" other than "one", e.g. two
    lesions), else the whole mask (a polyp cut in two by a tool is still one polyp)."""
    count = (sample.get("attributes") or {}).get("count", "one")
    if count == "one":
        return [mask]
    comps = [c for c in components(mask) if c.sum() >= min_fraction * mask.sum()]
    return comps or [mask]


def eval_cases(dirs, limit: int | None = None) -> list[dict]:
    """Held-out cases, one per structure: the centre-most interior click of the structure (of its
    largest object when it is several) with that object as ground truth, and the structure's
    bounding box with the whole mask as ground truth. Coordinates in input pixels."""
    cases = []
    for d in dirs:
        d = Path(d)
        for s in read_samples(d):
            m = load_mask(d / s["mask"])
            if m.sum() == 0:
                continue
            obj = structure_targets(m, s)[0]
            cases.append(dict(image=d / s["image"], cls=sample_class(s), click=centre_point(obj), click_mask=obj,
                              box=bbox(m), box_mask=m))
            if limit is not None and len(cases) >= limit:
                return cases
    return cases


def evaluate(encode, decode_fn, cases: list[dict], S: int, keep_logits: bool = False) -> dict:
    """Mean Dice at the original image size (runtime postprocessing, logit > 0) for one click
    and for a box. encode(image [1,3,S,S]) -> embeddings; decode_fn(embeddings, coords, labels)
    -> (low_res_masks [1,4,..], iou [1,4]) as numpy."""
    from collections import defaultdict

    per = {"click": defaultdict(list), "box": defaultdict(list)}
    logits_out = []
    cache_path, emb, x_hw = None, None, None
    for c in cases:
        img = Image.open(c["image"])
        orig_hw = (img.size[1], img.size[0])
        if c["image"] != cache_path:
            x, new_hw = preprocess(img, S)
            emb = encode(x)
            cache_path, x_hw = c["image"], new_hw
        for mode in ("click", "box"):
            if mode == "click":
                coords, labels = prompt_arrays(map_coords([c["click"]], orig_hw, S), [1])
                target = c["click_mask"]
            else:
                b = map_coords([c["box"][:2], c["box"][2:]], orig_hw, S).reshape(-1)
                coords, labels = prompt_arrays(box=b)
                target = c["box_mask"]
            low, iou = decode_fn(emb, coords, labels)
            k = choose_mask(labels, iou)
            logits = upsample_to_image(low[0, k], S, x_hw, orig_hw)
            per[mode][c["cls"]].append(dice(logits > 0, target))
            if keep_logits:
                logits_out.append(logits)
    out = {}
    for mode, by_cls in per.items():
        allv = [v for vs in by_cls.values() for v in vs]
        out[mode] = {"mean": float(np.mean(allv)), "n": len(allv),
                     "per_class": {k: float(np.mean(v)) for k, v in sorted(by_cls.items())}}
    if keep_logits:
        out["logits"] = logits_out
    return out


def torch_fns(model):
    """encode / decode callables for evaluate() running the torch model."""
    pe = model.prompt_encoder.get_dense_pe()

    @torch.no_grad()
    def encode(x):
        return model.image_encoder(torch.from_numpy(x))

    @torch.no_grad()
    def dec(emb, coords, labels):
        low, iou = decode(model, emb, torch.from_numpy(coords), torch.from_numpy(labels), image_pe=pe)
        return low.numpy(), iou.numpy()

    return encode, dec


def ort_session(path, threads: int = 1):
    """onnxruntime session for a graph file. int8 graphs (file name with "int8") run with graph
    optimisations off (ORT_DISABLE_ALL: each op as the ONNX spec defines it, the semantics tract
    implements): the default session fuses DequantizeLinear -> Conv/MatMul -> QuantizeLinear into
    onnxruntime's own int8 kernels, whose u8 x s8 products saturate on x86 CPUs without VNNI
    (see export_unet.py). f32 graphs use the default optimisations (make_references.session)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if "int8" in Path(path).name:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_fns(encoder_session, decoder_session):
    """encode / decode callables for evaluate() running onnxruntime sessions."""

    def encode(x):
        return encoder_session.run(None, {"image": x})[0]

    def dec(emb, coords, labels):
        h, w = emb.shape[-2:]
        feeds = {
            "image_embeddings": emb,
            "point_coords": coords,
            "point_labels": labels,
            "mask_input": np.zeros((1, 1, 4 * h, 4 * w), dtype=np.float32),
            "has_mask_input": np.zeros((1,), dtype=np.float32),
        }
        low, iou = decoder_session.run(None, feeds)
        return low, iou

    return encode, dec
