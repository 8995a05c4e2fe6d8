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

from pangu_cli.ensemble import EnsemblePlan, plan_for
from pangu_cli.errors import UsageError
from pangu_cli.models.loader import LoadedModel
from pangu_cli.models.registry import ModelSpec
from pangu_cli.ratios import make_buckets, nearest_bucket
from pangu_cli.sampling.coop import IdentityCodec, Member, resize, sample_coop
from pangu_cli.sampling.denoisers import DiscreteEpsDenoiser, GuidedDenoiser
from pangu_cli.sampling.guidance import Guidance
from pangu_cli.sampling.samplers import SAMPLERS
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


class VAECodec:
    """A latent-space model's autoencoder as a Coop-Diffusion codec (posterior mean: deterministic)."""

    def __init__(self, model: LoadedModel):
        self.vae = model.vae
        self.factor = model.spec.latent_factor
        self.channels = int(model.spec.manifest["unet"]["in_channels"])
        self.space = ("vae", str(model.spec.root))

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        return self.vae.encode_to_latent(ms.Tensor(np.asarray(pixels, np.float32))).asnumpy()

    def decode(self, latent: np.ndarray) -> np.ndarray:
        return self.vae.decode_from_latent(ms.Tensor(np.asarray(latent, np.float32))).asnumpy()


def codec_of(model: LoadedModel):
    return VAECodec(model) if model.vae is not None else IdentityCodec(int(model.spec.manifest["unet"]["in_channels"]))


class Generator:
    """Generates images one at a time with a loaded model; the model stays loaded between calls.

    Every image is one Coop-Diffusion run (`sampling.coop`) over an ensemble (`pangu_cli.ensemble`): the
    model's own structure → texture split unless the settings carry a recipe. Models a recipe names besides
    the loaded one are loaded on first use with `load` and kept.
    """

    def __init__(self, model: LoadedModel, load: Callable[[ModelSpec], LoadedModel] | None = None):
        self.model = model
        self.load = load
        self.loaded: dict[str, LoadedModel] = {str(model.spec.root): model}

    def model_for(self, spec: ModelSpec) -> LoadedModel:
        key = str(spec.root)
        if key not in self.loaded:
            if self.load is None:
                raise UsageError(f"model '{spec.name}' is not loaded", "this generator cannot load other models")
            self.loaded[key] = self.load(spec)
        return self.loaded[key]

    def branch_texts(self, s: ImageSettings, model: LoadedModel | None = None,
                     scale: float | None = None) -> tuple[Guidance, list[str]]:
        model = model or self.model
        styles = s.active_styles()
        prefixes = model.spec.style_prefixes
        unknown = [name for name, _ in styles if name not in prefixes]
        if unknown:
            raise UsageError(f"model '{model.spec.name}' has no style branch '{unknown[0]}'",
                             f"available: {', '.join(prefixes) or 'none'}")
        guidance = Guidance(s.guidance if scale is None else scale, tuple(weight for _, weight in styles))
        texts = guidance.branches(s.negative, s.prompt, [prefixes[name] + s.prompt for name, _ in styles])
        return guidance, texts

    def plan(self, s: ImageSettings) -> EnsemblePlan:
        """The ensemble of these settings resolved against its models and the schedule (no network runs)."""
        return plan_for(self.model.spec, s)

    def generate(self, s: ImageSettings, on_step: Callable[[dict], None] | None = None) -> Generated:
        if s.sampler not in SAMPLERS:
            raise UsageError(f"unknown sampler '{s.sampler}'", f"use one of: {', '.join(SAMPLERS)}")
        timings = {"encode": 0.0}
        plan = self.plan(s)
        conds: dict[tuple, dict] = {}  # one text encoding per model and set of branches
        truncated: set[str] = set()
        members = []
        for mp in plan.members:
            model = self.model_for(mp.model)
            guidance, texts = self.branch_texts(s, model, mp.spec.guidance)
            key = (str(mp.model.root), tuple(texts))
            if key not in conds:
                start = time.perf_counter()
                bucket = s.bucket_index if model is self.model else \
                    nearest_bucket(make_buckets(mp.model.buckets), s.width / s.height).index
                encoded = model.conditioner.encode(texts, bucket)
                truncated.update(note for notes in encoded.truncated for note in notes)
                conds[key] = encoded.as_cond()
                timings["encode"] += time.perf_counter() - start
            cond = conds[key]
            unet = dict(model.experts)[mp.role]
            denoiser = DiscreteEpsDenoiser(unet_eps_model(unet), mp.model.sigma_table(), prediction=mp.model.prediction)
            sigma_min, sigma_max = plan.sigma_range(mp)
            members.append(Member(mp.spec.name, GuidedDenoiser(denoiser, cond, guidance), mp.latent_hw,
                                  codec=codec_of(model), sigma_min=sigma_min, sigma_max=sigma_max,
                                  weight=mp.spec.weight))

        start = time.perf_counter()
        latent, coop = sample_coop(members, plan.sigmas, s.seed, sampler=s.sampler, mode=plan.ensemble.mode,
                                   callback=on_step)
        final = next(mp for mp in plan.members if mp.spec.name == coop.steps[-1].lead)
        factor = final.model.latent_factor
        # A run that ends below the output size (every step on a low-resolution member): resize its result.
        latent = resize(latent, (s.height // factor, s.width // factor))
        timings["denoise"] = time.perf_counter() - start

        start = time.perf_counter()
        pixels = self.decode(latent, self.model_for(final.model))
        timings["decode"] = time.perf_counter() - start
        return Generated(pixels, latent, [step.lead for step in coop.steps], sorted(truncated), timings)

    def decode(self, latent: np.ndarray, model: LoadedModel | None = None) -> np.ndarray:
        vae = (model or self.model).vae
        image = vae.decode_from_latent(ms.Tensor(latent)).asnumpy() if vae is not None else latent
        image = np.clip((image[0].transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)
        return np.round(image * 255.0).astype(np.uint8)
