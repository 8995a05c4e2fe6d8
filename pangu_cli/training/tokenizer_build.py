"""Build pangu-mini's two tokenizers from the caption corpus, deterministically.

- Chinese: a WordPiece vocabulary over jieba words (`load_jieba_tokenizer`, `encode(kind="jieba")`):
  the jieba words of the corpus's Chinese spans, every single character both as a word start and as a
  `##` continuation, and the most frequent characters of jieba's dictionary, so that an unseen word
  falls back to characters instead of `[UNK]`.
- English: a CLIP byte-level BPE (`vocab.json` + `merges.txt`, OpenCLIP's vocabulary layout: the 256
  bytes, the 256 bytes + `</w>`, one entry per merge, then `<|startoftext|>` and `<|endoftext|>` last,
  so the end token has the largest id, which OpenCLIP's pooling relies on). Every byte is in the
  vocabulary, so nothing is ever unknown.

Each encoder is built from the text it will read: the corpus captions are routed with
`pangu_cli.language.detect` exactly as the conditioner routes them (zh spans to the Chinese encoder,
the rest to the English one). Only the training templates are used (`split="train"`).

No MindSpore here.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pangu_cli.models.tokenizers import CLIP_END, CLIP_START, clean_clip_text

# Style trigger characters (PanGu's 義 aesthetic/art, 饅 anime, 霙 photo): whole tokens of the zh encoder.
STYLE_TRIGGERS = ("義", "饅", "霙")
WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# CLIP's pre-tokenizer: specials, English contractions, letter runs, single digits, other-symbol runs.
_CLIP_PATTERN = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
                 r"|[^\s\p{L}\p{N}]+")


@dataclass(frozen=True)
class TokenizerBuild:
    """What to build: corpus size and seed, vocabulary limits."""

    scenes: int = 6000  # scenes in the corpus; each gets one caption per language
    seed: int = 20240601
    min_word_count: int = 2  # jieba words seen fewer times fall back to characters
    common_chars: int = 3000  # most frequent characters of jieba's dictionary added to the zh vocabulary
    max_merges: int = 4000  # BPE merges at most (the corpus usually runs out of pairs first)
    min_pair_count: int = 2


# ----------------------------------------------------------------------------------------------- corpus
def routed_corpus(build: TokenizerBuild = TokenizerBuild()) -> tuple[list[str], list[str]]:
    """(zh_texts, en_texts): the corpus captions as the two encoders read them (empty spans dropped)."""
    from pangu_cli.language import detect
    from pangu_cli.training.captions import LANGS, caption
    from pangu_cli.training.scenes import sample_scene

    rng = np.random.default_rng(build.seed)
    zh_texts, en_texts = [], []
    for _ in range(build.scenes):
        scene = sample_scene(rng)
        for lang in LANGS:
            detection = detect(caption(scene, lang, rng, split="train"))
            zh, en = detection.joined("zh"), detection.joined("en")
            if zh:
                zh_texts.append(zh)
            if en:
                en_texts.append(en)
    return zh_texts, en_texts


# ------------------------------------------------------------------------------------------- WordPiece
def _basic_pieces(text: str) -> list[str]:
    """What the jieba WordPiece tokenizer's normaliser and pre-tokenizer make of a jieba-segmented text
    (lowercase, accents stripped, split on whitespace and punctuation, Han characters not split)."""
    global _wordpiece_front
    if _wordpiece_front is None:
        from transformers import BertTokenizer

        backend = BertTokenizer(vocab={s: i for i, s in enumerate(WORDPIECE_SPECIALS)}, do_lower_case=True,
                                tokenize_chinese_chars=False).backend_tokenizer
        _wordpiece_front = (backend.normalizer, backend.pre_tokenizer)
    normalizer, pre_tokenizer = _wordpiece_front
    return [piece for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]


_wordpiece_front = None


def _common_characters(limit: int) -> list[str]:
    """The `limit` most frequent Han characters of jieba's dictionary (frequency summed over words)."""
    from pangu_cli.language import _import_jieba

    jieba = _import_jieba()
    counts: Counter[str] = Counter()
    path = Path(jieba.__file__).with_name(jieba.DEFAULT_DICT_NAME)
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split(" ")
        if len(parts) < 2 or not parts[1].isdigit():
            continue
        for ch in parts[0]:
            if 0x4E00 <= ord(ch) <= 0x9FFF:
                counts[ch] += int(parts[1])
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [ch for ch, _ in ranked[:limit]]


def build_wordpiece_vocab(zh_texts: list[str], build: TokenizerBuild = TokenizerBuild()) -> list[str]:
    """The jieba-WordPiece vocabulary, one token per entry, id = position."""
    from pangu_cli.language import segment_words

    words: Counter[str] = Counter()
    chars: set[str] = set()
    for text in zh_texts:
        for piece in _basic_pieces(" ".join(segment_words(text))):
            words[piece] += 1
            chars.update(piece)
    chars.update(_common_characters(build.common_chars))
    chars.update(STYLE_TRIGGERS)
    chars.update(chr(c) for c in range(0x21, 0x7F) if not chr(c).isupper())  # the basic tokenizer lowercases
    chars.update("，。、：；！？（）《》“”‘’")
    kept_words = sorted(w for w, n in words.items() if n >= build.min_word_count and len(w) > 1)
    singles = sorted(chars)
    vocab = list(WORDPIECE_SPECIALS) + singles + ["##" + c for c in singles] + kept_words
    return list(dict.fromkeys(vocab))


# ------------------------------------------------------------------------------------------------- BPE
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte → printable character table, in vocabulary order (printable bytes first)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def clip_words(text: str) -> list[str]:
    """CLIP's pre-tokenization: cleaned, whitespace-collapsed, lowercased, split by its pattern."""
    import regex

    text = unicodedata.normalize("NFC", clean_clip_text(text)).lower()
    return regex.findall(_CLIP_PATTERN, text)


def build_bpe(en_texts: list[str],
              build: TokenizerBuild = TokenizerBuild()) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn CLIP-style BPE merges over the words of `en_texts` (ties broken by the pair's text)."""
    table = _bytes_to_unicode()
    counts: Counter[str] = Counter()
    for text in en_texts:
        counts.update(clip_words(text))
    # A word is its byte symbols with `</w>` glued to the last one, as CLIP's BPE starts from.
    words: dict[tuple[str, ...], int] = {}
    for word, n in counts.items():
        symbols = [table[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        words[tuple(symbols)] = words.get(tuple(symbols), 0) + n
    merges: list[tuple[str, str]] = []
    for _ in range(build.max_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, n in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best, best_count = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if best_count < build.min_pair_count:
            break
        merges.append(best)
        joined = best[0] + best[1]
        merged: dict[tuple[str, ...], int] = {}
        for symbols, n in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        words = merged
    base = list(table.values())
    tokens = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + [CLIP_START, CLIP_END]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}, merges


# ---------------------------------------------------------------------------------------------- writing
def write_tokenizers(folder: str | Path, build: TokenizerBuild = TokenizerBuild(),
                     corpus: tuple[list[str], list[str]] | None = None) -> dict[str, int]:
    """Write `tokenizers/zh/vocab.txt` and `tokenizers/en/{vocab.json,merges.txt}` under `folder`;
    return the vocabulary sizes {"zh": n, "en": n}."""
    folder = Path(folder)
    zh_texts, en_texts = corpus if corpus is not None else routed_corpus(build)
    zh_vocab = build_wordpiece_vocab(zh_texts, build)
    en_vocab, merges = build_bpe(en_texts, build)
    zh_dir, en_dir = folder / "tokenizers" / "zh", folder / "tokenizers" / "en"
    zh_dir.mkdir(parents=True, exist_ok=True)
    en_dir.mkdir(parents=True, exist_ok=True)
    (zh_dir / "vocab.txt").write_text("\n".join(zh_vocab) + "\n", encoding="utf-8")
    (en_dir / "vocab.json").write_text(json.dumps(en_vocab, ensure_ascii=False), encoding="utf-8")
    (en_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")
    return {"zh": len(zh_vocab), "en": len(en_vocab)}
