"""Image scores: PSNR, SSIM and the coverage of posterior intervals.

Two SSIM definitions are in use: the MRI benchmarks' Gaussian-window SSIM (``ssim``) and, for
the FMD benchmarks, scikit-image's default uniform-window SSIM (``ssim_uniform``).
"""

from __future__ import annotations

import math

import numpy as np


def psnr(est: np.ndarray, ref: np.ndarray, peak: float | None = None) -> float:
    """``10 log10(peak^2 / mean |est - ref|^2)`` in dB, complex or real images; ``peak`` defaults
    to ``max |ref|`` (give the format's range, e.g. 255 for 8-bit captures: on real float64
    images this is scikit-image's ``peak_signal_noise_ratio(ref, est, data_range=peak)``)."""
    peak = float(np.abs(ref).max()) if peak is None else peak
    mse = float(np.mean(np.abs(est - ref) ** 2))
    return 10 * math.log10(peak**2 / max(mse, 1e-30))


def ssim(est: np.ndarray, ref: np.ndarray, data_range: float) -> float:
    """SSIM of two real images (Wang et al. IEEE TIP 2004): Gaussian window sigma 1.5 truncated
    at 3.5 sigma, K1 = 0.01, K2 = 0.03, population covariances, the 5-pixel border excluded
    (scikit-image's ``structural_similarity(gaussian_weights=True,
    use_sample_covariance=False)``)."""
    from scipy.ndimage import gaussian_filter

    a, b = np.asarray(est, np.float64), np.asarray(ref, np.float64)
    f = lambda z: gaussian_filter(z, 1.5, truncate=3.5, mode="reflect")  # noqa: E731
    ua, ub = f(a), f(b)
    va, vb, vab = f(a * a) - ua**2, f(b * b) - ub**2, f(a * b) - ua * ub
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua**2 + ub**2 + c1) * (va + vb + c2))
    return float(s[5:-5, 5:-5].mean())


def ssim_uniform(est: np.ndarray, ref: np.ndarray, data_range: float) -> float:
    """scikit-image's default SSIM (7x7 uniform window, sample covariances)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(ref, est, data_range=data_range))


def t_quantile(k: int) -> float:
    """The ``t_{k-1}`` quantile of a two-sided 95.45% interval (2 std of a Gaussian)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + 0.9545 / 2, k - 1))


def ideal_cov2(k: int) -> float:
    """``cov2`` of a perfectly calibrated Gaussian posterior estimated from ``k`` samples."""
    from scipy.stats import t

    return float(2 * t.cdf(2 / math.sqrt(1 + 1 / k), k - 1) - 1) if k > 1 else float("nan")


def coverage(mean: np.ndarray, std: np.ndarray, truth: np.ndarray, k: int,
             extra_var: float = 0.0) -> tuple[float, float]:
    """(cov2, covK) per real channel of complex images: the share with ``|mean - truth| <= 2 std``
    and within the ``k``-sample prediction interval ``t_{k-1}(0.97725) sqrt(1 + 1/k) std``;
    ``std`` complex as the package returns it (real part: std of the real parts).
    ``extra_var`` widens the interval for a noisy reference."""
    err = np.concatenate([np.abs(mean.real - truth.real).ravel(), np.abs(mean.imag - truth.imag).ravel()])
    sd = np.concatenate([std.real.ravel(), std.imag.ravel()])
    sd = np.sqrt(sd**2 + extra_var)
    cov2 = float(np.mean(err <= 2 * sd))
    covk = float(np.mean(err <= t_quantile(k) * math.sqrt(1 + 1 / k) * sd)) if k > 1 else float("nan")
    return cov2, covk
