from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pangu_cli.sampling import (
    ddpm_alphas_cumprod,
    karras_sigmas,
    reference_sigmas,
    reference_timesteps,
    shift_snr,
    sigma_table,
    sigma_to_t,
)


def test_alphas_cumprod_is_float32_scaled_linear():
    ac = ddpm_alphas_cumprod()
    assert ac.dtype == np.float32 and ac.shape == (1000,)
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float32) ** 2
    assert np.array_equal(ac, np.cumprod(1 - betas))
    assert np.all(np.diff(ac) < 0)


def test_sigma_table_endpoints():
    table = sigma_table()
    assert table.dtype == np.float32 and table.shape == (1000,)
    assert table[0] == pytest.approx(0.0291675, abs=1e-6)
    assert table[999] == pytest.approx(14.6146555, abs=1e-5)
    assert np.all(np.diff(table) > 0)


def test_snr_shift_divides_the_snr_and_scales_sigma():
    ac = ddpm_alphas_cumprod().astype(np.float64)
    shifted = shift_snr(ac, 16.0).astype(np.float64)
    np.testing.assert_allclose(shifted / (1 - shifted), ac / (1 - ac) / 16.0, rtol=1e-5)
    np.testing.assert_allclose(sigma_table(snr_shift=16.0), 4.0 * sigma_table(), rtol=1e-6)
    np.testing.assert_allclose(sigma_table(shifted), sigma_table(snr_shift=16.0), rtol=1e-5)
    assert np.array_equal(sigma_table(snr_shift=1.0), sigma_table())  # the reference's table, bit for bit
    assert reference_sigmas(3, table=sigma_table(snr_shift=4.0))[0] == pytest.approx(2 * 14.6146555, rel=1e-6)
    with pytest.raises(ValueError, match="snr_shift"):
        shift_snr(ac, 0.0)


def test_reference_timesteps_40():
    t = reference_timesteps(40)
    assert t.tolist() == list(range(999, 0, -25))
    assert t[0] == 999 and t[1] == 974 and t[-1] == 24


@pytest.mark.parametrize(
    "i,t,sigma", [(0, 999, 14.6147), (1, 974, 12.5908), (20, 499, 1.6129), (21, 474, 1.4844), (39, 24, 0.1515)]
)
def test_reference_sigmas_known_values(i, t, sigma):
    sigmas = reference_sigmas(40)
    assert sigmas.dtype == np.float32 and sigmas.shape == (41,)
    assert round(float(sigmas[i]), 4) == sigma
    assert sigmas[i] == sigma_table()[t]


def test_reference_sigmas_shape_and_zero():
    sigmas = reference_sigmas(40)
    assert sigmas[-1] == 0.0 and np.all(np.diff(sigmas) < 0)
    assert reference_sigmas(40, append_zero=False).shape == (40,)
    # The factor the reference scales the initial noise with (notes §2.4).
    assert np.sqrt(1.0 + float(sigmas[0]) ** 2) == pytest.approx(14.648828, abs=1e-5)


def test_all_steps_and_too_many():
    sigmas = reference_sigmas(1000)
    assert sigmas.shape == (1001,)
    assert np.array_equal(sigmas[:-1], sigma_table()[::-1])
    assert reference_timesteps(1).tolist() == [999]
    with pytest.raises(ValueError):
        reference_sigmas(1001)
    with pytest.raises(ValueError):
        reference_timesteps(0)


def test_sigma_to_t_is_nearest_table_entry():
    table = sigma_table()
    assert sigma_to_t(float(table[499]), table) == 499
    sigmas = reference_sigmas(40, append_zero=False)
    assert np.array_equal(sigma_to_t(sigmas, table), reference_timesteps(40))
    # Linear distance, like the reference: a point just above the midpoint of two entries goes up.
    mid = 0.5 * (float(table[10]) + float(table[11]))
    assert sigma_to_t(mid + 1e-6, table) == 11 and sigma_to_t(mid - 1e-6, table) == 10
    assert sigma_to_t(0.0, table) == 0 and sigma_to_t(100.0, table) == 999


def test_karras_sigmas():
    s = karras_sigmas(10, 0.03, 14.6, rho=7.0)
    assert s.dtype == np.float32 and s.shape == (11,) and s[-1] == 0
    assert s[0] == pytest.approx(14.6, rel=1e-6) and s[9] == pytest.approx(0.03, rel=1e-6)
    inv = s[:-1].astype(np.float64) ** (1 / 7)
    assert np.allclose(np.diff(inv), np.diff(inv)[0], rtol=1e-4)


def test_sampling_package_does_not_import_mindspore():
    code = "import sys, pangu_cli.sampling; print('mindspore' in sys.modules, 'torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.split() == ["False", "False"]
