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
    checks.append(_check("cpu threads", "ok", f"{os.cpu_count()} cores visible"))

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
