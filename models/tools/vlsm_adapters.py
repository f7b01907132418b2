"""VLSM-Adapter for the phantom CLIPSeg: a frozen base (models/clipseg-phantom) and small
per-task adapters kept as separate files. The adapted graphs take every adapter weight as a graph
INPUT named `adapter.<path>.<i>.<param>`, so switching task swaps tensors without reloading the
base graphs (package models/clipseg-phantom-adapters/).

Adapters (bottleneck: x + relu(x @ down + down_bias) @ up + up_bias, `up` zero at init, so an
all-zero adapter is exactly the base):
  vision  adapter.vision.<i>.*  on the ViT hidden state i (all 65 tokens, 64 -> r -> 64): i = 0 the
                                patch + position embeddings after the pre-layer-norm, i = 1..4 the
                                output of block i - 1; the decoder taps the adapted states 2..4
                                (extract layers 1..3)
  text    adapter.text.0.*      after the last text block (all 77 tokens, before the final
                                layer norm), 32 -> r -> 32
          adapter.text.1.*      on the projected prompt embedding (conditional_embeddings), 64 -> r -> 64
  cond    adapter.cond.0.*      FiLM correction on the decoder's conditioning: z = relu(c @ down +
                                down_bias); film_mul(c) += z @ up_mul + up_mul_bias, film_add(c) +=
                                z @ up_add + up_add_bias
The text graph takes the text adapter inputs, the image graph the vision and cond ones. An
adapter file `adapters/<name>.bin` is the concatenation, in lexicographic (byte) order of the
adapter input names over all graphs, of each tensor as f32 little-endian, row-major.

The base weights are recovered from the committed ONNX graphs of models/clipseg-phantom (the
training checkpoint is not kept): named initializers load by name; the exporter's anonymous
MatMul weights (val_N, stored [in, out]) are matched through the bias their MatMul feeds; the
folded position embeddings and class embedding by shape. The recovered model is checked against
onnxruntime on a phantom frame + prompt. (vision post_layernorm, visual_projection and
logit_scale are not in the graphs and do not reach the logits; they keep their initial values.)

Tasks (TASKS): a structure class seen through a device the base was not trained on; the frames
are `edgeseg phantoms` frames through a fixed deterministic appearance change (device_transform),
masks and prompts unchanged:
  lesion-lowgain  ultrasound lesions, low gain (x0.5) with multiplicative speckle
  polyp-nbi       endoscopy polyps in narrow-band-imaging-like colour, (R, G, B) -> (G, B, B)
(Plain in-domain specialisation, ultrasound lesions at P1 on clean frames, did not move the
held-out Dice: base 0.860, adapted 0.856 after 1000 steps; the base is at its resolution limit
there.) Training: the base frozen, only the adapter tensors learn; BCE + soft Dice
(train_vlsm.loss_fn), AdamW, warm-up + cosine, one prompt level P1..P9 at random per sample.

Subcommands (in this order; offline; deterministic for a given seed and thread count as long as
the training time budget is not reached; 1 thread by default):
  recover    rebuild the base from the ONNX graphs, check it (saves .cache/vlsm-adapters/base.pt
             and recovery.json for inspection; the other subcommands recover again, ~2 s)
  train      train one adapter (--task) with the base frozen; held-out Dice base vs adapted;
             .cache/vlsm-adapters/adapters/<task>.pt + .json
  frames     each task's held-out device frames (PNG + masks + samples.jsonl, one modality) in
             .cache/vlsm-adapters/frames/<task>/, for `edgeseg eval` / `segment`
  package    export the text/image graphs with adapter inputs, write models/clipseg-phantom-adapters/
             (graphs, tokenizer.json, adapters/{base,<task>}.bin, model.toml)
  fixtures   parity cases tests/fixtures/parity/clipseg-phantom-adapters/: per adapter a text and an
             image case (that adapter's tensors as inputs; its task's first held-out device frame and
             P1 prompt; `base` the first clean round ultrasound lesion)
  reference  per adapter, onnxruntime mask area (and Dice) for each task's example frame + prompt
             (or --image/--mask/--prompt), held-out Dice through onnxruntime, and the time of a run
             with a swapped adapter vs the same adapter

  E=target/release/edgeseg; C=models/tools/.cache/vlsm-adapters
  $E phantoms --out $C/phantoms/train --count 6000 --seed 11 --size 128x128
  $E phantoms --out $C/phantoms/heldout --count 200 --seed 999 --size 128x128
  cd models/tools
  nice -n 5 python vlsm_adapters.py recover
  nice -n 5 python vlsm_adapters.py train --task lesion-lowgain
  nice -n 5 python vlsm_adapters.py train --task polyp-nbi
  python vlsm_adapters.py frames
  python vlsm_adapters.py package
  python vlsm_adapters.py fixtures
  python vlsm_adapters.py reference [--image IMG --mask MASK --prompt TEXT]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vlsm_common as vc  # noqa: E402

BASE_PACKAGE = vc.REPO_DIR / "models/clipseg-phantom"
PACKAGE_NAME = "clipseg-phantom-adapters"
CACHE = vc.CACHE_DIR / "vlsm-adapters"
OPSET = 17
RANK = 8  # bottleneck width of every adapter

# Tasks: a structure class seen through a device the base was not trained on. The frames are the
# runtime's phantoms (`edgeseg phantoms`) with a fixed, deterministic appearance change
# (`device_transform`); the structures, masks and prompts are unchanged. Training draws a prompt
# level P1..P9 per sample; the headline held-out score is at P1 (the bare class word).
TASKS = {
    "lesion-lowgain": dict(
        cls="ultrasound/lesion", transform="lowgain", train_levels=[f"P{i}" for i in range(1, 10)], eval_levels=["P1"],
        description="ultrasound lesions on a low-gain, high-speckle scanner (phantom frames x0.5 with "
                    "multiplicative speckle 1 + 0.35 N(0, 1))"),
    "polyp-nbi": dict(
        cls="endoscopy/polyp", transform="nbi", train_levels=[f"P{i}" for i in range(1, 10)], eval_levels=["P1"],
        description="endoscopy polyps in narrow-band-imaging colour (NBI-like display: R <- G, G <- B, B <- B)"),
}


def device_transform(images: torch.Tensor, kind: str, seed: int) -> torch.Tensor:
    """uint8 [N, 3, H, W] RGB frames -> the same frames as the task's device shows them.
    lowgain: grey level x 0.5 times speckle (1 + 0.35 n), n ~ N(0, 1) per pixel (one draw per frame,
             from `seed` and the frame's position), same on the three channels;
    nbi:     (R, G, B) -> (G, B, B)."""
    if kind == "none":
        return images
    if kind == "nbi":
        return images[:, [1, 2, 2]].contiguous()
    if kind == "lowgain":
        g = torch.Generator().manual_seed(seed)
        n = torch.randn(images.shape[0], 1, images.shape[2], images.shape[3], generator=g)
        x = images.float() * 0.5 * (1 + 0.35 * n)
        return x.round().clamp(0, 255).to(torch.uint8)
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------------
# Base recovery


def recover_base(pkg: Path = BASE_PACKAGE):
    """A vlsm_common.build_model() model holding the weights of the package's text and image
    graphs. Returns (model, report)."""
    import onnx
    from onnx import numpy_helper

    model = vc.build_model().eval()
    sd = model.state_dict()
    loaded: dict[str, np.ndarray] = {}
    anonymous = {}
    for fname in ("text-f32.onnx", "image-f32.onnx"):
        g = onnx.load(str(pkg / fname)).graph
        inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        for name, arr in inits.items():
            if name.startswith("model."):
                key = name.removeprefix("model.")
                if key in sd:
                    loaded[key] = arr
        # MatMul(x, W[in, out]) -> Add(., <module>.bias): W.T is <module>.weight.
        for n in g.node:
            if n.op_type != "MatMul" or n.input[1] not in inits or n.input[1].startswith("model."):
                continue
            adds = [c for c in consumers.get(n.output[0], []) if c.op_type == "Add"]
            biases = [i for c in adds for i in c.input if i.startswith("model.") and i.endswith(".bias")]
            if len(biases) != 1:
                raise SystemExit(f"{fname}: cannot place MatMul weight {n.input[1]}")
            key = biases[0].removeprefix("model.").removesuffix(".bias") + ".weight"
            loaded[key] = inits[n.input[1]].T.copy()
            anonymous[n.input[1] + "@" + fname] = key
        # Folded constants: the gathered position embeddings, the expanded class embedding.
        for name, arr in inits.items():
            if name.startswith("model."):
                continue
            if fname.startswith("text") and arr.shape == (1, vc.CONTEXT_LENGTH, model.config.text_config.hidden_size) \
                    and arr.dtype == np.float32:
                loaded["clip.text_model.embeddings.position_embedding.weight"] = arr[0]
                anonymous[name + "@" + fname] = "clip.text_model.embeddings.position_embedding.weight"
            npos = model.clip.vision_model.embeddings.num_positions
            hid = model.config.vision_config.hidden_size
            if fname.startswith("image") and arr.shape == (1, npos, hid):
                loaded["clip.vision_model.embeddings.position_embedding.weight"] = arr[0]
                anonymous[name + "@" + fname] = "clip.vision_model.embeddings.position_embedding.weight"
            if fname.startswith("image") and arr.shape == (1, 1, hid):
                loaded["clip.vision_model.embeddings.class_embedding"] = arr[0, 0]
                anonymous[name + "@" + fname] = "clip.vision_model.embeddings.class_embedding"
    new_sd = {}
    for k, v in sd.items():
        if k in loaded:
            if tuple(loaded[k].shape) != tuple(v.shape):
                raise SystemExit(f"{k}: ONNX shape {loaded[k].shape} vs model {tuple(v.shape)}")
            new_sd[k] = torch.from_numpy(np.array(loaded[k], dtype=np.float32))
        else:
            new_sd[k] = v
    model.load_state_dict(new_sd)
    model.eval()
    missing = sorted(k for k in sd if k not in loaded)
    return model, {"loaded": len(loaded), "anonymous": anonymous, "not_in_graphs": missing}


# ---------------------------------------------------------------------------------------------
# Adapter layout


def adapter_layout(model, rank: int = RANK) -> dict[str, "OrderedDict[str, tuple]"]:
    """{"text": {name: shape}, "image": {name: shape}}: the adapter inputs of each graph."""
    tv = model.config.text_config.hidden_size
    vv = model.config.vision_config.hidden_size
    proj = model.config.projection_dim

    def bottleneck(prefix, d):
        return [(f"{prefix}.down", (d, rank)), (f"{prefix}.down_bias", (rank,)),
                (f"{prefix}.up", (rank, d)), (f"{prefix}.up_bias", (d,))]

    text = bottleneck("adapter.text.0", tv) + bottleneck("adapter.text.1", proj)
    image = []
    for i in range(model.config.vision_config.num_hidden_layers + 1):
        image += bottleneck(f"adapter.vision.{i}", vv)
    image += [("adapter.cond.0.down", (proj, rank)), ("adapter.cond.0.down_bias", (rank,)),
              ("adapter.cond.0.up_add", (rank, model.config.reduce_dim)),
              ("adapter.cond.0.up_add_bias", (model.config.reduce_dim,)),
              ("adapter.cond.0.up_mul", (rank, model.config.reduce_dim)),
              ("adapter.cond.0.up_mul_bias", (model.config.reduce_dim,))]
    return {"text": OrderedDict(text), "image": OrderedDict(image)}


def all_names(layout) -> list[str]:
    """Every adapter input name once, in the lexicographic order of the adapter files."""
    shapes = {}
    for g in layout.values():
        for n, s in g.items():
            if n in shapes and shapes[n] != s:
                raise ValueError(f"{n}: shapes differ between graphs")
            shapes[n] = s
    return sorted(shapes)


def flat_shapes(layout) -> dict[str, tuple]:
    return {n: s for g in layout.values() for n, s in g.items()}


def init_adapter(layout, seed: int) -> dict[str, torch.Tensor]:
    """Down projections ~ N(0, 1/fan_in), everything else (up projections, biases) zero: the
    adapter starts as the identity."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n, s in flat_shapes(layout).items():
        if n.endswith(".down"):
            out[n] = torch.randn(*s, generator=g) / math.sqrt(s[0])
        else:
            out[n] = torch.zeros(*s)
    return out


def zero_adapter(layout) -> dict[str, torch.Tensor]:
    return {n: torch.zeros(*s) for n, s in flat_shapes(layout).items()}


def save_adapter_bin(path: Path, tensors: dict, layout) -> None:
    shapes = flat_shapes(layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for n in all_names(layout):
            a = np.ascontiguousarray(tensors[n].detach().cpu().numpy() if torch.is_tensor(tensors[n]) else tensors[n],
                                     dtype="<f4")
            if a.shape != tuple(shapes[n]):
                raise ValueError(f"{n}: shape {a.shape} vs layout {shapes[n]}")
            f.write(a.tobytes())


def count_by_path(layout) -> dict[str, int]:
    out: dict[str, int] = {}
    for n, s in flat_shapes(layout).items():
        path = n.split(".")[1]
        out[path] = out.get(path, 0) + int(np.prod(s))
    return out


# ---------------------------------------------------------------------------------------------
# Adapted forward passes (the base's modules, with the adapters in between)


def _bottleneck(x, a, prefix):
    z = torch.relu(torch.matmul(x, a[f"{prefix}.down"]) + a[f"{prefix}.down_bias"])
    return x + torch.matmul(z, a[f"{prefix}.up"]) + a[f"{prefix}.up_bias"]


def text_embed(model, input_ids, attention_mask, a):
    """input_ids, attention_mask -> conditional_embeddings [B, proj] (= get_text_features when
    the adapter is zero)."""
    from transformers.masking_utils import create_causal_mask

    tm = model.clip.text_model
    h = tm.embeddings(input_ids=input_ids)
    mask = create_causal_mask(config=tm.config, inputs_embeds=h, attention_mask=attention_mask, past_key_values=None)
    for layer in tm.encoder.layers:
        h = layer(h, mask)
    h = _bottleneck(h, a, "adapter.text.0")
    h = tm.final_layer_norm(h)
    eos = (input_ids.to(torch.int) == tm.eos_token_id).int().argmax(dim=-1)
    pooled = h[torch.arange(h.shape[0]), eos]
    e = model.clip.text_projection(pooled)
    return _bottleneck(e, a, "adapter.text.1")


def image_logits(model, pixel_values, conditional_embeddings, a):
    """pixel_values [B,3,S,S], conditional_embeddings [B,proj] -> logits [B,S,S] (= the Hugging
    Face forward when the adapter is zero)."""
    vm = model.clip.vision_model
    h = vm.embeddings(pixel_values, interpolate_pos_encoding=False)
    h = vm.pre_layrnorm(h)
    h = _bottleneck(h, a, "adapter.vision.0")
    hidden = [h]
    for i, layer in enumerate(vm.encoder.layers):
        h = layer(h, None)
        h = _bottleneck(h, a, f"adapter.vision.{i + 1}")
        hidden.append(h)
    acts = [hidden[i + 1] for i in model.extract_layers][::-1]
    d = model.decoder
    c = conditional_embeddings
    out = None
    for i, (act, layer, reduce) in enumerate(zip(acts, d.layers, d.reduces)):
        out = reduce(act) if out is None else reduce(act) + out
        if i == d.conditional_layer:
            z = torch.relu(torch.matmul(c, a["adapter.cond.0.down"]) + a["adapter.cond.0.down_bias"])
            mul = d.film_mul(c) + torch.matmul(z, a["adapter.cond.0.up_mul"]) + a["adapter.cond.0.up_mul_bias"]
            add = d.film_add(c) + torch.matmul(z, a["adapter.cond.0.up_add"]) + a["adapter.cond.0.up_add_bias"]
            out = mul.unsqueeze(1) * out + add.unsqueeze(1)
        out = layer(out, attention_mask=None)
    out = out[:, 1:, :].transpose(1, 2)
    size = int(math.sqrt(out.shape[2]))
    out = out.reshape(out.shape[0], out.shape[1], size, size)
    return d.transposed_convolution(out).squeeze(1)


class TextAdapterGraph(torch.nn.Module):
    """input_ids, attention_mask, adapter.text.* -> conditional_embeddings."""

    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, input_ids, attention_mask, *adapter):
        return text_embed(self.model, input_ids, attention_mask, dict(zip(self.names, adapter)))


class ImageAdapterGraph(torch.nn.Module):
    """pixel_values, conditional_embeddings, adapter.vision.* / adapter.cond.* -> logits."""

    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, pixel_values, conditional_embeddings, *adapter):
        return image_logits(self.model, pixel_values, conditional_embeddings, dict(zip(self.names, adapter)))


# ---------------------------------------------------------------------------------------------
# Data, evaluation and training


def _train_module():
    import train_vlsm  # PhantomSet, normalise, loss_fn

    return train_vlsm


def adapted_forward(model, data, lines, rows, a):
    tv = _train_module()
    px = tv.normalise(data.images[data.img_of[lines]])
    uniq, inverse = torch.unique(rows, return_inverse=True)
    emb = text_embed(model, data.ids[uniq], data.am[uniq], a)[inverse]
    return image_logits(model, px, emb, a)


def level_index(level: str) -> int:
    return int(level[1:]) - 1  # PhantomSet keeps P1..P9 in order


def task_pairs(data, cls: str | None, levels: list[str]) -> list[tuple[int, int]]:
    """(line, prompt row) for every line of class `cls` (None: all) at every level."""
    out = []
    for i, c in enumerate(data.classes):
        if cls is not None and c != cls:
            continue
        if len(data.prompts[i]) != 9:
            raise SystemExit(f"line {i}: expected prompt levels P1..P9")
        for lv in levels:
            out.append((i, data.prompt_row[data.prompts[i][level_index(lv)]]))
    return out


@torch.no_grad()
def evaluate(model, data, pairs, a, batch: int = 64) -> float:
    """Mean Dice (mask = logit > 0) over (line, prompt row) pairs."""
    ds = []
    for k in range(0, len(pairs), batch):
        chunk = pairs[k:k + batch]
        lines = torch.tensor([p[0] for p in chunk])
        rows = torch.tensor([p[1] for p in chunk])
        pred = adapted_forward(model, data, lines, rows, a) > 0
        gt = data.masks[lines]
        inter = (pred & gt).sum((1, 2)).float()
        denom = (pred.sum((1, 2)) + gt.sum((1, 2))).float()
        ds += torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.ones_like(denom)).tolist()
    return float(np.mean(ds))


def report_dice(model, held, task: str, a, clean_images: torch.Tensor) -> dict:
    """Held-out Dice: on the task (its class, device frames, at its eval levels), on its class at
    every level, on every class at every level on the device frames, and on the task with the
    clean phantom frames (held.images holds the device frames; clean_images the originals)."""
    t = TASKS[task]
    levels = [f"P{i}" for i in range(1, 10)]
    out = {"task": evaluate(model, held, task_pairs(held, t["cls"], t["eval_levels"]), a),
           "class_all_levels": evaluate(model, held, task_pairs(held, t["cls"], levels), a)}
    for cls in sorted(set(held.classes)):
        out[cls] = evaluate(model, held, task_pairs(held, cls, levels), a)
    device = held.images
    held.images = clean_images
    try:
        out["task_clean_frames"] = evaluate(model, held, task_pairs(held, t["cls"], t["eval_levels"]), a)
    finally:
        held.images = device
    return out


def train_adapter(model, layout, train, task: str, steps: int, batch: int, lr: float, warmup: int,
                  seed: int, time_budget_min: float) -> tuple[dict, dict]:
    tv = _train_module()
    t = TASKS[task]
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    a = {n: v.clone().requires_grad_(True) for n, v in init_adapter(layout, seed).items()}
    opt = torch.optim.AdamW(list(a.values()), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    pairs = task_pairs(train, t["cls"], t["train_levels"])
    rng = np.random.default_rng(seed)
    print(f"task {task}: {len(pairs)} training pairs ({t['cls']}, {t['train_levels'][0]}..{t['train_levels'][-1]}, {t['transform']} frames), "
          f"{steps} steps of {batch}")

    budget_s = time_budget_min * 60 if time_budget_min > 0 else float("inf")

    def lr_at(step):
        # Warm-up, then cosine decay over whichever runs out first: the steps or the time budget
        # (as train_vlsm.py; deterministic when the budget is not reached).
        if step < warmup:
            return lr * (step + 1) / warmup
        t = max((step - warmup) / max(1, steps - warmup), (time.time() - t0) / budget_s)
        return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    t0 = time.time()
    order = np.array([], dtype=np.int64)
    running = []
    step = 0
    while step < steps:
        if len(order) < batch:
            order = np.concatenate([order, rng.permutation(len(pairs))])
        pick, order = order[:batch], order[batch:]
        lines = torch.tensor([pairs[j][0] for j in pick])
        rows = torch.tensor([pairs[j][1] for j in pick])
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = adapted_forward(model, train, lines, rows, a)
        loss = tv.loss_fn(logits, train.masks[lines].float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(a.values()), 1.0)
        opt.step()
        running.append(loss.item())
        step += 1
        if step % 50 == 0:
            print(f"step {step}/{steps} loss {np.mean(running):.4f} lr {lr_at(step):.2e} "
                  f"{(time.time() - t0) / 60:.1f} min", flush=True)
            running = []
        if time.time() - t0 > budget_s:
            print(f"time budget of {time_budget_min} min spent at step {step}; stopping")
            break
    info = {"steps": step, "planned_steps": steps, "batch": batch, "lr": lr, "warmup": warmup, "seed": seed,
            "minutes": (time.time() - t0) / 60, "train_pairs": len(pairs), "stopped_by_time_budget": step < steps}
    return {n: v.detach() for n, v in a.items()}, info


# ---------------------------------------------------------------------------------------------
# Export and package


def _graph_io(model, layout):
    L, S = vc.CONTEXT_LENGTH, vc.IMAGE_SIZE
    proj = model.config.projection_dim
    text_names = sorted(layout["text"])
    image_names = sorted(layout["image"])
    text_in = [("input_ids", "i64", [1, L]), ("attention_mask", "i64", [1, L])] + \
        [(n, "f32", list(layout["text"][n])) for n in text_names]
    image_in = [("pixel_values", "f32", [1, 3, S, S]), ("conditional_embeddings", "f32", [1, proj])] + \
        [(n, "f32", list(layout["image"][n])) for n in image_names]
    return {
        "text": dict(file="text-f32.onnx", names=text_names, inputs=text_in,
                     outputs=[("conditional_embeddings", "f32", [1, proj])]),
        "image": dict(file="image-f32.onnx", names=image_names, inputs=image_in,
                      outputs=[("logits", "f32", [1, S, S])]),
    }


def export_graphs(model, layout, out_dir: Path, sample: dict, adapter: dict, exporter: str) -> dict:
    """Exports the text and image graphs with adapter inputs; checks them against torch with
    `adapter` (a trained one) and with a zero adapter against the base package's graphs."""
    import onnx
    import onnxruntime as ort

    io = _graph_io(model, layout)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids, am, px = sample["input_ids"], sample["attention_mask"], sample["pixel_values"]
    with torch.no_grad():
        emb = text_embed(model, torch.from_numpy(ids), torch.from_numpy(am),
                         {n: torch.as_tensor(v) for n, v in adapter.items()}).numpy()
    args = {
        "text": (TextAdapterGraph(model, io["text"]["names"]),
                 [torch.from_numpy(ids), torch.from_numpy(am)] + [torch.as_tensor(adapter[n]) for n in io["text"]["names"]]),
        "image": (ImageAdapterGraph(model, io["image"]["names"]),
                  [torch.from_numpy(px), torch.from_numpy(emb)] + [torch.as_tensor(adapter[n]) for n in io["image"]["names"]]),
    }
    report = {}
    for role in ("text", "image"):
        module, a = args[role]
        module.eval()
        path = out_dir / io[role]["file"]
        in_names = [x[0] for x in io[role]["inputs"]]
        out_names = [x[0] for x in io[role]["outputs"]]
        kw = dict(input_names=in_names, output_names=out_names, opset_version=OPSET)
        if exporter == "dynamo":
            torch.onnx.export(module, tuple(a), str(path), dynamo=True, external_data=False, optimize=True, **kw)
        else:
            torch.onnx.export(module, tuple(a), str(path), dynamo=False, do_constant_folding=True, **kw)
        side = path.with_name(path.name + ".data")
        if side.exists():
            side.unlink()
        m = onnx.load(str(path))
        onnx.checker.check_model(m)
        got_in = [(v.name, [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim])
                  for v in m.graph.input]
        want_in = [(n, s) for n, _, s in io[role]["inputs"]]
        if got_in != want_in:
            raise SystemExit(f"{path.name}: inputs {got_in} != {want_in}")
        for v in m.graph.output:
            if any(not d.HasField("dim_value") for d in v.type.tensor_type.shape.dim):
                raise SystemExit(f"{path.name}: output {v.name} has a symbolic dimension")
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feeds = {n: t.numpy() for n, t in zip(in_names, a)}
        out = sess.run(None, feeds)[0]
        with torch.no_grad():
            ref = module(*a).numpy()
        ops = sorted({n.op_type for n in m.graph.node})
        report[role] = {"file": path.name, "bytes": path.stat().st_size,
                        "max_abs_err_vs_torch": float(np.abs(out - ref).max()), "max_abs_ref": float(np.abs(ref).max()),
                        "ops": ops}
        print(f"{path.name}: {path.stat().st_size / 1e6:.2f} MB, max |ort - torch| = "
              f"{report[role]['max_abs_err_vs_torch']:.2e} (max |out| {report[role]['max_abs_ref']:.1f})")
        print(f"  ops: {' '.join(ops)}")
    # Zero adapter == the base package's graphs.
    base_text = _session(BASE_PACKAGE / "text-f32.onnx")
    base_image = _session(BASE_PACKAGE / "image-f32.onnx")
    zero = {n: np.zeros(s, np.float32) for n, s in flat_shapes(layout).items()}
    text = _session(out_dir / io["text"]["file"])
    image = _session(out_dir / io["image"]["file"])
    e0 = base_text.run(None, {"input_ids": ids, "attention_mask": am})[0]
    e1 = text.run(None, {"input_ids": ids, "attention_mask": am, **{n: zero[n] for n in io["text"]["names"]}})[0]
    l0 = base_image.run(None, {"pixel_values": px, "conditional_embeddings": e0})[0]
    l1 = image.run(None, {"pixel_values": px, "conditional_embeddings": e0, **{n: zero[n] for n in io["image"]["names"]}})[0]
    report["zero_adapter_vs_base"] = {"text": float(np.abs(e1 - e0).max()), "image": float(np.abs(l1 - l0).max())}
    print(f"zero adapter vs {BASE_PACKAGE.name}: text {report['zero_adapter_vs_base']['text']:.2e}, "
          f"image {report['zero_adapter_vs_base']['image']:.2e}")
    return report


def _session(path: Path, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _toml_list(values) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _io_lines(items) -> str:
    rows = [f'  {{ name = "{n}", dtype = "{d}", shape = [{", ".join(str(x) for x in s)}] }},' for n, d, s in items]
    return "[\n" + "\n".join(rows) + "\n]"


def write_manifest(pkg: Path, model, layout, adapters: list[dict], description: str) -> None:
    base = (BASE_PACKAGE / "model.toml").read_text()
    import tomllib

    bm = tomllib.loads(base)
    io = _graph_io(model, layout)
    text = (
        f'name = "{PACKAGE_NAME}"\n'
        f'family = "vlsm"\n'
        f"description = {json.dumps(description)}\n\n"
        f"[input]\n"
        f"size = {_toml_list(bm['input']['size'])}\n"
        f"resize = {json.dumps(bm['input']['resize'])}\n"
        f"mean = {_toml_list(bm['input']['mean'])}\n"
        f"std = {_toml_list(bm['input']['std'])}\n\n"
        f"[output]\n"
        f"activation = {json.dumps(bm['output']['activation'])}\n"
        f"threshold = {bm['output']['threshold']}\n\n"
        f"[prompt]\n"
        f"tokenizer = {json.dumps(bm['prompt']['tokenizer'])}\n"
        f"context_length = {bm['prompt']['context_length']}\n"
        f"default = {json.dumps(bm['prompt']['default'])}\n"
    )
    for a in adapters:
        text += (
            f"\n[[adapter]]\n"
            f'name = "{a["name"]}"\n'
            f'file = "{a["file"]}"\n'
            f'sha256 = "{vc.sha256(pkg / a["file"])}"\n'
            f"description = {json.dumps(a['description'])}\n"
        )
    for role in ("text", "image"):
        g = io[role]
        text += (
            f"\n[[graph]]\n"
            f'role = "{role}"\n'
            f'precisions = ["f32", "f16"]\n'
            f'file = "{g["file"]}"\n'
            f'sha256 = "{vc.sha256(pkg / g["file"])}"\n'
            f"inputs = {_io_lines(g['inputs'])}\n"
            f"outputs = {_io_lines(g['outputs'])}\n"
        )
    (pkg / "model.toml").write_text(text)


# ---------------------------------------------------------------------------------------------
# Device frames on disk (what the runtime is given for a task)


def image_order(samples: list[dict]) -> list[str]:
    """Frame file names in PhantomSet's image order (first appearance in samples.jsonl)."""
    seen, out = set(), []
    for s in samples:
        if s["image"] not in seen:
            seen.add(s["image"])
            out.append(s["image"])
    return out


def write_device_frames(src: Path, dst: Path, kind: str, seed: int, modality: str) -> None:
    """The frames of one modality of a phantom folder as the task's device shows them: every frame
    goes through device_transform in PhantomSet order (the same tensors training and evaluation use
    for this seed), those of `modality` are written with their masks and samples.jsonl lines."""
    from PIL import Image

    samples = vc.read_samples(src)
    names = image_order(samples)
    frames = []
    for n in names:
        img = Image.open(src / n).convert("RGB")
        if img.size != (vc.IMAGE_SIZE, vc.IMAGE_SIZE):
            raise SystemExit(f"{src / n}: frames must be {vc.IMAGE_SIZE}x{vc.IMAGE_SIZE}")
        frames.append(np.asarray(img, dtype=np.uint8))
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()
    y = device_transform(x, kind, seed).permute(0, 2, 3, 1).numpy()
    dst.mkdir(parents=True, exist_ok=True)
    keep = [s for s in samples if s.get("modality") == modality]
    wanted = {s["image"] for s in keep}
    for n, f in zip(names, y):
        if n in wanted:
            Image.fromarray(f).save(dst / n)
    for s in keep:
        shutil.copyfile(src / s["mask"], dst / s["mask"])
    with open(dst / "samples.jsonl", "w") as f:
        for s in keep:
            f.write(json.dumps(s) + "\n")
    print(f"wrote {len(wanted)} {modality} frames ({kind}) and {len(keep)} samples to {dst}")


# ---------------------------------------------------------------------------------------------
# Parity fixtures and onnxruntime reference


def package_adapters(pkg: Path) -> tuple[dict, list[dict], dict]:
    """(manifest, [adapter entry + tensors], {role: graph entry}) of the adapter package."""
    import tomllib

    manifest = tomllib.loads((pkg / "model.toml").read_text())
    graphs = {g["role"]: g for g in manifest["graph"]}
    shapes = {}
    for g in manifest["graph"]:
        for i in g["inputs"]:
            if i["name"].startswith("adapter."):
                shapes[i["name"]] = tuple(i["shape"])
    names = sorted(shapes)
    out = []
    for a in manifest.get("adapter", []):
        raw = np.fromfile(pkg / a["file"], dtype="<f4")
        if vc.sha256(pkg / a["file"]) != a["sha256"]:
            raise SystemExit(f"{a['file']}: sha256 differs from model.toml")
        tensors, off = {}, 0
        for n in names:
            k = int(np.prod(shapes[n]))
            tensors[n] = raw[off:off + k].reshape(shapes[n]).astype(np.float32)
            off += k
        if off != raw.size:
            raise SystemExit(f"{a['file']}: {raw.size} floats, the graphs need {off}")
        out.append({**a, "tensors": tensors})
    return manifest, out, graphs


def graph_adapter_feeds(graph: dict, tensors: dict) -> dict:
    return {i["name"]: tensors[i["name"]] for i in graph["inputs"] if i["name"].startswith("adapter.")}


def task_example(task: str | None, heldout: Path) -> tuple[Path, Path, str]:
    """(frame, mask, P1 prompt) of the first held-out sample of the task's class, from the task's
    device frames (.cache/vlsm-adapters/frames/<task>/); task None: the first clean round
    ultrasound lesion (as make_references.py picks)."""
    if task is None:
        samples = vc.read_samples(heldout)
        s = next(s for s in samples if s.get("modality") == "ultrasound"
                 and (s.get("attributes") or {}).get("class") == "lesion"
                 and (s.get("attributes") or {}).get("shape") == "round")
        return heldout / s["image"], heldout / s["mask"], s["prompts"]["P1"]
    d = CACHE / "frames" / task
    if not (d / "samples.jsonl").exists():
        raise SystemExit(f"{d} missing: run `vlsm_adapters.py frames` first")
    samples = vc.read_samples(d)
    s = next(s for s in samples if vc.sample_class(s) == TASKS[task]["cls"])
    return d / s["image"], d / s["mask"], s["prompts"]["P1"]


def adapter_task(entry: dict) -> str | None:
    return entry["name"] if entry["name"] in TASKS else None


def _run_pair(text, image, graphs, tensors, ids, am, px):
    emb = text.run(None, {"input_ids": ids, "attention_mask": am, **graph_adapter_feeds(graphs["text"], tensors)})[0]
    logits = image.run(None, {"pixel_values": px, "conditional_embeddings": emb,
                              **graph_adapter_feeds(graphs["image"], tensors)})[0]
    return emb, logits


def cmd_fixtures(args) -> None:
    from PIL import Image
    from make_references import session, write_case

    pkg = Path(args.models_dir) / PACKAGE_NAME
    out_dir = Path(args.fixtures_dir) / PACKAGE_NAME
    manifest, adapters, graphs = package_adapters(pkg)
    tok = vc.load_tokenizer_json(pkg / manifest["prompt"]["tokenizer"])
    text = session(pkg / graphs["text"]["file"])
    image = session(pkg / graphs["image"]["file"])
    for a in adapters:
        task = adapter_task(a)
        frame, _, prompt = task_example(task, Path(args.heldout))
        ids, am = vc.tokenize(tok, [prompt])
        px = vc.preprocess_image(Image.open(frame))[None]
        emb, logits = _run_pair(text, image, graphs, a["tensors"], ids, am, px)
        where = f"phantom {frame.name} ({frame.parent.name}), 128x128, CLIP mean/std"
        write_case(out_dir, f"text-f32-{a['name']}", graphs["text"]["file"],
                   {"input_ids": ids, "attention_mask": am, **graph_adapter_feeds(graphs["text"], a["tensors"])},
                   {"conditional_embeddings": emb}, f"adapter {a['name']!r} ({a['file']}); prompt {prompt!r}")
        write_case(out_dir, f"image-f32-{a['name']}", graphs["image"]["file"],
                   {"pixel_values": px, "conditional_embeddings": emb,
                    **graph_adapter_feeds(graphs["image"], a["tensors"])},
                   {"logits": logits},
                   f"adapter {a['name']!r} ({a['file']}); {where}; conditional_embeddings = "
                   f"{graphs['text']['file']} output for {prompt!r} with the same adapter")
        print(f"  {a['name']}: {int((logits > 0).sum())} mask pixels at p > 0.5")


def cmd_reference(args) -> None:
    from PIL import Image

    pkg = Path(args.models_dir) / PACKAGE_NAME
    manifest, adapters, graphs = package_adapters(pkg)
    tok = vc.load_tokenizer_json(pkg / manifest["prompt"]["tokenizer"])
    text = _session(pkg / graphs["text"]["file"])
    image = _session(pkg / graphs["image"]["file"])
    if args.image:
        examples = [(Path(args.image), Path(args.mask) if args.mask else None, args.prompt or "lesion")]
    else:
        examples = [task_example(adapter_task(a), Path(args.heldout)) for a in adapters]
    print(f"package {pkg}; onnxruntime, 1 thread; mask = sigmoid(logits) > 0.5")
    inputs = []
    for frame, mask, prompt in examples:
        ids, am = vc.tokenize(tok, [prompt])
        px = vc.preprocess_image(Image.open(frame))[None]
        gt = vc.load_mask(mask) if mask is not None else None
        inputs.append((ids, am, px))
        head = f"{frame.parent.name}/{frame.name} + {prompt!r}"
        if gt is not None:
            head += f" (ground truth {int(gt.sum())} px)"
        print(head)
        for a in adapters:
            _, logits = _run_pair(text, image, graphs, a["tensors"], ids, am, px)
            pred = logits[0] > 0
            line = f"  adapter {a['name']:16s} mask area {int(pred.sum()):5d} px"
            if gt is not None:
                line += f", Dice {vc.dice(pred, gt > 0.5):.3f}"
            print(line)

    # Held-out Dice end to end (each task's device frames, its class, P1), every adapter.
    if not args.image and not args.no_heldout:
        for task in TASKS:
            d = CACHE / "frames" / task
            samples = [s for s in vc.read_samples(d) if vc.sample_class(s) == TASKS[task]["cls"]]
            row = []
            for a in adapters:
                ds = []
                for s in samples:
                    ids, am = vc.tokenize(tok, [s["prompts"]["P1"]])
                    px = vc.preprocess_image(Image.open(d / s["image"]))[None]
                    _, logits = _run_pair(text, image, graphs, a["tensors"], ids, am, px)
                    ds.append(vc.dice(logits[0] > 0, vc.load_mask(d / s["mask"]) > 0.5))
                row.append(f"{a['name']} {np.mean(ds):.3f}")
            print(f"held-out Dice, {task} frames ({len(samples)} x {TASKS[task]['cls']}, P1): " + ", ".join(row))

    # Timing: the same adapter every run vs a different adapter every run (tensors swapped), on
    # the first example's frame and prompt.
    if len(adapters) >= 2:
        ids, am, px = inputs[0]
        feeds = []
        pair = adapters[-2:]  # the two trained adapters
        for a in pair:
            emb = text.run(None, {"input_ids": ids, "attention_mask": am,
                                  **graph_adapter_feeds(graphs["text"], a["tensors"])})[0]
            feeds.append(({"input_ids": ids, "attention_mask": am, **graph_adapter_feeds(graphs["text"], a["tensors"])},
                          {"pixel_values": px, "conditional_embeddings": emb,
                           **graph_adapter_feeds(graphs["image"], a["tensors"])}))
        for _ in range(5):
            for tf, imf in feeds:
                text.run(None, tf)
                image.run(None, imf)

        def timed(sess, k, n, block=20):
            # Interleaved blocks (so load changes on the machine hit both alike): `block` runs with
            # the same adapter every run, then `block` runs alternating the two adapters.
            same, swap = [], []
            for b in range(max(1, n // block)):
                for j in range(block):
                    t0 = time.perf_counter()
                    sess.run(None, feeds[0][k])
                    same.append(time.perf_counter() - t0)
                for j in range(block):
                    t0 = time.perf_counter()
                    sess.run(None, feeds[(j + 1) % 2][k])
                    swap.append(time.perf_counter() - t0)
            return [(1e3 * float(np.median(v)), 1e3 * float(np.percentile(v, 10))) for v in (same, swap)]

        n = args.repeats
        names = f"{pair[0]['name']} / {pair[1]['name']}"
        for label, sess, k in (("image graph", image, 1), ("text graph", text, 0)):
            same, swap = timed(sess, k, n)
            print(f"{label}: same adapter every run {same[0]:.2f} ms median (p10 {same[1]:.2f}); adapter swapped "
                  f"every run ({names}) {swap[0]:.2f} ms median (p10 {swap[1]:.2f}); {n} runs each")
        # A fresh session per adapter switch, for scale (what baking weights into a graph would cost).
        t0 = time.perf_counter()
        _session(pkg / graphs["image"]["file"])
        print(f"(creating an image-graph session: {1e3 * (time.perf_counter() - t0):.0f} ms)")


# ---------------------------------------------------------------------------------------------
# Subcommands


def _check_sample(heldout: Path, tok_path: Path) -> dict:
    from PIL import Image

    frame, _, _ = task_example(None, heldout)
    samples = vc.read_samples(heldout)
    s = next(s for s in samples if s["image"] == frame.name)
    tok = vc.load_tokenizer_json(tok_path)
    ids, am = vc.tokenize(tok, [s["prompts"]["P3"]])
    px = vc.preprocess_image(Image.open(frame))[None]
    return {"input_ids": ids, "attention_mask": am, "pixel_values": px, "frame": frame, "prompt": s["prompts"]["P3"]}


def cmd_recover(args) -> None:
    t0 = time.time()
    model, rep = recover_base(Path(args.base))
    sample = _check_sample(Path(args.heldout), Path(args.base) / "tokenizer.json")
    ids, am, px = sample["input_ids"], sample["attention_mask"], sample["pixel_values"]
    e0 = _session(Path(args.base) / "text-f32.onnx").run(None, {"input_ids": ids, "attention_mask": am})[0]
    l0 = _session(Path(args.base) / "image-f32.onnx").run(None, {"pixel_values": px, "conditional_embeddings": e0})[0]
    zero = zero_adapter(adapter_layout(model))
    with torch.no_grad():
        e1 = vc.TextGraph(model)(torch.from_numpy(ids), torch.from_numpy(am)).numpy()
        l1 = vc.ImageGraph(model)(torch.from_numpy(px), torch.from_numpy(e0)).numpy()
        e2 = text_embed(model, torch.from_numpy(ids), torch.from_numpy(am), zero).numpy()
        l2 = image_logits(model, torch.from_numpy(px), torch.from_numpy(e0), zero).numpy()
    out = {
        "tensors_loaded": rep["loaded"],
        "matched_by_graph_structure": rep["anonymous"],
        "not_in_the_graphs": rep["not_in_graphs"],
        "check": f"{sample['frame'].name} + {sample['prompt']!r}",
        "text_hf_vs_onnx": float(np.abs(e1 - e0).max()),
        "image_hf_vs_onnx": float(np.abs(l1 - l0).max()),
        "text_zero_adapter_vs_onnx": float(np.abs(e2 - e0).max()),
        "image_zero_adapter_vs_onnx": float(np.abs(l2 - l0).max()),
        "max_abs_logit": float(np.abs(l0).max()),
        "max_abs_embedding": float(np.abs(e0).max()),
        "parameters": vc.count_parameters(model),
    }
    print(f"recovered {rep['loaded']} tensors ({len(rep['anonymous'])} matched through the graph structure); "
          f"not in the graphs (unused by them): {', '.join(rep['not_in_graphs'])}")
    print(f"check on {out['check']}: max |torch - onnx| text {out['text_hf_vs_onnx']:.2e} "
          f"(|emb| <= {out['max_abs_embedding']:.1f}), image {out['image_hf_vs_onnx']:.2e} "
          f"(|logit| <= {out['max_abs_logit']:.1f}); adapted forward with a zero adapter: "
          f"text {out['text_zero_adapter_vs_onnx']:.2e}, image {out['image_zero_adapter_vs_onnx']:.2e} [{time.time() - t0:.0f} s]")
    if max(out["text_hf_vs_onnx"], out["image_hf_vs_onnx"] / max(1.0, out["max_abs_logit"])) > 1e-4:
        raise SystemExit("the recovered model does not reproduce the ONNX graphs")
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "recovery.json").write_text(json.dumps(out, indent=2))
    torch.save({"state_dict": model.state_dict(), "recovery": out}, CACHE / "base.pt")
    print(f"saved {CACHE / 'base.pt'}")


def cmd_train(args) -> None:
    tv = _train_module()
    t = TASKS[args.task]
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    model, _ = recover_base(Path(args.base))
    layout = adapter_layout(model, args.rank)
    tok = vc.load_tokenizer(args.bpe_dir)
    train = tv.PhantomSet(Path(args.train), tok)
    held = tv.PhantomSet(Path(args.heldout), tok)
    clean_held = held.images
    train.images = device_transform(train.images, t["transform"], TRAIN_SEED)
    held.images = device_transform(held.images, t["transform"], HELDOUT_SEED)
    base = report_dice(model, held, args.task, zero_adapter(layout), clean_held)
    print(f"base held-out Dice: {json.dumps({k: round(v, 4) for k, v in base.items()})}", flush=True)
    c0, w0 = time.process_time(), time.time()
    a, info = train_adapter(model, layout, train, args.task, args.steps, args.batch, args.lr, args.warmup,
                            args.seed, args.time_budget)
    info["cpu_minutes"] = (time.process_time() - c0) / 60
    info["wall_minutes"] = (time.time() - w0) / 60
    adapted = report_dice(model, held, args.task, a, clean_held)
    print(f"adapted held-out Dice: {json.dumps({k: round(v, 4) for k, v in adapted.items()})}")
    print(f"task {args.task} ({t['cls']}, {t['transform']} frames, {'/'.join(t['eval_levels'])}): "
          f"base {base['task']:.3f} -> adapted {adapted['task']:.3f}; training {info['steps']} steps, "
          f"{info['cpu_minutes']:.1f} CPU min, {info['wall_minutes']:.1f} min wall")
    out = CACHE / "adapters" / f"{args.task}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"task": args.task, **{k: v for k, v in t.items()}, "rank": args.rank,
               "params_by_path": count_by_path(layout), "train": info, "train_frames": str(args.train),
               "heldout_frames": str(args.heldout), "dice_base": base, "dice_adapted": adapted,
               "heldout_lines": sum(1 for c in held.classes if c == t["cls"])}
    torch.save({"tensors": a, "summary": summary}, out)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    print(f"saved {out}")


def cmd_frames(args) -> None:
    for task, t in TASKS.items():
        write_device_frames(Path(args.heldout), CACHE / "frames" / task, t["transform"], HELDOUT_SEED,
                            t["cls"].split("/")[0])


def cmd_package(args) -> None:
    model, _ = recover_base(Path(args.base))
    layout = adapter_layout(model, args.rank)
    pkg = Path(args.models_dir) / PACKAGE_NAME
    (pkg / "adapters").mkdir(parents=True, exist_ok=True)
    trained = {}
    for task in TASKS:
        path = CACHE / "adapters" / f"{task}.pt"
        if not path.exists():
            raise SystemExit(f"{path} missing: run `vlsm_adapters.py train --task {task}` first")
        trained[task] = torch.load(path, map_location="cpu", weights_only=False)
    sample = _check_sample(Path(args.heldout), Path(args.base) / "tokenizer.json")
    first = next(iter(trained.values()))["tensors"]
    report = export_graphs(model, layout, pkg, sample, first, args.exporter)
    shutil.copyfile(Path(args.base) / "tokenizer.json", pkg / "tokenizer.json")

    n_params = sum(int(np.prod(s)) for s in flat_shapes(layout).values())
    by_path = count_by_path(layout)
    entries = [{"name": "base", "file": "adapters/base.bin",
                "description": "All zeros: the frozen base (models/clipseg-phantom) unchanged."}]
    save_adapter_bin(pkg / "adapters/base.bin", zero_adapter(layout), layout)
    dice_lines = []
    for task, ck in trained.items():
        s = ck["summary"]
        f = f"adapters/{task}.bin"
        save_adapter_bin(pkg / f, ck["tensors"], layout)
        tr = s["train"]
        entries.append({"name": task, "file": f, "description": (
            f"{s['description'][0].upper()}{s['description'][1:]}. Trained with the base frozen on "
            f"{tr['train_pairs'] // len(s['train_levels'])} such phantom structures (edgeseg phantoms seed 11, "
            f"prompt level P1..P9 at random), {tr['steps']} steps of {tr['batch']} ({tr['cpu_minutes']:.1f} CPU min). "
            f"Held-out Dice (seed 999, {s['heldout_lines']} structures, P1): base {s['dice_base']['task']:.3f}, "
            f"adapted {s['dice_adapted']['task']:.3f}; on clean frames {s['dice_adapted']['task_clean_frames']:.3f} "
            f"(base {s['dice_base']['task_clean_frames']:.3f}).")})
        dice_lines.append(f"{task} {s['dice_base']['task']:.3f} -> {s['dice_adapted']['task']:.3f}")
    description = (
        f"VLSM-Adapter on the demo CLIPSeg of models/clipseg-phantom: its text and image graphs, frozen "
        f"(weights recovered from that package's ONNX graphs), with {n_params:,} adapter weights per task "
        f"({by_path.get('vision', 0):,} vision: rank-{args.rank} bottlenecks on the ViT embeddings and after each "
        f"block; {by_path.get('text', 0):,} language: after the last text block and on the text projection; "
        f"{by_path.get('cond', 0):,} conditioning: a FiLM correction) taken as graph inputs `adapter.*`, so a task "
        f"switch swaps tensors without reloading the graphs; the all-zero adapter is the base. Adapters trained "
        f"on phantoms from `edgeseg phantoms` seen through a device the base never saw. Held-out Dice "
        f"(seed 999, mask = sigmoid > 0.5, P1 prompts), base -> adapted: " + ", ".join(dice_lines)
        + ". A demonstration model for phantoms only, not for clinical images."
    )
    write_manifest(pkg, model, layout, entries, description)
    report["adapters"] = {e["name"]: e["file"] for e in entries}
    report["adapter_params"] = {"total": n_params, **by_path}
    (CACHE / "package.json").write_text(json.dumps(report, indent=2))
    total = sum(p.stat().st_size for p in pkg.rglob("*") if p.is_file())
    print(f"wrote {pkg} ({total / 1e6:.2f} MB; adapters {n_params * 4 / 1e3:.1f} kB each)")


TRAIN_SEED = 1  # speckle draws of the training frames
HELDOUT_SEED = 2  # ... and of the held-out frames (also written by `frames`)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=str(BASE_PACKAGE), help="the base package (its ONNX graphs hold the weights)")
    ap.add_argument("--heldout", default=str(CACHE / "phantoms/heldout"),
                    help="held-out phantoms (edgeseg phantoms --seed 999 --size 128x128)")
    ap.add_argument("--models-dir", default=str(vc.REPO_DIR / "models"))
    ap.add_argument("--threads", type=int, default=1)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("recover", help="rebuild the base from its ONNX graphs and check it")
    p = sub.add_parser("train", help="train one adapter with the base frozen")
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument("--train", default=str(CACHE / "phantoms/train"),
                   help="training phantoms (edgeseg phantoms --seed 11 --size 128x128)")
    p.add_argument("--bpe-dir", default=str(vc.DEFAULT_BPE_DIR))
    p.add_argument("--rank", type=int, default=RANK)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget", type=float, default=14.0, help="minutes of wall clock: the schedule ends when they are spent (0: steps only)")
    sub.add_parser("frames", help="write each task's held-out device frames to .cache/vlsm-adapters/frames/<task>/")
    p = sub.add_parser("package", help=f"export and write models/{PACKAGE_NAME}/")
    p.add_argument("--rank", type=int, default=RANK)
    p.add_argument("--exporter", choices=["legacy", "dynamo"], default="dynamo",
                   help="dynamo (default): the op set of models/clipseg-phantom's graphs, no Shape / "
                        "ConstantOfShape / Expand (the legacy form keeps those for the attention reshapes)")
    p = sub.add_parser("fixtures", help=f"parity cases in tests/fixtures/parity/{PACKAGE_NAME}/")
    p.add_argument("--fixtures-dir", default=str(vc.REPO_DIR / "tests/fixtures/parity"))
    p = sub.add_parser("reference", help="per adapter, onnxruntime mask area (and Dice) for image + prompt; timing")
    p.add_argument("--image", default=None, help="a frame (default: each task's first held-out device frame)")
    p.add_argument("--mask", default=None, help="its ground-truth mask, for a Dice")
    p.add_argument("--prompt", default=None, help="prompt for --image (default 'lesion')")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--no-heldout", action="store_true", help="skip the held-out Dice through onnxruntime")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"recover": cmd_recover, "train": cmd_train, "frames": cmd_frames, "package": cmd_package,
     "fixtures": cmd_fixtures, "reference": cmd_reference}[args.cmd](args)


if __name__ == "__main__":
    main()
