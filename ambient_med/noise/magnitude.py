r"""Magnitude MRI: Rician (one coil) and noncentral chi (``n_coils`` = N, root sum of squares).

A magnitude ``m = sqrt(sum_{j=1}^{2N} (mu_j + sigma e_j)^2)``, ``e_j ~ N(0, 1)``, follows a
noncentral chi distribution with ``2N`` degrees of freedom, scale ``sigma`` and noncentrality
``nu = |mu|`` (the clean magnitude); ``N = 1`` is Rician. Its density (``sigma = 1``) is
``p(m | nu) = m^N nu^(1-N) exp(-(m^2 + nu^2)/2) I_{N-1}(m nu)`` (``nu = 0``: chi,
``m^(2N-1) exp(-m^2/2) / (2^(N-1) Gamma(N))``); ``E[m^2] = 2N + nu^2``.

**Stabilise** (Foi, "Noise estimation and removal in MR imaging: the variance-stabilization
approach", ISBI 2011): ``z = f(m / sigma)`` with ``f`` increasing and ``Var[f(m) | nu] ~= 1``
for every ``nu``. Computed numerically, in units of ``sigma``:

1. moments ``E[m | nu]``, ``Var[m | nu]`` by quadrature of the density on a fine grid of ``m``,
   for ``nu`` on a grid up to ``NU_MAX``;
2. first-order (delta-method) VST ``f(E[m | nu]) = int dE / std``, extended linearly below
   ``E[m | 0]`` with the slope there and above the table with slope 1;
3. Foi's refinement: the actual ``std[f(m) | nu]`` (quadrature) rescales the slope of ``f`` at
   ``E[m | nu]``; 60 fixed-point iterations bring ``std[f(m) | nu]`` within 0.99-1.02 for all
   ``nu`` (Rician; 0.998-1.003 for 8 coils), where the first-order ``f`` gives 0.89-1.06.

**Invert**: algebraic ``sigma f^{-1}(z)`` (samples); exact unbiased ``sigma E^{-1}(z_hat)`` with
``E(nu) = E[f(m) | nu]`` tabulated and interpolated (posterior means); ``z_hat`` below ``E(0)``
maps to ``nu = 0``. Beyond the table ``f(m) = m + c`` and ``E[m | nu] = sqrt(nu^2 + 2N - 1)
+ O(nu^-3)``, so ``nu = sqrt((z - c')^2 - (2N - 1))`` with ``c'`` matched at the table's end.

**Estimate** ``sigma`` with PIESNO (:func:`ambient_med.noise.piesno.from_magnitude`), which
needs pure-noise background voxels; ``n_coils`` is given (it is not identifiable from the data
when the air is chi(2N) noise). Air that is wider than that (correlated coils, parallel imaging)
is fitted by an effective non-integer ``N_eff`` and ``sigma_eff``
(:func:`ambient_med.noise.piesno.effective_chi`); the tables take any real ``N >= 1``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.special import gammaln, ive

from ambient_med.noise.models import NoiseModel, like, to_numpy
from ambient_med.noise.piesno import _coils, effective_chi, magnitude_volume_estimate

NU_MAX = 40.0


def nc_chi_pdf(m: np.ndarray, nu: np.ndarray, n_coils: int) -> np.ndarray:
    """Noncentral chi density with ``2 n_coils`` dof, unit scale; broadcasts ``m`` and ``nu``."""
    m, nu = np.broadcast_arrays(np.asarray(m, np.float64), np.asarray(nu, np.float64))
    N = n_coils
    out = np.zeros(m.shape)
    pos = m > 0
    z = nu == 0
    a = pos & z
    out[a] = np.exp((2 * N - 1) * np.log(m[a]) - m[a] ** 2 / 2 - (N - 1) * np.log(2) - gammaln(N))
    b = pos & ~z
    mm, nn = m[b], nu[b]
    out[b] = np.exp(N * np.log(mm) - (N - 1) * np.log(nn) - (mm - nn) ** 2 / 2) * ive(N - 1, mm * nn)
    return out


class _Tables:
    """The VST ``f`` (knots ``t`` -> values ``f``) and ``E[f(m) | nu]`` for one ``n_coils``."""

    def __init__(self, n_coils: int, iters: int = 60):
        N = n_coils
        self.N = N
        self.nu = np.unique(np.concatenate([np.linspace(0, 6, 121), np.linspace(6, NU_MAX, 69)]))
        hi = NU_MAX + 12 + 2 * np.sqrt(2 * N)
        self.m = np.linspace(0, hi, 4001)
        dm = self.m[1] - self.m[0]
        w = nc_chi_pdf(self.m[None, :], self.nu[:, None], N) * dm   # quadrature weights (nu, m)
        w /= w.sum(axis=1, keepdims=True)
        self.w = w
        mean = w @ self.m
        std = np.sqrt(np.maximum(w @ self.m**2 - mean**2, 1e-300))
        self.t = mean                                               # knots: E[m | nu], increasing
        slope = 1.0 / std                                           # f'(t) (delta method)
        for _ in range(iters):
            f = self._integrate(slope)
            fm = self._eval(f, slope, self.m)
            ef = w @ fm
            sd = np.sqrt(np.maximum(w @ fm**2 - ef**2, 1e-300))
            slope = slope / sd
        self.slope = slope
        self.f = self._integrate(slope)
        fm = self._eval(self.f, slope, self.m)
        self.ef = np.maximum.accumulate(w @ fm)
        self.sd = np.sqrt(np.maximum(w @ fm**2 - (w @ fm) ** 2, 0))
        # beyond the table: f(m) = m + c (slope 1), E f = sqrt(nu^2 + 2N - 1) + c'
        self.c_end = self.ef[-1] - np.sqrt(self.nu[-1] ** 2 + 2 * N - 1)

    def _integrate(self, slope: np.ndarray) -> np.ndarray:
        f = np.concatenate([[0.0], np.cumsum(0.5 * (slope[1:] + slope[:-1]) * np.diff(self.t))])
        return f + slope[0] * self.t[0]        # f(0) = 0 with the linear extension below t[0]

    def _eval(self, f: np.ndarray, slope: np.ndarray, m: np.ndarray) -> np.ndarray:
        t = self.t
        out = np.interp(m, t, f)
        lo, hi = m < t[0], m > t[-1]
        out[lo] = f[0] + slope[0] * (m[lo] - t[0])
        out[hi] = f[-1] + (m[hi] - t[-1])
        return out

    def forward(self, m: np.ndarray) -> np.ndarray:
        return self._eval(self.f, self.slope, m)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        t, f = self.t, self.f
        out = np.interp(z, f, t)
        lo, hi = z < f[0], z > f[-1]
        out[lo] = t[0] + (z[lo] - f[0]) / self.slope[0]
        out[hi] = t[-1] + (z[hi] - f[-1])
        return out

    def unbiased_inverse(self, z: np.ndarray) -> np.ndarray:
        out = np.interp(z, self.ef, self.nu, left=0.0)
        hi = z > self.ef[-1]
        out[hi] = np.sqrt(np.maximum((z[hi] - self.c_end) ** 2 - (2 * self.N - 1), 0.0))
        return out


@lru_cache(maxsize=16)
def vst_tables(n_coils: float) -> _Tables:
    """Tables for ``n_coils`` (an integer, or an effective non-integer ``N_eff``; built once per
    process, ~1 s on one core)."""
    return _Tables(n_coils)


class NoncentralChi(NoiseModel):
    """Magnitude noise from ``n_coils`` (root sum of squares) with per-channel std ``sigma``.

    ``n_coils`` may be an effective, non-integer ``N_eff`` (:func:`effective_chi`); then
    ``n_coils_nominal`` records the coil count it was fitted from, and :meth:`estimate` on new
    data (``denoise --sigma auto``) fits the effective model again rather than PIESNO alone."""

    name = "noncentral-chi"

    def __init__(self, sigma: float, n_coils: float = 1, n_coils_nominal: int | None = None):
        if not float(sigma) > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        if not float(n_coils) >= 1:
            raise ValueError(f"n_coils must be at least 1, got {n_coils}")
        self.sigma, self.n_coils = float(sigma), _coils(n_coils)
        self.n_coils_nominal = None if n_coils_nominal is None else int(n_coils_nominal)
        self.details = {}

    @classmethod
    def estimate(cls, data, n_coils: int = 1, effective: bool = False, **options) -> NoncentralChi:
        """``sigma`` by PIESNO (:func:`magnitude_volume_estimate`) with ``n_coils``; with
        ``effective``, ``(N_eff, sigma_eff)`` by :func:`effective_chi` from the nominal ``n_coils``."""
        if effective:
            est = effective_chi(to_numpy(data), n_coils, **options)
            m = cls(est.sigma, est.details["n_coils"], n_coils_nominal=n_coils)
        else:
            est = magnitude_volume_estimate(to_numpy(data), n_coils, **options)
            m = cls(est.sigma, n_coils)
        m.details = {"method": est.method, "uncertainty": est.uncertainty, **est.details}
        return m

    @property
    def params(self):
        out = {"sigma": self.sigma, "n_coils": self.n_coils}
        if self.n_coils_nominal is not None:
            out["n_coils_nominal"] = self.n_coils_nominal
        return out

    @property
    def tables(self) -> _Tables:
        return vst_tables(self.n_coils)

    def stabilise(self, m):
        return like(self.tables.forward(np.abs(to_numpy(m)) / self.sigma), m)

    def invert_sample(self, z):
        return like(self.sigma * self.tables.inverse(to_numpy(z)), z)

    def invert_mean(self, z_hat):
        return like(self.sigma * self.tables.unbiased_inverse(to_numpy(z_hat)), z_hat)


class Rician(NoncentralChi):
    """Rician magnitude noise: one coil (or a complex coil combination), std ``sigma``."""

    name = "rician"

    def __init__(self, sigma: float, n_coils: int = 1):
        if n_coils != 1:
            raise ValueError("Rician noise means one coil; use NoncentralChi for n_coils > 1")
        super().__init__(sigma, 1)

    @classmethod
    def estimate(cls, data, n_coils: int = 1, **options) -> Rician:
        return super().estimate(data, 1, **options)

    @property
    def params(self):
        return {"sigma": self.sigma}
