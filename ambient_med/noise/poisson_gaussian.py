r"""Poisson-Gaussian noise ``y = a * Poisson(x / a) + N(mu, b)`` (fluorescence microscopy).

``a`` is the gain (data units per detected photon), ``b`` the variance of the Gaussian read
noise, ``mu`` a constant offset (camera baseline); ``E[y | x] = x + mu`` and
``Var[y | x] = a x + b``. In count units ``u = (y - mu) / a = Poisson(lam) + N(0, s^2)`` with
``lam = x / a`` and ``s = sqrt(b) / a``.

**Stabilise**: the generalised Anscombe transform (Starck, Murtagh & Bijaoui, *Image Processing
and Data Analysis*, CUP 1998; Makitalo & Foi, IEEE TIP 22:91, 2013)
``z = 2 sqrt(max(u + 3/8 + s^2, 0))``, whose noise has variance ~1 only from a few counts up:
``v(lam) = Var[z | lam]`` (:func:`gat_variance`, exact by the same Poisson sum as ``E[z | lam]``)
is 0.47 at half a count without read noise (less below) and overshoots 1 by up to 3% near 2-8 counts.

**Equalise** (``equalise=True``, the training key ``data.noise_map``): ``z`` is divided by
``L = max sqrt(v)`` and topped up per pixel with ``sqrt(1 - v(lam_hat) / L^2) eta``, ``lam_hat``
the 5x5 local mean of the counts, so that the stabilised noise has unit variance in every pixel,
as the ambient objective assumes (docs/design.md section 6). The inverses undo the division.

**Invert**: algebraic ``u = (z/2)^2 - 3/8 - s^2``; exact unbiased (Makitalo & Foi 2013):
``I(D) = lam`` such that ``E[z | lam, s] = D``. ``E[z | lam]`` is computed numerically on a
grid of ``lam`` (Poisson sum over ``k``; Gaussian integral by the trapezoid rule over a fine
grid, exact for the clipped square root up to ``O(h^2)``) and inverted by monotone
interpolation. Above the grid (``lam > 200``) the asymptotic series is used: expanding
``sqrt`` around ``lam + 3/8 + s^2`` gives ``E[z] = 2 sqrt(mu) (1 - 1/(8 mu) + O(mu^-2))``, so
``I(D) = D^2/4 - 1/8 - s^2 + c / D^2``, with ``c`` matched to the table at its end (continuous;
the correction is ~1e-3 counts at ``lam = 200``). (Makitalo & Foi's closed-form approximation
``D^2/4 + sqrt(3/2)/(4D) - ...`` is tuned for small ``D`` and is 0.01 counts high at
``lam = 200``, which is why the table is preferred.) ``D`` below ``E[z | 0]`` maps to ``lam = 0``.
Both inverses return data units, ``a * lam + mu``: the noise-free mean of the data.

**Estimate** ``(a, b)`` from one image or a stack (each 2D frame over the last two axes),
in the spirit of Foi, Trimeche, Katkovnik & Egiazarian, "Practical Poissonian-Gaussian noise
modeling and fitting for single-image raw-data", IEEE TIP 17:1737, 2008 (local means and
variances of detail coefficients, robust fit of ``var = a * mean + b``), simplified:

1. Detail coefficients ``d = k * y`` with the separable third-difference kernel ``k = h h^T``,
   ``h = [1, -3, 3, -1] / sqrt(20)`` (``sum k^2 = 1``, ``sum k = 0``), its taps ``stride`` pixels
   apart. ``k`` annihilates every signal that is a polynomial of degree <= 2 along either axis, so
   smooth structure leaks far less than through Haar details, while for white noise
   ``E[d^2] = sum k_i^2 (a x_i + b)``, linear in the local intensity. Real detectors are not
   white: neighbouring pixels of a scanning confocal share noise (lag-1 correlation 0.05 along
   the scan line in the FMD captures), and a kernel with adjacent taps then sees
   ``sum_ij k_i k_j rho(i - j) = 1 - 1.5 rho_1 + ...`` of the per-pixel variance (0.83-0.93 on
   FMD). With ``stride=2`` (the default) only even lags enter, where the correlation has died
   out (0.88-1.01 on the same captures), at the price of a 7-pixel support.
2. Blocks of ``w x w`` coefficient positions: ``v`` = mean of ``d^2`` over the block, ``m`` = mean
   of the ``(w+3) x (w+3)`` pixels that their supports cover. For constant ``x`` over the block,
   ``E[v | m] = a m + b`` *exactly* even at very low counts (given the block's photon total the
   counts are multinomial and ``sum k = 0``); smooth variation changes this only to second order.
3. Blocks that touch clipped values (``<= clip_low`` or ``>= clip_high``: a saturated detector
   or a clipped floor) are dropped. ``clip_high="auto"`` (the default) takes the data's maximum
   as saturation when it holds a spike of the histogram (at least 0.05% of the pixels and 4 times
   the count one grey level below): saturated detectors pile up there, natural images do not.
   The floor is not automatic: a pure Poisson image at low counts attains its minimum (0) in
   many pixels without any clipping.
4. Weighted least squares of ``v`` on ``m`` with weights ``1 / (a m + b)^2`` (the variance of
   ``v`` is proportional to the square of its mean), iterated; blocks whose ``v`` exceeds the
   fit by more than ``reject`` robust standard deviations (edges, fine structure) are dropped
   between iterations. The threshold is one-sided and far in the tail, so noise-only blocks
   are almost never dropped (the bias this causes is below 0.5% in our tests).

Only ``b - a * mu`` is identifiable from second-order statistics: a negative intercept is
reported as an offset ``mu = -b_eff / a`` with ``b = 0`` (pass ``offset`` when the baseline is
known). Integer (quantised) data add about ``1/12`` (squared data units) to ``b``.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from ambient_med.errors import NoiseEstimateError
from ambient_med.noise.models import NoiseModel, like, to_numpy

H3 = np.array([1.0, -3.0, 3.0, -1.0]) / np.sqrt(20.0)
LAM_MAX = 200.0
STRIDE = 2
# draws of the top-up noise a posterior mean averages under an equalising model: on FMD field 5,
# 4 draws gave 39.50 dB against 39.39 for one (benchmarks/results/microscopy_preset.md)
TOPUP_DRAWS = 4


def _taps(stride: int) -> np.ndarray:
    h = np.zeros(3 * stride + 1)
    h[::stride] = H3
    return h


def detail_coefficients(img: np.ndarray, stride: int = 1) -> np.ndarray:
    """Valid-mode correlation of a 2D image with ``h h^T``, ``h`` the taps of ``H3`` ``stride``
    pixels apart: shape ``(H - 3 stride, W - 3 stride)``."""
    h = _taps(stride)
    n = len(h)
    rows = sum(c * img[i:img.shape[0] - n + 1 + i] for i, c in enumerate(h) if c)
    return sum(c * rows[:, j:img.shape[1] - n + 1 + j] for j, c in enumerate(h) if c)


def _block_sums(x: np.ndarray, w: int, span: int) -> np.ndarray:
    """Sums of ``x`` over the ``span x span`` windows that start at every ``w``-th pixel and
    fit ``(nb0, nb1)`` blocks of ``w`` detail positions (a summed-area table)."""
    nb0, nb1 = (x.shape[0] - span + w) // w, (x.shape[1] - span + w) // w
    c = np.zeros((x.shape[0] + 1, x.shape[1] + 1))
    c[1:, 1:] = x.cumsum(0).cumsum(1)
    i0, j0 = np.arange(nb0)[:, None] * w, np.arange(nb1)[None, :] * w
    return c[i0 + span, j0 + span] - c[i0, j0 + span] - c[i0 + span, j0] + c[i0, j0]


def block_statistics(img: np.ndarray, w: int = 8, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per block: (local mean ``m``, mean squared detail ``v``) for a 2D image; see module doc."""
    d2 = detail_coefficients(img, stride) ** 2
    nb0, nb1 = d2.shape[0] // w, d2.shape[1] // w
    if nb0 == 0 or nb1 == 0:
        return np.empty(0), np.empty(0)
    v = d2[: nb0 * w, : nb1 * w].reshape(nb0, w, nb1, w).mean(axis=(1, 3))
    span = w + 3 * stride
    return (_block_sums(img, w, span)[:nb0, :nb1] / span**2).ravel(), v.ravel()


def _clipped_blocks(img: np.ndarray, w: int, lo: float | None, hi: float | None, stride: int = 1) -> np.ndarray:
    bad = np.zeros(img.shape, dtype=bool)
    if lo is not None:
        bad |= img <= lo
    if hi is not None:
        bad |= img >= hi
    nb0, nb1 = (img.shape[0] - 3 * stride) // w, (img.shape[1] - 3 * stride) // w
    return (_block_sums(bad.astype(np.float64), w, w + 3 * stride)[:nb0, :nb1] > 0).ravel()


def saturation_level(y: np.ndarray, min_fraction: float = 5e-4, spike: float = 4.0) -> float | None:
    """The data's maximum if it is a saturation spike (see module doc, step 3), else None."""
    top = float(np.max(y))
    at_top = int(np.count_nonzero(y == top))
    below = y[y < top]
    if below.size == 0 or at_top < min_fraction * y.size:
        return None
    step = top - float(np.max(below))
    near = int(np.count_nonzero((y < top) & (y >= top - step)))
    return top if at_top >= spike * max(near, 1) else None


def fit_variance_line(m: np.ndarray, v: np.ndarray, iters: int = 8,
                      reject: float = 5.0) -> tuple[float, float, np.ndarray]:
    """Robust weighted LS of ``v = a m + b``; returns ``(a, b, kept)``. See module doc, step 4."""
    keep = np.isfinite(m) & np.isfinite(v)
    A = np.stack([m, np.ones_like(m)], axis=1)
    a, b = np.linalg.lstsq(A[keep], v[keep], rcond=None)[0]
    for _ in range(iters):
        pred = a * m + b
        floor = max(1e-12, 1e-3 * float(np.median(np.abs(pred[keep]))))
        pred = np.maximum(pred, floor)
        r = v / pred - 1.0
        spread = 1.4826 * np.median(np.abs(r[keep] - np.median(r[keep])))
        new = np.isfinite(r) & (r < reject * spread)
        keep = new
        wgt = 1.0 / pred[keep]
        a, b = np.linalg.lstsq(A[keep] * wgt[:, None], v[keep] * wgt, rcond=None)[0]
    return float(a), float(b), keep


class PoissonGaussian(NoiseModel):
    """``y = a * Poisson(x / a) + N(mu, b)``: gain ``a`` > 0, read-noise variance ``b`` >= 0,
    offset ``mu``. See the module docstring for the math."""

    name = "poisson-gaussian"

    def __init__(self, a: float, b: float = 0.0, mu: float = 0.0, equalise: bool = False):
        if not float(a) > 0:
            raise ValueError(f"gain a must be positive, got {a}")
        if not float(b) >= 0:
            raise ValueError(f"read-noise variance b must be >= 0, got {b}")
        self.a, self.b, self.mu = float(a), float(b), float(mu)
        self.equalise = bool(equalise)
        self.details = {}

    @property
    def params(self):
        p = {"a": self.a, "b": self.b, "mu": self.mu}
        return {**p, "equalise": True} if self.equalise else p

    @property
    def s2(self) -> float:
        """Read-noise variance in count units, ``b / a^2``."""
        return self.b / self.a**2

    def variance(self, mean):
        """``Var[y] = a (E[y] - mu) + b``."""
        return self.a * (np.asarray(mean, dtype=np.float64) - self.mu) + self.b

    # -- estimation -------------------------------------------------------------------------
    @classmethod
    def estimate(cls, data, offset: float | None = None, block: int = 8, reject: float = 5.0,
                 clip_low: float | None = None, clip_high: float | str | None = "auto",
                 stride: int = STRIDE) -> PoissonGaussian:
        """Fit ``(a, b)`` (and ``mu`` when the intercept is negative) from an image ``(H, W)``
        or a stack ``(..., H, W)`` of frames; see the module docstring."""
        y = to_numpy(data)
        if y.ndim < 2:
            raise NoiseEstimateError(f"need an image (H, W) or a stack (..., H, W); got shape {y.shape}")
        frames = y.reshape(-1, *y.shape[-2:])
        lo, hi = clip_low, (saturation_level(y) if clip_high == "auto" else clip_high)
        ms, vs = [], []
        for f in frames:
            m, v = block_statistics(f, block, stride)
            ok = ~_clipped_blocks(f, block, lo, hi, stride) if (lo, hi) != (None, None) else np.ones(m.size, bool)
            ms.append(m[ok])
            vs.append(v[ok])
        m, v = np.concatenate(ms), np.concatenate(vs)
        if m.size < 16:
            raise NoiseEstimateError(
                f"only {m.size} unclipped {block}x{block} blocks in data of shape {y.shape}; "
                "too few for a Poisson-Gaussian fit")
        if float(np.ptp(m)) <= 1e-6 * max(abs(float(m.mean())), 1e-12):
            raise NoiseEstimateError("the image has a single intensity level; gain and read noise "
                                     "cannot be separated (need a range of intensities)")
        a, b_eff, keep = fit_variance_line(m, v, reject=reject)
        if not a > 0:
            raise NoiseEstimateError(
                f"fitted gain a = {a:.3g} is not positive: the variance does not grow with the "
                "intensity, so these data do not look Poisson-Gaussian (noise-free or Gaussian?)")
        if offset is not None:
            b, mu = b_eff + a * float(offset), float(offset)
            if b < 0:  # the read noise is below the fit's precision: b = 0, reported in details
                b = 0.0
        elif b_eff >= 0:
            b, mu = b_eff, 0.0
        else:
            b, mu = 0.0, -b_eff / a
        model = cls(a, b, mu)
        model.details = {"method": f"block third-difference (stride {stride}) variance vs mean, robust WLS",
                         "b_eff": b_eff, "b_fit": b_eff + a * (0.0 if offset is None else float(offset)),
                         "n_blocks": int(m.size), "n_kept": int(keep.sum()),
                         "block": block, "stride": stride, "clipped_low": lo, "clipped_high": hi}
        return model

    # -- transforms -------------------------------------------------------------------------
    def _counts(self, y) -> np.ndarray:
        return (to_numpy(y) - self.mu) / self.a

    def stabilise(self, y):
        """Generalised Anscombe transform ``2 sqrt(max(u + 3/8 + s^2, 0))``, ``u = (y - mu)/a``
        (divided by :attr:`level` when equalising)."""
        return like(2.0 * np.sqrt(np.maximum(self._counts(y) + 0.375 + self.s2, 0.0)) / self.level, y)

    def invert_sample(self, z):
        """Algebraic inverse: ``a ((z/2)^2 - 3/8 - s^2) + mu``."""
        u = (to_numpy(z) * self.level / 2.0) ** 2 - 0.375 - self.s2
        return like(self.a * u + self.mu, z)

    def invert_mean(self, z_hat):
        """Exact unbiased inverse ``a * I(z_hat) + mu`` (tabulated; closed form above the table)."""
        D = to_numpy(z_hat) * self.level
        lam_grid, e_grid = self._table
        lam = np.interp(D, e_grid, lam_grid, left=0.0)
        high = D > e_grid[-1]
        if np.any(high):
            lam[high] = asymptotic_inverse(D[high], self.s2, e_grid[-1], lam_grid[-1])
        return like(self.a * lam + self.mu, z_hat)

    def expected_stabilised(self, lam) -> np.ndarray:
        """``E[stabilise(y) | x = a lam]`` for counts ``lam`` (numerical, exact to ~1e-6)."""
        return expected_gat(np.atleast_1d(np.asarray(lam, dtype=np.float64)), self.s2) / self.level

    # -- the per-pixel noise level (equalisation) -------------------------------------------
    def stabilised_variance(self, lam) -> np.ndarray:
        """``Var[stabilise(y) | x = a lam]`` for counts ``lam`` (tabulated :func:`gat_variance`,
        1 above the table; divided by ``level^2`` when equalising)."""
        lam_grid, v_grid = self._variance_table
        lam = np.asarray(lam, dtype=np.float64)
        return np.interp(lam, lam_grid, v_grid, right=1.0) / self.level**2

    @cached_property
    def _variance_table(self) -> tuple[np.ndarray, np.ndarray]:
        lam = self._table[0]
        return lam, gat_variance(lam, self.s2)

    @cached_property
    def level(self) -> float:
        """1, or when equalising the largest stabilised noise std over all intensities (the GAT's
        variance overshoots 1 by up to a few % near 2-8 counts); ``stabilise`` divides by it, so
        the equalised noise has unit variance everywhere."""
        if not self.equalise:
            return 1.0
        return float(np.sqrt(max(1.0, float(self._variance_table[1].max()))))

    def noise_std_map(self, y, size: int = 5) -> np.ndarray:
        """Per pixel, the std of the stabilised noise at the local intensity: the counts averaged
        over ``size x size`` pixels of each frame (last two axes; unbiased where the intensity is
        locally constant), clamped at 0, through :meth:`stabilised_variance`."""
        from scipy.ndimage import uniform_filter

        u = self._counts(y)
        lam = uniform_filter(u, size=(1,) * (u.ndim - 2) + (size, size), mode="reflect")
        return np.sqrt(self.stabilised_variance(np.maximum(lam, 0.0)))

    def stabilise_observation(self, y, seed: int = 0):
        z = self.stabilise(y)
        return self.equalise_noise(z, y, np.random.default_rng(seed)) if self.equalise else z

    def equalise_noise(self, z, y, rng: np.random.Generator):
        """``z + sqrt(1 - v(p)) eta``, ``eta ~ N(0, I)``, ``v`` the per-pixel stabilised variance
        (:meth:`noise_std_map` of the data ``y``): the stabilised noise then has unit variance in
        every pixel, as the ambient objective assumes (docs/design.md section 6), instead of
        0.1-0.7 below one photon per pixel. An exact draw wherever the map is right; it gives up
        the information of the quieter dark pixels for a noise model that holds everywhere."""
        if not self.equalise:
            raise ValueError("equalise_noise needs a PoissonGaussian(..., equalise=True)")
        extra = np.sqrt(np.maximum(1.0 - self.noise_std_map(y) ** 2, 0.0))
        return like(to_numpy(z) + extra * rng.standard_normal(extra.shape), z)

    @cached_property
    def _table(self) -> tuple[np.ndarray, np.ndarray]:
        lam = np.unique(np.concatenate([np.linspace(0, 4, 161), np.geomspace(4, LAM_MAX, 400)]))
        e = expected_gat(lam, self.s2)
        return lam, np.maximum.accumulate(e)


def asymptotic_inverse(D: np.ndarray, s2: float, d_end: float, lam_end: float) -> np.ndarray:
    """Exact unbiased inverse of the GAT for large ``D`` (counts): ``D^2/4 - 1/8 - s2 + c/D^2``,
    ``c`` chosen so that it equals ``lam_end`` at ``D = d_end`` (the end of the table)."""
    D = np.asarray(D, dtype=np.float64)
    c = (lam_end - (d_end**2 / 4 - 0.125 - s2)) * d_end**2
    return D**2 / 4 - 0.125 - s2 + c / D**2


def expected_gat(lam: np.ndarray, s2: float, n_eps: int = 2001, power: int = 1) -> np.ndarray:
    """``E[g^power]`` of the GAT ``g = 2 sqrt(max(K + e + 3/8 + s2, 0))``, ``K ~ Poisson(lam)``,
    ``e ~ N(0, s2)`` (``power`` 1: the mean; 2: the second moment)."""
    from scipy.stats import poisson

    lam = np.asarray(lam, dtype=np.float64)
    kmax = int(np.ceil(lam.max() + 12 * np.sqrt(lam.max() + 1) + 20))
    k = np.arange(kmax + 1, dtype=np.float64)
    s = np.sqrt(s2)
    if s > 0:
        eps = np.linspace(-9 * s, 9 * s, n_eps)
        wts = np.exp(-0.5 * (eps / s) ** 2)
        wts[[0, -1]] *= 0.5
        wts /= wts.sum()
        g = np.empty_like(k)
        for i in range(0, k.size, 256):  # chunks keep memory small
            kk = k[i:i + 256, None]
            g[i:i + 256] = ((2 * np.sqrt(np.maximum(kk + eps + 0.375 + s2, 0.0))) ** power) @ wts
    else:
        g = (2 * np.sqrt(k + 0.375)) ** power
    pmf = poisson.pmf(k[None, :], lam[:, None])
    return pmf @ g


def gat_variance(lam: np.ndarray, s2: float) -> np.ndarray:
    """``Var[g]`` of the GAT at ``lam`` counts (read-noise variance ``s2`` in counts): 0 at
    ``lam = 0`` without read noise, about 0.47 at half a count (more with read noise), an
    overshoot of up to about 3% near 2-8 counts, then 1 + O(1 / lam^2) (Anscombe 1948;
    Makitalo & Foi 2013)."""
    m = expected_gat(lam, s2)
    return np.maximum(expected_gat(lam, s2, power=2) - m**2, 0.0)
