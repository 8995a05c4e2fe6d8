"""Tokenizer loading and the reference sequence layout, on tiny vocabularies written in tmp_path."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import regex

from pangu_cli.errors import ModelError
from pangu_cli.models.tokenizers import (
    TokenizedBatch,
    clean_clip_text,
    encode,
    load_clip_tokenizer,
    load_wordpiece_tokenizer,
)

# Byte-level merges in CLIP's notation: "æ µ" / "æµ ·</w>" are the UTF-8 bytes of 海 (e6 b5 b7).
MERGES = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("t", "h"), ("th", "e</w>"), ("s", "e"),
          ("se", "a</w>"), ("i", "t"), ("'", "s</w>"), ("o", "n</w>"), ("æ", "µ"), ("æµ", "·"),
          ("æµ", "·</w>"), ("ca", "t"), ("cat", "s</w>")]


def byte_table():
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def clip_vocab():
    """As OpenCLIP builds it: bytes, bytes + </w>, merges, then <|startoftext|>, <|endoftext|>."""
    base = list(byte_table().values())
    tokens = base + [b + "</w>" for b in base] + ["".join(m) for m in MERGES] + ["<|startoftext|>",
                                                                                 "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


VOCAB = clip_vocab()
SOT, EOT = VOCAB["<|startoftext|>"], VOCAB["<|endoftext|>"]


@pytest.fixture
def clip_dir(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(VOCAB, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in MERGES) + "\n",
                                       encoding="utf-8")
    return folder


def reference_bpe(text):
    """The OpenCLIP algorithm written out: regex words, bytes -> characters, merge the lowest-ranked pair."""
    ranks = {m: i for i, m in enumerate(MERGES)}
    table = byte_table()
    pattern = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    ids = []
    for word in regex.findall(pattern, clean_clip_text(text).lower(), regex.IGNORECASE):
        parts = [table[b] for b in word.encode("utf-8")]
        parts[-1] += "</w>"
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: ranks.get(p, len(ranks)))
            if best not in ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids += [VOCAB[p] for p in parts]
    return ids


WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "坐", "在", "海", "边", "看", "浪", "的", "少", "年",
             "黄", "昏", "，", ",", "!", "hello", "world", "cat", "##s", "na", "##ive", "義"]
WP = {t: i for i, t in enumerate(WORDPIECE)}


@pytest.fixture
def wordpiece_dir(tmp_path):
    folder = tmp_path / "zh"
    folder.mkdir()
    # CRLF line ends and stray spaces: the reference strips each line.
    (folder / "vocab.txt").write_bytes(("\r\n".join(t + (" " if i % 5 == 0 else "") for i, t in
                                                    enumerate(WORDPIECE)) + "\r\n").encode("utf-8"))
    return folder


# ---------------------------------------------------------------------------------------------------------------
# CLIP BPE


@pytest.mark.parametrize("text", [
    "the cat", "The  CAT's   dog", "cats on the sea, it's 2024!", "海海 看海", "坐在海边，黄昏 “hi”", "",
    "&amp;amp; ﬁne Ｄｏｇ",
])
def test_clip_ids_follow_the_openclip_algorithm(clip_dir, text):
    tok = load_clip_tokenizer(clip_dir)
    batch = encode(tok, [text], max_length=40, kind="clip")
    body = reference_bpe(text)
    expected = np.zeros(40, dtype=np.int32)
    expected[:len(body) + 2] = [SOT, *body, EOT]
    np.testing.assert_array_equal(batch.ids[0], expected)
    assert batch.ids.dtype == np.int32
    np.testing.assert_array_equal(batch.attention_mask[0], (np.arange(40) < len(body) + 2).astype(np.int32))
    assert batch.truncated == [None]


def test_clip_layout_known_ids(clip_dir):
    tok = load_clip_tokenizer(clip_dir)
    batch = encode(tok, ["the cat", ""], max_length=6, kind="clip")
    assert isinstance(batch, TokenizedBatch)
    np.testing.assert_array_equal(batch.ids, [[SOT, VOCAB["the</w>"], VOCAB["cat</w>"], EOT, 0, 0],
                                              [SOT, EOT, 0, 0, 0, 0]])
    np.testing.assert_array_equal(batch.attention_mask, [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])


def test_clip_pad_id_is_configurable(clip_dir):
    batch = encode(load_clip_tokenizer(clip_dir), "the", max_length=5, kind="clip", pad_id=EOT)
    np.testing.assert_array_equal(batch.ids, [[SOT, VOCAB["the</w>"], EOT, EOT, EOT]])


def test_clip_cleaning_matches_openclip():
    # ftfy's width fix, quote uncurling, ligatures; html unescaped twice; whitespace collapsed.
    assert clean_clip_text("  坐在海边，黄昏　“Hi” ﬁne &amp;lt;b&amp;gt;\n\tok ") == '坐在海边,黄昏 "Hi" fine <b> ok'


def test_clip_truncation_keeps_start_and_reports_the_rest(clip_dir):
    tok = load_clip_tokenizer(clip_dir)
    batch = encode(tok, ["the cat the dog the sea", "the cat the dog"], max_length=6, kind="clip")
    the, cat, dog = VOCAB["the</w>"], VOCAB["cat</w>"], VOCAB["dog</w>"]
    np.testing.assert_array_equal(batch.ids, [[SOT, the, cat, the, dog, EOT], [SOT, the, cat, the, dog, EOT]])
    assert batch.truncated == ["the sea", None]  # exactly max_length - 2 tokens fit without a cut


def test_clip_default_context_77(clip_dir):
    tok = load_clip_tokenizer(clip_dir)
    batch = encode(tok, ["cat " * 100, "dog"], kind="clip")
    assert batch.ids.shape == (2, 77)
    assert batch.ids[0, 0] == SOT and batch.ids[0, 76] == EOT
    assert (batch.ids[0, 1:76] == VOCAB["cat</w>"]).all()
    assert batch.truncated[0] == " ".join(["cat"] * 25)
    assert batch.truncated[1] is None and batch.attention_mask[1].sum() == 3


def test_clip_truncation_inside_a_cjk_character(clip_dir):
    # 中 is three byte tokens (no merges): cutting between them reports the whole character.
    tok = load_clip_tokenizer(clip_dir)
    batch = encode(tok, ["the 中"], max_length=5, kind="clip")
    table = byte_table()
    first_byte = VOCAB[table["中".encode()[0]]]
    np.testing.assert_array_equal(batch.ids[0], [SOT, VOCAB["the</w>"], first_byte, VOCAB[table[0xb8]], EOT])
    assert batch.truncated == ["中"]


def test_openclip_gz_vocab_gives_same_ids(clip_dir, tmp_path):
    gz = tmp_path / "oc" / "bpe_simple_vocab_16e6.txt.gz"
    gz.parent.mkdir()
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("\"bpe_simple_vocab_16e6.txt#version: 0.2\n" + "\n".join(" ".join(m) for m in MERGES) + "\n")
    texts = ["cats on the sea, it's 海海!", "the dog"]
    want = encode(load_clip_tokenizer(clip_dir), texts, max_length=20).ids
    for source in (gz, gz.parent):
        np.testing.assert_array_equal(encode(load_clip_tokenizer(source), texts, max_length=20).ids, want)


# ---------------------------------------------------------------------------------------------------------------
# WordPiece


def test_wordpiece_layout(wordpiece_dir):
    tok = load_wordpiece_tokenizer(wordpiece_dir)
    batch = encode(tok, ["坐在海边，Hello World! naïve cats xyz", ""], max_length=20, kind="wordpiece")
    body = [WP[t] for t in ["坐", "在", "海", "边", "，", "hello", "world", "!", "na", "##ive", "cat", "##s",
                            "[UNK]"]]
    expected = np.zeros((2, 20), dtype=np.int32)
    expected[0, :len(body) + 2] = [WP["[CLS]"], *body, WP["[SEP]"]]
    expected[1, :2] = [WP["[CLS]"], WP["[SEP]"]]
    np.testing.assert_array_equal(batch.ids, expected)
    assert batch.ids.dtype == np.int32
    assert batch.attention_mask.sum(axis=1).tolist() == [len(body) + 2, 2]
    assert batch.truncated == [None, None]


def test_wordpiece_style_prefix_is_one_token(wordpiece_dir):
    batch = encode(load_wordpiece_tokenizer(wordpiece_dir), "義 少年", max_length=6, kind="wordpiece")
    np.testing.assert_array_equal(batch.ids[0], [WP["[CLS]"], WP["義"], WP["少"], WP["年"], WP["[SEP]"], 0])


def test_wordpiece_truncation(wordpiece_dir):
    tok = load_wordpiece_tokenizer(wordpiece_dir)
    batch = encode(tok, ["坐在海边看海浪的少年，黄昏"], max_length=8, kind="wordpiece")
    kept = [WP[c] for c in "坐在海边看海"]
    np.testing.assert_array_equal(batch.ids[0], [WP["[CLS]"], *kept, WP["[SEP]"]])
    assert batch.truncated == ["浪的少年，黄昏"]


def test_wordpiece_vocab_file_path_and_reference_name(wordpiece_dir, tmp_path):
    other = tmp_path / "ref"
    other.mkdir()
    (other / "vocab_zh.txt").write_bytes((wordpiece_dir / "vocab.txt").read_bytes())
    want = encode(load_wordpiece_tokenizer(wordpiece_dir), "黄昏的海", kind="wordpiece").ids
    for source in (other, other / "vocab_zh.txt"):
        np.testing.assert_array_equal(encode(load_wordpiece_tokenizer(source), "黄昏的海", kind="wordpiece").ids,
                                      want)


# ---------------------------------------------------------------------------------------------------------------
# Errors


def test_missing_clip_files_name_the_file(clip_dir):
    (clip_dir / "merges.txt").unlink()
    with pytest.raises(ModelError, match="merges.txt"):
        load_clip_tokenizer(clip_dir)
    (clip_dir / "vocab.json").unlink()
    with pytest.raises(ModelError, match="vocab.json"):
        load_clip_tokenizer(clip_dir)
    with pytest.raises(ModelError, match="not found"):
        load_clip_tokenizer(clip_dir / "nowhere")


def test_missing_wordpiece_file_names_the_file(tmp_path):
    with pytest.raises(ModelError, match="vocab.txt"):
        load_wordpiece_tokenizer(tmp_path)
    with pytest.raises(ModelError, match="not found"):
        load_wordpiece_tokenizer(tmp_path / "missing.txt")


def test_vocab_without_specials_is_rejected(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    with pytest.raises(ModelError, match=r"\[CLS\]"):
        load_wordpiece_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(ModelError, match="startoftext"):
        load_clip_tokenizer(tmp_path)


def test_unknown_kind(clip_dir):
    with pytest.raises(ModelError, match="kind"):
        encode(load_clip_tokenizer(clip_dir), "the", kind="sentencepiece")
