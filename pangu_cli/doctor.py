"""`pangu doctor`: what this machine can run, as a list of checks (name, status, detail)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _check(name: str, status: str, detail: str) -> dict:
    return {"name": name, "status": status, "detail": detail}


def run_checks() -> list[dict]:
    from pangu_cli import runtime

    checks = [_check("python", "ok", sys.version.split()[0])]
    isa, isa_source = runtime.configure_cpu_isa()
    try:
        import mindspore as ms

        checks.append(_check("mindspore", "ok", f"{ms.__version__} ({Path(ms.__file__).parent})"))
        plugins = Path(ms.__file__).parent / "lib" / "plugin"
        hardware = runtime.device_hardware()
        for device in ("Ascend", "GPU", "CPU"):
            plugin = device == "CPU" or any(p.name.lower().startswith(f"libmindspore_{device.lower()}")
                                            for p in plugins.glob("*"))
            if plugin and hardware[device]:
                checks.append(_check(f"device {device}", "ok", "plugin and driver present"))
            else:
                missing = "no MindSpore plugin" if not plugin else "no driver/device found"
                checks.append(_check(f"device {device}", "warn", f"unavailable ({missing})"))
    except ImportError as exc:
        checks.append(_check("mindspore", "fail", f"not importable: {exc}; pip install mindspore==2.10.0"))
    import numpy

    status = "ok" if numpy.__version__.startswith("1.") else "fail"
    checks.append(_check("numpy", status, numpy.__version__ + ("" if status == "ok" else " (MindSpore 2.10 needs numpy<2)")))
    checks.append(_check("cpu isa", "ok", f"{runtime.ISA_ENV}={isa or 'unset (native)'} from {isa_source}; "
                                          "override with PANGU_CPU_ISA=AVX512_CORE|AVX2|default"))
    checks.append(_check("cpu threads", "ok", f"{os.cpu_count()} cores visible; MindSpore runtime_num_threads = "
                                              f"{os.environ.get(runtime.THREADS_ENV) or runtime.cpu_cores()} on CPU; "
                                              f"override with {runtime.THREADS_ENV}=N"))
    checks.append(_cpu_kernels_check())
    jit = runtime.jit_choice()
    checks.append(_check("graph compile", "ok", f"UNets run {'compiled (ms.jit; one compile per image size)' if jit else 'in PyNative (slower)'}; "
                                                f"override with {runtime.JIT_ENV}=0|1"))

    from pangu_cli.models import registry

    specs = registry.list_models()
    if not specs:
        checks.append(_check("models", "warn", "none installed; pass --model FOLDER or see README"))
    for spec in specs:
        missing = spec.missing_files() if "checkpoints" in spec.manifest else ["model.json"]
        checks.append(_check(f"model {spec.name}", "fail" if missing else "ok",
                             f"missing {missing[0]}" if missing else f"{spec.source}: {spec.root}"))
    cwd = Path.cwd()
    writable = os.access(cwd, os.W_OK)
    checks.append(_check("output folder", "ok" if writable else "warn",
                         f"{cwd} is {'writable' if writable else 'not writable; use --out'}"))
    return checks


def _cpu_kernels_check() -> dict:
    """pangu's CPU kernels (GroupNorm+SiLU, oneDNN convolutions): built or not, and what serves a conv."""
    from pangu_cli.models import fast_ops

    library = fast_ops.prepare()
    override = f"override with {fast_ops.ENV_SWITCH}=0|1"
    if not library.ready:
        return _check("cpu kernels", "warn" if fast_ops.switch() != "off" else "ok",
                      f"{library.reason}; {override}")
    impl = fast_ops.conv_implementation("forward", (1, 64, 32, 32), (64, 64, 3, 3))
    kinds = fast_ops.enabled_kinds() or [k for k in fast_ops.KINDS if k in fast_ops._kinds_from_env()]
    return _check("cpu kernels", "ok", f"pangu fast kernels on CPU: {', '.join(kinds)} (conv via oneDNN {impl}); "
                                       f"{library.path}; {override} or a subset of kinds")

