"""Style presets: named, bilingual bundles of style-branch scales (presets/*.toml).

PanGu-Draw 3.0 steers style with extra guidance branches: the same prompt with a trigger character in front,
D = D_u + s·(D_c − D_u) + Σ_k s_k·(D_k − D_c). A preset sets the scales s_k of the branches `art` (the
reference's "aesthetic", trigger 義), `anime` (饅) and `photo` (霙); a branch with scale 0 is not evaluated.

Packaged presets (scales chosen to match the reference's only default, aesthetic 4.0, in magnitude):
  art 4.0 (= the reference default) · anime 4.0 · photo 4.0 · illustration art 2.0 + anime 2.0 · none.
A user folder ($XDG_CONFIG_HOME/pangu/presets, else ~/.config/pangu/presets) may add presets or replace
packaged ones with the same name.

File format:
    name = "anime"                       # required; what --style takes
    aliases = ["动漫", "cartoon"]         # optional; matched case-insensitively
    guidance = 6.0                       # optional; classifier-free guidance scale, 0..100
    negative = "photo, realistic"        # optional; negative prompt
    [description]                        # optional; en / zh
    en = "…"
    zh = "…"
    [styles]                             # branch scales ≥ 0; missing branches are 0
    anime = 4.0
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pangu_cli.errors import UsageError

# Branch name → trigger prefix (character + ASCII space) fed to both text encoders, in the reference's
# branch order, which the guidance batch keeps.
STYLE_BRANCHES: dict[str, str] = {"art": "義 ", "anime": "饅 ", "photo": "霙 "}
MAX_GUIDANCE = 100.0  # the reference clamps the guidance scale to [0, 100]

_TOP_LEVEL_FIELDS = {"name", "aliases", "description", "styles", "guidance", "negative"}
_DESCRIPTION_LANGS = ("en", "zh")
# Names go into `--style a=0.5,b`: no separators, no whitespace.
_BAD_NAME = re.compile(r"[\s=,]")
_FIX_HINT = "fix the file or remove it"
_SPEC_HINT = "write --style NAME or --style NAME=WEIGHT, several as --style anime=0.6,photo=0.3"


@dataclass(frozen=True)
class Preset:
    name: str
    styles: dict[str, float]  # every branch of STYLE_BRANCHES, 0.0 when unset
    aliases: tuple[str, ...] = ()
    description: dict[str, str] = field(default_factory=dict)
    guidance: float | None = None
    negative: str | None = None
    source: str = ""  # the file it came from

    def describe(self, lang: str = "en") -> str:
        return self.description.get(lang) or self.description.get("en") or self.description.get("zh", "")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "description": dict(self.description),
            "styles": dict(self.styles),
            "guidance": self.guidance,
            "negative": self.negative,
            "source": self.source,
        }


@dataclass(frozen=True)
class ResolvedStyle:
    """The outcome of the chosen presets: branch scales plus guidance / negative where a preset sets them."""

    scales: dict[str, float]  # every branch, in STYLE_BRANCHES order
    guidance: float | None = None
    negative: str | None = None
    spec: dict[str, float] = field(default_factory=dict)  # canonical preset name → weight, as resolved

    def active(self) -> list[tuple[str, str, float]]:
        """(branch, trigger prefix, scale) of the branches to evaluate, in the reference's order."""
        return [(b, STYLE_BRANCHES[b], s) for b, s in self.scales.items() if s > 0]

    def to_dict(self) -> dict:
        return {
            "scales": dict(self.scales),
            "guidance": self.guidance,
            "negative": self.negative,
            "spec": dict(self.spec),
        }


# ---------------------------------------------------------------------------------------------------------
# Loading and validation


def user_preset_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "pangu" / "presets"


def _fail(source: str, field_name: str | None, problem: str, hint: str | None = None) -> UsageError:
    where = f"preset file {source}" + (f", field '{field_name}'" if field_name else "")
    return UsageError(f"{where}: {problem}", hint or _FIX_HINT)


def _number(value: object, source: str, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(source, field_name, f"must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0:
        raise _fail(source, field_name, f"must be a number ≥ 0, got {value!r}")
    return float(value)


def _name(value: object, source: str, field_name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(source, field_name, f"must be a non-empty string, got {value!r}")
    if _BAD_NAME.search(value):
        raise _fail(source, field_name, f"{value!r} may not contain spaces, '=' or ','")
    return value


def parse_preset(text: str, source: str) -> Preset:
    """Validate one preset file's text; errors name `source` and the offending field (or line)."""
    import tomllib  # here, not at the top: `pangu --help` should not pay for it

    try:
        data = tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        reason = str(exc)
        match = re.search(r"\(at line (\d+), column (\d+)\)", reason)
        where = f"line {match.group(1)}" if match else "end of file"
        problem = reason[: match.start()].strip() if match else re.sub(r"\s*\(at end of document\)", "", reason)
        raise UsageError(f"preset file {source}, {where}: TOML syntax error: {problem}", _FIX_HINT)

    unknown = sorted(set(data) - _TOP_LEVEL_FIELDS)
    if unknown:
        raise _fail(source, unknown[0], "unknown field", f"allowed fields: {', '.join(sorted(_TOP_LEVEL_FIELDS))}")
    if "name" not in data:
        raise _fail(source, "name", "missing", 'add e.g. name = "my-style"')
    name = _name(data["name"], source, "name")

    aliases = data.get("aliases", [])
    if not isinstance(aliases, list):
        raise _fail(source, "aliases", f"must be a list of strings, got {aliases!r}")
    aliases = tuple(_name(alias, source, f"aliases[{i}]") for i, alias in enumerate(aliases))

    description = data.get("description", {})
    if not isinstance(description, dict):
        raise _fail(source, "description", "must be a table with en = … and zh = …")
    for key, value in description.items():
        if key not in _DESCRIPTION_LANGS:
            raise _fail(source, f"description.{key}", "unknown language", "use en and zh")
        if not isinstance(value, str):
            raise _fail(source, f"description.{key}", f"must be a string, got {value!r}")

    styles = data.get("styles", {})
    if not isinstance(styles, dict):
        raise _fail(source, "styles", "must be a table of branch = scale")
    for branch in styles:
        if branch not in STYLE_BRANCHES:
            raise _fail(source, f"styles.{branch}", "unknown style branch", f"use {', '.join(STYLE_BRANCHES)}")
    scales = {branch: _number(styles.get(branch, 0.0), source, f"styles.{branch}") for branch in STYLE_BRANCHES}

    guidance = data.get("guidance")
    if guidance is not None:
        guidance = _number(guidance, source, "guidance")
        if guidance > MAX_GUIDANCE:
            raise _fail(source, "guidance", f"must be at most {MAX_GUIDANCE:g}, got {guidance:g}")
    negative = data.get("negative")
    if negative is not None and not isinstance(negative, str):
        raise _fail(source, "negative", f"must be a string, got {negative!r}")

    return Preset(
        name=name,
        styles=scales,
        aliases=aliases,
        description=dict(description),
        guidance=guidance,
        negative=negative or None,
        source=source,
    )


def _read_folder(files: Iterable, origin: str) -> dict[str, Preset]:
    found: dict[str, Preset] = {}
    for entry in sorted(files, key=lambda f: f.name):
        if not (entry.name.endswith(".toml") and entry.is_file()):
            continue
        source = str(entry)
        try:
            text = entry.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(source, None, "is not UTF-8 text", "save it as UTF-8") from None
        except OSError as exc:
            raise _fail(source, None, f"cannot be read ({exc.strerror or exc})", "check its permissions") from None
        preset = parse_preset(text, source)
        key = preset.name.casefold()
        if key in found:
            other = found[key].source
            raise _fail(source, "name", f"{preset.name!r} is also defined in {other}", f"rename one ({origin})")
        found[key] = preset
    return found


def _check_aliases(presets: Mapping[str, Preset]) -> None:
    owners: dict[str, Preset] = {name.casefold(): preset for name, preset in presets.items()}
    for preset in presets.values():
        for alias in preset.aliases:
            key = alias.casefold()
            owner = owners.setdefault(key, preset)
            if owner is not preset:
                raise _fail(
                    preset.source,
                    "aliases",
                    f"alias {alias!r} is already taken by preset {owner.name!r} ({owner.source})",
                    "choose another alias, or name the preset the same to replace the other one",
                )


def load_presets(user_dir: str | os.PathLike | None = None) -> dict[str, Preset]:
    """Packaged presets, then the user folder's; a user preset replaces a packaged one of the same name."""
    from importlib import resources

    packaged = _read_folder(resources.files("pangu_cli").joinpath("presets").iterdir(), "packaged presets")
    folder = Path(user_dir) if user_dir is not None else user_preset_dir()
    user = _read_folder(folder.iterdir(), str(folder)) if folder.is_dir() else {}
    merged = {**packaged, **user}
    presets = {preset.name: preset for preset in merged.values()}
    _check_aliases(presets)
    return presets


def get_preset(name: str, presets: Mapping[str, Preset] | None = None) -> Preset:
    """Look a preset up by name or alias, case-insensitively."""
    presets = load_presets() if presets is None else presets
    key = name.strip().casefold()
    for preset in presets.values():
        if key == preset.name.casefold() or key in (alias.casefold() for alias in preset.aliases):
            return preset
    raise UsageError(f"unknown style {name!r}", _available_hint(name, presets))


def _available_hint(name: str, presets: Mapping[str, Preset]) -> str:
    ordered = sorted(presets.values(), key=lambda p: p.name)
    listing = ", ".join(f"{p.name} ({', '.join(p.aliases)})" if p.aliases else p.name for p in ordered)
    import difflib  # only on this error path

    choices = {n.casefold(): p.name for p in presets.values() for n in (p.name, *p.aliases)}
    close = difflib.get_close_matches(name.strip().casefold(), list(choices), n=1)
    guess = f"did you mean {choices[close[0]]!r}? " if close else ""
    return f"{guess}available styles: {listing}"


# ---------------------------------------------------------------------------------------------------------
# --style parsing and resolution


def parse_style_spec(values: Iterable[str], presets: Mapping[str, Preset] | None = None) -> dict[str, float]:
    """`["anime", "photo=0.3"]` or `["anime=0.6,photo=0.3"]` → {canonical name: weight}; weights default 1."""
    presets = load_presets() if presets is None else presets
    spec: dict[str, float] = {}
    for value in values:
        items = [item.strip() for item in value.replace("，", ",").split(",")]
        if not any(items):
            raise UsageError(f"empty --style value {value!r}", _SPEC_HINT)
        for item in filter(None, items):
            name, has_weight, weight_text = (part.strip() for part in item.partition("="))
            preset = get_preset(name, presets) if name else None
            if preset is None:
                raise UsageError(f"--style {item!r} has no style name", _SPEC_HINT)
            weight = 1.0
            if has_weight:
                try:
                    weight = float(weight_text)
                except ValueError:
                    raise UsageError(f"--style {item!r}: {weight_text!r} is not a number", _SPEC_HINT) from None
                if not math.isfinite(weight) or weight < 0:
                    raise UsageError(f"--style {item!r}: the weight must be a number ≥ 0", _SPEC_HINT)
            if preset.name in spec:
                raise UsageError(f"style {preset.name!r} is given twice in --style", "give each style once")
            spec[preset.name] = weight
    return spec


def resolve_styles(
    spec: Mapping[str, float], presets: Mapping[str, Preset] | None = None, style_scale: float = 1.0
) -> ResolvedStyle:
    """Branch scale = Σ over chosen presets of weight · preset scale · style_scale.

    Guidance: the last preset in `spec` order (weight > 0) that sets one wins; the CLI's explicit
    --guidance beats any preset. Negative prompts of the chosen presets (weight > 0) are joined with ", " in
    order, duplicates dropped; an explicit --negative replaces them (the CLI decides).
    """
    presets = load_presets() if presets is None else presets
    if not math.isfinite(style_scale) or style_scale < 0:
        raise UsageError(f"style scale {style_scale} must be a number ≥ 0", "e.g. 0.5 halves every style")
    totals = dict.fromkeys(STYLE_BRANCHES, 0.0)
    guidance: float | None = None
    negatives: list[str] = []
    resolved_spec: dict[str, float] = {}
    for name, weight in spec.items():
        preset = get_preset(name, presets)
        resolved_spec[preset.name] = weight
        for branch in STYLE_BRANCHES:
            totals[branch] += weight * preset.styles[branch] * style_scale
        if weight > 0:
            guidance = preset.guidance if preset.guidance is not None else guidance
            if preset.negative and preset.negative not in negatives:
                negatives.append(preset.negative)
    # Rounded so that 0.6 · 4.0 is stored as 2.4 in metadata, not 2.4000000000000004.
    scales = {branch: round(total, 6) for branch, total in totals.items()}
    negative = ", ".join(negatives) or None
    return ResolvedStyle(scales=scales, guidance=guidance, negative=negative, spec=resolved_spec)
