"""MindSpore's fused attention kernel for the UNet's attention layers, where MindONE used it."""

from __future__ import annotations

import types


def _flash_cross_attention(self, x, context=None):
    """`CrossAttention.construct` with MindSpore's fused kernel where MindONE used one: both sequence lengths
    multiples of 16, head width ≤ 256, half precision (so cross-attention over 77 tokens stays vanilla)."""
    import mindspore as ms
    from mindspore import ops

    from pangu_cli.models import unet as unet_module

    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    head_dim = q.shape[-1] // self.heads
    if (q.shape[1] % 16 == 0 and k.shape[1] % 16 == 0 and head_dim <= 256 and head_dim % 16 == 0
            and q.dtype in (ms.float16, ms.bfloat16)):
        out = ops.flash_attention_score(q, k, v, self.heads, scalar_value=self.scale, input_layout="BSH")
    else:
        out = unet_module.attention(q, k, v, self.heads, self.scale)
    return self.to_out(out)


def use_flash_attention(unet) -> int:
    """Route the UNet's attention through `ops.flash_attention_score` (Ascend); returns the layers switched."""
    from pangu_cli.models.unet import CrossAttention

    count = 0
    for _, cell in unet.cells_and_names():
        if isinstance(cell, CrossAttention):
            cell.construct = types.MethodType(_flash_cross_attention, cell)
            count += 1
    return count
