"""Coop-Diffusion ensembles as users write them: a TOML recipe or short flags, checked before any model loads.

    mode = "switch"            # or "fuse": average the clean estimates of every member active at a step
    [[members]]
    name = "structure"
    model = "pangu-mini"       # a name from `pangu models`, or a folder; omitted: the --model one
    unet = "structure"         # which UNet of a two-stage model; omitted: the one its role implies
    t = [500, 1000]            # active for steps at timesteps 500 <= t < 1000 (or fractions [0.5, 1.0])
    scale = 0.25               # native size: this × the output size (or size = "32x32")
    [[members]]
    name = "texture"
    t = [0, 500]

A step's timestep is its sigma's index in the FIRST member's noise schedule, so members with different
schedules still divide one trajectory. No MindSpore here: `pangu draw --dry-run` plans with it.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pangu_cli.errors import PanguError, UsageError

if TYPE_CHECKING:
    import numpy as np

    from pangu_cli.models.registry import ModelSpec
    from pangu_cli.settings import ImageSettings

MODES = ("switch", "fuse")
UNETS = ("structure", "texture")
T_END = 1000
MEMBER_KEYS = ("name", "model", "unet", "t", "weight", "guidance", "scale", "size")
MAX_SCALE = 8.0


@dataclass(frozen=True)
class MemberSpec:
    name: str
    model: str | None = None  # None: the model of the request (--model, or the default)
    unet: str | None = None  # "structure" | "texture"; None: the member's name if it is one, else texture
    t: tuple[int, int] = (0, T_END)  # active for t_min <= t < t_max
    weight: float = 1.0
    guidance: float | None = None  # None: the request's guidance
    scale: float | None = None  # native size = scale × output size; None: the model's default
    size: tuple[int, int] | None = None  # native pixel size (width, height); overrides scale

    def unet_role(self) -> str:
        return self.unet or (self.name if self.name in UNETS else "texture")

    def covers(self, t: int) -> bool:
        return self.t[0] <= t < self.t[1]


@dataclass(frozen=True)
class Ensemble:
    members: tuple[MemberSpec, ...]
    mode: str = "switch"
    # The reference's hand-over rule (step i goes by step i-1's timestep); the default ensembles of
    # models that ask for it keep it, recipes use each step's own timestep.
    lag: bool = False
    source: str = field(default="", compare=False)  # where it came from, for messages

    def assign(self, timesteps: list[int]) -> list[list[int]]:
        """Per step, the indices of the members active at it (in member order)."""
        out = []
        for i, t in enumerate(timesteps):
            if self.lag and i == 0:  # the reference's rule: the first step belongs to the first expert
                out.append([next(k for k, m in enumerate(self.members) if m.t[1] == T_END)])
                continue
            rule_t = timesteps[i - 1] if self.lag else t
            out.append([k for k, m in enumerate(self.members) if m.covers(rule_t)])
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-able form (recorded in the PNG, read back by `from_dict`)."""
        members = []
        for m in self.members:
            entry = {k: v for k, v in asdict(m).items() if v is not None}
            entry["t"] = list(m.t)
            if m.size is not None:
                entry["size"] = f"{m.size[0]}x{m.size[1]}"
            if m.weight == 1.0:
                entry.pop("weight")
            members.append(entry)
        data: dict[str, Any] = {"mode": self.mode, "members": members}
        if self.lag:
            data["lag"] = True
        return data


def _fail(where: str, problem: str, hint: str) -> UsageError:
    return UsageError(f"{where}: {problem}", hint)


def _t_range(value: Any, where: str) -> tuple[int, int]:
    hint = "give t = [t_min, t_max] as timesteps 0…1000 or fractions 0…1, e.g. t = [500, 1000]"
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _fail(where, f"{value!r} is not a [t_min, t_max] pair", hint)
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in value):
        raise _fail(where, f"{list(value)} holds something that is not a number", hint)
    fractions = all(0 <= v <= 1 for v in value) and any(isinstance(v, float) for v in value)
    lo, hi = (round(v * T_END) for v in value) if fractions else (round(v) for v in value)
    if not 0 <= lo < hi <= T_END:
        raise _fail(where, f"{list(value)} is not a range with 0 <= t_min < t_max <= {T_END}", hint)
    return int(lo), int(hi)


def _size(value: Any, where: str) -> tuple[int, int]:
    from pangu_cli.ratios import parse_size

    if not isinstance(value, str):
        raise _fail(where, f"{value!r} is not a size", 'write it as "WIDTHxHEIGHT", e.g. size = "64x64"')
    try:
        return parse_size(value)
    except UsageError as exc:
        raise _fail(where, exc.message, exc.hint or 'write it as "WIDTHxHEIGHT"') from None


def _positive(value: Any, where: str, allow_zero: bool = False, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, f"{value!r} is not a number", "give a finite number")
    if value < 0 or (value == 0 and not allow_zero) or (high is not None and value > high):
        bound = f"between 0 and {high:g}" if high is not None else ("at least 0" if allow_zero else "above 0")
        raise _fail(where, f"{value!r} is out of range", f"it must be {bound}")
    return float(value)


def _member(data: Any, index: int, source: str) -> MemberSpec:
    where = f"{source}: members[{index}]"
    if not isinstance(data, dict):
        raise _fail(where, "is not a table", "write each member as a [[members]] table")
    unknown = sorted(set(data) - set(MEMBER_KEYS))
    if unknown:
        raise _fail(f"{where}.{unknown[0]}", "unknown field", f"members take: {', '.join(MEMBER_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _fail(f"{where}.name", "missing or empty", "give every member a name, e.g. name = \"structure\"")
    where = f"{source}: members[{index}] '{name}'"
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise _fail(f"{where}.model", f"{model!r} is not a model name", "see `pangu models`")
    unet = data.get("unet")
    if unet is not None and unet not in UNETS:
        raise _fail(f"{where}.unet", f"{unet!r} is not a UNet role", f"use one of: {', '.join(UNETS)}")
    t = _t_range(data.get("t", [0, T_END]), f"{where}.t")
    weight = data.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise _fail(f"{where}.weight", f"{weight!r} is not a finite number", "give a number, e.g. 1.0")
    guidance = data.get("guidance")
    if guidance is not None:
        guidance = _positive(guidance, f"{where}.guidance", allow_zero=True, high=100)
    scale = data.get("scale")
    if scale is not None:
        scale = _positive(scale, f"{where}.scale", high=MAX_SCALE)
    size = _size(data["size"], f"{where}.size") if "size" in data else None
    return MemberSpec(name.strip(), model.strip() if model else None, unet, t, float(weight), guidance, scale, size)


def _check_coverage(members: tuple[MemberSpec, ...], mode: str, where: str) -> None:
    """Switch: the t ranges tile [0, 1000) with no overlap; fuse: every t has active weight > 0."""
    cuts = sorted({0, T_END} | {v for m in members for v in m.t})
    for lo, hi in zip(cuts, cuts[1:]):
        active = [m for m in members if m.covers(lo)]
        if not active:
            raise _fail(where, f"no member covers timesteps [{lo}, {hi})",
                        "make the members' t ranges meet: one's t_min = the next one's t_max")
        if mode == "switch" and len(active) > 1:
            a, b = active[:2]
            raise _fail(f"{where}: member '{b.name}'.t {list(b.t)}", f"overlaps member '{a.name}'.t {list(a.t)}",
                        "with mode = \"switch\" the ranges must not overlap; use mode = \"fuse\" to combine")
        total = sum(m.weight for m in active)
        if total <= 0:
            names = ", ".join(f"'{m.name}'" for m in active)
            raise _fail(f"{where}: members {names}", f"weights sum to {total:g} on timesteps [{lo}, {hi})",
                        "the weights of the members active together must sum to more than 0")


def ensemble_from_dict(data: Any, source: str = "recipe") -> Ensemble:
    """Validate a recipe's data; every error names the field at fault."""
    if not isinstance(data, dict):
        raise _fail(source, "is not a table", "see `pangu draw --help` for the recipe format")
    unknown = sorted(set(data) - {"mode", "members", "lag"})
    if unknown:
        raise _fail(f"{source}: {unknown[0]}", "unknown field", "a recipe has: mode, members (and lag)")
    mode = data.get("mode", "switch")
    if mode not in MODES:
        raise _fail(f"{source}: mode", f"{mode!r} is not a mode", f"use one of: {', '.join(MODES)}")
    raw = data.get("members")
    if not isinstance(raw, list) or not raw:
        raise _fail(f"{source}: members", "no members", "add at least one [[members]] table")
    members = tuple(_member(m, i, source) for i, m in enumerate(raw))
    names = [m.name for m in members]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        raise _fail(f"{source}: members", f"the name '{twice}' is used twice", "give every member its own name")
    _check_coverage(members, mode, source)
    lag = data.get("lag", False)
    if not isinstance(lag, bool):
        raise _fail(f"{source}: lag", f"{lag!r} is not true or false", "write lag = true or lag = false")
    return Ensemble(members, mode, lag, source)


def load_recipe(path: str | Path) -> Ensemble:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"recipe {path} does not exist", "give the path of a .toml recipe") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read recipe {path}: {exc}", "give a readable UTF-8 .toml file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"recipe {path} is not valid TOML: {exc}", "fix the syntax (see the TOML spec)") from None
    return ensemble_from_dict(data, source=f"recipe {path.name}")


def from_flags(structure_model: str | None, texture_model: str | None, switch_t: int,
               structure_size: str | None) -> Ensemble | None:
    """The two-member ensemble the short flags describe, or None when none of them is given."""
    if structure_model is None and texture_model is None and structure_size is None:
        return None
    # No `unet`: the names imply the roles, and a single-UNet model falls back to its one UNet.
    structure: dict[str, Any] = {"name": "structure", "t": [switch_t, T_END]}
    texture: dict[str, Any] = {"name": "texture", "t": [0, switch_t]}
    if structure_model:
        structure["model"] = structure_model
    if texture_model:
        texture["model"] = texture_model
    if structure_size:
        structure["size"] = structure_size
    if not 0 < switch_t < T_END:
        raise UsageError(f"--switch {switch_t} leaves one generator no steps", "give a switch between 1 and 999")
    data = {"members": [{k: v for k, v in m.items() if v is not None} for m in (structure, texture)]}
    return ensemble_from_dict(data, source="flags")


def default_ensemble(spec: "ModelSpec", switch_t: int, lag: bool) -> Ensemble:
    """A model's own configuration: its structure UNet above `switch_t`, its texture UNet below; or its one UNet."""
    if not spec.two_stage:
        return Ensemble((MemberSpec("texture", unet="texture"),), lag=lag, source="model")
    members = (MemberSpec("structure", unet="structure", t=(min(max(switch_t, 0), T_END), T_END)),
               MemberSpec("texture", unet="texture", t=(0, min(max(switch_t, 0), T_END))))
    # A switch at 0 or 1000 leaves one UNet every step: keep only that one. Under the lag rule the
    # structure UNet still takes step 0 at a switch of 1000, so its empty top range stays.
    members = tuple(m for m in members if m.t[0] < m.t[1] or (lag and m.t == (T_END, T_END)))
    return Ensemble(members, lag=lag, source="model")


# ------------------------------------------------------------------------------------------------ planning
@dataclass(frozen=True)
class MemberPlan:
    """A member resolved against its model and the schedule: which UNet, at what size, on which steps."""

    spec: MemberSpec
    model: "ModelSpec"
    role: str
    size: tuple[int, int]  # (width, height) in pixels
    steps: tuple[int, ...]  # indices of the steps it is active at (contiguous)

    @property
    def latent_hw(self) -> tuple[int, int]:
        factor = self.model.latent_factor
        return self.size[1] // factor, self.size[0] // factor

    @property
    def channels(self) -> int:
        return int(self.model.manifest["unet"].get("in_channels", 4))


@dataclass(frozen=True)
class EnsemblePlan:
    ensemble: Ensemble
    sigmas: "np.ndarray"  # descending, ending in 0 (the first member's schedule)
    timesteps: tuple[int, ...]
    members: tuple[MemberPlan, ...]  # those active at one step at least, in recipe order
    output: tuple[int, int]  # (width, height)

    def sigma_range(self, member: MemberPlan) -> tuple[float, float]:
        """The half-open [sigma_min, sigma_max) that holds exactly the member's steps."""
        from pangu_cli.sampling.coop import sigma_between

        first, last = member.steps[0], member.steps[-1]
        sigma_max = math.inf if first == 0 else sigma_between(self.sigmas, first)
        sigma_min = 0.0 if last == len(self.timesteps) - 1 else sigma_between(self.sigmas, last + 1)
        return sigma_min, sigma_max

    def rows(self, branches: int = 1) -> list[dict[str, Any]]:
        """Per step: sigma, timestep, the lead, the members active, the lead's size, and the cost (UNet
        evaluations × latent megapixels, every guidance branch counted)."""
        rows = []
        for i, (sigma, t) in enumerate(zip(self.sigmas[:-1], self.timesteps)):
            active = [m for m in self.members if i in m.steps]
            cost = sum(branches * m.latent_hw[0] * m.latent_hw[1] for m in active) / 1e6
            rows.append({"step": i, "sigma": round(float(sigma), 4), "t": int(t), "lead": active[0].spec.name,
                         "active": [m.spec.name for m in active], "size": list(active[0].size),
                         "mpx_evals": round(cost, 6)})
        return rows

    def totals(self, branches: int = 1) -> dict[str, dict[str, Any]]:
        out = {}
        for m in self.members:
            evals = len(m.steps) * branches
            out[m.spec.name] = {"model": m.model.name, "unet": m.role, "size": list(m.size), "steps": len(m.steps),
                                "evaluations": evals,
                                "mpx_evals": round(evals * m.latent_hw[0] * m.latent_hw[1] / 1e6, 6)}
        return out


def _unit(spec: "ModelSpec") -> int:
    """The multiple every side must be: the latent factor × what the UNet's levels divide."""
    levels = len(spec.manifest["unet"].get("channel_mult", [1]))
    return spec.latent_factor * 2 ** (levels - 1)


def _member_size(m: MemberSpec, spec: "ModelSpec", role: str, output: tuple[int, int], finishes: bool,
                 where: str) -> tuple[int, int]:
    from pangu_cli.ratios import make_buckets, nearest_bucket, scale_size

    unit = _unit(spec)
    width, height = output
    if m.size is not None:
        if m.size[0] % unit or m.size[1] % unit:
            raise _fail(f"{where}.size", f"{m.size[0]}x{m.size[1]} is not a multiple of {unit}",
                        f"model '{spec.name}' needs sides divisible by {unit}")
        return m.size
    if m.scale is not None:
        return scale_size(width, height, m.scale, unit)
    factor = float(spec.sampling.get("structure_scale", 1.0)) if role == "structure" else 1.0
    if finishes and factor == 1.0:
        size = output
    else:
        # Above the model's own size (one-stage super-resolution: the output is k × a bucket) the members
        # that do not finish run at the bucket's size, where the model was trained; otherwise at the
        # output's. A structure UNet runs at its model's structure_scale of that, also when it finishes
        # (the result is then resized to the output).
        native = nearest_bucket(make_buckets(spec.buckets), width / height)
        k = width // native.width
        upscaled = k >= 2 and (width, height) == (k * native.width, k * native.height)
        base = (native.width, native.height) if upscaled and not finishes else (width, height)
        size = base if factor == 1.0 else scale_size(*base, factor, unit)
    if size[0] % unit or size[1] % unit:
        if finishes:
            raise UsageError(f"size {width}x{height} is not a multiple of {unit}",
                             f"model '{spec.name}' needs sides divisible by {unit}; pick a size from `pangu ratios`")
        raise _fail(where, f"would run at {size[0]}x{size[1]}, not a multiple of {unit} (model '{spec.name}')",
                    "give the member a size or a scale")
    return size


def resolve_models(ensemble: Ensemble, primary: "ModelSpec",
                   resolve: Callable[[str], "ModelSpec"]) -> dict[str | None, "ModelSpec"]:
    """Model specs by the names the recipe uses (None: the request's model); an unknown name is an
    error naming the member field."""
    specs: dict[str | None, ModelSpec] = {None: primary}
    for i, m in enumerate(ensemble.members):
        if m.model is None or m.model in specs:
            continue
        try:
            specs[m.model] = primary if m.model == primary.name else resolve(m.model)
        except PanguError as exc:
            raise _fail(f"{ensemble.source or 'recipe'}: members[{i}] '{m.name}'.model", exc.message,
                        exc.hint or "see `pangu models`") from None
    return specs


def plan_ensemble(ensemble: Ensemble, specs: dict[str | None, "ModelSpec"], output: tuple[int, int],
                  steps: int) -> EnsemblePlan:
    """Resolve every member against its model and the `steps`-step schedule of the first member's model."""
    import numpy as np

    from pangu_cli.sampling.schedules import reference_sigmas, sigma_to_t

    source = ensemble.source or "recipe"
    first = specs[ensemble.members[0].model]
    table = first.sigma_table()
    sigmas = reference_sigmas(steps, table=table)
    timesteps = [int(t) for t in np.atleast_1d(sigma_to_t(sigmas[:-1], table))]
    assignment = ensemble.assign(timesteps)
    planned = []
    for k, m in enumerate(ensemble.members):
        where = f"{source}: members[{k}] '{m.name}'"
        spec = specs[m.model]
        role = m.unet_role()
        if role == "structure" and not spec.two_stage:
            if m.unet is not None:
                raise _fail(f"{where}.unet", f"model '{spec.name}' has no structure UNet",
                            "leave unet out to use its only UNet")
            role = "texture"
        active = tuple(i for i, members in enumerate(assignment) if k in members)
        if not active:
            continue  # its range holds no step of this schedule: it costs nothing and changes nothing
        size = _member_size(m, spec, role, output, active[-1] == len(timesteps) - 1, where)
        planned.append(MemberPlan(m, spec, role, size, active))
    distinct = {str(m.model.root) for m in planned}
    for k, m in enumerate(ensemble.members):
        model = specs[m.model]
        if len(distinct) > 1 and not model.manifest.get("vae") and model.manifest["unet"].get("in_channels") != 3:
            raise _fail(f"{source}: members[{k}] '{m.name}'.model",
                        f"model '{model.name}' has no autoencoder and its latent is not pixels, so it cannot be "
                        "bridged to the other members", "add its VAE to its model.json, or use it alone")
    for i, members in enumerate(assignment):
        if not members:
            raise _fail(source, f"no member covers step {i} (t = {timesteps[i]})",
                        "make the members' t ranges cover 0…1000")
    return EnsemblePlan(ensemble, sigmas, tuple(timesteps), tuple(planned), output)


def plan_for(spec: "ModelSpec", s: "ImageSettings") -> EnsemblePlan:
    """The plan of one image: its recipe's ensemble, or the model's own split, over its schedule."""
    from pangu_cli.models import registry

    ensemble = ensemble_from_dict(s.ensemble, "recipe") if s.ensemble else default_ensemble(spec, s.switch_t,
                                                                                             s.switch_lag)
    return plan_ensemble(ensemble, resolve_models(ensemble, spec, registry.resolve), (s.width, s.height), s.steps)


def describe(plan: EnsemblePlan, branches: int) -> list[str]:
    """`pangu draw --dry-run`'s table: one line per step, then each member's share of the cost."""
    lines = [f"{'step':>4}  {'sigma':>9}  {'t':>4}  {'member':<14} {'size':>9}  cost (Mpx·evals)"]
    for row in plan.rows(branches):
        others = [n for n in row["active"] if n != row["lead"]]
        who = row["lead"] + (f" + {', '.join(others)}" if others else "")
        size = f"{row['size'][0]}x{row['size'][1]}"
        lines.append(f"{row['step']:>4}  {row['sigma']:>9.4f}  {row['t']:>4}  {who:<14} {size:>9}  {row['mpx_evals']:.4f}")
    totals = plan.totals(branches)
    total = sum(m["mpx_evals"] for m in totals.values()) or 1.0
    for name, m in totals.items():
        lines.append(f"{name}: model {m['model']} ({m['unet']} UNet) at {m['size'][0]}x{m['size'][1]}, "
                     f"{m['steps']} step{'s' if m['steps'] != 1 else ''}, {m['evaluations']} evaluations, {m['mpx_evals']:.4f} Mpx·evals "
                     f"({100 * m['mpx_evals'] / total:.0f}% of the cost)")
    return lines


__all__ = ["Ensemble", "EnsemblePlan", "MemberPlan", "MemberSpec", "default_ensemble", "describe",
           "ensemble_from_dict", "from_flags", "load_recipe", "plan_ensemble", "plan_for", "resolve_models"]
