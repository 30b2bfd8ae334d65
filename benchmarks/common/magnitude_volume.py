"""The real magnitude volume of the magnitude benchmarks (``magnitude_mri.py``,
``magnitude_background.py``, ``noise.py``): dipy's PIESNO test data ``test_piesno.nii.gz``
(96 x 96 x 14, 8-coil sum of squares), where it is, dipy's noise estimate, and its background
and foreground regions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from ambient_med.noise.piesno import chi_noise_mean

from .paths import shared_data

DIPY_PIESNO = 0.010749   # dipy 1.12.1 piesno(test_piesno, N=8)
N_COILS = 8


def data_file() -> Path:
    """Where ``test_piesno.nii.gz`` is (under the shared data)."""
    return shared_data() / "mri" / "wheel_mri_magnitude" / "test_piesno.nii.gz"


def regions(vol: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Background: voxels whose 5x5-smoothed magnitude is below 1.5 times the chi noise mean,
    eroded by 2 voxels, inside the acquired field of view; foreground: above 10 times it."""
    smooth = ndimage.uniform_filter(vol, size=(5, 5, 1))
    floor = chi_noise_mean(sigma, N_COILS)
    acquired = ndimage.binary_erosion(vol > 0, iterations=3)   # the volume has a zero-filled frame
    bg = ndimage.binary_erosion(smooth < 1.5 * floor, iterations=2) & acquired
    fg = smooth > 10 * floor
    return bg, fg
