"""The text-to-image pipeline on the tiny random model: determinism, the structure/texture hand-over,
one batched UNet call per step, style branches, and agreement with the same sampling done by hand."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

PROMPT = "a red circle on the sea"


def _one_level_unet() -> dict:
    """The tiny model's UNet cut to one level (no resampling, attention in the middle only): these tests
    are about the plumbing around the networks, and PyNative's cost is per operation."""
    from tiny_model import TINY_MANIFEST

    return {**TINY_MANIFEST["unet"], "channel_mult": [1], "attention_resolutions": [], "transformer_depth": [1]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from pangu_cli import runtime
    from tiny_model import make_tiny_model

    runtime.setup("CPU")
    return make_tiny_model(tmp_path_factory.mktemp("pipeline") / "tiny", unet=_one_level_unet())


def _load(folder):
    from pangu_cli.models.loader import load_model
    from pangu_cli.models.registry import resolve

    return load_model(resolve(str(folder)))


@pytest.fixture(scope="module")
def tiny(folder):
    return _load(folder)


def _settings(**changes):
    from pangu_cli.settings import ImageSettings

    # 8x8 pixels = a 4x4 latent (the VAE halves the size).
    base = dict(prompt=PROMPT, seed=7, steps=3, guidance=6.0, sampler="euler", width=8, height=8,
                bucket_index=1, model="tiny", styles={"art": 4.0})
    return ImageSettings(**{**base, **changes})


def _generate(model, **changes):
    from pangu_cli.sampling.pipeline import Generator

    return Generator(model).generate(_settings(**changes))


class UNetSpy:
    """Stands in for a UNet Cell: records each call's inputs, then runs the real network."""

    def __init__(self, unet, name: str, log: list):
        self.unet, self.name, self.log = unet, name, log

    def __call__(self, x, timesteps, context=None, y=None):
        self.log.append({"unet": self.name, "x": x.asnumpy(), "t": timesteps.asnumpy(),
                         "context": context.asnumpy(), "y": y.asnumpy()})
        return self.unet(x, timesteps, context, y)


def _spied(model):
    log: list = []
    unets = {role: UNetSpy(unet, role, log) for role, unet in model.unets.items()}
    return dataclasses.replace(model, unets=unets), log


@pytest.fixture
def fake_unets(monkeypatch):
    """Replace the UNets' ε by zeros and log which UNet Cell answered each call (for long schedules)."""
    from pangu_cli.sampling import pipeline

    answered: list = []

    def eps_model(unet):
        def eps(x_in, t, cond):
            answered.append(unet)
            return np.zeros_like(x_in)

        return eps

    monkeypatch.setattr(pipeline, "unet_eps_model", eps_model)
    return answered


# --------------------------------------------------------------------------------------------------
# Determinism


def test_same_settings_give_identical_pixels(ms, tiny):
    first = _generate(tiny, steps=2)
    other = _generate(tiny, steps=2, seed=8)
    again = _generate(tiny, steps=2)  # after another image: nothing carries over between calls
    assert first.pixels.dtype == np.uint8 and first.pixels.shape == (8, 8, 3)
    assert first.pixels.tobytes() == again.pixels.tobytes()
    assert first.latent.tobytes() == again.latent.tobytes()
    assert len(np.unique(first.pixels)) > 10  # a real image, not a saturated one

    assert not np.array_equal(other.latent, first.latent)
    assert other.pixels.tobytes() != first.pixels.tobytes()
    assert set(first.timings) == {"encode", "denoise", "decode"}


# --------------------------------------------------------------------------------------------------
# The two-stage hand-over


def _expected_split(steps: int, switch_t: int, lag: bool = True) -> int:
    """Structure steps by the reference's rule, from its timesteps: step i runs the structure UNet when
    the previous step's timestep (lag) or its own is >= switch_t; step 0 always does with the lag."""
    timesteps = np.linspace(999, 0, steps, endpoint=False).astype(int)
    if lag:
        return sum(1 for i in range(steps) if i == 0 or timesteps[i - 1] >= switch_t)
    return int(np.sum(timesteps >= switch_t))


@pytest.mark.parametrize("switch_t, lag, structure", [(500, True, 21), (500, False, 20), (700, True, 13),
                                                       (1000, True, 1)])
def test_structure_and_texture_share_the_steps(ms, tiny, fake_unets, switch_t, lag, structure):
    assert _expected_split(40, switch_t, lag) == structure
    result = _generate(tiny, steps=40, switch_t=switch_t, switch_lag=lag, styles={})
    assert result.expert_steps == ["structure"] * structure + ["texture"] * (40 - structure)
    # The log names the Cells that really answered, in the same order.
    assert fake_unets == [tiny.unets["structure"]] * structure + [tiny.unets["texture"]] * (40 - structure)


def test_single_unet_model_runs_every_step_on_texture(ms, folder, tmp_path, fake_unets):
    import json
    import shutil

    single = shutil.copytree(folder, tmp_path / "single", ignore=shutil.ignore_patterns("structure.*"))
    manifest = json.loads((single / "model.json").read_text(encoding="utf-8"))
    del manifest["checkpoints"]["structure"]
    (single / "model.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    model = _load(single)
    assert list(model.unets) == ["texture"]
    result = _generate(model, steps=12, switch_t=500)
    assert result.expert_steps == ["texture"] * 12
    assert fake_unets == [model.unets["texture"]] * 12


# --------------------------------------------------------------------------------------------------
# Guidance: branches, batching


@pytest.mark.parametrize("styles, guidance, expected_texts", [
    ({"photo": 2.0, "art": 4.0, "anime": 0.0}, 6.0, ["ugly", PROMPT, "義 " + PROMPT, "霙 " + PROMPT]),
    ({}, 6.0, ["ugly", PROMPT]),
    ({"anime": 1.5}, 1.0, [PROMPT, "饅 " + PROMPT]),  # s = 1: no unconditional branch
])
def test_one_unet_call_per_step_with_every_branch_batched(ms, tiny, monkeypatch, styles, guidance,
                                                          expected_texts):
    model, log = _spied(tiny)
    encoded = []
    encode = model.conditioner.encode
    monkeypatch.setattr(model.conditioner, "encode",
                        lambda texts, index: encoded.append((list(texts), index)) or encode(texts, index))

    # Two steps, switching after the first (lag rule: step 1 looks at step 0's t = 999 < 1000).
    result = _generate(model, steps=2, switch_t=1000, styles=styles, guidance=guidance, negative="ugly")

    assert encoded == [(expected_texts, 1)]  # one encoder pass for all branches
    branches = len(expected_texts)
    assert [call["unet"] for call in log] == result.expert_steps == ["structure", "texture"]
    reference = encode(expected_texts, 1)
    for call in log:
        assert call["x"].shape == (branches, 4, 4, 4)
        assert np.all(call["x"] == call["x"][:1])  # the same latent in every branch
        assert len(set(call["t"].tolist())) == 1
        np.testing.assert_array_equal(call["context"], reference.context)
        np.testing.assert_array_equal(call["y"], reference.y)


def test_unknown_style_branch_is_a_usage_error(ms, tiny, fake_unets):
    from pangu_cli.errors import UsageError

    with pytest.raises(UsageError, match="no style branch 'sketch'") as error:
        _generate(tiny, styles={"art": 4.0, "sketch": 2.0})
    assert "art, anime, photo" in error.value.hint
    _generate(tiny, steps=1, styles={"sketch": 0.0})  # a disabled branch needs no prefix


def test_unknown_sampler_and_bad_size_are_usage_errors(ms, tiny):
    from pangu_cli.errors import UsageError

    with pytest.raises(UsageError, match="unknown sampler 'heun'"):
        _generate(tiny, sampler="heun")
    with pytest.raises(UsageError, match="not a multiple of 2"):
        _generate(tiny, width=9)


# --------------------------------------------------------------------------------------------------
# The pipeline equals the same sampling written out by hand


@pytest.mark.parametrize("snr_shift", [1.0, 16.0])
def test_pipeline_equals_manual_sampling(ms, tiny, snr_shift):
    from pangu_cli.sampling.denoisers import DiscreteEpsDenoiser, GuidedDenoiser
    from pangu_cli.sampling.guidance import Guidance
    from pangu_cli.sampling.samplers import sample_euler
    from pangu_cli.sampling.schedules import reference_sigmas, sigma_table

    if snr_shift != 1.0:  # the model's own noise schedule (model.json schedule.snr_shift) reaches the sampler
        manifest = {**tiny.spec.manifest, "schedule": {"snr_shift": snr_shift}}
        tiny = dataclasses.replace(tiny, spec=dataclasses.replace(tiny.spec, manifest=manifest))
    table = sigma_table(snr_shift=snr_shift)
    steps, seed, switch_t = 3, 11, 700
    result = _generate(tiny, steps=steps, seed=seed, negative="blurry", switch_t=switch_t)

    cond = tiny.conditioner.encode(["blurry", PROMPT, "義 " + PROMPT], 1).as_cond()

    def eps_of(unet):
        def eps(x_in, t, c):
            return unet(ms.Tensor(x_in), ms.Tensor(t), ms.Tensor(c["context"]), ms.Tensor(c["y"])).asnumpy()

        return eps

    denoisers = {role: DiscreteEpsDenoiser(eps_of(unet), table) for role, unet in tiny.unets.items()}
    timesteps = [999, 666, 333]  # the reference's 3-step schedule
    roles = ["structure" if i == 0 or timesteps[i - 1] >= switch_t else "texture" for i in range(steps)]
    assert roles == ["structure", "structure", "texture"]
    step = iter(roles)

    def by_step(x, sigma, c):
        return denoisers[next(step)](x, sigma, c)

    sigmas = reference_sigmas(steps, table=table)
    assert math.isclose(float(sigmas[0]), 14.6146 * snr_shift ** 0.5, rel_tol=1e-4)
    noise = np.random.RandomState(seed).randn(1, 4, 4, 4).astype(np.float32)
    x = noise * np.float32(math.sqrt(1.0 + float(sigmas[0]) ** 2))
    latent = sample_euler(GuidedDenoiser(by_step, cond, Guidance(6.0, (4.0,))), x, sigmas)

    assert result.expert_steps == roles
    assert np.abs(latent - x).max() > 0.1  # the UNets did something
    np.testing.assert_array_equal(result.latent, latent)
    image = tiny.vae.decode_from_latent(ms.Tensor(latent)).asnumpy()[0].transpose(1, 2, 0)
    pixels = np.round(np.clip((image + 1.0) / 2.0, 0.0, 1.0) * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(result.pixels, pixels)


def test_on_step_reports_every_step(ms, tiny, fake_unets):
    seen = []
    from pangu_cli.sampling.pipeline import Generator

    Generator(tiny).generate(_settings(steps=5), on_step=lambda info: seen.append(info["i"]))
    assert seen == [0, 1, 2, 3, 4]


def test_truncated_prompt_is_reported(ms, tiny, fake_unets):
    long_prompt = " ".join(["red", "cat", "on", "the"] * 20)  # 80 tokens in both vocabularies, 75 fit
    result = _generate(tiny, prompt=long_prompt, steps=1)
    # The conditional branch loses 5 tokens per encoder; the style branch more, as its prefix "義 " takes
    # one WordPiece token and three byte-level BPE tokens. Each distinct note is reported once.
    assert result.truncated == ["en: red cat on the red cat on the", "en: the red cat on the",
                                "zh: on the red cat on the", "zh: the red cat on the"]


# --------------------------------------------------------------------------------------------------
# Compiled UNets (the default outside the test suite)


def test_jit_switch_reads_the_environment(monkeypatch):
    from pangu_cli import runtime

    monkeypatch.delenv("PANGU_JIT", raising=False)
    assert runtime.jit_choice() is True and runtime.accelerator_options("CPU")["jit"] is True
    for off in ("0", "off", "False"):
        monkeypatch.setenv("PANGU_JIT", off)
        assert runtime.jit_choice() is False and runtime.accelerator_options("CPU")["jit"] is False


@pytest.mark.slow
def test_compiled_unets_draw_the_same_image(ms, folder, monkeypatch):
    """`ms.jit` UNets (the default) give the PyNative image: same latent within fp32 rounding."""
    plain_model = _load(folder)
    assert not any("construct" in vars(unet) for unet in plain_model.unets.values())
    plain = _generate(plain_model, steps=3)
    monkeypatch.setenv("PANGU_JIT", "1")
    compiled_model = _load(folder)
    assert all("construct" in vars(unet) for unet in compiled_model.unets.values())  # enable_jit ran
    compiled = _generate(compiled_model, steps=3)
    err = np.abs(compiled.latent - plain.latent).max()
    assert err <= 1e-4 * max(1.0, float(np.abs(plain.latent).max())), err
