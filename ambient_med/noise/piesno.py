"""Noise of magnitude images from ``N`` receive coils (root sum of squares): ``sigma`` from the
air (docs/design.md section 6).

* PIESNO (Koay, Ozarslan, Pierpaoli, "Probabilistic Identification and Estimation of Noise",
  JMR 199:94, 2009) finds the pure-noise voxels whose values follow a (central) chi distribution
  with ``2N`` degrees of freedom and scale ``sigma``. Written from the paper; dipy's
  implementation (BSD-3) was the cross-check (its estimate on its ``test_piesno.nii.gz`` is
  0.010749 for ``N = 8``).
* The effective chi fit (Aja-Fernandez, Tristan-Vega & Hoge, MRM 65:1195, 2011) for air that is
  wider than chi(2N) noise: a non-integer ``N_eff`` and ``sigma_eff``.
* The air's lag-1 noise correlation, the chi noise floor, and the checks that refuse noise-free
  data.

``uncertainty`` of every :class:`~ambient_med.noise.estimate.NoiseEstimate` is the relative
standard error of ``sigma`` (see :mod:`ambient_med.noise.estimate`).
"""

from __future__ import annotations

import numpy as np

from ambient_med.errors import NoiseEstimateError
from ambient_med.noise.estimate import NoiseEstimate, _check_not_roundoff


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
    method += _correlation_warning(corr)
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
    method += _correlation_warning(corr)
    # relative s.e. of sigma from moments of m^2 (delta method, chi(2N) fourth moments), ~ 1/sqrt(n_vals)
    return NoiseEstimate(s, method, float(np.sqrt((1 + 1 / n) / vals.size)),
                         {"n_coils": n, "n_coils_nominal": _coils(n_coils), "sigma_nominal": s_nom,
                          "n_background_values": int(vals.size), "window": window, "min_share": min_share,
                          "ks_distance": ks, "noise_correlation_lag1": corr})


CORRELATED_NOISE = 0.1   # lag-1 correlation above which white-noise denoising visibly keeps noise


def _correlation_warning(corr: list[float] | None) -> str:
    """The method-string warning when the air's noise is correlated (empty when it is white)."""
    if corr and max(corr) > CORRELATED_NOISE:
        return (f"; background noise is correlated between neighbours (lag-1 up to "
                f"{max(corr):.2f}): the white-noise model will keep part of it")
    return ""


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
