"""Building blocks shared by the UNet, the autoencoder and the text encoders.

Leaf parameter names follow MindSpore's reference checkpoints: norms hold `gamma`/`beta`,
dense and conv layers `weight`/`bias`, embeddings `embedding_table`.
"""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from pangu_cli.models import fast_ops


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` (names `weight`/`bias`) that runs on pangu's oneDNN kernel when fast kernels are on.

    The choice is made when the cell is built (after `runtime.setup`): on CPU with the kernel library,
    fp32 inputs go through `fast_ops`; anything else (other devices, no bias, fp16) uses MindSpore's op.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         pad_mode="pad" if padding else "valid", padding=padding, has_bias=bias)
        self.use_fast = bias and fast_ops.enabled("conv")
        if self.use_fast:
            strides, pads = (stride, stride), (padding,) * 4
            self.fast_conv = fast_ops.conv2d_primitive(strides, pads)
            self.fast_config = fast_ops.conv2d_config(strides, pads)

    def construct(self, x):
        return self.convolve(x)

    def convolve(self, x):
        # A named method rather than super().construct: graph mode resolves super() from the runtime
        # class, which recurses forever in subclasses (unet.InputConv).
        if self.use_fast and x.dtype == ms.float32:
            return self.fast_conv(x, self.weight, self.bias, self.fast_config)
        out = self.conv2d(x, self.weight)
        return self.bias_add(out, self.bias) if self.has_bias else out


class GroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` (names `gamma`/`beta`) with a fused `forward_silu`, fast on CPU when enabled.

    `cell(x)` normalises; `cell.forward_silu(x)` returns `silu(cell(x))` in one kernel. Like `Conv2d`,
    the kernel choice is fixed when the cell is built.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        super().__init__(num_groups, num_channels, eps=eps)
        self.use_fast = fast_ops.enabled("group_norm")
        if self.use_fast:
            self.fast_norm = fast_ops.group_norm_primitive(num_groups, silu=False)
            self.fast_norm_silu = fast_ops.group_norm_primitive(num_groups, silu=True)
            self.fast_eps = ms.Tensor(np.array([eps], dtype=np.float32))

    def construct(self, x):
        if self.use_fast and x.dtype == ms.float32:
            return self.fast_norm(x, self.gamma, self.beta, self.fast_eps)[0]
        return ops.group_norm(x, self.num_groups, self.gamma.to(x.dtype), self.beta.to(x.dtype), self.eps)

    def forward_silu(self, x):
        if self.use_fast and x.dtype == ms.float32:
            return self.fast_norm_silu(x, self.gamma, self.beta, self.fast_eps)[0]
        return ops.silu(ops.group_norm(x, self.num_groups, self.gamma.to(x.dtype), self.beta.to(x.dtype), self.eps))


class Dense(nn.Dense):
    """`nn.Dense` (names `weight`/`bias`) on pangu's sgemm kernel when fast kernels are on.

    MindSpore's CPU MatMul ran the UNet's 128-wide projections at ~1/6 of sgemm's speed, and its
    BiasAddGrad far below memory speed; the fast kernel does matmul, bias and their gradients.
    """

    def __init__(self, in_channels: int, out_channels: int, has_bias: bool = True):
        super().__init__(in_channels, out_channels, has_bias=has_bias)
        self.use_fast = fast_ops.enabled("dense")
        if self.use_fast:
            self.fast_dense = fast_ops.dense_primitive()
            # A bias-free layer passes zeros (not a Parameter, so its gradient goes nowhere).
            self.zero_bias = None if has_bias else ms.Tensor(np.zeros(out_channels, dtype=np.float32))

    def construct(self, x):
        if self.use_fast and x.dtype == ms.float32:
            return self.fast_dense(x, self.weight, self.bias if self.has_bias else self.zero_bias)
        shape = x.shape
        y = self.matmul(x.reshape(-1, shape[-1]), self.weight)
        if self.has_bias:
            y = self.bias_add(y, self.bias)
        return y.reshape(shape[:-1] + (-1,))


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` over the last axis (names `gamma`/`beta`), on pangu's kernel when fast kernels are on."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__((dim,), epsilon=eps)
        self.use_fast = fast_ops.enabled("layer_norm")
        if self.use_fast:
            self.fast_norm = fast_ops.layer_norm_primitive()
            self.fast_eps = ms.Tensor(np.array([eps], dtype=np.float32))

    def construct(self, x):
        if self.use_fast and x.dtype == ms.float32:
            return self.fast_norm(x, self.gamma, self.beta, self.fast_eps)[0]
        return self.layer_norm(x, self.gamma.astype(x.dtype), self.beta.astype(x.dtype))[0]


class SiLU(nn.Cell):
    """`nn.SiLU` on pangu's kernel when fast kernels are on (MindSpore's measured 2-3x PyTorch's)."""

    def __init__(self):
        super().__init__()
        self.use_fast = fast_ops.enabled("silu")
        if self.use_fast:
            self.fast_silu = fast_ops.silu_primitive()

    def construct(self, x):
        if self.use_fast and x.dtype == ms.float32:
            return self.fast_silu(x)
        return ops.silu(x)


class Softmax(nn.Cell):
    """Softmax over the last axis; pangu's kernel (one-pass gradient) when fast kernels are on."""

    def __init__(self):
        super().__init__()
        self.use_fast = fast_ops.enabled("softmax")
        if self.use_fast:
            self.fast_softmax = fast_ops.softmax_primitive()

    def construct(self, x):
        if self.use_fast and x.dtype == ms.float32:
            return self.fast_softmax(x)
        return ops.softmax(x, axis=-1)


def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
           padding: int = 0, bias: bool = True) -> Conv2d:
    """A PyTorch-semantics Conv2d (explicit symmetric padding, NCHW)."""
    return Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)


def group_norm(channels: int, eps: float = 1e-5, groups: int = 32) -> GroupNorm:
    return GroupNorm(groups, channels, eps=eps)


def layer_norm(dim: int, eps: float = 1e-5) -> LayerNorm:
    return LayerNorm(dim, eps=eps)


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
