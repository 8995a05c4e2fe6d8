"""Faster CPU kernels for the operations where MindSpore 2.10's CPU backend loses most time.

MindSpore's CPU convolutions hand oneDNN plain NCHW tensors (reference fallback on AVX-512,
im2col+gemm under an AVX2 cap), its GroupNorm and LayerNorm gradients, softmax gradient and bias
gradients reduce far below memory speed, and its MatMul runs the UNet's small projections at a sixth
of sgemm's speed. The C++ kernels in `pangu_cli/assets/kernels/fast_ops.cc` replace them: convolutions
and sgemm through MindSpore's own oneDNN library (blocked layouts), fused GroupNorm(+SiLU), LayerNorm,
softmax, GEGLU and multi-head attention. MindSpore calls them through `ops.Custom(func_type="aot")`,
forward and backward (each forward kernel's `bprop` is its gradient kernel). bench/PERF.md has the numbers.

The library is compiled once per machine at first use (g++ with OpenMP, ~10-20 s) into the user cache
(`$PANGU_KERNEL_CACHE`, else `$XDG_CACHE_HOME/pangu/kernels`, else `~/.cache/pangu/kernels`). Without
a compiler, or with `PANGU_FAST_KERNELS=0`, the networks use MindSpore's plain operations, which give
the same results. The kernels are CPU-only: on Ascend/GPU MindSpore's kernels are always used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "assets" / "kernels" / "fast_ops.cc"
ENV_SWITCH = "PANGU_FAST_KERNELS"  # auto (default) | 0/off | 1/on | comma-separated kinds, e.g. conv,group_norm
ENV_CACHE = "PANGU_KERNEL_CACHE"
_OFF = ("0", "off", "false", "no", "plain")
_ON = ("1", "on", "true", "yes")
# -ffast-math for vectorised reductions and exp; NaN/inf must still propagate like the plain ops.
CXXFLAGS = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-fopenmp", "-shared", "-fPIC",
            "-std=c++17"]
BUILD_TIMEOUT_S = 300
# What each kernel replaces; a cell asks `enabled(kind)` when it is built.
KINDS = ("conv", "group_norm", "layer_norm", "attention", "softmax", "geglu", "dense", "silu")


@dataclass
class KernelLibrary:
    """Whether the fast kernels can be used in this process, and why (shown by `pangu doctor`)."""

    ready: bool
    reason: str
    path: Path | None = None


_library: KernelLibrary | None = None
_enabled: frozenset[str] = frozenset()
_configured: frozenset[str] = frozenset(KINDS)  # what `configure` chose; set_enabled(True) returns to it


def switch() -> str:
    """The user's choice: 'auto', 'off', 'on' or 'some' (a list of kinds), from PANGU_FAST_KERNELS."""
    value = os.environ.get(ENV_SWITCH, "auto").strip().lower()
    if value in _OFF:
        return "off"
    if value in _ON:
        return "on"
    return "auto" if value in ("", "auto") else "some"


def requested_kinds() -> frozenset[str]:
    """The kinds PANGU_FAST_KERNELS asks for (all unless it names some; none when off)."""
    return frozenset() if switch() == "off" else _kinds_from_env()


def _kinds_from_env() -> frozenset[str]:
    value = os.environ.get(ENV_SWITCH, "").strip().lower()
    chosen = frozenset(k.strip() for k in value.split(",") if k.strip())
    if chosen and chosen <= set(KINDS):
        return chosen
    if chosen and value not in _OFF + _ON + ("auto",):
        from pangu_cli.errors import UsageError

        raise UsageError(f"{ENV_SWITCH}={value!r} is not understood",
                         f"use auto, 0, 1 or a comma-separated subset of {', '.join(KINDS)}")
    return frozenset(KINDS)


def cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pangu" / "kernels"


def mindspore_lib_dir() -> Path | None:
    """MindSpore's shared-library folder (holds libdnnl.so.3), found without importing MindSpore."""
    spec = importlib.util.find_spec("mindspore")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    return lib if (lib / "libdnnl.so.3").exists() else None


def _cpu_signature() -> str:
    # -march=native binaries are only valid on the CPU they were built on: key the cache by it.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_library(compiler: str | None = None, cache: Path | None = None) -> Path:
    """Compile the kernel library if no cached build matches; return its path. Raises RuntimeError."""
    if platform.system() != "Linux":
        raise RuntimeError(f"fast kernels are built for Linux only (this is {platform.system()})")
    compiler = compiler or os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise RuntimeError("no C++ compiler (g++) found")
    lib_dir = mindspore_lib_dir()
    if lib_dir is None:
        raise RuntimeError("MindSpore's libdnnl.so.3 was not found")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(CXXFLAGS).encode(), compiler.encode(),
                                     str(lib_dir).encode(), _cpu_signature().encode()])).hexdigest()[:16]
    cache = cache or cache_dir()
    target = cache / f"pangu_fast_ops-{key}.so"
    if target.exists():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
        return _compile(compiler, lib_dir, cache, target)
    except OSError as exc:
        raise RuntimeError(f"cannot build the fast kernels in {cache}: {exc}") from exc


def _compile(compiler: str, lib_dir: Path, cache: Path, target: Path) -> Path:
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        built = Path(tmp) / target.name
        cmd = [compiler, *CXXFLAGS, "-o", str(built), str(SOURCE), f"-L{lib_dir}", "-l:libdnnl.so.3",
               f"-Wl,-rpath,{lib_dir}"]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"compiling the fast kernels failed: {exc}") from exc
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["(no output)"])[0]
            raise RuntimeError(f"compiling the fast kernels failed: {first}")
        os.replace(built, target)  # atomic: concurrent first uses never see a half-written library
    return target


def prepare() -> KernelLibrary:
    """Find or build the kernel library once per process (no MindSpore import). Honours PANGU_FAST_KERNELS."""
    global _library
    if _library is None:
        choice = switch()
        if choice == "off":
            _library = KernelLibrary(False, f"off ({ENV_SWITCH}=0): MindSpore's plain kernels")
        else:
            try:
                path = build_library()
                _library = KernelLibrary(True, f"built at {path}", path)
            except RuntimeError as exc:
                _library = KernelLibrary(False, f"unavailable ({exc}); using MindSpore's plain kernels")
                if choice == "on":
                    from pangu_cli.errors import DeviceError

                    raise DeviceError(f"{ENV_SWITCH}=1 but {exc}",
                                      "install g++ or unset PANGU_FAST_KERNELS") from exc
    return _library


def configure(device: str) -> KernelLibrary:
    """Decide once, at runtime setup, whether networks built afterwards use the fast kernels."""
    global _enabled, _configured
    library = prepare()
    _enabled = _kinds_from_env() if library.ready and device == "CPU" else frozenset()
    _configured = _enabled
    if library.ready and device != "CPU":
        return KernelLibrary(False, f"not used on {device} (MindSpore's device kernels)", library.path)
    return library


def enabled(kind: str | None = None) -> bool:
    """Whether cells built now use the fast kernel of `kind` (any kind if None); set by `runtime.setup`."""
    return kind in _enabled if kind else bool(_enabled)


def enabled_kinds() -> tuple[str, ...]:
    return tuple(k for k in KINDS if k in _enabled)


@contextmanager
def kernels(value: bool | str | tuple[str, ...]) -> Iterator[None]:
    """Build cells inside the block with the given kernels (see set_enabled); restores the previous set."""
    global _enabled
    previous = _enabled
    set_enabled(value)
    try:
        yield
    finally:
        _enabled = previous


def set_enabled(value: bool | str | tuple[str, ...]) -> None:
    """Switch kernels for cells built from now on: True (as configured at setup), False, or kinds."""
    global _enabled
    kinds = frozenset(_configured if value is True else () if value is False else
                      (value,) if isinstance(value, str) else value)
    if kinds - set(KINDS):
        raise ValueError(f"unknown kernel kind(s) {sorted(kinds - set(KINDS))}; known: {KINDS}")
    if kinds and not prepare().ready:
        raise RuntimeError(f"fast kernels are {prepare().reason}")
    _enabled = kinds


# --------------------------------------------------------------------------------------------------
# MindSpore primitives. Built lazily (MindSpore is imported only here) and shared between cells.

_primitives: dict = {}


def _func(name: str) -> str:
    return f"{prepare().path}:{name}"


def group_norm_primitive(groups: int, silu: bool):
    """`op(x, gamma, beta, eps[1]) -> (y, mean, rstd)`: GroupNorm (then SiLU if `silu`), with its gradient."""
    key = ("group_norm", groups, silu)
    if key not in _primitives:
        from mindspore import ops

        suffix = "SiLU" if silu else ""
        backward = ops.Custom(_func(f"GroupNorm{suffix}Backward"), func_type="aot",
                              out_shape=lambda dy, x, g, b, m, r: (x, g, g),
                              out_dtype=lambda dy, x, g, b, m, r: (x, g, g))

        def bprop(x, gamma, beta, eps, out, dout):
            dx, dgamma, dbeta = backward(dout[0], x, gamma, beta, out[1], out[2])
            return dx, dgamma, dbeta, ops.zeros_like(eps)

        forward = ops.Custom(_func(f"GroupNorm{suffix}Forward"), func_type="aot", bprop=bprop,
                             out_shape=lambda x, g, b, e: (x, (x[0], groups), (x[0], groups)),
                             out_dtype=lambda x, g, b, e: (x, x, x))
        forward.add_prim_attr("pangu_groups", groups)  # see conv2d_primitive: one inference per config
        _primitives[key] = forward
    return _primitives[key]


def conv2d_primitive(stride: tuple[int, int], padding: tuple[int, int, int, int]):
    """`op(x, weight, bias, cfg) -> y`: a biased 2-D convolution (NCHW, OIHW), with its gradients.

    `cfg` is the int32 tensor `conv2d_config(stride, padding)`; padding is (top, bottom, left, right).
    """
    key = ("conv2d", stride, padding)
    if key not in _primitives:
        from mindspore import ops

        sh, sw = stride
        top, bottom, left, right = padding
        backward_data = ops.Custom(_func("Conv2dBackwardData"), func_type="aot",
                                   out_shape=lambda dy, w, x, c: x, out_dtype=lambda dy, w, x, c: x)
        backward_weights = ops.Custom(_func("Conv2dBackwardWeights"), func_type="aot",
                                      out_shape=lambda dy, x, w, c: (w, (w[0],)),
                                      out_dtype=lambda dy, x, w, c: (w, w))

        def bprop(x, weight, bias, cfg, out, dout):
            dx = backward_data(dout, weight, x, cfg)
            dweight, dbias = backward_weights(dout, x, weight, cfg)
            return dx, dweight, dbias, ops.zeros_like(cfg)

        def out_shape(x, w, b, c):
            return (x[0], w[0], (x[2] + top + bottom - w[2]) // sh + 1, (x[3] + left + right - w[3]) // sw + 1)

        forward = ops.Custom(_func("Conv2dForward"), func_type="aot", bprop=bprop,
                             out_shape=out_shape, out_dtype=lambda x, w, b, c: x)
        # MindSpore treats primitives with equal names and attributes as one (shared shape inference);
        # the geometry attribute keeps each stride/padding its own output shape.
        forward.add_prim_attr("pangu_geometry", f"stride={stride} padding={padding}")
        _primitives[key] = forward
    return _primitives[key]


def _shape_preserving_primitive(kernel: str, backward_reads_output: bool):
    """A one-input kernel `op(x) -> y` (y shaped like x) whose gradient kernel takes (dy, x) or (dy, y)."""
    if kernel not in _primitives:
        from mindspore import ops

        backward = ops.Custom(_func(f"{kernel}Backward"), func_type="aot",
                              out_shape=lambda dy, saved: saved, out_dtype=lambda dy, saved: saved)

        def bprop(x, out, dout):
            return (backward(dout, out if backward_reads_output else x),)

        _primitives[kernel] = ops.Custom(_func(f"{kernel}Forward"), func_type="aot", bprop=bprop,
                                         out_shape=lambda x: x, out_dtype=lambda x: x)
    return _primitives[kernel]


def silu_primitive():
    """`op(x) -> x * sigmoid(x)` with its gradient (one pass each way)."""
    return _shape_preserving_primitive("Silu", backward_reads_output=False)


def softmax_primitive():
    """`op(x) -> softmax(x, axis=-1)` with its gradient."""
    return _shape_preserving_primitive("Softmax", backward_reads_output=True)


def layer_norm_primitive():
    """`op(x, gamma, beta, eps[1]) -> (y, mean, rstd)`: LayerNorm over the last axis, with its gradient."""
    if "layer_norm" not in _primitives:
        from mindspore import ops

        backward = ops.Custom(_func("LayerNormBackward"), func_type="aot",
                              out_shape=lambda dy, x, g, m, r: (x, g, g),
                              out_dtype=lambda dy, x, g, m, r: (x, g, g))

        def bprop(x, gamma, beta, eps, out, dout):
            dx, dgamma, dbeta = backward(dout[0], x, gamma, out[1], out[2])
            return dx, dgamma, dbeta, ops.zeros_like(eps)

        _primitives["layer_norm"] = ops.Custom(_func("LayerNormForward"), func_type="aot", bprop=bprop,
                                               out_shape=lambda x, g, b, e: (x, x[:-1], x[:-1]),
                                               out_dtype=lambda x, g, b, e: (x, x, x))
    return _primitives["layer_norm"]


def geglu_primitive():
    """`op(h) -> h[..., :d] * gelu(h[..., d:])` (exact GELU, d = last dim / 2), with its gradient."""
    if "geglu" not in _primitives:
        from mindspore import ops

        backward = ops.Custom(_func("GegluBackward"), func_type="aot",
                              out_shape=lambda dy, h: h, out_dtype=lambda dy, h: h)

        def bprop(h, out, dout):
            return (backward(dout, h),)

        _primitives["geglu"] = ops.Custom(_func("GegluForward"), func_type="aot", bprop=bprop,
                                          out_shape=lambda h: (*h[:-1], h[-1] // 2), out_dtype=lambda h: h)
    return _primitives["geglu"]


def dense_primitive():
    """`op(x, weight, bias) -> x @ weight.T + bias` over the last axis of x, with its gradients (sgemm)."""
    if "dense" not in _primitives:
        from mindspore import ops

        backward = ops.Custom(_func("DenseBackward"), func_type="aot",
                              out_shape=lambda dy, x, w: (x, w, (w[0],)),
                              out_dtype=lambda dy, x, w: (x, w, w))

        def bprop(x, weight, bias, out, dout):
            return backward(dout, x, weight)

        _primitives["dense"] = ops.Custom(_func("DenseForward"), func_type="aot", bprop=bprop,
                                          out_shape=lambda x, w, b: (*x[:-1], w[0]),
                                          out_dtype=lambda x, w, b: x)
    return _primitives["dense"]


def attention_primitive(heads: int):
    """`op(q, k, v, cfg) -> (out, probs)`: softmax(q k^T * scale) v over `heads` heads of (B, N, C) tensors.

    cfg is `attention_config(heads, scale)`. Gradients for q, k and v; the probabilities are kept for them.
    """
    key = ("attention", heads)
    if key not in _primitives:
        from mindspore import ops

        backward = ops.Custom(_func("AttentionBackward"), func_type="aot",
                              out_shape=lambda do, q, k, v, p, c: (q, k, v),
                              out_dtype=lambda do, q, k, v, p, c: (q, k, v))

        def bprop(q, k, v, cfg, out, dout):
            dq, dk, dv = backward(dout[0], q, k, v, out[1], cfg)
            return dq, dk, dv, ops.zeros_like(cfg)

        forward = ops.Custom(_func("AttentionForward"), func_type="aot", bprop=bprop,
                             out_shape=lambda q, k, v, c: (q, (q[0], heads, q[1], k[1])),
                             out_dtype=lambda q, k, v, c: (q, q))
        forward.add_prim_attr("pangu_heads", heads)  # see conv2d_primitive: one inference per config
        _primitives[key] = forward
    return _primitives[key]


def attention_config(heads: int, scale: float):
    import mindspore as ms
    import numpy as np

    return ms.Tensor(np.array([heads, scale], dtype=np.float32))


def conv2d_config(stride: tuple[int, int], padding: tuple[int, int, int, int]):
    import mindspore as ms
    import numpy as np

    return ms.Tensor(np.array([*stride, *padding], dtype=np.int32))


def conv_implementation(kind: str, x_shape, w_shape, stride=(1, 1), padding=(1, 1, 1, 1)) -> str:
    """The oneDNN implementation that serves a convolution here, e.g. 'jit:avx512_core' (diagnostics).

    kind: 'forward', 'backward_data' or 'backward_weights'. Loads the library into this process.
    """
    import ctypes

    lib = ctypes.CDLL(str(prepare().path))
    n, c, h, w = x_shape
    o, _, kh, kw = w_shape
    oh = (h + padding[0] + padding[1] - kh) // stride[0] + 1
    ow = (w + padding[2] + padding[3] - kw) // stride[1] + 1
    dims = ctypes.c_int64 * 4
    out = ctypes.create_string_buffer(256)
    status = lib.PanguConvImpl(("forward", "backward_data", "backward_weights").index(kind), dims(n, c, h, w),
                               dims(o, c, kh, kw), dims(n, o, oh, ow), (ctypes.c_int32 * 6)(*stride, *padding),
                               out, 256)
    return out.value.decode() if status == 0 else "unavailable"
