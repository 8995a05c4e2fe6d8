"""MindSpore runtime setup: device target, execution mode, precision and CPU kernel settings.

Everything that must happen before `import mindspore` (the oneDNN ISA cap) happens here, once.
Nothing else in the package should set MindSpore context options.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pangu_cli.errors import DeviceError, UsageError

DEVICES = ("CPU", "GPU", "Ascend")
PRECISIONS = ("fp32", "fp16", "bf16")
MODES = ("pynative", "graph")

# MindSpore's own convolutions hand oneDNN plain NCHW tensors: on AVX-512 that selects a reference
# kernel (~100x slower), under an AVX2 cap im2col+gemm. With pangu's fast kernels (models/fast_ops.py)
# no MindSpore convolution runs, so the ISA stays native (AVX-512 kernels for the fast convolutions and
# sgemm: a training step 1.25x faster than under the cap, bench/PERF.md); without them the cap is
# the default.
DEFAULT_CPU_ISA = "AVX2"
ISA_ENV = "DNNL_MAX_CPU_ISA"
THREADS_ENV = "PANGU_CPU_THREADS"  # MindSpore runtime_num_threads on CPU; default: one per usable core


@dataclass
class RuntimeInfo:
    device: str
    mode: str
    precision: str
    cpu_isa: str | None
    cpu_isa_source: str
    threads: int | None
    mindspore_version: str
    notes: list[str] = field(default_factory=list)
    # pangu's CPU kernels (models/fast_ops.py): used by networks built after setup when True
    fast_kernels: bool = False
    fast_kernels_detail: str = ""
    fast_kernel_kinds: tuple[str, ...] = ()


_current: RuntimeInfo | None = None


_isa_choice: tuple[str | None, str] | None = None


def configure_cpu_isa() -> tuple[str | None, str]:
    """Apply the ISA cap unless the user chose one; idempotent. Returns (value, where it came from).

    Must run before MindSpore is imported (oneDNN reads the variable once); `pangu_cli.models`
    calls it on import so that every network module gets the setting.
    """
    global _isa_choice
    if _isa_choice is None:
        _isa_choice = _choose_cpu_isa()
        # MindSpore logs warnings (deprecations, probes) to stderr at import; keep errors only
        # unless the user asked for more.
        os.environ.setdefault("GLOG_v", "3")
    return _isa_choice


def _choose_cpu_isa() -> tuple[str | None, str]:
    user = os.environ.get("PANGU_CPU_ISA")
    if user:
        if user.lower() in ("default", "native", "none"):
            os.environ.pop(ISA_ENV, None)
            return None, "PANGU_CPU_ISA"
        os.environ[ISA_ENV] = user.upper()
        return user.upper(), "PANGU_CPU_ISA"
    if ISA_ENV in os.environ:
        return os.environ[ISA_ENV], ISA_ENV
    # Importing the package may run configure_cpu_isa() again (pangu_cli.models calls it on import);
    # that inner call then decides, and this one returns its choice.
    from pangu_cli.models import fast_ops

    if _isa_choice is not None:
        return _isa_choice
    library = fast_ops.prepare()
    if library.ready and "conv" in fast_ops.requested_kinds():
        return None, "pangu default with fast kernels (no MindSpore convolutions run)"
    os.environ[ISA_ENV] = DEFAULT_CPU_ISA
    return DEFAULT_CPU_ISA, "pangu default"


def mindspore_imported() -> bool:
    import sys

    return "mindspore" in sys.modules


def normalise_device(device: str) -> str:
    if device.lower() == "auto":
        return "auto"
    for name in DEVICES:
        if device.lower() == name.lower():
            return name
    raise UsageError(f"unknown device '{device}'", f"use one of: auto, {', '.join(DEVICES)}")


def setup(device: str = "auto", mode: str = "pynative", precision: str = "fp32",
          threads: int | None = None, device_id: int | None = None) -> RuntimeInfo:
    """Configure MindSpore once per process and return what was chosen.

    `device="auto"` picks Ascend, then GPU, then CPU, whichever MindSpore can open. `device_id` binds an
    accelerator card (a distributed worker passes its local rank); CPU ignores it.
    """
    global _current
    device = normalise_device(device)
    if mode not in MODES:
        raise UsageError(f"unknown execution mode '{mode}'", f"use one of: {', '.join(MODES)}")
    if precision not in PRECISIONS + ("auto",):
        raise UsageError(f"unknown precision '{precision}'", f"use one of: auto, {', '.join(PRECISIONS)}")
    if _current is not None:
        wanted = device if device != "auto" else _current.device
        precision = resolve_precision(precision, wanted)
        if (wanted, mode, precision) != (_current.device, _current.mode, _current.precision):
            raise DeviceError(
                f"MindSpore is already set up for {_current.device}/{_current.mode}/{_current.precision}",
                "one process runs one device configuration; start a new process")
        handle_interrupts()
        return _current

    if _isa_choice is None and mindspore_imported():
        isa, isa_source = os.environ.get(ISA_ENV), "not applied (MindSpore was imported first)"
    else:
        isa, isa_source = configure_cpu_isa()
    import mindspore as ms

    notes: list[str] = []
    chosen = _pick_device(ms, device, notes, device_id)
    precision = resolve_precision(precision, chosen)
    if chosen != "CPU":
        isa, isa_source = None, "not used off CPU"
    if precision == "fp16" and chosen == "CPU":
        notes.append("fp16 on CPU is slow and not more accurate; fp32 is recommended")
    if precision == "bf16" and chosen == "GPU":
        notes.append("bf16 needs an Ampere or newer GPU")
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    if not threads and os.environ.get(THREADS_ENV, "").strip().isdigit():
        threads = int(os.environ[THREADS_ENV]) or None
    if not threads and chosen == "CPU":
        # MindSpore's CPU thread pool defaults to ~25-30 threads whatever the core count; on 2 cores
        # that oversubscription cost a training step 1.3x its CPU time and 1.7x its wall time.
        threads = cpu_cores()
    if threads:
        ms.set_context(runtime_num_threads=int(threads))
    from pangu_cli.models import fast_ops

    kernels = fast_ops.configure(chosen)
    _current = RuntimeInfo(device=chosen, mode=mode, precision=precision, cpu_isa=isa,
                           cpu_isa_source=isa_source, threads=threads,
                           mindspore_version=ms.__version__, notes=notes,
                           fast_kernels=fast_ops.enabled(), fast_kernels_detail=kernels.reason,
                           fast_kernel_kinds=fast_ops.enabled_kinds())
    handle_interrupts()
    return _current


# MindSpore 2.10 swaps its own C-level SIGINT handler in whenever its runtime starts work (the first
# PyNative op, every compiled-graph run, every gradient): that handler re-sends the signal to the process
# as SIGTERM, whose default action kills it mid-write, and Python's record of the handler
# (`signal.getsignal`) does not change. So pangu gives both signals Python handlers, and a watcher thread
# puts Python's SIGINT handler back within milliseconds of each swap, so that Ctrl-C reaches Python as
# SIGINT (and `pangu train` can tell it from a scheduler's SIGTERM).
SIGNAL_WATCH_S = 0.01
_watcher: threading.Thread | None = None


def handle_interrupts(handler: Callable[[int, Any], Any] | None = None) -> dict[int, Any]:
    """Route Ctrl-C (SIGINT) and SIGTERM to `handler`, so that commands stop cleanly; returns the previous
    handlers. Without `handler`, a signal that has no Python handler yet gets one that raises
    KeyboardInterrupt (exit code 130) -- also a SIGINT ignored by the parent: MindSpore would turn it into
    a SIGTERM during model calls anyway, so ignoring it cannot be honoured. Main thread only (elsewhere it
    does nothing). `setup` calls it; a caller with its own handler calls it after `setup`."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, raise_interrupt)):
        previous[signum] = current = signal.getsignal(signum)
        signal.signal(signum, handler or (current if callable(current) else default))
    _watch_sigint()
    return previous


def raise_interrupt(signum, frame) -> None:
    """A signal handler that stops the command as Ctrl-C does (exit code 130)."""
    raise KeyboardInterrupt


def _watch_sigint() -> None:
    """Start (once per process, on Linux) the thread that undoes MindSpore's SIGINT handler swaps."""
    global _watcher
    if _watcher is not None or not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None)
    # `struct sigaction`, kept opaque (152 bytes on glibc x86-64 and arm64): only its first field, the
    # handler's address, is read. Python's C-level handler is one function for every signal, and
    # MindSpore leaves SIGTERM alone: SIGTERM's action (a Python handler, see handle_interrupts) is the
    # one to put back on SIGINT.
    python_action = ctypes.create_string_buffer(512)
    if libc.sigaction(int(signal.SIGTERM), None, python_action) != 0:
        return
    python_handler = ctypes.c_void_p.from_buffer(python_action).value
    if python_handler in (None, 0, 1):  # SIG_DFL / SIG_IGN: no Python handler to copy
        return

    def watch() -> None:
        current = ctypes.create_string_buffer(512)
        while True:
            time.sleep(SIGNAL_WATCH_S)
            if libc.sigaction(int(signal.SIGINT), None, current) != 0:
                continue
            installed = ctypes.c_void_p.from_buffer(current).value
            # Only a foreign handler is replaced: SIG_DFL / SIG_IGN were set from Python on purpose.
            if installed not in (None, 0, 1, python_handler) and callable(signal.getsignal(signal.SIGINT)):
                libc.sigaction(int(signal.SIGINT), python_action, None)

    _watcher = threading.Thread(target=watch, name="pangu-sigint-watch", daemon=True)
    _watcher.start()


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def device_hardware() -> dict[str, bool]:
    """Whether a driver for each accelerator is visible (MindSpore's plugins alone are not enough)."""
    import shutil
    from pathlib import Path

    ascend = Path("/dev/davinci0").exists() or bool(shutil.which("npu-smi")) or bool(os.environ.get("ASCEND_HOME_PATH"))
    gpu = Path("/dev/nvidiactl").exists() or bool(shutil.which("nvidia-smi"))
    return {"Ascend": ascend, "GPU": gpu, "CPU": True}


def _pick_device(ms, device: str, notes: list[str], device_id: int | None = None) -> str:
    # Probing a backend without its driver makes MindSpore log errors; only probe what is present.
    present = device_hardware()
    candidates = [device] if device != "auto" else [d for d in ("Ascend", "GPU", "CPU") if present[d]]
    errors = []
    for name in candidates:
        try:
            if name != "CPU" and device_id is not None:
                ms.set_device(name, int(device_id))
            else:
                ms.set_device(name)
            if name != "CPU":
                # set_device is lazy; a tiny op proves the backend really opens.
                ms.Tensor([1.0]) + 1
            return name
        except Exception as exc:  # MindSpore raises RuntimeError/ValueError variants per backend
            errors.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if device == "auto":
        raise DeviceError("no MindSpore device could be opened: " + "; ".join(errors),
                          "check the MindSpore installation with `pangu doctor`")
    raise DeviceError(f"device {device} is not available ({errors[0]})",
                      "use --device CPU, or install the MindSpore build for that device")


def current() -> RuntimeInfo | None:
    return _current


def compute_dtype(precision: str):
    import mindspore as ms

    return {"fp32": ms.float32, "fp16": ms.float16, "bf16": ms.bfloat16}[precision]


# Accelerators (Ascend / GPU): what MindONE's pangu_sampling.py does there. Untested here (CPU-only machines).

def resolve_precision(precision: str, device: str) -> str:
    """`auto` → fp16 on Ascend and GPU (weights stored in fp16, AMP O2, as the reference), fp32 on CPU."""
    if precision != "auto":
        return precision
    return "fp16" if device in ("Ascend", "GPU") else "fp32"


JIT_ENV = "PANGU_JIT"


def jit_choice() -> bool:
    """Whether the UNets run as compiled graphs (`ms.jit`): on by default on every device. On CPU a
    pangu-mini image takes 2.4 s compiled against 10.5 s in PyNative (bench/mini_speed.py); the price is one
    compile per input shape (~4 s, paid by the first image of a size). `PANGU_JIT=0` turns it off."""
    return os.environ.get(JIT_ENV, "").strip().lower() not in ("0", "off", "false", "no")


def accelerator_options(device: str) -> dict:
    """Per-device network options the loader applies.

    jit: compile the UNet's construct with `ms.jit` (the reference decorates it); flash_attention: MindSpore's
    fused `ops.flash_attention_score` (Ascend kernels only) where MindONE used FlashAttention; offload_cache: where
    `--offload` keeps the idle UNet's weights (host RAM beside an accelerator; on CPU, RAM is what offload saves,
    so the weights are re-read from their file).
    """
    on_accelerator = device in ("Ascend", "GPU")
    flash = False
    jit = jit_choice()
    if device == "Ascend":
        from mindspore import ops

        flash = hasattr(ops, "flash_attention_score")
    return {"jit": jit, "flash_attention": flash, "offload_cache": "host" if on_accelerator else "disk"}
