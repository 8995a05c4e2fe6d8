"""Text encoders: OpenCLIP text tower, Hugging Face CLIP text tower, BERT encoder.

Parameter names follow the reference checkpoints (MindONE, `conditioner.embedders.*`):
- `OpenCLIPTextEncoder` is what the conditioner registers as `model` (`conditioner.embedders.1.model.*`);
- `HFCLIPTextEncoder` is what it registers as `transformer` (`conditioner.embedders.0.transformer.text_model.*`);
- `BertTextEncoder` uses Hugging Face BERT names (`embeddings.word_embeddings`, `encoder.layer.N.*`).
The reference lists hold neither OpenCLIP's `attn_mask` nor HF CLIP's `position_ids`, so both are computed,
not stored as Parameters.

Attention logits are softmaxed in float32 whatever the compute dtype, so a float16 run masks and normalises
as the float32 one does.
"""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, XavierUniform, initializer

from pangu_cli.errors import ModelError
from pangu_cli.models.layers import layer_norm

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")
LAYERS = ("last", "penultimate")

# A large finite negative: masked logits vanish in softmax without the NaNs -inf gives a fully masked row.
_MASKED = float(np.finfo(np.float32).min)


class QuickGELU(nn.Cell):
    """OpenAI CLIP's `x * sigmoid(1.702 x)`."""

    def construct(self, x):
        return x * ops.sigmoid(1.702 * x)


def activation(name: str) -> nn.Cell:
    """`gelu` (exact erf form), `gelu_tanh` (tanh approximation) or `quick_gelu`."""
    if name == "gelu":
        return nn.GELU(approximate=False)
    if name == "gelu_tanh":
        return nn.GELU(approximate=True)
    if name == "quick_gelu":
        return QuickGELU()
    raise ModelError(f"unknown activation '{name}'", f"use one of: {', '.join(ACTIVATIONS)}")


def _check_layer(layer: str) -> str:
    if layer not in LAYERS:
        raise ModelError(f"unknown text-encoder output layer '{layer}'", f"use one of: {', '.join(LAYERS)}")
    return layer


def _check_heads(width: int, heads: int) -> None:
    if heads <= 0 or width % heads:
        raise ModelError(f"text encoder width {width} is not divisible by {heads} heads",
                         "check the encoder config")


def causal_mask(length: int) -> ms.Tensor:
    """Additive (L, L) float32 mask: position i sees positions 0..i."""
    mask = np.triu(np.full((length, length), _MASKED, dtype=np.float32), k=1)
    return ms.Tensor(mask)


def padding_mask(attention_mask: ms.Tensor) -> ms.Tensor:
    """Additive (B, 1, 1, L) float32 mask from a (B, L) 1/0 mask: padded keys are hidden."""
    keep = attention_mask.astype(ms.float32)
    return ((1.0 - keep) * _MASKED).reshape(keep.shape[0], 1, 1, keep.shape[1])


def attend(q: ms.Tensor, k: ms.Tensor, v: ms.Tensor, heads: int, mask: ms.Tensor | None) -> ms.Tensor:
    """Multi-head scaled dot-product attention on (B, L, W) projections; `mask` is additive float32."""
    b, length, width = q.shape
    d = width // heads
    q = (q * (d ** -0.5)).reshape(b, length, heads, d).transpose(0, 2, 1, 3)
    k = k.reshape(b, -1, heads, d).transpose(0, 2, 3, 1)
    v = v.reshape(b, -1, heads, d).transpose(0, 2, 1, 3)
    logits = ops.matmul(q, k).astype(ms.float32)
    if mask is not None:
        logits = logits + mask
    probs = ops.softmax(logits, axis=-1).astype(v.dtype)
    out = ops.matmul(probs, v)
    return out.transpose(0, 2, 1, 3).reshape(b, length, width)


def _gather_positions(x: ms.Tensor, positions: ms.Tensor) -> ms.Tensor:
    """x (B, L, W), positions (B,) -> x[b, positions[b]] (B, W)."""
    batch = ops.arange(x.shape[0]).astype(ms.int32)
    return ops.gather_nd(x, ops.stack([batch, positions.astype(ms.int32)], axis=-1))


def _argmax_positions(ids: ms.Tensor) -> ms.Tensor:
    # float32 holds token ids exactly (< 2**24); argmax on float is supported on every backend.
    return ops.argmax(ids.astype(ms.float32), dim=-1)


def _first_positions(ids: ms.Tensor, token_id: int) -> ms.Tensor:
    """Index of the first `token_id` in each row (0 where the row has none, as HF's argmax gives)."""
    length = ids.shape[-1]
    index = ops.arange(length).astype(ms.int32).reshape(1, length)
    found = ops.where(ids == token_id, index, ms.Tensor(length, ms.int32))
    first = found.min(axis=-1)
    return ops.where(first == length, ops.zeros_like(first), first)


# ---------------------------------------------------------------------------------------------------------------
# OpenCLIP text tower (ViT-bigG-14 text in PanGu-Draw 3.0)


class OpenCLIPAttention(nn.Cell):
    """torch `nn.MultiheadAttention` layout: packed `in_proj_weight` (3W, W) in q, k, v order, `out_proj`."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.width = width
        self.in_proj_weight = Parameter(initializer(XavierUniform(), (3 * width, width), ms.float32),
                                        name="in_proj_weight")
        self.in_proj_bias = Parameter(initializer("zeros", (3 * width,), ms.float32), name="in_proj_bias")
        self.out_proj = nn.Dense(width, width)

    def construct(self, x, mask=None):
        qkv = ops.dense(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = ops.split(qkv, self.width, axis=-1)
        return self.out_proj(attend(q, k, v, self.heads, mask))


class OpenCLIPMLP(nn.Cell):
    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.c_fc = nn.Dense(width, hidden)
        self.gelu = activation(act)
        self.c_proj = nn.Dense(hidden, width)

    def construct(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Cell):
    def __init__(self, width: int, heads: int, mlp_ratio: float, act: str, eps: float):
        super().__init__()
        self.ln_1 = layer_norm(width, eps)
        self.attn = OpenCLIPAttention(width, heads)
        self.ln_2 = layer_norm(width, eps)
        self.mlp = OpenCLIPMLP(width, int(width * mlp_ratio), act)

    def construct(self, x, mask=None):
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class OpenCLIPTransformer(nn.Cell):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, act: str, eps: float):
        super().__init__()
        self.resblocks = nn.CellList([ResidualAttentionBlock(width, heads, mlp_ratio, act, eps)
                                      for _ in range(layers)])


class OpenCLIPTextEncoder(nn.Cell):
    """OpenCLIP text transformer with a causal mask.

    `construct(tokens (B, L) int) -> (context (B, L, width), pooled)`:
    - `layer="penultimate"`: context is the input of the last block, without `ln_final` (SDXL / PanGu);
      `layer="last"`: the output of the last block, also without `ln_final` (the reference's non-legacy path).
    - pooled = `ln_final(last)` at the position of the largest token id (the end-of-text token), times
      `text_projection` (width, proj_dim) when `proj_dim` is set; (B, width) otherwise.
    With `proj_dim` the tower also holds `logit_scale`, as the CLIP checkpoints do (unused here).
    """

    def __init__(self, vocab_size: int, width: int, layers: int, heads: int, context_length: int = 77,
                 mlp_ratio: float = 4, proj_dim: int | None = None, act: str = "gelu", eps: float = 1e-5,
                 layer: str = "penultimate"):
        super().__init__()
        _check_heads(width, heads)
        activation(act)  # validate early
        self.layer = _check_layer(layer)
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width, embedding_table=Normal(0.02))
        self.positional_embedding = Parameter(initializer(Normal(0.01), (context_length, width), ms.float32),
                                              name="positional_embedding")
        self.transformer = OpenCLIPTransformer(width, layers, heads, mlp_ratio, act, eps)
        self.ln_final = layer_norm(width, eps)
        self.proj_dim = proj_dim
        if proj_dim is not None:
            self.text_projection = Parameter(initializer(Normal(width ** -0.5), (width, proj_dim), ms.float32),
                                             name="text_projection")
            self.logit_scale = Parameter(ms.Tensor(math.log(1 / 0.07), ms.float32), name="logit_scale")
        self._causal_mask = causal_mask(context_length)

    def construct(self, tokens):
        length = tokens.shape[1]
        x = self.token_embedding(tokens)
        x = x + self.positional_embedding[:length].astype(x.dtype)
        mask = self._causal_mask[:length, :length]
        blocks = self.transformer.resblocks
        penultimate = x
        for i, block in enumerate(blocks):
            if i == len(blocks) - 1:
                penultimate = x
            x = block(x, mask)
        context = penultimate if self.layer == "penultimate" else x
        # ln_final is per position: normalising only the gathered rows equals gathering normalised rows.
        pooled = self.ln_final(_gather_positions(x, _argmax_positions(tokens)))
        if self.proj_dim is not None:
            pooled = ops.matmul(pooled, self.text_projection.astype(pooled.dtype))
        return context, pooled


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face CLIP text tower (the Chinese encoder of PanGu-Draw 3.0, with a WordPiece vocabulary)


class CLIPAttention(nn.Cell):
    def __init__(self, hidden_size: int, heads: int):
        super().__init__()
        self.heads = heads
        self.k_proj = nn.Dense(hidden_size, hidden_size)
        self.v_proj = nn.Dense(hidden_size, hidden_size)
        self.q_proj = nn.Dense(hidden_size, hidden_size)
        self.out_proj = nn.Dense(hidden_size, hidden_size)

    def construct(self, x, mask=None):
        out = attend(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, mask)
        return self.out_proj(out)


class CLIPMLP(nn.Cell):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str):
        super().__init__()
        self.fc1 = nn.Dense(hidden_size, intermediate_size)
        self.activation_fn = activation(act)
        self.fc2 = nn.Dense(intermediate_size, hidden_size)

    def construct(self, x):
        return self.fc2(self.activation_fn(self.fc1(x)))


class CLIPEncoderLayer(nn.Cell):
    def __init__(self, hidden_size: int, heads: int, intermediate_size: int, act: str, eps: float):
        super().__init__()
        self.self_attn = CLIPAttention(hidden_size, heads)
        self.layer_norm1 = layer_norm(hidden_size, eps)
        self.mlp = CLIPMLP(hidden_size, intermediate_size, act)
        self.layer_norm2 = layer_norm(hidden_size, eps)

    def construct(self, x, mask=None):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Cell):
    def __init__(self, hidden_size: int, layers: int, heads: int, intermediate_size: int, act: str, eps: float):
        super().__init__()
        self.layers = nn.CellList([CLIPEncoderLayer(hidden_size, heads, intermediate_size, act, eps)
                                   for _ in range(layers)])


class CLIPTextEmbeddings(nn.Cell):
    def __init__(self, vocab_size: int, hidden_size: int, max_position_embeddings: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, hidden_size, embedding_table=Normal(0.02))
        self.position_embedding = nn.Embedding(max_position_embeddings, hidden_size, embedding_table=Normal(0.02))

    def construct(self, input_ids):
        return self.token_embedding(input_ids) + self.position_embedding.embedding_table[:input_ids.shape[1]]


class CLIPTextTransformer(nn.Cell):
    def __init__(self, vocab_size: int, hidden_size: int, layers: int, heads: int, intermediate_size: int,
                 max_position_embeddings: int, act: str, eps: float):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(vocab_size, hidden_size, max_position_embeddings)
        self.encoder = CLIPEncoder(hidden_size, layers, heads, intermediate_size, act, eps)
        self.final_layer_norm = layer_norm(hidden_size, eps)


class HFCLIPTextEncoder(nn.Cell):
    """Hugging Face `CLIPTextModel` layout (`text_model.*`) with a causal mask.

    `construct(input_ids (B, L) int) -> (context (B, L, hidden), pooled)`:
    - `layer="last"`: context = `last_hidden_state`, after `final_layer_norm` (PanGu's Chinese encoder);
      `layer="penultimate"`: the input of the last layer, without `final_layer_norm`.
    - pooled = the final-normed state at the end-of-text position, times `text_projection` (a bias-free Dense
      beside `text_model`, as in `CLIPTextModelWithProjection`) when `proj_dim` is set. The position is
      argmax(input_ids) when `eos_token_id` is None (OpenAI vocab: end-of-text is the largest id), else the
      first occurrence of `eos_token_id` (needed with a BERT vocabulary, whose [SEP] is not the largest id).
    """

    def __init__(self, vocab_size: int, hidden_size: int, layers: int, heads: int, intermediate_size: int,
                 max_position_embeddings: int = 77, act: str = "quick_gelu", eps: float = 1e-5,
                 layer: str = "last", proj_dim: int | None = None, eos_token_id: int | None = None):
        super().__init__()
        _check_heads(hidden_size, heads)
        activation(act)
        self.layer = _check_layer(layer)
        self.eos_token_id = eos_token_id
        self.text_model = CLIPTextTransformer(vocab_size, hidden_size, layers, heads, intermediate_size,
                                              max_position_embeddings, act, eps)
        self.proj_dim = proj_dim
        if proj_dim is not None:
            self.text_projection = nn.Dense(hidden_size, proj_dim, has_bias=False)
        self._causal_mask = causal_mask(max_position_embeddings)

    def construct(self, input_ids):
        length = input_ids.shape[1]
        tm = self.text_model
        x = tm.embeddings(input_ids)
        mask = self._causal_mask[:length, :length]
        layers = tm.encoder.layers
        penultimate = x
        for i, block in enumerate(layers):
            if i == len(layers) - 1:
                penultimate = x
            x = block(x, mask)
        last = tm.final_layer_norm(x)
        context = last if self.layer == "last" else penultimate
        if self.eos_token_id is None:
            positions = _argmax_positions(input_ids)
        else:
            positions = _first_positions(input_ids, self.eos_token_id)
        pooled = _gather_positions(last, positions)
        if self.proj_dim is not None:
            pooled = self.text_projection(pooled)
        return context, pooled


# ---------------------------------------------------------------------------------------------------------------
# BERT encoder (Hugging Face `BertModel` layout), bidirectional with a padding mask


class BertEmbeddings(nn.Cell):
    def __init__(self, vocab_size: int, hidden_size: int, max_position_embeddings: int, type_vocab_size: int,
                 eps: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size, embedding_table=Normal(0.02))
        self.position_embeddings = nn.Embedding(max_position_embeddings, hidden_size, embedding_table=Normal(0.02))
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden_size, embedding_table=Normal(0.02))
        self.LayerNorm = layer_norm(hidden_size, eps)

    def construct(self, input_ids, token_type_ids):
        positions = self.position_embeddings.embedding_table[:input_ids.shape[1]]
        x = self.word_embeddings(input_ids) + positions + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x)


class BertSelfAttention(nn.Cell):
    def __init__(self, hidden_size: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Dense(hidden_size, hidden_size)
        self.key = nn.Dense(hidden_size, hidden_size)
        self.value = nn.Dense(hidden_size, hidden_size)

    def construct(self, x, mask):
        return attend(self.query(x), self.key(x), self.value(x), self.heads, mask)


class BertAddNorm(nn.Cell):
    """Post-LN residual: LayerNorm(dense(h) + residual)."""

    def __init__(self, in_size: int, hidden_size: int, eps: float):
        super().__init__()
        self.dense = nn.Dense(in_size, hidden_size)
        self.LayerNorm = layer_norm(hidden_size, eps)

    def construct(self, h, residual):
        return self.LayerNorm(self.dense(h) + residual)


class BertAttention(nn.Cell):
    def __init__(self, hidden_size: int, heads: int, eps: float):
        super().__init__()
        self.self = BertSelfAttention(hidden_size, heads)
        self.output = BertAddNorm(hidden_size, hidden_size, eps)

    def construct(self, x, mask):
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Cell):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str):
        super().__init__()
        self.dense = nn.Dense(hidden_size, intermediate_size)
        self.intermediate_act_fn = activation(act)

    def construct(self, x):
        return self.intermediate_act_fn(self.dense(x))


class BertLayer(nn.Cell):
    def __init__(self, hidden_size: int, heads: int, intermediate_size: int, act: str, eps: float):
        super().__init__()
        self.attention = BertAttention(hidden_size, heads, eps)
        self.intermediate = BertIntermediate(hidden_size, intermediate_size, act)
        self.output = BertAddNorm(intermediate_size, hidden_size, eps)

    def construct(self, x, mask):
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Cell):
    def __init__(self, hidden_size: int, layers: int, heads: int, intermediate_size: int, act: str, eps: float):
        super().__init__()
        self.layer = nn.CellList([BertLayer(hidden_size, heads, intermediate_size, act, eps)
                                  for _ in range(layers)])


class BertPooler(nn.Cell):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Dense(hidden_size, hidden_size)

    def construct(self, cls_state):
        return ops.tanh(self.dense(cls_state))


class BertTextEncoder(nn.Cell):
    """BERT encoder (post-LN), Hugging Face `BertModel` names.

    `construct(input_ids (B, L), attention_mask (B, L) 1/0 or None, token_type_ids (B, L) or None)
    -> (last_hidden_state (B, L, hidden), pooled (B, hidden))`. Padded keys are masked out; padded query rows
    are still computed, as in HF. pooled is the [CLS] (position 0) hidden state; with `pooler=True` the cell
    also holds HF's `pooler.dense` and pooled is `tanh(pooler.dense(cls))`, HF's `pooler_output`.
    """

    def __init__(self, vocab_size: int, hidden_size: int, layers: int, heads: int, intermediate_size: int,
                 max_position_embeddings: int, type_vocab_size: int = 2, eps: float = 1e-12, act: str = "gelu",
                 pooler: bool = False):
        super().__init__()
        _check_heads(hidden_size, heads)
        activation(act)
        self.embeddings = BertEmbeddings(vocab_size, hidden_size, max_position_embeddings, type_vocab_size, eps)
        self.encoder = BertEncoder(hidden_size, layers, heads, intermediate_size, act, eps)
        self.has_pooler = pooler
        if pooler:
            self.pooler = BertPooler(hidden_size)

    def construct(self, input_ids, attention_mask=None, token_type_ids=None):
        if token_type_ids is None:
            token_type_ids = ops.zeros_like(input_ids)
        mask = None if attention_mask is None else padding_mask(attention_mask)
        x = self.embeddings(input_ids, token_type_ids)
        for block in self.encoder.layer:
            x = block(x, mask)
        pooled = x[:, 0]
        if self.has_pooler:
            pooled = self.pooler(pooled)
        return x, pooled
