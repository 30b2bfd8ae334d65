"""Posterior sampling for linear inverse problems ``y = A x0 + sigma_y e`` with a diffusion prior
(docs/design.md section 5): samplers that take ``forward`` / ``adjoint`` callables, conditional
denoisers, batched CG, and MRI glue (:mod:`ambient_med.recon.mri`)."""

from ambient_med.recon.cg import cg
from ambient_med.recon.conditional import (
    CallCounter,
    dc_denoiser,
    noise_gamma,
    tweedie_denoiser,
    white_gamma,
)
from ambient_med.recon.gaussian import StationaryGaussian
from ambient_med.recon.operators import (
    adjoint_mismatch,
    complex_to_real,
    dense_matrix,
    matrix_operator,
)
from ambient_med.recon.samplers import RECON_STEPS, sample_dc, sample_dps

__all__ = [
    "cg", "CallCounter", "dc_denoiser", "tweedie_denoiser", "white_gamma", "noise_gamma", "adjoint_mismatch",
    "complex_to_real", "dense_matrix", "matrix_operator", "RECON_STEPS", "sample_dc", "sample_dps",
    "StationaryGaussian",
]
