"""Coop-Diffusion: several denoisers, each in its own latent space and resolution, in ONE sampling pass.

Pure numpy (paper notes §3, `research/paper.md`). A `Member` is a denoiser `(x, sigma) -> x0` in its own
latent space (a `Codec` to and from pixels) at its own latent size, active over a half-open sigma range.

    members = [Member("structure", d_low, (64, 64), sigma_min=s_k),
               Member("texture", d_high, (128, 128), sigma_max=s_k)]
    latent, plan = sample_coop(members, sigmas, seed)

Conventions (the choices this module makes):
- Ranges are half-open, `sigma_min <= sigma < sigma_max`, so ranges with one member's sigma_min equal to
  the next one's sigma_max tile the axis with no overlap and no gap. `sigma_between` gives a boundary.
- The *lead* of a step is its first active member in list order; the trajectory lives in the lead's
  latent space at the lead's latent size. List the primary model first.
- Spaces: members whose codecs have equal `space` keys (or both no codec) share a latent space. When the
  lead's space or size changes, the previous step's clean estimate x̂0 is bridged into the new space and
  re-noised with fresh i.i.d. noise at the current sigma: x = bridge(x̂0) + σ·z. The noisy x is never
  resized: that would correlate the noise (§3.4).
- Fusion (mode "fuse"): x̂0 = Σ w_i·x̂0_i / Σ w_i in the lead's space. A member in the lead's space and size
  gets x itself; any other gets bridge(x̂0_lead) + σ·n, with n the lead's noise estimate
  ε̂ = (x − x̂0_lead)/σ when its latent has the lead's shape (§3.3 step 3) and fresh i.i.d. noise otherwise.
- Multistep samplers (DPM++ 2M) restart their history wherever the trajectory changes space or size
  (their history is in the old space); a change of member within one space keeps it.
- Fresh noise is `np.random.default_rng([seed, step, stream])`: deterministic and independent per use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Protocol, Sequence

import numpy as np

from pangu_cli.errors import UsageError
from pangu_cli.sampling.samplers import SAMPLERS, Callback, Denoiser, initial_noise

MODES = ("switch", "fuse")
HANDOVER_STREAM = 0  # fresh-noise stream of the re-noising at a change of space; member k uses 1 + k


class Codec(Protocol):
    """Maps pixels (B, 3, H, W) float32 in [-1, 1] to a latent (B, channels, H/factor, W/factor) and back.

    `encode` must be deterministic (a VAE returns its posterior MEAN times its scale factor, never a
    sample), so bridging keeps a run reproducible. An optional `space` attribute (hashable) names the
    latent space: codecs with equal `space` are interchangeable; without it a codec object is its own space.
    """

    factor: int
    channels: int

    def encode(self, pixels: np.ndarray) -> np.ndarray: ...

    def decode(self, latent: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class IdentityCodec:
    """The codec of pixel-space models: the latent is the image."""

    channels: int = 3
    factor: int = 1

    @property
    def space(self) -> Hashable:
        return ("pixels", self.channels)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(pixels, np.float32)

    def decode(self, latent: np.ndarray) -> np.ndarray:
        return np.asarray(latent, np.float32)


@dataclass(frozen=True, eq=False)
class Member:
    """One cooperating denoiser. `latent_size` is its native (h, w) in its own latent; `channels` is only
    needed without a codec. Active when sigma_min <= σ < sigma_max; `weight` matters in mode "fuse"."""

    name: str
    denoiser: Denoiser
    latent_size: tuple[int, int]
    codec: Codec | None = None
    sigma_min: float = 0.0
    sigma_max: float = math.inf
    weight: float = 1.0
    channels: int | None = None

    def covers(self, sigma: float) -> bool:
        return self.sigma_min <= sigma < self.sigma_max

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        channels = self.codec.channels if self.codec is not None else self.channels
        return (int(channels), int(self.latent_size[0]), int(self.latent_size[1]))

    @property
    def pixel_size(self) -> tuple[int, int] | None:
        if self.codec is None:
            return None
        return (self.latent_size[0] * self.codec.factor, self.latent_size[1] * self.codec.factor)


def space_key(codec: Codec | None) -> Hashable:
    """Equal keys ⇔ one latent space (no codec: the shared space of all codec-less members)."""
    if codec is None:
        return None
    key = getattr(codec, "space", None)
    return ("codec", id(codec)) if key is None else key


def same_space(a: Member, b: Member) -> bool:
    """Same latent space AND same latent shape: x can be handed over as is."""
    return space_key(a.codec) == space_key(b.codec) and a.latent_shape == b.latent_shape


def resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of (B, C, h, w) float32 to (B, C, *size), plane by plane (deterministic);
    returns x itself when the size already matches."""
    from PIL import Image

    height, width = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) == (height, width):
        return x
    out = np.empty(x.shape[:2] + (height, width), np.float32)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            plane = Image.fromarray(np.ascontiguousarray(x[b, c], np.float32), mode="F")
            out[b, c] = np.asarray(plane.resize((width, height), Image.Resampling.BICUBIC), np.float32)
    return out


def to_space(
    x0: np.ndarray,
    src: Codec | None,
    dst: Codec | None,
    dst_latent_hw: tuple[int, int],
    pixel_resize: bool = False,
) -> np.ndarray:
    """Move a clean estimate from `src`'s latent space into `dst`'s at latent size `dst_latent_hw`.

    Within one space (equal `space_key`) at the same size this returns x0 untouched (exact); at another
    size it resizes the latent directly, unless `pixel_resize`. Otherwise the bridge goes through pixels:
    decode → clamp to [-1, 1] (decoders overshoot; encoders never saw such pixels) → resize → encode.
    """
    x0 = np.asarray(x0, np.float32)
    dst_latent_hw = (int(dst_latent_hw[0]), int(dst_latent_hw[1]))
    if space_key(src) == space_key(dst) and not pixel_resize:
        return resize(x0, dst_latent_hw)
    if space_key(src) == space_key(dst) and tuple(x0.shape[-2:]) == dst_latent_hw:
        return x0
    if src is None or dst is None:
        raise ValueError("bridging between latent spaces or through pixels needs both codecs")
    pixels = np.clip(np.asarray(src.decode(x0), np.float32), -1.0, 1.0)
    pixels = resize(pixels, (dst_latent_hw[0] * dst.factor, dst_latent_hw[1] * dst.factor))
    return np.asarray(dst.encode(pixels), np.float32)


def fresh_noise(seed: int, step: int, shape: tuple[int, ...], stream: int = HANDOVER_STREAM) -> np.ndarray:
    """I.i.d. N(0, 1) float32 noise for one use, reproducible from (seed, step, stream)."""
    return np.random.default_rng([int(seed), int(step), int(stream)]).standard_normal(shape, dtype=np.float32)


def sigma_between(sigmas: Sequence[float] | np.ndarray, k: int) -> float:
    """A range boundary that puts steps 0…k−1 above it and steps k… below it: the geometric midpoint of
    σ_{k−1} and σ_k, so float rounding of the schedule never moves a step across it."""
    sigmas = np.asarray(sigmas, np.float64)
    if not 0 < k < len(sigmas) - 1:
        raise ValueError(f"k must be in 1..{len(sigmas) - 2}, got {k}")
    return math.sqrt(float(sigmas[k - 1]) * float(sigmas[k]))


@dataclass(frozen=True)
class CoopStep:
    """One step of a plan. `renoise`: the trajectory enters the lead's space here (x = bridge(x̂0) + σ·z).
    `bridged`: active members evaluated through a bridge (two codec round trips each)."""

    index: int
    sigma: float
    lead: str
    active: tuple[str, ...]
    latent_shape: tuple[int, int, int]
    pixel_size: tuple[int, int] | None
    renoise: bool
    bridged: tuple[str, ...] = ()


@dataclass(frozen=True)
class CoopPlan:
    """What a Coop run does at each step, computed without evaluating any denoiser (for --dry-run)."""

    mode: str
    members: tuple[Member, ...]
    steps: tuple[CoopStep, ...]
    pixel_resize: bool = False

    def evaluations(self) -> dict[str, int]:
        """Network evaluations per member (the cost; every member listed, 0 when never active)."""
        counts = {m.name: 0 for m in self.members}
        for step in self.steps:
            for name in step.active:
                counts[name] += 1
        return counts

    def lead_steps(self) -> dict[str, int]:
        counts = {m.name: 0 for m in self.members}
        for step in self.steps:
            counts[step.lead] += 1
        return counts

    def segments(self) -> list[tuple[int, int]]:
        """Half-open step ranges [start, stop) during which the trajectory stays in one space and size."""
        starts = [s.index for s in self.steps if s.index == 0 or s.renoise]
        return list(zip(starts, starts[1:] + [len(self.steps)]))

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def describe(self) -> list[str]:
        """One line per step: index, sigma, lead, other active members, resolution."""
        lines = []
        for s in self.steps:
            c, h, w = s.latent_shape
            size = f"latent {c}x{h}x{w}" + (f" ({s.pixel_size[1]}x{s.pixel_size[0]} px)" if s.pixel_size else "")
            others = [n for n in s.active if n != s.lead]
            line = f"{s.index:3d}  sigma {s.sigma:9.4f}  {s.lead}"
            line += f" + {', '.join(others)}" if others else ""
            line += f"  {size}" + ("  [re-noised]" if s.renoise else "")
            lines.append(line)
        return lines


def _range(m: Member) -> str:
    return f"[{m.sigma_min:g}, {m.sigma_max:g})"


def _check_members(members: Sequence[Member], mode: str) -> None:
    if not members:
        raise UsageError("Coop-Diffusion needs at least one member", "give each model a member entry")
    if mode not in MODES:
        raise UsageError(f"unknown Coop mode '{mode}'", f"use one of: {', '.join(MODES)}")
    seen = set()
    for m in members:
        if not m.name or m.name in seen:
            raise UsageError(f"member name {m.name!r} is empty or used twice", "give every member its own name")
        seen.add(m.name)
        if not callable(m.denoiser):
            raise UsageError(f"member '{m.name}': denoiser is not callable")
        if len(m.latent_size) != 2 or min(int(v) for v in m.latent_size) < 1:
            raise UsageError(f"member '{m.name}': latent_size {m.latent_size} is not a positive (h, w)")
        if m.codec is None and m.channels is None:
            raise UsageError(f"member '{m.name}': channels is missing", "give its codec or its channel count")
        if m.codec is not None and m.channels is not None and m.channels != m.codec.channels:
            raise UsageError(f"member '{m.name}': channels {m.channels} differ from its codec's {m.codec.channels}")
        if not (0.0 <= m.sigma_min < m.sigma_max):
            raise UsageError(f"member '{m.name}': sigma range {_range(m)} is empty or negative",
                             "need 0 <= sigma_min < sigma_max")
        if not math.isfinite(m.weight):
            raise UsageError(f"member '{m.name}': weight {m.weight} is not finite")
    if mode == "switch":
        for i, a in enumerate(members):
            for b in members[:i]:
                if max(a.sigma_min, b.sigma_min) < min(a.sigma_max, b.sigma_max):
                    raise UsageError(
                        f"member '{a.name}': sigma range {_range(a)} overlaps member '{b.name}' {_range(b)}",
                        "with hard switching the ranges must tile (one's sigma_min = the next's sigma_max); "
                        "use mode 'fuse' to combine members",
                    )


def _check_bridge(src: Member, dst: Member, pixel_resize: bool) -> None:
    """Raise unless a clean estimate can move from src's space into dst's."""
    if same_space(src, dst):
        return
    if space_key(src.codec) == space_key(dst.codec) and not pixel_resize:
        if src.latent_shape[0] != dst.latent_shape[0]:
            raise UsageError(f"member '{dst.name}': channels {dst.latent_shape[0]} differ from member "
                             f"'{src.name}' {src.latent_shape[0]} in the same latent space",
                             "give each member the codec of its latent space")
        return  # a latent resize
    missing = next((m for m in (src, dst) if m.codec is None), None)
    if missing is not None:
        other = dst if missing is src else src
        raise UsageError(
            f"member '{missing.name}': codec is missing, but its latent must be bridged through pixels "
            f"to member '{other.name}'",
            "give every member whose latent space or resolution differs a codec",
        )


def plan_coop(
    members: Sequence[Member], sigmas: Sequence[float] | np.ndarray, mode: str = "switch", pixel_resize: bool = False
) -> CoopPlan:
    """Validate the members against the schedule and say, per step, who leads, who is active, at what size.

    `sigmas` is descending and ends in 0 (the last entry is not a step). Raises UsageError naming the
    member and field at fault: overlapping ranges (mode "switch"), a step no member covers, active weights
    summing to <= 0, a missing codec where a bridge is needed, no members.
    """
    members = tuple(members)
    _check_members(members, mode)
    sigmas = np.asarray(sigmas)
    if sigmas.ndim != 1 or len(sigmas) < 2 or float(sigmas[-1]) != 0.0 or np.any(np.diff(sigmas) >= 0):
        raise ValueError("sigmas must be strictly descending and end in 0")

    steps, previous = [], None
    for i, sigma in enumerate(float(s) for s in sigmas[:-1]):
        active = [m for m in members if m.covers(sigma)]
        if not active:
            above = min((m for m in members if m.sigma_min > sigma), key=lambda m: m.sigma_min, default=None)
            below = max((m for m in members if m.sigma_max <= sigma), key=lambda m: m.sigma_max, default=None)
            near = ", ".join(f"member '{m.name}' sigma range {_range(m)}" for m in (above, below) if m)
            raise UsageError(f"no member covers step {i} (sigma {sigma:g}): {near}",
                             "make the sigma ranges tile: one member's sigma_min = the next one's sigma_max")
        total = sum(m.weight for m in active)
        if total <= 0:
            names = ", ".join(f"'{m.name}'" for m in active)
            raise UsageError(f"members {names}: weights sum to {total:g} at step {i} (sigma {sigma:g})",
                             "the weights of the members active at a step must sum to more than 0")
        lead = active[0]
        renoise = previous is not None and not same_space(previous, lead)
        if renoise:
            _check_bridge(previous, lead, pixel_resize)
        for m in active[1:]:
            _check_bridge(lead, m, pixel_resize)
        bridged = tuple(m.name for m in active[1:] if not same_space(lead, m))
        steps.append(CoopStep(i, sigma, lead.name, tuple(m.name for m in active), lead.latent_shape,
                              lead.pixel_size, renoise, bridged))
        previous = lead
    return CoopPlan(mode, members, tuple(steps), pixel_resize)


class _FusedDenoiser:
    """The denoiser a sampler sees during one segment: the lead's estimate, fused with the other active
    members' estimates brought into the lead's space."""

    def __init__(self, plan: CoopPlan, lead: Member, first_step: int, seed: int):
        self.plan, self.lead, self.step, self.seed = plan, lead, first_step, seed

    def __call__(self, x: np.ndarray, sigma: float) -> np.ndarray:
        step, self.step = self.step, self.step + 1
        active = [m for m in self.plan.members if m.covers(sigma)]
        if not active or not same_space(active[0], self.lead):
            raise ValueError(f"the sampler evaluated sigma {sigma:g}, outside the planned space of '{self.lead.name}'")
        lead = active[0]
        x0_lead = np.asarray(lead.denoiser(x, sigma), np.float32)
        if len(active) == 1:
            return x0_lead
        total = sum(m.weight for m in active)
        fused = np.float32(lead.weight / total) * x0_lead
        eps_lead = (x - x0_lead) / np.float32(sigma)
        for m in active[1:]:
            x0 = np.asarray(m.denoiser(self._input(m, x, x0_lead, eps_lead, sigma, step), sigma), np.float32)
            if not same_space(m, lead):
                x0 = to_space(x0, m.codec, lead.codec, lead.latent_size, self.plan.pixel_resize)
            fused = fused + np.float32(m.weight / total) * x0
        return fused

    def _input(self, m: Member, x, x0_lead, eps_lead, sigma: float, step: int) -> np.ndarray:
        """The noisy sample member m sees: consistent with the lead's trajectory at the same sigma."""
        if same_space(m, self.lead):
            return x
        anchor = to_space(x0_lead, self.lead.codec, m.codec, m.latent_size, self.plan.pixel_resize)
        if anchor.shape == x.shape:
            noise = eps_lead
        else:
            noise = fresh_noise(self.seed, step, anchor.shape, 1 + self.plan.members.index(m))
        return anchor + np.float32(sigma) * noise


def sample_coop(
    members: Sequence[Member],
    sigmas: Sequence[float] | np.ndarray,
    seed: int,
    sampler: str = "euler",
    mode: str = "switch",
    callback: Callback | None = None,
    batch: int = 1,
    pixel_resize: bool = False,
) -> tuple[np.ndarray, CoopPlan]:
    """Run one Coop-Diffusion trajectory; returns x in the final lead's latent space, and the plan it followed.

    Any sampler of `SAMPLERS` runs unchanged over each segment of constant space (so a multistep sampler's
    history restarts at a change of space). The starting noise is `initial_noise(seed, …)`, as in the
    single-model pipeline. The callback gets the sampler's info with the global step `i`, plus "lead" and
    "active" (member names).
    """
    if sampler not in SAMPLERS:
        raise UsageError(f"unknown sampler '{sampler}'", f"use one of: {', '.join(SAMPLERS)}")
    plan = plan_coop(members, sigmas, mode, pixel_resize)
    sigmas = np.asarray(sigmas)
    x, last_denoised, previous = None, None, None
    for start, stop in plan.segments():
        lead = plan.member(plan.steps[start].lead)
        if x is None:
            x = initial_noise(seed, (batch,) + lead.latent_shape, float(sigmas[0]))
        else:
            # The clean estimate moves, never the noisy x; the noise is drawn anew at the current level.
            x0 = to_space(last_denoised, previous.codec, lead.codec, lead.latent_size, pixel_resize)
            x = x0 + np.float32(sigmas[start]) * fresh_noise(seed, start, x0.shape, HANDOVER_STREAM)
        last = {}

        def on_step(info: dict, start=start, last=last) -> None:
            last["denoised"] = info["denoised"]
            if callback is not None:
                step = plan.steps[start + info["i"]]
                callback({**info, "i": step.index, "lead": step.lead, "active": step.active})

        x = SAMPLERS[sampler](_FusedDenoiser(plan, lead, start, seed), x, sigmas[start:stop + 1], callback=on_step)
        last_denoised, previous = last["denoised"], lead
    return x, plan


__all__ = [
    "Codec",
    "CoopPlan",
    "CoopStep",
    "IdentityCodec",
    "Member",
    "fresh_noise",
    "plan_coop",
    "resize",
    "sample_coop",
    "same_space",
    "sigma_between",
    "space_key",
    "to_space",
]
