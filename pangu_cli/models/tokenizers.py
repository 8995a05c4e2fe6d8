"""Tokenizers for the two text encoders, loaded from local files only, and the reference sequence layout.

- CLIP byte-level BPE (the English / OpenCLIP encoder): `vocab.json` + `merges.txt` (Hugging Face layout), or
  OpenCLIP's `bpe_simple_vocab_16e6.txt.gz`, from which the vocabulary is built as the reference does.
- BERT WordPiece (the Chinese encoder): `vocab.txt` (or the reference's `vocab_zh.txt`); CJK characters are
  split, text is lowercased and accent-stripped.

`encode` lays sequences out as the reference does (MindONE `FrozenOpenCLIPEmbedder2` / `FrozenCnCLIPEmbedder`):
`[start] + ids + [end]`, padded with id 0 to `max_length`; an overlong prompt keeps its first
`max_length - 2` ids, then the end token. The cut part is reported per prompt.

This module does not import MindSpore.
"""

from __future__ import annotations

import gzip
import html
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pangu_cli.errors import ModelError

KINDS = ("clip", "wordpiece", "jieba")

CLIP_START, CLIP_END = "<|startoftext|>", "<|endoftext|>"
OPENCLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
WORDPIECE_FILES = ("vocab.txt", "vocab_zh.txt")
# OpenCLIP keeps the first 49152 - 256 - 2 merges of its BPE file, so the vocabulary has 49408 entries.
_OPENCLIP_MERGES = 49152 - 256 - 2


@dataclass
class TokenizedBatch:
    """ids (B, L) int32; attention_mask (B, L) int32, 1 on real tokens (specials included);
    truncated[i]: the part of prompt i that did not fit, or None."""

    ids: np.ndarray
    attention_mask: np.ndarray
    truncated: list[str | None]


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _missing(what: str, path: Path, hint: str) -> ModelError:
    return ModelError(f"{what} not found: {path}", hint)


def load_clip_tokenizer(path: str | Path):
    """A CLIP BPE tokenizer from a folder holding `vocab.json` + `merges.txt`, or OpenCLIP's
    `bpe_simple_vocab_16e6.txt.gz` (the folder, or the file itself)."""
    from transformers import CLIPTokenizer

    path = Path(path)
    hint = f"the CLIP tokenizer needs vocab.json and merges.txt (or {OPENCLIP_BPE_FILE}) in {path}"
    if path.is_file():
        if not path.name.endswith(".gz"):
            raise ModelError(f"{path} is not a CLIP tokenizer folder", hint)
        vocab, merges = _openclip_vocab(path)
    elif not path.is_dir():
        raise _missing("tokenizer folder", path, hint)
    elif (path / "vocab.json").is_file() or not (path / OPENCLIP_BPE_FILE).is_file():
        for name in ("vocab.json", "merges.txt"):
            if not (path / name).is_file():
                raise _missing(f"CLIP tokenizer file {name}", path / name, hint)
        vocab, merges = _hf_clip_vocab(path)
    else:
        vocab, merges = _openclip_vocab(path / OPENCLIP_BPE_FILE)
    for special in (CLIP_START, CLIP_END):
        if special not in vocab:
            raise ModelError(f"the CLIP vocabulary in {path} has no '{special}' token",
                             "use the CLIP tokenizer files that belong to the model")
    return CLIPTokenizer(vocab=vocab, merges=merges, bos_token=CLIP_START, eos_token=CLIP_END,
                         unk_token=CLIP_END, pad_token=CLIP_END)


def _hf_clip_vocab(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    try:
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read the CLIP tokenizer in {folder}: {exc}",
                         "the tokenizer files are corrupt; copy them again") from exc
    merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
    return vocab, merges


def _openclip_vocab(file: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary OpenCLIP builds from its merges file: bytes, bytes + `</w>`, merges, specials."""
    try:
        lines = gzip.open(file).read().decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read the CLIP tokenizer {file}: {exc}",
                         "the tokenizer file is corrupt; copy it again") from exc
    merges = [tuple(line.split()) for line in lines[1:_OPENCLIP_MERGES + 1] if line.strip()]
    base = list(_bytes_to_unicode().values())
    tokens = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + [CLIP_START, CLIP_END]
    return dict(zip(tokens, range(len(tokens)))), merges


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable character table, in vocabulary order (printable bytes first)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def load_wordpiece_tokenizer(path: str | Path, split_chinese_chars: bool = True):
    """A BERT WordPiece tokenizer from `vocab.txt` (a folder holding it or `vocab_zh.txt`, or the file).

    The vocabulary is read as the reference reads it: one token per line, surrounding whitespace stripped,
    id = line index (a later duplicate wins).
    """
    from transformers import BertTokenizer

    path = Path(path)
    hint = f"the WordPiece tokenizer needs {' or '.join(WORDPIECE_FILES)} in {path}"
    if path.is_dir():
        found = [path / name for name in WORDPIECE_FILES if (path / name).is_file()]
        if not found:
            raise _missing(f"WordPiece tokenizer file {WORDPIECE_FILES[0]}", path / WORDPIECE_FILES[0], hint)
        path = found[0]
    elif not path.is_file():
        raise _missing("WordPiece tokenizer file", path, hint)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read the WordPiece vocabulary {path}: {exc}",
                         "the file is corrupt; copy it again") from exc
    vocab = {token.strip(): i for i, token in enumerate(lines)}
    for special in ("[UNK]", "[CLS]", "[SEP]"):
        if special not in vocab:
            raise ModelError(f"the WordPiece vocabulary {path} has no '{special}' token",
                             "use the vocab.txt that belongs to the model")
    return BertTokenizer(vocab=vocab, do_lower_case=True, tokenize_chinese_chars=split_chinese_chars)


def load_jieba_tokenizer(path: str | Path):
    """WordPiece over jieba words (the embedded model's Chinese tokenizer): `encode(kind="jieba")`
    segments the text with jieba first, and this tokenizer keeps each word whole when it is in the
    vocabulary (CJK characters are not split one by one), falling back to `##` pieces otherwise."""
    return load_wordpiece_tokenizer(path, split_chinese_chars=False)


# ---------------------------------------------------------------------------------------------------------------
# Text cleaning for the CLIP BPE (OpenCLIP runs ftfy.fix_text, then html.unescape twice)

# ftfy's character-level fixes, used when ftfy itself is not installed: fullwidth/halfwidth forms and the
# ideographic space to their standard forms (so a Chinese "，" reaches the BPE as ","), curly quotes to
# straight ones, Latin ligatures split. ftfy's mojibake repair is left out: it only changes broken text.
_WIDTH_MAP = {0x3000: " "}
_WIDTH_MAP.update({i: unicodedata.normalize("NFKC", chr(i)) for i in range(0xFF01, 0xFFF0)
                   if unicodedata.normalize("NFKC", chr(i)) != chr(i)})
_LIGATURES = {ord(k): v for k, v in {
    "Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ", "ǅ": "Dž", "ǆ": "dž",
    "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj", "ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl",
    "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st"}.items()}
_SINGLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]")
_DOUBLE_QUOTES = re.compile("[\u201c-\u201f]")


def _fix_text(text: str) -> str:
    try:
        import ftfy
    except ImportError:
        text = text.translate(_LIGATURES).translate(_WIDTH_MAP)
        text = _DOUBLE_QUOTES.sub('"', _SINGLE_QUOTES.sub("'", text))
        return unicodedata.normalize("NFC", text)
    return ftfy.fix_text(text)


def clean_clip_text(text: str) -> str:
    """OpenCLIP's cleaning before BPE; the tokenizer itself then collapses whitespace and lowercases."""
    text = html.unescape(html.unescape(_fix_text(text)))
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------------------------------------------------------
# Sequences


def _special_ids(tokenizer, kind: str) -> tuple[int, int]:
    if kind == "clip":
        start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    elif kind in ("wordpiece", "jieba"):
        start, end = tokenizer.cls_token_id, tokenizer.sep_token_id
    else:
        raise ModelError(f"unknown tokenizer kind '{kind}'", f"use one of: {', '.join(KINDS)}")
    if start is None or end is None:
        raise ModelError(f"the {kind} tokenizer has no start/end tokens", "load it with this module's loaders")
    return start, end


def encode(tokenizer, texts: str | Sequence[str], max_length: int = 77, kind: str = "clip",
           pad_id: int = 0) -> TokenizedBatch:
    """Tokenize prompts into the reference layout (see the module docstring); `kind` is "clip" or "wordpiece"."""
    start, end = _special_ids(tokenizer, kind)
    if max_length < 2:
        raise ModelError(f"max_length {max_length} leaves no room for the start and end tokens")
    texts = [texts] if isinstance(texts, str) else list(texts)
    if kind == "clip":
        shown = [clean_clip_text(t) for t in texts]
    elif kind == "jieba":
        from pangu_cli.language import segment_words

        shown = [" ".join(segment_words(t)) for t in texts]
    else:
        shown = texts
    ids = np.full((len(texts), max_length), pad_id, dtype=np.int32)
    mask = np.zeros((len(texts), max_length), dtype=np.int32)
    truncated: list[str | None] = []
    if not texts:
        return TokenizedBatch(ids, mask, truncated)
    encoded = tokenizer(shown, add_special_tokens=False, return_offsets_mapping=True)
    room = max_length - 2
    for i, (text, body, offsets) in enumerate(zip(shown, encoded["input_ids"], encoded["offset_mapping"])):
        kept = body[:room]
        row = [start, *kept, end]
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
        truncated.append(_cut_text(tokenizer, text, body[room:], offsets[room:]) if len(body) > room else None)
    return TokenizedBatch(ids, mask, truncated)


def _cut_text(tokenizer, text: str, dropped: list[int], offsets: list[tuple[int, int]]) -> str:
    """The prompt text from the first dropped token on (as typed, after cleaning); decoded ids as a fallback."""
    if offsets and offsets[0] is not None:
        tail = text[offsets[0][0]:].strip()
        if tail:
            return tail
    return tokenizer.decode(dropped).strip()
