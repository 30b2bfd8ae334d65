"""Noise-level estimation (moved from ``ambient_med/noise.py``; import from ``ambient_med.noise``): ``sigma`` per real channel (docs/design.md sections 2 and 6).

Estimators, by data type:

* noise scan (C, M): sample coil covariance (exact, Gaussian receiver noise);
* k-space (C, *spatial): robust per-coil MAD of real and imaginary parts over the outer
  k-space corners, excluding exactly-zero (zero-padded or unacquired) samples, and the coil
  covariance from the same samples after trimming outliers;
* complex or high-SNR real images (N-D): wavelet MAD of the finest all-detail subband
  (Donoho & Johnstone, Biometrika 1994), with an orthonormal Haar wavelet via PyWavelets;
* magnitude images from ``N`` coils: PIESNO and the effective chi fit, in
  :mod:`ambient_med.noise.piesno`.

Which estimator a file gets, and the file-level entry points, are in
:mod:`ambient_med.noise.resolve`.

Every estimator returns a :class:`NoiseEstimate`. ``uncertainty`` is always the *relative
standard error* of ``sigma`` (std of the estimator divided by ``sigma``) from the estimator's
asymptotic sampling variance under the noise model, counting the samples it used; it does
not include model error (for example, signal leaking into the k-space corners). The MAD
estimator of a Gaussian std from ``m`` samples has relative standard error
``1.1664 / sqrt(m)`` (asymptotic efficiency 0.3675); the sample std has ``1 / sqrt(2 m)``.

This module does no file I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ambient_med.errors import NoiseEstimateError

MAD_TO_SIGMA = 1.0 / 0.6744897501960817
MAD_REL_SE = 1.1664
# Below this ratio of noise to peak magnitude the "noise" is float round-off: noise-free data.
ROUNDOFF_RATIO = 1e-6


@dataclass
class NoiseEstimate:
    """A noise estimate. ``sigma``: std per real channel (root-mean-square over coils when
    there are several); ``method``: which estimator; ``uncertainty``: relative standard error
    of ``sigma`` (see module docstring); ``details``: per-coil sigmas, covariance, counts."""

    sigma: float
    method: str
    uncertainty: float
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.sigma, self.uncertainty = float(self.sigma), float(self.uncertainty)

    @property
    def covariance(self) -> np.ndarray | None:
        """Coil noise covariance per real channel (C, C), when the estimator measures one."""
        return self.details.get("covariance")

    def to_dict(self) -> dict[str, Any]:
        d = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.details.items()}
        d.pop("covariance", None)
        return {"sigma": self.sigma, "method": self.method, "uncertainty": self.uncertainty, "details": d}


def mad_sigma(values: np.ndarray) -> float:
    """Robust Gaussian std: ``median(|v - median(v)|) / 0.6745``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    return float(np.median(np.abs(v - np.median(v))) * MAD_TO_SIGMA)


def _check_not_roundoff(sigma: float, peak: float, what: str) -> None:
    if not np.isfinite(sigma) or sigma <= 0 or (peak > 0 and sigma < ROUNDOFF_RATIO * peak):
        raise NoiseEstimateError(
            f"{what}: measured noise {sigma:.3g} is zero or at float round-off relative to the "
            f"peak {peak:.3g}; the data looks noise-free, so sigma_n cannot be estimated "
            "(pass sigma_n=0 for clean data, or an explicit value)"
        )


def from_noise_scan(noise: np.ndarray) -> NoiseEstimate:
    """Coil covariance and per-coil sigma from a receiver-noise prescan ``(C, M...)``."""
    from ambient_med.mri.coils import noise_covariance

    n = np.asarray(noise)
    if n.ndim == 1:
        n = n[None]
    n = n.reshape(n.shape[0], -1)
    cov = noise_covariance(n)
    sig_c = np.sqrt(np.real(np.diag(cov)))
    sigma = float(np.sqrt(np.mean(sig_c**2)))
    _check_not_roundoff(sigma, float(np.max(np.abs(n))), "noise scan")
    # a constant (DC-only) "noise scan" has a non-zero second moment but no noise
    centred = float(np.sqrt(np.mean(np.abs(n - n.mean(axis=1, keepdims=True)) ** 2) / 2))
    _check_not_roundoff(centred, float(np.max(np.abs(n))), "noise scan (mean removed)")
    m = n.shape[1]
    return NoiseEstimate(sigma, "noise-scan covariance", 1.0 / np.sqrt(2 * 2 * m),
                         {"sigma_per_coil": sig_c, "covariance": cov, "n_samples": m,
                          "correlation": _correlation(cov)})


def _correlation(cov: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.real(np.diag(cov)))
    return np.abs(cov) / np.outer(d, d)


def corner_mask(shape: tuple[int, ...], fraction: float = 0.125) -> np.ndarray:
    """Boolean mask of the ``2^d`` corner blocks of a centred k-space of ``shape``: samples
    whose distance from the centre exceeds ``(0.5 - fraction) * n`` along *every* axis."""
    grids = np.meshgrid(*[np.abs(np.arange(n) - n // 2) >= (0.5 - fraction) * n for n in shape],
                        indexing="ij")
    return np.logical_and.reduce(grids)


def shrink_covariance(samples: np.ndarray) -> tuple[np.ndarray, float]:
    """Coil covariance per real channel from ``M`` complex samples (C, M), shrunk toward its
    diagonal: ``(1 - lam) S + lam diag(S)`` with the Schaefer & Strimmer (Stat. Appl. Genet.
    Mol. Biol. 4:32, 2005) intensity ``lam = sum_{i!=j} Var(S_ij) / sum_{i!=j} |S_ij|^2``,
    ``Var(S_ij)`` the sampling variance of the mean of ``w_ij = n_i conj(n_j) / 2``.

    Why: whitening with ``L^{-1}`` of a sample covariance from few samples amplifies noise
    along the directions whose variance it underestimates (for Wishart ``S``,
    ``E[S^-1] = Sigma^-1 M / (M - C)``). On a 32x32 slice the k-space corners hold ~80 samples
    for 8 coils, and the whitened, coil-combined noise came out 5-25% above ``sigma``. With
    thousands of samples (real scans) ``lam`` is ~0 and correlations are kept."""
    from ambient_med.mri.coils import noise_covariance

    n = np.asarray(samples, dtype=np.complex128)
    cov = noise_covariance(n)
    m = n.shape[1]
    if m < 3:
        return cov, 0.0
    w = n[:, None, :] * n[None, :, :].conj() / 2              # (C, C, M)
    var = np.sum(np.abs(w - cov[..., None]) ** 2, axis=-1) * m / (m - 1) ** 3
    off = ~np.eye(n.shape[0], dtype=bool)
    den = float(np.sum(np.abs(cov[off]) ** 2))
    lam = float(np.clip(np.sum(var[off]) / den, 0.0, 1.0)) if den > 0 else 1.0
    return np.where(off, (1 - lam) * cov, cov), lam


def from_kspace(kspace: np.ndarray, fraction: float = 0.125, trim: float = 5.0) -> NoiseEstimate:
    """Per-coil sigma and coil covariance from the outer corners of centred k-space (C, *spatial).

    Corner samples that are exactly zero in every coil (zero padding, unacquired lines) are
    excluded. ``sigma_c`` is the MAD of the pooled real and imaginary parts. The covariance is
    the sample covariance of the corner samples whose magnitude stays below ``trim * sigma_c``
    in every coil (removes signal spikes; a complex Gaussian exceeds 5 sigma with probability
    ``exp(-12.5)``), rescaled so its diagonal equals the robust ``sigma_c^2``.
    """
    k = np.asarray(kspace)
    if k.ndim < 2:
        raise NoiseEstimateError(f"k-space must be (C, *spatial), got shape {k.shape}")
    mask = corner_mask(k.shape[1:], fraction)
    samples = k[:, mask]
    samples = samples[:, np.any(samples != 0, axis=0)]
    m = samples.shape[1]
    if m < 16:
        raise NoiseEstimateError(
            f"only {m} non-zero samples in the outer k-space corners (fraction {fraction}); "
            "too few for a noise estimate (is the data heavily undersampled or cropped?)")
    if any(np.all(s == s[0]) for s in samples):
        raise NoiseEstimateError(
            "the outer k-space corners hold one constant value in a coil: no noise to measure "
            "(synthetic or processed k-space?); pass --sigma-n with the noise std")
    sig_c = np.array([mad_sigma(np.concatenate([s.real, s.imag])) for s in samples])
    sigma = float(np.sqrt(np.mean(sig_c**2)))
    _check_not_roundoff(float(np.min(sig_c)), float(np.max(np.abs(k))), "k-space corners")
    keep = np.all(np.abs(samples) < trim * sig_c[:, None], axis=0)

    cov, shrink = shrink_covariance(samples[:, keep])
    d = np.sqrt(np.real(np.diag(cov)))
    cov = cov * np.outer(sig_c / d, sig_c / d)
    std_c = np.sqrt(np.mean(np.abs(samples) ** 2, axis=1) / 2)
    return NoiseEstimate(sigma, "k-space corner MAD", MAD_REL_SE / np.sqrt(2 * m),
                         {"sigma_per_coil": sig_c, "covariance": cov, "n_samples": m,
                          "correlation": _correlation(cov), "corner_fraction": fraction,
                          "covariance_shrinkage": shrink,
                          # >> 0 when the corners hold signal rather than noise
                          "contamination": float(np.max(std_c / sig_c) - 1.0)})


def from_image_wavelet(image: np.ndarray, axes: tuple[int, ...] | None = None) -> NoiseEstimate:
    """Wavelet-MAD sigma of a complex or high-SNR real image, N-D over ``axes`` (default all).

    Uses the finest-scale all-detail subband of a one-level orthonormal Haar transform, which
    maps white noise of std ``sigma`` to white noise of std ``sigma``; a complex image pools
    the real and imaginary parts. Biased upward by sharp edges at low noise (a known limit).
    """
    import pywt

    x = np.asarray(image)
    axes = tuple(range(x.ndim)) if axes is None else tuple(axes)
    parts = [x.real, x.imag] if np.iscomplexobj(x) else [x]
    key = "d" * len(axes)
    coeffs = np.concatenate([pywt.dwtn(np.asarray(p, np.float64), "haar", axes=axes)[key].ravel()
                             for p in parts])
    coeffs = coeffs[np.isfinite(coeffs)]
    if coeffs.size < 16:
        raise NoiseEstimateError(f"image of shape {x.shape} too small for a wavelet noise estimate")
    sigma = float(np.median(np.abs(coeffs)) * MAD_TO_SIGMA)
    _check_not_roundoff(sigma, float(np.max(np.abs(x))), "image wavelet MAD")
    return NoiseEstimate(sigma, "wavelet MAD (haar, finest detail)", MAD_REL_SE / np.sqrt(coeffs.size),
                         {"n_samples": int(coeffs.size), "axes": list(axes)})
