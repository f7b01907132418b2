#!/usr/bin/env python3
"""Build the CLIP BPE tokenizer files and the Rust tokenizer test fixture.

Source: the OpenAI CLIP vocabulary `bpe_simple_vocab_16e6.txt.gz` that ships inside the PyPI
package `open_clip_torch` (pinned in requirements.txt). Nothing is downloaded.

Writes
  models/tools/clip-bpe/vocab.json, merges.txt       the OpenAI SimpleTokenizer vocabulary in
                                                     Hugging Face's file layout
  models/tools/clip-bpe/tokenizer.json               the fast (`tokenizers`) serialization that
                                                     the Rust runtime loads
  models/tools/clip-bpe/tokenizer_config.json, ...   so `CLIPTokenizer.from_pretrained(dir)`
                                                     works offline for the training tools
  tests/fixtures/tokenizer/prompts.json              prompts with their reference ids and masks

Vocabulary (exactly as OpenAI's SimpleTokenizer and Hugging Face's CLIPTokenizer define it):
  the 256 byte-level unicode symbols, the same 256 with the end-of-word suffix `</w>`, one token
  per merge (merges = lines[1 : 49152 - 256 - 2 + 1] of the gzip file, i.e. 48894 merges), then
  `<|startoftext|>` = 49406 and `<|endoftext|>` = 49407: 49408 tokens in all.

Special tokens and padding: bos = `<|startoftext|>` (49406), eos = unk = pad = `<|endoftext|>`
(49407), as in the tokenizer of openai/clip-vit-base-patch32 (open_clip pads with 0 instead; the
Hugging Face convention is kept because the text encoder pools at the first maximal id, i.e. the
first `<|endoftext|>`, either way). `tok(text, padding="max_length", max_length=77,
truncation=True)` gives `[49406, ...at most 75 text tokens..., 49407, 49407, ...]` with
attention_mask 1 on the text, bos and eos and 0 on the padding. model_max_length is saved as 77.

Reference ids: Hugging Face's *slow* (pure Python) CLIPTokenizer is the reference the Rust
tokenizer must equal. transformers 5 no longer ships it (its `CLIPTokenizer` is backed by the
`tokenizers` library, i.e. what used to be `CLIPTokenizerFast`), so `SlowClipTokenizer` below
carries its algorithm unchanged from transformers 4.57 (`models/clip/tokenization_clip.py`,
Apache-2.0): ftfy.fix_text, whitespace clean-up, lower case, the CLIP split pattern, byte-level
BPE with `</w>`, special tokens split off first. When the installed transformers still has the
slow class (transformers < 5), the script also builds that one and asserts that both give the
same ids on every prompt; run it once in such an environment (with --out-dir and --fixture
pointing elsewhere) after changing this file.

tokenizer.json is written by the pinned transformers (requirements.txt), the version the
training tools load `clip-bpe` with, and the script checks that the file itself, read by the
`tokenizers` library with fixed truncation and padding as the Rust runtime sets them, gives the
same ids as the Python tokenizer on every prompt. (transformers < 5 writes a slightly different
file: it marks the special tokens as matched after normalization, so `<|EndOfText|>` typed in
any case becomes 49407 there, as in the slow tokenizer.)

Prompts on which the slow reference and the fast tokenizer disagree (text that ftfy repairs:
curly apostrophes, HTML entities, ligatures, full-width letters, mojibake, a byte-order mark;
Greek final sigma, which Python lower-cases by context; special tokens in another case) are
left out of the fixture's `prompts`, because the runtime follows the fast serialization; they
are kept in its `excluded` list with both outputs so the difference stays documented.

Usage (from the repository root):
  python models/tools/make_tokenizer.py [--out-dir DIR] [--fixture PATH] [--bpe VOCAB.txt.gz]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import ftfy  # noqa: E402
import regex  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONTEXT_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
BOS_ID, EOS_ID, VOCAB_SIZE = 49406, 49407, 49408
N_MERGES = 49152 - 256 - 2  # 48894


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte -> printable unicode character table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def openai_bpe_path() -> Path:
    """The vocabulary file inside the installed open_clip package (found without importing it,
    which would import torch)."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("open_clip not found: install open_clip_torch from requirements.txt, or pass --bpe")
    return Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"


def read_openai_vocab(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab and merges exactly as openai/CLIP's SimpleTokenizer builds them."""
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    assert len(merges) == N_MERGES and all(len(m) == 2 for m in merges), "unexpected merges file"
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    encoder = {token: i for i, token in enumerate(vocab)}
    assert len(vocab) == len(encoder) == VOCAB_SIZE, "duplicate tokens in the vocabulary"
    assert encoder[BOS] == BOS_ID and encoder[EOS] == EOS_ID
    return encoder, merges


def write_vocab_files(out: Path, encoder: dict[str, int], merges: list[tuple[str, str]]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = out / "vocab.json", out / "merges.txt"
    # Same layout as Hugging Face's CLIPTokenizer.save_vocabulary.
    vocab_file.write_text(json.dumps(encoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    with merges_file.open("w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    return vocab_file, merges_file


class SlowClipTokenizer:
    """Hugging Face's slow CLIPTokenizer (transformers 4.57), reduced to what
    `tok(text, padding="max_length", max_length=L, truncation=True)` does."""

    def __init__(self, vocab_file: Path, merges_file: Path):
        self.encoder = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
        self.byte_encoder = bytes_to_unicode()
        bpe_merges = Path(merges_file).read_text(encoding="utf-8").strip().split("\n")[1 : N_MERGES + 1]
        self.bpe_ranks = {tuple(m.split()): i for i, m in enumerate(bpe_merges)}
        self.cache = {BOS: BOS, EOS: EOS}
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        # The added special tokens, matched in the raw text before anything else (no strip).
        self.special = regex.compile("(" + regex.escape(BOS) + "|" + regex.escape(EOS) + ")")

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = {(a, b) for a, b in zip(word, word[1:])}
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = {(a, b) for a, b in zip(word, word[1:])}
        result = " ".join(word)
        self.cache[token] = result
        return result

    def _tokenize(self, text: str) -> list[str]:
        text = regex.sub(r"\s+", " ", ftfy.fix_text(text)).strip().lower()
        tokens: list[str] = []
        for piece in regex.findall(self.pat, text):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            tokens.extend(self.bpe(piece).split(" "))
        return tokens

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        for part in self.special.split(text):
            if not part:
                continue
            tokens.extend([part] if part in (BOS, EOS) else self._tokenize(part))
        return tokens

    def __call__(self, text: str, max_length: int = CONTEXT_LENGTH) -> dict[str, list[int]]:
        ids = [self.encoder.get(t, EOS_ID) for t in self.tokenize(text)][: max_length - 2]
        ids = [BOS_ID] + ids + [EOS_ID]
        pad = max_length - len(ids)
        return {"input_ids": ids + [EOS_ID] * pad, "attention_mask": [1] * len(ids) + [0] * pad}


def installed_slow_tokenizer(vocab_file: Path, merges_file: Path):
    """transformers' own slow CLIPTokenizer where the installed version still has it (< 5)."""
    if not issubclass(transformers.CLIPTokenizer, transformers.PreTrainedTokenizer):
        return None
    return transformers.CLIPTokenizer(str(vocab_file), str(merges_file))


def build_fast_tokenizer(vocab_file: Path, merges_file: Path, merges: list[tuple[str, str]]):
    """The `tokenizers`-backed CLIP tokenizer: CLIPTokenizerFast converted from the slow one
    (transformers < 5) or CLIPTokenizer (transformers >= 5, where it is the former fast class)."""
    fast_cls = getattr(transformers, "CLIPTokenizerFast", None)
    if fast_cls is not None and fast_cls is not transformers.CLIPTokenizer:
        return fast_cls(str(vocab_file), str(merges_file))
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    return transformers.CLIPTokenizer(vocab=vocab, merges=list(merges))


# Attributes of the phantom classes, expanded at every prompt level of the VLSM benchmark
# (P0 = empty ... P9), in the same way as the runtime's `prompt` module builds them.
PHANTOM_ATTRIBUTES = [
    dict(class_="polyp", shape="round", color="pink", size="small", count="one",
         location="left of the image",
         definition="an abnormal growth of tissue projecting from the mucous membrane"),
    dict(class_="lesion", shape="oval", color="dark", size="large", count="one",
         location="center of the image",
         definition="a region of tissue damaged by injury or disease"),
    dict(class_="tool", shape="elongated", color="grey", size="large", count="one",
         location="right of the image",
         definition="a surgical instrument inserted into the field of view"),
    dict(class_="vessel", shape="elongated", color="black", size="thin", count="two",
         location="bottom of the image",
         definition="a tube that carries blood through the body"),
]


def benchmark_prompts(a: dict[str, str]) -> list[str]:
    def words(level: int) -> str:
        parts = [a["count"] if level >= 5 else "", a["size"] if level >= 4 else "",
                 a["color"] if level >= 3 else "", a["shape"] if level >= 2 else "", a["class_"]]
        return " ".join(p for p in parts if p)

    located = ", located in " + a["location"]
    return [
        words(1), words(2), words(3), words(4), words(5),
        words(5) + located,
        a["class_"] + ", " + a["definition"],
        words(5) + ", " + a["definition"],
        words(5) + ", " + a["definition"] + located,
    ]


REAL_WORLD_PROMPTS = [
    "",
    " ",
    "      ",
    "\t\n ",
    "round lesion",
    "dark oval lesion",
    "Polyp",
    "POLYP",
    "A Sessile Polyp In The Sigmoid Colon.",
    "2 polyps",
    "3.5 cm polyp",
    "lesion of 12.75 mm, BI-RADS 4a",
    "Paris 0-IIa lesion",
    "patient's liver lesion",
    "the patient’s liver lesion",
    "it's a polyp; they're benign, we've seen it, I'm sure, you'll see, he'd agree",
    "hyper-echoic nodule with a well-defined margin",
    "non-neoplastic, hypo-echoic mass (approx. 2x3 cm)",
    "left   lobe  \t cyst",
    "  leading and trailing spaces  ",
    "line\nbreak\r\nand\ttab",
    "naïve polyp",
    "Ödem der Schleimhaut",
    "lésion hypoéchogène",
    "pólipo en el colon ascendente",
    "polipo del colon, 5 mm",
    "息肉",
    "结肠息肉 polyp",
    "ポリープ",
    "폴립",
    "полип толстой кишки",
    "πολύποδας",
    "ورم",
    "पॉलीप",
    "polyp 🔴",
    "⚠️ bleeding vessel",
    "🩺🧬",
    "e.g. 10% of the image",
    "#1 target @ 3 o'clock",
    "tumor/polyp",
    "(round) [pink] {small} <polyp>",
    "vessel — dark, elongated",
    "lesion...",
    "C-section scar, 45° angle",
    "2nd polyp at 10-12 o'clock",
    "T2-weighted hyperintense lesion",
    "micro-calcifications < 0.5mm",
    "nai\u0308ve polyp (decomposed accent)",
    "non\u00a0breaking\u3000spaces",
    "zero\u200bwidth space",
    "İstanbul protocol",
    "x² mm², 5 µm, 37 ℃",
    "👩‍⚕️ doctor marks the polyp",
    "polyp<|endoftext|>",
    "<|startoftext|>polyp",
    "one small pink round polyp, located in left of the image, " * 8,
    "polyp " * 80,
    "a" * 300,
    " ".join(str(i) for i in range(100)),
    "息肉" * 60,
]

# Text that ftfy (run only by the slow tokenizer) repairs, or that the slow and fast tokenizers
# lower-case differently: expected to land in the fixture's `excluded` list.
SLOW_ONLY_REPAIRS = [
    "it’s a polyp",
    "polyp &amp; vessel",
    "ﬁbroma",
    "ＰＯＬＹＰ",
    "ΠΟΛΥΠΟΔΑΣ",
    "naÃ¯ve polyp",
    "\ufeffpolyp",
    "polyp <|EndOfText|>",
]


def fixture_prompts() -> list[str]:
    prompts: list[str] = []
    for a in PHANTOM_ATTRIBUTES:
        prompts.extend(benchmark_prompts(a))
    prompts.extend(REAL_WORLD_PROMPTS)
    prompts.extend(SLOW_ONLY_REPAIRS)
    seen: set[str] = set()
    return [p for p in prompts if not (p in seen or seen.add(p))]


def hf_ids(tok, text: str) -> dict[str, list[int]]:
    enc = tok(text, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True)
    return {"input_ids": list(enc["input_ids"]), "attention_mask": list(enc["attention_mask"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "models/tools/clip-bpe")
    parser.add_argument("--fixture", type=Path, default=REPO / "tests/fixtures/tokenizer/prompts.json")
    parser.add_argument("--bpe", type=Path, help="bpe_simple_vocab_16e6.txt.gz (default: open_clip's)")
    args = parser.parse_args()

    bpe = args.bpe or openai_bpe_path()
    if not bpe.is_file():
        sys.exit(f"{bpe} not found")
    encoder, merges = read_openai_vocab(bpe)
    vocab_file, merges_file = write_vocab_files(args.out_dir, encoder, merges)

    reference = SlowClipTokenizer(vocab_file, merges_file)
    installed_slow = installed_slow_tokenizer(vocab_file, merges_file)
    fast = build_fast_tokenizer(vocab_file, merges_file, merges)
    # CLIP's text encoder has 77 positions; tok(text, truncation=True) then needs no max_length.
    for tok in (installed_slow, fast):
        if tok is not None:
            tok.model_max_length = CONTEXT_LENGTH
    if installed_slow is not None:
        # Make the folder loadable as the slow class too (tokenizer_config.json etc.).
        installed_slow.save_pretrained(str(args.out_dir))
    fast.save_pretrained(str(args.out_dir))
    # save_pretrained may rewrite the vocabulary files; keep the canonical ones.
    write_vocab_files(args.out_dir, encoder, merges)

    for name, tok in [("fast", fast), ("saved", transformers.CLIPTokenizer.from_pretrained(str(args.out_dir)))]:
        assert tok.bos_token == BOS and tok.bos_token_id == BOS_ID, name
        assert tok.eos_token == EOS and tok.eos_token_id == EOS_ID, name
        # Pad with <|endoftext|> like openai/clip-vit-base-patch32's tokenizer.
        assert tok.pad_token == EOS and tok.pad_token_id == EOS_ID, name
        assert len(tok) == VOCAB_SIZE, (name, len(tok))
        assert tok.model_max_length == CONTEXT_LENGTH, (name, tok.model_max_length)

    backend = tokenizers.Tokenizer.from_file(str(args.out_dir / "tokenizer.json"))
    backend.enable_truncation(max_length=CONTEXT_LENGTH)
    backend.enable_padding(length=CONTEXT_LENGTH, pad_id=EOS_ID, pad_token=EOS)
    saved = transformers.CLIPTokenizer.from_pretrained(str(args.out_dir))

    kept, excluded = [], []
    for text in fixture_prompts():
        want = reference(text)
        if installed_slow is not None:
            assert hf_ids(installed_slow, text) == want, f"slow port differs from transformers on {text!r}"
        got = hf_ids(fast, text)
        # CLIPTokenizer.from_pretrained is the slow class before transformers 5, the fast one after.
        assert hf_ids(saved, text) == (want if installed_slow is not None else got), f"reloaded tokenizer differs on {text!r}"
        enc = backend.encode(text)
        assert {"input_ids": enc.ids, "attention_mask": enc.attention_mask} == got, f"tokenizer.json differs on {text!r}"
        if got == want:
            kept.append({"text": text, **want})
        else:
            excluded.append({"text": text, "slow": want, "fast": got})
            print(f"slow and fast tokenizers disagree on {text!r}: left out of the fixture", file=sys.stderr)
            print(f"  slow {want['input_ids']}\n  fast {got['input_ids']}", file=sys.stderr)

    fixture = {
        "description": "CLIP BPE ids and masks from Hugging Face's slow CLIPTokenizer called as "
        "tok(text, padding='max_length', max_length=77, truncation=True); made by "
        "models/tools/make_tokenizer.py",
        "tokenizer": "models/tools/clip-bpe/tokenizer.json",
        "context_length": CONTEXT_LENGTH,
        "versions": {
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "ftfy": ftfy.__version__,
        },
        "prompts": kept,
        "excluded": excluded,
    }
    args.fixture.parent.mkdir(parents=True, exist_ok=True)
    args.fixture.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{args.out_dir}: {len(encoder)} tokens, {len(merges)} merges; "
          f"{args.fixture}: {len(kept)} prompts, {len(excluded)} excluded")


if __name__ == "__main__":
    main()
