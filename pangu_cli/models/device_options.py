"""Per-device network options (precision, graph compilation, flash attention, offload cache) and how they
are applied to a network. fp16/bf16 store weights in that type (norms stay fp32) and run at AMP level O2, as
the reference does."""

from __future__ import annotations

from dataclasses import dataclass

from pangu_cli.errors import DeviceError
from pangu_cli.models.flash_attention import use_flash_attention


def mixed_precision(cell, dtype) -> None:
    """AMP level O2 below `cell`, in place: its children compute in `dtype`; norms compute in fp32, as with
    MindONE's `auto_mixed_precision` (MindSpore's black list, whose cells are wrapped to give `dtype` outputs,
    plus GroupNorm). GroupNorm is switched in place, unwrapped, because pangu's GroupNorm is also called
    through its fused `forward_silu` method. MindSpore 2.10 casts the inputs of every op run inside a `to_float`
    cell, so `cell`'s own construct is left in fp32: that keeps the UNet's sinusoidal timestep embedding in fp32,
    as the reference computes it."""
    import mindspore as ms
    from mindspore import nn
    from mindspore.train.amp import AMP_BLACK_LIST, _auto_black_list, _OutputTo16

    black = list(AMP_BLACK_LIST)
    for name, child in list(cell.name_cells().items()):
        if isinstance(child, tuple(black)):
            cell._cells[name] = _OutputTo16(child.to_float(ms.float32), dtype)
        else:
            _auto_black_list(child, black, dtype)
    for _, sub in cell.cells_and_names():
        if isinstance(sub, nn.GroupNorm):
            sub.to_float(ms.float32)


@dataclass
class DeviceOptions:
    device: str = "CPU"
    half: object = None  # mindspore dtype for weights and compute, None for fp32
    jit: bool = False
    flash_attention: bool = False
    offload_cache: str = "disk"  # where offloaded UNet weights wait: "host" (RAM) or "disk" (the file)


def device_options(precision: str, device: str | None = None) -> DeviceOptions:
    from pangu_cli import runtime

    info = runtime.current()
    device = device or (info.device if info else "CPU")
    precision = runtime.resolve_precision(precision, device)
    if precision == "bf16" and device == "CPU":
        raise DeviceError("MindSpore 2.10 has no bfloat16 CPU kernels for embedding lookups (Gather) and other ops",
                          "use --precision fp32 (or fp16) on CPU; bf16 is for Ascend and recent GPUs")
    accel = runtime.accelerator_options(device)
    half = None if precision == "fp32" else runtime.compute_dtype(precision)
    return DeviceOptions(device, half, accel["jit"], accel["flash_attention"] and half is not None,
                         accel["offload_cache"])


def prepare_unet(unet, opts: DeviceOptions):
    if opts.half is not None:
        mixed_precision(unet, opts.half)
    if opts.flash_attention:
        use_flash_attention(unet)
    if opts.jit:
        unet.enable_jit()
    unet.set_train(False)
    return unet
