"""The pangu-mini trainer on a tiny config: time ranges and data per role, tokenizers, learning,
bit-exact resume, and an export that loads and generates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pangu_cli.ratios import scale_size
from pangu_cli.sampling.schedules import sigma_table
from pangu_cli.training.config import load_config
from pangu_cli.training.trainer import (TextTokenizer, ensure_tokenizers, export, make_batch, model_manifest,
                                        plan_step, train)

TINY = {
    "batch_size": 2,
    "unet": {"model_channels": 32, "channel_mult": [1, 2], "attention_levels": [1], "num_head_channels": 16},
    "text": {"width": 32, "layers": 1, "heads": 2, "size_embed_dim": 16, "zh_max_length": 24,
             "en_max_length": 32},
    "tokenizer": {"scenes": 60, "common_chars": 3000},
    # Every batch in the 1:1 bucket: one input shape (32x32) for both roles keeps the test fast.
    "data": {"square_prob": 1.0},
    "optim": {"warmup_steps": 1, "lr": 2e-3, "text_lr": 2e-3, "ema_every": 3},
    "log_every": 1,
    "probe_every": 2,
    # Texture from the third step on (pangu-mini's own pattern gives it every fourth).
    "phases": [{"name": "split", "pattern": ["structure", "structure", "texture"]}],
    "jit": False,  # PyNative: no compile time in tests (the jit step is checked against it separately)
}


@pytest.fixture(scope="module")
def tokens_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    config = load_config(TINY)
    return root, config, ensure_tokenizers(config, root)


def test_plan_cycles_roles_and_phases():
    config = load_config({**TINY, "phases": [
        {"name": "shared", "steps": 4, "pattern": ["structure", "texture"],
         "unets": {"structure": "shared", "texture": "shared"}},
        {"name": "split", "pattern": ["structure", "structure", "texture"],
         "init": {"structure": "shared", "texture": "shared"}}]})
    plans = [plan_step(config, n) for n in range(10)]
    assert [p.unet for p in plans[:4]] == ["shared"] * 4
    assert [p.role for p in plans[:4]] == ["structure", "texture"] * 2
    assert [p.role for p in plans[4:10]] == ["structure", "structure", "texture"] * 2
    assert [p.unet for p in plans[4:7]] == ["structure", "structure", "texture"]
    assert plans[4].phase_start == 4 and plans[9].phase_index == 1
    bounded = load_config({**TINY, "phases": [{"name": "only", "steps": 3}]})
    assert plan_step(bounded, 2) is not None and plan_step(bounded, 3) is None


def test_batches_respect_time_ranges_sizes_and_are_deterministic(tokens_root):
    root, _, sizes = tokens_root
    config = load_config({**TINY, "batch_size": 16, "data": {"square_prob": 0.0},
                          "roles": {"structure": {"low_quality_prob": 0.5}}})
    tokenizer = TextTokenizer(model_manifest(config, sizes), root)
    buckets = config.buckets()
    reference_snr = 1.0 / sigma_table().astype(np.float64) ** 2
    assert config.snr_shift == 16.0
    seen = set()
    for step in range(6):
        for role, (lo, hi) in (("structure", (150, 1000)), ("texture", (0, 250)), ("full", (0, 1000))):
            batch = make_batch(config, tokenizer, step, role)
            assert batch["t"].min() >= lo and batch["t"].max() < hi
            width, height = buckets[batch["bucket_index"]]
            structure = scale_size(width, height, config.structure_scale, 2)  # 2 levels: sides even
            expected = {"full": (width, height), "structure": structure, "texture": (32, 32)}[role]
            assert batch["x0"].shape == (16, 3, expected[1], expected[0])
            assert batch["x0"].min() >= -1.0 and batch["x0"].max() <= 1.0
            assert np.all(batch["bucket"] == batch["bucket_index"])  # crops keep the full image's bucket
            np.testing.assert_allclose(batch["signal"] ** 2 + batch["sigma"] ** 2, 1.0, rtol=1e-6)
            # The run's schedule: the reference's SNR divided by snr_shift, at each item's own t.
            snr = (batch["signal"] / batch["sigma"]).ravel() ** 2
            np.testing.assert_allclose(snr, reference_snr[batch["t"]] / config.snr_shift, rtol=1e-4)
            seen.add(batch["bucket_index"])
    assert len(seen) > 1
    a = make_batch(config, tokenizer, 3, "texture")
    b = make_batch(config, tokenizer, 3, "texture")
    assert a["texts"] == b["texts"] and np.array_equal(a["x0"], b["x0"]) and np.array_equal(a["noise"], b["noise"])
    assert not np.array_equal(a["x0"], make_batch(config, tokenizer, 4, "texture")["x0"])


def test_captions_get_style_prefixes_and_dropout(tokens_root):
    root, _, sizes = tokens_root
    config = load_config({**TINY, "batch_size": 200, "data": {"style_prefix_prob": 1.0, "cond_drop": 0.25}})
    batch = make_batch(config, TextTokenizer(model_manifest(config, sizes), root), 0, "structure")
    texts = batch["texts"]
    empty = sum(t == "" for t in texts)
    assert 25 <= empty <= 75
    assert sum(t[:1] in "義饅霙" for t in texts) > 50


def test_tokenizers_are_deterministic_and_cover_the_corpus(tokens_root, tmp_path):
    root, config, sizes = tokens_root
    again = ensure_tokenizers(config, tmp_path)
    assert again == sizes
    for rel in ("tokenizers/zh/vocab.txt", "tokenizers/en/vocab.json", "tokenizers/en/merges.txt"):
        assert (root / rel).read_bytes() == (tmp_path / rel).read_bytes()
    tokenizer = TextTokenizer(model_manifest(config, sizes), root)
    zh_tok, en_tok = tokenizer.tokenizers
    en_vocab = json.loads((root / "tokenizers/en/vocab.json").read_text(encoding="utf-8"))
    assert en_vocab["<|endoftext|>"] == max(en_vocab.values())  # OpenCLIP pools at the largest id
    texts = ["義 一只红色的圆形在蓝色背景上", "a big red circle 在左上角, 蓝色背景", "霙 zebra 斑马 ü"]
    ids = tokenizer(texts)[0]
    assert not np.any(ids == zh_tok.unk_token_id)
    assert zh_tok.convert_ids_to_tokens(int(ids[0, 1])) == "義"  # trigger chars are whole tokens


def test_text_tokenizer_matches_the_conditioner(ms, tokens_root):
    from pangu_cli.models.conditioner import Conditioner

    root, config, sizes = tokens_root
    manifest = model_manifest(config, sizes)
    conditioner = Conditioner(manifest["text_encoders"], config.text.size_embed_dim, routing="language",
                              concat="sequence")
    conditioner.load_tokenizers(lambda rel: root / rel)
    texts = ["", "義 a red circle on the left", "一个蓝色的大方块，右上角", "a green 星星 在中间，white background"]
    ours = TextTokenizer(manifest, root)(texts)
    batches, _ = conditioner.tokenize(texts)
    theirs = tuple(a for b in batches for a in (b.ids, b.attention_mask))
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


def test_steps_lower_the_loss_on_a_fixed_batch(ms, tmp_path):
    from pangu_cli.training.trainer import Trainer

    # A lower rate than TINY's, so that six steps on one batch descend rather than oscillate; the reference
    # schedule, whose structure range keeps more of the image to fit than the shifted one.
    config = load_config({**TINY, "batch_size": 4, "snr_shift": 1.0,
                          "optim": {**TINY["optim"], "lr": 1e-3, "text_lr": 1e-3}})
    trainer = Trainer(config, tmp_path)
    batch = make_batch(config, TextTokenizer(trainer.manifest, tmp_path), 0, "structure")
    step, inputs = trainer._step_fn("structure"), trainer.step_inputs(batch)
    losses, aux = zip(*[[float(t.asnumpy()) for t in step(*inputs)] for _ in range(6)])
    assert min(losses[1:]) < 0.8 * losses[0] and losses[-1] < losses[0], losses
    assert aux[-1] < 0.8 * aux[0], aux  # the attribute head learns the batch's labels too


@pytest.fixture(scope="module")
def trained_runs(ms, tmp_path_factory):
    """Run A: 2 steps, stopped, resumed for 1 more; run B: 3 steps straight (EMA every 3 steps: the
    resumed step carries a pending EMA count across the stop)."""
    base = tmp_path_factory.mktemp("runs")
    first = train(TINY, base / "a", max_steps=2, data_process=False, log=None)
    resumed = train(None, base / "a", max_steps=1, data_process=False, log=None)
    straight = train(TINY, base / "b", max_steps=3, data_process=False, log=None)
    return base, first, resumed, straight


def test_resume_continues_bit_exactly(trained_runs):
    from pangu_cli.models.checkpoint import load_state

    base, first, resumed, straight = trained_runs
    assert first["step"] == 2 and resumed["first_step"] == 2 and resumed["step"] == straight["step"] == 3
    assert resumed["last_loss"] == straight["last_loss"]
    a = load_state(next((base / "a").glob("checkpoint-*.safetensors")))
    b = load_state(next((base / "b").glob("checkpoint-*.safetensors")))
    assert a.keys() == b.keys()
    for key in a:  # weights, optimizer moments and EMA all continue as if never stopped
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    log = [json.loads(line) for line in (base / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log if "event" in r] == ["start", "probe", "stop", "resume", "stop"]
    probe = next(r for r in log if r.get("event") == "probe")
    assert probe["step"] == 2 and probe["role"] == "structure"  # the texture UNet does not exist yet
    assert probe["mse_right"] > 0 and probe["mse_rotated"] > 0
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]


def test_export_loads_and_generates(trained_runs, tmp_path):
    from pangu_cli.models.checkpoint import load_state
    from pangu_cli.models.loader import load_model
    from pangu_cli.models.registry import resolve
    from pangu_cli.sampling.pipeline import Generator
    from pangu_cli.settings import ImageSettings

    base, *_ = trained_runs
    folder = export(base / "a", tmp_path / "mini")
    manifest = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    assert manifest["vae"] is None and manifest["sampling"]["structure_scale"] == 0.25
    assert manifest["prediction"] == "v" and manifest["schedule"] == {"snr_shift": 16.0}
    assert manifest["conditioning"] == {"routing": "language", "concat": "sequence"}
    texture = load_state(folder / "texture.safetensors")
    assert all(v.dtype == np.float16 for v in texture.values())
    assert not any("text_head" in k for k in texture)  # the attribute head is for training only
    run_state = load_state(next((base / "a").glob("checkpoint-*.safetensors")))
    key = "conditioner.embedders.0.model.embeddings.word_embeddings.embedding_table"
    np.testing.assert_array_equal(texture[key], run_state["ema." + key].astype(np.float16))

    spec = resolve(str(folder))
    model = load_model(spec)
    assert set(model.unets) == {"structure", "texture"}
    w, h = spec.buckets[5]
    settings = ImageSettings(prompt="义 一只红色的圆形 on a blue background", seed=1, steps=4, guidance=3.0,
                             sampler="euler", width=w, height=h, bucket_index=5, model=spec.name,
                             switch_t=500, switch_lag=False, styles={"art": 1.0})
    out = Generator(model).generate(settings)
    assert out.pixels.shape == (h, w, 3) and out.pixels.dtype == np.uint8
    assert out.expert_steps == ["structure", "structure", "texture", "texture"]


@pytest.mark.slow
def test_compiled_step_matches_the_pynative_step(ms, tmp_path):
    """The compiled training step (the real runs use it) computes the same losses as PyNative."""
    from pangu_cli.training.trainer import Trainer

    losses = {}
    for jit in (False, True):
        config = load_config({**TINY, "batch_size": 4, "jit": jit})
        trainer = Trainer(config, tmp_path / str(jit))
        batch = make_batch(config, TextTokenizer(trainer.manifest, tmp_path / str(jit)), 0, "structure")
        step, inputs = trainer._step_fn("structure"), trainer.step_inputs(batch)
        losses[jit] = [float(t.asnumpy()) for _ in range(3) for t in step(*inputs)]  # denoising, attribute
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)
    assert losses[True][-2] < losses[True][0] and losses[True][-1] < losses[True][1]  # both losses descend


def test_text_probe_compares_own_and_rotated_captions(ms, tmp_path):
    from pangu_cli.training.trainer import Trainer

    trainer = Trainer(load_config({**TINY, "batch_size": 3}), tmp_path / "a")
    assert trainer.text_probe("structure", "structure", batches=1)["text_gain"] == 0.0  # zero-init outputs
    rng = np.random.default_rng(0)
    for param in trainer.unet("structure").get_parameters():  # as if trained: every path carries signal
        param.set_data(ms.Tensor(param.asnumpy() + 0.05 * rng.standard_normal(param.shape).astype(np.float32)))
    probe = trainer.text_probe("structure", "structure", batches=1)
    assert probe["mse_right"] > 0 and probe["mse_rotated"] > 0
    assert probe["mse_right"] != probe["mse_rotated"]
    # Every caption dropped: rotating identical (empty) captions changes nothing.
    blind = Trainer(load_config({**TINY, "batch_size": 3, "data": {**TINY["data"], "cond_drop": 1.0}}), tmp_path / "b")
    probe = blind.text_probe("structure", "structure", batches=1)
    assert probe["mse_right"] == probe["mse_rotated"] and probe["text_gain"] == 0.0


def test_runs_saved_before_the_schedule_shift_keep_the_reference_schedule(tmp_path):
    from pangu_cli.training.config import config_to_dict
    from pangu_cli.training.trainer import _resolve_config

    old = config_to_dict(load_config(TINY))
    del old["snr_shift"], old["text_aux_weight"]  # what a run saved before either existed
    (tmp_path / "config.json").write_text(json.dumps(old), encoding="utf-8")
    assert _resolve_config(None, tmp_path).snr_shift == 1.0
    assert _resolve_config(None, tmp_path).text_aux_weight == 0.0  # and it trains without the head
    assert load_config(TINY).snr_shift == 16.0  # a new run gets pangu-mini's shift
    assert load_config(TINY).text_aux_weight > 0


def test_without_the_attribute_head_the_step_and_checkpoint_have_none(ms, tmp_path):
    from pangu_cli.models.checkpoint import load_state

    summary = train({**TINY, "text_aux_weight": 0.0}, tmp_path, max_steps=1, data_process=False, log=None)
    assert summary["step"] == 1 and np.isfinite(summary["last_loss"])
    state = load_state(next(tmp_path.glob("checkpoint-*.safetensors")))
    assert not any("text_head" in k for k in state)
    assert any(k.startswith("net.conditioner.") for k in state)
