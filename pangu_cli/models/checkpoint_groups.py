"""A model's checkpoint files → the tensors of each network, keys checked against the reference layout.

Key layout (the reference's): `model.diffusion_model.` (UNet), `conditioner.` (text towers),
`first_stage_model.` (autoencoder). The texture checkpoint carries all three, the structure
checkpoint one more UNet. Text-encoder and autoencoder weights may also come as separate files
(manifest roles `text_encoders`, `vae`); files of one group merge in order, later files win, as the
reference merges its checkpoint list. Anything else in a checkpoint is an error, with three exceptions the
reference also tolerates: training bookkeeping scalars (`global_step`, …), the conditioner/autoencoder keys
of the structure checkpoint (the reference's high-timestep engine has no such cells), and the buffers
MindONE stores as Parameters (CLIP `position_ids`, OpenCLIP `attn_mask`), which are checked against what we
compute and then dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from pangu_cli.errors import CheckpointError
from pangu_cli.models.checkpoint_index import TensorRef, index_checkpoint
from pangu_cli.models.registry import ModelSpec

UNET_PREFIX = "model.diffusion_model."
CONDITIONER_PREFIX = "conditioner."
VAE_PREFIX = "first_stage_model."
TEXTURE_GROUP = ("texture", "text_encoders", "vae")  # files that together fill conditioner, VAE, texture UNet
# Top-level scalars MindSpore training writes beside the weights; the reference ignores them when loading.
BOOKKEEPING_KEYS = frozenset({"global_step", "global_steps", "epoch_num", "step_num", "loss_scale", "scale_sense",
                              "current_iterator_step", "last_overflow_iterator_step", "learning_rate"})
_VAE_ROOTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


@dataclass
class CheckpointParts:
    """The tensors of one checkpoint group split by network, keys relative to the network's prefix."""

    parts: dict[str, dict[str, TensorRef]]
    sources: dict[str, list[str]]  # prefix → names of the files that contributed
    notes: list[str] = field(default_factory=list)

    def label(self, prefix: str) -> str:
        return ", ".join(self.sources.get(prefix, [])) or "no file"


def stray_keys_error(file: Path, stray: list[str], prefixes: Iterable[str]) -> CheckpointError:
    return CheckpointError(f"{file.name}: {len(stray)} unexpected keys outside {', '.join(prefixes)} "
                           f"(e.g. {', '.join(sorted(stray)[:5])})",
                           "check that the file belongs to this model (model.json's checkpoint_ignore lists "
                           "key prefixes to skip, e.g. an EMA copy)")


def _tower_attrs(spec: ModelSpec) -> dict[str, int]:
    """Attribute name of each text tower (`transformer` / `model`) → embedder index, where unambiguous."""
    from pangu_cli.models.conditioner import ENCODERS

    attrs: dict[str, list[int]] = {}
    for i, enc in enumerate(spec.manifest.get("text_encoders", [])):
        if enc.get("kind") in ENCODERS:
            attrs.setdefault(ENCODERS[enc["kind"]][1], []).append(i)
    return {attr: ids[0] for attr, ids in attrs.items() if len(ids) == 1}


def _normalise(index: dict[str, TensorRef], role: str, file: Path, spec: ModelSpec,
               notes: list[str]) -> dict[str, TensorRef]:
    """Full reference keys for one file of a role; strays are an error naming the file."""
    has_vae = bool(spec.manifest.get("vae"))
    ignore = tuple(spec.manifest.get("checkpoint_ignore", ()))
    allowed = {"texture": (UNET_PREFIX, CONDITIONER_PREFIX) + ((VAE_PREFIX,) if has_vae else ()),
               "structure": (UNET_PREFIX,), "text_encoders": (CONDITIONER_PREFIX,), "vae": (VAE_PREFIX,)}[role]
    towers = _tower_attrs(spec) if role == "text_encoders" else {}
    out, stray, dropped = {}, [], 0
    for key, ref in index.items():
        if key in BOOKKEEPING_KEYS or (ignore and key.startswith(ignore)):
            continue
        if key.startswith(allowed):
            out[key] = ref
        elif role == "structure" and key.startswith((CONDITIONER_PREFIX, VAE_PREFIX)):
            dropped += 1  # the reference's high-timestep engine has no conditioner or VAE to load them into
        elif role == "text_encoders" and key.startswith("embedders."):
            out[CONDITIONER_PREFIX + key] = ref
        elif role == "text_encoders" and key.split(".", 1)[0] in towers:
            out[f"{CONDITIONER_PREFIX}embedders.{towers[key.split('.', 1)[0]]}.{key}"] = ref
        elif role == "vae" and key.startswith(_VAE_ROOTS):
            out[VAE_PREFIX + key] = ref
        else:
            stray.append(key)
    if stray:
        raise stray_keys_error(file, stray, allowed)
    if dropped:
        notes.append(f"{file.name}: ignored {dropped} conditioner/autoencoder keys (the structure model uses "
                     "only its UNet, as in the reference)")
    return out


def checkpoint_parts(spec: ModelSpec, group: str) -> CheckpointParts:
    """Index the files of `group` ("texture": texture + text_encoders + vae files; "structure") and split them."""
    roles = TEXTURE_GROUP if group == "texture" else (group,)
    prefixes = (UNET_PREFIX, CONDITIONER_PREFIX, VAE_PREFIX)
    parts: dict[str, dict[str, TensorRef]] = {p: {} for p in prefixes}
    sources: dict[str, list[str]] = {}
    notes: list[str] = []
    for role in roles:
        for file in spec.checkpoint_files(role):
            for key, ref in _normalise(index_checkpoint(file), role, file, spec, notes).items():
                prefix = next(p for p in prefixes if key.startswith(p))
                parts[prefix][key[len(prefix):]] = ref
                if file.name not in sources.setdefault(prefix, []):
                    sources[prefix].append(file.name)
    if group == "texture":
        _drop_stored_buffers(spec, parts[CONDITIONER_PREFIX], notes)
    return CheckpointParts(parts, sources, notes)


def _drop_stored_buffers(spec: ModelSpec, refs: dict[str, TensorRef], notes: list[str]) -> None:
    """MindONE keeps CLIP's `position_ids` and OpenCLIP's causal `attn_mask` as Parameters, so its checkpoints
    hold them; we compute both. Check that the stored ones are what we compute, then drop them."""
    for i, enc in enumerate(spec.manifest.get("text_encoders", [])):
        if enc.get("kind") == "hf_clip":
            key = f"embedders.{i}.transformer.text_model.embeddings.position_ids"
            if key in refs:
                ids = refs.pop(key).read().reshape(-1)
                if not np.array_equal(ids, np.arange(ids.size)):
                    raise CheckpointError(f"{key} is not 0, 1, 2, …: this encoder would need stored position ids",
                                          "the checkpoint does not match the reference's CLIP text tower")
        elif enc.get("kind") == "openclip":
            key = f"embedders.{i}.model.attn_mask"
            if key in refs:
                mask = refs.pop(key).read().astype(np.float32)
                upper = np.triu(np.ones(mask.shape, bool), k=1)
                if mask.ndim != 2 or mask.shape[0] != mask.shape[1] or np.any(mask[~upper] != 0) \
                        or np.any(mask[upper] > -1e4):
                    raise CheckpointError(f"{key} is not a causal mask",
                                          "the checkpoint does not match the reference's OpenCLIP text tower")
