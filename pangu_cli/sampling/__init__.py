"""The schedule, samplers and guidance, usable with any callable denoiser.

Pure numpy: nothing here imports MindSpore (the engine wraps its networks into plain callables).

    sigmas = reference_sigmas(40)
    x = initial_noise(seed, (1, 4, 128, 128), sigmas[0])
    experts = [("structure", DiscreteEpsDenoiser(high_eps)), ("texture", DiscreteEpsDenoiser(low_eps))]
    denoiser = GuidedDenoiser(ExpertDenoiser(experts, switch_plan(sigmas)), cond, Guidance(6.0, (4.0,)))
    latent = sample_euler(denoiser, x, sigmas)
"""

from __future__ import annotations

from pangu_cli.sampling.coop import Member, plan_coop, sample_coop
from pangu_cli.sampling.denoisers import (
    DiscreteEpsDenoiser,
    ExpertDenoiser,
    GuidedDenoiser,
    SwitchPlan,
    switch_plan,
)
from pangu_cli.sampling.guidance import Guidance, stack_conds
from pangu_cli.sampling.samplers import SAMPLERS, initial_noise, sample_dpmpp_2m, sample_euler
from pangu_cli.sampling.schedules import (
    ddpm_alphas_cumprod,
    karras_sigmas,
    reference_sigmas,
    reference_timesteps,
    shift_snr,
    sigma_table,
    sigma_to_t,
)

__all__ = [
    "DiscreteEpsDenoiser",
    "ExpertDenoiser",
    "Guidance",
    "GuidedDenoiser",
    "Member",
    "SAMPLERS",
    "SwitchPlan",
    "ddpm_alphas_cumprod",
    "initial_noise",
    "karras_sigmas",
    "plan_coop",
    "reference_sigmas",
    "reference_timesteps",
    "sample_coop",
    "sample_dpmpp_2m",
    "sample_euler",
    "shift_snr",
    "sigma_table",
    "sigma_to_t",
    "stack_conds",
    "switch_plan",
]
