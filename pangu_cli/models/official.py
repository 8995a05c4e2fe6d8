"""PanGu-Draw 3.0's official checkpoints: the full-size config, registering a user's files, verifying them.

The config (`pangu_cli/configs/pangu_draw_v3.json`) is a model.json for the reference's networks and
sampler defaults. What the public material does not fix is read from the checkpoint when a model is
added: the Chinese text tower's vocabulary, depth, MLP width and positions (its config folder
`clip-vit-large-patch14-minus1` was never published), and, for safety, the same for bigG. Head count
assumes 64-wide heads, as in every CLIP text tower; activations and norm eps keep the config's values.

`add_model` writes a model.json into the user's config folder (absolute paths to the user's files)
and registers it; `verify_model` checks files, SHA-256 of files whose names carry a hash prefix
(`pangu_low_timestamp-127da122.ckpt`), tokenizers and every key and shape, without reading weights.
This module imports MindSpore only in `add_model` / `verify_model`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

from pangu_cli.errors import CheckpointError, ModelError, UsageError
from pangu_cli.models import registry

CONFIG_FILE = "pangu_draw_v3.json"
CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors")
WORDPIECE_NAMES = ("vocab_zh.txt", "vocab.txt")
CLIP_BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
HEAD_WIDTH = 64
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})$")
_HASH_CHUNK = 8 << 20

ProgressFactory = Callable[[str, int], Callable[[int], None]]  # (label, total bytes) → advance(n bytes)


def official_manifest() -> dict:
    """A fresh copy of the PanGu-Draw 3.0 manifest (reference defaults, CLIP-L guesses for the Chinese tower)."""
    text = resources.files("pangu_cli").joinpath("configs", CONFIG_FILE).read_text(encoding="utf-8")
    return copy.deepcopy(json.loads(text))


# ---------------------------------------------------------------------------------------------------------------
# SHA-256


def hash_in_name(path: str | Path) -> str | None:
    """The hex prefix a file name carries (`pangu_low_timestamp-127da122.ckpt` → `127da122`), if any."""
    match = _HASH_IN_NAME.search(Path(path).stem)
    return match.group(1) if match else None


def sha256_file(path: str | Path, advance: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
            if advance is not None:
                advance(len(chunk))
    return digest.hexdigest()


@contextmanager
def rich_hash_progress(console) -> Iterator[ProgressFactory]:
    """A progress factory for `verify_model` that draws one Rich bar per hashed file."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as progress:
        def start(label: str, total: int) -> Callable[[int], None]:
            task = progress.add_task(f"sha256 {label}", total=total)
            return lambda n: progress.advance(task, n)

        yield start


# ---------------------------------------------------------------------------------------------------------------
# Text-encoder configs from checkpoint shapes


def _max_index(shapes: dict[str, tuple], prefix: str) -> int | None:
    found = [int(m.group(1)) for key in shapes if (m := re.match(re.escape(prefix) + r"(\d+)\.", key))]
    return max(found) if found else None


def _require(shapes: dict[str, tuple], key: str, what: str) -> tuple:
    if key not in shapes:
        raise CheckpointError(f"the checkpoints hold no {what} ({key} is missing)",
                              "pass the text-encoder weights with --text-encoders FILE|DIR")
    return tuple(shapes[key])


def _heads(width: int, current: int) -> int:
    return width // HEAD_WIDTH if width % HEAD_WIDTH == 0 else current


def infer_text_encoder(encoder: dict, index: int, shapes: dict[str, tuple]) -> str:
    """Set an encoder's size fields from conditioner shapes (keys relative to `conditioner.`); returns a summary."""
    cfg = encoder["config"]
    if encoder["kind"] == "hf_clip":
        base = f"embedders.{index}.transformer."
        vocab, width = _require(shapes, base + "text_model.embeddings.token_embedding.embedding_table",
                                f"weights for text encoder {index} (hf_clip)")
        positions = _require(shapes, base + "text_model.embeddings.position_embedding.embedding_table", "positions")[0]
        last = _max_index(shapes, base + "text_model.encoder.layers.")
        hidden = _require(shapes, base + "text_model.encoder.layers.0.mlp.fc1.weight", "MLP weights")[0]
        cfg.update(vocab_size=vocab, hidden_size=width, layers=(last or 0) + 1, intermediate_size=hidden,
                   max_position_embeddings=positions, heads=_heads(width, cfg.get("heads", 12)))
        projection = shapes.get(base + "text_projection.weight")
        cfg.pop("proj_dim", None)
        if projection is not None:
            cfg["proj_dim"] = projection[0]
        return (f"text encoder {index} (hf_clip): {cfg['layers']} layers, width {width}, vocab {vocab}, "
                f"MLP {hidden}, {positions} positions, {cfg['heads']} heads, act {cfg.get('act', 'quick_gelu')}")
    if encoder["kind"] == "openclip":
        base = f"embedders.{index}.model."
        vocab, width = _require(shapes, base + "token_embedding.embedding_table",
                                f"weights for text encoder {index} (openclip)")
        context = _require(shapes, base + "positional_embedding", "positions")[0]
        last = _max_index(shapes, base + "transformer.resblocks.")
        hidden = _require(shapes, base + "transformer.resblocks.0.mlp.c_fc.weight", "MLP weights")[0]
        ratio = hidden / width
        cfg.update(vocab_size=vocab, width=width, layers=(last or 0) + 1, context_length=context,
                   mlp_ratio=int(ratio) if ratio.is_integer() else ratio, heads=_heads(width, cfg.get("heads", 20)))
        projection = shapes.get(base + "text_projection")
        cfg.pop("proj_dim", None)
        if projection is not None:
            cfg["proj_dim"] = projection[1]
        return (f"text encoder {index} (openclip): {cfg['layers']} layers, width {width}, vocab {vocab}, "
                f"MLP {hidden}, context {context}, {cfg['heads']} heads, act {cfg.get('act', 'gelu')}")
    raise ModelError(f"cannot infer a '{encoder['kind']}' text encoder from a checkpoint")


def _output_dims(encoder: dict) -> tuple[int, int]:
    """(context width, pooled width or 0) of an encoder config."""
    cfg = encoder["config"]
    width = cfg.get("hidden_size") or cfg.get("width")
    pooled = (cfg.get("proj_dim") or width) if encoder.get("pooled") else 0
    return width, pooled


def check_dimensions(manifest: dict) -> None:
    """The UNet's context and vector widths must equal what the encoders and the size embedding produce."""
    widths = [_output_dims(enc) for enc in manifest["text_encoders"]]
    context = sum(w for w, _ in widths)
    vector = sum(p for _, p in widths) + manifest.get("size_embedding", {}).get("dim", 0)
    unet = manifest["unet"]
    if unet["context_dim"] != context:
        raise CheckpointError(f"the text encoders give {context}-wide context, the UNet expects {unet['context_dim']}",
                              "the text-encoder weights do not belong to this UNet")
    if unet.get("adm_in_channels") and unet["adm_in_channels"] != vector:
        raise CheckpointError(f"the pooled text + size embedding give {vector} values, the UNet expects "
                              f"{unet['adm_in_channels']}", "the text-encoder weights do not belong to this UNet")


# ---------------------------------------------------------------------------------------------------------------
# Finding files


def find_tokenizers(folder: Path) -> dict[str, Path]:
    """{"wordpiece": file, "clip": file or folder} found in `folder` (up to three levels deep)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"tokenizer folder not found: {folder}", "pass the folder holding the tokenizer files")
    candidates = sorted((p for p in folder.rglob("*") if len(p.relative_to(folder).parts) <= 3),
                        key=lambda p: (len(p.parts), str(p)))
    found: dict[str, Path] = {}
    for path in candidates:
        if "wordpiece" not in found and path.name in WORDPIECE_NAMES and path.is_file():
            found["wordpiece"] = path
        if "clip" not in found:
            if path.name == CLIP_BPE_NAME and path.is_file():
                found["clip"] = path
            elif path.name == "merges.txt" and (path.parent / "vocab.json").is_file():
                found["clip"] = path.parent
    missing = [kind for kind in ("wordpiece", "clip") if kind not in found]
    if missing:
        need = {"wordpiece": f"{' or '.join(WORDPIECE_NAMES)} (Chinese WordPiece)",
                "clip": f"{CLIP_BPE_NAME} or vocab.json + merges.txt (CLIP BPE)"}
        raise UsageError(f"no {', '.join(need[k] for k in missing)} in {folder}",
                         "pass --tokenizers DIR with the tokenizer files of the model")
    return found


def discover_checkpoints(folder: Path) -> dict[str, Path]:
    """The official files by their reference names (`*low_timestamp*` = texture, `*high_timestamp*` = structure)."""
    found: dict[str, Path] = {}
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES or not path.is_file():
            continue
        for role, marker in (("texture", "low_timestamp"), ("structure", "high_timestamp")):
            if marker in path.name and role not in found:
                found[role] = path
    return found


def _checkpoint_files(path: Path, what: str) -> list[Path]:
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in CHECKPOINT_SUFFIXES and p.is_file())
        if not files:
            raise UsageError(f"no .ckpt or .safetensors file in {path}", f"pass the {what} file(s)")
        return [p.absolute() for p in files]  # absolute, not resolved: a link keeps its (hashed) name
    if not path.is_file():
        raise UsageError(f"{what} not found: {path}", "check the path")
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise UsageError(f"{path.name} is not a .ckpt or .safetensors file", f"pass the {what} checkpoint")
    return [path.absolute()]


# ---------------------------------------------------------------------------------------------------------------
# Adding


@dataclass
class AddResult:
    name: str
    folder: Path
    registry_file: Path
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"name": self.name, "folder": str(self.folder), "registry": str(self.registry_file),
                "notes": self.notes}


def add_model(name: str, folder: Path | None = None, *, structure: Path | None = None, texture: Path | None = None,
              text_encoders: Path | None = None, vae: Path | None = None, tokenizers: Path | None = None,
              force: bool = False) -> AddResult:
    """Register a PanGu-Draw 3.0 model in the user config.

    `folder` holding a model.json is registered as it is. Otherwise the files given (or found in `folder` by
    their official names) go into a generated model.json in `<config>/models/NAME/`, with the text-encoder
    sizes read from the checkpoint. Keys are not checked here: `verify_model` does that.
    """
    registry.check_model_name(name)
    given = {"structure": structure, "texture": texture, "text_encoders": text_encoders, "vae": vae,
             "tokenizers": tokenizers}
    if folder is not None:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise UsageError(f"folder not found: {folder}", "pass a model folder (with model.json) or the folder "
                                                             "holding the official checkpoints")
        if (folder / registry.MANIFEST).is_file():
            if any(v is not None for v in given.values()):
                raise UsageError(f"{folder} has a {registry.MANIFEST}; file options would be ignored",
                                 "register the folder alone, or pass the files without the folder")
            file = registry.register_model(name, folder, force=force)
            return AddResult(name, folder.resolve(), file, [f"registered {folder / registry.MANIFEST} as is"])
        found = discover_checkpoints(folder)
        structure = structure or found.get("structure")
        texture = texture or found.get("texture")
        tokenizers = tokenizers or folder
    if texture is None or structure is None:
        missing = " and ".join(f"--{role}" for role, path in (("texture", texture), ("structure", structure))
                               if path is None)
        raise UsageError(f"PanGu-Draw 3.0 needs both UNet checkpoints: {missing} not given",
                         "pass --texture pangu_low_timestamp-….ckpt --structure pangu_high_timestamp-….ckpt")
    if tokenizers is None:
        raise UsageError("no tokenizer files given", "pass --tokenizers DIR (vocab_zh.txt / vocab.txt and "
                                                     f"{CLIP_BPE_NAME} or vocab.json + merges.txt)")
    manifest = official_manifest()
    manifest["name"] = name
    checkpoints = {"texture": _single(_checkpoint_files(texture, "texture checkpoint")),
                   "structure": _single(_checkpoint_files(structure, "structure checkpoint"))}
    if text_encoders is not None:
        checkpoints["text_encoders"] = [str(p) for p in _checkpoint_files(text_encoders, "text-encoder weights")]
    if vae is not None:
        checkpoints["vae"] = [str(p) for p in _checkpoint_files(vae, "autoencoder weights")]
    manifest["checkpoints"] = checkpoints
    tokenizer_files = find_tokenizers(Path(tokenizers).expanduser())
    for encoder in manifest["text_encoders"]:
        encoder["tokenizer"]["path"] = str(tokenizer_files[encoder["tokenizer"]["kind"]].absolute())

    target = registry.user_models_dir() / name
    notes = _infer_sizes(manifest, target)
    check_dimensions(manifest)
    existing = target / registry.MANIFEST
    if existing.is_file() and not force:
        try:
            same = json.loads(existing.read_text(encoding="utf-8")) == manifest
        except (OSError, json.JSONDecodeError):
            same = False
        if not same:
            raise UsageError(f"a model named '{name}' already exists in {target}",
                             "pass --force to replace it, or choose another name")
    target.mkdir(parents=True, exist_ok=True)
    registry.write_atomic(existing, json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    file = registry.register_model(name, target, force=True)
    return AddResult(name, target.resolve(), file, notes)


def _single(files: list[Path]) -> str:
    if len(files) != 1:
        raise UsageError(f"expected one UNet checkpoint, found {len(files)}", "pass the file, not a folder")
    return str(files[0])


def _infer_sizes(manifest: dict, root: Path) -> list[str]:
    from pangu_cli.models.loader import CONDITIONER_PREFIX, checkpoint_parts

    spec = registry.ModelSpec(manifest["name"], root, manifest, "path")
    shapes = {key: ref.shape for key, ref in checkpoint_parts(spec, "texture").parts[CONDITIONER_PREFIX].items()}
    return [infer_text_encoder(enc, i, shapes) for i, enc in enumerate(manifest["text_encoders"])]


# ---------------------------------------------------------------------------------------------------------------
# Verifying


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict:
        return {"check": self.name, "status": "ok" if self.ok else "fail", "detail": self.detail}


@dataclass
class VerifyReport:
    model: str
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def to_dict(self) -> dict:
        return {"model": self.model, "ok": self.ok, "checks": [c.to_dict() for c in self.checks], "notes": self.notes}


def verify_model(spec: registry.ModelSpec, hashes: bool = True,
                 progress: ProgressFactory | None = None) -> VerifyReport:
    """Files exist; SHA-256 of files named `…-<hex>` starts with that hex; tokenizers load and fit the encoders'
    vocabularies; every checkpoint group's keys and shapes match the config. MindSpore must be set up."""
    report = VerifyReport(spec.name)
    missing = spec.missing_files()
    report.checks.append(Check("files", not missing, f"missing {', '.join(map(str, missing))}" if missing else
                               f"{len(spec.all_checkpoint_files())} checkpoint files and "
                               f"{len(spec.manifest.get('text_encoders', []))} tokenizers present"))
    if missing:
        return report
    if hashes:
        for role, path in spec.all_checkpoint_files():
            expected = hash_in_name(path)
            if expected is None:
                continue
            advance = progress(path.name, path.stat().st_size) if progress else None
            digest = sha256_file(path, advance)
            good = digest.startswith(expected)
            report.checks.append(Check(f"sha256 {path.name}", good, f"{digest}" + (
                "" if good else f" does not start with {expected}: the file is damaged or another version")))
    report.checks += _tokenizer_checks(spec)
    groups = ["texture"] + (["structure"] if spec.checkpoint("structure") is not None else [])
    from pangu_cli.models.loader import verify_checkpoint

    for group in groups:
        try:
            report.notes += verify_checkpoint(spec, group)
            report.checks.append(Check(f"keys {group}", True, "every key and shape matches the config"))
        except ModelError as exc:
            report.checks.append(Check(f"keys {group}", False, exc.message))
    return report


def _tokenizer_checks(spec: registry.ModelSpec) -> list[Check]:
    from pangu_cli.models.conditioner import TOKENIZER_LOADERS

    checks = []
    for i, enc in enumerate(spec.manifest.get("text_encoders", [])):
        tok = enc["tokenizer"]
        name = f"tokenizer {i} ({tok['kind']})"
        try:
            tokenizer = TOKENIZER_LOADERS[tok["kind"]](spec.path(tok["path"]))
        except (ModelError, KeyError) as exc:
            checks.append(Check(name, False, exc.message if isinstance(exc, ModelError) else f"unknown kind {exc}"))
            continue
        size, rows = tokenizer.vocab_size, enc["config"].get("vocab_size")  # added specials (e.g. [MASK]) aside
        good = rows is None or size <= rows
        checks.append(Check(name, good, f"{size} tokens" + ("" if good else
                            f", more than the encoder's {rows} embedding rows: not this encoder's vocabulary")))
    return checks
