"""The KL autoencoder: parity with diffusers, full-size naming against the SDXL key list, latent scaling."""

from __future__ import annotations

import ast
import re
import time
from pathlib import Path

import numpy as np
import pytest

REFERENCE_KEYS = Path(__file__).parent / "data" / "sdxl_base_mindspore_keys.txt"
PREFIX = "first_stage_model."
RTOL_OF_MAX = 1e-4  # max abs error <= 1e-4 * max(1, max|reference output|)

# Tiny config shared by the diffusers model and ours: 2 levels of 32/64 channels, 32x32 pixels.
CH, CH_MULT, NUM_RES_BLOCKS, RESOLUTION = 32, (1, 2), 1, 32


def _ddconfig(attn_resolutions=()) -> dict:
    return {"double_z": True, "z_channels": 4, "resolution": RESOLUTION, "in_channels": 3, "out_ch": 3,
            "ch": CH, "ch_mult": list(CH_MULT), "num_res_blocks": NUM_RES_BLOCKS,
            "attn_resolutions": list(attn_resolutions), "dropout": 0.0, "attn_type": "vanilla"}


def _tiny_vae(ms, attn_resolutions=(), scale_factor=0.13025):
    from pangu_cli.models.vae import AutoencoderKL

    return AutoencoderKL(4, _ddconfig(attn_resolutions), scale_factor=scale_factor)


# ---------------------------------------------------------------------------------------------------------
# diffusers -> reference naming


_NORMS = ("norm1", "norm2", "norm", "norm_out")
_RENAMES = [  # applied in order to a diffusers key (after the up-block index is remapped)
    (r"\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r".down.\1.block.\2."),
    (r"\.down_blocks\.(\d+)\.attentions\.(\d+)\.", r".down.\1.attn.\2."),
    (r"\.down_blocks\.(\d+)\.downsamplers\.0\.", r".down.\1.downsample."),
    (r"\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r".up.\1.block.\2."),
    (r"\.up_blocks\.(\d+)\.attentions\.(\d+)\.", r".up.\1.attn.\2."),
    (r"\.up_blocks\.(\d+)\.upsamplers\.0\.", r".up.\1.upsample."),
    (r"\.mid_block\.resnets\.0\.", ".mid.block_1."),
    (r"\.mid_block\.resnets\.1\.", ".mid.block_2."),
    (r"\.mid_block\.attentions\.0\.", ".mid.attn_1."),
    (r"\.conv_shortcut\.", ".nin_shortcut."),
    (r"\.group_norm\.", ".norm."),
    (r"\.to_q\.", ".q."), (r"\.to_k\.", ".k."), (r"\.to_v\.", ".v."),
    (r"\.to_out\.0\.", ".proj_out."),
    (r"\.conv_norm_out\.", ".norm_out."),
]


def diffusers_vae_to_reference(state: dict, num_levels: int) -> dict[str, np.ndarray]:
    """Rename a diffusers AutoencoderKL state dict to the LDM/MindSpore `first_stage_model.` names.

    - diffusers numbers decoder `up_blocks` from the lowest resolution; the reference's `decoder.up.N` is
      numbered from the highest, so up block i becomes `up.(num_levels - 1 - i)`. (Each decoder level has
      layers_per_block + 1 resnets in both namings; the encoder has layers_per_block.)
    - attention projections are Linear (C, C) in diffusers and 1x1 convs (C, C, 1, 1) in the reference.
    - GroupNorm `weight`/`bias` become `gamma`/`beta`.
    """
    out = {}
    for key, tensor in state.items():
        value = tensor.detach().cpu().numpy().astype(np.float32)
        key = re.sub(r"^decoder\.up_blocks\.(\d+)\.",
                     lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m.group(1))}.", key)
        key = "." + key
        for pattern, repl in _RENAMES:
            key = re.sub(pattern, repl, key)
        key = key[1:]
        module, leaf = key.rsplit(".", 1)
        if module.rsplit(".", 1)[-1] in _NORMS:
            leaf = {"weight": "gamma", "bias": "beta"}[leaf]
        elif re.search(r"\.(q|k|v|proj_out)$", module) and value.ndim == 2:
            value = value[:, :, None, None]
        out[f"{module}.{leaf}"] = value
    return out


def _diffusers_vae(torch, with_attention: bool):
    from diffusers import AutoencoderKL as DiffusersVAE

    torch.manual_seed(0)
    down = ("DownEncoderBlock2D", "AttnDownEncoderBlock2D" if with_attention else "DownEncoderBlock2D")
    up = ("AttnUpDecoderBlock2D" if with_attention else "UpDecoderBlock2D", "UpDecoderBlock2D")
    vae = DiffusersVAE(in_channels=3, out_channels=3, down_block_types=down, up_block_types=up,
                       block_out_channels=tuple(CH * m for m in CH_MULT), layers_per_block=NUM_RES_BLOCKS,
                       latent_channels=4, norm_num_groups=32, sample_size=RESOLUTION).eval()
    # Default init leaves norms at identity; perturb them so that a gamma/beta mix-up cannot pass.
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if "norm" in name:
                param.add_(0.2 * torch.randn_like(param))
    return vae


def _max_err(ours, ref) -> tuple[float, float]:
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max()), RTOL_OF_MAX * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parity
@pytest.mark.parametrize("with_attention", [False, True], ids=["plain", "level-attention"])
def test_parity_with_diffusers(ms, torch, with_attention):
    from pangu_cli.models.checkpoint import load_into

    ref_vae = _diffusers_vae(torch, with_attention)
    # Level 1 (16x16 in a 32x32 model) holds the attention blocks in both the encoder and the decoder.
    ours = _tiny_vae(ms, attn_resolutions=(RESOLUTION // 2,) if with_attention else ())
    load_into(ours, diffusers_vae_to_reference(ref_vae.state_dict(), len(CH_MULT)))

    rng = np.random.RandomState(0)
    x = rng.uniform(-1, 1, (2, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    z = rng.randn(2, 4, RESOLUTION // 2, RESOLUTION // 2).astype(np.float32)
    with torch.no_grad():
        posterior = ref_vae.encode(torch.from_numpy(x)).latent_dist
        ref_mean, ref_logvar = posterior.mean.numpy(), posterior.logvar.numpy()
        ref_pixels = ref_vae.decode(torch.from_numpy(z)).sample.numpy()
    mean, logvar = ours.encode(ms.Tensor(x))
    pixels = ours.decode(ms.Tensor(z))

    for what, got, ref in (("mean", mean, ref_mean), ("logvar", logvar, ref_logvar),
                           ("decoded", pixels, ref_pixels)):
        err, tol = _max_err(got.asnumpy(), ref)
        print(f"{what}: max abs err {err:.3e} (tol {tol:.1e})")
        assert err <= tol, f"{what}: max abs error {err} > {tol}"


def test_chunked_attention_matches_single_chunk(ms, monkeypatch):
    from pangu_cli.models import vae as vae_module

    model = _tiny_vae(ms)
    z = ms.Tensor(np.random.RandomState(1).randn(1, 4, 16, 16).astype(np.float32))  # 256 positions
    whole = model.decode(z).asnumpy()
    monkeypatch.setattr(vae_module, "_ATTN_QUERY_CHUNK", 48)  # uneven last chunk on purpose
    chunked = model.decode(z).asnumpy()
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# full-size naming


def _reference_shapes() -> dict[str, tuple]:
    shapes = {}
    for line in REFERENCE_KEYS.read_text().splitlines():
        if line.startswith(PREFIX):
            name, shape = line.split(":", 1)
            shapes[name[len(PREFIX):]] = tuple(ast.literal_eval(shape))
    return shapes


def test_full_size_names_and_shapes_match_sdxl_reference(ms):
    from pangu_cli.models.checkpoint import check_keys
    from pangu_cli.models.vae import AutoencoderKL, vae_config_sdxl

    started = time.perf_counter()
    model = AutoencoderKL(**vae_config_sdxl())
    print(f"full-size VAE construction: {time.perf_counter() - started:.2f} s")
    ours = {name: tuple(p.shape) for name, p in model.parameters_and_names()}
    expected = _reference_shapes()
    assert len(expected) == 248
    missing, unexpected = sorted(set(expected) - set(ours)), sorted(set(ours) - set(expected))
    wrong = sorted(k for k in set(ours) & set(expected) if ours[k] != expected[k])
    assert (missing, unexpected, wrong) == ([], [], [])
    check_keys(expected, {k: np.empty(s, np.float32) for k, s in ours.items()}, "SDXL VAE")
    assert sum(int(np.prod(s)) for s in ours.values()) == 83_653_863
    assert model.scale_factor == pytest.approx(0.13025)
    # eps 1e-5 vs 1e-6 barely moves O(1) activations, so the parity test cannot see it: check it here.
    norms = [cell for _, cell in model.cells_and_names() if isinstance(cell, ms.nn.GroupNorm)]
    assert len(norms) == sum(1 for k in expected if k.endswith(".gamma"))
    assert {(cell.num_groups, cell.eps) for cell in norms} == {(32, 1e-6)}


# ---------------------------------------------------------------------------------------------------------
# latent scaling and config validation


def test_latent_helpers_apply_scale_factor(ms):
    model = _tiny_vae(ms, scale_factor=0.13025)
    rng = np.random.RandomState(2)
    x = ms.Tensor(rng.uniform(-1, 1, (1, 3, RESOLUTION, RESOLUTION)).astype(np.float32))
    noise = rng.randn(1, 4, RESOLUTION // 2, RESOLUTION // 2).astype(np.float32)

    mean, logvar = (t.asnumpy() for t in model.encode(x))
    latent = model.encode_to_latent(x).asnumpy()
    np.testing.assert_allclose(latent, 0.13025 * mean, rtol=1e-6, atol=1e-7)
    assert np.abs(latent - mean).max() > 0.1 * np.abs(mean).max()  # a dropped scale would fail here

    sampled = model.encode_to_latent(x, noise=ms.Tensor(noise)).asnumpy()
    np.testing.assert_allclose(sampled, 0.13025 * (mean + np.exp(0.5 * logvar) * noise), rtol=1e-5, atol=1e-6)
    assert np.abs(sampled - latent).max() > 1e-3

    z = ms.Tensor(rng.randn(1, 4, RESOLUTION // 2, RESOLUTION // 2).astype(np.float32) * 0.13025)
    pixels = model.decode_from_latent(z).asnumpy()
    np.testing.assert_allclose(pixels, model.decode(z / 0.13025).asnumpy(), rtol=0, atol=1e-6)
    unscaled = model.decode(z).asnumpy()
    assert np.abs(pixels - unscaled).max() > 1e-2 * max(1.0, np.abs(pixels).max())


def test_sdxl_config_values():
    from pangu_cli.models.vae import vae_config_sdxl

    config = vae_config_sdxl()
    assert config["embed_dim"] == 4 and config["scale_factor"] == 0.13025
    assert config["ddconfig"] == {
        "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
        "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
        "attn_type": "vanilla"}


@pytest.mark.parametrize("change, message", [
    ({"attn_type": "linear"}, "attn_type"),
    ({"attn_type": "vanilla-xformers"}, "attn_type"),
    ({"double_z": False}, "double_z"),
    ({"z_channel": 4}, "unknown z_channel"),
])
def test_bad_ddconfig_is_a_model_error(ms, change, message):
    from pangu_cli.errors import ModelError
    from pangu_cli.models.vae import AutoencoderKL

    with pytest.raises(ModelError, match=message):
        AutoencoderKL(4, {**_ddconfig(), **change})


def test_missing_ddconfig_key_is_a_model_error(ms):
    from pangu_cli.errors import ModelError
    from pangu_cli.models.vae import AutoencoderKL

    config = _ddconfig()
    del config["ch_mult"]
    with pytest.raises(ModelError, match="missing ch_mult"):
        AutoencoderKL(4, config)


def test_reference_decoder_attn_dtype_is_accepted(ms):
    """The reference ddconfig carries `decoder_attn_dtype: fp16`; it is accepted and changes no parameter."""
    from pangu_cli.models.vae import AutoencoderKL

    plain = _tiny_vae(ms)
    with_dtype = AutoencoderKL(4, {**_ddconfig(), "decoder_attn_dtype": "fp16"})
    names = lambda cell: sorted(name for name, _ in cell.parameters_and_names())  # noqa: E731
    assert names(with_dtype) == names(plain)
