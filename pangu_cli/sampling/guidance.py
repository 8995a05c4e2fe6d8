"""Classifier-free guidance with PanGu style branches (the reference's `PanGuVanillaCFG`).

All branches run in one batched network call, stacked along the batch axis in the order
[uc, c, style_1 … style_K]. The combination is

    D = D_u + s·(D_c − D_u) + Σ_k s_k·(D_k − D_c)

with s clamped to [0, 100] and the style scales s_k unclamped; style deltas are taken against the
conditional branch, not the unconditional one.

Branches whose coefficient vanishes are not evaluated at all:
- a style with s_k = 0 (the reference never builds it either);
- the unconditional branch when s = 1, where the formula is exactly D_c + Σ_k s_k·(D_k − D_c).
The conditional branch is always evaluated. `Guidance.branches` says which conditionings to stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

MAX_SCALE = 100.0


@dataclass(frozen=True)
class Guidance:
    """Guidance scale s and one scale per style branch (in the order the style conditionings are given)."""

    scale: float
    style_scales: tuple[float, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "style_scales", tuple(float(s) for s in self.style_scales))
        if not all(math.isfinite(s) for s in (self.scale, *self.style_scales)):
            raise ValueError(f"guidance scales must be finite, got {self.scale}, {self.style_scales}")

    @property
    def effective_scale(self) -> float:
        return min(max(float(self.scale), 0.0), MAX_SCALE)

    @property
    def uses_uncond(self) -> bool:
        return self.effective_scale != 1.0

    @property
    def active_styles(self) -> tuple[int, ...]:
        """Indices into `style_scales` of the styles that are evaluated (non-zero scale)."""
        return tuple(k for k, s in enumerate(self.style_scales) if s != 0.0)

    @property
    def n_branches(self) -> int:
        return int(self.uses_uncond) + 1 + len(self.active_styles)

    def branches(self, uc: Any, c: Any, styles: Sequence[Any] = ()) -> list[Any]:
        """The conditionings to evaluate, in batch order; `styles` pairs with `style_scales`."""
        if len(styles) != len(self.style_scales):
            raise ValueError(f"{len(styles)} style conditionings for {len(self.style_scales)} style scales")
        return ([uc] if self.uses_uncond else []) + [c] + [styles[k] for k in self.active_styles]

    def combine(self, outputs: np.ndarray) -> np.ndarray:
        """Combine the stacked (n_branches·B, …) denoiser outputs into the guided (B, …) estimate."""
        n = self.n_branches
        if outputs.shape[0] % n:
            raise ValueError(f"batch {outputs.shape[0]} is not a multiple of the {n} guidance branches")
        chunks = np.split(outputs, n, axis=0)
        if self.uses_uncond:
            d_u, d_c, d_styles = chunks[0], chunks[1], chunks[2:]
            guided = d_u + self.effective_scale * (d_c - d_u)
        else:
            d_c, d_styles = chunks[0], chunks[1:]
            guided = d_c
        for k, d_k in zip(self.active_styles, d_styles):
            guided = guided + self.style_scales[k] * (d_k - d_c)
        return guided


def stack_conds(branches: Sequence[Any]) -> Any:
    """Concatenate per-branch conditionings along axis 0: arrays, or dicts of arrays with the same keys
    (nested dicts allowed). `None` entries must be all `None` and stay `None`."""
    first = branches[0]
    if first is None:
        if any(b is not None for b in branches):
            raise ValueError("some branches have a conditioning and some do not")
        return None
    if isinstance(first, dict):
        keys = first.keys()
        if any(not isinstance(b, dict) or b.keys() != keys for b in branches):
            raise ValueError("branch conditionings have different keys")
        return {k: stack_conds([b[k] for b in branches]) for k in keys}
    return np.concatenate([np.asarray(b) for b in branches], axis=0)
