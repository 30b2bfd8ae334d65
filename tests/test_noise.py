"""Noise estimators against known answers (synthetic); real data lives in test_real_mri_data.py."""

import numpy as np
import pytest
from _mri_fixtures import coil_covariance, correlated_noise, multicoil_kspace

from ambient_med import noise
from ambient_med.errors import NoiseEstimateError
from ambient_med.mri import coil_combine, espirit_maps, ifftc, whiten, whitening_matrix

SNRS = [5, 10, 20, 30, 40]


@pytest.mark.parametrize("snr_db", SNRS)
def test_kspace_estimate_and_whitening_within_3_percent(snr_db):
    k, _, _, cov, _ = multicoil_kspace(n=320, coils=8, snr_db=snr_db, seed=snr_db)
    est = noise.from_kspace(k, fraction=0.2)
    true = np.sqrt(np.real(np.diag(cov)))
    assert est.sigma == pytest.approx(np.sqrt(np.mean(true**2)), rel=0.03)
    np.testing.assert_allclose(est.details["sigma_per_coil"], true, rtol=0.03)
    assert 0 < est.uncertainty < 0.01
    # whitening with the estimated covariance, applied to the true one: identity within 3%
    sigma_out = est.sigma
    W = whitening_matrix(est.covariance, sigma_out)
    M = W @ cov @ W.conj().T / sigma_out**2
    np.testing.assert_allclose(np.sqrt(np.real(np.diag(M))), 1.0, atol=0.03)
    assert np.max(np.abs(M - np.diag(np.diag(M)))) < 0.03


def test_whitened_noise_is_white_with_target_sigma():
    rng = np.random.default_rng(7)
    cov = coil_covariance(8, 2.0, rng)
    n = correlated_noise(cov, (32768,), rng)
    W = whitening_matrix(noise.from_noise_scan(n).covariance, sigma_out=1.5)
    c = noise.from_noise_scan(whiten(correlated_noise(cov, (65536,), rng), W)).covariance
    np.testing.assert_allclose(c, 1.5**2 * np.eye(8), atol=0.03 * 1.5**2)


@pytest.mark.parametrize("snr_db", [5, 40])
def test_coil_combined_image_noise_equals_kspace_sigma(snr_db):
    """docs/design.md section 6: whiten, ESPIRiT maps with sum |S|^2 = 1, orthonormal FFT ->
    the coil-combined complex image has white noise of the k-space sigma (per real channel)."""
    k, _, nz, _, _ = multicoil_kspace(n=128, coils=8, snr_db=snr_db, seed=100 + snr_db)
    est = noise.from_kspace(k, fraction=0.2)
    W = whitening_matrix(est.covariance)  # sigma_out = rms coil sigma
    kw = whiten(k, W)
    sigma_k = noise.from_kspace(kw, fraction=0.2).sigma
    maps = espirit_maps(kw, sigma=sigma_k)
    support = np.sum(np.abs(maps) ** 2, axis=0) > 0.5
    comb_noise = coil_combine(ifftc(whiten(nz, W)), maps)[support]  # same linear map, noise only
    for part in (comb_noise.real, comb_noise.imag):
        assert np.std(part) == pytest.approx(sigma_k, rel=0.03)


def test_zero_filled_samples_are_excluded():
    k, _, _, cov, _ = multicoil_kspace(n=256, coils=4, snr_db=20, seed=3)
    k[..., :40] = 0  # zero padding
    k[..., 200:] = 0
    est = noise.from_kspace(k, fraction=0.2)
    assert est.sigma == pytest.approx(np.sqrt(np.mean(np.real(np.diag(cov)))), rel=0.05)


def test_noise_free_data_raises():
    _, clean, _, _, _ = multicoil_kspace(n=128, coils=4, snr_db=20, seed=1)
    with pytest.raises(NoiseEstimateError, match="noise-free"):
        noise.from_kspace(clean.astype(np.complex64))
    with pytest.raises(NoiseEstimateError):
        noise.from_image_wavelet(np.ones((64, 64)))
    with pytest.raises(NoiseEstimateError, match="zero"):
        noise.from_magnitude(np.pad(np.ones((32, 32)), 32), n_coils=1)


@pytest.mark.parametrize("shape", [(256, 256), (48, 48, 48)])
def test_wavelet_mad_nd(shape):
    rng = np.random.default_rng(5)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    clean = np.exp(-sum(g**2 for g in grids) * 3)
    est = noise.from_image_wavelet(clean + 0.05 * rng.normal(size=shape))
    assert est.sigma == pytest.approx(0.05, rel=0.03)
    cplx = clean + 0.05 * (rng.normal(size=shape) + 1j * rng.normal(size=shape))
    assert noise.from_image_wavelet(cplx).sigma == pytest.approx(0.05, rel=0.03)


@pytest.mark.parametrize("n_coils", [1, 4, 8])
def test_piesno_on_synthetic_sum_of_squares(n_coils):
    rng = np.random.default_rng(n_coils)
    sigma, shape = 0.02, (128, 128)
    y, x = np.mgrid[-1:1:128j, -1:1:128j]
    obj = (x**2 + y**2 < 0.5) * 1.0
    coils = obj / np.sqrt(n_coils) + sigma * (rng.normal(size=(n_coils, *shape)) + 1j * rng.normal(size=(n_coils, *shape)))
    mag = np.sqrt(np.sum(np.abs(coils) ** 2, axis=0))
    est = noise.from_magnitude(mag, n_coils=n_coils)
    assert est.sigma == pytest.approx(sigma, rel=0.05)
    assert est.uncertainty < 0.02


def test_dispatch_and_to_dict():
    rng = np.random.default_rng(0)
    n = rng.normal(size=(4, 1000)) + 1j * rng.normal(size=(4, 1000))
    est = noise.estimate_sigma(n, kind="noise")
    assert est.method.startswith("noise-scan") and est.sigma == pytest.approx(1, rel=0.05)
    d = est.to_dict()
    assert set(d) == {"sigma", "method", "uncertainty", "details"} and "covariance" not in d["details"]
    with pytest.raises(ValueError, match="unknown kind"):
        noise.estimate_sigma(n, kind="bogus")


def test_piesno_reports_spatially_correlated_background_noise():
    """White chi(16) noise: lag-1 correlation ~0 and a plain method string. The same noise
    smoothed per coil before the sum of squares (as reconstruction filters and interpolation do):
    the correlation is measured and the user is told the white-noise model will keep part of it."""
    from scipy import ndimage

    from ambient_med.noise.piesno import from_magnitude

    rng = np.random.default_rng(0)
    obj = np.zeros((96, 96))
    obj[30:66, 30:66] = 20.0
    def magnitude(smooth):
        ch = rng.standard_normal((16, 96, 96))
        if smooth:
            ch = np.stack([ndimage.uniform_filter(c, 2) for c in ch]) * 2.0   # unit variance again
        ch[0] += obj
        return np.sqrt((ch**2).sum(0))
    white = from_magnitude(magnitude(False), n_coils=8)
    assert max(abs(c) for c in white.details["noise_correlation_lag1"]) < 0.05
    assert "correlated" not in white.method
    coloured = from_magnitude(magnitude(True), n_coils=8)
    assert min(coloured.details["noise_correlation_lag1"]) > 0.2
    assert "correlated between neighbours" in coloured.method
