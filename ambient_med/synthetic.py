"""Stationary Gaussian random fields: the data distribution whose optimal denoiser is known in
closed form, used to prove the engine exact (tests and ``benchmarks/exactness.py``).

A periodic stationary field on an N-D grid is diagonalised by the orthonormal DFT ``F``:
``Cov[x] = F^H diag(P) F`` with a power spectrum ``P(k) >= 0``, ``P(k) = P(-k)``. Its pixel variance
is ``mean(P)``. The MMSE denoiser at level ``sigma`` is the Wiener filter

    E[x0 | x_sigma] = F^H diag(P / (P + sigma^2)) F x_sigma,   MMSE per pixel = mean(P sigma^2/(P + sigma^2)).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .utils import append_dims, as_sigma


def _freq_radius(shape: tuple[int, ...]) -> torch.Tensor:
    grids = torch.meshgrid(*[torch.fft.fftfreq(n, dtype=torch.float64) for n in shape],
                           indexing="ij")
    return torch.sqrt(sum(g**2 for g in grids))


class GaussianField:
    """Zero-mean stationary Gaussian field with ``P(k) = c / (1 + (|k|/k0)^2)^alpha``, ``mean(P) = 1``
    (clean variance 1). ``shape`` is spatial (2D or 3D); samples are ``(N, 1, *shape)``."""

    def __init__(self, shape: tuple[int, ...] = (16, 16), k0: float = 0.08, alpha: float = 1.5):
        self.shape = tuple(shape)
        p = 1.0 / (1.0 + (_freq_radius(self.shape) / k0) ** 2) ** alpha
        self.power = p / p.mean()          # float64, unshifted FFT layout
        self.dims = tuple(range(-len(self.shape), 0))

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def _filter(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        X = torch.fft.fftn(x.double(), dim=self.dims, norm="ortho")
        return torch.fft.ifftn(X * h.to(x.device), dim=self.dims, norm="ortho").real.to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        w = torch.randn((n, 1, *self.shape), generator=generator, dtype=torch.float64)
        return self._filter(w, self.power.sqrt()).float().to(device)

    def wiener(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """The exact denoiser ``E[x0 | x_sigma]`` (per-sample ``sigma`` allowed)."""
        s2 = append_dims(as_sigma(sigma, x).double() ** 2, x.ndim)
        h = self.power.to(x.device) / (self.power.to(x.device) + s2)
        X = torch.fft.fftn(x.double(), dim=self.dims, norm="ortho")
        return torch.fft.ifftn(X * h, dim=self.dims, norm="ortho").real.to(x.dtype)

    def mmse(self, sigma: float) -> float:
        """Per-pixel MMSE of the Wiener filter at ``sigma``."""
        return float((self.power * sigma**2 / (self.power + sigma**2)).mean())

    def covariance(self) -> np.ndarray:
        """The dense ``dim x dim`` covariance of the flattened field."""
        eye = torch.eye(self.dim, dtype=torch.float64).reshape(self.dim, 1, *self.shape)
        return self._filter(eye, self.power).reshape(self.dim, self.dim).numpy()


def gaussian_frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray,
                              cov2: np.ndarray) -> float:
    """``||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C2^{1/2} C1 C2^{1/2})^{1/2})`` via symmetric eigh."""
    def sqrtm_psd(c):
        w, v = np.linalg.eigh((c + c.T) / 2)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    r2 = sqrtm_psd(cov2)
    mid = sqrtm_psd(r2 @ cov1 @ r2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(mid))


def frechet_to_truth(samples: torch.Tensor, truth_cov: np.ndarray) -> float:
    """Frechet distance between the Gaussian fit of ``samples`` and ``N(0, truth_cov)``."""
    x = samples.reshape(samples.shape[0], -1).double().cpu().numpy()
    return gaussian_frechet_distance(x.mean(0), np.cov(x, rowvar=False),
                                     np.zeros(x.shape[1]), truth_cov)


def radial_power_bands(x: torch.Tensor, n_bands: int = 4) -> np.ndarray:
    """Mean power ``|F x|^2`` (orthonormal FFT) in ``n_bands`` equal-width radial frequency bands,
    averaged over samples. Shows excess high-frequency power that Frechet distances hide."""
    spatial = x.shape[2:]
    X = torch.fft.fftn(x.double().cpu(), dim=tuple(range(2, x.ndim)), norm="ortho")
    p = (X.abs() ** 2).mean(dim=(0, 1))
    r = _freq_radius(tuple(spatial))
    edges = torch.linspace(0, float(r.max()) + 1e-9, n_bands + 1, dtype=torch.float64)
    return np.array([float(p[(r >= lo) & (r < hi)].mean()) for lo, hi in zip(edges[:-1], edges[1:])])
