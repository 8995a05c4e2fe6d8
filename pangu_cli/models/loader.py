"""Build a model's networks from its manifest and load its checkpoints, strictly.

The pieces: `checkpoint_index` (where each tensor lies in a file, read on demand), `checkpoint_groups` (a
model's files → the tensors of each network, in the reference's key layout, strays rejected), `networks`
(networks built without initialising parameters), `param_table` (filling a Cell one tensor at a time),
`device_options` (precision, compilation, flash attention) and `unet_bank` (the UNet experts). Every key and
shape is checked before any weight is read, so loading needs the networks plus one tensor.

Memory modes (`load_model`): both UNets resident (default); `offload` keeps one UNet Cell and
swaps the other expert's weights in at the switch (from host RAM on an accelerator, from the file
on CPU); `lazy_texture` reads the texture UNet at its first step (keys are still checked up front).
`precision` fp16/bf16 stores UNet and text-tower weights in that type (norms stay fp32) and runs
them at AMP level O2 as the reference does; the autoencoder stays fp32.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

from pangu_cli.errors import ModelError
from pangu_cli.models.checkpoint import check_keys
from pangu_cli.models.checkpoint_groups import (BOOKKEEPING_KEYS, CONDITIONER_PREFIX, TEXTURE_GROUP, UNET_PREFIX,
                                                VAE_PREFIX, CheckpointParts, checkpoint_parts, stray_keys_error)
from pangu_cli.models.checkpoint_index import TensorRef, index_checkpoint, read_tensors
from pangu_cli.models.conditioner import Conditioner
from pangu_cli.models.device_options import DeviceOptions, device_options, mixed_precision
from pangu_cli.models.flash_attention import use_flash_attention
from pangu_cli.models.networks import (build_conditioner, build_unet, build_vae, built_network, param_shapes,
                                       without_init)
from pangu_cli.models.param_table import ParamTable, load_checked
from pangu_cli.models.registry import ModelSpec
from pangu_cli.models.unet import UNetModel
from pangu_cli.models.unet_bank import ROLES, UNetBank
from pangu_cli.models.vae import AutoencoderKL

# This module is also where callers, tests and benchmarks import the pieces above from (index_checkpoint,
# read_tensors, build_conditioner, without_init, …); tests patch `device_options` here, where load_model
# looks it up. `_shapes` is param_shapes' former name.
_shapes = param_shapes
OFFLOAD_ENV = "PANGU_OFFLOAD"


@dataclass
class LoadedModel:
    spec: ModelSpec
    conditioner: Conditioner
    unets: dict[str, UNetModel]  # the UNet Cells materialised so far (all of them unless lazy / offload)
    vae: AutoencoderKL | None
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    bank: UNetBank | None = None

    @property
    def experts(self) -> list[tuple[str, Callable]]:
        """(role, UNet callable) in schedule order; lazy / offloaded experts load at their first call."""
        if self.bank is None:
            return [(role, self.unets[role]) for role in ROLES if role in self.unets]
        return [(role, self.bank.expert(role)) for role in ROLES if role in self.bank.roles]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def load_model(spec: ModelSpec, precision: str = "fp32", offload: bool | None = None,
               lazy_texture: bool | None = None, device: str | None = None) -> LoadedModel:
    """Build the networks of `spec` and fill them from its checkpoints (MindSpore must be set up).

    precision: fp32, fp16, bf16 or auto (fp16 on Ascend/GPU, fp32 on CPU). offload: one UNet Cell, weights
    swapped at the switch (default: the PANGU_OFFLOAD environment variable). lazy_texture: read the texture UNet
    at its first step (default: with offload). Every key and shape is checked before any weight is read.
    """
    missing = spec.missing_files()
    if missing:
        raise ModelError(f"model '{spec.name}' is missing {missing[0]}",
                         "copy the file back, or run `pangu models` to see what is installed")
    start = time.perf_counter()
    if spec.checkpoint("texture") is None:
        raise ModelError(f"model '{spec.name}' names no texture checkpoint", "add checkpoints.texture to model.json")
    offload = _env_flag(OFFLOAD_ENV) if offload is None else offload
    lazy_texture = offload if lazy_texture is None else lazy_texture
    opts = device_options(precision, device)

    texture = checkpoint_parts(spec, "texture")
    notes = list(texture.notes)
    unet_refs = {"texture": texture.parts[UNET_PREFIX]}
    labels = {"texture": f"texture UNet ({texture.label(UNET_PREFIX)})"}
    if spec.checkpoint("structure") is not None:
        structure = checkpoint_parts(spec, "structure")
        notes += structure.notes
        unet_refs["structure"] = structure.parts[UNET_PREFIX]
        labels["structure"] = f"structure UNet ({structure.label(UNET_PREFIX)})"
    if not spec.manifest.get("vae") and texture.parts[VAE_PREFIX]:
        raise stray_keys_error(spec.checkpoint("texture"), list(texture.parts[VAE_PREFIX]),
                               (UNET_PREFIX, CONDITIONER_PREFIX))

    unets: dict[str, UNetModel] = {}
    bank = UNetBank(spec, unet_refs, labels, opts, offload, unets)
    # Fail on any key or shape mismatch before reading gigabytes: check every UNet group up front.
    bank.spare = built_network(spec, build_unet, opts.half)
    shapes = param_shapes(bank.spare)
    for role in bank.roles:
        check_keys(shapes, unet_refs[role], labels[role])

    conditioner = built_network(spec, build_conditioner, opts.half)
    load_checked(conditioner, texture.parts[CONDITIONER_PREFIX], f"text encoders ({texture.label(CONDITIONER_PREFIX)})",
                 opts.half)
    vae = built_network(spec, build_vae)
    if vae is not None:
        load_checked(vae, texture.parts[VAE_PREFIX], f"autoencoder ({texture.label(VAE_PREFIX)})")
        vae.set_train(False)
    conditioner.load_tokenizers(spec.path)
    conditioner.set_train(False)
    if opts.half is not None:
        for embedder in conditioner.embedders:
            mixed_precision(embedder.tower, opts.half)

    eager = [role for role in bank.roles if not (lazy_texture and role == "texture")]
    for role in eager:
        bank.get(role)
    model = LoadedModel(spec, conditioner, unets, vae, notes=notes,
                        bank=bank if (offload or lazy_texture) else None)
    model.timings["load"] = time.perf_counter() - start
    return model


def expected_keys(spec: ModelSpec) -> dict[str, dict[str, tuple]]:
    """Key → shape of each checkpoint group (full reference names), from the config, allocating no weights."""
    unet = {UNET_PREFIX + k: v for k, v in param_shapes(built_network(spec, build_unet)).items()}
    texture = dict(unet)
    conditioner = built_network(spec, build_conditioner)
    texture.update({CONDITIONER_PREFIX + k: v for k, v in param_shapes(conditioner).items()})
    vae = built_network(spec, build_vae)
    if vae is not None:
        texture.update({VAE_PREFIX + k: v for k, v in param_shapes(vae).items()})
    shapes = {"texture": texture}
    if spec.checkpoint("structure") is not None:
        shapes["structure"] = unet
    return shapes


def verify_checkpoint(spec: ModelSpec, group: str) -> list[str]:
    """Check a checkpoint group's key set and shapes against the config without reading weights.

    Raises CheckpointError naming the first missing / unexpected / mis-shaped keys; returns notes.
    """
    found = checkpoint_parts(spec, group)
    builders = {UNET_PREFIX: ("UNet", build_unet), CONDITIONER_PREFIX: ("text encoders", build_conditioner),
                VAE_PREFIX: ("autoencoder", build_vae)}
    prefixes = (UNET_PREFIX,) if group == "structure" else (UNET_PREFIX, CONDITIONER_PREFIX, VAE_PREFIX)
    for prefix in prefixes:
        name, builder = builders[prefix]
        cell = built_network(spec, builder)
        if cell is None:
            if found.parts[prefix]:
                raise stray_keys_error(spec.checkpoint(group), list(found.parts[prefix]),
                                       (UNET_PREFIX, CONDITIONER_PREFIX))
            continue
        what = f"{group} {name}" if prefix == UNET_PREFIX else name
        check_keys(param_shapes(cell), found.parts[prefix], f"{what} ({found.label(prefix)})")
    return found.notes
