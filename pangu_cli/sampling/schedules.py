"""Noise schedules: small functions that return sigma arrays.

Sigmas are in the variance-exploding ("EDM") form σ_t = sqrt((1 − ᾱ_t) / ᾱ_t), where the scaled latent is
x_σ = x_0 + σ·ε. The DDPM tables reproduce MindONE's `LegacyDDPMDiscretization` exactly, including its
float32 arithmetic, so the sigmas a sampler sees are bit-identical to the reference's.
"""

from __future__ import annotations

import numpy as np

NUM_TRAIN_TIMESTEPS = 1000


def ddpm_alphas_cumprod(
    linear_start: float = 0.00085,
    linear_end: float = 0.012,
    num_timesteps: int = NUM_TRAIN_TIMESTEPS,
) -> np.ndarray:
    """ᾱ_t for the "scaled linear" β schedule (linear in √β), computed in float32 as the reference does."""
    betas = np.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=np.float32) ** 2
    return np.cumprod(1.0 - betas, axis=0)


def shift_snr(alphas_cumprod: np.ndarray, snr_shift: float) -> np.ndarray:
    """ᾱ_t of the schedule whose signal-to-noise ratio is SNR_t / `snr_shift` at every t.

    A schedule made for large latents leaves the low frequencies of a small image almost noise-free at
    t = T−1 (at 32×32 pixels the image mean is still visible at ᾱ = 0.005), so the starting noise, not the
    prompt, decides the layout. Dividing the SNR by (resolution ratio)² restores the destruction the
    schedule had at its design resolution (Hoogeboom et al. 2023, "simple diffusion"). In σ form it is
    σ_t · √shift.
    """
    if not snr_shift > 0:
        raise ValueError(f"snr_shift must be positive, got {snr_shift}")
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    return (ac / (ac + snr_shift * (1.0 - ac))).astype(np.float32)


def sigma_table(alphas_cumprod: np.ndarray | None = None, snr_shift: float = 1.0) -> np.ndarray:
    """σ_t for every training timestep t = 0 … T−1 (ascending), float32."""
    ac = ddpm_alphas_cumprod() if alphas_cumprod is None else np.asarray(alphas_cumprod, dtype=np.float32)
    sigmas = ((1 - ac) / ac) ** 0.5
    # Scaling σ directly keeps the unshifted table bit-identical to the reference's.
    return sigmas if snr_shift == 1.0 else (sigmas * np.float32(snr_shift ** 0.5)).astype(np.float32)


def reference_timesteps(n: int, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """The n training timesteps the reference samples at, descending (40 steps: 999, 974, …, 24)."""
    if not 1 <= n <= num_timesteps:
        raise ValueError(f"number of steps must be in 1..{num_timesteps}, got {n}")
    if n == num_timesteps:
        return np.arange(num_timesteps - 1, -1, -1)
    return np.linspace(num_timesteps - 1, 0, n, endpoint=False).astype(int)


def reference_sigmas(n: int, append_zero: bool = True, alphas_cumprod: np.ndarray | None = None,
                     table: np.ndarray | None = None) -> np.ndarray:
    """Descending float32 sigmas of `LegacyDDPMDiscretization(n)` (over `table` when given, e.g. a
    shifted one), with the final 0 when `append_zero`."""
    table = sigma_table(alphas_cumprod) if table is None else np.asarray(table, np.float32)
    sigmas = table[reference_timesteps(n, len(table))]
    return _append_zero(sigmas) if append_zero else sigmas


def sigma_to_t(sigma, table: np.ndarray | None = None):
    """Index of the nearest table sigma: argmin_t |σ − σ_t|, linear distance as the reference's `sigma_to_idx`.

    A scalar gives a Python int, an array gives an int array of the same shape.
    """
    table = sigma_table() if table is None else np.asarray(table)
    s = np.asarray(sigma, dtype=np.float64)
    idx = np.abs(s.reshape(-1, 1) - table.astype(np.float64)[None, :]).argmin(axis=1).reshape(s.shape)
    return int(idx) if idx.ndim == 0 else idx


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, append_zero: bool = True) -> np.ndarray:
    """The schedule of Karras et al. 2022 (EDM, eq. 5): uniform in σ^(1/ρ), descending, float32."""
    if n < 1:
        raise ValueError(f"number of steps must be >= 1, got {n}")
    ramp = np.linspace(0, 1, n)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = ((max_inv + ramp * (min_inv - max_inv)) ** rho).astype(np.float32)
    return _append_zero(sigmas) if append_zero else sigmas


def _append_zero(sigmas: np.ndarray) -> np.ndarray:
    return np.concatenate([sigmas, np.zeros(1, dtype=sigmas.dtype)])
