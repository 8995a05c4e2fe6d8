"""The conditioner's assembly of `context` and `y`, checked against the rule computed independently:

    context = concat(encoder token features, along channels, in manifest order)
    y       = concat(pooled features of the `pooled` encoders, in manifest order,
                     [cos(i·f), sin(i·f)] of the size-bucket INDEX i, f_k = 10000^(-k/half))
"""

from __future__ import annotations

import math

import numpy as np
import pytest

PROMPTS = ["一只红色的猫在海边", "a red cat on the sea", ""]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model (zh HF-CLIP tower on a WordPiece vocabulary, pooled en OpenCLIP tower), loaded."""
    from pangu_cli import runtime
    from pangu_cli.models.loader import load_model
    from pangu_cli.models.registry import resolve
    from tiny_model import make_tiny_model

    runtime.setup("CPU")
    return load_model(resolve(str(make_tiny_model(tmp_path_factory.mktemp("cond") / "tiny"))))


def _sinusoid(index: int, dim: int, batch: int) -> np.ndarray:
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
    args = float(index) * freqs
    return np.tile(np.concatenate([np.cos(args), np.sin(args)])[None], (batch, 1))


def _run_embedders(ms, conditioner, texts):
    """Each TextEmbedder on its own tokenization: [(context, pooled)] as numpy, manifest order."""
    from pangu_cli.models.tokenizers import encode

    outputs = []
    for spec, embedder, tokenizer in zip(conditioner.specs, conditioner.embedders, conditioner.tokenizers):
        batch = encode(tokenizer, texts, max_length=77, kind=spec["tokenizer"]["kind"])
        context, pooled = embedder(ms.Tensor(batch.ids), ms.Tensor(batch.attention_mask))
        outputs.append((context.asnumpy(), pooled.asnumpy()))
    return outputs


def test_context_and_y_follow_the_reference_rule(ms, tiny):
    conditioner, bucket_index = tiny.conditioner, 3
    got = conditioner.encode(PROMPTS, bucket_index)
    (zh_context, zh_pooled), (en_context, en_pooled) = _run_embedders(ms, conditioner, PROMPTS)

    assert zh_context.shape == (3, 77, 32) and en_context.shape == (3, 77, 32)
    expected_context = np.concatenate([zh_context, en_context], axis=-1)  # zh first, as in the manifest
    # Only the English tower is flagged `pooled`; the size embedding (dim 16) comes last.
    expected_y = np.concatenate([en_pooled, _sinusoid(bucket_index, 16, 3)], axis=-1)

    assert got.context.dtype == np.float32 and got.y.dtype == np.float32
    assert got.context.shape == (3, 77, 64) and got.y.shape == (3, 48)
    assert got.y.shape[1] == tiny.spec.manifest["unet"]["adm_in_channels"]
    np.testing.assert_array_equal(got.context, expected_context)
    np.testing.assert_array_equal(got.y[:, :32], en_pooled)
    np.testing.assert_allclose(got.y, expected_y, rtol=0, atol=2e-6)
    assert got.truncated == [[], [], []]
    assert got.as_cond().keys() == {"context", "y"}


def test_size_embedding_uses_the_bucket_index_not_the_size(ms, tiny):
    """Bucket 3 is 48x24: its embedding is that of the number 3, cosines first."""
    y = tiny.conditioner.encode(["a cat"], 3).y[0, 32:]
    assert tiny.spec.buckets[3] == (48, 24)
    np.testing.assert_allclose(y[:8], np.cos(3.0 * np.exp(-math.log(10000.0) * np.arange(8) / 8)), atol=2e-6)
    np.testing.assert_allclose(y[8:], np.sin(3.0 * np.exp(-math.log(10000.0) * np.arange(8) / 8)), atol=2e-6)
    assert y[0] == pytest.approx(math.cos(3.0))  # the first frequency is 1
    first = tiny.conditioner.encode(["a cat"], 0).y[0, 32:]
    np.testing.assert_array_equal(first, np.r_[np.ones(8), np.zeros(8)])


def test_each_prompt_is_encoded_independently_of_the_batch(ms, tiny):
    together = tiny.conditioner.encode(PROMPTS, 1)
    for i, prompt in enumerate(PROMPTS):
        alone = tiny.conditioner.encode([prompt], 1)
        np.testing.assert_allclose(alone.context[0], together.context[i], rtol=0, atol=1e-5)
        np.testing.assert_allclose(alone.y[0], together.y[i], rtol=0, atol=1e-5)


def test_empty_negative_prompt_is_the_real_encoding_of_the_empty_string(ms, tiny):
    """The unconditional branch encodes "" (start and end tokens); the reference never zeroes it."""
    got = tiny.conditioner.encode([""], 2)
    (zh_context, _), (en_context, en_pooled) = _run_embedders(ms, tiny.conditioner, [""])
    np.testing.assert_array_equal(got.context, np.concatenate([zh_context, en_context], axis=-1))
    np.testing.assert_array_equal(got.y[:, :32], en_pooled)
    assert np.abs(got.context[:, :, :32]).max() > 0.1 and np.abs(got.context[:, :, 32:]).max() > 0.1
    assert np.abs(got.y[:, :32]).max() > 0.01  # small: random layer-norm gains of scale 0.05
    assert not np.allclose(got.context, tiny.conditioner.encode(["a cat"], 2).context)


def test_generator_builds_the_uncond_branch_from_the_empty_prompt(ms, tiny, monkeypatch):
    from pangu_cli.sampling.pipeline import Generator
    from pangu_cli.settings import ImageSettings

    settings = ImageSettings(prompt="a red cat", seed=0, steps=1, guidance=5.0, sampler="euler",
                             width=8, height=8, bucket_index=0, model="tiny")
    guidance, texts = Generator(tiny).branch_texts(settings)
    assert texts == ["", "a red cat"] and guidance.n_branches == 2


def test_truncation_notes_name_the_encoder_and_the_cut_text(ms, tiny):
    # "red", "cat", "on", "the" are one token each in both vocabularies: 100 tokens, 75 fit.
    words = ["red", "cat", "on", "the"] * 25
    long_prompt = " ".join(words)
    cut = " ".join(words[75:])
    got = tiny.conditioner.encode(["a cat", long_prompt], 0)
    assert got.truncated[0] == []
    assert got.truncated[1] == [f"zh: {cut}", f"en: {cut}"]


def test_language_less_encoder_is_named_by_kind(ms, tiny, tmp_path):
    from pangu_cli.models.conditioner import Conditioner
    from tiny_model import write_tokenizers

    write_tokenizers(tmp_path)
    spec = dict(tiny.conditioner.specs[1])
    spec.pop("language")
    conditioner = Conditioner([spec], size_embed_dim=None)
    conditioner.load_tokenizers(lambda rel: tmp_path / rel)
    got = conditioner.encode(["red " * 80], 0)
    assert got.y.shape == (1, 32)  # pooled only: no size embedding configured
    assert got.truncated == [["openclip: red red red red red"]]  # 80 tokens, 75 fit


def test_bert_tower_gets_the_attention_mask_and_pooled_order_follows_the_manifest(ms, tiny, tmp_path):
    """Three towers, two pooled: y = [pooled(bert), pooled(openclip), size]; the BERT tower sees the mask."""
    from pangu_cli.models.conditioner import Conditioner
    from pangu_cli.models.tokenizers import encode
    from tiny_model import write_tokenizers

    zh_size, en_size = write_tokenizers(tmp_path)
    bert = {"kind": "bert", "pooled": True, "language": "zh",
            "config": {"vocab_size": zh_size, "hidden_size": 16, "layers": 1, "heads": 2,
                       "intermediate_size": 32, "max_position_embeddings": 77},
            "tokenizer": {"kind": "wordpiece", "path": "tokenizers/zh"}}
    specs = [bert, dict(tiny.conditioner.specs[1]), dict(tiny.conditioner.specs[0])]
    conditioner = Conditioner(specs, size_embed_dim=8)
    conditioner.load_tokenizers(lambda rel: tmp_path / rel)
    texts = ["红色的猫", "a red cat on the sea"]
    got = conditioner.encode(texts, 4)

    towers = conditioner.embedders
    zh = encode(conditioner.tokenizers[0], texts, 77, kind="wordpiece")
    bert_context, bert_pooled = (t.asnumpy() for t in towers[0].tower(ms.Tensor(zh.ids), ms.Tensor(zh.attention_mask)))
    unmasked, _ = towers[0].tower(ms.Tensor(zh.ids), None)
    assert not np.allclose(unmasked.asnumpy(), bert_context, atol=1e-4)  # the mask matters here
    en = encode(conditioner.tokenizers[1], texts, 77, kind="clip")
    en_context, en_pooled = (t.asnumpy() for t in towers[1].tower(ms.Tensor(en.ids)))
    zh2 = encode(conditioner.tokenizers[2], texts, 77, kind="wordpiece")
    hf_context, _ = towers[2].tower(ms.Tensor(zh2.ids))

    np.testing.assert_array_equal(got.context, np.concatenate([bert_context, en_context, hf_context.asnumpy()], -1))
    assert got.y.shape == (2, 16 + 32 + 8)
    np.testing.assert_allclose(got.y, np.concatenate([bert_pooled, en_pooled, _sinusoid(4, 8, 2)], -1),
                               rtol=0, atol=2e-6)


def test_encoders_must_agree_on_sequence_length(ms, tiny, tmp_path):
    from pangu_cli.errors import ModelError
    from pangu_cli.models.conditioner import Conditioner
    from tiny_model import write_tokenizers

    write_tokenizers(tmp_path)
    short = {**tiny.conditioner.specs[1], "max_length": 20}
    conditioner = Conditioner([tiny.conditioner.specs[0], short])
    conditioner.load_tokenizers(lambda rel: tmp_path / rel)
    with pytest.raises(ModelError, match=r"disagree on sequence length \[20, 77\]"):
        conditioner.encode(["a cat"], 0)
    with pytest.raises(ModelError, match="no tokenizers loaded"):
        Conditioner([tiny.conditioner.specs[0]]).encode(["a cat"], 0)
