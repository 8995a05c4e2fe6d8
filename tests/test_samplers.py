from __future__ import annotations

import math

import numpy as np
import pytest

from pangu_cli.sampling import (
    SAMPLERS,
    DiscreteEpsDenoiser,
    initial_noise,
    reference_sigmas,
    reference_timesteps,
    sample_dpmpp_2m,
    sample_euler,
)

SHAPE = (2, 4, 8, 8)
SEED = 1234


def eps_fn(x_in: np.ndarray, t: np.ndarray) -> np.ndarray:
    """A deterministic, nonlinear stand-in for an ε network: mixes channels, depends on t."""
    x_in = np.asarray(x_in, dtype=np.float32)
    t = np.asarray(t, dtype=np.float32).reshape(-1, 1, 1, 1)
    return np.tanh(0.8 * x_in + 0.3 * np.roll(x_in, 1, axis=1) + (t / 1000.0 - 0.5)).astype(np.float32)


def ours(sampler, steps: int, trajectory: list | None = None, prediction: str = "eps") -> np.ndarray:
    sigmas = reference_sigmas(steps)
    x = initial_noise(SEED, SHAPE, sigmas[0])
    denoiser = DiscreteEpsDenoiser(lambda x_in, t, cond: eps_fn(x_in, t), prediction=prediction)
    callback = None if trajectory is None else (lambda info: trajectory.append(info["x"].copy()))
    return sampler(lambda x, sigma: denoiser(x, sigma), x, sigmas, callback)


def rel_error(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / max(1.0, np.abs(ref).max()))


# Parity with diffusers: same betas, same custom timesteps, same ε function, same starting latent.
# Tolerance: max |ours − diffusers| <= 1e-4 · max(1, max |diffusers|). Diffusers builds its betas with
# torch.linspace, so its sigmas differ from the reference's numpy float32 ones by ~6e-7 relative.
TOL = 1e-4


@pytest.mark.parity
@pytest.mark.parametrize("steps,prediction", [(20, "eps"), (40, "eps"), (20, "v")])
def test_euler_matches_diffusers(torch, steps, prediction):
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon" if prediction == "eps" else "v_prediction", timestep_spacing="leading",
    )
    sched.set_timesteps(timesteps=reference_timesteps(steps).tolist())
    sigmas = reference_sigmas(steps)
    # "leading" spacing makes diffusers scale its initial noise like the reference: sqrt(σ_max² + 1).
    assert float(sched.init_noise_sigma) == pytest.approx(math.sqrt(1 + float(sigmas[0]) ** 2), rel=1e-6)

    sample = torch.from_numpy(initial_noise(SEED, SHAPE, sigmas[0]))
    ref_trajectory = []
    for t in sched.timesteps:
        model_in = sched.scale_model_input(sample, t)
        eps = torch.from_numpy(eps_fn(model_in.numpy(), np.full(SHAPE[0], int(t))))
        sample = sched.step(eps, t, sample).prev_sample
        ref_trajectory.append(sample.numpy().copy())

    trajectory = []
    out = ours(sample_euler, steps, trajectory, prediction)
    assert out.dtype == np.float32
    err = rel_error(out, sample.numpy())
    assert err <= TOL, err
    assert max(rel_error(a, b) for a, b in zip(trajectory, ref_trajectory)) <= TOL


@pytest.mark.parity
@pytest.mark.parametrize("steps", [10, 20, 40])
def test_dpmpp_2m_matches_diffusers(torch, steps):
    """Diffusers integrates x_t = α_t·x_σ (α_t = 1/sqrt(σ²+1)), so its states are divided by α to compare.
    With final_sigmas_type="zero" its last step is first order (lower_order_final), landing on the last
    x0 estimate, as ours does; its second-to-last step stays second order."""
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon",
        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        lower_order_final=True, final_sigmas_type="zero",
    )
    sched.set_timesteps(timesteps=reference_timesteps(steps).tolist())
    sigmas = reference_sigmas(steps)

    def alpha(sigma: float) -> float:
        return 1.0 / math.sqrt(sigma * sigma + 1.0)

    sample = torch.from_numpy(initial_noise(SEED, SHAPE, sigmas[0]) * np.float32(alpha(float(sigmas[0]))))
    ref_trajectory = []
    for i, t in enumerate(sched.timesteps):
        eps = torch.from_numpy(eps_fn(sample.numpy(), np.full(SHAPE[0], int(t))))
        sample = sched.step(eps, t, sample).prev_sample
        ref_trajectory.append(sample.numpy() / alpha(float(sigmas[i + 1])))

    trajectory = []
    out = ours(sample_dpmpp_2m, steps, trajectory)
    err = rel_error(out, sample.numpy())
    assert err <= TOL, err
    assert max(rel_error(a, b) for a, b in zip(trajectory, ref_trajectory)) <= TOL


def gaussian_denoiser(s: float):
    """The exact x0 estimate when x_0 ~ N(0, s²): D(x, σ) = x·s²/(s² + σ²)."""
    return lambda x, sigma: x * np.float32(s * s / (s * s + sigma * sigma))


def test_samplers_convergence_order():
    """Gaussian data: the probability-flow ODE solution is x(σ) = x(σ_max)·sqrt(s² + σ²)/sqrt(s² + σ_max²).
    Measured at the last non-zero sigma of a geometric schedule, Euler's error halves and DPM++(2M)'s
    quarters when the number of steps doubles."""
    s, sigma_max, sigma_min = 0.7, 14.6, 0.1
    x = initial_noise(0, SHAPE, sigma_max).astype(np.float64)
    exact = x * math.sqrt(s * s + sigma_min**2) / math.sqrt(s * s + sigma_max**2)
    errors = {}
    for name, sampler in SAMPLERS.items():
        for steps in (20, 40, 80):
            sigmas = np.append(np.geomspace(sigma_max, sigma_min, steps), 0.0)
            infos = []
            sampler(gaussian_denoiser(s), x, sigmas, infos.append)
            errors[name, steps] = np.abs(infos[-2]["x"] - exact).max() / np.abs(exact).max()
    for steps in (20, 40):
        assert 1.8 < errors["euler", steps] / errors["euler", 2 * steps] < 2.2
        assert 3.3 < errors["dpmpp_2m", steps] / errors["dpmpp_2m", 2 * steps] < 4.5
    assert errors["dpmpp_2m", 40] < errors["euler", 40] / 10


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_constant_denoiser_lands_on_it(name):
    target = np.full(SHAPE, 0.25, dtype=np.float32)
    sigmas = reference_sigmas(10)
    out = SAMPLERS[name](lambda x, sigma: target, initial_noise(3, SHAPE, sigmas[0]), sigmas)
    assert np.allclose(out, target, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_and_calls(name):
    sigmas = reference_sigmas(7)
    seen, infos = [], []
    denoiser = lambda x, sigma: (seen.append(sigma), 0.5 * x)[1]  # noqa: E731
    SAMPLERS[name](denoiser, initial_noise(0, SHAPE, sigmas[0]), sigmas, infos.append)
    assert seen == [float(s) for s in sigmas[:-1]]
    assert all(isinstance(s, float) for s in seen)
    assert [info["i"] for info in infos] == list(range(7))
    assert [info["sigma_next"] for info in infos] == [float(s) for s in sigmas[1:]]
    assert set(infos[0]) == {"i", "x", "sigma", "sigma_next", "denoised"}
    assert infos[-1]["x"].dtype == np.float32


def test_euler_first_step_by_hand():
    sigmas = np.array([2.0, 1.0, 0.0], dtype=np.float32)
    x = np.ones((1, 1, 2, 2), dtype=np.float32)
    infos = []
    sample_euler(lambda x, sigma: 0.5 * x, x, sigmas, infos.append)
    # d = (1 − 0.5)/2 = 0.25; x ← 1 + (1 − 2)·0.25 = 0.75; then the last step lands on D = 0.375.
    assert np.allclose(infos[0]["x"], 0.75) and np.allclose(infos[1]["x"], 0.375)


def test_dpmpp_2m_second_step_by_hand():
    sigmas = np.array([4.0, 2.0, 1.0, 0.0])
    x = np.full((1, 1, 1, 1), 3.0)
    outs = iter([np.full_like(x, 1.0), np.full_like(x, 2.0), np.full_like(x, 5.0)])
    infos = []
    sample_dpmpp_2m(lambda x, sigma: next(outs), x, sigmas, infos.append)
    # Step 0 (first order): h = log 2 → x = 0.5·3 + 0.5·1 = 2.
    assert infos[0]["x"].item() == pytest.approx(2.0)
    # Step 1: r = log(4/2)/log(2/1) = 1 → D' = 1.5·2 − 0.5·1 = 2.5; x = 0.5·2 + 0.5·2.5 = 2.25.
    assert infos[1]["x"].item() == pytest.approx(2.25)
    assert infos[2]["x"].item() == pytest.approx(5.0)


def test_initial_noise_deterministic_and_scaled():
    a = initial_noise(42, SHAPE, 14.6146555)
    b = initial_noise(42, SHAPE, 14.6146555)
    assert a.dtype == np.float32 and a.tobytes() == b.tobytes()
    assert initial_noise(43, SHAPE, 14.6146555).tobytes() != a.tobytes()
    # The reference: np.random.seed(seed); randn → float32; times float32 sqrt(1 + σ_max²).
    np.random.seed(42)
    expected = np.random.randn(*SHAPE).astype(np.float32) * np.float32(math.sqrt(1 + 14.6146555**2))
    assert a.tobytes() == expected.tobytes()
