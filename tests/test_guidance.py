from __future__ import annotations

import numpy as np
import pytest

from pangu_cli.sampling import Guidance, GuidedDenoiser, reference_sigmas, sample_euler, stack_conds

B = 2


def branch_outputs(values: list[float]) -> np.ndarray:
    """Stacked (n·B, 1, 2, 2) outputs, branch j filled with values[j]."""
    return np.concatenate([np.full((B, 1, 2, 2), v, dtype=np.float32) for v in values])


def test_plain_cfg():
    g = Guidance(7.5)
    assert g.n_branches == 2 and g.uses_uncond and g.active_styles == ()
    out = g.combine(branch_outputs([1.0, 3.0]))  # D_u = 1, D_c = 3
    assert out.shape == (B, 1, 2, 2) and out.dtype == np.float32
    assert np.allclose(out, 1.0 + 7.5 * (3.0 - 1.0))


def test_style_deltas_are_relative_to_conditional_branch():
    g = Guidance(6.0, (4.0, -0.5))
    assert g.n_branches == 4
    d_u, d_c, d_1, d_2 = 1.0, 2.0, 5.0, -3.0
    out = g.combine(branch_outputs([d_u, d_c, d_1, d_2]))
    expected = d_u + 6.0 * (d_c - d_u) + 4.0 * (d_1 - d_c) + (-0.5) * (d_2 - d_c)
    assert np.allclose(out, expected)  # 1 + 6 + 12 + 2.5 = 21.5
    assert expected == 21.5


def test_per_element_combination_keeps_batch_rows_apart():
    g = Guidance(2.0, (1.5,))
    rng = np.random.default_rng(0)
    d_u, d_c, d_s = (rng.standard_normal((B, 3, 4, 4)).astype(np.float32) for _ in range(3))
    out = g.combine(np.concatenate([d_u, d_c, d_s]))
    assert np.allclose(out, d_u + 2.0 * (d_c - d_u) + 1.5 * (d_s - d_c), atol=1e-6)


@pytest.mark.parametrize("scale,clamped", [(-3.0, 0.0), (0.0, 0.0), (250.0, 100.0), (100.0, 100.0)])
def test_guidance_scale_is_clamped_style_scales_are_not(scale, clamped):
    g = Guidance(scale, (150.0,))
    assert g.effective_scale == clamped
    out = g.combine(branch_outputs([1.0, 2.0, 2.5]))
    assert np.allclose(out, 1.0 + clamped * (2.0 - 1.0) + 150.0 * (2.5 - 2.0))


def test_zero_scale_style_is_not_a_branch():
    g = Guidance(5.0, (0.0, 3.0, 0.0))
    assert g.active_styles == (1,) and g.n_branches == 3
    assert g.branches("uc", "c", ["aes", "anime", "photo"]) == ["uc", "c", "anime"]
    out = g.combine(branch_outputs([1.0, 2.0, 4.0]))
    assert np.allclose(out, 1.0 + 5.0 * 1.0 + 3.0 * 2.0)
    with pytest.raises(ValueError):
        g.branches("uc", "c", ["only one"])


def test_scale_one_skips_the_unconditional_branch():
    g = Guidance(1.0)
    assert not g.uses_uncond and g.n_branches == 1
    assert g.branches("uc", "c") == ["c"]
    assert np.allclose(g.combine(branch_outputs([2.0])), 2.0)
    # With styles the formula at s = 1 is D_c + Σ s_k (D_k − D_c), still without D_u.
    g = Guidance(1.0, (2.0,))
    assert g.branches("uc", "c", ["style"]) == ["c", "style"]
    assert np.allclose(g.combine(branch_outputs([2.0, 3.0])), 2.0 + 2.0 * 1.0)


def test_combine_rejects_wrong_batch():
    with pytest.raises(ValueError):
        Guidance(6.0, (4.0,)).combine(branch_outputs([1.0, 2.0])[:5])
    with pytest.raises(ValueError):
        Guidance(float("nan"))


def test_stack_conds_branch_order():
    uc = {"context": np.zeros((B, 3, 8)), "y": np.zeros((B, 5))}
    c = {"context": np.ones((B, 3, 8)), "y": np.ones((B, 5))}
    st = {"context": np.full((B, 3, 8), 2.0), "y": np.full((B, 5), 2.0)}
    g = Guidance(6.0, (4.0,))
    stacked = stack_conds(g.branches(uc, c, [st]))
    assert stacked["context"].shape == (3 * B, 3, 8) and stacked["y"].shape == (3 * B, 5)
    assert stacked["y"][:, 0].tolist() == [0, 0, 1, 1, 2, 2]
    assert stack_conds([None, None]) is None
    with pytest.raises(ValueError):
        stack_conds([uc, {"context": c["context"]}])


class CountingNetwork:
    """A network denoiser (x, sigma, cond) -> x0 that answers per row from its conditioning."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, sigma, cond):
        self.batches.append(x.shape[0])
        assert cond["y"].shape[0] == x.shape[0]
        return (0.5 * x + cond["y"][:, :, None, None]).astype(np.float32)


def test_guided_denoiser_one_batched_call_per_step():
    g = Guidance(6.0, (4.0, 0.0, 2.0))  # the zero-scale style is never evaluated
    cond_of = lambda v: {"y": np.full((B, 1), v, dtype=np.float32)}  # noqa: E731
    network = CountingNetwork()
    denoiser = GuidedDenoiser.from_branches(
        network, g, uc=cond_of(0.0), c=cond_of(1.0), styles=[cond_of(2.0), cond_of(99.0), cond_of(3.0)]
    )
    assert denoiser.cond["y"][:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]

    x = np.random.default_rng(1).standard_normal((B, 1, 4, 4)).astype(np.float32)
    out = denoiser(x, 3.0)
    # D_branch = 0.5x + v: D = D_u + 6(D_c − D_u) + 4(D_1 − D_c) + 2(D_3 − D_c) = 0.5x + 0 + 6 + 4 + 4
    assert np.allclose(out, 0.5 * x + 14.0, atol=1e-5)

    sigmas = reference_sigmas(12)
    network.batches.clear()
    sample_euler(denoiser, x, sigmas)
    assert network.batches == [4 * B] * 12
