"""A Cell's parameters by checkpoint name, filled one tensor at a time in the dtype each is stored in."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from pangu_cli.models.checkpoint import check_keys
from pangu_cli.models.checkpoint_index import TensorRef, read_tensors


_NORMS: tuple = ()


def _norm_types() -> tuple:
    global _NORMS
    if not _NORMS:
        from mindspore import nn

        _NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    return _NORMS


def _norm_params(cell) -> set[str]:
    names = set()
    for path, sub in cell.cells_and_names():
        if isinstance(sub, _norm_types()):
            names.update(f"{path}.{name}" if path else name for name, _ in sub.parameters_and_names())
    return names


class ParamTable:
    """A Cell's parameters by checkpoint name, with the dtype each is stored in: `half` for float weights when
    given, fp32 for norms (as the reference's O2)."""

    def __init__(self, cell, half=None):
        import mindspore as ms

        self.params = dict(cell.parameters_and_names())
        keep = _norm_params(cell) if half is not None else set()
        self.filled = False  # set after the first complete fill
        self.dtypes = {}
        for name, param in self.params.items():
            floating = param.dtype in (ms.float32, ms.float16, ms.bfloat16, ms.float64)
            self.dtypes[name] = half if (half is not None and floating and name not in keep) else param.dtype

    def shapes(self) -> dict[str, tuple]:
        return {name: tuple(param.shape) for name, param in self.params.items()}

    def fill(self, arrays: Iterable[tuple[str, np.ndarray]], keep: dict | None = None) -> None:
        """Set every parameter from (name, array) pairs; `keep` collects host copies in the stored dtype."""
        import mindspore as ms

        first = not self.filled
        for name, array in arrays:
            param, dtype = self.params[name], self.dtypes[name]
            tensor = ms.Tensor(array, dtype=dtype)
            if first:
                if param.dtype != dtype:
                    param.set_dtype(dtype)
                param.set_data(tensor)
            else:
                # A refill (offload swap) writes in place: a compiled graph (ms.jit) keeps using the storage it
                # was compiled with and would not see a replaced tensor; in place also reuses device memory.
                param.copy_(tensor)
            if keep is not None:
                keep[name] = array.astype(np.float16, copy=False) if dtype == ms.float16 else array
        self.filled = True


def load_checked(cell, refs: dict[str, TensorRef], what: str, half=None) -> ParamTable:
    """Check `refs` against `cell` (names and shapes, strictly), then fill it one tensor at a time."""
    table = ParamTable(cell, half)
    check_keys(table.shapes(), refs, what)
    table.fill(read_tensors(refs))
    return table
