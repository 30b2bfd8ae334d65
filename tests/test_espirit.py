"""The separable 2D ESPIRiT (``mri.coils.espirit_calib_2d``) is sigpy's ``EspiritCalib``:
the same maps and the same eigenvalue crop, on phantoms and on the real 8-coil brain."""

import numpy as np
import pytest
import sigpy.mri.app as app
from _mri_fixtures import shared_data

from ambient_med.io import read_cfl
from ambient_med.mri.coils import espirit_calib_2d
from ambient_med.mri.fft import fftc
from ambient_med.synthetic.phantoms import birdcage_maps, ellipse_phantom


def _phantom_kspace(n=48, coils=8, sigma=0.02, seed=0):
    rng = np.random.default_rng(seed)
    x = ellipse_phantom(n, rng) * np.exp(1j * np.linspace(0, 1, n))[None, :]
    k = fftc(birdcage_maps(n, coils) * x, axes=(1, 2))
    k = k + sigma * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
    return (k / np.abs(k).max()).astype(np.complex64)


def _sigpy(k, cw, kw, crop, max_iter=30):
    return app.EspiritCalib(k, calib_width=cw, kernel_width=kw, crop=crop, max_iter=max_iter,
                            show_pbar=False).run()


@pytest.mark.parametrize("cw,kw,crop", [(24, 6, 0.0), (12, 5, 0.0), (24, 6, 0.95), (48, 6, 0.0)])
def test_matches_sigpy_on_phantoms(cw, kw, crop):
    k = _phantom_kspace()
    ref, ours = _sigpy(k, cw, kw, crop), espirit_calib_2d(k, cw, 0.02, kw, crop, 30)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=5e-5)
    assert np.array_equal(np.abs(ours[0]) > 0, np.abs(ref[0]) > 0)  # the same crop


def test_matches_sigpy_on_the_real_brain():
    k = np.moveaxis(np.squeeze(read_cfl(shared_data() / "mri" / "espirit_brain_8coil" / "full")), -1, 0)
    k = (k / np.abs(k).max()).astype(np.complex64)
    ours, ref = espirit_calib_2d(k, 24, 0.02, 6, 0.0, 30), _sigpy(k, 24, 6, 0.0)
    assert np.max(1 - np.abs(np.sum(ours.conj() * ref, axis=0))) < 1e-5  # measured 5e-7
    np.testing.assert_allclose(ours, ref, atol=1e-4)                     # measured 2.7e-5
