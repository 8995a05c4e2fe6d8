"""Build a model's networks from its manifest and load its checkpoints, strictly.

Key layout (the reference's): `model.diffusion_model.` (UNet), `conditioner.` (text towers),
`first_stage_model.` (autoencoder). The texture checkpoint carries all three, the structure
checkpoint one more UNet. Anything else in a checkpoint is an error, as is anything missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pangu_cli.errors import CheckpointError, ModelError
from pangu_cli.models.checkpoint import check_keys, load_into, load_state
from pangu_cli.models.conditioner import Conditioner
from pangu_cli.models.registry import ModelSpec
from pangu_cli.models.unet import UNetModel
from pangu_cli.models.vae import AutoencoderKL

UNET_PREFIX = "model.diffusion_model."
CONDITIONER_PREFIX = "conditioner."
VAE_PREFIX = "first_stage_model."
ROLES = ("structure", "texture")  # noisiest range first


@dataclass
class LoadedModel:
    spec: ModelSpec
    conditioner: Conditioner
    unets: dict[str, UNetModel]
    vae: AutoencoderKL | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def experts(self) -> list[tuple[str, UNetModel]]:
        return [(role, self.unets[role]) for role in ROLES if role in self.unets]


def build_conditioner(spec: ModelSpec) -> Conditioner:
    size = spec.manifest.get("size_embedding", {}).get("dim")
    conditioning = spec.manifest.get("conditioning", {})
    return Conditioner(spec.manifest["text_encoders"], size_embed_dim=size,
                       routing=conditioning.get("routing", "all"), concat=conditioning.get("concat", "channels"))


def build_vae(spec: ModelSpec) -> AutoencoderKL | None:
    vae = spec.manifest.get("vae")
    return AutoencoderKL(**vae) if vae else None


def _split(state: dict[str, np.ndarray], prefixes: tuple[str, ...], file: str) -> dict[str, dict]:
    parts = {p: {} for p in prefixes}
    stray = []
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                parts[prefix][key[len(prefix):]] = value
                break
        else:
            stray.append(key)
    if stray:
        raise CheckpointError(f"{file}: {len(stray)} unexpected keys outside {', '.join(prefixes)} "
                              f"(e.g. {', '.join(sorted(stray)[:5])})",
                              "check that the file belongs to this model")
    return parts


def load_model(spec: ModelSpec, precision: str = "fp32") -> LoadedModel:
    """Build the networks of `spec` and fill them from its checkpoints (MindSpore must be set up)."""
    import time

    missing = spec.missing_files()
    if missing:
        raise ModelError(f"model '{spec.name}' is missing {missing[0]}",
                         "copy the file back, or run `pangu models` to see what is installed")
    start = time.perf_counter()
    texture_file = spec.checkpoint("texture")
    if texture_file is None:
        raise ModelError(f"model '{spec.name}' names no texture checkpoint", "add checkpoints.texture to model.json")
    has_vae = bool(spec.manifest.get("vae"))
    prefixes = (UNET_PREFIX, CONDITIONER_PREFIX) + ((VAE_PREFIX,) if has_vae else ())
    parts = _split(load_state(texture_file), prefixes, texture_file.name)

    unets = {}
    try:
        unet_params = spec.manifest["unet"]
        unets["texture"] = UNetModel(**unet_params)
        conditioner = build_conditioner(spec)
        vae = build_vae(spec)
    except ModelError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelError(f"model '{spec.name}' has an invalid network config: {exc}", "check model.json") from exc

    load_into(unets["texture"], parts[UNET_PREFIX], what=f"texture UNet ({texture_file.name})")
    load_into(conditioner, parts[CONDITIONER_PREFIX], what=f"text encoders ({texture_file.name})")
    if vae is not None:
        load_into(vae, parts[VAE_PREFIX], what=f"autoencoder ({texture_file.name})")
    conditioner.load_tokenizers(spec.path)

    structure_file = spec.checkpoint("structure")
    if structure_file is not None:
        state = _split(load_state(structure_file), (UNET_PREFIX,), structure_file.name)[UNET_PREFIX]
        unets["structure"] = UNetModel(**unet_params)
        load_into(unets["structure"], state, what=f"structure UNet ({structure_file.name})")

    model = LoadedModel(spec, conditioner, unets, vae)
    for cell in [conditioner, *unets.values()] + ([vae] if vae else []):
        cell.set_train(False)
    if precision != "fp32":
        _apply_precision(model, precision)
    model.timings["load"] = time.perf_counter() - start
    return model


def _apply_precision(model: LoadedModel, precision: str) -> None:
    """Run the UNets in half precision, keeping norms in fp32 (the reference's AMP level O2)."""
    import mindspore as ms

    from pangu_cli.runtime import compute_dtype

    dtype = compute_dtype(precision)
    for name, unet in model.unets.items():
        model.unets[name] = ms.amp.auto_mixed_precision(unet, amp_level="O2", dtype=dtype)


def expected_keys(spec: ModelSpec) -> dict[str, dict[str, tuple]]:
    """Key → shape of each checkpoint role, built from the config (used by `models verify`)."""
    from pangu_cli.models.checkpoint import cell_state

    unet = cell_state(UNetModel(**spec.manifest["unet"]), UNET_PREFIX)
    texture = dict(unet)
    texture.update(cell_state(build_conditioner(spec), CONDITIONER_PREFIX))
    vae = build_vae(spec)
    if vae is not None:
        texture.update(cell_state(vae, VAE_PREFIX))
    shapes = {"texture": {k: v.shape for k, v in texture.items()}}
    if spec.checkpoint("structure") is not None:
        shapes["structure"] = {k: v.shape for k, v in unet.items()}
    return shapes


def verify_checkpoint(spec: ModelSpec, role: str) -> None:
    state = load_state(spec.checkpoint(role))
    check_keys(expected_keys(spec)[role], state, what=f"{role} checkpoint of '{spec.name}'")
