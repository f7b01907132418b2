"""Trains the bundled demo SAM-3D adapter model (sam3d_common.Sam3D: a small 3-D ViT patch encoder
with depthwise-3-D-conv bottleneck adapters and a SAM-like two-way prompt decoder) from scratch on
CPU, on synthetic volumes from volumes.py, through the runtime's own volume path.

  nice -n 5 python train_sam3d.py --time-budget 14.5 --out models/tools/.cache/sam3d/ckpt.pt

Data: a pool of --pool-count volumes (volumes.make_volume, seeds 100003*pool_seed + i: CT-like or
ultrasound-like, 48..96 voxels per side, isotropic or anisotropic spacing, 1..3 ellipsoid
lesions, 0..2 curved vessels) resampled to the model grid (SPACING mm) and normalised as the
runtime does (percentile 0.5 / 99.5 of the whole resampled volume -> 0..1); labels resampled
per instance (trilinear, >= 0.5). Cached under models/tools/.cache/sam3d/.

Samples: a PATCH^3 block and K prompts on it (the encoder runs once per block):
  - prompt 0 builds the block: with probability --p-noclick it has no click (all N slots label
    -1; block placed at random, half the time near a lesion; target = every lesion voxel in the
    block, as the manifest's contract says); otherwise 1..3 positive clicks inside one object
    (a lesion, or a vessel 10 % of the time when there is one; the first click half the time
    two voxels or more inside the object) and 0..2 negative clicks (on
    other structures or the background nearby); the block is centred on the mean of the clicks
    as the runtime centres it (start = round(mean) - PATCH/2), with small jitter;
  - prompts 1..K-1: clicks on objects inside the block wherever they are, or (10 %) no click.
  Clicks get sub-voxel jitter (the runtime maps input voxels to fractional model coordinates),
  padding slots are (0,0,0) with label -1. Augmentation: flips and axis permutations (the grid is
  isotropic), mild gamma.
Loss: binary cross-entropy + soft Dice on the decoder's low-resolution logits upsampled to the
patch (trilinear, align_corners=False, as the runtime). AdamW, warm-up then cosine over the time
budget (the number of steps depends on the machine; the checkpoint records it).

At the end it measures held-out Dice (--heldout-count volumes, other seeds) and writes the
checkpoint (state dict, config, figures, description) to --out:
  - 1 click per lesion (the lesion voxel farthest from its boundary) at the model grid;
  - the same through the runtime's whole path (input volume -> model grid -> patch centred on
    the click -> logits pasted back -> input grid -> threshold), on the input grids;
  - vessels (1 click, Dice inside the patch);
  - no click, sliding windows (overlap OVERLAP), target = all lesions;
  - the committed held-out fixtures tests/fixtures/volumes/eval/ (samples.jsonl) when present.
Deterministic for a given seed and thread count except for the clock-driven schedule. Offline.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sam3d_common as sc  # noqa: E402
import volumes as vg  # noqa: E402

P = sc.PATCH
N = sc.N_POINTS


# ---------------------------------------------------------------------------------------------
# pool


def _erode(m: np.ndarray) -> np.ndarray:
    e = m.copy()
    for ax in range(3):
        e &= np.roll(m, 1, ax) & np.roll(m, -1, ax)
    return e


def prepare(v: vg.Volume) -> dict:
    """A volume on the model grid: normalised data [z,y,x] (float16), lesion / vessel instance
    labels (int8), and each object's voxel lists."""
    vol = sc.to_model_grid(v.data, v.spacing).astype(np.float16)
    les = np.zeros(vol.shape, dtype=np.int8)
    ves = np.zeros(vol.shape, dtype=np.int8)
    for i in range(1, int(v.lesions.max()) + 1):
        les[sc.mask_to_model_grid(v.lesions == i, v.spacing)] = i
    for i in range(1, int(v.vessels.max()) + 1):
        ves[sc.mask_to_model_grid(v.vessels == i, v.spacing) & (les == 0)] = i
    return {"vol": vol, "les": les, "ves": ves}


def objects_of(item: dict) -> list:
    objs = []
    for kind, lab in (("lesion", item["les"]), ("vessel", item["ves"])):
        for i in range(1, int(lab.max()) + 1):
            m = lab == i
            if m.sum() < 4:
                continue
            e = _erode(m)
            e2 = _erode(e)
            vox = np.argwhere(m).astype(np.int16)
            inner = np.argwhere(e).astype(np.int16) if e.sum() >= 4 else vox
            core = np.argwhere(e2).astype(np.int16) if e2.sum() >= 4 else inner
            objs.append({"kind": kind, "id": i, "vox": vox, "inner": inner, "core": core})
    return objs


def _generator_tag() -> str:
    """Short digest of the volume generator and the preprocessing, so a stale pool cache is not reused."""
    import hashlib
    import inspect

    src = inspect.getsource(vg.make_volume) + inspect.getsource(vg._ellipsoid_r) + inspect.getsource(vg._tube_distance)
    src += inspect.getsource(sc.to_model_grid) + inspect.getsource(sc.resample) + inspect.getsource(sc.normalize)
    src += inspect.getsource(prepare) + repr(vg.SPACINGS) + repr(sc.PERCENTILES)
    return hashlib.sha256(src.encode()).hexdigest()[:10]


def build_pool(count: int, seed: int, cache: Path | None) -> list:
    if cache is not None and cache.exists():
        z = np.load(cache, allow_pickle=False)
        pool = [{"vol": z[f"vol{i}"], "les": z[f"les{i}"], "ves": z[f"ves{i}"]} for i in range(count)]
        print(f"pool: {count} volumes from {cache}")
    else:
        t0 = time.time()
        pool = []
        for i in range(count):
            pool.append(prepare(vg.make_volume(seed * 100003 + i)))
            if (i + 1) % 50 == 0:
                print(f"  pool {i + 1}/{count} ({time.time() - t0:.0f} s)", flush=True)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            arrs = {}
            for i, it in enumerate(pool):
                arrs[f"vol{i}"], arrs[f"les{i}"], arrs[f"ves{i}"] = it["vol"], it["les"], it["ves"]
            np.savez(cache, **arrs)
        print(f"pool: {count} volumes generated in {time.time() - t0:.0f} s")
    for it in pool:
        it["objs"] = objects_of(it)
    return pool


# ---------------------------------------------------------------------------------------------
# sampling


def _choice(rng, probs):
    return int(rng.choice(len(probs), p=probs))


def _clicks(rng, item, obj, lo_zyx=None, hi_zyx=None):
    """Positive and negative click voxels (z,y,x) for `obj`; within [lo, hi) when given."""
    def inside(a):
        if lo_zyx is None:
            return a
        ok = np.all((a >= lo_zyx) & (a < hi_zyx), axis=1)
        return a[ok]

    cand = inside(obj["inner"])
    if len(cand) == 0:
        cand = inside(obj["vox"])
    if len(cand) == 0:
        return None
    core = inside(obj["core"])
    if len(core) and rng.random() < 0.5:  # half the first clicks deep inside, as people click
        first = core[rng.integers(len(core))].astype(np.int64)
    else:
        first = cand[rng.integers(len(cand))].astype(np.int64)
    npos = 1 + _choice(rng, [0.7, 0.2, 0.1])
    nneg = min(_choice(rng, [0.6, 0.25, 0.15]), N - npos)
    near = cand[np.abs(cand.astype(np.int64) - first).max(1) <= 10]
    pos = [first] + [near[rng.integers(len(near))].astype(np.int64) for _ in range(npos - 1)]
    neg = []
    target = (item["les"] == obj["id"]) if obj["kind"] == "lesion" else (item["ves"] == obj["id"])
    for _ in range(nneg):
        others = [o for o in item["objs"] if not (o["kind"] == obj["kind"] and o["id"] == obj["id"])]
        pick = None
        if others and rng.random() < 0.5:
            o = others[rng.integers(len(others))]
            c = o["vox"][np.abs(o["vox"].astype(np.int64) - first).max(1) <= 16]
            c = inside(c)
            if len(c):
                pick = c[rng.integers(len(c))].astype(np.int64)
        if pick is None:
            for _try in range(20):
                q = first + rng.integers(-14, 15, size=3)
                if np.all(q >= 0) and np.all(q < target.shape) and not target[tuple(q)]:
                    if lo_zyx is None or (np.all(q >= lo_zyx) and np.all(q < hi_zyx)):
                        pick = q
                        break
        if pick is not None:
            neg.append(pick)
    return pos, neg


def _target(item, obj, start_zyx):
    lab = item["les"] if obj is None or obj["kind"] == "lesion" else item["ves"]
    if obj is None:
        m = (lab > 0).astype(np.float32)
    else:
        m = (lab == obj["id"]).astype(np.float32)
    return sc.crop(m, [start_zyx[2], start_zyx[1], start_zyx[0]], P, fill=0.0)


def sample_block(rng, item, k: int, p_noclick: float, p_vessel: float = 0.1, p_noclick2: float = 0.1):
    """(patch [P,P,P], coords [k,N,3] (x,y,z), labels [k,N], targets [k,P,P,P])."""
    objs = item["objs"]
    shape = np.array(item["vol"].shape)
    lesions = [o for o in objs if o["kind"] == "lesion"]
    vessels = [o for o in objs if o["kind"] == "vessel"]
    prompts = []  # (obj or None, pos list, neg list) in volume zyx
    if rng.random() < p_noclick or not objs:
        if lesions and rng.random() < 0.5:
            o = lesions[rng.integers(len(lesions))]
            c = o["vox"].mean(0) + rng.uniform(-P / 3, P / 3, size=3)
        else:
            c = rng.uniform(0, shape)
        start = np.round(c).astype(np.int64) - P // 2
        prompts.append((None, [], []))
    else:
        obj = vessels[rng.integers(len(vessels))] if (vessels and rng.random() < p_vessel) else \
            (lesions[rng.integers(len(lesions))] if lesions else objs[rng.integers(len(objs))])
        pos, neg = _clicks(rng, item, obj)
        pts = np.array(pos + neg, dtype=np.float64) + rng.uniform(-0.5, 0.5, size=(len(pos) + len(neg), 3))
        start = np.round(pts.mean(0)).astype(np.int64) - P // 2
        if rng.random() < 0.3:
            start = start + rng.integers(-3, 4, size=3)
        prompts.append((obj, pts[: len(pos)], pts[len(pos):]))
    lo, hi = start, start + P
    for _ in range(k - 1):
        present = []
        for o in objs:
            inb = np.all((o["vox"] >= lo) & (o["vox"] < hi), axis=1).sum()
            if inb >= 6:
                present.append(o)
        if present and rng.random() < 1.0 - p_noclick2:
            o = present[rng.integers(len(present))]
            r = _clicks(rng, item, o, lo, hi)
            if r is not None:
                pos, neg = r
                pts = np.array(pos + neg, dtype=np.float64) + rng.uniform(-0.5, 0.5, size=(len(pos) + len(neg), 3))
                prompts.append((o, pts[: len(pos)], pts[len(pos):]))
                continue
        prompts.append((None, [], []))
    start_xyz = [int(start[2]), int(start[1]), int(start[0])]
    patch = sc.crop(item["vol"].astype(np.float32), start_xyz, P, fill=float(item["vol"].min()))
    coords = np.zeros((k, N, 3), dtype=np.float32)
    labels = np.full((k, N), -1.0, dtype=np.float32)
    targets = np.zeros((k, P, P, P), dtype=np.float32)
    for j, (obj, pos, neg) in enumerate(prompts):
        targets[j] = _target(item, obj, start)
        for n, (pt, lb) in enumerate([(p, 1.0) for p in pos] + [(p, 0.0) for p in neg]):
            zyx = np.asarray(pt, dtype=np.float64) - start
            coords[j, n] = [zyx[2], zyx[1], zyx[0]]
            labels[j, n] = lb
    return patch, coords, labels, targets


def augment(rng, patch, coords, labels, targets):
    """Random flips and axis permutations (patch is [z,y,x]; coords are (x,y,z)), mild gamma."""
    perm = rng.permutation(3)  # new array axis a takes old axis perm[a]
    patch = np.transpose(patch, perm)
    targets = np.transpose(targets, (0, *(perm + 1)))
    # coords in array-axis order (z,y,x)
    cz = coords[..., ::-1]
    cz = cz[..., perm]
    for a in range(3):
        if rng.random() < 0.5:
            patch = np.flip(patch, a)
            targets = np.flip(targets, a + 1)
            cz[..., a] = (P - 1) - cz[..., a]
    coords = np.ascontiguousarray(cz[..., ::-1])
    pad = labels < -0.5
    coords[pad] = 0.0
    if rng.random() < 0.3:
        patch = np.clip(patch, 0, 1) ** rng.uniform(0.7, 1.4)
    return np.ascontiguousarray(patch), coords, labels, np.ascontiguousarray(targets)


def make_batch(rng, pool, batch, k, p_noclick):
    ps, cs, ls, ts = [], [], [], []
    for _ in range(batch):
        item = pool[rng.integers(len(pool))]
        p, c, l, t = augment(rng, *sample_block(rng, item, k, p_noclick))
        ps.append(p)
        cs.append(c)
        ls.append(l)
        ts.append(t)
    return (torch.from_numpy(np.stack(ps)[:, None]), torch.from_numpy(np.concatenate(cs)),
            torch.from_numpy(np.concatenate(ls)), torch.from_numpy(np.concatenate(ts)[:, None]))


def loss_fn(low, target):
    up = sc.upsample_logits(low, P)
    bce = F.binary_cross_entropy_with_logits(up, target)
    p = torch.sigmoid(up)
    dims = (1, 2, 3, 4)
    inter = (p * target).sum(dims)
    den = p.sum(dims) + target.sum(dims)
    dice = 1 - (2 * inter + 1.0) / (den + 1.0)
    return bce + dice.mean(), up


# ---------------------------------------------------------------------------------------------
# evaluation


def _interior_xyz(mask_zyx, spacing=(1.0, 1.0, 1.0)):
    z, y, x = vg.interior_point(mask_zyx, spacing)
    return [x, y, z]


def evaluate(model, heldout_seeds, fixtures_dir: Path | None, log=print) -> dict:
    model.eval()
    sc.FUSED_ATTENTION = True
    pred = sc.torch_predictor(model)
    grid_les, grid_ves, rt_les, slide_grid, slide_rt = [], [], [], [], []
    by_mod = {"CT": [], "US": []}
    t0 = time.time()
    for seed in heldout_seeds:
        v = vg.make_volume(seed)
        item = prepare(v)
        vol = item["vol"].astype(np.float32)
        for i in range(1, int(item["les"].max()) + 1):
            m = item["les"] == i
            if m.sum() < 4:
                continue
            pt = _interior_xyz(m)
            logits = pred.click(vol, [pt], [1])
            d = sc.dice(logits > 0, m)
            grid_les.append(d)
            by_mod[v.modality].append(d)
        for i in range(1, int(item["ves"].max()) + 1):
            m = item["ves"] == i
            if m.sum() < 4:
                continue
            pt = _interior_xyz(m)
            logits = pred.click(vol, [pt], [1])
            inpatch = logits > -1e3
            grid_ves.append(sc.dice((logits > 0) & inpatch, m & inpatch))
        # runtime path on the input grid
        for i in range(1, int(v.lesions.max()) + 1):
            m = v.lesions == i
            pt = vg.interior_point(m, v.spacing)
            out = sc.runtime_click_mask(pred, v.data, v.spacing, [pt])
            rt_les.append(sc.dice(out, m))
        prob = pred.sliding(vol)
        slide_grid.append(sc.dice(prob > 0.5, item["les"] > 0))
        back = sc.resample(prob, (v.shape[2], v.shape[1], v.shape[0]))
        slide_rt.append(sc.dice(np.transpose(back > 0.5, (2, 1, 0)), v.lesions > 0))
    res = {
        "heldout_volumes": len(heldout_seeds),
        "dice_1click_grid_lesion": float(np.mean(grid_les)),
        "dice_1click_grid_lesion_ct": float(np.mean(by_mod["CT"])) if by_mod["CT"] else None,
        "dice_1click_grid_lesion_us": float(np.mean(by_mod["US"])) if by_mod["US"] else None,
        "lesions": len(grid_les),
        "dice_1click_grid_vessel_in_patch": float(np.mean(grid_ves)) if grid_ves else None,
        "vessels": len(grid_ves),
        "dice_1click_runtime_lesion": float(np.mean(rt_les)),
        "dice_noclick_sliding_grid": float(np.mean(slide_grid)),
        "dice_noclick_sliding_runtime": float(np.mean(slide_rt)),
    }
    if fixtures_dir is not None and (fixtures_dir / "samples.jsonl").exists():
        import nibabel as nib

        ds = []
        for line in (fixtures_dir / "samples.jsonl").read_text().splitlines():
            s = json.loads(line)
            img = nib.load(str(fixtures_dir / s["volume"]))
            data = img.get_fdata(dtype=np.float32)
            m = np.asarray(nib.load(str(fixtures_dir / s["mask"])).dataobj) > 0
            out = sc.runtime_click_mask(pred, data, tuple(float(z) for z in img.header.get_zooms()[:3]), s["points"])
            ds.append(sc.dice(out, m))
        res["dice_fixture_eval_runtime"] = float(np.mean(ds))
        res["dice_fixture_eval_each"] = [round(d, 4) for d in ds]
    res["eval_seconds"] = round(time.time() - t0, 1)
    log(json.dumps(res))
    return res


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool-count", type=int, default=300)
    ap.add_argument("--pool-seed", type=int, default=1)
    ap.add_argument("--heldout-count", type=int, default=30)
    ap.add_argument("--heldout-seed", type=int, default=999)
    ap.add_argument("--batch", type=int, default=2, help="blocks per step")
    ap.add_argument("--prompts", type=int, default=3, help="prompts per block")
    ap.add_argument("--p-noclick", type=float, default=0.2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--steps", type=int, default=100000, help="upper bound on steps")
    ap.add_argument("--time-budget", type=float, default=14.5, help="minutes of training (the schedule follows the clock)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fixtures", default=str(sc.REPO_DIR / "tests/fixtures/volumes/eval"))
    ap.add_argument("--out", default=str(sc.CACHE_DIR / "ckpt.pt"))
    ap.add_argument("--eval-only", default=None, help="evaluate this checkpoint and exit")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    heldout = [args.heldout_seed * 100003 + i for i in range(args.heldout_count)]
    fixtures = Path(args.fixtures) if args.fixtures else None
    if args.eval_only:
        model, _ = sc.load_checkpoint(args.eval_only)
        evaluate(model, heldout, fixtures)
        return

    pool = build_pool(args.pool_count, args.pool_seed, sc.CACHE_DIR / (
        f"pool-s{args.pool_seed}-n{args.pool_count}-sp{sc.SPACING}-{_generator_tag()}.npz"))
    model = sc.Sam3D()
    nparams = sc.count_parameters(model)
    print(f"parameters: {nparams:,} (encoder {sc.count_parameters(model.encoder):,}, "
          f"decoder {sc.count_parameters(model.decoder):,}); patch {P}^3 at {sc.SPACING} mm")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    budget = args.time_budget * 60
    t0 = time.time()
    step = 0
    hist = []
    while step < args.steps:
        el = time.time() - t0
        if el >= budget:
            break
        frac = el / budget
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.5 * (1 + math.cos(math.pi * frac)) * 0.95 + 0.05)
        for g in opt.param_groups:
            g["lr"] = lr
        vol, coords, labels, target = make_batch(rng, pool, args.batch, args.prompts, args.p_noclick)
        model.train()
        emb = model.encoder(vol).repeat_interleave(args.prompts, 0)
        low = model.decoder(emb, coords, labels)
        loss, up = loss_fn(low, target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            pr = up > 0
            t = target > 0.5
            inter = (pr & t).sum((1, 2, 3, 4)).float()
            den = (pr.sum((1, 2, 3, 4)) + t.sum((1, 2, 3, 4))).float()
            d = torch.where(den > 0, 2 * inter / den.clamp(min=1), torch.ones_like(den)).mean().item()
        hist.append((loss.item(), d))
        step += 1
        if step % 25 == 0:
            l_, d_ = np.mean(hist[-25:], axis=0)
            print(f"step {step} {el / 60:.1f} min lr {lr:.2e} loss {l_:.4f} batch dice {d_:.3f}", flush=True)
    train_min = (time.time() - t0) / 60
    print(f"trained {step} steps ({step * args.batch} blocks, {step * args.batch * args.prompts} prompts) in {train_min:.1f} min")
    res = evaluate(model, heldout, fixtures)
    desc = (
        f"Demo SAM-3D adapter model ({nparams / 1e6:.2f} M parameters: 3-D ViT patch encoder "
        f"{sc.CONFIG['depth']}x{sc.CONFIG['width']} on {P // sc.CONFIG['token_patch']}^3 tokens of a {P}^3 patch at "
        f"{sc.SPACING} mm with conv stem and depthwise-3-D-conv bottleneck adapters, SAM-like two-way prompt decoder, "
        f"{P // 2}^3 logits) trained from scratch on CPU for {train_min:.0f} min ({step} steps of {args.batch} blocks x "
        f"{args.prompts} prompts) on {args.pool_count} synthetic CT-like and ultrasound-like volumes from "
        f"models/tools/volumes.py (ellipsoid lesions, curved vessels). Held-out Dice ({args.heldout_count} volumes, "
        f"{res['lesions']} lesions, 1 click at the lesion's innermost voxel): {res['dice_1click_grid_lesion']:.3f} "
        f"on the model grid, {res['dice_1click_runtime_lesion']:.3f} through the runtime path on the input grids; "
        f"no click, sliding windows, all lesions: {res['dice_noclick_sliding_runtime']:.3f}. "
        f"A demonstration model for synthetic phantoms only, not for clinical images."
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "config": sc.CONFIG, "patch": P, "spacing": sc.SPACING,
                "steps": step, "train_minutes": train_min, "args": vars(args), "figures": res,
                "parameters": nparams, "description": desc}, out)
    print(desc)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
