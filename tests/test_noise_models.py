"""Noise models (ambient_med.noise): estimate, stabilise, invert; docs/design.md section 6."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ambient_med.errors import ConfigError
from ambient_med.noise import Gaussian, NoncentralChi, PoissonGaussian, Rician, from_dict
from ambient_med.synthetic.fluorescence import poisson_gaussian_noise, synthetic_cells

FMD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "microscopy" / "fmd_confocal_bpae_b"
RANGES = {"8bit": (10.0, 230.0), "16bit": (500.0, 60000.0)}


@pytest.fixture(scope="module")
def clean_cells():
    return {k: synthetic_cells((512, 512), n_cells=80, cell_size=18, background=lo, peak=hi, rng=1)
            for k, (lo, hi) in RANGES.items()}


def std_function_error(model: PoissonGaussian, a: float, b: float, x: np.ndarray) -> float:
    """Largest relative error of the fitted noise std ``sqrt(a x + b)`` over the image's range."""
    grid = np.linspace(x.min(), x.max(), 200)
    return float(np.max(np.abs(np.sqrt(np.maximum(model.variance(grid), 0)) / np.sqrt(a * grid + b) - 1)))


@pytest.mark.parametrize("rng_name", list(RANGES))
@pytest.mark.parametrize("a", [0.5, 2.0, 5.0, 20.0])
@pytest.mark.parametrize("read_std", [0.0, 3.0, 10.0])
def test_poisson_gaussian_estimate_within_5_percent(clean_cells, rng_name, a, read_std):
    x = clean_cells[rng_name]
    b = read_std**2
    seed = int(10 * a + read_std)
    if a * np.percentile(x, 90) >= b:
        y = poisson_gaussian_noise(x, a, b, rng=seed)            # one 512 x 512 image
    else:
        # read noise dominates (8-bit, a = 0.5, std 10: a x <= 115 < b = 100 for most pixels):
        # one image pins a only to ~10%, so use a stack of 16 captures of the field
        y = np.stack([poisson_gaussian_noise(x, a, b, rng=seed + k) for k in range(16)])
    m = PoissonGaussian.estimate(y)
    assert abs(m.a / a - 1) < 0.05, m
    assert std_function_error(m, a, b, x) < 0.05, m


def test_poisson_gaussian_estimate_quantised_uint8_and_offset(clean_cells):
    x = clean_cells["8bit"] * 0.75                                # keep clear of 255
    y = poisson_gaussian_noise(x, 2.0, 9.0, mu=0.0, rng=3, dtype=np.uint8)
    m = PoissonGaussian.estimate(y)
    assert abs(m.a / 2.0 - 1) < 0.05
    assert std_function_error(m, 2.0, 9.0 + 1 / 12, x) < 0.05   # rounding adds 1/12
    # a negative intercept (pure Poisson above a baseline) is reported as an offset mu
    # (var = a (E[y] - 20) = a E[y] - 80)
    y = poisson_gaussian_noise(x, 4.0, 0.0, mu=20.0, rng=4)
    m = PoissonGaussian.estimate(y)
    assert m.b == 0 and abs(m.a / 4.0 - 1) < 0.05 and abs(m.mu / 20.0 - 1) < 0.1, m
    m = PoissonGaussian.estimate(y, offset=20.0)                 # known baseline
    assert m.mu == 20.0 and abs(m.a / 4 - 1) < 0.05 and m.b < 0.05 * 4 * 20, m


@pytest.mark.skipif(not (FMD / "raw" / "1").is_dir(), reason=f"real FMD captures not found at {FMD}")
def test_poisson_gaussian_estimate_on_real_fmd_confocal():
    from PIL import Image

    files = sorted((FMD / "raw" / "1").glob("*.png"))
    stack = np.stack([np.asarray(Image.open(f), dtype=np.float64) for f in files])
    assert stack.shape[0] == 50
    # independent ground truth: pixelwise mean and variance across the 50 captures, fit
    # var = a mean + b over pixels clear of the 8-bit floor (the data's minimum is 2)
    mean, var = stack.mean(0), stack.var(0, ddof=1)
    sel = (mean > 10) & (mean < 200)
    a_ref, b_ref = np.polyfit(mean[sel], var[sel], 1)
    grid = np.linspace(10, 150, 50)
    ref_std = np.sqrt(a_ref * grid + b_ref)
    # These captures' noise is not white: the temporal residuals of horizontal neighbours
    # correlate by ~0.10 (vertical ~0.04), so any high-pass (spatial) estimator reads the
    # pixel variance low by ~10% (measured: a = 3.46-3.49 on single captures against 4.07,
    # std function within 7.3-7.7%). The bounds below are set by that, not by the synthetic 5%.
    r = stack - mean
    rho_h = float(np.mean(r[:, :, 1:] * r[:, :, :-1]) / np.mean(r**2))
    assert rho_h > 0.05
    for k in (0, 17, 42):                                         # single captures
        m = PoissonGaussian.estimate(stack[k])
        assert abs(m.a / a_ref - 1) < 0.20, (k, m, a_ref, b_ref)
        assert np.max(np.abs(np.sqrt(m.variance(grid)) / ref_std - 1)) < 0.10, (k, m, a_ref, b_ref)


@pytest.mark.parametrize("s2", [0.0, 0.25, 4.0])
def test_gat_stabilises_and_unbiased_inverse_has_zero_mean_error(s2):
    a, mu = 3.0, 5.0
    model = PoissonGaussian(a, s2 * a**2, mu)
    rng = np.random.default_rng(0)
    n = 400_000
    for lam in (0.3, 1.0, 3.0, 10.0, 100.0, 1000.0):
        y = poisson_gaussian_noise(np.full(n, a * lam), a, model.b, mu, rng=rng)
        z = model.stabilise(y)
        if lam >= 3:  # the GAT is a first-order VST: ~8% high at 3 counts with s = 2, ~1% at 10+
            assert abs(z.var() - 1) < (0.1 if lam < 10 else 0.03), (lam, z.var())
        # exact unbiased inverse of the sample mean of z: the true mean a lam + mu, within 4 SE
        se = a * np.sqrt(lam + s2 + 0.1) * z.std() / np.sqrt(n)   # delta method: d(a lam)/dD ~ a sqrt(lam)
        est = float(model.invert_mean(np.array([z.mean()]))[0])
        assert abs(est - (a * lam + mu)) < 4 * se + 1e-9, (lam, est, a * lam + mu, se)
        # the algebraic inverse is biased at low counts (Jensen); that is why invert_mean exists
        alg = float(model.invert_sample(np.array([z.mean()]))[0])
        if lam <= 3:
            assert abs(alg - (a * lam + mu)) > 4 * se, (lam, alg)
    # the numerical table and the analytic expectation agree: invert_mean(E[z | lam]) = lam
    lam = np.array([0.0, 0.05, 0.5, 2.0, 37.0, 199.0, 500.0, 3000.0])
    back = (model.invert_mean(model.expected_stabilised(lam)) - mu) / a
    np.testing.assert_allclose(back, lam, atol=2e-3, rtol=1e-5)


def test_round_trips_numpy_and_torch():
    rng = np.random.default_rng(1)
    pg = PoissonGaussian(2.0, 9.0, 3.0)
    y = rng.uniform(0, 500, (4, 16, 16))
    np.testing.assert_allclose(pg.invert_sample(pg.stabilise(y)), y, rtol=1e-10, atol=1e-9)
    for model in (Rician(2.5), NoncentralChi(0.7, 8)):
        m = rng.uniform(0, 60, (3, 8, 8)) * model.sigma
        np.testing.assert_allclose(model.invert_sample(model.stabilise(m)), m, rtol=1e-9, atol=1e-9)
        nu = np.array([0.0, 0.3, 1.0, 4.0, 20.0, 39.0, 80.0, 300.0])
        # invert_mean(E[f(m) | nu]) = nu on the table's grid (beyond it: the MC test below)
        nu = model.tables.nu[::7]
        np.testing.assert_allclose(model.invert_mean(model.tables.ef[::7]) / model.sigma, nu, atol=1e-6)
    g = Gaussian(0.4)
    np.testing.assert_allclose(g.invert_mean(g.stabilise(y)), y)
    for model in (pg, Rician(2.5), NoncentralChi(0.7, 8), g):
        t = torch.rand(2, 1, 8, 8, dtype=torch.float32) * 50
        z = model.stabilise(t)
        assert isinstance(z, torch.Tensor) and z.dtype == torch.float32 and z.shape == t.shape
        back = model.invert_sample(z)
        assert back.dtype == torch.float32 and back.device == t.device
        torch.testing.assert_close(back, t, rtol=1e-4, atol=1e-3)


def test_to_dict_from_dict_json():
    for model in (Gaussian(0.1), PoissonGaussian(2.0, 9.0, 1.5), Rician(3.0), NoncentralChi(0.5, 8)):
        d = json.loads(json.dumps(model.to_dict()))
        back = from_dict(d)
        assert back == model and type(back) is type(model)
    with pytest.raises(ConfigError, match="unknown noise model 'bogus'"):
        from_dict({"name": "bogus"})
    with pytest.raises(ValueError, match="gain a must be positive"):
        PoissonGaussian(0.0)


def magnitude_phantom(n_coils: int, sigma: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """A disc of smooth cells on a zero background (40% of the image is pure noise)."""
    nu = synthetic_cells((256, 256), n_cells=20, background=5.0, peak=40.0, rng=2) * sigma
    yy, xx = np.mgrid[:256, :256]
    nu[(yy - 128) ** 2 + (xx - 128) ** 2 > 100**2] = 0.0
    ch = rng.standard_normal((2 * n_coils, *nu.shape)) * sigma
    ch[0] += nu
    return nu, np.sqrt((ch**2).sum(0))


@pytest.mark.parametrize("n_coils", [1, 8])
def test_magnitude_sigma_vst_and_unbiased_inverse(n_coils):
    rng = np.random.default_rng(n_coils)
    sigma = 3.0
    nu, m = magnitude_phantom(n_coils, sigma, rng)
    model = (Rician if n_coils == 1 else NoncentralChi).estimate(m, n_coils=n_coils)
    assert abs(model.sigma / sigma - 1) < 0.05, model
    model = NoncentralChi(sigma, n_coils)
    n = 200_000
    for snr in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0):
        ch = rng.standard_normal((2 * n_coils, n)) * sigma
        ch[0] += snr * sigma
        z = model.stabilise(np.sqrt((ch**2).sum(0)))
        assert abs(z.var() - 1) < 0.04, (snr, z.var())
        se = sigma * z.std() / np.sqrt(n) * 1.5                 # d nu / d E[f] <= ~1.5 sigma
        est = float(model.invert_mean(np.array([z.mean()]))[0])
        assert abs(est - snr * sigma) < 4 * se + (0.05 * sigma if snr == 0 else 0), (snr, est)
