"""Samplers, one plain function each, in the style of k-diffusion.

Every sampler has the signature `sample_x(denoiser, x, sigmas, callback=None) -> x`:
- `denoiser(x, sigma) -> x0 estimate`, with x a float32 array (B, C, H, W) in σ-scaled space
  (x = x_0 + σ·ε) and sigma a Python float;
- `sigmas` descending and ending in 0 (see `schedules`);
- `callback`, if given, receives `{"i", "x", "sigma", "sigma_next", "denoised"}` after every step.
Which network answers at a given sigma is the denoiser's business, never the loop's.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

Denoiser = Callable[[np.ndarray, float], np.ndarray]
Callback = Callable[[dict], None]


def initial_noise(seed: int, shape: tuple[int, ...], sigma_max: float) -> np.ndarray:
    """Starting latent N(0, 1 + σ_max²), float32, drawn like the reference.

    The reference draws `np.random.randn` (legacy MT19937, polar Box–Muller), casts to float32 and then
    multiplies by the float32 factor sqrt(1 + σ_max²); the same rounding order is kept here.
    """
    noise = np.random.RandomState(seed).randn(*shape).astype(np.float32)
    return noise * np.float32(math.sqrt(1.0 + float(sigma_max) ** 2))


def sample_euler(
    denoiser: Denoiser, x: np.ndarray, sigmas: np.ndarray, callback: Callback | None = None
) -> np.ndarray:
    """Euler's method on the probability-flow ODE dx/dσ = (x − D(x, σ))/σ (Karras et al. 2022, EDM, Alg. 2
    with S_churn = 0 and no Heun correction) — the reference's `EulerEDMSampler`."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigma)
        d = (x - denoised) / sigma
        x = x + (sigma_next - sigma) * d
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
    return x


def sample_dpmpp_2m(
    denoiser: Denoiser, x: np.ndarray, sigmas: np.ndarray, callback: Callback | None = None
) -> np.ndarray:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Alg. 2), the multistep second-order solver of the
    data-prediction ODE, written in σ space with λ = −log σ.

    The first step has no history and the step to σ = 0 has h = ∞, so both are first order (the latter
    lands exactly on the last x0 estimate).
    """
    old_denoised = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigma)
        if sigma_next == 0.0:
            x = denoised
        else:
            h = math.log(sigma / sigma_next)
            if old_denoised is None:
                denoised_d = denoised
            else:
                r = math.log(float(sigmas[i - 1]) / sigma) / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - math.expm1(-h) * denoised_d
        old_denoised = denoised
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
    return x


SAMPLERS: dict[str, Callable[..., np.ndarray]] = {
    "euler": sample_euler,
    "dpmpp_2m": sample_dpmpp_2m,
}
