"""Coop-Diffusion on analytic denoisers.

Data x0 ~ N(μ, s²·I) per element has the exact denoiser D(x, σ) = μ + s²/(s²+σ²)·(x − μ), so every
expected value below is computed in closed form, without networks.
"""

from __future__ import annotations

import numpy as np
import pytest

from pangu_cli.errors import UsageError
from pangu_cli.sampling.coop import (
    IdentityCodec,
    Member,
    fresh_noise,
    plan_coop,
    resize,
    sample_coop,
    sigma_between,
    to_space,
)
from pangu_cli.sampling.samplers import SAMPLERS, initial_noise, sample_euler
from pangu_cli.sampling.schedules import reference_sigmas

SIGMAS = reference_sigmas(20)
K = 10  # the hand-over step of the two-member plans
BOUNDARY = sigma_between(SIGMAS, K)


def shrink(s: float, sigma: float) -> np.float32:
    return np.float32(s * s / (s * s + sigma * sigma))


def gaussian_denoiser(mu: np.ndarray, s: float):
    mu = np.asarray(mu, np.float32)
    return lambda x, sigma: (mu + shrink(s, sigma) * (x - mu)).astype(np.float32)


def pattern(c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth mean image, so resizing it is meaningful."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    phase = np.random.default_rng(seed).uniform(0, 3, size=(c, 1, 1))
    return (0.6 * np.sin(2 * xx + phase) * np.cos(1.5 * yy - phase)).astype(np.float32)


class Recorder:
    """Wraps a denoiser and keeps every (sigma, input, output)."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, []

    def __call__(self, x, sigma):
        out = self.denoiser(x, sigma)
        self.calls.append((sigma, x.copy(), out.copy()))
        return out


class PoolCodec:
    """A linear codec: latent = scale·AvgPool₂ₓ₂(pixels), pixels = NearestUp₂ₓ₂(latent)/scale (no `space`:
    each instance is its own latent space)."""

    factor, channels = 2, 3

    def __init__(self, scale: float):
        self.scale = np.float32(scale)

    def encode(self, pixels):
        b, c, h, w = pixels.shape
        return pixels.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5)) * self.scale

    def decode(self, latent):
        return np.repeat(np.repeat(latent / self.scale, 2, axis=2), 2, axis=3)


def nearest_up(x):
    return np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)


def noise_stats(residual: np.ndarray, sigma: float) -> tuple[float, float, float]:
    """(variance / σ², lag-1 autocorrelation along width, along height) of a residual that should be σ·z."""
    r = residual / sigma
    r = r - r.mean()
    var = float((r * r).mean())
    rho_w = float((r[..., :, 1:] * r[..., :, :-1]).mean() / var)
    rho_h = float((r[..., 1:, :] * r[..., :-1, :]).mean() / var)
    return var, rho_w, rho_h


def is_iid(stats) -> bool:
    # N = 49152 elements: std of the variance ratio is sqrt(2/N) ≈ 0.0064, of a correlation 1/sqrt(N) ≈ 0.0045.
    var, rho_w, rho_h = stats
    return abs(var - 1.0) < 0.03 and abs(rho_w) < 0.025 and abs(rho_h) < 0.025


def two_resolutions(low_denoiser, high_denoiser, low_codec=None, high_codec=None):
    return [
        Member("structure", low_denoiser, (8, 8), low_codec or IdentityCodec(), sigma_min=BOUNDARY),
        Member("texture", high_denoiser, (16, 16), high_codec or IdentityCodec(), sigma_max=BOUNDARY),
    ]


# 1. Hard switching inside one space is plain sampling.

@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_hard_switch_in_one_space_reproduces_single_member_sampling(sampler):
    mu = pattern(4, 8, 8)
    structure, texture = Recorder(gaussian_denoiser(mu, 0.7)), Recorder(gaussian_denoiser(mu, 0.7))
    members = [Member("structure", structure, (8, 8), channels=4, sigma_min=BOUNDARY),
               Member("texture", texture, (8, 8), channels=4, sigma_max=BOUNDARY)]
    x, plan = sample_coop(members, SIGMAS, seed=7, sampler=sampler, batch=2)

    reference = SAMPLERS[sampler](gaussian_denoiser(mu, 0.7), initial_noise(7, (2, 4, 8, 8), SIGMAS[0]), SIGMAS)
    # Bit-identical: no re-noising and (DPM++ 2M) no history reset at a switch within one space.
    assert np.array_equal(x, reference)
    assert [s for s, _, _ in structure.calls] == [float(s) for s in SIGMAS[:K]]
    assert [s for s, _, _ in texture.calls] == [float(s) for s in SIGMAS[K:-1]]
    assert not any(step.renoise for step in plan.steps)


# 2. Fusion.

def test_fusing_a_denoiser_with_itself_is_that_denoiser():
    mu = pattern(3, 8, 8)
    exact = gaussian_denoiser(mu, 0.5)
    members = [Member("a", exact, (8, 8), IdentityCodec(), weight=0.3),
               Member("b", gaussian_denoiser(mu, 0.5), (8, 8), IdentityCodec(), weight=2.5)]
    seen = []
    x, _ = sample_coop(members, SIGMAS, seed=3, mode="fuse", callback=seen.append)

    x_before = initial_noise(3, (1, 3, 8, 8), SIGMAS[0])
    for info in seen:  # each fused estimate equals D at the same input, to float32 rounding
        expected = exact(x_before, info["sigma"])
        assert np.abs(info["denoised"] - expected).max() <= 1e-6 * max(1.0, np.abs(expected).max())
        x_before = info["x"]
    reference = sample_euler(exact, initial_noise(3, (1, 3, 8, 8), SIGMAS[0]), SIGMAS)
    assert np.abs(x - reference).max() <= 1e-6 * max(1.0, np.abs(reference).max())


@pytest.mark.parametrize("weights", [(0.25, 0.75), (2.0, 1.0), (1.5, -0.5)])
def test_fusing_two_affine_denoisers_is_the_weighted_affine_denoiser(weights):
    w1, w2 = weights
    mu1, mu2, s1, s2 = pattern(3, 8, 8, seed=1), pattern(3, 8, 8, seed=2), 0.4, 1.3
    members = [Member("a", gaussian_denoiser(mu1, s1), (8, 8), IdentityCodec(), weight=w1),
               Member("b", gaussian_denoiser(mu2, s2), (8, 8), IdentityCodec(), weight=w2)]
    x, plan = sample_coop(members, SIGMAS, seed=11, mode="fuse")

    def closed_form(x, sigma):  # D_w(x) = c(σ) + b(σ)·x
        a1, a2 = float(shrink(s1, sigma)), float(shrink(s2, sigma))
        b = (w1 * a1 + w2 * a2) / (w1 + w2)
        c = (w1 * (1 - a1) * mu1.astype(np.float64) + w2 * (1 - a2) * mu2.astype(np.float64)) / (w1 + w2)
        return (c + b * x).astype(np.float32)

    reference = sample_euler(closed_form, initial_noise(11, (1, 3, 8, 8), SIGMAS[0]), SIGMAS)
    assert np.abs(x - reference).max() <= 1e-5 * max(1.0, np.abs(reference).max())
    assert plan.evaluations() == {"a": 20, "b": 20}


def test_fusion_across_spaces_bridges_the_lead_estimate_with_the_lead_noise_estimate():
    """Helper latent of the lead's shape: it sees bridge(x̂0_lead) + σ·ε̂_lead; its x̂0 comes back bridged."""
    codec = PoolCodec(2.0)
    lead = Recorder(gaussian_denoiser(pattern(3, 16, 16), 0.5))
    helper = Recorder(gaussian_denoiser(2.0 * pattern(3, 16, 16, seed=5), 1.0))
    members = [Member("pixels", lead, (16, 16), IdentityCodec(), weight=1.0),
               Member("latent", helper, (16, 16), codec, weight=3.0)]  # latent 3×16×16 ↔ pixels 32×32
    seen = []
    sample_coop(members, SIGMAS, seed=5, mode="fuse", callback=seen.append)

    sigma, x, x0_lead = lead.calls[0]
    assert np.array_equal(x, initial_noise(5, (1, 3, 16, 16), SIGMAS[0]))
    eps = (x - x0_lead) / np.float32(sigma)
    expected_input = codec.encode(np.clip(resize(x0_lead, (32, 32)), -1, 1)) + np.float32(sigma) * eps
    _, helper_input, helper_x0 = helper.calls[0]
    assert np.abs(helper_input - expected_input).max() <= 1e-5
    back = resize(np.clip(codec.decode(helper_x0), -1, 1), (16, 16))
    assert np.abs(seen[0]["denoised"] - (1.0 * x0_lead + 3.0 * back) / 4.0).max() <= 1e-5


def test_fusion_with_a_helper_of_another_shape_uses_fresh_noise():
    lead = Recorder(gaussian_denoiser(pattern(3, 16, 16), 0.5))
    helper = Recorder(gaussian_denoiser(pattern(3, 8, 8), 0.5))
    members = [Member("lead", lead, (16, 16), IdentityCodec()), Member("small", helper, (8, 8), IdentityCodec())]
    sample_coop(members, SIGMAS, seed=9, mode="fuse")
    for step in (0, 7):
        sigma, _, x0_lead = lead.calls[step]
        anchor = resize(x0_lead, (8, 8))  # one latent space: resized in latent, no clamp
        expected = anchor + np.float32(sigma) * fresh_noise(9, step, (1, 3, 8, 8), stream=2)
        assert np.abs(helper.calls[step][1] - expected).max() <= 1e-6 * max(1.0, np.abs(expected).max())


# 3. Resolution hand-over keeps the noise i.i.d.

def test_resolution_switch_renoises_with_iid_noise_and_naive_resizing_does_not():
    batch, mu_low, mu_high = 64, pattern(3, 8, 8), pattern(3, 16, 16)
    texture = Recorder(gaussian_denoiser(mu_high, 0.5))
    seen = []
    _, plan = sample_coop(two_resolutions(gaussian_denoiser(mu_low, 0.5), texture), SIGMAS, seed=21,
                          batch=batch, callback=seen.append)
    assert [s.index for s in plan.steps if s.renoise] == [K]
    sigma, x_high, _ = texture.calls[0]
    assert sigma == float(SIGMAS[K])

    x0_low = seen[K - 1]["denoised"]  # the structure member's last clean estimate
    bridged = to_space(x0_low, IdentityCodec(), IdentityCodec(), (16, 16))
    stats = noise_stats(x_high - bridged, sigma)
    assert is_iid(stats), stats
    assert abs(float((x_high - bridged).mean())) < 0.02 * sigma

    # The naive hand-over resizes a noisy low-res sample x̂0 + σ·z; its residual around the resized x̂0 is
    # resize(σ·z): nearest copies each value into 2×2 blocks (neighbour correlation 0.5), bicubic blends
    # neighbours (variance falls, correlation rises).
    noisy_low = x0_low + np.float32(sigma) * np.random.default_rng(0).standard_normal(x0_low.shape, np.float32)
    nearest = noise_stats(nearest_up(noisy_low) - nearest_up(x0_low), sigma)
    bicubic = noise_stats(resize(noisy_low, (16, 16)) - resize(x0_low, (16, 16)), sigma)
    assert not is_iid(nearest) and nearest[1] > 0.4 and nearest[2] > 0.4, nearest
    assert not is_iid(bicubic) and bicubic[0] < 0.9 and bicubic[1] > 0.3, bicubic


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_resolution_switch_is_two_runs_joined_by_the_renoised_clean_estimate(sampler):
    """As the pipeline's structure → texture hand-over: low-res run, x = resize(x̂0) + σ_k·z, a fresh high-res run (so DPM++ 2M
    restarts its history: its old estimates live in the other space)."""
    low, high = gaussian_denoiser(pattern(3, 8, 8), 0.6), gaussian_denoiser(pattern(3, 16, 16), 0.6)
    x, _ = sample_coop(two_resolutions(low, high), SIGMAS, seed=4, sampler=sampler)

    last = {}
    x_ref = SAMPLERS[sampler](low, initial_noise(4, (1, 3, 8, 8), SIGMAS[0]), SIGMAS[:K + 1],
                              callback=lambda info: last.update(denoised=info["denoised"]))
    x_ref = resize(last["denoised"], (16, 16)) + np.float32(SIGMAS[K]) * fresh_noise(4, K, (1, 3, 16, 16))
    x_ref = SAMPLERS[sampler](high, x_ref, SIGMAS[K:])
    assert np.array_equal(x, x_ref)


# 4. Bridges.

def test_bridge_within_one_space_is_exact():
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32) * 4  # far outside [-1, 1]
    assert np.array_equal(to_space(x, IdentityCodec(), IdentityCodec(), (8, 8)), x)
    assert np.array_equal(to_space(x, None, None, (8, 8)), x)
    # Another size in one space is a latent resize: no clamp either.
    assert np.array_equal(to_space(x, IdentityCodec(), IdentityCodec(), (16, 16)), resize(x, (16, 16)))
    assert np.abs(to_space(x, IdentityCodec(), IdentityCodec(), (16, 16))).max() > 2


def test_bridge_through_a_linear_codec_matches_closed_form():
    rng = np.random.default_rng(2)
    pixels = rng.uniform(-1.5, 1.5, (2, 3, 16, 16)).astype(np.float32)  # some beyond [-1, 1]: clamped
    latent = rng.uniform(-3, 3, (2, 3, 8, 8)).astype(np.float32)
    a, b = PoolCodec(2.0), PoolCodec(0.5)

    def pool(p):
        return p.reshape(2, 3, 8, 2, 8, 2).mean(axis=(3, 5))

    clamped = np.clip(pixels, -1, 1)
    cases = [
        (to_space(pixels, IdentityCodec(), a, (8, 8)), 2.0 * pool(clamped)),
        (to_space(latent, a, IdentityCodec(), (16, 16)), np.clip(nearest_up(latent / 2.0), -1, 1)),
        (to_space(latent, a, b, (8, 8)), 0.5 * np.clip(latent / 2.0, -1, 1)),
        (to_space(to_space(clamped, IdentityCodec(), a, (8, 8)), a, IdentityCodec(), (16, 16)),
         nearest_up(pool(clamped))),
    ]
    for got, expected in cases:
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-6


def test_pixel_resize_option_goes_through_pixels_within_one_space():
    x = np.linspace(-3, 3, 2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
    got = to_space(x, IdentityCodec(), IdentityCodec(), (16, 16), pixel_resize=True)
    assert np.array_equal(got, resize(np.clip(x, -1, 1), (16, 16)))
    assert np.array_equal(to_space(x, IdentityCodec(), IdentityCodec(), (8, 8), pixel_resize=True), x)


# 5. Determinism.

def fresh_noise_members():
    """A hand-over through pixels into another codec, plus a fused helper of another shape: every kind of
    fresh noise."""
    b = BOUNDARY
    return [
        Member("structure", gaussian_denoiser(pattern(3, 8, 8), 0.5), (8, 8), IdentityCodec(), sigma_min=b),
        Member("texture", gaussian_denoiser(pattern(3, 8, 8, 1), 0.5), (8, 8), PoolCodec(2.0), sigma_max=b),
        Member("helper", gaussian_denoiser(pattern(3, 16, 16), 0.5), (16, 16), IdentityCodec(), sigma_max=b,
               weight=0.5),
    ]


def test_same_seed_same_bytes_and_another_seed_differs():
    members = fresh_noise_members()
    first, plan = sample_coop(members, SIGMAS, seed=5, mode="fuse")
    again, _ = sample_coop(fresh_noise_members(), SIGMAS, seed=5, mode="fuse")
    other, _ = sample_coop(members, SIGMAS, seed=6, mode="fuse")
    assert first.shape == (1, 3, 8, 8)
    assert first.tobytes() == again.tobytes()
    assert np.abs(first - other).max() > 1e-3
    assert plan.steps[K].renoise and plan.steps[K].bridged == ("helper",)


# 6. Bad inputs.

def member(name, **kw):
    kw.setdefault("codec", IdentityCodec())
    return Member(name, gaussian_denoiser(np.zeros((3, 8, 8)), 0.5), kw.pop("size", (8, 8)), **kw)


@pytest.mark.parametrize("members,mode,words", [
    ([], "switch", ["at least one member"]),
    ([member("structure", sigma_min=1.0), member("texture", sigma_max=2.0)], "switch",
     ["member 'texture'", "sigma range [0, 2)", "overlaps member 'structure'"]),
    ([member("structure", sigma_min=5.0), member("texture", sigma_max=1.0)], "switch",
     ["no member covers step", "member 'structure' sigma range [5, inf)", "member 'texture' sigma range [0, 1)"]),
    ([member("a", weight=1.0), member("b", weight=-1.0)], "fuse", ["members 'a', 'b'", "weights sum to 0"]),
    ([member("only", weight=0.0)], "switch", ["members 'only'", "weights sum to 0"]),
    ([member("structure", codec=None, channels=3, sigma_min=BOUNDARY),
      member("texture", size=(16, 16), sigma_max=BOUNDARY)], "switch",
     ["member 'structure': codec is missing", "member 'texture'"]),
    ([member("lead"), member("helper", codec=PoolCodec(2.0)), member("bare", codec=None, channels=3)], "fuse",
     ["member 'bare': codec is missing", "member 'lead'"]),
    ([member("a", codec=None, channels=3), member("b", codec=None, channels=4, size=(16, 16))], "fuse",
     ["member 'b': channels 4 differ from member 'a'"]),
    ([member("a", sigma_min=3.0, sigma_max=3.0)], "switch", ["member 'a'", "sigma range [3, 3) is empty"]),
    ([member("a"), member("a", sigma_max=0.5)], "fuse", ["'a'", "used twice"]),
    ([member("a")], "blend", ["unknown Coop mode 'blend'"]),
])
def test_bad_members_raise_usage_errors_naming_member_and_field(members, mode, words):
    with pytest.raises(UsageError) as caught:
        plan_coop(members, SIGMAS, mode)
    for word in words:
        assert word in caught.value.message
    with pytest.raises(UsageError):
        sample_coop(members, SIGMAS, seed=0, mode=mode)


def test_codecless_members_of_one_size_need_no_codec_but_pixel_resize_does():
    ok = [member("a", codec=None, channels=3, sigma_min=BOUNDARY), member("b", codec=None, channels=3,
                                                                         sigma_max=BOUNDARY)]
    assert plan_coop(ok, SIGMAS).lead_steps() == {"a": K, "b": 20 - K}
    resized = [ok[0], member("b", codec=None, channels=3, size=(16, 16), sigma_max=BOUNDARY)]
    assert plan_coop(resized, SIGMAS).steps[K].renoise  # latent resize in the shared space
    with pytest.raises(UsageError, match="member 'a': codec is missing"):
        plan_coop(resized, SIGMAS, pixel_resize=True)


def test_unknown_sampler_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown sampler 'heun'"):
        sample_coop([member("a")], SIGMAS, seed=0, sampler="heun")


# 7. The plan, without running anything.

def never_called(x, sigma):
    raise AssertionError("plan_coop must not evaluate a denoiser")


def test_plan_reports_leads_resolutions_and_cost_without_evaluating():
    members = [Member("structure", never_called, (8, 8), PoolCodec(1.0), sigma_min=BOUNDARY),
               Member("texture", never_called, (16, 16), IdentityCodec(), sigma_max=BOUNDARY)]
    plan = plan_coop(members, SIGMAS)
    assert [s.lead for s in plan.steps] == ["structure"] * K + ["texture"] * (20 - K)
    assert [s.latent_shape for s in plan.steps] == [(3, 8, 8)] * K + [(3, 16, 16)] * (20 - K)
    assert [s.pixel_size for s in plan.steps] == [(16, 16)] * K + [(16, 16)] * (20 - K)
    assert [s.index for s in plan.steps if s.renoise] == [K]
    assert [s.sigma for s in plan.steps] == [float(v) for v in SIGMAS[:-1]]
    assert plan.evaluations() == {"structure": K, "texture": 20 - K}
    assert plan.segments() == [(0, K), (K, 20)]
    lines = plan.describe()
    assert len(lines) == 20 and "re-noised" in lines[K] and "texture" in lines[K] and "re-noised" not in lines[K - 1]

    fused = members + [Member("helper", never_called, (16, 16), IdentityCodec(), weight=0.5)]
    plan = plan_coop(fused, SIGMAS, mode="fuse")
    assert plan.evaluations() == {"structure": K, "texture": 20 - K, "helper": 20}
    assert sum(plan.evaluations().values()) == 40
    assert plan.lead_steps() == {"structure": K, "texture": 20 - K, "helper": 0}
    assert [s.bridged for s in plan.steps] == [("helper",)] * K + [()] * (20 - K)


def test_ranges_are_half_open_and_touching_ranges_tile():
    edge = float(SIGMAS[K])  # a step exactly on a boundary belongs to the member whose sigma_min it is
    members = [member("structure", sigma_min=edge), member("texture", sigma_max=edge)]
    plan = plan_coop(members, SIGMAS)
    assert plan.lead_steps() == {"structure": K + 1, "texture": 20 - K - 1}
    assert all(len(s.active) == 1 for s in plan.steps)
    fused = plan_coop(members, SIGMAS, mode="fuse")  # touching ranges never share a step, even when fusing
    assert all(len(s.active) == 1 for s in fused.steps)


def test_a_run_costs_what_its_plan_says():
    recorders = [Recorder(gaussian_denoiser(pattern(3, 8, 8), 0.5)),
                 Recorder(gaussian_denoiser(pattern(3, 16, 16), 0.5)),
                 Recorder(gaussian_denoiser(pattern(3, 16, 16), 0.5))]
    members = two_resolutions(recorders[0], recorders[1]) + [
        Member("helper", recorders[2], (16, 16), IdentityCodec(), weight=0.5)]
    _, plan = sample_coop(members, SIGMAS, seed=1, sampler="dpmpp_2m", mode="fuse")
    assert [len(r.calls) for r in recorders] == list(plan.evaluations().values()) == [K, 20 - K, 20]
