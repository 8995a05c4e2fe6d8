"""The SDXL-shaped UNet of PanGu-Draw (MindONE `openaimodel.UNetModel`, spatial-transformer flavour).

Parameter names equal the reference checkpoint's names below `model.diffusion_model.`
(e.g. `input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight`), so a reference state loads as is.
The network predicts epsilon: `UNetModel(**config)(x, timesteps, context, y)`.
"""

from __future__ import annotations

from typing import Any

import mindspore as ms
from mindspore import nn, ops

from pangu_cli.errors import ModelError
from pangu_cli.models import fast_ops
from pangu_cli.models.layers import (Conv2d, Dense, SiLU, Softmax, conv2d, group_norm, layer_norm,
                                     timestep_embedding, zero_init)

GROUPS = 32  # GroupNorm groups everywhere in the reference (`norm_num_groups` changes it for small UNets)
RESBLOCK_NORM_EPS = 1e-5
TRANSFORMER_NORM_EPS = 1e-6

# Keys of MindONE's `network_config.params` with the value they must keep for our network; any other
# value selects an architecture variant this module does not implement.
_FIXED = {
    "dims": 2,
    "conv_resample": True,
    "use_scale_shift_norm": False,
    "resblock_updown": False,
    "disable_self_attentions": None,
    "num_attention_blocks": None,
    "disable_middle_self_attn": False,
    "n_embed": None,
}
# Keys that change memory use, speed or training only, never the function computed.
_IGNORED = {"use_checkpoint", "use_fp16", "use_bf16", "use_recompute", "num_heads_upsample",
            "use_new_attention_order", "spatial_transformer_attn_type"}
_ATTN_TYPES = ("vanilla", "flash-attention", "softmax", "softmax-xformers")


# --------------------------------------------------------------------------------------------------
# Blocks. Every block in a UNet stage takes (x, emb, context) so that a stage is a plain loop;
# each block uses what it needs.


class ResBlock(nn.Cell):
    """GroupNorm-SiLU-conv twice, with the embedding added in between; 1x1 skip conv if channels change."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float = 0.0,
                 groups: int = GROUPS):
        super().__init__()
        self.in_layers = nn.SequentialCell([
            group_norm(channels, RESBLOCK_NORM_EPS, groups),
            nn.SiLU(),
            conv2d(channels, out_channels, 3, padding=1),
        ])
        self.emb_layers = nn.SequentialCell([SiLU(), Dense(emb_channels, out_channels)])
        self.out_layers = nn.SequentialCell([
            group_norm(out_channels, RESBLOCK_NORM_EPS, groups),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_init(conv2d(out_channels, out_channels, 3, padding=1)),
        ])
        self.has_skip_conv = out_channels != channels
        if self.has_skip_conv:
            self.skip_connection = conv2d(channels, out_channels, 1)

    def construct(self, x, emb, context=None):
        # norm+SiLU as one call (in_layers.1 / out_layers.1 are the SiLUs it fuses): one kernel on CPU
        h = self.in_layers[2](self.in_layers[0].forward_silu(x))
        h = h + self.emb_layers(emb)[:, :, None, None]
        h = self.out_layers[3](self.out_layers[2](self.out_layers[0].forward_silu(h)))
        skip = self.skip_connection(x) if self.has_skip_conv else x
        return skip + h


class InputConv(Conv2d):
    """The 3x3 input conv as a stage block (a Conv2d subclass, so its names stay `weight`/`bias`)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, padding=1)

    def construct(self, x, emb=None, context=None):
        return self.convolve(x)


class Downsample(nn.Cell):
    def __init__(self, channels: int):
        super().__init__()
        self.op = conv2d(channels, channels, 3, stride=2, padding=1)

    def construct(self, x, emb=None, context=None):
        return self.op(x)


class Upsample(nn.Cell):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv2d(channels, channels, 3, padding=1)

    def construct(self, x, emb=None, context=None):
        # Exact nearest x2; on CPU repeat_interleave measured faster than interpolate or ResizeNearestNeighbor.
        x = ops.repeat_interleave(ops.repeat_interleave(x, 2, axis=2), 2, axis=3)
        return self.conv(x)


_batch_matmul = ops.BatchMatMul()
_batch_matmul_nt = ops.BatchMatMul(transpose_b=True)


def attention(q, k, v, heads: int, scale: float, softmax=None):
    """Softmax attention of (B, N, heads·d) queries over (B, M, heads·d) keys/values, in fp32.

    One head-split transpose per operand and one merge at the end; the key transpose is folded into
    the matmul (on CPU the BatchMatMul primitive measured faster than `ops.matmul` for 4-D operands).
    """
    b, n, inner = q.shape
    m = k.shape[1]
    d = inner // heads
    # Scaling q costs N·inner multiplies instead of N·M on the scores.
    q = (q * scale).reshape(b, n, heads, d).transpose(0, 2, 1, 3)   # B h N d
    k = k.reshape(b, m, heads, d).transpose(0, 2, 1, 3)             # B h M d
    v = v.reshape(b, m, heads, d).transpose(0, 2, 1, 3)             # B h M d
    scores = _batch_matmul_nt(q, k)                                  # B h N M
    weights = ops.softmax(scores, axis=-1) if softmax is None else softmax(scores)
    out = _batch_matmul(weights, v)                                  # B h N d
    return out.transpose(0, 2, 1, 3).reshape(b, n, inner)


class CrossAttention(nn.Cell):
    """Multi-head attention; self-attention when no context is given."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.to_q = Dense(query_dim, inner, has_bias=False)
        self.to_k = Dense(context_dim, inner, has_bias=False)
        self.to_v = Dense(context_dim, inner, has_bias=False)
        self.to_out = nn.SequentialCell([Dense(inner, query_dim), nn.Dropout(p=dropout)])
        self.softmax = Softmax()
        self.use_fast = fast_ops.enabled("attention")
        if self.use_fast:  # heads read in place, no head-split transposes, one kernel each way
            self.fast_attention = fast_ops.attention_primitive(heads)
            self.fast_config = fast_ops.attention_config(heads, self.scale)

    def construct(self, x, context=None):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        if self.use_fast and q.dtype == ms.float32:
            out = self.fast_attention(q, k, v, self.fast_config)[0]
        else:
            out = attention(q, k, v, self.heads, self.scale, self.softmax)
        return self.to_out(out)


class GEGLU(nn.Cell):
    """`x · gelu(gate)` with exact (erf) GELU; the gate is the second half of the projection."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = Dense(dim_in, dim_out * 2)
        self.use_fast = fast_ops.enabled("geglu")
        if self.use_fast:
            self.fast_geglu = fast_ops.geglu_primitive()  # one pass each way instead of erf's op chain

    def construct(self, x):
        h = self.proj(x)
        if self.use_fast and h.dtype == ms.float32:
            return self.fast_geglu(h)
        value, gate = ops.chunk(h, 2, axis=-1)
        return value * ops.gelu(gate, approximate="none")


class FeedForward(nn.Cell):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.SequentialCell([GEGLU(dim, inner), nn.Dropout(p=dropout), Dense(inner, dim)])

    def construct(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Cell):
    """Pre-LayerNorm self-attention, cross-attention and GEGLU feed-forward, each residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, dropout: float = 0.0):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim=context_dim, dropout=dropout)
        self.norm1 = layer_norm(dim)
        self.norm2 = layer_norm(dim)
        self.norm3 = layer_norm(dim)

    def construct(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Cell):
    """GroupNorm, project in, `depth` transformer blocks over the H·W tokens, project out, residual.

    `use_linear` selects Dense projections on tokens (SDXL) instead of 1x1 convs on the feature map.
    """

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int,
                 use_linear: bool = True, dropout: float = 0.0, groups: int = GROUPS):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = group_norm(channels, TRANSFORMER_NORM_EPS, groups)
        if use_linear:
            self.proj_in = Dense(channels, inner)
            self.proj_out = zero_init(Dense(inner, channels))
        else:
            self.proj_in = conv2d(channels, inner, 1)
            self.proj_out = zero_init(conv2d(inner, channels, 1))
        self.transformer_blocks = nn.CellList([
            BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout) for _ in range(depth)])

    def construct(self, x, emb, context):
        b, c, h, w = x.shape
        hidden = self.norm(x)
        if not self.use_linear:
            hidden = self.proj_in(hidden)
        hidden = hidden.transpose(0, 2, 3, 1).reshape(b, h * w, -1)
        if self.use_linear:
            hidden = self.proj_in(hidden)
        for block in self.transformer_blocks:
            hidden = block(hidden, context)
        if self.use_linear:
            hidden = self.proj_out(hidden)
        hidden = hidden.reshape(b, h, w, -1).transpose(0, 3, 1, 2)
        if not self.use_linear:
            hidden = self.proj_out(hidden)
        return hidden + x


class TimestepEmbedSequential(nn.SequentialCell):
    """A UNet stage: blocks applied in order, each given the embedding and the context."""

    def construct(self, x, emb, context=None):
        for cell in self.cell_list:
            x = cell(x, emb, context)
        return x


# --------------------------------------------------------------------------------------------------
# Configuration


def _as_levels(value, levels: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * levels
    values = list(value)
    if len(values) != levels or not all(isinstance(v, int) and v >= 0 for v in values):
        raise ModelError(f"UNet config: {name} must be an int or {levels} non-negative ints, got {value!r}")
    return values


def normalise_config(params: dict[str, Any]) -> dict[str, Any]:
    """Validate a MindONE-style `network_config.params` dict; return the fields the network uses."""
    params = dict(params)
    known = {"in_channels", "out_channels", "model_channels", "channel_mult", "num_res_blocks",
             "attention_resolutions", "transformer_depth", "transformer_depth_middle", "num_head_channels",
             "num_heads", "context_dim", "adm_in_channels", "num_classes", "use_linear_in_transformer",
             "use_spatial_transformer", "legacy", "dropout", "norm_num_groups"} | set(_FIXED) | _IGNORED
    unknown = sorted(set(params) - known)
    if unknown:
        raise ModelError(f"UNet config: unknown key(s) {', '.join(unknown)}",
                         "check the network_config of the model; keys follow MindONE's UNetModel")
    for key, required in _FIXED.items():
        if key in params and params[key] != required:
            raise ModelError(f"UNet config: {key}={params[key]!r} is not supported (only {required!r})")
    attn_type = params.get("spatial_transformer_attn_type", "vanilla")
    if attn_type not in _ATTN_TYPES:
        raise ModelError(f"UNet config: unknown spatial_transformer_attn_type {attn_type!r}")
    missing = [k for k in ("in_channels", "out_channels", "model_channels", "num_res_blocks",
                           "attention_resolutions", "context_dim") if k not in params]
    if missing:
        raise ModelError(f"UNet config: missing key(s) {', '.join(missing)}")
    if not params.get("use_spatial_transformer", False):
        raise ModelError("UNet config: only use_spatial_transformer=True (cross-attention UNets) is supported")

    channel_mult = list(params.get("channel_mult", (1, 2, 4, 8)))
    levels = len(channel_mult)
    if not levels or not all(isinstance(m, int) and m > 0 for m in channel_mult):
        raise ModelError(f"UNet config: channel_mult must be positive ints, got {channel_mult!r}")
    model_channels = params["model_channels"]
    widths = [model_channels * m for m in channel_mult]
    # A group of one channel erases what the ResBlocks add per channel (the time, size and pooled-text
    # embedding), so a 32-channel UNet needs fewer than the reference's 32 groups to hear its conditioning.
    groups = params.get("norm_num_groups", GROUPS)
    if not isinstance(groups, int) or groups < 1 or any(w % groups for w in widths):
        raise ModelError(f"UNet config: channel widths {widths} must be multiples of norm_num_groups={groups!r}")
    depth = _as_levels(params.get("transformer_depth", 1), levels, "transformer_depth")
    depth_middle = params.get("transformer_depth_middle")
    depth_middle = depth[-1] if depth_middle is None else depth_middle
    if not isinstance(depth_middle, int) or depth_middle < 0:
        raise ModelError(f"UNet config: transformer_depth_middle must be a non-negative int, got {depth_middle!r}")

    num_head_channels = params.get("num_head_channels", -1)
    num_heads = params.get("num_heads", -1)
    if num_head_channels == -1 and num_heads == -1:
        raise ModelError("UNet config: set num_head_channels or num_heads")

    legacy = bool(params.get("legacy", True))

    def heads_for(ch: int) -> tuple[int, int]:
        # The reference's rule: heads from the head width, or the head width from the heads; `legacy`
        # re-derives the head width from the heads. heads·dim_head may differ from ch (proj_in maps).
        if num_head_channels == -1:
            heads, dim_head = num_heads, ch // max(num_heads, 1)
        else:
            heads, dim_head = ch // num_head_channels, num_head_channels
            if legacy:
                dim_head = ch // max(heads, 1)
        if heads < 1 or dim_head < 1:
            raise ModelError(f"UNet config: {ch} channels cannot be split into attention heads "
                             f"(num_head_channels={num_head_channels}, num_heads={num_heads})")
        return heads, dim_head

    attention_levels = [lvl for lvl in range(levels) if 2 ** lvl in set(params["attention_resolutions"])]
    # (heads, head width) per channel count that gets a transformer: attention levels and the middle.
    head_split = {widths[lvl]: heads_for(widths[lvl]) for lvl in attention_levels + [levels - 1]}

    num_classes = params.get("num_classes")
    adm_in_channels = params.get("adm_in_channels")
    if num_classes not in (None, "sequential"):
        raise ModelError(f"UNet config: num_classes={num_classes!r} is not supported (only 'sequential' or None)")
    if num_classes == "sequential" and not adm_in_channels:
        raise ModelError("UNet config: num_classes='sequential' needs adm_in_channels")
    dropout = float(params.get("dropout", 0.0))
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"UNet config: dropout must be in [0, 1), got {dropout}")
    return {
        "in_channels": params["in_channels"], "out_channels": params["out_channels"],
        "model_channels": model_channels, "channel_mult": channel_mult,
        "num_res_blocks": _as_levels(params["num_res_blocks"], levels, "num_res_blocks"),
        "attention_levels": set(attention_levels), "transformer_depth": depth,
        "transformer_depth_middle": depth_middle, "head_split": head_split,
        "context_dim": params["context_dim"], "use_linear": bool(params.get("use_linear_in_transformer", False)),
        "adm_in_channels": adm_in_channels if num_classes == "sequential" else None, "dropout": dropout,
        "groups": groups,
    }


# --------------------------------------------------------------------------------------------------
# The network


class UNetModel(nn.Cell):
    """SDXL UNet: `construct(x, timesteps, context, y)` returns the predicted noise, shaped like x.

    x: (B, in_channels, H, W) float32 with H, W multiples of 2**(levels-1); timesteps: (B,) int or float;
    context: (B, L, context_dim); y: (B, adm_in_channels) when the config has `num_classes: sequential`.
    """

    def __init__(self, **params):
        super().__init__()
        cfg = normalise_config(params)
        self.config = dict(params)
        mc = cfg["model_channels"]
        self.model_channels = mc
        self.levels = len(cfg["channel_mult"])
        emb_dim = mc * 4
        dropout = cfg["dropout"]

        def transformer(ch: int, depth: int) -> SpatialTransformer:
            heads, dim_head = cfg["head_split"][ch]
            return SpatialTransformer(ch, heads, dim_head, depth, cfg["context_dim"], cfg["use_linear"], dropout,
                                      cfg["groups"])

        self.time_embed = nn.SequentialCell([Dense(mc, emb_dim), SiLU(), Dense(emb_dim, emb_dim)])
        self.has_label_emb = cfg["adm_in_channels"] is not None
        if self.has_label_emb:
            self.label_emb = nn.SequentialCell([nn.SequentialCell([
                Dense(cfg["adm_in_channels"], emb_dim), SiLU(), Dense(emb_dim, emb_dim)])])

        input_blocks = [TimestepEmbedSequential([InputConv(cfg["in_channels"], mc)])]
        skip_channels = [mc]
        ch = mc
        for level, mult in enumerate(cfg["channel_mult"]):
            for _ in range(cfg["num_res_blocks"][level]):
                layers = [ResBlock(ch, emb_dim, mult * mc, dropout, cfg["groups"])]
                ch = mult * mc
                if level in cfg["attention_levels"]:
                    layers.append(transformer(ch, cfg["transformer_depth"][level]))
                input_blocks.append(TimestepEmbedSequential(layers))
                skip_channels.append(ch)
            if level != self.levels - 1:
                input_blocks.append(TimestepEmbedSequential([Downsample(ch)]))
                skip_channels.append(ch)
        self.input_blocks = nn.CellList(input_blocks)

        self.middle_block = TimestepEmbedSequential([
            ResBlock(ch, emb_dim, ch, dropout, cfg["groups"]),
            transformer(ch, cfg["transformer_depth_middle"]),
            ResBlock(ch, emb_dim, ch, dropout, cfg["groups"]),
        ])

        output_blocks = []
        for level in reversed(range(self.levels)):
            mult = cfg["channel_mult"][level]
            for i in range(cfg["num_res_blocks"][level] + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mult * mc, dropout, cfg["groups"])]
                ch = mult * mc
                if level in cfg["attention_levels"]:
                    layers.append(transformer(ch, cfg["transformer_depth"][level]))
                if level and i == cfg["num_res_blocks"][level]:
                    layers.append(Upsample(ch))
                output_blocks.append(TimestepEmbedSequential(layers))
        self.output_blocks = nn.CellList(output_blocks)

        self.out = nn.SequentialCell([
            group_norm(ch, RESBLOCK_NORM_EPS, cfg["groups"]),
            nn.SiLU(),
            zero_init(conv2d(mc, cfg["out_channels"], 3, padding=1)),
        ])

    def enable_jit(self) -> UNetModel:
        """Run `construct` as one compiled graph (`ms.jit`), in PyNative mode too.

        Same results; on CPU a call is ~10x faster at small sizes once compiled, but each new input
        shape or dtype compiles again (seconds for tiny models, longer at full size).
        """
        self.construct = ms.jit(self.construct)
        return self

    def __call__(self, x, timesteps, context=None, y=None):
        # Checked here, not in construct: graph mode cannot compile raising our own exceptions.
        if self.has_label_emb and y is None:
            raise ModelError("this UNet is conditioned on a vector: pass y (B, adm_in_channels)")
        factor = 2 ** (self.levels - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ModelError(f"latent size {tuple(x.shape[-2:])} must be a multiple of {factor} for this UNet")
        return super().__call__(x, timesteps, context, y)

    def construct(self, x, timesteps, context=None, y=None):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.has_label_emb:
            emb = emb + self.label_emb(y)
        skips = ()  # a tuple and an index rather than list.pop: graph mode compiles this form
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips += (h,)
        h = self.middle_block(h, emb, context)
        last = len(skips) - 1
        for block in self.output_blocks:
            h = block(ops.cat([h, skips[last]], axis=1), emb, context)
            last -= 1
        return self.out[2](self.out[0].forward_silu(h))  # out.1 is the SiLU fused into the norm
