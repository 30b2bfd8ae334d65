"""Issue 8: every pixel of a training image carries white noise of the recorded sigma_n, over
the whole field of view, through the pipeline that ``train`` uses (``build_training_set``)."""

import numpy as np
import pytest
from _mri_fixtures import shared_data
from scipy import ndimage

from ambient_med import noise
from ambient_med.io import open_source
from ambient_med.mri import coil_combine, espirit_maps, ifftc
from ambient_med.mri.coils import fill_maps, maps_cover_fov
from ambient_med.synthetic.phantoms import birdcage_maps, make_phantom_dataset
from ambient_med.training.datasets import build_training_set


def _noise_free(x):
    """Pixels whose real and imaginary channels are both exactly 0."""
    return (x[0::2] == 0) & (x[1::2] == 0)


def test_real_brain_training_image_has_noise_everywhere():
    f = shared_data() / "mri" / "espirit_brain_8coil" / "full.cfl"
    ds, info = build_training_set([f])
    item = ds[0]
    x, s = item["image"].numpy(), float(item["sigma_n"])
    assert x.shape[1:] == (230, 180)
    assert _noise_free(x).sum() == 0  # was 28.7% of the pixels with eigenvalue-cropped maps
    # outside the object: the smoothed root-sum-of-squares of the raw coil images is below
    # twice its noise-only level, eroded 4 px (tests/test_real_mri_data.py's definition)
    k = open_source(f).read(0)
    rss = np.sqrt(np.sum(np.abs(ifftc(k)) ** 2, axis=0))
    bg = ndimage.uniform_filter(rss, 9) < 2 * info.sigma_n_data * np.sqrt(2 * k.shape[0])
    bg = ndimage.binary_erosion(bg, iterations=4)
    assert bg.mean() > 0.2
    ratio = np.std(x[:, bg]) / s
    assert ratio == pytest.approx(1.0, abs=0.05)  # measured 1.037


def test_phantom_training_images_have_noise_of_sigma_n_everywhere(tmp_path):
    """The demo's data (32x32, 8 coils, sigma 0.06) through build_training_set."""
    truth = make_phantom_dataset(tmp_path, n_files=1, slices=6, size=32, coils=8, sigma=0.06, seed=0)
    ds, info = build_training_set(truth["files"])
    ratios, values = [], []
    for i in range(len(ds)):
        item = ds[i]
        x, s = item["image"].numpy(), float(item["sigma_n"])
        assert _noise_free(x).sum() == 0
        bg = np.abs(truth["clean"][i]) < 1e-3  # outside the object, whole field of view
        ratios.append(np.std(x[:, bg]) / s)
        values.append(x[:, bg].ravel() / s)
    assert np.std(np.concatenate(values)) == pytest.approx(1.0, abs=0.05)
    assert np.all(np.abs(np.array(ratios) - 1) < 0.1), ratios  # per slice: ~100 corner samples


def test_cropped_maps_are_filled_and_keep_sigma():
    """ESPIRiT with its classic crop zeroes the air; filled maps are unit-norm everywhere and a
    combination with maps that do not depend on the noise keeps sigma exactly (closed form:
    Var(sum_c conj(S_c) n_c) = sigma^2 sum_c |S_c|^2)."""
    rng = np.random.default_rng(0)
    n, coils, sigma = 64, 6, 0.3
    true = birdcage_maps(n, coils)
    y, x = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
    img = ((x / 0.6) ** 2 + (y / 0.7) ** 2 < 1).astype(np.complex64)
    from ambient_med.mri import fftc

    k = fftc(true * img)
    cropped = espirit_maps(k, crop=0.95, fill=False)
    assert not maps_cover_fov(cropped)  # the classic maps leave the air at 0
    filled = fill_maps(cropped)
    assert maps_cover_fov(filled)
    assert maps_cover_fov(espirit_maps(k, crop=0.95, sigma=0.0))  # the default fills
    nz = sigma * (rng.normal(size=(coils, n, n)) + 1j * rng.normal(size=(coils, n, n)))
    c = coil_combine(nz, filled)
    assert np.std(np.r_[c.real.ravel(), c.imag.ravel()]) == pytest.approx(sigma, rel=0.02)


def test_covariance_shrinkage_keeps_few_sample_whitening_honest():
    """80 corner samples of 8 white coils: the raw sample covariance's whitening inflates
    noise (Wishart: E[S^-1] = Sigma^-1 M/(M-C)); shrinkage toward the diagonal does not."""
    rng = np.random.default_rng(1)
    from ambient_med.mri import whitening_matrix

    out = []
    for _ in range(40):
        s = rng.normal(size=(8, 80)) + 1j * rng.normal(size=(8, 80))
        cov, lam = noise.shrink_covariance(s)
        assert 0 <= lam <= 1
        W = whitening_matrix(cov, 1.0)
        out.append(np.real(np.trace(W @ W.conj().T)) / 8)  # whitened variance of unit noise
    assert np.mean(out) == pytest.approx(1.0, abs=0.06)
    # many samples of correlated noise: lam ~ 0, correlations kept
    from _mri_fixtures import coil_covariance, correlated_noise

    cov = coil_covariance(8, 1.0, rng)
    est, lam = noise.shrink_covariance(correlated_noise(cov, (20000,), rng))
    assert lam < 0.05
    np.testing.assert_allclose(est, cov, atol=0.05)
