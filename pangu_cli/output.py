"""PNG output: file names, atomic writes and the recipe embedded in every image.

Naming
    `render_name(template, fields)` fills a template such as ``{date}-{seed}-{slug}.png``; the valid
    placeholders are the keys of `NAME_FIELDS` and Python format specs work (``{index:04}``). A ``/`` in
    the template makes sub-folders. Every piece of the result is made safe for Linux, macOS and Windows.
    `plan_output_path` turns ``--out`` (a folder or a ``.png`` path) into the path to write, never
    choosing an existing file unless asked to overwrite.

Writing
    `write_png` encodes to a hidden temp file in the destination folder (``.<name>.tmp-<pid>-<hex>``),
    fsyncs it and publishes it with a hard link (no overwrite: fails if the name appeared meanwhile) or
    `os.replace` (overwrite). A crash therefore never leaves a partial ``*.png``; `clean_stale_temps`
    removes the hidden leftovers of a killed process.

Metadata (two text chunks, both derived from one recipe dict)
    ``parameters``  AUTOMATIC1111 text, read by A1111, ComfyUI, CivitAI, Fooocus (tEXt, or iTXt when the
                    text is not Latin-1, e.g. any Chinese prompt).
    ``pangu``       compact JSON of the whole recipe with ``"schema": "pangu.image/1"`` (iTXt, UTF-8):
                    the source of truth for ``pangu draw --from``.
    Recipe keys pangu writes: prompt, negative, language, seed, steps, sampler, guidance, styles
    ({name: scale}), style (preset name), size ([w, h]), ratio, model, model_hash, switch, version;
    any other JSON-serialisable key is stored as given. Nothing time-dependent is added, so the same
    pixels and recipe always give the same bytes (keep creation times and timings out of the recipe if
    ``draw --from`` is to reproduce a file byte for byte). `recipe=None` writes no metadata at all.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import string
import tempfile
import time
import unicodedata
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from pangu_cli import __version__
from pangu_cli.errors import PanguError, UsageError

SCHEMA = "pangu.image/1"
RECIPE_CHUNK = "pangu"
A1111_CHUNK = "parameters"
DEFAULT_TEMPLATE = "{date}-{seed}-{slug}.png"

NAME_FIELDS: dict[str, str] = {
    "date": "local date, YYYYMMDD",
    "time": "local time, HHMMSS",
    "seed": "the image's seed",
    "slug": "filename-safe prompt summary (CJK kept, at most 80 bytes)",
    "index": "1-based number of the image within the run",
    "count": "number of images in the run",
    "id": "batch job id",
    "model": "model name",
    "width": "image width in pixels",
    "height": "image height in pixels",
    "ratio": "aspect ratio, e.g. 16x9",
    "lang": "detected prompt language: zh, en or mixed",
    "style": "style preset name",
    "steps": "sampling steps",
    "sampler": "sampler name",
}

# 255 bytes is the usual per-name limit; the margin leaves room for "-N" suffixes and the temp prefix.
MAX_NAME_BYTES = 200
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)}
_UNSAFE_CHARS = re.compile(r'[<>:"|?*\\\x00-\x1f\x7f]')
_OTHER_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".jxl", ".heic"}
_TEMP_MARK = ".tmp-"
_FOLDERS_IN_OUT = "put folders in --out, not in the name"
_FIX_PERMISSIONS = "choose another --out or fix its permissions"


# ----------------------------------------------------------------------------------------------- naming


def slugify(prompt: str, max_bytes: int = 80) -> str:
    """A filename-safe summary of `prompt`: letters and digits of any script, runs of anything else
    become one "-", lower case, at most `max_bytes` UTF-8 bytes (cut on a character boundary), never
    empty ("image") and never a reserved Windows name."""
    if max_bytes < 8:
        raise ValueError("max_bytes must be at least 8")
    # NFKC folds full-width letters and digits (ＡＢＣ１) to ASCII and splits ligatures.
    text = unicodedata.normalize("NFKC", prompt or "")
    out: list[str] = []
    gap = False
    after_letter = False
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "'’‘`" or _is_invisible(ch):
            continue  # "don't" → "dont"; variation selectors, ZWJ, emoji modifiers vanish
        if cat[0] in "LN" or ch == "_":
            if gap and out:
                out.append("-")
            gap = False
            out.append(ch)
            after_letter = True
        elif cat in ("Mn", "Mc") and after_letter:
            out.append(ch)  # combining marks belong to the letter before (Devanagari, Thai, accents)
        else:
            gap = True  # spaces, punctuation, symbols, emoji, control characters, path separators
            after_letter = False
    slug = "".join(out).lower()
    slug = _truncate_utf8(slug, max_bytes, prefer_break="-").strip("-_")
    if not slug:
        return "image"
    if slug.upper() in _WINDOWS_RESERVED:
        slug += "_"
    return slug


def _is_invisible(ch: str) -> bool:
    code = ord(ch)
    return (
        0xFE00 <= code <= 0xFE0F  # variation selectors (emoji presentation)
        or 0xE0100 <= code <= 0xE01EF
        or 0x1F3FB <= code <= 0x1F3FF  # skin tones
        or unicodedata.category(ch) in ("Cf", "Me")  # ZWJ, tags, enclosing keycap
    )


def _truncate_utf8(text: str, max_bytes: int, prefer_break: str | None = None) -> str:
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    cut = data[:max_bytes].decode("utf-8", "ignore")  # drops a character split in half
    if prefer_break:
        at = cut.rfind(prefer_break)
        if at >= len(cut) // 2:  # end on a word boundary when one is near the end
            cut = cut[:at]
    return cut


def render_name(template: str, fields: Mapping[str, Any]) -> str:
    """Fill `template` with `fields`; returns a relative POSIX path ending in ``.png``.

    Placeholders must be keys of `NAME_FIELDS`; a placeholder whose field is missing or None renders
    empty. Characters that are unsafe in file names are replaced by "-".
    """
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise UsageError(
            f"bad name template {template!r}: {exc}", "write placeholders as {seed} and literal braces as {{ }}"
        ) from None
    rendered: list[str] = []
    for literal, name, spec, conversion in pieces:
        rendered.append(literal.replace("\\", "/"))
        if name is None:
            continue
        if name not in NAME_FIELDS:
            raise UsageError(
                f"unknown placeholder {{{name}}} in name template {template!r}",
                "valid placeholders: " + ", ".join("{" + k + "}" for k in NAME_FIELDS),
            )
        if conversion or "{" in (spec or ""):
            raise UsageError(
                f"placeholder {{{name}}} in {template!r}: only format specs like {{index:04}} are supported"
            )
        value = fields.get(name)
        if value is None:
            value = ""
        try:
            text = format(value, spec or "")
        except (ValueError, TypeError) as exc:
            raise UsageError(
                f"placeholder {{{name}:{spec}}} cannot format {value!r}: {exc}",
                "use a spec that suits the value, e.g. {index:04} or {seed:010}",
            ) from None
        rendered.append(text.replace("/", "-").replace("\\", "-"))
    return _safe_relative_name("".join(rendered), template)


def _safe_relative_name(name: str, template: str) -> str:
    if name.startswith("/"):
        raise UsageError(f"name template {template!r} gives an absolute path", _FOLDERS_IN_OUT)
    parts = [p for p in name.split("/") if p != ""]
    if any(p.strip() in (".", "..") for p in parts):
        raise UsageError(f"name template {template!r} contains '.' or '..'", _FOLDERS_IN_OUT)
    if not parts:
        parts = ["image"]
    *folders, filename = parts
    folders = [_safe_component(p) or "_" for p in folders]
    stem, suffix = _split_png_suffix(filename, template)
    stem = _safe_component(stem) or "image"
    stem = _truncate_utf8(stem, MAX_NAME_BYTES - len(suffix)).rstrip(" .") or "image"
    return "/".join([*folders, stem + suffix])


def _split_png_suffix(filename: str, template: str) -> tuple[str, str]:
    lower = filename.lower()
    if lower.endswith(".png"):
        return filename[:-4], filename[-4:]
    for other in _OTHER_IMAGE_SUFFIXES:
        if lower.endswith(other):
            raise UsageError(
                f"name template {template!r} asks for {other}, but pangu writes PNG only",
                "end it in .png",
            )
    return filename, ".png"


def _safe_component(part: str) -> str:
    """One file or folder name that Windows, macOS and Linux all accept."""
    part = unicodedata.normalize("NFC", part)
    part = "".join(ch for ch in part if unicodedata.category(ch) not in ("Cc", "Cf"))
    part = _UNSAFE_CHARS.sub("-", part)
    # No hidden files, no names that look like command-line options; Windows drops trailing dots/spaces.
    part = part.strip().lstrip(".-").rstrip(" .")
    if part.split(".")[0].strip().upper() in _WINDOWS_RESERVED:
        part = "_" + part
    return _truncate_utf8(part, MAX_NAME_BYTES)


def name_fields(
    recipe: Mapping[str, Any],
    *,
    index: int = 1,
    count: int = 1,
    job_id: str | None = None,
    prompt: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The template fields for one image. `prompt` overrides the text slugged (e.g. the prompt as typed,
    before style expansion); `now` defaults to the current local time."""
    now = now or datetime.now()
    size = recipe.get("size") or (None, None)
    style = recipe.get("style")
    if isinstance(style, (list, tuple)):
        style = "+".join(str(s) for s in style)
    ratio = recipe.get("ratio")
    return {
        "date": now.strftime("%Y%m%d"),
        "time": now.strftime("%H%M%S"),
        "seed": recipe.get("seed"),
        "slug": slugify(prompt if prompt is not None else str(recipe.get("prompt", ""))),
        "index": index,
        "count": count,
        "id": job_id,
        "model": recipe.get("model"),
        "width": size[0],
        "height": size[1],
        "ratio": str(ratio).replace(":", "x") if ratio else None,
        "lang": recipe.get("language"),
        "style": style or None,
        "steps": recipe.get("steps"),
        "sampler": recipe.get("sampler"),
    }


# ------------------------------------------------------------------------------------------ path plans


def resolve_target(
    out: str | os.PathLike | None, template: str, fields: Mapping[str, Any], multiple: bool = False
) -> tuple[Path, bool]:
    """Where the image would go before collision handling: (path, explicit).

    `out` is a folder when it is None (the current folder), an existing folder, ends in a path
    separator or has no ``.png`` suffix; the template is rendered inside it (explicit=False).
    Otherwise it is the file itself (explicit=True); with `multiple` images ``-{index}`` goes before
    the suffix.
    """
    if out is None:
        return Path(render_name(template, fields)), False
    text = os.fspath(out)
    path = Path(text).expanduser()
    is_folder = text.endswith(("/", os.sep)) or path.is_dir() or path.suffix.lower() != ".png"
    if is_folder:
        if path.suffix.lower() in _OTHER_IMAGE_SUFFIXES:
            raise UsageError(f"--out {text}: pangu writes PNG only", "use a .png name or a folder")
        return path / render_name(template, fields), False
    if multiple:
        if fields.get("index") is None:
            raise ValueError("several images to one --out file need fields['index']")
        path = path.with_name(f"{path.stem}-{fields['index']}{path.suffix}")
    return path, True


def numbered_variants(path: Path) -> Iterator[Path]:
    """path, then name-1.png, name-2.png, … (the order in which free names are tried)."""
    yield path
    n = 1
    while True:
        yield path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1


def plan_output_path(
    out: str | os.PathLike | None,
    template: str,
    fields: Mapping[str, Any],
    overwrite: bool = False,
    multiple: bool = False,
) -> Path:
    """The path to write one image to. Never an existing file unless `overwrite`: an explicit file
    path that exists is a UsageError, a templated name gets the first free ``-N`` suffix."""
    base, explicit = resolve_target(out, template, fields, multiple)
    check_writable_folder(base.parent)
    if base.is_dir():
        raise UsageError(f"{base} is a folder", "choose another --out or name template")
    if overwrite or not os.path.lexists(base):
        return base
    if explicit:
        raise UsageError(f"{base} exists", "use --overwrite or another --out")
    return next(p for p in numbered_variants(base) if not os.path.lexists(p))


def check_writable_folder(folder: Path) -> None:
    """UsageError unless `folder` exists and is writable, or could be created."""
    folder = Path(folder) if str(folder) else Path(".")
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot create folder {folder}: {probe} is a file", "choose another --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"folder {probe} is not writable", _FIX_PERMISSIONS)
    # os.access says yes to root everywhere (even /proc); creating a file is the real test.
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise UsageError(f"folder {probe} is not writable ({exc.strerror})", _FIX_PERMISSIONS) from None


# --------------------------------------------------------------------------------------------- writing


def encode_png(pixels: np.ndarray, recipe: Mapping[str, Any] | None) -> bytes:
    """PNG bytes for uint8 (H, W, 3) `pixels` with the recipe chunks (none when `recipe` is None)."""
    array = np.asarray(pixels)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"pixels must be uint8 of shape (H, W, 3), got {array.dtype} {array.shape}")
    image = Image.fromarray(np.ascontiguousarray(array))
    info = None
    if recipe is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text(A1111_CHUNK, format_a1111(recipe))  # Pillow switches to iTXt for non-Latin-1
        info.add_itxt(RECIPE_CHUNK, recipe_json(recipe))
    buffer = io.BytesIO()
    # Pillow writes no tIME chunk and zlib is deterministic: same input, same bytes.
    image.save(buffer, format="PNG", pnginfo=info, compress_level=6)
    return buffer.getvalue()


def write_png(
    path: str | os.PathLike, pixels: np.ndarray, recipe: Mapping[str, Any] | None, overwrite: bool = False
) -> Path:
    """Write atomically; returns the path. Without `overwrite` an existing file is never replaced:
    `FileExistsError` is raised (also when another process took the name meanwhile)."""
    path = Path(path)
    data = encode_png(pixels, recipe)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create folder {folder}: {exc.strerror}", "choose another --out") from None
    tmp = folder / f".{_truncate_utf8(path.name, MAX_NAME_BYTES)}{_TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _publish(tmp, path, overwrite)
    except PermissionError:
        raise UsageError(f"folder {folder} is not writable", _FIX_PERMISSIONS) from None
    except FileExistsError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PanguError(f"could not write {path}: {reason}", "check free space and the folder") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # after a hard link, or after any failure; gone already after os.replace
    _fsync_folder(folder)  # make the new name durable before anyone records it in a manifest
    return path


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic and never clobbers: EEXIST if the name exists
    except FileExistsError:
        raise
    except OSError:
        # File systems without hard links (FAT, some network shares): rename fails on an existing
        # target on Windows; on POSIX there is a small window between the check and the rename.
        if os.name != "nt" and os.path.lexists(path):
            raise FileExistsError(path) from None
        os.rename(tmp, path)


def _fsync_folder(folder: Path) -> None:
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_png(
    out: str | os.PathLike | None,
    template: str,
    fields: Mapping[str, Any],
    pixels: np.ndarray,
    recipe: Mapping[str, Any] | None,
    overwrite: bool = False,
    multiple: bool = False,
) -> Path:
    """plan_output_path + write_png, retrying with the next free name when another process takes
    the planned one between planning and publishing."""
    for _ in range(1000):
        path = plan_output_path(out, template, fields, overwrite, multiple)
        try:
            return write_png(path, pixels, recipe, overwrite)
        except FileExistsError:
            if resolve_target(out, template, fields, multiple)[1]:
                raise UsageError(f"{path} exists", "use --overwrite or another --out") from None
    raise UsageError(f"no free file name next to {path}", "use another --out or name template")


def clean_stale_temps(folder: str | os.PathLike, min_age_s: float = 60.0, recursive: bool = False) -> list[Path]:
    """Remove ``.<name>.tmp-*`` files left by a killed writer; returns what was removed. Files younger
    than `min_age_s` are kept: they may belong to a writer that is still running."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f".*{_TEMP_MARK}*"
    candidates = folder.rglob(pattern) if recursive else folder.glob(pattern)
    removed = []
    now = time.time()
    for path in candidates:
        with contextlib.suppress(OSError):
            if path.is_file() and now - path.stat().st_mtime >= min_age_s:
                path.unlink()
                removed.append(path)
    return removed


# -------------------------------------------------------------------------------------------- metadata


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"recipe value {value!r} is not JSON-serialisable")


def recipe_json(recipe: Mapping[str, Any]) -> str:
    """The canonical compact JSON stored in the ``pangu`` chunk (sorted keys, UTF-8, schema set)."""
    data = {**recipe, "schema": SCHEMA}
    return json.dumps(
        data, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_json_default
    )


# AUTOMATIC1111 keys in the order A1111 writes them; pangu extras follow.
_A1111_CORE = (
    ("steps", "Steps"),
    ("sampler", "Sampler"),
    ("guidance", "CFG scale"),
    ("seed", "Seed"),
    ("size", "Size"),
    ("model", "Model"),
    ("model_hash", "Model hash"),
)
_CORE_LABELS = {label: key for key, label in _A1111_CORE}
_EXTRA_FIRST = ("style", "styles", "ratio", "language", "switch")
_NOT_A1111 = {"schema", "prompt", "negative", "version"}
_SAFE_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9 ]*$")
# The pattern A1111 itself parses with (modules/infotext_utils.py).
_A1111_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_VERSION_PREFIX = "pangu "
_TEXT_KEYS = {"sampler", "model", "model_hash"}  # a hash such as 12345678 stays text


def _label(key: str) -> str:
    return key.replace("_", " ").capitalize()


def _key(label: str) -> str:
    return label.strip().lower().replace(" ", "_").replace("-", "_").replace("/", "_")


def _a1111_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    text = repr(value) if isinstance(value, float) else str(value)
    if text == "":
        return None
    if any(c in text for c in ",:\n") or text.startswith('"') or text != text.strip():
        text = json.dumps(text, ensure_ascii=False)
    return text


def format_a1111(recipe: Mapping[str, Any]) -> str:
    """The AUTOMATIC1111 ``parameters`` text for `recipe`: prompt, ``Negative prompt:`` line (when
    there is one), then ``Steps: 40, Sampler: Euler, CFG scale: 6.0, Seed: 42, Size: 1024x1024, …``."""
    pairs: list[tuple[str, str | None]] = []
    for key, label in _A1111_CORE:
        value = recipe.get(key)
        if key == "size" and value is not None:
            value = f"{int(value[0])}x{int(value[1])}"
        pairs.append((label, _a1111_value(value)))
    extras = [k for k in _EXTRA_FIRST if k in recipe] + sorted(
        k for k in recipe if k not in _EXTRA_FIRST and k not in _NOT_A1111 and k not in dict(_A1111_CORE)
    )
    for key in extras:
        value = recipe[key]
        if key == "styles" and isinstance(value, Mapping):
            odd = {}
            for name, scale in value.items():
                label = _label(str(name)) + " scale"
                if _SAFE_LABEL.match(label) and label not in _CORE_LABELS:
                    pairs.append((label, _a1111_value(scale)))
                else:
                    odd[str(name)] = scale
            if odd:
                pairs.append(("Styles", _a1111_value(json.dumps(odd, ensure_ascii=False, default=_json_default))))
            continue
        if key == "style" and isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value)
        label = _label(key)
        if not _SAFE_LABEL.match(label) or label in _CORE_LABELS or label == "Styles":
            continue
        if isinstance(value, (str, int, float, bool, np.generic)):
            pairs.append((label, _a1111_value(value)))
    pairs.append(("Version", _VERSION_PREFIX + str(recipe.get("version") or __version__)))
    lines = [str(recipe.get("prompt") or "")]
    negative = recipe.get("negative")
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{label}: {value}" for label, value in pairs if value is not None))
    return "\n".join(lines)


def parse_a1111(text: str) -> dict[str, Any]:
    """Best-effort inverse of `format_a1111` that also reads other tools' ``parameters`` text.

    Follows A1111's own parser: the last line holds the ``Key: value`` pairs if it has at least three;
    lines before ``Negative prompt:`` are the prompt, lines after it the negative prompt. Known labels map
    to recipe keys (CFG scale → guidance, Size → size [w, h], ``<Name> scale`` → styles[name], Version
    ``pangu X`` → version X); other labels become snake_case keys, with numbers converted. Whitespace at
    line ends is lost, as in A1111.
    """
    *lines, last = text.strip().split("\n")
    if len(_A1111_PAIR.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    recipe: dict[str, Any] = {"prompt": "\n".join(prompt), "negative": "\n".join(negative)}
    styles: dict[str, float] = {}
    for label, raw in _A1111_PAIR.findall(last):
        label = label.strip()
        value: Any = raw.strip()
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        if label == "Size":
            match = re.fullmatch(r"(\d+)x(\d+)", str(value))
            recipe["size"] = [int(match[1]), int(match[2])] if match else value
        elif label == "Version":
            value = str(value)
            recipe["version"] = value[len(_VERSION_PREFIX):] if value.startswith(_VERSION_PREFIX) else value
        elif label == "Styles":
            with contextlib.suppress(json.JSONDecodeError, TypeError):
                styles.update({k: float(v) for k, v in json.loads(value).items()})
        elif label in _CORE_LABELS:
            key = _CORE_LABELS[label]
            recipe[key] = str(value) if key in _TEXT_KEYS else _typed(value)
        elif label.endswith(" scale") and "cfg" not in label.lower():
            scale = _typed(value)
            styles[_key(label[: -len(" scale")])] = float(scale) if isinstance(scale, (int, float)) else scale
        else:
            recipe[_key(label)] = _typed(value)
    if styles:
        recipe["styles"] = styles
    for key in ("steps", "seed"):
        if isinstance(recipe.get(key), float) and recipe[key].is_integer():
            recipe[key] = int(recipe[key])
    if isinstance(recipe.get("guidance"), int):
        recipe["guidance"] = float(recipe["guidance"])
    return recipe


def _typed(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if re.fullmatch(r"[+-]?\d+", value):
        return int(value)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?", value):
        return float(value)
    if value in ("True", "False"):
        return value == "True"
    return value


def read_metadata(path: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """(recipe, source) of a PNG; source is "pangu" (the JSON chunk) or "parameters" (A1111 text)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file", "check the path")
    try:
        with Image.open(path) as image:
            kind = image.format
            text = dict(image.text) if kind == "PNG" else {}
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise UsageError(f"{path} is not an image that can be read", "pass a PNG written by pangu") from None
    if kind != "PNG":
        raise UsageError(f"no pangu recipe in {path} ({kind} file)", "pass a PNG written by pangu")
    raw = text.get(RECIPE_CHUNK)
    if raw:
        try:
            recipe = json.loads(str(raw))
        except json.JSONDecodeError:
            recipe = None
        if isinstance(recipe, dict) and str(recipe.get("schema", "")).startswith("pangu.image/"):
            return recipe, "pangu"
    params = text.get(A1111_CHUNK)
    if params:
        return parse_a1111(_rescue_utf8(params)), "parameters"
    raise UsageError(f"no pangu recipe in {path}", "it carries neither a 'pangu' nor a 'parameters' text chunk")


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The recipe stored in a PNG: the ``pangu`` JSON, else parsed A1111 ``parameters`` (see
    `parse_a1111`); UsageError "no pangu recipe in FILE" when it has neither."""
    return read_metadata(path)[0]


def _rescue_utf8(value: str) -> str:
    """stable-diffusion.cpp writes raw UTF-8 into tEXt, which Pillow decodes as Latin-1 mojibake."""
    if isinstance(value, PngImagePlugin.iTXt) or all(ord(c) < 0x80 for c in value):
        return str(value)
    with contextlib.suppress(UnicodeError):
        return value.encode("latin-1").decode("utf-8")
    return str(value)
