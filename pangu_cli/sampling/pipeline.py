"""Text → image with a loaded model: conditioning, the (two-stage) denoising loop, decoding.

The time-decoupled split is configuration, not a code path: each generator is an expert of an
`ExpertDenoiser`, routed by sigma (structure for the large-noise steps, texture for the rest), under
one guidance that evaluates every branch in a single batched UNet call. This module imports
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
from pangu_cli.sampling.denoisers import DiscreteEpsDenoiser, ExpertDenoiser, GuidedDenoiser, switch_plan
from pangu_cli.sampling.guidance import Guidance
from pangu_cli.sampling.samplers import SAMPLERS, initial_noise
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


def resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of (B, C, h, w) float32 to (B, C, *size), channel by channel (deterministic)."""
    from PIL import Image

    height, width = size
    out = np.empty(x.shape[:2] + (height, width), np.float32)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            plane = Image.fromarray(np.ascontiguousarray(x[b, c], np.float32), mode="F")
            out[b, c] = np.asarray(plane.resize((width, height), Image.Resampling.BICUBIC), np.float32)
    return out


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
        experts = [(role, DiscreteEpsDenoiser(unet_eps_model(unet))) for role, unet in self.model.experts]
        scale = float(self.model.spec.sampling.get("structure_scale", 1.0))
        if len(experts) == 2 and scale != 1.0:
            latent, expert_steps = self._two_resolutions(s, experts, sigmas, cond.as_cond(), guidance, scale, on_step)
        else:
            plan = switch_plan(sigmas, switch_t=s.switch_t, lag=s.switch_lag) if len(experts) == 2 else None
            router = ExpertDenoiser(experts, plan) if plan else ExpertDenoiser(experts)
            denoiser = GuidedDenoiser(router, cond.as_cond(), guidance)
            x = initial_noise(s.seed, latent_shape(self.model, s.width, s.height), sigmas[0])
            latent = SAMPLERS[s.sampler](denoiser, x, sigmas, callback=on_step)
            expert_steps = [name for _, name in router.calls]
        timings["denoise"] = time.perf_counter() - start

        start = time.perf_counter()
        pixels = self.decode(latent)
        timings["decode"] = time.perf_counter() - start
        return Generated(pixels, latent, expert_steps, truncated, timings)

    def _two_resolutions(self, s: ImageSettings, experts, sigmas, cond, guidance, scale, on_step):
        """Structure steps at `scale` × the output size, texture steps at the output size.

        At the hand-over sigma the structure model's clean estimate is resized and re-noised with fresh
        i.i.d. noise at that sigma (x = up(x̂₀) + σ·z): resizing the noisy sample instead would blur the
        noise and break the i.i.d. assumption the texture model was trained on (Coop-Diffusion §3.4).
        """
        plan = switch_plan(sigmas, switch_t=s.switch_t, lag=s.switch_lag)
        k = plan.steps.count(0)
        (_, structure), (_, texture) = experts
        sampler = SAMPLERS[s.sampler]
        high = latent_shape(self.model, s.width, s.height)
        low = latent_shape(self.model, round(s.width * scale), round(s.height * scale))
        calls = ["structure"] * k + ["texture"] * (len(sigmas) - 1 - k)
        if k == 0:  # the switch lies before the first step: texture only, at the output size
            x = initial_noise(s.seed, high, sigmas[0])
            return sampler(GuidedDenoiser(texture, cond, guidance), x, sigmas, callback=on_step), calls
        last = {}

        def structure_step(info: dict) -> None:
            last["denoised"] = info["denoised"]
            if on_step is not None:
                on_step(info)

        x = initial_noise(s.seed, low, sigmas[0])
        x = sampler(GuidedDenoiser(structure, cond, guidance), x, sigmas[:k + 1], callback=structure_step)
        if k == len(sigmas) - 1:  # structure only: its result, brought to the output size
            return resize(x, high[2:]), calls
        # The hand-over uses the structure model's last clean estimate, so it is never asked about a
        # noise level outside the range it was trained on.
        x0 = resize(last["denoised"], high[2:])
        fresh = np.random.RandomState((s.seed + 1) % 2**32).randn(*high).astype(np.float32)
        x = x0 + np.float32(sigmas[k]) * fresh

        def texture_step(info: dict) -> None:
            if on_step is not None:
                on_step({**info, "i": info["i"] + k})

        x = sampler(GuidedDenoiser(texture, cond, guidance), x, sigmas[k:], callback=texture_step)
        return x, calls

    def decode(self, latent: np.ndarray) -> np.ndarray:
        vae = self.model.vae
        image = vae.decode_from_latent(ms.Tensor(latent)).asnumpy() if vae is not None else latent
        image = np.clip((image[0].transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)
        return np.round(image * 255.0).astype(np.uint8)
