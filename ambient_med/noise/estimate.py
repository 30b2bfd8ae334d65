"""Noise-level estimation (moved from ``ambient_med/noise.py``; import from ``ambient_med.noise``): ``sigma`` per real channel (DESIGN sections 2 and 6).

Estimators, by data type:

* noise scan (C, M): sample coil covariance (exact, Gaussian receiver noise);
* k-space (C, *spatial): robust per-coil MAD of real and imaginary parts over the outer
  k-space corners, excluding exactly-zero (zero-padded or unacquired) samples, and the coil
  covariance from the same samples after trimming outliers;
* complex or high-SNR real images (N-D): wavelet MAD of the finest all-detail subband
  (Donoho & Johnstone, Biometrika 1994), with an orthonormal Haar wavelet via PyWavelets;
* magnitude images from ``N`` coils (root sum of squares): PIESNO (Koay, Ozarslan, Pierpaoli,
  "Probabilistic Identification and Estimation of Noise", JMR 199:94, 2009), which finds the
  pure-noise voxels whose values follow a (central) chi distribution with ``2N`` degrees of
  freedom and scale ``sigma``. Written from the paper; dipy's implementation (BSD-3) was the
  cross-check (its estimate on its ``test_piesno.nii.gz`` is 0.010749 for ``N = 8``).

Every estimator returns a :class:`NoiseEstimate`. ``uncertainty`` is always the *relative
standard error* of ``sigma`` (std of the estimator divided by ``sigma``) from the estimator's
asymptotic sampling variance under the noise model, counting the samples it used; it does
not include model error (for example, signal leaking into the k-space corners). The MAD
estimator of a Gaussian std from ``m`` samples has relative standard error
``1.1664 / sqrt(m)`` (asymptotic efficiency 0.3675); the sample std has ``1 / sqrt(2 m)``.

This module does no file I/O except :func:`estimate_noise_file`, which imports the readers
lazily so that the math stays importable without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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
    sig_c = np.array([mad_sigma(np.concatenate([s.real, s.imag])) for s in samples])
    sigma = float(np.sqrt(np.mean(sig_c**2)))
    _check_not_roundoff(float(np.min(sig_c)), float(np.max(np.abs(k))), "k-space corners")
    keep = np.all(np.abs(samples) < trim * sig_c[:, None], axis=0)
    from ambient_med.mri.coils import noise_covariance

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


def _coils(n_coils) -> int | float:
    """``n_coils`` as an int when it is one, else a float (an effective, non-integer ``N``)."""
    n = float(n_coils)
    return int(n) if n == int(n) else n


def _chi2_quantile(n_dof: float, k: int, p: float) -> float:
    """Quantile of ``sum_{j<k} m_j^2 / (2 sigma^2) / k`` with ``m_j`` chi(2N) noise: Gamma(N k)/k."""
    from scipy.special import gammaincinv

    return float(gammaincinv(n_dof * k, p) / k)


def from_magnitude(image: np.ndarray, n_coils: int = 1, measurements_axis: int | None = None,
                   alpha: float = 0.01, n_grid: int = 100, itermax: int = 100,
                   tol: float = 1e-7) -> NoiseEstimate:
    """PIESNO estimate of sigma for a magnitude (root-sum-of-squares) image from ``n_coils``.

    Background noise of an ``N``-coil sum-of-squares image is chi with ``2N`` degrees of
    freedom and scale ``sigma``. With ``K`` measurements per voxel (``measurements_axis``, e.g.
    diffusion directions; ``K = 1`` when None), ``t = sum_k m_k^2 / (2 K sigma^2)`` is
    Gamma(NK)/K for pure-noise voxels. PIESNO (Koay et al. 2009): scan trial sigmas, keep the
    one for which the most voxels have ``t`` inside the central ``1 - alpha`` Gamma interval,
    then iterate ``sigma = quantile_q(m over those voxels) / chi_quantile_q`` to a fixed point,
    with ``q`` the quantile that minimises the estimator's variance (from the paper's table;
    0.5 for other ``N``). A second iteration starts from the image's 10th percentile, and the
    smaller fixed point wins (for ``K = 1`` the object itself can be a spurious fixed point). Uncertainty: the asymptotic standard error of a sample quantile,
    ``sqrt(q(1-q)/n) / (x_q f(x_q))`` for the chi(2N) density ``f``, over the ``n`` values used.
    """
    from scipy import stats

    x = np.abs(np.asarray(image, dtype=np.float64))
    x = x[..., None] if measurements_axis is None else np.moveaxis(x, measurements_axis, -1)
    x = x.reshape(-1, x.shape[-1])
    if not np.all(np.isfinite(x)):
        raise NoiseEstimateError("magnitude image has NaN or Inf values")
    N, K = _coils(n_coils), x.shape[-1]
    q = {1: 0.79681213002002, 2: 0.7306303027491917, 4: 0.6721952960782169,
         8: 0.6254030432343569, 16: 0.5900487123737876, 32: 0.5641772300866416,
         64: 0.5455611840489607, 128: 0.5322811923303339}.get(N, 0.5)
    chi_q = float(np.sqrt(2 * _chi2_quantile(N, 1, q)))  # q-quantile of chi(2N) with sigma=1
    lo, hi = _chi2_quantile(N, K, alpha / 2), _chi2_quantile(N, K, 1 - alpha / 2)
    sum_m2 = np.sum(x**2, axis=-1)
    m0 = np.percentile(x, q * 100) / chi_q
    if not m0 > 0:
        raise NoiseEstimateError(
            f"the {q:.2f}-quantile of the magnitude image is 0: the background is exactly zero "
            "(noise-free or masked data), so PIESNO cannot estimate sigma")

    def inside(s):
        t = sum_m2 / (2 * K * s**2)
        return (t >= lo) & (t <= hi)

    def fixed_point(sigma):
        prev = 0.0
        for _ in range(itermax):
            if abs(sigma - prev) <= tol * sigma:
                break
            sel = inside(sigma)
            if not np.any(sel):
                break
            prev, sigma = sigma, float(np.percentile(x[sel], q * 100) / chi_q)
        return sigma

    grid = np.arange(1, n_grid + 1) * m0 / n_grid
    start_count = float(grid[int(np.argmax([np.count_nonzero(inside(s)) for s in grid]))])
    # With K = 1 the acceptance band is wide enough that a sigma near the object intensity
    # accepts every voxel and is itself a fixed point; a start from a low quantile (the
    # background, when it fills >10% of the image) reaches the noise fixed point instead.
    start_low = float(np.percentile(x, 10) / np.sqrt(2 * _chi2_quantile(N, 1, 0.1)))
    cands = [fixed_point(s0) for s0 in (start_count, start_low) if s0 > 0]
    cands = [s for s in cands if np.count_nonzero(inside(s)) * K >= 16] or cands
    sigma = min(cands)
    n = int(np.count_nonzero(inside(sigma))) * K
    if n < 16:
        raise NoiseEstimateError(f"PIESNO found only {n} background values; no noise-only region")
    _check_not_roundoff(sigma, float(np.max(x)), "magnitude PIESNO")
    _check_chi_spread(x[inside(sigma)], N, alpha)
    f = stats.chi.pdf(chi_q, 2 * N)
    rel = float(np.sqrt(q * (1 - q) / n) / (chi_q * f))
    shape = np.shape(image) if measurements_axis is None else np.delete(np.shape(image), measurements_axis)
    corr = background_correlation(x.reshape(*shape, K), inside(sigma).reshape(shape))
    method = f"PIESNO magnitude (N={N} coils)"
    if corr and max(corr) > CORRELATED_NOISE:
        method += (f"; background noise is correlated between neighbours (lag-1 up to "
                   f"{max(corr):.2f}): the white-noise model will keep part of it")
    return NoiseEstimate(sigma, method, rel,
                         {"n_coils": N, "n_background_values": n, "measurements": K,
                          "background_fraction": n / x.size, "quantile": q, "alpha": alpha,
                          "noise_correlation_lag1": corr})


def effective_chi(image: np.ndarray, n_coils: int, alpha: float = 0.01, window: int = 5,
                  min_share: float = 0.8, iters: int = 10) -> NoiseEstimate:
    """Effective noncentral-chi parameters ``(N_eff, sigma_eff)`` of a magnitude image.

    A root sum of squares of ``N`` coils is chi(2N) noise in air only when the coil noise is
    independent, of equal variance, and not mixed by the reconstruction. Coil noise correlation,
    parallel-imaging reconstruction (GRAPPA, SENSE) and coil-combination weights leave a background
    close to a noncentral chi with fewer, non-integer degrees of freedom ``2 N_eff`` and a larger
    ``sigma_eff`` (Aja-Fernandez, Tristan-Vega & Hoge, "Statistical noise analysis in GRAPPA using a
    parametrized noncentral chi approximation model", MRM 65:1195, 2011). Fitting ``sigma`` alone
    with the nominal ``N`` then matches the mean of the air but not its spread, and the
    variance-stabilised noise is not unit-variance.

    Method: PIESNO with the nominal ``n_coils`` accepts the values that look like noise; the air is
    where at least ``min_share`` of a ``window x window`` neighbourhood (the first two axes) is
    accepted, and *every* nonzero value there is kept (a value band would trim the tails of a
    law wider than the nominal one). For chi(2N) noise ``m^2`` has mean ``2 N sigma^2`` and
    variance ``4 N sigma^4``, so ``N_eff = E[m^2]^2 / Var[m^2]`` and
    ``sigma_eff^2 = Var[m^2] / (2 E[m^2])``; the air is then found again with the acceptance band
    of the fitted law, to a fixed point. ``details`` report both fits and their
    Kolmogorov-Smirnov distances to the air values."""
    from scipy import ndimage, stats
    from scipy.special import gammaincinv

    x = np.abs(np.asarray(image, dtype=np.float64))
    nominal = from_magnitude(x, n_coils=n_coils, alpha=alpha)
    n_nom, s_nom = nominal.details["n_coils"], nominal.sigma
    size = [min(window, d) for d in x.shape[:2]] + [1] * (x.ndim - 2)
    n, s = float(n_nom), s_nom
    for _ in range(iters):
        # which neighbourhoods pass depends on their values, so the air of a band that is too narrow
        # is biased towards calm patches; refitting with the band of the fitted law removes it
        g = x**2 / (2 * s**2)
        accepted = (g >= gammaincinv(n, alpha / 2)) & (g <= gammaincinv(n, 1 - alpha / 2))
        air = (ndimage.uniform_filter(accepted.astype(np.float64), size=size, mode="nearest") >= min_share) & (x > 0)
        vals = x[air]
        if vals.size < 16:
            raise NoiseEstimateError(f"effective chi fit found only {vals.size} values in air ({window}x{window} "
                                     f"neighbourhoods with {min_share:.0%} noise-like values)")
        m2 = vals**2
        e, v = float(m2.mean()), float(m2.var())
        n_new, s = e**2 / v, float(np.sqrt(v / (2 * e)))
        if 0.9 <= n_new < 1:   # Rician within sampling error: N = 1, sigma from the mean of m^2
            n_new, s = 1.0, float(np.sqrt(e / 2))
        if n_new < 1:
            raise NoiseEstimateError(f"effective chi fit gives N_eff = {n_new:.2f} < 1: the air is wider than "
                                     "Rician noise (not pure noise, or not a magnitude image)")
        done, n = abs(n_new - n) <= 1e-3 * n, n_new
        if done:
            break
    ks = {"nominal": float(stats.kstest(vals / s_nom, stats.chi(2 * n_nom).cdf).statistic),
          "effective": float(stats.kstest(vals / s, stats.chi(2 * n).cdf).statistic)}
    corr = nominal.details.get("noise_correlation_lag1")
    method = (f"effective noncentral chi (N_eff={n:.2f} for {_coils(n_coils)} coils, moments of the air "
              f"that PIESNO finds; Aja-Fernandez et al. 2011)")
    if corr and max(corr) > CORRELATED_NOISE:
        method += (f"; background noise is correlated between neighbours (lag-1 up to "
                   f"{max(corr):.2f}): the white-noise model will keep part of it")
    # relative s.e. of sigma from moments of m^2 (delta method, chi(2N) fourth moments), ~ 1/sqrt(n_vals)
    return NoiseEstimate(s, method, float(np.sqrt((1 + 1 / n) / vals.size)),
                         {"n_coils": n, "n_coils_nominal": _coils(n_coils), "sigma_nominal": s_nom,
                          "n_background_values": int(vals.size), "window": window, "min_share": min_share,
                          "ks_distance": ks, "noise_correlation_lag1": corr})


CORRELATED_NOISE = 0.1   # lag-1 correlation above which white-noise denoising visibly keeps noise


def background_correlation(values: np.ndarray, mask: np.ndarray) -> list[float]:
    """Lag-1 Pearson correlation of ``values`` (spatial axes, then K measurements) between
    neighbours along each spatial axis, over pairs whose voxels are both in ``mask`` (the noise-only
    background). White noise gives about 0; reconstruction filters, k-space zero-filling and
    interpolation make it positive, and a white-noise denoiser then takes the low frequencies of
    the noise for structure. Axes of length 1, or without 16 pairs, are skipped."""
    out = []
    for axis in range(mask.ndim):
        if mask.shape[axis] < 2:
            continue
        lead = [slice(None)] * mask.ndim
        a_idx, b_idx = list(lead), list(lead)
        a_idx[axis], b_idx[axis] = slice(1, None), slice(None, -1)
        both = mask[tuple(a_idx)] & mask[tuple(b_idx)]
        if np.count_nonzero(both) < 16:
            continue
        a = values[tuple(a_idx)][both].ravel()
        b = values[tuple(b_idx)][both].ravel()
        a, b = a - a.mean(), b - b.mean()
        out.append(float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b))))
    return out


def chi_noise_mean(sigma: float, n_coils: int) -> float:
    """Mean of the noise-only magnitude of an ``n_coils`` sum of squares (chi with ``2N`` degrees
    of freedom, scale ``sigma``): ``sigma sqrt(2) Gamma(N + 1/2) / Gamma(N)``, the floor that
    magnitude noise leaves in air."""
    from scipy.special import gammaln

    return float(sigma * np.sqrt(2.0) * np.exp(gammaln(n_coils + 0.5) - gammaln(n_coils)))


def _check_chi_spread(values: np.ndarray, n_coils: int, alpha: float) -> None:
    """Refuse a PIESNO "background" whose spread is far below that of chi(2N) noise: a
    constant or piecewise-constant image (noise-free) passes the acceptance band with any
    sigma near its value. Chi(2N) noise has coefficient of variation
    ``sqrt(N - (Gamma(N+1/2)/Gamma(N))^2) / (Gamma(N+1/2)/Gamma(N))`` (0.52 for N = 1, 0.18
    for N = 8); the band trims it by at most a few percent, so a quarter of it is safe."""
    v = np.asarray(values, dtype=np.float64).ravel()
    r = chi_noise_mean(1.0, n_coils) / np.sqrt(2.0)   # Gamma(N+1/2)/Gamma(N)
    cv_chi = np.sqrt(max(n_coils - r**2, 0.0)) / r
    mean = float(np.mean(v)) if v.size else 0.0
    cv = float(np.std(v) / mean) if mean > 0 else 0.0
    if cv < 0.25 * cv_chi:
        raise NoiseEstimateError(
            f"magnitude PIESNO: the background values vary by {100 * cv:.2g}% (chi noise from "
            f"{n_coils} coil(s) varies by {100 * cv_chi:.0f}%); the data looks noise-free, so "
            "sigma_n cannot be estimated (pass sigma_n=0 for clean data, or an explicit value)")


NOISE_MODELS = ("gaussian", "rician", "noncentral-chi")
ESTIMATORS = ("kspace-corners", "wavelet-mad", "piesno", "effective-chi")


def resolve_noise_model(data_kind: str, noise_model: str = "auto", estimator: str = "auto",
                        n_coils: int | None = None, file_n_coils: int | None = None,
                        where: str = "") -> tuple[str, str, int | None]:
    """``(noise_model, estimator, n_coils)`` for data of ``data_kind`` (a reader's kind:
    ``kspace``, ``complex``, ``intensity``, ``magnitude``).

    Complex data (k-space, complex images) and real intensities: Gaussian per real channel,
    estimated from the k-space corners or by wavelet MAD. Magnitude data: Rician (one coil, or a
    complex coil combination) or noncentral chi with ``n_coils`` (root sum of squares), both
    estimated by PIESNO with ``N = n_coils``, or (estimator ``effective-chi``) with the effective,
    non-integer ``N_eff`` and ``sigma_eff`` that fit the air (:func:`effective_chi`; the nominal
    ``n_coils`` seeds it). ``n_coils``: the one given (option or protocol)
    wins, then the file's own (``file_n_coils``), then 1 for Rician. ``auto`` picks the model
    and estimator from the data. A model or estimator that does not fit the data is refused
    (``ConfigError``, one line), never silently replaced.
    """
    from ambient_med.errors import ConfigError

    pre = f"{where}: " if where else ""
    if noise_model != "auto" and noise_model not in NOISE_MODELS:
        raise ConfigError(f"{pre}noise_model {noise_model!r} is not implemented; choose auto or one of "
                          f"{', '.join(NOISE_MODELS)}")
    if estimator != "auto" and estimator not in ESTIMATORS:
        raise ConfigError(f"{pre}noise_estimator {estimator!r} is not implemented; choose auto or "
                          f"one of {', '.join(ESTIMATORS)}")
    if n_coils is not None and int(n_coils) < 1:
        raise ConfigError(f"{pre}n_coils must be a positive integer, got {n_coils}")
    if data_kind == "magnitude":
        n = n_coils or file_n_coils
        if estimator == "effective-chi" and noise_model != "gaussian":   # gaussian: refused below
            if noise_model == "rician":
                raise ConfigError(f"{pre}noise_estimator effective-chi fits the number of coils, but noise_model "
                                  "rician fixes it at 1; use noise_model noncentral-chi (or auto)")
            if n is None:
                raise ConfigError(f"{pre}noise_estimator effective-chi starts from the nominal number of coils: "
                                  "pass --n-coils or set data.n_coils")
            return "noncentral-chi", estimator, int(n)
        if noise_model == "auto":
            noise_model = "noncentral-chi" if (n or 1) > 1 else "rician"
        if noise_model == "gaussian":
            raise ConfigError(f"{pre}noise_model gaussian does not describe magnitude data (its noise is "
                              "Rician or noncentral chi); use rician, or noncentral-chi with n_coils")
        if noise_model == "rician":
            if n is not None and n != 1:
                raise ConfigError(f"{pre}noise_model rician means one coil, but n_coils is {n}; use "
                                  "noncentral-chi for a root-sum-of-squares of several coils")
            n = 1
        elif n is None:
            raise ConfigError(f"{pre}noise_model noncentral-chi needs the number of coils: pass "
                              "--n-coils or set data.n_coils")
        want = "piesno"
    else:
        if noise_model == "auto":
            noise_model = "gaussian"
        if noise_model != "gaussian":
            raise ConfigError(f"{pre}noise_model {noise_model} is for magnitude data; these data are "
                              f"{data_kind} (Gaussian noise per real channel)")
        want = "kspace-corners" if data_kind == "kspace" else "wavelet-mad"
        n = n_coils or file_n_coils
    if estimator == "auto":
        estimator = want
    if estimator != want:
        raise ConfigError(f"{pre}noise_estimator {estimator} does not fit {data_kind} data with "
                          f"noise_model {noise_model}; use {want} (or auto)")
    return noise_model, estimator, (int(n) if n is not None else None)


def magnitude_volume_estimate(volume: np.ndarray, n_coils: int, **kwargs) -> NoiseEstimate:
    """PIESNO on a magnitude file's whole array, dipy's convention: with 3 or more axes the last
    one holds repeated measurements of the same voxels (diffusion directions, time points), K of
    them (``t`` sums them, which is exact for pure-noise voxels and only sharper when the
    "measurements" are slices); 2D arrays use K = 1. If fewer than 16 voxels are background in
    every measurement, it falls back to K = 1 (each value on its own)."""
    v = np.asarray(volume)
    if v.ndim >= 3 and v.shape[-1] > 1:
        try:
            return from_magnitude(v, n_coils=n_coils, measurements_axis=-1, **kwargs)
        except NoiseEstimateError as e:
            if "noise-free" in str(e) or "NaN" in str(e):
                raise
    return from_magnitude(v, n_coils=n_coils, **kwargs)


WIDER_AIR = 0.85   # N_eff / N below which PIESNO's chi(2N) visibly misfits the air's spread


def _wider_than_chi(volume: np.ndarray, n_coils: int) -> str:
    """A hint for the PIESNO method string when the air is wider than chi(2 n_coils) noise
    (:func:`effective_chi` finds ``N_eff < WIDER_AIR * n_coils``); empty otherwise."""
    if n_coils <= 1:
        return ""
    if volume.ndim >= 3 and volume.shape[-1] > 16:   # a hint, not the estimate: the middle 16 slices
        mid = volume.shape[-1] // 2
        volume = volume[..., mid - 8:mid + 8]
    try:
        n_eff = effective_chi(volume, n_coils).details["n_coils"]
    except NoiseEstimateError:
        return ""
    if n_eff >= WIDER_AIR * n_coils:
        return ""
    return (f"; the air is wider than chi({2 * n_coils}) noise (effective N {n_eff:.2f}): "
            "--noise-estimator effective-chi fits it")


def estimate_source(src, noise_model: str = "auto", estimator: str = "auto",
                    n_coils: int | None = None, index: int | None = None, **kwargs) -> NoiseEstimate:
    """Estimate sigma of an opened source (:func:`ambient_med.io.open_source`) with the noise
    model and estimator that :func:`resolve_noise_model` chooses: k-space corners of item
    ``index`` (default the middle one), PIESNO on a magnitude file's whole array, wavelet MAD
    of one complex or intensity item. ``details`` record ``noise_model`` and ``n_coils``."""
    where = str(getattr(src, "path", ""))
    model, est_name, n = resolve_noise_model(src.kind, noise_model, estimator, n_coils,
                                             getattr(src, "n_coils", None), where)
    i = len(src) // 2 if index is None else index
    if est_name == "kspace-corners":
        est = from_kspace(src.read(i), **kwargs)
    elif est_name in ("piesno", "effective-chi"):
        vol = src.read_volume()
        if not np.all(np.isfinite(vol)):
            from ambient_med.errors import DataError

            raise DataError(where, "has NaN or Inf values")
        if est_name == "piesno":
            est = magnitude_volume_estimate(vol, n, **kwargs)
            est.method += _wider_than_chi(vol, n)
        else:
            est = effective_chi(vol, n, **kwargs)
            n = est.details["n_coils"]       # N_eff replaces the nominal N (kept in details)
    else:
        item = src.read(i)
        est = from_image_wavelet(item, axes=tuple(range(1, item.ndim)), **kwargs)
    est.details.update(noise_model=model, n_coils=n, estimator=est_name)
    return est


def estimate_sigma(data: np.ndarray, kind: str = "complex", **kwargs) -> NoiseEstimate:
    """Dispatch on ``kind``: ``"noise"`` (prescan), ``"kspace"``, ``"complex"`` or
    ``"intensity"`` (wavelet MAD), ``"magnitude"`` (PIESNO; pass ``n_coils``)."""
    estimators = {"noise": from_noise_scan, "kspace": from_kspace, "complex": from_image_wavelet,
                  "intensity": from_image_wavelet, "magnitude": from_magnitude}
    if kind not in estimators:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(estimators)}")
    return estimators[kind](data, **kwargs)


def estimate_noise_file(path: str | Path, n_coils: int | None = None, noise_model: str = "auto",
                        estimator: str = "auto", check_finite: bool = True, **kwargs) -> NoiseEstimate:
    """Open any supported file (see :func:`ambient_med.io.open_source`) and estimate its noise
    (:func:`estimate_source`): k-space files by the outer-corner estimator on their middle
    slice; magnitude volumes by PIESNO with ``n_coils`` (the option, else the file's, else 1 for
    Rician); complex image arrays by wavelet MAD. With ``check_finite`` every item is read once
    first, so a NaN or Inf anywhere in the file is refused (``DataError`` naming the file), not
    only in the part the estimator reads. ``details["path"]`` records the file."""
    from ambient_med.io.discover import open_source

    src = open_source(path)
    if check_finite and src.kind != "magnitude":  # readers refuse non-finite items on read
        for i in range(len(src)):
            src.read(i)
    try:
        est = estimate_source(src, noise_model, estimator, n_coils, **kwargs)
    except NoiseEstimateError as e:
        raise NoiseEstimateError(f"{path}: {e}") from None
    est.details["path"] = str(path)
    return est
