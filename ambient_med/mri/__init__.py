"""MRI math: centred orthonormal FFTs, coil noise/whitening/maps/combination, SENSE operator.

Nothing here does file I/O (docs/design.md section 9)."""

from ambient_med.mri.coils import (
    coil_combine,
    compress_coils,
    espirit_maps,
    noise_covariance,
    whiten,
    whitening_matrix,
)
from ambient_med.mri.fft import fftc, ifftc
from ambient_med.mri.operators import SenseOp

__all__ = [
    "fftc", "ifftc", "noise_covariance", "whitening_matrix", "whiten",
    "espirit_maps", "coil_combine", "compress_coils", "SenseOp",
]
