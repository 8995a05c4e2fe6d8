"""Checkpoint I/O in the reference naming: MindSpore `.ckpt` and `.safetensors`.

A state is a plain `dict[str, numpy.ndarray]`. Loading into a Cell is strict: any missing key,
unexpected key or shape mismatch is an error that names the first offenders, never a warning.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from pangu_cli.errors import CheckpointError, ModelError

FORMATS = (".ckpt", ".safetensors")
_SHOW = 5  # offenders named per category in an error message


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ModelError(f"unsupported checkpoint format '{path.name}'",
                         "use a MindSpore .ckpt or a .safetensors file")
    return suffix


def load_state(path: str | os.PathLike, prefix: str = "") -> dict[str, np.ndarray]:
    """Read a checkpoint into numpy arrays; with `prefix`, keep only those keys, prefix removed."""
    path = Path(path)
    fmt = _format_of(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}", "check the path, or run `pangu models`")
    if path.stat().st_size == 0:  # MindSpore would blame its filter arguments
        raise ModelError(f"cannot read checkpoint {path.name}: the file is empty",
                         "the file is corrupt or truncated; copy it again")
    try:
        if fmt == ".safetensors":
            from safetensors.numpy import load_file

            state = load_file(str(path))
        else:
            state = _load_ckpt(path)
    except ModelError:
        raise
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise ModelError(f"cannot read checkpoint {path.name}: {reason}",
                         "the file is corrupt or truncated; copy it again") from exc
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _load_ckpt(path: Path) -> dict[str, np.ndarray]:
    import mindspore as ms

    params = ms.load_checkpoint(str(path))
    state = {}
    for name, param in params.items():
        if param.dtype == ms.bfloat16:  # numpy has no bfloat16
            param = param.astype(ms.float32)
        state[name] = param.asnumpy()
    return state


def save_state(state: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write a state atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    fmt = _format_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=fmt, dir=path.parent)
    os.close(fd)
    try:
        if fmt == ".safetensors":
            from safetensors.numpy import save_file

            save_file({k: _contiguous(v) for k, v in state.items()}, tmp)
        else:
            import mindspore as ms

            ms.save_checkpoint([{"name": k, "data": ms.Tensor(_contiguous(v))}
                                for k, v in state.items()], tmp)
        os.replace(tmp, path)
    except BaseException:
        # MindSpore writes a .ckpt through its own sidecar (the name with suffix .tmp), left on failure.
        for leftover in (Path(tmp), Path(tmp).with_suffix(".tmp")):
            leftover.unlink(missing_ok=True)
        raise
    return path


def cell_state(cell, prefix: str = "") -> dict[str, np.ndarray]:
    """The parameters of a Cell as numpy arrays, named by attribute path (plus `prefix`)."""
    return {prefix + name: param.asnumpy() for name, param in cell.parameters_and_names()}


def check_keys(expected: dict[str, tuple], state: dict[str, np.ndarray], what: str = "network") -> None:
    """Raise CheckpointError unless `state` has exactly the keys and shapes in `expected`."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state)
                        if tuple(state[k].shape) != tuple(expected[k]))
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:_SHOW])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:_SHOW])})")
    if mismatched:
        shown = ", ".join(f"{k} {tuple(state[k].shape)} != {tuple(expected[k])}" for k in mismatched[:_SHOW])
        parts.append(f"{len(mismatched)} with wrong shape ({shown})")
    raise CheckpointError(f"checkpoint does not match the {what}: " + "; ".join(parts),
                          "check that the file belongs to this model and config")


def load_into(cell, state: dict[str, np.ndarray], prefix: str = "", what: str | None = None) -> None:
    """Copy `state` (keys under `prefix`) into `cell`, strictly: every parameter, nothing extra."""
    import mindspore as ms

    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    params = dict(cell.parameters_and_names())
    check_keys({k: tuple(p.shape) for k, p in params.items()}, state,
               what or f"{type(cell).__name__}" + (f" (prefix '{prefix}')" if prefix else ""))
    for name, param in params.items():
        param.set_data(ms.Tensor(np.asarray(state[name]), dtype=param.dtype))


def _contiguous(array: np.ndarray) -> np.ndarray:
    # np.ascontiguousarray turns 0-d arrays (e.g. CLIP's logit_scale) into shape (1,); keep the shape.
    return np.array(array, order="C", copy=True)
