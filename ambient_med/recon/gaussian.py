"""A stationary complex Gaussian prior for MRI: its exact denoiser and exact SENSE posterior mean.

The reference against which the reconstruction samplers are checked on real geometry. Fitted to
complex images ``x`` (N, H, W) by their power spectrum ``P(k) = mean |F x|^2`` (centred
orthonormal FFT), the prior is circular Gaussian with covariance ``C = F^H diag(P) F``. Its MMSE
denoiser at noise ``sigma`` per real channel (complex variance ``2 sigma^2``) is the Wiener filter

    D(x, sigma) = F^H [P / (P + 2 sigma^2)] F x,

and with k-space ``y = M F S x + n`` (noise ``sigma_y`` per real channel) the posterior mean solves

    (A^H A + 2 sigma_y^2 C^{-1}) x = A^H y,   A = M F S,   C^{-1} = F^H diag(1/P) F

(a Hermitian positive definite system: CG). Drive a sampler with ``denoiser`` and compare its
mean with ``posterior_mean``: the difference is the sampler's, not the prior's.
"""

from __future__ import annotations

import numpy as np
import torch

from ambient_med.mri.complex import channels_to_complex, complex_to_channels
from ambient_med.mri.fft import fftc, ifftc
from ambient_med.mri.operators import SenseOp
from ambient_med.recon.cg import cg


class StationaryGaussian(torch.nn.Module):
    """The Wiener denoiser of the prior with power spectrum ``power`` (H, W): real-channel images
    ``(B, 2, H, W)`` in and out (the samplers' layout), ``sigma`` per real channel (scalar or
    per row)."""

    def __init__(self, power: torch.Tensor):
        super().__init__()
        self.register_buffer("power", torch.as_tensor(power))

    @classmethod
    def fit(cls, images: np.ndarray | torch.Tensor, floor: float = 1e-12) -> "StationaryGaussian":
        """From complex images ``(N, H, W)``; frequencies with no power get ``floor`` times the peak."""
        x = torch.as_tensor(np.asarray(images)).to(torch.complex128)
        power = (fftc(x).abs() ** 2).mean(0)
        return cls(power.clamp_min(floor * float(power.max())).float())

    @property
    def sigma_data(self) -> float:
        """The prior's std per real channel and pixel."""
        return float(torch.sqrt(self.power.double().mean() / 2))

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
        gain = self.power.to(x.device) / (self.power.to(x.device) + 2 * s**2)
        xc = channels_to_complex(x, dim=1)[:, 0]
        return complex_to_channels(ifftc(gain * fftc(xc))[:, None], dim=1)

    def posterior_mean(self, kspace, maps, mask, sigma_y: float, iters: int = 300,
                       tol: float = 1e-10) -> torch.Tensor:
        """``E[x | y]`` (module doc) for k-space ``(C, H, W)`` (zeros where unsampled), coil maps
        ``(C, H, W)`` and a real mask broadcastable to ``(H, W)``; complex128 ``(H, W)``."""
        op = SenseOp(torch.as_tensor(np.asarray(maps))[None].to(torch.complex128),
                     torch.as_tensor(np.asarray(mask, dtype=np.float64)))
        b = op.H(torch.as_tensor(np.asarray(kspace)).to(torch.complex128)[None])
        inv_p = 1.0 / self.power.double()
        x, _ = cg(lambda v: op.normal(v) + 2 * sigma_y**2 * ifftc(inv_p * fftc(v)), b, iters=iters, tol=tol)
        return x[0]
