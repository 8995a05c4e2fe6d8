"""Text → image with a loaded model: conditioning, the (two-stage) denoising loop, decoding.

The time-decoupled split is configuration, not a code path: each generator is a Coop-Diffusion member
(`sampling.coop`) active over its sigma range (structure for the large-noise steps, at its own
resolution; texture for the rest), each under one guidance that evaluates every branch in a single
batched UNet call. This module imports
MindSpore; the rest of `pangu_cli.sampling` does not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import mindspore as ms
import numpy as np

from pangu_cli.errors import UsageError
from pangu_cli.models.loader import LoadedModel
from pangu_cli.ratios import scale_size
from pangu_cli.sampling.coop import Member, resize, sample_coop, sigma_between
from pangu_cli.sampling.denoisers import DiscreteEpsDenoiser, GuidedDenoiser, switch_plan
from pangu_cli.sampling.guidance import Guidance
from pangu_cli.sampling.samplers import SAMPLERS
from pangu_cli.sampling.schedules import reference_sigmas
from pangu_cli.settings import ImageSettings


@dataclass
class Generated:
    pixels: np.ndarray  # (H, W, 3) uint8
    latent: np.ndarray
    expert_steps: list[str]
    truncated: list[str]
    timings: dict[str, float] = field(default_factory=dict)


def unet_eps_model(unet) -> Callable:
    """Adapt a UNet Cell to the sampling package's ε-model callable (numpy in, numpy out)."""

    def eps(x_in: np.ndarray, t: np.ndarray, cond: dict) -> np.ndarray:
        y = cond.get("y")
        out = unet(ms.Tensor(x_in), ms.Tensor(t), ms.Tensor(cond["context"]),
                   ms.Tensor(y) if y is not None else None)
        return out.astype(ms.float32).asnumpy()

    return eps


def latent_shape(model: LoadedModel, width: int, height: int) -> tuple[int, int, int, int]:
    factor = model.spec.latent_factor
    if width % factor or height % factor:
        raise UsageError(f"size {width}x{height} is not a multiple of {factor}", "pick a size from `pangu ratios`")
    channels = model.spec.manifest["unet"]["in_channels"]
    return (1, channels, height // factor, width // factor)


class Generator:
    """Generates images one at a time with a loaded model; the model stays loaded between calls."""

    def __init__(self, model: LoadedModel):
        self.model = model

    def branch_texts(self, s: ImageSettings) -> tuple[Guidance, list[str]]:
        styles = s.active_styles()
        prefixes = self.model.spec.style_prefixes
        unknown = [name for name, _ in styles if name not in prefixes]
        if unknown:
            raise UsageError(f"model '{self.model.spec.name}' has no style branch '{unknown[0]}'",
                             f"available: {', '.join(prefixes) or 'none'}")
        guidance = Guidance(s.guidance, tuple(scale for _, scale in styles))
        texts = guidance.branches(s.negative, s.prompt, [prefixes[name] + s.prompt for name, _ in styles])
        return guidance, texts

    def generate(self, s: ImageSettings, on_step: Callable[[dict], None] | None = None) -> Generated:
        if s.sampler not in SAMPLERS:
            raise UsageError(f"unknown sampler '{s.sampler}'", f"use one of: {', '.join(SAMPLERS)}")
        timings = {}
        start = time.perf_counter()
        guidance, texts = self.branch_texts(s)
        cond = self.model.conditioner.encode(texts, s.bucket_index)
        truncated = sorted({note for notes in cond.truncated for note in notes})
        timings["encode"] = time.perf_counter() - start

        start = time.perf_counter()
        sigmas = reference_sigmas(s.steps)
        members, structure_only = self.members(s, sigmas, cond.as_cond(), guidance)
        latent, plan = sample_coop(members, sigmas, s.seed, sampler=s.sampler, callback=on_step)
        if structure_only:  # every step below the switch: the structure result, brought to the output size
            latent = resize(latent, latent_shape(self.model, s.width, s.height)[2:])
        expert_steps = [step.lead for step in plan.steps]
        timings["denoise"] = time.perf_counter() - start

        start = time.perf_counter()
        pixels = self.decode(latent)
        timings["decode"] = time.perf_counter() - start
        return Generated(pixels, latent, expert_steps, truncated, timings)

    def members(self, s: ImageSettings, sigmas: np.ndarray, cond: dict, guidance: Guidance
                ) -> tuple[list[Member], bool]:
        """The Coop-Diffusion members of this model: one UNet, or structure → texture split at the switch.

        The structure steps run at `structure_scale` × the output size; at the hand-over the sampler resizes
        the structure model's clean estimate and re-noises it with fresh i.i.d. noise at that sigma, never
        the noisy sample (Coop-Diffusion §3.4), so the texture model sees the noise it was trained on.
        Returns the members and whether only the structure member runs (its result is then resized).
        """
        prediction = self.model.spec.prediction
        experts = [(role, GuidedDenoiser(DiscreteEpsDenoiser(unet_eps_model(unet), prediction=prediction),
                                         cond, guidance)) for role, unet in self.model.experts]
        _, channels, height, width = latent_shape(self.model, s.width, s.height)
        if len(experts) == 1:
            (name, denoiser), = experts
            return [Member(name, denoiser, (height, width), channels=channels)], False
        (structure, structure_d), (texture, texture_d) = experts
        low = (height, width)
        scale = float(self.model.spec.sampling.get("structure_scale", 1.0))
        if scale != 1.0:
            levels = len(self.model.spec.manifest["unet"].get("channel_mult", [1]))
            multiple = self.model.spec.latent_factor * 2 ** (levels - 1)
            low = latent_shape(self.model, *scale_size(s.width, s.height, scale, multiple))[2:]
        k = switch_plan(sigmas, switch_t=s.switch_t, lag=s.switch_lag).steps.count(0)
        if k == 0:
            return [Member(texture, texture_d, (height, width), channels=channels)], False
        if k == len(sigmas) - 1:
            return [Member(structure, structure_d, low, channels=channels)], low != (height, width)
        boundary = sigma_between(sigmas, k)
        return [Member(structure, structure_d, low, sigma_min=boundary, channels=channels),
                Member(texture, texture_d, (height, width), sigma_max=boundary, channels=channels)], False

    def decode(self, latent: np.ndarray) -> np.ndarray:
        vae = self.model.vae
        image = vae.decode_from_latent(ms.Tensor(latent)).asnumpy() if vae is not None else latent
        image = np.clip((image[0].transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)
        return np.round(image * 255.0).astype(np.uint8)
