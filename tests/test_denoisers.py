from __future__ import annotations

import math

import numpy as np
import pytest

from pangu_cli.sampling import (
    DiscreteEpsDenoiser,
    ExpertDenoiser,
    Guidance,
    GuidedDenoiser,
    SwitchPlan,
    reference_sigmas,
    reference_timesteps,
    sample_dpmpp_2m,
    sample_euler,
    sigma_table,
    switch_plan,
)

SHAPE = (2, 4, 4, 4)


class RecordingEps:
    """ε model that records its inputs and returns a fixed ε."""

    def __init__(self, eps_value: float = 0.5):
        self.eps_value = eps_value
        self.inputs = []

    def __call__(self, x_in, t, cond):
        self.inputs.append((x_in.copy(), t.copy(), cond))
        return np.full_like(x_in, self.eps_value)


def test_discrete_eps_denoiser_scalings():
    table = sigma_table()
    eps = RecordingEps(0.5)
    denoiser = DiscreteEpsDenoiser(eps, table)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    sigma = float(table[499])
    out = denoiser(x, sigma, cond="c")

    x_in, t, cond = eps.inputs[0]
    assert cond == "c"
    assert t.dtype == np.int32 and t.tolist() == [499, 499]
    assert np.allclose(x_in, x / math.sqrt(sigma**2 + 1), rtol=1e-6)  # c_in = 1/sqrt(σ² + 1)
    assert out.dtype == np.float32
    assert np.allclose(out, x - sigma * 0.5, rtol=1e-6)  # c_skip = 1, c_out = −σ


def test_v_prediction_recovers_x0_from_the_exact_v():
    """A network that returns the true v = sqrt(ᾱ)ε − sqrt(1−ᾱ)x0 must give back x0 exactly."""
    table = sigma_table()
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal(SHAPE).astype(np.float32)
    noise = rng.standard_normal(SHAPE).astype(np.float32)
    for t in (0, 250, 700, 999):
        sigma = float(table[t])
        x = x0 + np.float32(sigma) * noise  # VE state as the samplers hold it
        alpha_bar = 1.0 / (1.0 + sigma**2)

        def v_model(x_in, timesteps, cond):
            assert timesteps.tolist() == [t, t]
            return (math.sqrt(alpha_bar) * noise - math.sqrt(1 - alpha_bar) * x0).astype(np.float32)

        out = DiscreteEpsDenoiser(v_model, table, prediction="v")(x, sigma)
        assert np.abs(out - x0).max() <= 1e-4 * max(1.0, sigma), t
        # The same network read as an ε model is wrong (visibly so once σ is not tiny).
        if t >= 250:
            assert np.abs(DiscreteEpsDenoiser(v_model, table)(x, sigma) - x0).max() > 1e-2


def test_unknown_prediction_is_refused():
    with pytest.raises(ValueError, match="prediction"):
        DiscreteEpsDenoiser(RecordingEps(), prediction="x0")


def test_discrete_eps_denoiser_quantizes_sigma_to_the_table():
    table = sigma_table()
    eps = RecordingEps(1.0)
    denoiser = DiscreteEpsDenoiser(eps, table)
    x = np.zeros(SHAPE, dtype=np.float32)
    off_table = float(table[300]) * 1.001  # nearest entry is still t = 300
    out = denoiser(x, off_table)
    assert eps.inputs[0][1].tolist() == [300, 300]
    assert np.allclose(out, -float(table[300]))  # c_out uses the quantized σ, as the reference does


def test_switch_plan_reference_rule_40_steps():
    sigmas = reference_sigmas(40)
    plan = switch_plan(sigmas)  # lag = True, switch_t = 500
    assert plan.steps_per_expert() == (21, 19)
    timesteps = reference_timesteps(40)
    structure_t = [int(t) for t, k in zip(timesteps, plan.steps) if k == 0]
    assert structure_t == list(range(999, 498, -25))  # 999 … 499: step 20 (t = 499) is still structure
    assert plan.steps.index(1) == 21 and timesteps[21] == 474
    # The same plan from the integer timesteps.
    assert switch_plan(timesteps) == plan
    # Routing by sigma reproduces the per-step table exactly.
    assert [plan.expert_for(float(s)) for s in sigmas[:-1]] == list(plan.steps)
    assert float(sigmas[21]) < plan.thresholds[0] < float(sigmas[20])


def test_switch_plan_without_lag_and_other_thresholds():
    sigmas = reference_sigmas(40)
    plan = switch_plan(sigmas, lag=False)
    assert plan.steps_per_expert() == (20, 20)
    assert [int(t) for t, k in zip(reference_timesteps(40), plan.steps) if k == 0][-1] == 524
    assert switch_plan(sigmas, switch_t=750).steps_per_expert() == (11, 29)  # 999 … 749 (lagged)
    assert switch_plan(sigmas, switch_t=750, lag=False).steps_per_expert() == (10, 30)
    three = switch_plan(sigmas, switch_t=(750, 250), lag=False)
    assert three.n_experts == 3 and three.steps_per_expert() == (10, 20, 10)
    assert [three.expert_for(float(s)) for s in sigmas[:-1]] == list(three.steps)
    # Degenerate splits: everything structure / everything texture (except the lagged first step).
    assert switch_plan(sigmas, switch_t=0).steps_per_expert() == (40, 0)
    assert switch_plan(sigmas, switch_t=1000).steps_per_expert() == (1, 39)
    assert switch_plan(sigmas, switch_t=1000, lag=False).steps_per_expert() == (0, 40)
    with pytest.raises(ValueError):
        switch_plan(sigmas, switch_t=(250, 750))


def test_switch_plan_other_step_counts():
    # 20 steps: t = 999, 949, …, 49; lagged structure while the previous t ≥ 500: 999 … 549 and 499.
    plan = switch_plan(reference_sigmas(20))
    assert plan.steps_per_expert() == (11, 9)
    assert switch_plan(reference_sigmas(20), lag=False).steps_per_expert() == (10, 10)


def named_constant(value: float):
    return lambda x, sigma, *args: np.full_like(x, value)


def test_expert_denoiser_records_who_answered_under_euler():
    sigmas = reference_sigmas(40)
    experts = [("structure", named_constant(1.0)), ("texture", named_constant(2.0))]
    denoiser = ExpertDenoiser(experts, switch_plan(sigmas))
    out = sample_euler(denoiser, np.zeros(SHAPE, dtype=np.float32), sigmas)
    names = [name for _, name in denoiser.calls]
    assert names == ["structure"] * 21 + ["texture"] * 19
    assert [s for s, _ in denoiser.calls] == [float(s) for s in sigmas[:-1]]
    assert np.allclose(out, 2.0)  # the last step lands on the texture expert's estimate


def test_single_expert_and_plan_mismatch():
    denoiser = ExpertDenoiser([("only", named_constant(0.0))])
    sample_dpmpp_2m(denoiser, np.zeros(SHAPE, dtype=np.float32), reference_sigmas(5))
    assert [name for _, name in denoiser.calls] == ["only"] * 5
    with pytest.raises(ValueError):
        ExpertDenoiser([("a", named_constant(0.0)), ("b", named_constant(0.0))], SwitchPlan())
    with pytest.raises(ValueError):
        SwitchPlan((1.0, 2.0))


def test_guided_experts_share_one_guidance_and_one_call_per_step():
    """The reference layout: one cond batch and one guider for both UNets, one UNet call per step."""
    sigmas = reference_sigmas(10)
    guidance = Guidance(6.0, (4.0,))
    high, low = RecordingEps(0.1), RecordingEps(0.2)
    cond = {"y": np.arange(guidance.n_branches * SHAPE[0], dtype=np.float32)}
    experts = ExpertDenoiser(
        [("structure", DiscreteEpsDenoiser(high)), ("texture", DiscreteEpsDenoiser(low))], switch_plan(sigmas)
    )
    denoiser = GuidedDenoiser(experts, cond, guidance)
    sample_euler(denoiser, np.ones(SHAPE, dtype=np.float32), sigmas)
    assert len(high.inputs) + len(low.inputs) == 10
    assert len(high.inputs) == switch_plan(sigmas).steps_per_expert()[0]
    for x_in, t, c in high.inputs + low.inputs:
        assert x_in.shape[0] == 3 * SHAPE[0] and t.shape == (3 * SHAPE[0],) and c is cond
