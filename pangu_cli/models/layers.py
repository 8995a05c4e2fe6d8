"""Building blocks shared by the UNet, the autoencoder and the text encoders.

Leaf parameter names follow MindSpore's reference checkpoints: norms hold `gamma`/`beta`,
dense and conv layers `weight`/`bias`, embeddings `embedding_table`.
"""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import nn, ops


def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
           padding: int = 0, bias: bool = True) -> nn.Conv2d:
    """A PyTorch-semantics Conv2d (explicit symmetric padding, NCHW)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                     pad_mode="pad" if padding else "valid", padding=padding, has_bias=bias)


def group_norm(channels: int, eps: float = 1e-5, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=eps)


def layer_norm(dim: int, eps: float = 1e-5) -> nn.LayerNorm:
    return nn.LayerNorm((dim,), epsilon=eps)


def timestep_embedding(timesteps: ms.Tensor, dim: int, max_period: float = 10000.0) -> ms.Tensor:
    """Sinusoidal embedding with cosines first, as the reference (`[cos(t f), sin(t f)]`).

    Matches diffusers' `Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)`.
    """
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(half, dtype=np.float32) / half)
    args = timesteps.astype(ms.float32).reshape(-1, 1) * ms.Tensor(freqs[None, :])
    emb = ops.cat([ops.cos(args), ops.sin(args)], axis=-1)
    if dim % 2:
        emb = ops.cat([emb, ops.zeros_like(emb[:, :1])], axis=-1)
    return emb


def zero_init(cell: nn.Cell) -> nn.Cell:
    """Zero a layer's parameters: residual branches start as identity, as in the reference."""
    for param in cell.get_parameters():
        param.set_data(ops.zeros(param.shape, param.dtype))
    return cell
