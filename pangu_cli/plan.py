"""Turn user options (CLI flags, a JSONL line, a recipe from a PNG) into `ImageSettings`.

Precedence, lowest first: the model's defaults → a recipe (`draw --from`) → presets chosen with
--style → explicit options. Everything is validated here, before any model is loaded, so that bad
input fails fast and cheaply. No MindSpore.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

from pangu_cli.errors import UsageError
from pangu_cli.models.registry import ModelSpec
from pangu_cli.ratios import Bucket, bucket_for_size, make_buckets, nearest_bucket, parse_size
from pangu_cli.settings import ImageSettings

SAMPLER_NAMES = ("euler", "dpmpp_2m")  # mirrors pangu_cli.sampling.SAMPLERS without importing numpy
SAMPLER_ALIASES = {"euler_edm": "euler", "pangueuleredm": "euler", "dpm++2m": "dpmpp_2m", "dpmpp2m": "dpmpp_2m"}
MAX_STEPS = 1000
MAX_COUNT = 1000
OPTION_KEYS = ("prompt", "negative", "seed", "count", "steps", "guidance", "sampler", "style", "style_scale",
               "ratio", "size", "switch")


@dataclass
class Options:
    """What a user may set per request; None means 'not given'."""

    prompt: str | None = None
    negative: str | None = None
    seed: int | None = None
    count: int | None = None
    steps: int | None = None
    guidance: float | None = None
    sampler: str | None = None
    style: list[str] | None = None
    style_scale: float | None = None
    ratio: str | None = None
    size: str | None = None
    switch: float | None = None
    ensemble: dict | None = None  # a checked Coop-Diffusion recipe (`pangu_cli.ensemble`), from --recipe or flags

    def merged(self, overrides: dict[str, Any]) -> "Options":
        """These options with per-item overrides (a JSONL line) on top; unknown keys are an error."""
        unknown = sorted(set(overrides) - set(OPTION_KEYS))
        if unknown:
            raise UsageError(f"unknown option '{unknown[0]}'", f"known options: {', '.join(OPTION_KEYS)}")
        values = {k: getattr(self, k) for k in OPTION_KEYS}
        for key, value in overrides.items():
            if value is None or value == "":
                continue
            values[key] = [value] if key == "style" and isinstance(value, str) else value
        return Options(**values, ensemble=self.ensemble)


def clean_prompt(prompt: str | None) -> str:
    text = (prompt or "").strip()
    if not text:
        raise UsageError("the prompt is empty", 'give a prompt, e.g. pangu draw "一只红色的猫" (or - to read stdin)')
    return text


def _number(value: Any, name: str, kind=float, low: float | None = None, high: float | None = None):
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} {value!r} is not a valid {kind.__name__}", f"give {name} as a number") from None
    if kind is float and not math.isfinite(number):
        raise UsageError(f"{name} must be finite", f"give {name} as a number")
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"between {_plain(low)} and {_plain(high)}" if high is not None else f"at least {_plain(low)}"
        raise UsageError(f"{name} {value} is out of range", f"{name} must be {bounds}")
    return number


def _plain(bound: float) -> str:
    """4294967295, not 4.29497e+09."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def resolve_sampler(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = SAMPLER_ALIASES.get(key.replace("_", ""), SAMPLER_ALIASES.get(key, key))
    if key not in SAMPLER_NAMES:
        raise UsageError(f"unknown sampler '{name}'", f"use one of: {', '.join(SAMPLER_NAMES)}")
    return key


MAX_UPSCALE = 4


def output_for_size(spec: ModelSpec, width: int, height: int) -> tuple[Bucket, tuple[int, int]]:
    """The bucket and output size of an exact --size: a bucket itself, or k × a bucket (k = 2…4), which
    one-stage super-resolution draws: the model's large-noise steps at the bucket size, the rest at k×."""
    buckets = make_buckets(spec.buckets)
    try:
        return bucket_for_size(buckets, width, height), (width, height)
    except UsageError as exc:
        for k in range(2, MAX_UPSCALE + 1):
            for bucket in buckets:
                if (width, height) == (k * bucket.width, k * bucket.height):
                    return bucket, (width, height)
        raise UsageError(exc.message, f"{exc.hint}; or up to {MAX_UPSCALE}× one of them") from None


def resolve_output(spec: ModelSpec, ratio: str | None, size: str | None) -> tuple[Bucket, tuple[int, int]]:
    """The bucket (size conditioning) and the output (width, height) of --ratio / --size (default 1:1)."""
    if size and ratio:
        raise UsageError("--size and --ratio both given", "give one of them")
    if size:
        return output_for_size(spec, *parse_size(size))
    bucket = nearest_bucket(make_buckets(spec.buckets), ratio or 1.0)
    return bucket, (bucket.width, bucket.height)


def resolve_switch(value: float | None, default: int) -> int:
    """--switch takes a timestep (1…999) or a fraction of the schedule (0 < f < 1 → f·1000)."""
    if value is None:
        return default
    number = _number(value, "switch", float, 0, 1000)
    return int(round(number * 1000)) if 0 < number < 1 else int(number)


def resolve_styles(spec: ModelSpec, opts: Options) -> tuple[dict[str, float], float | None, str | None]:
    """Branch scales (model default unless --style given), plus a preset's guidance / negative."""
    if not opts.style:
        scales = dict(spec.sampling.get("styles", {}))
        if opts.style_scale is not None:
            factor = _number(opts.style_scale, "style-scale", float, 0)
            scales = {k: round(v * factor, 6) for k, v in scales.items()}
        return scales, None, None
    from pangu_cli import presets

    library = presets.load_presets()
    chosen = presets.parse_style_spec(opts.style, library)
    factor = 1.0 if opts.style_scale is None else _number(opts.style_scale, "style-scale", float, 0)
    resolved = presets.resolve_styles(chosen, library, factor)
    return {k: v for k, v in resolved.scales.items() if v}, resolved.guidance, resolved.negative


def check_options(opts: Options) -> None:
    """Validate what can be checked without a model (the options given; None is skipped), so that bad
    command-line input is a usage error before any model is looked up, and a batch does not blame
    every line for a bad flag."""
    from pangu_cli.ratios import parse_ratio

    if opts.prompt is not None:
        clean_prompt(opts.prompt)
    limits = {"count": (int, 1, MAX_COUNT), "steps": (int, 1, MAX_STEPS), "guidance": (float, 0, 100),
              "seed": (int, 0, 2**32 - 1), "style_scale": (float, 0, None)}
    for name, (kind, low, high) in limits.items():
        value = getattr(opts, name)
        if value is not None:
            _number(value, name.replace("_", "-"), kind, low, high)
    if opts.sampler is not None:
        resolve_sampler(opts.sampler)
    resolve_switch(opts.switch, 0)
    if opts.size and opts.ratio:
        raise UsageError("--size and --ratio both given", "give one of them")
    if opts.ratio:
        parse_ratio(opts.ratio)
    if opts.size:
        parse_size(opts.size)
    if opts.style:
        from pangu_cli import presets

        presets.parse_style_spec(opts.style, presets.load_presets())


def check_ensemble(spec: ModelSpec, opts: Options) -> None:
    """Validate `opts.ensemble` once against its models and the model's square bucket (a batch checks it
    before its lines, which then only differ in size)."""
    from pangu_cli import ensemble as ensembles
    from pangu_cli.models import registry

    checked = ensembles.ensemble_from_dict(opts.ensemble, "recipe")
    specs = ensembles.resolve_models(checked, spec, registry.resolve)
    _, size = resolve_output(spec, None, None)
    steps = int(opts.steps or spec.sampling.get("steps", 40))
    ensembles.plan_ensemble(checked, specs, size, steps)


def resolve(spec: ModelSpec, opts: Options, recipe: dict | None = None) -> list[ImageSettings]:
    """One ImageSettings per image (count of them), seeds base, base+1, …"""
    recipe = recipe or {}
    defaults = spec.sampling
    prompt = clean_prompt(opts.prompt if opts.prompt is not None else recipe.get("prompt"))
    count = _number(opts.count if opts.count is not None else 1, "count", int, 1, MAX_COUNT)
    steps = _number(opts.steps if opts.steps is not None else recipe.get("steps", defaults.get("steps", 40)),
                    "steps", int, 1, MAX_STEPS)
    sampler = resolve_sampler(opts.sampler or recipe.get("sampler") or defaults.get("sampler", "euler"))
    styles, preset_guidance, preset_negative = resolve_styles(spec, opts)
    if not opts.style and recipe.get("styles") is not None and opts.style_scale is None:
        styles = dict(recipe["styles"])
    guidance = opts.guidance if opts.guidance is not None else preset_guidance
    if guidance is None:
        guidance = recipe.get("guidance", defaults.get("guidance", 6.0))
    guidance = _number(guidance, "guidance", float, 0, 100)
    negative = opts.negative if opts.negative is not None else preset_negative
    if negative is None:
        negative = recipe.get("negative", defaults.get("negative", ""))
    if opts.ratio is None and opts.size is None and recipe.get("size"):
        bucket, (width, height) = output_for_size(spec, *recipe["size"])
    else:
        bucket, (width, height) = resolve_output(spec, opts.ratio, opts.size)
    ensemble = opts.ensemble if opts.ensemble is not None else recipe.get("ensemble")
    if ensemble is not None:
        if opts.switch is not None:
            raise UsageError("--switch does not apply to a recipe", "set each member's t range in the recipe")
        from pangu_cli import ensemble as ensembles
        from pangu_cli.models import registry

        checked = ensembles.ensemble_from_dict(ensemble, "recipe")
        specs = ensembles.resolve_models(checked, spec, registry.resolve)
        ensembles.plan_ensemble(checked, specs, (width, height), steps)  # sizes and coverage, before loading
        ensemble = checked.to_dict()
    switch_t = resolve_switch(opts.switch, int(recipe.get("switch", spec.switch_t)))
    seed = opts.seed if opts.seed is not None else recipe.get("seed")
    seed = secrets.randbelow(2**32) if seed is None else _number(seed, "seed", int, 0, 2**32 - 1)
    from pangu_cli.language import detect

    language = detect(prompt).lang
    base = ImageSettings(prompt=prompt, seed=seed, steps=steps, guidance=guidance, sampler=sampler,
                         width=width, height=height, bucket_index=bucket.index, model=spec.name,
                         negative=negative, styles=styles, switch_t=switch_t,
                         switch_lag=bool(defaults.get("switch_lag", True)), model_fingerprint=spec.fingerprint(),
                         language=language, ratio=bucket.label, ensemble=ensemble)
    images = []
    for i in range(count):
        settings = ImageSettings(**{**base.__dict__, "seed": (seed + i) % 2**32})
        images.append(settings)
    return images
