"""Batch input (prompt files), sharding, per-image seeds and resumable runs.

Prompt files (`read_jobs`)
    txt    one prompt per line; blank lines and lines starting with "#" are skipped ("\\#" keeps a
           leading "#"); the whole line is the prompt.
    jsonl  one JSON object per line: "prompt" required, optional "id" and the overrides in
           `OPTION_TYPES`; blank and "#" lines are skipped. Any other key is an error for that line.
    csv    a header row naming the columns ("prompt" required, others from `OPTION_TYPES` or "id");
           cells may be quoted (commas, newlines); empty cells mean "not set".
    The format comes from the extension (.txt, .jsonl/.ndjson, .csv) or, for stdin and other names,
    from the content: a first line starting with "{" is JSONL, a header of known column names
    including "prompt" is CSV, anything else is text.
    Encoding: UTF-8 with or without BOM (UTF-16 with a BOM is read too); CRLF and CR line ends are
    fine. A file that is not UTF-8 but reads cleanly as Chinese GB18030/GBK is accepted with a warning
    in `JobList.warnings`; anything else is a UsageError naming the line of the first bad byte. An
    explicit `encoding` skips the guessing.
    A bad line becomes a `JobError` in `JobList.errors` while the other lines load; `JobList.check(
    strict=True)` turns them into a UsageError.

Seeds (`job_seed`)
    A seed given on the line wins: image i of that job gets seed + i. Otherwise image i of job j
    gets base_seed + j.index * stride + i, where stride is the run's images-per-prompt (--count).
    Seeds are taken modulo 2**32. job.index is the position among valid prompts, so seeds do not
    depend on sharding, but inserting a line before others moves their seeds (pin "seed" per line to
    avoid that).

Resumable runs (`Manifest`, `Completed`, `job_key`, `find_adoptable`)
    Every image that is published gets one JSON line in <out>/.pangu/manifest.jsonl (or
    manifest-<rank>.jsonl: one file per writing process). The line is written with a single write +
    fsync after the PNG is in place, so a crash can leave an image without a line, never a line
    without an image. A re-run computes `job_key` for each image, skips keys that `Completed` knows
    (record present AND file present), and before generating checks `find_adoptable`: an existing file
    at the planned name whose embedded recipe has the same key (the crash case) is recorded instead of
    being made again. A typical loop:

        done = Completed.load(folder)
        with Manifest(folder) as manifest:
            for job in jobs:
                for i in range(count):
                    recipe = ...  # resolved settings for this image, seed = job_seed(base, job, i, count)
                    key = job_key(job, recipe)
                    if done.path_for(key):
                        continue
                    fields = output.name_fields(recipe, index=..., count=..., job_id=job.id)
                    path = find_adoptable(folder, template, fields, key)
                    if path is None:
                        path = output.save_png(folder, template, fields, pixels, recipe)
                    manifest.add(job, i, path, recipe, key=key, seconds=...)
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import difflib
import hashlib
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from pangu_cli import output
from pangu_cli.errors import UsageError

FORMATS = ("txt", "jsonl", "csv")
_EXTENSIONS = {
    ".txt": "txt",
    ".text": "txt",
    ".prompts": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".jsonlines": "jsonl",
    ".csv": "csv",
}

# Per-line overrides and the type each is normalised to (the type the matching CLI option has).
# size becomes "WxH"; style a string (a JSON list is joined with ",").
OPTION_TYPES: dict[str, str] = {
    "seed": "int",
    "negative": "str",
    "ratio": "str",
    "size": "size",
    "style": "style",
    "steps": "int",
    "guidance": "float",
    "sampler": "str",
    "count": "int",
    "out": "str",
    "name": "str",
}
JOB_KEYS = ("prompt", "id", *OPTION_TYPES)
SEED_MODULUS = 2**32
_MINIMUM = {"seed": 0, "steps": 1, "count": 1, "guidance": 0.0}


@dataclass(frozen=True)
class Job:
    """One prompt of a batch. `index` is 0-based among the valid prompts, `line` 1-based in the file."""

    index: int
    line: int
    id: str
    prompt: str
    options: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass(frozen=True)
class JobError:
    """A line that could not be read; the rest of the file still loads."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class JobList:
    jobs: list[Job]
    errors: list[JobError]
    source: str
    format: str
    encoding: str = "utf-8"
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs)

    def __getitem__(self, index: int) -> Job:
        return self.jobs[index]

    def check(self, strict: bool) -> None:
        """With `strict`, any bad line is a UsageError (naming the first one)."""
        if strict and self.errors:
            first = self.errors[0]
            count = len(self.errors)
            raise UsageError(
                f"{self.source} {first}" + (f" (and {count - 1} more bad lines)" if count > 1 else ""),
                "fix the lines, or run without --strict to skip them",
            )


class _LineError(Exception):
    pass


# ------------------------------------------------------------------------------------------ reading


def read_jobs(source: str | os.PathLike, fmt: str | None = None, encoding: str | None = None) -> JobList:
    """Load prompts from a file, or from stdin when `source` is "-". See the module docstring."""
    name, data = _read_source(source)
    text, used_encoding, warnings = _decode(data, name, encoding)
    fmt = _choose_format(fmt, source, text, name)
    parse = {"txt": _parse_txt, "jsonl": _parse_jsonl, "csv": _parse_csv}[fmt]
    entries, errors = parse(text, name)
    jobs = _number_jobs(entries, errors)
    errors.sort(key=lambda e: e.line)
    if not jobs:
        if errors:
            raise UsageError(
                f"{name}: no valid prompts ({len(errors)} bad lines; first: {errors[0]})",
                "fix the file and run again",
            )
        raise UsageError(f"{name} has no prompts", _FORMAT_HINTS[fmt])
    return JobList(jobs, errors, name, fmt, used_encoding, warnings)


_FORMAT_HINTS = {
    "txt": "write one prompt per line ('#' starts a comment line)",
    "jsonl": 'write one object per line, e.g. {"prompt": "一只猫", "seed": 7}',
    "csv": "write a header row with a 'prompt' column, then one row per prompt",
}


def _read_source(source: str | os.PathLike) -> tuple[str, bytes]:
    if os.fspath(source) == "-":
        return "<stdin>", sys.stdin.buffer.read()
    path = Path(source).expanduser()
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not a prompt file", "pass a .txt, .jsonl or .csv file")
    try:
        return str(path), path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file", "check the path") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", "check the path and its permissions") from None


def _decode(data: bytes, name: str, encoding: str | None) -> tuple[str, str, list[str]]:
    if encoding:
        try:
            return data.decode(encoding).lstrip("\ufeff"), encoding, []
        except LookupError:
            raise UsageError(f"unknown encoding {encoding!r}", "use e.g. utf-8, gb18030, big5") from None
        except UnicodeDecodeError as exc:
            raise _not_decodable(data, exc, name, encoding) from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16").lstrip("\ufeff"), "utf-16", []
        except UnicodeDecodeError as exc:
            raise _not_decodable(data, exc, name, "UTF-16") from None
    try:
        return data.decode("utf-8").lstrip("\ufeff"), "utf-8", []
    except UnicodeDecodeError as exc:
        utf8_error = exc
    # Chinese Windows saves text as GBK by default; GB18030 is its superset. Accept it only when the
    # result reads as Chinese, so a Latin-1 file is not silently turned into nonsense.
    with contextlib.suppress(UnicodeDecodeError):
        text = data.decode("gb18030")
        if _looks_chinese(text):
            warning = (
                f"{name} is not UTF-8; read it as GB18030 (Chinese). "
                f"Convert it to silence this: iconv -f GB18030 -t UTF-8 {name} > {name}.utf8"
            )
            return text, "gb18030", [warning]
    raise _not_decodable(data, utf8_error, name, "UTF-8")


def _not_decodable(data: bytes, exc: UnicodeDecodeError, name: str, encoding: str) -> UsageError:
    line = data.count(b"\n", 0, exc.start) + 1
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    byte = data[exc.start] if exc.start < len(data) else 0
    return UsageError(
        f"{name} line {line}: byte 0x{byte:02x} at column {column} is not valid {encoding}",
        f"save the file as UTF-8, e.g. iconv -f GBK -t UTF-8 {name} > {name}.utf8",
    )


def _looks_chinese(text: str) -> bool:
    ideographs = 0
    for ch in text:
        code = ord(ch)
        if code < 0x80:
            continue
        if 0x3400 <= code <= 0x4DBF or 0x4E00 <= code <= 0x9FFF or 0xF900 <= code <= 0xFAFF or code >= 0x20000:
            ideographs += 1
        elif not (
            0x3000 <= code <= 0x30FF  # CJK punctuation, kana
            or 0xFF00 <= code <= 0xFFEF  # full-width forms
            or 0x2000 <= code <= 0x206F  # general punctuation: “ ” — …
            or code in (0x00B7, 0x00D7, 0x00F7)
        ):
            return False
    return ideographs > 0


def _choose_format(fmt: str | None, source: str | os.PathLike, text: str, name: str) -> str:
    if fmt is not None:
        fmt = fmt.lower()
        if fmt == "ndjson":
            fmt = "jsonl"
        if fmt not in FORMATS:
            raise UsageError(f"unknown prompt file format {fmt!r}", "use one of: " + ", ".join(FORMATS))
        return fmt
    suffix = Path(os.fspath(source)).suffix.lower() if os.fspath(source) != "-" else ""
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    if suffix == ".json":
        raise UsageError(f"{name}: JSON files are not read", "use JSONL: " + _FORMAT_HINTS["jsonl"])
    return _sniff(text)


def _sniff(text: str) -> str:
    for line in _lines(text):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("{"):
            return "jsonl"
        try:
            header = [h.strip().lower() for h in next(csv.reader([stripped]))]
        except (csv.Error, StopIteration):
            return "txt"
        if "prompt" in header and all(h in JOB_KEYS for h in header):
            return "csv"
        return "txt"
    return "txt"


def _lines(text: str) -> list[str]:
    # Only \n, \r\n and \r end lines: str.splitlines() would also split on \x0c, \u2028 … and
    # disagree with the line numbers an editor shows.
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


_Entry = tuple[int, str, "str | None", dict]  # line, prompt, explicit id, options


def _parse_txt(text: str, name: str) -> tuple[list[_Entry], list[JobError]]:
    entries = []
    for number, raw in enumerate(_lines(text), start=1):
        prompt = raw.strip().lstrip("\ufeff")
        if not prompt or prompt.startswith("#"):
            continue
        if prompt.startswith("\\#"):
            prompt = prompt[1:]
        entries.append((number, prompt, None, {}))
    return entries, []


def _parse_jsonl(text: str, name: str) -> tuple[list[_Entry], list[JobError]]:
    entries, errors = [], []
    for number, raw in enumerate(_lines(text), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise _LineError(f"not valid JSON at column {exc.colno}: {exc.msg}") from None
            if not isinstance(value, dict):
                raise _LineError(f'expected an object like {{"prompt": "…"}}, got {type(value).__name__}')
            entries.append((number, *_validate(value, from_text=False)))
        except _LineError as exc:
            errors.append(JobError(number, str(exc)))
    return entries, errors


def _parse_csv(text: str, name: str) -> tuple[list[_Entry], list[JobError]]:
    # strict: a stray or unclosed quote is an error for that record instead of swallowing the
    # following lines into one cell.
    reader = csv.reader(io.StringIO("\n".join(_lines(text)), newline=""), strict=True)
    header: list[str] | None = None
    entries, errors = [], []
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problem = f"bad CSV quoting ({exc}); quote a cell as \"…\" and double inner quotes"
            errors.append(JobError(start, problem))
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = _csv_header(row, name)
            continue
        if len(row) > len(header):
            errors.append(
                JobError(line, f"{len(row)} cells, but the header has {len(header)} (quote cells with commas)")
            )
            continue
        raw = {key: cell for key, cell in zip(header, row) if cell.strip()}
        try:
            entries.append((line, *_validate(raw, from_text=True)))
        except _LineError as exc:
            errors.append(JobError(line, str(exc)))
    return entries, errors


def _csv_header(row: list[str], name: str) -> list[str]:
    header = [cell.strip().lstrip("\ufeff").lower() for cell in row]
    unknown = [h for h in header if h not in JOB_KEYS]
    if "prompt" not in header or unknown:
        problem = "no 'prompt' column" if "prompt" not in header else f"unknown column {unknown[0]!r}"
        raise UsageError(f"{name}: CSV header has {problem}", "columns may be: " + ", ".join(JOB_KEYS))
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise UsageError(f"{name}: CSV header repeats column {duplicates[0]!r}", "name each column once")
    return header


def _validate(raw: Mapping[str, Any], from_text: bool) -> tuple[str, str | None, dict[str, Any]]:
    unknown = [k for k in raw if k not in JOB_KEYS]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), JOB_KEYS, n=1)
        suggestion = f" (did you mean {close[0]!r}?)" if close else ""
        raise _LineError(f"unknown key {key!r}{suggestion}; valid keys: {', '.join(JOB_KEYS)}")
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _LineError("missing or empty 'prompt'")
    job_id = raw.get("id")
    if job_id is not None:
        if isinstance(job_id, bool) or not isinstance(job_id, (str, int)) or not str(job_id).strip():
            raise _LineError("'id' must be a non-empty string or number")
        job_id = str(job_id).strip()
    options = {}
    for key, kind in OPTION_TYPES.items():
        value = raw.get(key)
        if value is None:
            continue
        options[key] = _coerce(key, kind, value.strip() if isinstance(value, str) else value, from_text)
    return prompt.strip(), job_id, options


def _coerce(key: str, kind: str, value: Any, from_text: bool) -> Any:
    if kind == "int":
        if isinstance(value, str) and from_text and re.fullmatch(r"[+-]?\d+", value):
            value = int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _LineError(f"{key!r} must be a whole number, got {value!r}")
    elif kind == "float":
        if isinstance(value, str) and from_text:
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _LineError(f"{key!r} must be a number, got {value!r}")
        value = float(value)
    elif kind == "size":
        value = _coerce_size(value)
    elif kind == "style":
        if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
            value = ",".join(v.strip() for v in value)
        if not isinstance(value, str) or not value:
            raise _LineError(f"'style' must be a name or a list of names, got {value!r}")
    elif not isinstance(value, str) or not value:
        raise _LineError(f"{key!r} must be a non-empty string, got {value!r}")
    if key in _MINIMUM and value < _MINIMUM[key]:
        raise _LineError(f"{key!r} must be at least {_MINIMUM[key]}, got {value!r}")
    if key == "seed" and value >= SEED_MODULUS:
        raise _LineError(f"'seed' must be below 2**32, got {value}")
    return value


def _coerce_size(value: Any) -> str:
    whole = [v for v in value if isinstance(v, int) and not isinstance(v, bool)] if isinstance(value, list) else []
    if isinstance(value, list) and len(value) == 2 and len(whole) == 2:
        width, height = value
    else:
        match = re.fullmatch(r"\s*(\d+)\s*[xX×*]\s*(\d+)\s*", value) if isinstance(value, str) else None
        if not match:
            raise _LineError(f"'size' must look like \"1024x768\" or [1024, 768], got {value!r}")
        width, height = int(match[1]), int(match[2])
    if width <= 0 or height <= 0:
        raise _LineError(f"'size' must be positive, got {value!r}")
    return f"{width}x{height}"


def _number_jobs(entries: list[_Entry], errors: list[JobError]) -> list[Job]:
    seen: dict[str, int] = {}
    kept = []
    for line, prompt, job_id, options in entries:
        if job_id is not None:
            if job_id in seen:
                errors.append(JobError(line, f"id {job_id!r} is already used on line {seen[job_id]}"))
                continue
            seen[job_id] = line
        kept.append((line, prompt, job_id, options))
    jobs = []
    taken = set(seen)
    for index, (line, prompt, job_id, options) in enumerate(kept):
        if job_id is None:
            job_id = candidate = f"{index + 1:04d}"
            suffix = 2
            while job_id in taken:
                job_id = f"{candidate}-{suffix}"
                suffix += 1
            taken.add(job_id)
        jobs.append(Job(index, line, job_id, prompt, options))
    return jobs


# ------------------------------------------------------------------------------------ shards and seeds


def parse_shard(spec: str) -> tuple[int, int]:
    """"i/n" → (i, n). Shards count from 1, like `--shard 1/4` … `--shard 4/4` in Jest or Playwright."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if not match:
        raise UsageError(f"--shard {spec!r} is not of the form I/N", "e.g. --shard 1/4 … --shard 4/4")
    index, total = int(match[1]), int(match[2])
    if total < 1 or not 1 <= index <= total:
        raise UsageError(
            f"--shard {spec}: shard must be between 1 and {max(total, 1)}",
            "shards count from 1: --shard 1/N … N/N",
        )
    return index, total


def shard(jobs: Iterable[Job], spec: str) -> list[Job]:
    """Every n-th job starting with the i-th (1-based). The n shards together hold every job once;
    jobs keep their `index`, so seeds and names do not depend on the sharding."""
    index, total = parse_shard(spec)
    return list(jobs)[index - 1 :: total]


def shard_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """"rank+1/size" from msrun's RANK_ID / RANK_SIZE, or None outside a multi-process launch."""
    environ = os.environ if environ is None else environ
    rank, size = environ.get("RANK_ID"), environ.get("RANK_SIZE")
    if rank is None or size is None or not rank.isdigit() or not size.isdigit() or int(size) < 2:
        return None
    return f"{int(rank) + 1}/{int(size)}"


def job_seed(base_seed: int, job: Job, image_index: int, stride: int = 1) -> int:
    """The seed of image `image_index` (0-based) of `job`; see the module docstring."""
    if image_index < 0 or stride < 1:
        raise ValueError("image_index must be >= 0 and stride >= 1")
    explicit = job.options.get("seed")
    if explicit is not None:
        return (int(explicit) + image_index) % SEED_MODULUS
    return (int(base_seed) + job.index * stride + image_index) % SEED_MODULUS


# ------------------------------------------------------------------------------------------- keys

# What decides the pixels. The CLI puts the checksum(s) of all weights into model_hash (or models).
KEY_FIELDS = (
    "prompt",
    "negative",
    "seed",
    "size",
    "ratio",
    "steps",
    "sampler",
    "guidance",
    "styles",
    "model",
    "model_hash",
    "models",
    "switch",
    "ensemble",
)
# Fields added after keys were first written: left out when unset, so that older manifests keep matching.
LATE_KEY_FIELDS = frozenset({"ensemble"})
# Recipe entries that describe a run rather than the image.
VOLATILE_FIELDS = frozenset({"seconds", "timings", "created", "time", "path", "index", "count", "id", "job"})


def _canonical(value: Any) -> Any:
    """Equal settings hash equally: 6 == 6.0, (w, h) == [w, h], "" == None, key order ignored."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        with contextlib.suppress(Exception):
            value = value.item()
    if isinstance(value, Mapping):
        items = {str(k): _canonical(v) for k, v in value.items()}
        return {k: v for k, v in sorted(items.items()) if v is not None} or None
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value == "":
        return None
    return value


def _digest(data: Any) -> str:
    text = json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def recipe_key(recipe: Mapping[str, Any], fields: Sequence[str] = KEY_FIELDS) -> str:
    """Stable 16-hex hash of what determines the image (`KEY_FIELDS` of the recipe)."""
    data = {name: _canonical(recipe.get(name)) for name in fields}
    return _digest({k: v for k, v in data.items() if v is not None or k not in LATE_KEY_FIELDS})


def job_key(job: Job, resolved_settings: Mapping[str, Any]) -> str:
    """`recipe_key` of one image of `job`; `resolved_settings` is its recipe (per-image seed included).
    The job's prompt is used when the settings carry none."""
    return recipe_key({"prompt": job.prompt, **resolved_settings})


def recipe_hash(recipe: Mapping[str, Any]) -> str:
    """16-hex hash of the whole recipe except `VOLATILE_FIELDS` and the schema tag."""
    return _digest(_canonical({k: v for k, v in recipe.items() if k not in VOLATILE_FIELDS and k != "schema"}))


# ------------------------------------------------------------------------------------------ manifests

MANIFEST_DIR = ".pangu"
_PART_NAME = re.compile(r"manifest([-_.][A-Za-z0-9_.-]+)?")


class Manifest:
    """Append-only JSONL record of finished images: ``<folder>/.pangu/<part>.jsonl``.

    One writing process per part (use part=f"manifest-{rank}" for parallel workers). Each record is
    one line written with a single write and an fsync; a line cut short by a crash is dropped when
    the part is opened again and ignored by `read`.
    """

    def __init__(self, folder: str | os.PathLike, part: str = "manifest"):
        if not _PART_NAME.fullmatch(part):
            raise ValueError(f"manifest part {part!r} must be 'manifest' or 'manifest-<name>'")
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_DIR / f"{part}.jsonl"
        self._fd: int | None = None

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        if self._fd is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0), 0o666)
            except OSError as exc:
                raise UsageError(
                    f"cannot write the manifest {self.path}: {exc.strerror}", "choose a writable --out folder"
                ) from None
            _drop_partial_tail(fd)
            self._fd = fd
        return self._fd

    def append(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=output._json_default) + "\n"
        data = line.encode("utf-8")
        fd = self._open()
        written = os.write(fd, data)
        while written < len(data):  # regular files take it in one go; be correct anyway
            written += os.write(fd, data[written:])
        os.fsync(fd)

    def add(
        self,
        job: Job,
        image_index: int,
        path: str | os.PathLike,
        recipe: Mapping[str, Any],
        *,
        key: str,
        seconds: float | None = None,
        status: str = "done",
    ) -> dict[str, Any]:
        """Record one published image (status "done", or "adopted" for a file found from a crashed
        run); returns the record written."""
        record = {
            "key": key,
            "status": status,
            "job": job.index,
            "id": job.id,
            "line": job.line,
            "image": image_index,
            "path": self._relative(Path(path)),
            "prompt": job.prompt,
            "seed": recipe.get("seed"),
            "language": recipe.get("language"),
            "size": recipe.get("size"),
            "style": recipe.get("style"),
            "seconds": None if seconds is None else round(float(seconds), 3),
            "recipe": recipe_hash(recipe),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.append(record)
        return record

    def _relative(self, path: Path) -> str:
        with contextlib.suppress(ValueError):
            return path.resolve().relative_to(self.folder.resolve()).as_posix()
        return str(path.resolve())

    @staticmethod
    def read(path: str | os.PathLike) -> list[dict[str, Any]]:
        """The complete records of one part; a torn last line and unreadable lines are skipped."""
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            return []
        records = []
        *complete, _torn = data.split(b"\n")  # whatever follows the last newline is incomplete
        for raw in complete:
            with contextlib.suppress(UnicodeDecodeError, json.JSONDecodeError):
                record = json.loads(raw.decode("utf-8"))
                if isinstance(record, dict):
                    records.append(record)
        return records

    @classmethod
    def parts(cls, folder: str | os.PathLike) -> list[Path]:
        return sorted((Path(folder) / MANIFEST_DIR).glob("manifest*.jsonl"))

    @classmethod
    def read_all(cls, folder: str | os.PathLike) -> list[dict[str, Any]]:
        """Records of every part in `folder` (manifest.jsonl, manifest-<rank>.jsonl …), part by part."""
        return [record for part in cls.parts(folder) for record in cls.read(part)]


def _drop_partial_tail(fd: int) -> None:
    """Cut a line torn by a crash so the next record starts on a line of its own."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    os.lseek(fd, size - 1, os.SEEK_SET)
    if os.read(fd, 1) == b"\n":
        return
    end = size
    chunk = 64 * 1024
    while end > 0:
        start = max(0, end - chunk)
        os.lseek(fd, start, os.SEEK_SET)
        block = os.read(fd, end - start)
        at = block.rfind(b"\n")
        if at >= 0:
            os.ftruncate(fd, start + at + 1)
            return
        end = start
    os.ftruncate(fd, 0)


class Completed:
    """The images earlier runs finished in a folder: keys with a manifest record AND a file."""

    def __init__(self, folder: str | os.PathLike, records: Iterable[Mapping[str, Any]]):
        self.folder = Path(folder)
        self._paths: dict[str, Path] = {}
        for record in records:
            key, path = record.get("key"), record.get("path")
            if isinstance(key, str) and isinstance(path, str):
                candidate = Path(path)
                self._paths[key] = candidate if candidate.is_absolute() else self.folder / candidate

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Completed:
        return cls(folder, Manifest.read_all(folder))

    def path_for(self, key: str) -> Path | None:
        """Where the image with `key` already is, or None if it must be (re)made."""
        path = self._paths.get(key)
        return path if path is not None and path.is_file() else None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.path_for(key) is not None

    def __len__(self) -> int:
        return sum(1 for key in self._paths if self.path_for(key) is not None)


def find_adoptable(
    out: str | os.PathLike | None,
    template: str,
    fields: Mapping[str, Any],
    key: str,
    multiple: bool = False,
    limit: int = 1000,
) -> Path | None:
    """An existing PNG at the name this image would get (or a "-N" variant of it) whose embedded
    recipe has `key`: the image a crashed run published without recording it."""
    base, explicit = output.resolve_target(out, template, fields, multiple)
    candidates = [base] if explicit else output.numbered_variants(base)
    for count, path in enumerate(candidates):
        if count >= limit or not os.path.lexists(path):
            return None
        with contextlib.suppress(UsageError):
            if path.is_file() and recipe_key(output.read_recipe(path)) == key:
                return path
    return None
