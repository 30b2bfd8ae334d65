"""Noise estimates on real acquisitions (skipped when ../shared/data is absent).

Figures are also printed by benchmarks/noise.py into benchmarks/results/noise.json.
"""

import numpy as np
import pytest
from _mri_fixtures import shared_data
from scipy import ndimage

from ambient_med import noise
from ambient_med.io import open_source, read_cfl
from ambient_med.mri import coil_combine, espirit_maps, ifftc, whiten, whitening_matrix
from ambient_med.tasks.noise import estimate_noise_file


def _background(coil_images, sigma, n_coils):
    """Air: smoothed root-sum-of-squares below twice its noise-only level, eroded 4 px."""
    rss = np.sqrt(np.sum(np.abs(coil_images) ** 2, axis=0))
    bg = ndimage.uniform_filter(rss, 9) < 2 * sigma * np.sqrt(2 * n_coils)
    return ndimage.binary_erosion(bg, iterations=4)


def _pooled_std(v):
    v = v - v.mean()
    return float(np.std(np.concatenate([v.real, v.imag])))


def test_espirit_brain_kspace_vs_image_background():
    k = open_source(shared_data() / "mri" / "espirit_brain_8coil" / "full.cfl").read(0)
    est = noise.from_kspace(k)
    assert 1.0 < est.sigma < 1.7 and est.details["contamination"] < 0.1
    coil_img = ifftc(k)
    bg = _background(coil_img, est.sigma, k.shape[0])
    assert bg.mean() > 0.15
    per_coil_img = np.array([_pooled_std(c[bg]) for c in coil_img])
    np.testing.assert_allclose(est.details["sigma_per_coil"], per_coil_img, rtol=0.10)
    # whitened, ESPIRiT-combined complex image (maps uncropped, so defined in the air too)
    kw = whiten(k, whitening_matrix(est.covariance))
    sigma_w = noise.from_kspace(kw).sigma
    comb = coil_combine(ifftc(kw), espirit_maps(kw, crop=0, sigma=sigma_w))
    assert _pooled_std(comb[bg]) == pytest.approx(sigma_w, rel=0.10)


def test_bart_noise_scan_covariance_and_whitening():
    n = np.asarray(read_cfl(shared_data() / "mri" / "bart_noise16" / "noise")).reshape(256, 16).T
    est = noise.from_noise_scan(n)
    corr = est.details["correlation"] - np.eye(16)
    assert 0.45 < corr.max() < 0.65  # README: coil correlation up to about 0.55
    W = whitening_matrix(est.covariance, sigma_out=1.0)
    np.testing.assert_allclose(noise.from_noise_scan(whiten(n, W)).covariance, np.eye(16), atol=1e-6)
    # out of sample: whiten the odd samples with the even samples' covariance
    off = ~np.eye(16, dtype=bool)
    W1 = whitening_matrix(noise.from_noise_scan(n[:, ::2]).covariance, sigma_out=1.0)
    e2 = noise.from_noise_scan(whiten(n[:, 1::2], W1))
    raw = noise.from_noise_scan(n[:, 1::2]).details["correlation"]
    assert e2.details["correlation"][off].max() < 0.5 * raw[off].max()
    assert e2.details["correlation"][off].mean() < 0.65 * raw[off].mean()
    # complex Wishart: E[S^-1] = Sigma^-1 m / (m - p), m = 128 samples, p = 16 coils
    assert np.mean(np.real(np.diag(e2.covariance))) == pytest.approx(128 / 112, rel=0.05)


def test_piesno_matches_dipy():
    import nibabel as nib

    d = nib.load(shared_data() / "mri" / "wheel_mri_magnitude" / "test_piesno.nii.gz").get_fdata()
    est = noise.from_magnitude(d, n_coils=8, measurements_axis=-1)  # dipy's setup: K = 14
    assert est.sigma == pytest.approx(0.010749, rel=0.10)
    assert est.sigma == pytest.approx(0.010749, rel=1e-3)  # same algorithm, same answer
    per_voxel = noise.from_magnitude(d, n_coils=8)  # K = 1: each voxel on its own
    assert per_voxel.sigma == pytest.approx(0.010749, rel=0.10)


def test_scale_invariance_on_undersampled_bart_brain():
    """bart_brain_8coil/ksp is ~1e10 larger and 12.7% sampled: the estimate must work anyway."""
    k = open_source(shared_data() / "mri" / "bart_brain_8coil" / "ksp.cfl").read(0)
    est = noise.from_kspace(k)
    est_scaled = noise.from_kspace(k / np.float32(1e10))
    assert est_scaled.sigma * 1e10 == pytest.approx(est.sigma, rel=1e-4)
    assert est.details["n_samples"] < 0.2 * np.prod(k.shape[1:]) / 16 * 4  # zeros excluded


def test_estimate_noise_file_dispatches():
    mri = shared_data() / "mri"
    k = estimate_noise_file(mri / "espirit_brain_8coil" / "full.cfl")
    assert k.method == "k-space corner MAD" and k.sigma == pytest.approx(1.2, rel=0.05)
    m = estimate_noise_file(mri / "wheel_mri_magnitude" / "test_piesno.nii.gz", n_coils=8)
    assert m.method.startswith("PIESNO") and m.sigma == pytest.approx(0.010749, rel=0.10)
    assert m.details["path"].endswith("test_piesno.nii.gz")
