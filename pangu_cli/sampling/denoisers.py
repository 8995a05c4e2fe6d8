"""Denoisers: callables `(x, sigma) -> x0 estimate` built around networks.

- `DiscreteEpsDenoiser` turns an ε-prediction network indexed by integer timesteps into an x0 estimator
  (the reference's `DiscreteDenoiser` with `EpsScaling`); it takes the conditioning as a third argument.
- `GuidedDenoiser` binds the stacked conditioning and a `Guidance`: one network call per evaluation.
- `ExpertDenoiser` picks which network answers at a given sigma (PanGu's time-decoupled structure/texture
  split, or any number of experts along the noise axis) and logs who answered.

Networks and conditioning are opaque here: an ε model is any callable
`eps_model(x_in (N, C, H, W) float32, t (N,) int32, cond) -> eps`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from pangu_cli.sampling.guidance import Guidance, stack_conds
from pangu_cli.sampling.schedules import sigma_table as default_sigma_table
from pangu_cli.sampling.schedules import sigma_to_t

EpsModel = Callable[[np.ndarray, np.ndarray, Any], np.ndarray]


PREDICTIONS = ("eps", "v")


class DiscreteEpsDenoiser:
    """D(x, σ) = x − σ·ε̂(x / sqrt(σ² + 1), t(σ)) for a network trained on discrete timesteps.

    As in the reference, σ is first snapped to the nearest table entry (`sigma_to_t`), and that entry is
    used for c_out = −σ and c_in = 1/sqrt(σ² + 1); the network gets the integer timestep t as int32.
    With `prediction="v"` the network predicts v = sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x0 (SD 2's v-objective, which
    keeps the large-noise steps informative), and D(x, σ) = c_in²·x − σ·c_in·v̂.
    """

    def __init__(self, eps_model: EpsModel, sigma_table: np.ndarray | None = None, prediction: str = "eps"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, not {prediction!r}")
        self.eps_model = eps_model
        self.prediction = prediction
        self.sigma_table = default_sigma_table() if sigma_table is None else np.asarray(sigma_table, np.float32)

    def __call__(self, x: np.ndarray, sigma: float, cond: Any = None) -> np.ndarray:
        t = sigma_to_t(sigma, self.sigma_table)
        sigma_q = self.sigma_table[t]
        c_in = np.float32(1.0) / np.sqrt(sigma_q * sigma_q + np.float32(1.0))
        timesteps = np.full((x.shape[0],), t, dtype=np.int32)
        out = np.asarray(self.eps_model(x * c_in, timesteps, cond), dtype=np.float32)
        if self.prediction == "v":
            return (c_in * c_in) * x - (sigma_q * c_in) * out
        return x + (-sigma_q) * out


class GuidedDenoiser:
    """Evaluates all guidance branches in one batched call of `network_denoiser(x, sigma, cond)`.

    `cond` must already be stacked in branch order with batch n_branches·B (see `Guidance.branches`
    and `stack_conds`, or build it with `from_branches`); only x is tiled here.
    """

    def __init__(self, network_denoiser: Callable[..., np.ndarray], cond: Any, guidance: Guidance):
        self.network_denoiser = network_denoiser
        self.cond = cond
        self.guidance = guidance

    @classmethod
    def from_branches(cls, network_denoiser, guidance: Guidance, uc: Any, c: Any, styles: Sequence[Any] = ()):
        """Stack per-branch conditionings (arrays or dicts of arrays) and bind them."""
        return cls(network_denoiser, stack_conds(guidance.branches(uc, c, styles)), guidance)

    def __call__(self, x: np.ndarray, sigma: float) -> np.ndarray:
        n = self.guidance.n_branches
        x_in = np.concatenate([x] * n, axis=0) if n > 1 else x
        out = self.network_denoiser(x_in, sigma, self.cond)
        if out.shape[0] != x_in.shape[0]:
            raise ValueError(f"network returned batch {out.shape[0]} for input batch {x_in.shape[0]}")
        return self.guidance.combine(out)


@dataclass(frozen=True)
class SwitchPlan:
    """Which expert answers at which sigma.

    `thresholds` are descending sigma boundaries, one fewer than there are experts: expert k answers when
    thresholds[k] ≤ σ < thresholds[k−1], i.e. its index is the number of thresholds above σ.
    `steps` is the expert index of each step of the schedule the plan was built from (informational).
    """

    thresholds: tuple[float, ...] = ()
    steps: tuple[int, ...] = ()

    def __post_init__(self):
        th = tuple(float(v) for v in self.thresholds)
        if any(a < b for a, b in zip(th, th[1:])):
            raise ValueError(f"switch thresholds must be descending, got {th}")
        object.__setattr__(self, "thresholds", th)
        object.__setattr__(self, "steps", tuple(int(s) for s in self.steps))

    @property
    def n_experts(self) -> int:
        return len(self.thresholds) + 1

    def expert_for(self, sigma: float) -> int:
        return sum(1 for th in self.thresholds if sigma < th)

    def steps_per_expert(self) -> tuple[int, ...]:
        return tuple(self.steps.count(k) for k in range(self.n_experts))


def switch_plan(
    timesteps_or_sigmas: Sequence[float] | np.ndarray,
    switch_t: int | Sequence[int] = 500,
    lag: bool = True,
    table: np.ndarray | None = None,
) -> SwitchPlan:
    """Plan the hand-over between experts along a schedule.

    `timesteps_or_sigmas`: integer training timesteps (descending) or the sampler's float sigmas (a trailing
    0 is ignored; sigmas are mapped to timesteps with `sigma_to_t`). `switch_t`: one timestep per boundary,
    descending; expert k runs the steps whose reference timestep r satisfies switch_t[k−1] > r ≥ switch_t[k].

    With `lag=True` r is the PREVIOUS step's timestep and step 0 always goes to expert 0: the reference's
    `step_idx` rule (at 40 steps: 21 structure + 19 texture steps). With `lag=False` r is the step's own
    timestep (40 steps: 20 + 20), the rule the reference intends.
    """
    table = default_sigma_table() if table is None else np.asarray(table)
    values = np.asarray(timesteps_or_sigmas)
    if np.issubdtype(values.dtype, np.integer):
        timesteps = values.astype(int)
        sigmas = table[timesteps].astype(np.float64)
    else:
        sigmas = values.astype(np.float64)
        sigmas = sigmas[sigmas > 0]
        timesteps = np.atleast_1d(sigma_to_t(sigmas, table))
    if np.any(np.diff(sigmas) > 0):
        raise ValueError("the schedule must be descending")
    bounds = [int(switch_t)] if np.ndim(switch_t) == 0 else [int(s) for s in switch_t]
    if any(a < b for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"switch timesteps must be descending, got {bounds}")

    steps = []
    for i, t in enumerate(timesteps):
        if lag:
            reference_t = math.inf if i == 0 else timesteps[i - 1]
        else:
            reference_t = t
        steps.append(sum(1 for b in bounds if reference_t < b))

    thresholds = []
    for k in range(len(bounds)):
        lower_sigmas = sigmas[[s <= k for s in steps]]  # steps of experts 0..k (the noisier side)
        upper_sigmas = sigmas[[s > k for s in steps]]
        if len(lower_sigmas) == 0:
            thresholds.append(math.inf)
        elif len(upper_sigmas) == 0:
            thresholds.append(0.0)
        else:
            # Geometric midpoint: routing by sigma is then immune to float rounding at the schedule's sigmas.
            thresholds.append(math.sqrt(float(lower_sigmas.min()) * float(upper_sigmas.max())))
    return SwitchPlan(tuple(thresholds), tuple(steps))


@dataclass
class ExpertDenoiser:
    """Routes each call to the expert the plan assigns to its sigma; `calls` logs (sigma, name) per call.

    Experts are `(name, denoiser)` pairs ordered from the noisiest range to the cleanest (structure first);
    extra positional/keyword arguments (e.g. the conditioning) are passed through, so an ExpertDenoiser can
    sit under a `GuidedDenoiser` (one guidance for all experts) or over several of them.
    """

    experts: Sequence[tuple[str, Callable[..., np.ndarray]]]
    plan: SwitchPlan = field(default_factory=SwitchPlan)
    calls: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self):
        self.experts = list(self.experts)
        if len(self.experts) != self.plan.n_experts:
            raise ValueError(f"{len(self.experts)} experts for a plan with {self.plan.n_experts}")

    def __call__(self, x: np.ndarray, sigma: float, *args, **kwargs) -> np.ndarray:
        name, denoiser = self.experts[self.plan.expert_for(sigma)]
        self.calls.append((float(sigma), name))
        return denoiser(x, sigma, *args, **kwargs)
