"""Shared pieces of the CLIPSeg phantom model tools (train_vlsm.py, export_vlsm.py,
make_references.py): the model configuration, the export wrappers, image preprocessing, the
CLIP BPE tokenizer and the phantom dataset reader.

Not a script; imported by the tools beside it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TOOLS_DIR = Path(__file__).resolve().parent
REPO_DIR = TOOLS_DIR.parent.parent
# Phantom sets, checkpoints and intermediate graphs (ignored by git).
CACHE_DIR = TOOLS_DIR / ".cache"
DEFAULT_BPE_DIR = TOOLS_DIR / "clip-bpe"

IMAGE_SIZE = 128  # width = height the image graph takes
CONTEXT_LENGTH = 77
# CLIP normalisation, on 0..1 RGB values (the manifest's [input] mean/std).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
EOT_ID = 49407  # <|endoftext|>, also the padding token
SOT_ID = 49406  # <|startoftext|>

# The small configuration the phantom model is trained with.
MODEL_CONFIG = dict(
    text=dict(
        vocab_size=49408,
        hidden_size=32,  # the 49408 x hidden token table dominates the file size
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CONTEXT_LENGTH,
        pad_token_id=EOT_ID,
        bos_token_id=SOT_ID,
        eos_token_id=EOT_ID,
    ),
    vision=dict(
        image_size=IMAGE_SIZE,
        patch_size=16,  # 8x8 tokens; the two-step transposed convolution upsamples x16
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
    ),
    projection_dim=64,
    extract_layers=[1, 2, 3],
    reduce_dim=64,
    decoder_num_attention_heads=4,
    decoder_intermediate_size=128,
    conditional_layer=0,
    use_complex_transposed_convolution=True,
)


def build_model(overrides: dict | None = None):
    """A `CLIPSegForImageSegmentation` with the small configuration (random weights);
    `overrides` replaces top-level keys and merges into "text" / "vision"."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    cfg = json.loads(json.dumps(MODEL_CONFIG))
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    text = cfg.pop("text")
    vision = cfg.pop("vision")
    config = CLIPSegConfig(text_config=text, vision_config=vision, **cfg)
    config._attn_implementation = "eager"
    for sub in (config.text_config, config.vision_config):
        sub._attn_implementation = "eager"
    model = CLIPSegForImageSegmentation(config)
    return model


def reset_decoder_init(model) -> None:
    """PyTorch's default initialisation for the decoder's FiLM, reduce and transposed-convolution
    layers. transformers' generic `_init_weights` draws these with std 1.0 (the composite
    config has no `initializer_range` of its own), which starts training with logits in the
    hundreds; the decoder's attention and MLP layers keep CLIPSeg's own initialisation."""
    d = model.decoder
    for m in [d.film_mul, d.film_add, *d.reduces, *d.transposed_convolution.modules()] \
            if isinstance(d.transposed_convolution, torch.nn.Sequential) \
            else [d.film_mul, d.film_add, *d.reduces, d.transposed_convolution]:
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.reset_parameters()


def load_checkpoint(path: str | os.PathLike):
    """Rebuilds the model saved by train_vlsm.py (state dict + config overrides)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(ckpt.get("config_overrides"))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


def patch_overrides(patch: int) -> dict:
    """Configuration changes for a vision patch size: 16 uses CLIPSeg's two-step transposed
    convolution (x4 then x4), 8 its single transposed convolution (x8)."""
    if patch == MODEL_CONFIG["vision"]["patch_size"]:
        return {}
    if patch == 16:
        return {"vision": {"patch_size": 16}, "use_complex_transposed_convolution": True}
    if patch == 8:
        return {"vision": {"patch_size": 8}, "use_complex_transposed_convolution": False}
    raise ValueError(f"patch size {patch} not supported (8 or 16)")


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Forward passes with gradients (the Hugging Face forward runs the CLIP encoders under no_grad,
# because the original CLIPSeg keeps CLIP frozen; here everything is trained from scratch).


def text_features(model, input_ids, attention_mask):
    return model.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


def image_logits(model, pixel_values, conditional_embeddings):
    vision = model.clip.vision_model(
        pixel_values=pixel_values,
        interpolate_pos_encoding=False,
        output_hidden_states=True,
        return_dict=True,
    )
    activations = [vision.hidden_states[i + 1] for i in model.extract_layers]
    return model.decoder(activations, conditional_embeddings).logits


# ---------------------------------------------------------------------------------------------
# Export wrappers: fixed names, fixed shapes, no positional-embedding interpolation (which would
# put a bicubic Resize into the graph).


class TextGraph(torch.nn.Module):
    """input_ids, attention_mask -> conditional_embeddings (model.clip.get_text_features)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


class ImageGraph(torch.nn.Module):
    """pixel_values, conditional_embeddings -> logits (the Hugging Face forward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, conditional_embeddings):
        out = self.model(
            pixel_values=pixel_values,
            conditional_embeddings=conditional_embeddings,
            interpolate_pos_encoding=False,
            return_dict=True,
        )
        return out.logits


class JointGraph(torch.nn.Module):
    """input_ids, attention_mask, pixel_values -> logits (the Hugging Face forward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, pixel_values):
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            interpolate_pos_encoding=False,
            return_dict=True,
        )
        return out.logits


# ---------------------------------------------------------------------------------------------
# Preprocessing


def preprocess_image(img: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """RGB image -> [3, size, size] float32: stretched (bilinear) to size x size, 0..1, CLIP
    mean/std normalised."""
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def load_mask(path, size: int = IMAGE_SIZE) -> np.ndarray:
    """Binary mask PNG -> [size, size] float32 in {0, 1} (nearest-neighbour stretch)."""
    m = Image.open(path).convert("L")
    if m.size != (size, size):
        m = m.resize((size, size), Image.NEAREST)
    return (np.asarray(m) > 0).astype(np.float32)


def load_tokenizer(bpe_dir: str | os.PathLike = DEFAULT_BPE_DIR):
    """The CLIP BPE tokenizer, offline."""
    from transformers import CLIPTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return CLIPTokenizer.from_pretrained(str(bpe_dir), local_files_only=True)


def load_tokenizer_json(path: str | os.PathLike):
    """The serialized fast tokenizer a package ships (what the runtime loads), offline."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def tokenize(tokenizer, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Prompts -> (input_ids, attention_mask), int64 [N, 77], padded with <|endoftext|>."""
    enc = tokenizer(
        prompts,
        padding="max_length",
        max_length=CONTEXT_LENGTH,
        truncation=True,
        return_tensors="np",
    )
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def read_samples(dataset_dir: str | os.PathLike) -> list[dict]:
    """The lines of `samples.jsonl` (one labelled structure per line)."""
    path = Path(dataset_dir) / "samples.jsonl"
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def sample_class(s: dict) -> str:
    attrs = s.get("attributes") or {}
    return f"{s.get('modality', '?')}/{attrs.get('class', s.get('prompt', '?'))}"


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
