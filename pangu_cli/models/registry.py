"""Where models live and what they are, without importing MindSpore.

A model is a folder holding `model.json` (the manifest) plus the checkpoint and tokenizer files it
names. The manifest is plain data; the loader (`pangu_cli.models.loader`) turns it into networks.

    {
      "name": "pangu-mini", "description": "...", "family": "pangu",
      "checkpoints": {"texture": "texture.safetensors", "structure": "structure.safetensors"},
      "unet": {...UNetModel params...},                      # both generators share one architecture
      "vae": {"embed_dim": 4, "ddconfig": {...}, "scale_factor": 0.13025} | null (pixel space),
      "text_encoders": [{"kind": "hf_clip" | "openclip" | "bert", "config": {...},
                         "layer": "last" | "penultimate", "pooled": false,
                         "tokenizer": {"kind": "wordpiece" | "clip", "path": "tokenizers/zh"},
                         "language": "zh" | "en" | null}, ...],
      "size_embedding": {"dim": 256},
      "buckets": [[W, H], ...],                              # index = size-embedding input
      "sampling": {"steps": 40, "guidance": 6.0, "sampler": "euler", "switch_t": 500,
                   "switch_lag": true, "styles": {"art": 4.0}, "negative": ""},
      "style_prefixes": {"art": "義 ", "anime": "饅 ", "photo": "霙 "}
    }

The `texture` checkpoint holds every network in the reference naming (`model.diffusion_model.`,
`conditioner.embedders.N.`, `first_stage_model.`), as the reference's low-timestep checkpoint does;
`structure` holds a second UNet (`model.diffusion_model.`) and may be absent (single-UNet model).
Text-encoder and autoencoder weights may also come as separate files: the roles `text_encoders` and
`vae` name them, and any role may name a list of files (merged in order, later files win, as the
reference merges its `--weight` list). Paths are relative to the model folder or absolute.

User models are registered in `models.toml` in the config folder (`[models.NAME] path = FOLDER`);
`pangu models add` writes the manifest of a generated model into `<config>/models/NAME/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pangu_cli.errors import ModelError, UsageError

MANIFEST = "model.json"
EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_MODEL = "pangu-mini"
_FINGERPRINT_SPAN = 1 << 20


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "pangu"


def user_registry_file() -> Path:
    return config_dir() / "models.toml"


@dataclass
class ModelSpec:
    name: str
    root: Path
    manifest: dict
    source: str  # "embedded", "user" or "path"
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def description(self) -> str:
        return self.manifest.get("description", "")

    @property
    def buckets(self) -> list[tuple[int, int]]:
        return [tuple(b) for b in self.manifest["buckets"]]

    @property
    def sampling(self) -> dict:
        return dict(self.manifest.get("sampling", {}))

    @property
    def switch_t(self) -> int:
        """The default structure→texture hand-over timestep of two-stage sampling (the reference's 500)."""
        return int(self.sampling.get("switch_t", 500))

    @property
    def prediction(self) -> str:
        """What the UNets predict: "eps" (the reference and PanGu-Draw 3.0) or "v"."""
        return self.manifest.get("prediction", "eps")

    @property
    def snr_shift(self) -> float:
        """The model's noise schedule is the reference DDPM table with its SNR divided by this (1: as is)."""
        return float(self.manifest.get("schedule", {}).get("snr_shift", 1.0))

    def sigma_table(self):
        from pangu_cli.sampling.schedules import sigma_table

        return sigma_table(snr_shift=self.snr_shift)

    @property
    def style_prefixes(self) -> dict[str, str]:
        return dict(self.manifest.get("style_prefixes", {}))

    @property
    def two_stage(self) -> bool:
        return "structure" in self.manifest.get("checkpoints", {})

    @property
    def latent_factor(self) -> int:
        vae = self.manifest.get("vae")
        if not vae:
            return 1
        return 2 ** (len(vae["ddconfig"]["ch_mult"]) - 1)

    def path(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else self.root / path

    def checkpoint(self, role: str) -> Path | None:
        """The (first) file of a checkpoint role, or None."""
        files = self.checkpoint_files(role)
        return files[0] if files else None

    def checkpoint_files(self, role: str) -> list[Path]:
        """Every file of a role (`checkpoints.ROLE` is a path or a list of paths), in merge order."""
        entry = self.manifest.get("checkpoints", {}).get(role)
        entries = [entry] if isinstance(entry, str) else list(entry or [])
        return [self.path(p) for p in entries]

    def all_checkpoint_files(self) -> list[tuple[str, Path]]:
        return [(role, path) for role in self.manifest.get("checkpoints", {}) for path in self.checkpoint_files(role)]

    def missing_files(self) -> list[Path]:
        paths = [path for _, path in self.all_checkpoint_files()]
        paths += [self.path(enc["tokenizer"]["path"]) for enc in self.manifest.get("text_encoders", [])]
        return [p for p in paths if not p.exists()]

    def fingerprint(self) -> str:
        """A cheap, stable identity for metadata: manifest + size and ends of every checkpoint.

        Hashing multi-GB checkpoints on every run is too slow; `pangu models verify` does the
        full SHA-256.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode())
            for role, path in sorted(self.all_checkpoint_files()):
                size = path.stat().st_size if path.exists() else -1
                digest.update(f"{role}:{size}".encode())
                if size > 0:
                    with open(path, "rb") as fh:
                        digest.update(fh.read(_FINGERPRINT_SPAN))
                        if size > _FINGERPRINT_SPAN:
                            fh.seek(max(size - _FINGERPRINT_SPAN, _FINGERPRINT_SPAN))
                            digest.update(fh.read())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint


def read_manifest(folder: Path) -> dict:
    file = folder / MANIFEST
    if not file.is_file():
        raise ModelError(f"no {MANIFEST} in {folder}", "point --model at a model folder, or run `pangu models`")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{file} is not valid JSON ({exc})", "repair or re-create the model folder") from exc
    for key in ("name", "checkpoints", "unet", "text_encoders", "buckets"):
        if key not in manifest:
            raise ModelError(f"{file} lacks the field '{key}'", "re-create the model folder")
    if manifest.get("prediction", "eps") not in ("eps", "v"):
        raise ModelError(f"{file}: 'prediction' is {manifest['prediction']!r}", "use \"eps\" or \"v\"")
    shift = manifest.get("schedule", {}).get("snr_shift", 1.0)
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not shift > 0:
        raise ModelError(f"{file}: 'schedule.snr_shift' is {shift!r}", "use a positive number (1 = the reference schedule)")
    return manifest


def _user_entries() -> dict[str, Path]:
    file = user_registry_file()
    if not file.is_file():
        return {}
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{file}: {exc}", "fix the file or remove it") from exc
    return {name: Path(entry["path"]).expanduser() for name, entry in data.get("models", {}).items()
            if isinstance(entry, dict) and "path" in entry}


def list_models() -> list[ModelSpec]:
    """Embedded models first (the default leading), then user-registered ones."""
    specs: list[ModelSpec] = []
    if EMBEDDED_DIR.is_dir():
        for folder in sorted(EMBEDDED_DIR.iterdir(), key=lambda p: (p.name != DEFAULT_MODEL, p.name)):
            if (folder / MANIFEST).is_file():
                specs.append(ModelSpec(folder.name, folder, read_manifest(folder), "embedded"))
    for name, folder in _user_entries().items():
        try:
            specs.append(ModelSpec(name, folder, read_manifest(folder), "user"))
        except ModelError:
            specs.append(ModelSpec(name, folder, {"description": "(missing or broken)", "buckets": []}, "user"))
    return specs


def resolve(name_or_path: str | None) -> ModelSpec:
    """A model by registered name, or by folder path; None → the default model."""
    wanted = name_or_path or os.environ.get("PANGU_MODEL") or DEFAULT_MODEL
    candidate = Path(wanted).expanduser()
    if candidate.is_dir() and (candidate / MANIFEST).is_file():
        manifest = read_manifest(candidate)
        return ModelSpec(manifest["name"], candidate.resolve(), manifest, "path")
    user = _user_entries()
    if wanted in user:
        return ModelSpec(wanted, user[wanted], read_manifest(user[wanted]), "user")
    embedded = EMBEDDED_DIR / wanted
    if (embedded / MANIFEST).is_file():
        return ModelSpec(wanted, embedded, read_manifest(embedded), "embedded")
    known = [s.name for s in list_models()]
    if wanted == DEFAULT_MODEL and DEFAULT_MODEL not in known:
        raise ModelError(f"the embedded model '{DEFAULT_MODEL}' is not installed in this build",
                         "pass --model FOLDER (a folder with model.json) or register one with `pangu models add`")
    raise ModelError(f"unknown model '{wanted}'",
                     f"known models: {', '.join(known) or 'none'}; or pass a folder containing {MANIFEST}")


# ---------------------------------------------------------------------------------------------------------------
# Registering user models

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def user_models_dir() -> Path:
    """Where `pangu models add` puts the manifests it generates."""
    return config_dir() / "models"


def check_model_name(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(f"invalid model name '{name}'",
                         "use letters, digits, '.', '_' or '-' (at most 64 characters), e.g. pangu-draw-v3")
    return name


def register_model(name: str, folder: Path, force: bool = False) -> Path:
    """Record `name → folder` in the user's models.toml (atomically); returns the registry file.

    The folder must hold a valid model.json. An existing name is replaced only with `force`.
    """
    check_model_name(name)
    folder = Path(folder).expanduser().resolve()
    read_manifest(folder)
    if (EMBEDDED_DIR / name / MANIFEST).is_file():
        raise UsageError(f"'{name}' is the name of an embedded model", "choose another name")
    file = user_registry_file()
    data: dict = {}
    if file.is_file():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{file}: {exc}", "fix the file or remove it") from exc
    models = data.setdefault("models", {})
    if not isinstance(models, dict):
        raise UsageError(f"{file}: 'models' is not a table", "fix the file or remove it")
    current = models.get(name)
    if isinstance(current, dict) and not force and Path(current.get("path", "")).expanduser().resolve() != folder:
        raise UsageError(f"a model named '{name}' is already registered ({current.get('path')})",
                         "pass --force to replace it, or choose another name")
    models[name] = {**(current if isinstance(current, dict) else {}), "path": str(folder)}
    write_atomic(file, _dump_toml(data))
    return file


def write_atomic(file: Path, text: str) -> None:
    """Replace `file` with `text` in one step (temporary file in the same folder, then rename)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise UsageError(f"cannot write {type(value).__name__} values to models.toml")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _dump_toml(data: dict, path: tuple[str, ...] = ()) -> str:
    """TOML for the nested tables of scalars that models.toml holds (comments are not kept)."""
    values = [(k, v) for k, v in data.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in data.items() if isinstance(v, dict)]
    text = ""
    if path and (values or not tables):
        text = "[" + ".".join(_toml_key(k) for k in path) + "]\n"
    text += "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in values)
    for key, value in tables:
        text += ("\n" if text else "") + _dump_toml(value, path + (key,))
    return text
