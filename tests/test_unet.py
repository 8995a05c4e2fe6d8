"""The SDXL UNet: parity with diffusers, reference parameter names, config validation."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

REFERENCE_KEYS = Path(__file__).parent / "data" / "sdxl_base_mindspore_keys.txt"
UNET_PREFIX = "model.diffusion_model."


# --------------------------------------------------------------------------------------------------
# diffusers -> reference naming

_RESNET_PARTS = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}


def diffusers_to_reference(state: dict[str, np.ndarray], layers_per_block: int) -> dict[str, np.ndarray]:
    """Rename a diffusers `UNet2DConditionModel` state to the reference (MindONE/SGM) UNet names.

    diffusers groups layers by block type (`down_blocks.i.resnets.j`); the reference numbers stages
    (`input_blocks.k.0` = ResBlock, `.1` = transformer). Each level has `layers_per_block` stages plus a
    downsample stage going down, and `layers_per_block + 1` stages coming up; `up_blocks.0` is the
    deepest level. Norm leaves are `gamma`/`beta` in MindSpore.
    """
    n = layers_per_block
    up_levels_with_attention = {int(m.group(1)) for k in state
                                if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}

    def stage(match: re.Match, first: int, step: int) -> int:
        return first + int(match.group(1)) * step + int(match.group(2))

    rules = [
        (r"conv_in\.", lambda m: "input_blocks.0.0."),
        (r"time_embedding\.linear_1\.", lambda m: "time_embed.0."),
        (r"time_embedding\.linear_2\.", lambda m: "time_embed.2."),
        (r"class_embedding\.linear_1\.", lambda m: "label_emb.0.0."),
        (r"class_embedding\.linear_2\.", lambda m: "label_emb.0.2."),
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"input_blocks.{stage(m, 1, n + 1)}.0."),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.", lambda m: f"input_blocks.{stage(m, 1, n + 1)}.1."),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.",
         lambda m: f"input_blocks.{(int(m.group(1)) + 1) * (n + 1)}.0.op."),
        (r"mid_block\.resnets\.0\.", lambda m: "middle_block.0."),
        (r"mid_block\.attentions\.0\.", lambda m: "middle_block.1."),
        (r"mid_block\.resnets\.1\.", lambda m: "middle_block.2."),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"output_blocks.{stage(m, 0, n + 1)}.0."),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.", lambda m: f"output_blocks.{stage(m, 0, n + 1)}.1."),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.",
         lambda m: f"output_blocks.{int(m.group(1)) * (n + 1) + n}."
                   f"{2 if int(m.group(1)) in up_levels_with_attention else 1}.conv."),
        (r"conv_norm_out\.", lambda m: "out.0."),
        (r"conv_out\.", lambda m: "out.2."),
    ]
    renamed = {}
    for key, value in state.items():
        for pattern, replace in rules:
            match = re.match(pattern, key)
            if match:
                rest = key[match.end():]
                if "resnets" in pattern:
                    part, leaf = rest.split(".", 1)
                    rest = f"{_RESNET_PARTS[part]}.{leaf}"
                new = replace(match) + rest
                break
        else:
            raise AssertionError(f"no rule for diffusers key {key}")
        module, leaf = key.rsplit(".", 2)[-2:]
        if "norm" in module:
            new = new[: -len(leaf)] + {"weight": "gamma", "bias": "beta"}[leaf]
        renamed[new] = value
    return renamed


# --------------------------------------------------------------------------------------------------
# Parity with diffusers


def _randomise(torch, model, seed: int) -> None:
    """Give every parameter non-trivial values, norms and biases included (their defaults are 1 and 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.ndim == 1:
                param.copy_((1.0 if "norm" in name and name.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                param.copy_(noise * param[0].numel() ** -0.5)


# (diffusers kwargs, our config, timesteps)
_TWO_LEVELS = (
    dict(block_out_channels=(32, 64), layers_per_block=2,
         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
         transformer_layers_per_block=(1, 2), attention_head_dim=(4, 8),  # heads = width / 8
         use_linear_projection=True),
    dict(model_channels=32, channel_mult=[1, 2], num_res_blocks=2, attention_resolutions=[2],
         transformer_depth=[1, 2], num_head_channels=8, use_linear_in_transformer=True),
    np.array([999, 37], dtype=np.int32),  # what the sampler passes
)
_THREE_LEVELS = (
    dict(block_out_channels=(32, 64, 64), layers_per_block=1,
         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
         up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
         transformer_layers_per_block=(1, 1, 2), attention_head_dim=(4, 4, 4),  # 4 heads everywhere
         use_linear_projection=False),
    dict(model_channels=32, channel_mult=[1, 2, 2], num_res_blocks=1, attention_resolutions=[4, 2],
         transformer_depth=[1, 1, 2], num_head_channels=-1, num_heads=4, use_linear_in_transformer=False),
    np.array([500.0, 12.5], dtype=np.float32),
)


@pytest.mark.parity
@pytest.mark.parametrize("case, groups", [(_TWO_LEVELS, 32), (_THREE_LEVELS, 32), (_THREE_LEVELS, 8)],
                         ids=["2-levels-linear", "3-levels-conv-proj", "3-levels-8-groups"])
def test_matches_diffusers(ms, torch, case, groups):
    from diffusers import UNet2DConditionModel

    from pangu_cli.models.checkpoint import load_into
    from pangu_cli.models.unet import UNetModel

    diffusers_kwargs, our_config, t = case
    context_dim, adm = 32, 24
    reference = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, cross_attention_dim=context_dim,
        class_embed_type="projection", projection_class_embeddings_input_dim=adm, norm_num_groups=groups,
        **diffusers_kwargs).eval()
    _randomise(torch, reference, seed=1)
    if groups != 32:  # the reference's 32 is the default; small UNets (pangu-mini) set it
        our_config = {**our_config, "norm_num_groups": groups}
    ours = UNetModel(in_channels=4, out_channels=4, context_dim=context_dim, adm_in_channels=adm,
                     num_classes="sequential", use_spatial_transformer=True, legacy=False, **our_config)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    load_into(ours, diffusers_to_reference(state, diffusers_kwargs["layers_per_block"]))

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 16, 16), dtype=np.float32)
    context = rng.standard_normal((2, 7, context_dim), dtype=np.float32)
    y = rng.standard_normal((2, adm), dtype=np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(context),
                             class_labels=torch.from_numpy(y)).sample.numpy()
    got = ours(ms.Tensor(x), ms.Tensor(t), ms.Tensor(context), ms.Tensor(y)).asnumpy()

    assert got.shape == expected.shape == x.shape
    assert np.abs(expected).max() > 0.1  # a real signal, not zero-initialised output layers
    tolerance = 1e-4 * max(1.0, float(np.abs(expected).max()))
    error = float(np.abs(got - expected).max())
    print(f"max abs error {error:.3g} (max |ref| {np.abs(expected).max():.3g}, tolerance {tolerance:.3g})")
    assert error <= tolerance


# --------------------------------------------------------------------------------------------------
# Names and shapes at the full SDXL layout


def _reference_unet_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in REFERENCE_KEYS.read_text().splitlines():
        if line.startswith(UNET_PREFIX):
            name, shape = line[len(UNET_PREFIX):].split(":", 1)
            shapes[name] = tuple(int(d) for d in re.findall(r"\d+", shape))
    return shapes


def _shrunk(dim: int) -> int:
    """A reference (SDXL) dimension at our test width: channels /10, context 2048->16, adm 2816->24."""
    return {2048: 16, 2816: 24}.get(dim, dim // 10 if dim % 320 == 0 else dim)


def test_full_depth_names_and_shapes_match_reference(ms):
    from pangu_cli.models.unet import UNetModel

    # The SDXL/PanGu network_config at a tenth of the width: same stages, same depths.
    model = UNetModel(adm_in_channels=24, num_classes="sequential", in_channels=4, out_channels=4,
                      model_channels=32, attention_resolutions=[4, 2], num_res_blocks=2, channel_mult=[1, 2, 4],
                      num_head_channels=8, use_spatial_transformer=True, use_linear_in_transformer=True,
                      transformer_depth=[1, 2, 10], context_dim=16, spatial_transformer_attn_type="vanilla",
                      legacy=False)
    ours = {name: tuple(p.shape) for name, p in model.parameters_and_names()}
    reference = _reference_unet_shapes()

    assert len(reference) == 1680
    assert sorted(set(reference) - set(ours)) == []
    assert sorted(set(ours) - set(reference)) == []
    wrong = {k: (ours[k], reference[k]) for k in reference if ours[k] != tuple(map(_shrunk, reference[k]))}
    assert wrong == {}

    # Norm settings are invisible in names and too small for the parity tolerance: check them here.
    transformer, resblock = model.middle_block[1], model.middle_block[0]
    assert (transformer.norm.num_groups, transformer.norm.eps) == (32, 1e-6)
    assert (resblock.in_layers[0].num_groups, resblock.in_layers[0].eps) == (32, 1e-5)
    assert (model.out[0].num_groups, model.out[0].eps) == (32, 1e-5)
    assert transformer.transformer_blocks[9].norm3.epsilon == 1e-5


# --------------------------------------------------------------------------------------------------
# Config validation

_VALID = dict(in_channels=4, out_channels=4, model_channels=32, channel_mult=[1, 2], num_res_blocks=1,
              attention_resolutions=[2], transformer_depth=1, num_head_channels=8, context_dim=16,
              adm_in_channels=8, num_classes="sequential", use_spatial_transformer=True,
              use_linear_in_transformer=True)


def test_accepts_reference_housekeeping_keys(ms):
    from pangu_cli.models.unet import UNetModel

    UNetModel(**_VALID, use_checkpoint=True, use_fp16=False, spatial_transformer_attn_type="flash-attention",
              legacy=False, dropout=0.0, num_heads=-1)


@pytest.mark.parametrize("change, message", [
    (dict(attention_resoluton=[2]), "unknown key"),
    (dict(use_scale_shift_norm=True), "use_scale_shift_norm"),
    (dict(model_channels=48), "multiples of norm_num_groups=32"),
    (dict(norm_num_groups=5), "multiples of norm_num_groups=5"),
    (dict(norm_num_groups=0), "norm_num_groups=0"),
    (dict(num_head_channels=-1), "num_head_channels or num_heads"),
    (dict(num_head_channels=128), "heads"),
    (dict(adm_in_channels=None), "adm_in_channels"),
    (dict(num_classes=10), "num_classes"),
    (dict(transformer_depth=[1, 2, 3]), "transformer_depth"),
    (dict(use_spatial_transformer=False), "use_spatial_transformer"),
    (dict(spatial_transformer_attn_type="xformers-magic"), "spatial_transformer_attn_type"),
])
def test_rejects_bad_config(ms, change, message):
    from pangu_cli.errors import ModelError
    from pangu_cli.models.unet import UNetModel

    with pytest.raises(ModelError, match=message):
        UNetModel(**{**_VALID, **change})


@pytest.mark.parametrize("legacy, inner, heads", [(False, 48, 2), (True, 64, 2)])
def test_head_split_follows_reference_rule(ms, legacy, inner, heads):
    """64 channels, 24-wide heads: 2 heads of 24 (inner width 48), or of 32 with `legacy`."""
    from pangu_cli.models.unet import UNetModel

    model = UNetModel(**{**_VALID, "num_head_channels": 24, "legacy": legacy})
    transformer = model.middle_block[1]
    assert tuple(transformer.proj_in.weight.shape) == (inner, 64)
    assert tuple(transformer.transformer_blocks[0].attn2.to_k.weight.shape) == (inner, 16)
    assert transformer.transformer_blocks[0].attn1.heads == heads


def test_rejects_bad_inputs(ms):
    from pangu_cli.errors import ModelError
    from pangu_cli.models.unet import UNetModel

    model = UNetModel(**_VALID)
    x = ms.Tensor(np.zeros((1, 4, 8, 8), np.float32))
    t = ms.Tensor(np.array([5], np.int32))
    context = ms.Tensor(np.zeros((1, 3, 16), np.float32))
    with pytest.raises(ModelError, match="pass y"):
        model(x, t, context)
    with pytest.raises(ModelError, match="multiple of 2"):
        model(ms.Tensor(np.zeros((1, 4, 7, 8), np.float32)), t, context, ms.Tensor(np.zeros((1, 8), np.float32)))
    eps = model(x, t, context, ms.Tensor(np.zeros((1, 8), np.float32))).asnumpy()
    assert eps.shape == (1, 4, 8, 8)
    assert np.all(eps == 0)  # the output conv starts at zero, as in the reference


def test_jit_compiles_and_matches_pynative(ms):
    """The network stays graph-compilable: `enable_jit` gives the PyNative result."""
    from pangu_cli.models.unet import UNetModel

    model = UNetModel(**_VALID)
    rng = np.random.default_rng(0)
    for name, param in model.parameters_and_names():
        scale = param[0].size ** -0.5 if len(param.shape) > 1 else 0.1
        value = rng.standard_normal(param.shape) * scale + (1.0 if name.endswith("gamma") else 0.0)
        param.set_data(ms.Tensor(value.astype(np.float32)))
    inputs = (ms.Tensor(rng.standard_normal((2, 4, 8, 8), dtype=np.float32)),
              ms.Tensor(np.array([3, 700], np.int32)),
              ms.Tensor(rng.standard_normal((2, 5, 16), dtype=np.float32)),
              ms.Tensor(rng.standard_normal((2, 8), dtype=np.float32)))
    eager = model(*inputs).asnumpy()
    compiled = model.enable_jit()(*inputs).asnumpy()
    assert np.abs(eager).max() > 0.1
    np.testing.assert_allclose(compiled, eager, rtol=0, atol=1e-5)
