"""Shared pieces of the SAM-3D adapter phantom tools (train_sam3d.py, export_sam3d.py): the model
(a small 3-D ViT patch encoder with adapters + a SAM-like prompt decoder), the volume
preprocessing the runtime does (resample to the model grid, normalise, crop a patch, paste back)
and the evaluation helpers.

Not a script; imported by the tools beside it.

Conventions (the manifest's family "sam3d", see docs / notes "issue4-contracts"):
  - Volumes here are numpy arrays indexed [x, y, z] on input (nibabel order); on the model grid and
    in tensors they are [z, y, x] = [D, H, W]. Points are (x, y, z) voxel coordinates, voxel centres
    at integers.
  - Model grid: SPACING mm isotropic. Resampling from n voxels of spacing s to the model grid gives
    n' = max(1, round(n * s / SPACING)) voxels; values come from trilinear interpolation with
    torch's align_corners=False rule (the two grids share their outer faces): input coordinate
    u = (u' + 0.5) * n / n' - 0.5, clamped to the edge. Back to the input grid is the same rule
    the other way. A point u (input voxel) maps to u' = (u + 0.5) * n' / n - 0.5.
  - Normalisation: "percentile": clip to the 0.5 and 99.5 percentiles (numpy linear
    interpolation) of the resampled volume, rescale to 0..1 (so the normalised minimum is 0).
  - Patch: PATCH^3 voxels centred on the mean of the clicks: start = round(mean) - PATCH // 2 per
    axis (numpy round half to even); outside the volume = the normalised minimum. With no click,
    windows slide over the volume (stride = PATCH * (1 - OVERLAP), the last window flush with the
    end; a volume smaller than the patch gets one window at 0) and probabilities are averaged.
  - Decoder output: logits on a (PATCH/2)^3 grid covering the patch; upsampled trilinearly
    (align_corners=False) to PATCH^3.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

TOOLS_DIR = Path(__file__).resolve().parent
REPO_DIR = TOOLS_DIR.parent.parent
CACHE_DIR = TOOLS_DIR / ".cache" / "sam3d"

PATCH = 48  # D = H = W of the encoder input
SPACING = 1.5  # mm, isotropic model grid
N_POINTS = 4  # prompt slots of the decoder graph
PERCENTILES = (0.5, 99.5)
OVERLAP = 0.5

CONFIG = dict(
    patch=PATCH,
    token_patch=8,  # 48^3 / 8^3 -> 6x6x6 ViT tokens
    stem=(16, 32),  # conv stem channels at /2 and /4 (3^3 stride-2 convs)
    width=96,  # ViT width
    depth=4,
    heads=4,
    mlp_ratio=2.0,
    adapter_dim=24,  # bottleneck of the adapters
    neck_dim=64,  # neck channels at /4
    embed_dim=16,  # channels of image_embeddings
    embed_grid=24,  # image_embeddings are embed_dim x 24^3 (PATCH / 2); low_res_masks too
    dec_dim=64,  # decoder width (tokens, attention) at the /4 grid
    dec_depth=2,
    dec_heads=4,
    dec_mlp=128,
    upscale_dim=16,  # channels the mask head dots with
    click_sigmas=(3.0, 8.0),  # Gaussian click maps (patch voxels)
    refine_dim=24,  # channels of the decoder's convolutional refinement at the /4 grid
    head_dim=24,  # hidden channels of the decoder's per-voxel head at the /2 grid
    n_points=N_POINTS,
)


# ---------------------------------------------------------------------------------------------
# encoder


class LayerNorm3d(nn.Module):
    """LayerNorm over channels of [B, C, D, H, W] (as SAM's LayerNorm2d), exported as plain ops."""

    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return x * self.weight[:, None, None, None] + self.bias[:, None, None, None]


# Training uses torch's fused scaled_dot_product_attention; export sets this to False so the graph
# holds plain MatMul / Softmax (same mathematics).
FUSED_ATTENTION = True


class Attention(nn.Module):
    def __init__(self, dim, heads, internal=None):
        super().__init__()
        internal = internal or dim
        self.heads = heads
        self.q = nn.Linear(dim, internal)
        self.k = nn.Linear(dim, internal)
        self.v = nn.Linear(dim, internal)
        self.out = nn.Linear(internal, dim)

    def forward(self, q, k, v):
        b, nq, _ = q.shape
        nk = k.shape[1]
        h = self.heads
        q = self.q(q).reshape(b, nq, h, -1).transpose(1, 2)
        k = self.k(k).reshape(b, nk, h, -1).transpose(1, 2)
        v = self.v(v).reshape(b, nk, h, -1).transpose(1, 2)
        if FUSED_ATTENTION:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            a = torch.softmax((q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5), dim=-1)
            o = a @ v
        o = o.transpose(1, 2).reshape(b, nq, -1)
        return self.out(o)


class Adapter3D(nn.Module):
    """3DSAM-adapter-style bottleneck: Linear down -> GELU -> depthwise 3x3x3 conv over the token
    grid -> GELU -> Linear up (zero-initialised), added to the block output."""

    def __init__(self, dim, bottleneck, grid):
        super().__init__()
        self.grid = grid
        self.down = nn.Linear(dim, bottleneck)
        self.dw = nn.Conv3d(bottleneck, bottleneck, 3, padding=1, groups=bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):  # [B, T, C]
        b, t, _ = x.shape
        g = self.grid
        h = F.gelu(self.down(x))
        hc = h.transpose(1, 2).reshape(b, -1, g, g, g)
        hc = F.gelu(self.dw(hc))
        h = h + hc.reshape(b, -1, t).transpose(1, 2)
        return x + self.up(h)


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, adapter_dim, grid):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.adapter = Adapter3D(dim, adapter_dim, grid)

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.attn(y, y, y)
        x = x + self.mlp(self.norm2(x))
        return self.adapter(x)


class Encoder3D(nn.Module):
    """volume [B,1,P,P,P] -> image_embeddings [B,E,P/2,P/2,P/2].

    Conv stem (two 3^3 stride-2 convs: /2, /4) -> patch embedding (/8, ViT tokens, learned
    position embedding) -> `depth` pre-norm transformer blocks, each followed by a 3-D adapter ->
    neck (as SAM's, plus the stem's skips): tokens projected to the neck width, upsampled x2
    (transposed conv) + the /4 stem features (1x1), GELU + 1x1 residual; upsampled x2 again to
    E channels + the /2 stem features (1x1), GELU + 1x1 residual, channel LayerNorm."""

    def __init__(self, cfg=CONFIG):
        super().__init__()
        c1, c2 = cfg["stem"]
        w, n, e = cfg["width"], cfg["neck_dim"], cfg["embed_dim"]
        self.grid = cfg["patch"] // cfg["token_patch"]
        self.conv1 = nn.Conv3d(1, c1, 3, stride=2, padding=1)
        self.conv2 = nn.Conv3d(c1, c2, 3, stride=2, padding=1)
        self.patch_embed = nn.Conv3d(c2, w, 2, stride=2)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid ** 3, w))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(
            [Block(w, cfg["heads"], cfg["mlp_ratio"], cfg["adapter_dim"], self.grid) for _ in range(cfg["depth"])]
        )
        self.norm = nn.LayerNorm(w)
        self.proj = nn.Linear(w, n)
        self.up4 = nn.ConvTranspose3d(n, n, 2, stride=2)
        self.skip4 = nn.Conv3d(c2, n, 1)
        self.pw4 = nn.Conv3d(n, n, 1)
        self.up2 = nn.ConvTranspose3d(n, e, 2, stride=2)
        self.skip2 = nn.Conv3d(c1, e, 1)
        self.pw2 = nn.Conv3d(e, e, 1)
        self.neck_norm = LayerNorm3d(e)

    def forward(self, volume):
        f2 = F.gelu(self.conv1(volume))  # [B, c1, P/2...]
        f4 = F.gelu(self.conv2(f2))  # [B, c2, P/4...]
        t = self.patch_embed(f4)  # [B, w, g, g, g]
        b, w = t.shape[:2]
        g = self.grid
        x = t.reshape(b, w, g * g * g).transpose(1, 2) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = self.proj(self.norm(x))  # [B, T, n]
        x = x.transpose(1, 2).reshape(b, -1, g, g, g)
        x = self.up4(x) + self.skip4(f4)
        x = x + self.pw4(F.gelu(x))
        x = self.up2(x) + self.skip2(f2)
        x = x + self.pw2(F.gelu(x))
        return self.neck_norm(x)


# ---------------------------------------------------------------------------------------------
# prompt decoder


class PositionEmbeddingRandom3D(nn.Module):
    """SAM's random Fourier features in 3-D: coordinates normalised to 0..1 ((x + 0.5) / size),
    mapped to -1..1, times a fixed Gaussian matrix, sin and cos."""

    def __init__(self, num_feats, scale=1.0):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.register_buffer("gauss", scale * torch.randn(3, num_feats, generator=g))

    def encode(self, coords01):  # [..., 3] in 0..1
        c = (2 * coords01 - 1) @ self.gauss * (2 * math.pi)
        return torch.cat([torch.sin(c), torch.cos(c)], dim=-1)


class TwoWayBlock(nn.Module):
    def __init__(self, dim, heads, mlp, skip_first_pe=False):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_t2i = Attention(dim, heads, dim // 2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.ReLU(), nn.Linear(mlp, dim))
        self.norm3 = nn.LayerNorm(dim)
        self.cross_i2t = Attention(dim, heads, dim // 2)
        self.norm4 = nn.LayerNorm(dim)
        self.skip_first_pe = skip_first_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_t2i(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        k = keys + key_pe
        keys = self.norm4(keys + self.cross_i2t(k, q, queries))
        return queries, keys


class Decoder3D(nn.Module):
    """image_embeddings [B,E,G,G,G] (G = P/2), point_coords [B,N,3] (x,y,z patch voxels),
    point_labels [B,N] (1 fg, 0 bg, -1 padding) -> low_res_masks [B,1,G,G,G] (logits over the patch).

    SAM's prompt path at the /4 grid: the embeddings are folded to /4 tokens (2^3 stride-2 conv);
    each click is a sparse token (random-Fourier positional encoding + label embedding; padding
    = "not a point"), a mask token joins them, and a two-way transformer (self-attention of the
    tokens, token->image and image->token cross-attention) plus a final token->image attention
    runs between tokens and image tokens (with the dense positional encoding); transposed-conv
    upscaling to /2 and a hypernetwork MLP on the mask token whose output dots with the per-voxel
    features give the logits. Additions for a small model trained briefly from scratch:
      - dense Gaussian click maps (positive / negative, two widths) added to the image tokens and
        fed to the per-voxel head;
      - the image features under the positive / negative clicks (Gaussian-weighted means), added
        to the hypernetwork input, and every token's / voxel's squared difference to them
        (appearance dissimilarity);
      - a small convolutional refinement (1x1, 3^3, dilated 3^3, 1x1, residual) at /4 that spreads
        the click over the object, and a per-voxel head at /2 (two linear layers) on the upscaled
        features, the /2 embeddings, their similarities and the click maps."""

    def __init__(self, cfg=CONFIG):
        super().__init__()
        e, d = cfg["embed_dim"], cfg["dec_dim"]
        self.patch = cfg["patch"]
        self.fine = cfg["embed_grid"]
        self.grid = self.fine // 2
        g, s2 = self.grid, self.fine
        self.fold = nn.Conv3d(e, d, 2, stride=2)
        self.pe = PositionEmbeddingRandom3D(d // 2)
        self.not_a_point = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos_point = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.neg_point = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.no_mask = nn.Parameter(torch.randn(1, d, 1, 1, 1) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.layers = nn.ModuleList(
            [TwoWayBlock(d, cfg["dec_heads"], cfg["dec_mlp"], skip_first_pe=(i == 0)) for i in range(cfg["dec_depth"])]
        )
        self.final_attn = Attention(d, cfg["dec_heads"], d // 2)
        self.norm_final = nn.LayerNorm(d)
        u = cfg["upscale_dim"]
        self.upscale = nn.ConvTranspose3d(d, u, 2, stride=2)
        self.up_norm = LayerNorm3d(u)
        self.hyper = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, u))
        # dense positional encoding of the /4 grid's cell centres ((i + 0.5) / g)
        ax = (torch.arange(g, dtype=torch.float32) + 0.5) / g
        zz, yy, xx = torch.meshgrid(ax, ax, ax, indexing="ij")
        grid01 = torch.stack([xx, yy, zz], dim=-1).reshape(1, g * g * g, 3)
        self.register_buffer("grid01", grid01, persistent=False)
        # cell centres in patch voxel coordinates at /4 and /2
        self.sigmas = tuple(float(x) for x in cfg["click_sigmas"])
        self.register_buffer("vox_c", grid01 * self.patch - 0.5, persistent=False)
        ax2 = (torch.arange(s2, dtype=torch.float32) + 0.5) / s2
        zz, yy, xx = torch.meshgrid(ax2, ax2, ax2, indexing="ij")
        self.register_buffer("vox_f", torch.stack([xx, yy, zz], dim=-1).reshape(1, s2 ** 3, 3) * self.patch - 0.5,
                             persistent=False)
        nm = 2 * len(self.sigmas)
        self.click_embed = nn.Linear(nm, d)
        self.click_feat = nn.Linear(2 * d, d)
        r = cfg["refine_dim"]
        self.refine_in = nn.Conv3d(3 * d + nm, r, 1)
        self.refine1 = nn.Conv3d(r, r, 3, padding=1)
        self.refine2 = nn.Conv3d(r, r, 3, padding=2, dilation=2)
        self.refine_out = nn.Conv3d(r, d, 1)
        h = cfg["head_dim"]
        self.head1 = nn.Linear(u + 3 * e + nm, h)
        self.head2 = nn.Linear(h, u)
        # logit offset, started at a low foreground prior (objects fill ~1 % of a patch)
        self.logit_bias = nn.Parameter(torch.full((1, 1, 1, 1, 1), -3.0))

    def dense_pe(self):
        return self.pe.encode(self.grid01)  # [1, T, d]

    def click_maps(self, coords, is_pos, is_neg, vox):
        """Gaussian maps of the positive and the negative clicks at the points `vox` [1,T,3]:
        [B, T, 2 * len(sigmas)] (sums over the clicks of each label; padding contributes 0)."""
        d2 = ((vox.unsqueeze(2) - coords.unsqueeze(1)) ** 2).sum(-1)  # [B, T, N]
        maps = []
        for sg in self.sigmas:
            gm = torch.exp(d2 * (-0.5 / (sg * sg)))
            maps += [gm @ is_pos, gm @ is_neg]  # [B, T, 1] each
        return torch.cat(maps, dim=-1)

    @staticmethod
    def pooled(w, x):
        """Weighted mean over tokens: w [B,T,1], x [B,T,C] -> [B,1,C] (0 when w is 0)."""
        return (w.transpose(1, 2) @ x) / (w.sum(1, keepdim=True) + 1e-3)

    def forward(self, image_embeddings, point_coords, point_labels):
        b, e = image_embeddings.shape[:2]
        g, s2 = self.grid, self.fine
        lab = point_labels.unsqueeze(-1)
        is_pad = torch.relu(-lab)  # 1 for -1 (arithmetic masks: no Where / boolean indexing)
        is_pos = torch.relu(lab)  # 1 for 1
        is_neg = 1.0 - is_pad - is_pos  # 1 for 0
        pe = self.pe.encode((point_coords + 0.5) / self.patch)
        sparse = pe * (1.0 - is_pad) + is_pad * self.not_a_point + is_pos * self.pos_point + is_neg * self.neg_point
        # broadcast the mask token over the batch without Expand (0 * first point token)
        tokens = torch.cat([self.mask_token + 0.0 * sparse[:, :1, :], sparse], dim=1)
        src = self.fold(image_embeddings) + self.no_mask  # [B, d, g, g, g]
        d = src.shape[1]
        maps_c = self.click_maps(point_coords, is_pos, is_neg, self.vox_c)  # [B, T, m]
        keys = src.reshape(b, d, g * g * g).transpose(1, 2) + self.click_embed(maps_c)
        key_pe = self.dense_pe()  # [1, T, d], broadcast in the additions
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        q = queries + tokens
        k = keys + key_pe
        queries = self.norm_final(queries + self.final_attn(q, k, keys))
        mask_tok = queries[:, 0, :]
        # features under the clicks and every token's squared difference to them
        f_pos = self.pooled(maps_c[:, :, 0:1], keys)
        f_neg = self.pooled(maps_c[:, :, 1:2], keys)
        sim = torch.cat([(keys - f_pos) ** 2, (keys - f_neg) ** 2], dim=-1)  # [B, T, 2d]
        img = keys.transpose(1, 2).reshape(b, d, g, g, g)
        m = maps_c.transpose(1, 2).reshape(b, -1, g, g, g)
        simg = sim.transpose(1, 2).reshape(b, 2 * d, g, g, g)
        h = F.gelu(self.refine_in(torch.cat([img, simg, m], dim=1)))
        h = h + F.gelu(self.refine1(h))
        h = h + F.gelu(self.refine2(h))
        img = img + self.refine_out(h)
        up = F.relu(self.up_norm(self.upscale(img)))  # [B, u, s2, s2, s2]
        u = up.shape[1]
        n = s2 * s2 * s2
        up_t = up.reshape(b, u, n).transpose(1, 2)  # [B, n, u]
        fine = image_embeddings.reshape(b, e, n).transpose(1, 2)  # [B, n, e]
        maps_f = self.click_maps(point_coords, is_pos, is_neg, self.vox_f)  # [B, n, m]
        ff_pos = self.pooled(maps_f[:, :, 0:1], fine)
        ff_neg = self.pooled(maps_f[:, :, 1:2], fine)
        x = torch.cat([up_t, fine, (fine - ff_pos) ** 2, (fine - ff_neg) ** 2, maps_f], dim=-1)
        x = up_t + self.head2(F.gelu(self.head1(x)))  # [B, n, u]
        hyper = self.hyper(mask_tok + self.click_feat(torch.cat([f_pos, f_neg], dim=-1))[:, 0, :])  # [B, u]
        masks = (hyper.unsqueeze(1) @ x.transpose(1, 2)).reshape(b, 1, s2, s2, s2) + self.logit_bias
        return masks


class Sam3D(nn.Module):
    def __init__(self, cfg=CONFIG):
        super().__init__()
        self.cfg = dict(cfg)
        self.encoder = Encoder3D(cfg)
        self.decoder = Decoder3D(cfg)

    def forward(self, volume, point_coords, point_labels):
        return self.decoder(self.encoder(volume), point_coords, point_labels)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def load_checkpoint(path):
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    model = Sam3D(ckpt.get("config", CONFIG))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def upsample_logits(low, size=PATCH):
    return F.interpolate(low, size=(size, size, size), mode="trilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------
# the runtime's volume path


def model_shape(shape, spacing, target=SPACING):
    return tuple(max(1, int(round(n * s / target))) for n, s in zip(shape, spacing))


def resample(arr_zyx: np.ndarray, size_zyx) -> np.ndarray:
    """Trilinear, align_corners=False (see module docstring)."""
    t = torch.from_numpy(np.ascontiguousarray(arr_zyx, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(int(s) for s in size_zyx), mode="trilinear", align_corners=False)[0, 0].numpy()


def normalize(vol: np.ndarray, percentiles=PERCENTILES) -> np.ndarray:
    lo, hi = np.percentile(vol, percentiles)
    if hi <= lo:
        return np.zeros_like(vol, dtype=np.float32)
    return ((np.clip(vol, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def to_model_grid(data_xyz: np.ndarray, spacing):
    """Input volume [x,y,z] (physical values) -> normalised model-grid volume [z,y,x]."""
    nx, ny, nz = data_xyz.shape
    mx, my, mz = model_shape((nx, ny, nz), spacing)
    zyx = np.ascontiguousarray(np.transpose(data_xyz, (2, 1, 0)), dtype=np.float32)
    return normalize(resample(zyx, (mz, my, mx)))


def mask_to_model_grid(mask_xyz: np.ndarray, spacing) -> np.ndarray:
    nx, ny, nz = mask_xyz.shape
    mx, my, mz = model_shape((nx, ny, nz), spacing)
    zyx = np.transpose(mask_xyz.astype(np.float32), (2, 1, 0))
    return resample(zyx, (mz, my, mx)) >= 0.5


def point_to_model(p_xyz, in_shape_xyz, model_shape_xyz):
    return [(float(u) + 0.5) * m / n - 0.5 for u, n, m in zip(p_xyz, in_shape_xyz, model_shape_xyz)]


def patch_start(points_xyz, patch=PATCH):
    """Patch origin (x, y, z) on the model grid: round(mean of the clicks) - patch // 2."""
    m = np.mean(np.asarray(points_xyz, dtype=np.float64), axis=0)
    return [int(np.round(v)) - patch // 2 for v in m]


def crop(vol_zyx: np.ndarray, start_xyz, patch=PATCH, fill=0.0) -> np.ndarray:
    """PATCH^3 block [z,y,x] starting at start (x, y, z); outside = fill."""
    out = np.full((patch, patch, patch), fill, dtype=np.float32)
    sz = [start_xyz[2], start_xyz[1], start_xyz[0]]
    src, dst = [], []
    for a in range(3):
        lo = max(0, sz[a])
        hi = min(vol_zyx.shape[a], sz[a] + patch)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - sz[a], hi - sz[a]))
    out[tuple(dst)] = vol_zyx[tuple(src)]
    return out


def paste(dst_zyx: np.ndarray, block: np.ndarray, start_xyz):
    """Writes block [z,y,x] at start (x,y,z) into dst where they overlap."""
    sz = [start_xyz[2], start_xyz[1], start_xyz[0]]
    src, dst = [], []
    for a in range(3):
        lo = max(0, sz[a])
        hi = min(dst_zyx.shape[a], sz[a] + block.shape[a])
        if hi <= lo:
            return
        dst.append(slice(lo, hi))
        src.append(slice(lo - sz[a], hi - sz[a]))
    dst_zyx[tuple(dst)] = block[tuple(src)]


def pad_points(points_xyz, labels, n=N_POINTS):
    c = np.zeros((1, n, 3), dtype=np.float32)
    l = np.full((1, n), -1.0, dtype=np.float32)
    for i, (p, lb) in enumerate(zip(points_xyz[:n], labels[:n])):
        c[0, i] = p
        l[0, i] = lb
    return c, l


def window_starts(n, patch=PATCH, overlap=OVERLAP):
    if n <= patch:
        return [0]
    stride = max(1, int(round(patch * (1 - overlap))))
    starts = list(range(0, n - patch + 1, stride))
    if starts[-1] != n - patch:
        starts.append(n - patch)
    return starts


def dice(pred: np.ndarray, target: np.ndarray, eps: float = 1e-6) -> float:
    pred = pred.astype(bool)
    target = target.astype(bool)
    inter = float((pred & target).sum())
    s = float(pred.sum() + target.sum())
    return 1.0 if s == 0 else (2 * inter + eps) / (s + eps)


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Predictor:
    """The runtime's path with a `run_encoder(volume) -> emb` and `run_decoder(emb, c, l) -> low`
    pair (torch or onnxruntime)."""

    def __init__(self, run_encoder, run_decoder, patch=PATCH):
        self.enc = run_encoder
        self.dec = run_decoder
        self.patch = patch

    def patch_logits(self, patch_zyx, coords, labels):
        emb = self.enc(patch_zyx[None, None].astype(np.float32))
        low = self.dec(emb, coords, labels)
        return upsample_logits(torch.from_numpy(np.asarray(low)), self.patch)[0, 0].numpy()

    def click(self, vol_zyx, points_xyz, labels):
        """Model-grid logits volume (outside the patch: -1e4) for clicks in model-grid coords."""
        start = patch_start([p for p in points_xyz])
        patch = crop(vol_zyx, start, self.patch, fill=float(vol_zyx.min()))
        rel = [[p[0] - start[0], p[1] - start[1], p[2] - start[2]] for p in points_xyz]
        c, l = pad_points(rel, labels)
        logits = self.patch_logits(patch, c, l)
        full = np.full(vol_zyx.shape, -1e4, dtype=np.float32)
        paste(full, logits, start)
        return full

    def sliding(self, vol_zyx, overlap=OVERLAP):
        """Model-grid probability volume with no clicks: windows averaged."""
        c, l = pad_points([], [])
        acc = np.zeros(vol_zyx.shape, dtype=np.float64)
        cnt = np.zeros(vol_zyx.shape, dtype=np.float64)
        fill = float(vol_zyx.min())
        for z in window_starts(vol_zyx.shape[0], self.patch, overlap):
            for y in window_starts(vol_zyx.shape[1], self.patch, overlap):
                for x in window_starts(vol_zyx.shape[2], self.patch, overlap):
                    start = [x, y, z]
                    patch = crop(vol_zyx, start, self.patch, fill=fill)
                    p = 1.0 / (1.0 + np.exp(-self.patch_logits(patch, c, l).astype(np.float64)))
                    d, h, w = (min(vol_zyx.shape[0], z + self.patch) - z, min(vol_zyx.shape[1], y + self.patch) - y,
                               min(vol_zyx.shape[2], x + self.patch) - x)
                    acc[z:z + d, y:y + h, x:x + w] += p[:d, :h, :w]
                    cnt[z:z + d, y:y + h, x:x + w] += 1
        return (acc / np.maximum(cnt, 1)).astype(np.float32)


def torch_predictor(model):
    def enc(v):
        with torch.no_grad():
            return model.encoder(torch.from_numpy(v)).numpy()

    def dec(e, c, l):
        with torch.no_grad():
            return model.decoder(torch.from_numpy(e), torch.from_numpy(c), torch.from_numpy(l)).numpy()

    return Predictor(enc, dec)


def runtime_click_mask(pred: Predictor, data_xyz, spacing, points_in_xyz, labels=None):
    """Input-grid mask [x,y,z] for clicks in input voxel coords: the runtime's whole path."""
    shape = data_xyz.shape
    vol = to_model_grid(data_xyz, spacing)
    mshape = (vol.shape[2], vol.shape[1], vol.shape[0])
    pts = [point_to_model(p, shape, mshape) for p in points_in_xyz]
    labels = labels or [1] * len(pts)
    logits = pred.click(vol, pts, labels)
    back = resample(logits, (shape[2], shape[1], shape[0]))
    return np.transpose(back > 0, (2, 1, 0))


def runtime_sliding_mask(pred: Predictor, data_xyz, spacing, overlap=OVERLAP):
    shape = data_xyz.shape
    vol = to_model_grid(data_xyz, spacing)
    prob = pred.sliding(vol, overlap)
    back = resample(prob, (shape[2], shape[1], shape[0]))
    return np.transpose(back > 0.5, (2, 1, 0))
