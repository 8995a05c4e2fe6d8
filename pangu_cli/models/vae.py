"""The KL autoencoder of SD/SDXL ("first_stage_model"), in the reference (LDM/MindONE) naming.

Parameter names are relative to the checkpoint prefix `first_stage_model.`: `encoder.down.N.block.M.*`,
`decoder.up.N.block.M.*` (`up.0` is the highest-resolution level), `quant_conv`, `post_quant_conv`.
"""

from __future__ import annotations

from typing import Any

import mindspore as ms
from mindspore import nn, ops

from pangu_cli.errors import ModelError
from pangu_cli.models.layers import GroupNorm, conv2d, group_norm

SDXL_SCALE_FACTOR = 0.13025
LOGVAR_RANGE = (-30.0, 20.0)  # the reference clamps the posterior log-variance to this range

# Queries per attention chunk: bounds the score matrix at chunk x H*W (256 MB fp32 for a 128x128 latent)
# instead of (H*W)^2 (1 GB), with the same result.
_ATTN_QUERY_CHUNK = 4096

_REQUIRED_KEYS = ("double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult",
                  "num_res_blocks", "attn_resolutions")
_OPTIONAL_KEYS = {"dropout": 0.0, "attn_type": "vanilla", "resamp_with_conv": True,
                  # The reference runs the decoder's mid attention in fp16; precision is set globally here.
                  "decoder_attn_dtype": None}


def vae_config_sdxl() -> dict[str, Any]:
    """The SDXL / PanGu-Draw VAE config: `AutoencoderKL(**vae_config_sdxl())`."""
    return {
        "embed_dim": 4,
        "scale_factor": SDXL_SCALE_FACTOR,
        "ddconfig": {
            "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
            "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
            "dropout": 0.0, "attn_type": "vanilla",
        },
    }


def _checked_ddconfig(ddconfig: dict) -> dict:
    unknown = sorted(set(ddconfig) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
    missing = [k for k in _REQUIRED_KEYS if k not in ddconfig]
    if unknown or missing:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(unknown)}"] if unknown else [])
        raise ModelError(f"bad VAE ddconfig: {'; '.join(parts)}", "use the keys of vae_config_sdxl()")
    config = {**_OPTIONAL_KEYS, **ddconfig}
    if config["attn_type"] != "vanilla":
        raise ModelError(f"VAE attn_type '{config['attn_type']}' is not supported", "use attn_type 'vanilla'")
    if not config["resamp_with_conv"]:
        raise ModelError("VAE resamp_with_conv=False is not supported", "use the SD/SDXL VAE config")
    if not config["double_z"]:
        raise ModelError("VAE double_z=False is not supported: the KL posterior needs mean and log-variance",
                         "set double_z: true")
    return config


def _norm(channels: int) -> GroupNorm:
    return group_norm(channels, eps=1e-6, groups=32)


class ResnetBlock(nn.Cell):
    """norm-swish-conv twice, plus a 1x1 `nin_shortcut` when the channel count changes (no timestep input)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv2d(out_channels, out_channels, 3, padding=1)
        self.has_shortcut = in_channels != out_channels
        if self.has_shortcut:
            self.nin_shortcut = conv2d(in_channels, out_channels, 1)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        h = self.conv1(self.norm1.forward_silu(x))
        h = self.conv2(self.dropout(self.norm2.forward_silu(h)))
        if self.has_shortcut:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Cell):
    """Single-head self-attention over the H*W positions, with 1x1-conv projections and a residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = conv2d(channels, channels, 1)
        self.k = conv2d(channels, channels, 1)
        self.v = conv2d(channels, channels, 1)
        self.proj_out = conv2d(channels, channels, 1)
        self.scale = channels ** -0.5

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        h = self.norm(x)
        b, c, height, width = x.shape
        n = height * width
        q = (self.q(h) * self.scale).reshape(b, c, n).transpose(0, 2, 1)  # b, n, c
        k = self.k(h).reshape(b, c, n)
        v = self.v(h).reshape(b, c, n)
        chunks = []
        for start in range(0, n, _ATTN_QUERY_CHUNK):
            scores = ops.bmm(q[:, start:start + _ATTN_QUERY_CHUNK], k)  # b, chunk, n
            # softmax in fp32 so that fp16/bf16 runs do not overflow on long rows
            weights = ops.softmax(scores.astype(ms.float32), axis=-1).astype(v.dtype)
            chunks.append(ops.bmm(v, weights.transpose(0, 2, 1)))  # b, c, chunk
        out = chunks[0] if len(chunks) == 1 else ops.cat(chunks, axis=2)
        return x + self.proj_out(out.reshape(b, c, height, width))


class Downsample(nn.Cell):
    """Pad right/bottom by one, then a stride-2 3x3 conv (the reference's asymmetric padding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv2d(channels, channels, 3, stride=2)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.conv(ops.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Cell):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv2d(channels, channels, 3, padding=1)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        height, width = x.shape[-2:]
        return self.conv(ops.interpolate(x, size=(2 * height, 2 * width), mode="nearest"))


class _Level(nn.Cell):
    """One resolution level: `block` (ResnetBlocks), `attn` (possibly empty) and an optional resampler."""

    def __init__(self, blocks: list[nn.Cell], attns: list[nn.Cell]):
        super().__init__()
        self.block = nn.CellList(blocks)
        self.attn = nn.CellList(attns)
        self.has_attn = bool(attns)

    def construct(self, h: ms.Tensor) -> ms.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if self.has_attn:
                h = self.attn[i](h)
        return h


class _Mid(nn.Cell):
    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def construct(self, h: ms.Tensor) -> ms.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Cell):
    def __init__(self, *, ch: int, ch_mult, num_res_blocks: int, attn_resolutions, in_channels: int,
                 resolution: int, z_channels: int, double_z: bool = True, dropout: float = 0.0, **_: Any):
        super().__init__()
        self.conv_in = conv2d(in_channels, ch, 3, padding=1)
        levels = []
        block_in, res = ch, resolution
        for i_level, mult in enumerate(ch_mult):
            block_out = ch * mult
            blocks, attns = [], []
            for _i in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    attns.append(AttnBlock(block_in))
            level = _Level(blocks, attns)
            if i_level != len(ch_mult) - 1:
                level.downsample = Downsample(block_in)
                res //= 2
            levels.append(level)
        self.down = nn.CellList(levels)
        self.num_levels = len(ch_mult)
        self.mid = _Mid(block_in, dropout)
        self.norm_out = _norm(block_in)
        self.conv_out = conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        h = self.conv_in(x)
        for i_level, level in enumerate(self.down):
            h = level(h)
            if i_level != self.num_levels - 1:
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(self.norm_out.forward_silu(h))


class Decoder(nn.Cell):
    def __init__(self, *, ch: int, out_ch: int, ch_mult, num_res_blocks: int, attn_resolutions,
                 resolution: int, z_channels: int, dropout: float = 0.0, **_: Any):
        super().__init__()
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, dropout)
        # Built from the lowest resolution up, but stored so that `up.0` is the highest resolution.
        levels = [None] * len(ch_mult)
        for i_level in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[i_level]
            blocks, attns = [], []
            for _i in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    attns.append(AttnBlock(block_in))
            level = _Level(blocks, attns)
            if i_level != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            levels[i_level] = level
        self.up = nn.CellList(levels)
        self.num_levels = len(ch_mult)
        self.norm_out = _norm(block_in)
        self.conv_out = conv2d(block_in, out_ch, 3, padding=1)

    def construct(self, z: ms.Tensor) -> ms.Tensor:
        h = self.mid(self.conv_in(z))
        for i_level in reversed(range(self.num_levels)):
            level = self.up[i_level]
            h = level(h)
            if i_level != 0:
                h = level.upsample(h)
        return self.conv_out(self.norm_out.forward_silu(h))


class AutoencoderKL(nn.Cell):
    """KL-regularised autoencoder: pixels in [-1, 1] <-> latents (`embed_dim` channels, 1/2^(levels-1) size).

    `encode`/`decode` work on raw latents; `encode_to_latent`/`decode_from_latent` apply `scale_factor`,
    which is what the diffusion model sees.
    """

    def __init__(self, embed_dim: int, ddconfig: dict, scale_factor: float = SDXL_SCALE_FACTOR):
        super().__init__()
        config = _checked_ddconfig(ddconfig)
        self.embed_dim = embed_dim
        self.scale_factor = float(scale_factor)
        self.encoder = Encoder(**config)
        self.decoder = Decoder(**config)
        self.quant_conv = conv2d(2 * config["z_channels"], 2 * embed_dim, 1)
        self.post_quant_conv = conv2d(embed_dim, config["z_channels"], 1)

    def encode(self, x: ms.Tensor) -> tuple[ms.Tensor, ms.Tensor]:
        """Posterior moments `(mean, logvar)` of the raw (unscaled) latent."""
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = ops.split(moments, self.embed_dim, axis=1)
        return mean, ops.clamp(logvar, *LOGVAR_RANGE)

    def decode(self, z: ms.Tensor) -> ms.Tensor:
        """Raw latent -> pixels (roughly in [-1, 1])."""
        return self.decoder(self.post_quant_conv(z))

    def encode_to_latent(self, x: ms.Tensor, noise: ms.Tensor | None = None) -> ms.Tensor:
        """Scaled latent: the posterior mean, or a posterior sample `mean + std * noise` when noise is given."""
        mean, logvar = self.encode(x)
        z = mean if noise is None else mean + ops.exp(0.5 * logvar) * noise
        return z * self.scale_factor

    def decode_from_latent(self, z: ms.Tensor) -> ms.Tensor:
        """Scaled latent (as the diffusion model produces it) -> pixels."""
        return self.decode(z / self.scale_factor)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        """Reconstruction through the posterior mean."""
        return self.decode(self.encode(x)[0])
