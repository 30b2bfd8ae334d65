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

from ..utils import append_dims, as_sigma


def _freq_radius(shape: tuple[int, ...]) -> torch.Tensor:
    grids = torch.meshgrid(*[torch.fft.fftfreq(n, dtype=torch.float64) for n in shape],
                           indexing="ij")
    return torch.sqrt(sum(g**2 for g in grids))



def monte_carlo_mmse(dist, sigma: float, n: int = 20000, seed: int = 0) -> float:
    """``E Var[x0 | x_sigma]`` per pixel over ``n`` draws of ``dist`` (which has ``sample`` and a
    closed-form ``posterior_variance``), in batches of 2000."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(max(n // 2000, 1)):
        x0 = dist.sample(2000, g)
        xs = x0 + sigma * torch.randn(x0.shape, generator=g)
        out.append(dist.posterior_variance(xs, sigma).double().mean())
    return float(torch.stack(out).mean())

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


# --------------------------------------------------------------------------------------------
# Non-Gaussian distributions with closed-form MMSE denoisers (Gaussian mixtures)
# --------------------------------------------------------------------------------------------

def _mixture_posterior(log_w: torch.Tensor, means: torch.Tensor, variances: torch.Tensor,
                       log_lik: torch.Tensor):
    """Responsibilities ``p(k | x) = softmax_k(log w_k + log N_k(x))`` (last axis is ``k``)."""
    return torch.softmax(log_w + log_lik, dim=-1)


class PixelMixture:
    """I.i.d. pixels, each a 1-D Gaussian mixture ``sum_k w_k N(mu_k, s_k^2)``.

    The most non-linear test case with a closed form: per pixel, ``x_sigma ~ sum_k w_k
    N(mu_k, s_k^2 + sigma^2)``, responsibilities ``r_k(x)``, and

        E[x0 | x_sigma]   = sum_k r_k m_k,            m_k = mu_k + s_k^2 (x - mu_k)/(s_k^2 + sigma^2)
        Var[x0 | x_sigma] = sum_k r_k (v_k + m_k^2) - E[x0|x]^2,   v_k = s_k^2 sigma^2/(s_k^2 + sigma^2).

    ``s_k = 0`` is allowed (``+-1`` pixels: ``E[x0|x] = tanh(x/sigma^2)``)."""

    def __init__(self, weights=(0.5, 0.5), means=(-1.0, 1.0), stds=(0.0, 0.0),
                 shape: tuple[int, ...] = (8, 8)):
        self.w = torch.tensor(weights, dtype=torch.float64)
        self.w = self.w / self.w.sum()
        self.mu = torch.tensor(means, dtype=torch.float64)
        self.s2 = torch.tensor(stds, dtype=torch.float64) ** 2
        self.shape = tuple(shape)

    @property
    def variance(self) -> float:
        m = float((self.w * self.mu).sum())
        return float((self.w * (self.s2 + self.mu**2)).sum()) - m**2

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        size = n * math.prod(self.shape)
        k = torch.multinomial(self.w, size, replacement=True, generator=generator)
        z = torch.randn(size, generator=generator, dtype=torch.float64)
        x = self.mu[k] + self.s2[k].sqrt() * z
        return x.reshape(n, 1, *self.shape).float().to(device)

    def posterior(self, x: torch.Tensor, sigma: float | torch.Tensor):
        """Per-pixel posterior mean and variance of ``x0`` given ``x_sigma = x``."""
        s2 = append_dims(as_sigma(sigma, x).double() ** 2, x.ndim)[..., None]
        xd = x.double()[..., None]
        mu, ks2 = self.mu.to(x.device), self.s2.to(x.device)
        var = ks2 + s2
        r = torch.softmax(self.w.log().to(x.device) - 0.5 * (xd - mu) ** 2 / var
                          - 0.5 * var.log(), dim=-1)
        m = mu + ks2 / var * (xd - mu)
        mean = (r * m).sum(-1)
        post_var = (r * (ks2 * s2 / var + m**2)).sum(-1) - mean**2
        return mean.to(x.dtype), post_var.clamp_min(0).to(x.dtype)

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """The exact denoiser ``E[x0 | x_sigma]``."""
        return self.posterior(x, sigma)[0]


class _ImageMixture:
    """Shared shape facts of the mixtures of images (weights ``w``, image ``shape``)."""

    @property
    def n_components(self) -> int:
        return len(self.w)

    @property
    def dim(self) -> int:
        return math.prod(self.shape)


class GaussianMixtureField(_ImageMixture):
    """A mixture of stationary Gaussian fields: component ``k`` (weight ``w_k``) is the constant
    image ``mu_k`` plus a periodic stationary field with power spectrum ``P_k`` (DFT-diagonal
    covariance, as in :class:`GaussianField`).

    Closed forms (orthonormal DFT ``F``, per component diagonal in frequency):

        log p_k(x_sigma) = -1/2 sum_f |F(x - mu_k)|_f^2 / (P_k,f + sigma^2) - 1/2 sum_f log(P_k,f + sigma^2)
        r_k(x)           = softmax_k(log w_k + log p_k(x_sigma))
        E[x0 | x_sigma]  = sum_k r_k (mu_k + W_k (x - mu_k)),      W_k = F^H diag(P_k/(P_k + sigma^2)) F

    The default has three components with distinct means, spectra and unequal weights, scaled
    to a per-pixel variance of 1; its components are identifiable at any sigma <= 1 (the image
    means differ by many noise standard deviations), so the distribution is clearly multimodal
    at the benchmark's noise levels and a sampler must get the mode weights right."""

    def __init__(self, shape: tuple[int, ...] = (16, 16), weights=(0.5, 0.3, 0.2),
                 means=(-0.8, 0.5, 1.4), variances=(0.15, 0.10, 0.05),
                 spectra=((0.05, 1.5), (0.20, 1.0), (0.10, 3.0))):
        self.shape = tuple(shape)
        self.dims = tuple(range(-len(self.shape), 0))
        self.w = torch.tensor(weights, dtype=torch.float64)
        self.w = self.w / self.w.sum()
        r = _freq_radius(self.shape)
        powers = []
        for v, (k0, alpha) in zip(variances, spectra):
            p = 1.0 / (1.0 + (r / k0) ** 2) ** alpha
            powers.append(v * p / p.mean())
        mu = torch.tensor(means, dtype=torch.float64)
        total = float((self.w * (torch.tensor(variances, dtype=torch.float64) + mu**2)).sum()
                      - (self.w * mu).sum() ** 2)
        c = 1.0 / math.sqrt(total)  # per-pixel variance 1
        self.mu = mu * c
        self.power = torch.stack(powers) * c**2          # (K, *shape), unshifted FFT layout
        self.mean = float((self.w * self.mu).sum())

    def _fft(self, x):
        return torch.fft.fftn(x.double(), dim=self.dims, norm="ortho")

    def _ifft(self, X):
        return torch.fft.ifftn(X, dim=self.dims, norm="ortho").real

    def sample(self, n: int, generator: torch.Generator | None = None, device=None,
               return_labels: bool = False):
        k = torch.multinomial(self.w, n, replacement=True, generator=generator)
        wn = torch.randn((n, 1, *self.shape), generator=generator, dtype=torch.float64)
        x = self._ifft(self._fft(wn) * self.power[k][:, None].sqrt())
        x = (x + append_dims(self.mu[k], x.ndim)).float().to(device)
        return (x, k) if return_labels else x

    def log_likelihoods(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """``log p_k(x_sigma)`` up to a shared constant, shape ``(N, K)`` (``x`` is ``(N, 1, ...)``)."""
        s2 = append_dims(as_sigma(sigma, x).double() ** 2, x.ndim + 1)
        X = self._fft(x)[:, None]                                     # (N, 1, 1, ...)
        M = self._fft(append_dims(self.mu.to(x.device), x.ndim) * torch.ones(
            (1, 1, *self.shape), dtype=torch.float64, device=x.device))  # (K, 1, ...)
        var = self.power.to(x.device)[:, None] + s2                  # (N, K, 1, ...)
        quad = ((X - M[None]).abs() ** 2 / var).flatten(2).sum(-1)
        logdet = var.log().expand(-1, self.n_components, *var.shape[2:]).flatten(2).sum(-1)
        return -0.5 * (quad + logdet)

    def responsibilities(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """``p(k | x_sigma)``, shape ``(N, K)``."""
        return torch.softmax(self.w.log().to(x.device) + self.log_likelihoods(x, sigma), dim=1)

    def _component_means(self, x, sigma):
        s2 = append_dims(as_sigma(sigma, x).double() ** 2, x.ndim + 1)
        mu = append_dims(self.mu.to(x.device), x.ndim)                # (K, 1, ...)
        X = self._fft(x[:, None] - mu[None])                          # (N, K, 1, ...)
        p = self.power.to(x.device)[:, None]
        return mu[None] + self._ifft(X * p / (p + s2)), p * s2 / (p + s2)

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """The exact denoiser ``E[x0 | x_sigma]`` (per-sample ``sigma`` allowed)."""
        r = append_dims(self.responsibilities(x, sigma), x.ndim + 1)
        m, _ = self._component_means(x, sigma)
        return (r * m).sum(1).to(x.dtype)

    def posterior_variance(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Per-pixel ``Var[x0 | x_sigma]``: ``sum_k r_k (v_k + m_k^2) - E[x0|x]^2`` where ``v_k`` is
        component ``k``'s (stationary) per-pixel posterior variance ``mean_f P_k sigma^2/(P_k + sigma^2)``."""
        r = append_dims(self.responsibilities(x, sigma), x.ndim + 1)
        m, pv = self._component_means(x, sigma)
        v = append_dims(pv.flatten(2).mean(-1), m.ndim)
        mean = (r * m).sum(1)
        return ((r * (v + m**2)).sum(1) - mean**2).clamp_min(0).to(x.dtype)

    def mmse(self, sigma: float, n: int = 20000, seed: int = 0) -> float:
        """Per-pixel MMSE ``E||x0 - E[x0|x_sigma]||^2 / d`` by Monte Carlo (``E Var[x0|x_sigma]``)."""
        return monte_carlo_mmse(self, sigma, n, seed)

    def component_covariance(self, k: int) -> np.ndarray:
        """Dense covariance of component ``k`` (flattened)."""
        eye = torch.eye(self.dim, dtype=torch.float64).reshape(self.dim, 1, *self.shape)
        return self._ifft(self._fft(eye) * self.power[k]).reshape(self.dim, self.dim).numpy()

    def covariance(self) -> np.ndarray:
        """Dense covariance of the whole mixture: ``sum_k w_k (C_k + mu_k mu_k^T) - m m^T``."""
        ones = np.ones(self.dim)
        c = sum(float(self.w[k]) * (self.component_covariance(k)
                                    + float(self.mu[k]) ** 2 * np.outer(ones, ones))
                for k in range(self.n_components))
        return c - self.mean**2 * np.outer(ones, ones)

    def classify(self, x: torch.Tensor, sigma: float = 1e-3) -> torch.Tensor:
        """Each sample's most likely component (at a tiny ``sigma``)."""
        return (self.w.log().to(x.device) + self.log_likelihoods(x, sigma)).argmax(1)


# --------------------------------------------------------------------------------------------
# Small images with exact zeros ("air"): a dense Gaussian mixture with singular covariances
# --------------------------------------------------------------------------------------------

class DenseGaussianMixture(_ImageMixture):
    """``x0 ~ sum_k w_k N(mu_k, C_k)`` on flattened images of ``dim = prod(shape)`` pixels, with
    dense (possibly singular) covariances given by their eigendecompositions ``C_k = V_k diag(l_k) V_k^T``.
    A component with ``C_k = 0`` is a single image (``mu_k``); pixels where every ``C_k`` and ``mu_k``
    vanish are exactly 0 in every draw (the "air" of an MRI background or a dark microscopy field).

    Closed forms at level ``sigma`` (``x = x0 + sigma z``), per component ``k``:

        log p_k(x)      = -1/2 sum_i (V_k^T (x - mu_k))_i^2 / (l_ki + sigma^2) - 1/2 sum_i log(l_ki + sigma^2)
        r_k(x)          = softmax_k(log w_k + log p_k(x))
        m_k(x)          = mu_k + V_k diag(l_k / (l_k + sigma^2)) V_k^T (x - mu_k)
        P_k             = V_k diag(l_k sigma^2 / (l_k + sigma^2)) V_k^T
        E[x0 | x]       = sum_k r_k m_k
        Cov[x0 | x]     = sum_k r_k (P_k + m_k m_k^T) - E[x0|x] E[x0|x]^T

    and Tweedie's second-order identity ``Cov[x0 | x] = sigma^2 d E[x0|x] / dx`` holds for them
    (checked in the tests). Images are ``(N, 1, *shape)``; computations run in float64."""

    def __init__(self, shape: tuple[int, ...], weights, means: torch.Tensor,
                 covariances: torch.Tensor, names: tuple[str, ...] | None = None):
        self.shape = tuple(shape)
        d = math.prod(self.shape)
        self.w = torch.as_tensor(weights, dtype=torch.float64)
        self.w = self.w / self.w.sum()
        self.mu = torch.as_tensor(means, dtype=torch.float64).reshape(len(self.w), d)
        cov = torch.as_tensor(covariances, dtype=torch.float64).reshape(len(self.w), d, d)
        lam, vec = torch.linalg.eigh((cov + cov.transpose(1, 2)) / 2)
        self.lam = lam.clamp_min(0)                 # (K, d)
        self.vec = vec                              # (K, d, d), columns are eigenvectors
        # pixels a component can be nonzero in: draws are exactly 0 elsewhere (eigh leaves
        # round-off of 1e-9 there otherwise)
        self.support = (torch.diagonal(cov, dim1=1, dim2=2) > 0) | (self.mu != 0)
        self.names = tuple(names) if names is not None else tuple(f"c{k}" for k in range(len(self.w)))

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.dim).double()

    def sample(self, n: int, generator: torch.Generator | None = None, device=None,
               return_labels: bool = False):
        k = torch.multinomial(self.w, n, replacement=True, generator=generator)
        z = torch.randn((n, self.dim), generator=generator, dtype=torch.float64)
        x = self.mu[k] + torch.einsum("nij,nj->ni", self.vec[k], self.lam[k].sqrt() * z)
        x = (x * self.support[k]).reshape(n, 1, *self.shape).float().to(device)
        return (x, k) if return_labels else x

    def _parts(self, x: torch.Tensor, sigma):
        """``(r, m, pv)``: responsibilities (N, K), component posterior means (N, K, d) and the
        components' posterior-variance eigenvalues ``l s^2 / (l + s^2)`` (N, K, d)."""
        xf = self._flat(x)
        dev = xf.device
        s2 = as_sigma(sigma, x).double().to(dev).reshape(-1, 1, 1) ** 2      # (N, 1, 1)
        lam, vec, mu = self.lam.to(dev), self.vec.to(dev), self.mu.to(dev)
        proj = torch.einsum("kij,nki->nkj", vec, xf[:, None] - mu[None])      # V^T (x - mu)
        var = lam[None] + s2                                                  # (N, K, d)
        loglik = -0.5 * (proj**2 / var + var.log()).sum(-1)
        r = torch.softmax(self.w.log().to(dev) + loglik, dim=1)
        m = mu[None] + torch.einsum("kij,nkj->nki", vec, proj * lam[None] / var)
        return r, m, lam[None] * s2 / var

    def responsibilities(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return self._parts(x, sigma)[0]

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The exact denoiser ``E[x0 | x_sigma]`` (per-sample ``sigma`` allowed)."""
        r, m, _ = self._parts(x, sigma)
        return (r[..., None] * m).sum(1).reshape(x.shape).to(x.dtype)

    def posterior_variance(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Per-pixel ``Var[x0 | x_sigma]`` (the diagonal of ``Cov[x0 | x]``)."""
        r, m, pv = self._parts(x, sigma)
        diag_p = torch.einsum("kij,nkj->nki", self.vec.to(m.device) ** 2, pv)   # diag of P_k
        mean = (r[..., None] * m).sum(1)
        var = (r[..., None] * (diag_p + m**2)).sum(1) - mean**2
        return var.clamp_min(0).reshape(x.shape).to(x.dtype)

    def posterior_covariance(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The full ``Cov[x0 | x_sigma]``, shape (N, d, d)."""
        r, m, pv = self._parts(x, sigma)
        vec = self.vec.to(m.device)
        p = torch.einsum("kij,nkj,klj->nkil", vec, pv, vec)
        mean = (r[..., None] * m).sum(1)
        second = (r[..., None, None] * (p + m[..., :, None] * m[..., None, :])).sum(1)
        return second - mean[:, :, None] * mean[:, None, :]

    def mmse(self, sigma: float, n: int = 20000, seed: int = 0) -> float:
        """Per-pixel MMSE ``E Var[x0 | x_sigma]`` by Monte Carlo."""
        return monte_carlo_mmse(self, sigma, n, seed)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """The mixture's mean (d,) and covariance (d, d)."""
        cov_k = torch.einsum("kij,kj,klj->kil", self.vec, self.lam, self.vec)
        mean = (self.w[:, None] * self.mu).sum(0)
        second = (self.w[:, None, None] * (cov_k + self.mu[:, :, None] * self.mu[:, None, :])).sum(0)
        return mean.numpy(), (second - mean[:, None] * mean[None, :]).numpy()

    def classify(self, x: torch.Tensor, sigma: float = 1e-3) -> torch.Tensor:
        """Each image's most likely component when read as a draw at level ``sigma``."""
        return self.responsibilities(x, sigma).argmax(1)


def _grid_covariance(shape: tuple[int, ...], length: float) -> torch.Tensor:
    """Squared-exponential covariance ``exp(-|i - j|^2 / (2 length^2))`` between grid pixels."""
    pos = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape],
                                     indexing="ij"), -1).reshape(-1, len(shape))
    d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    return torch.exp(-d2 / (2 * length**2))


def air_mixture(shape: tuple[int, int] = (8, 8)) -> DenseGaussianMixture:
    """A closed-form law of small images with exact zeros, for judging what a prior learns below
    the data noise (``benchmarks/below_noise.py``). Every image is 0 outside a centred disc (the
    background); weights and components:

    - ``air`` (0.30): the whole image is 0, like an empty slice or a dark field;
    - ``smooth`` (0.30): mean 1.0 on the disc, smooth texture (std 0.30, correlation 2 px);
    - ``grainy`` (0.25): mean 0.5 on the disc, fine texture (std 0.25, correlation 0.7 px);
    - ``ring`` (0.15): a bright rim (1.2) around a dim centre (0.3), faint texture (std 0.10).

    The disc covers about half the pixels, so every non-air image also has exact zeros."""
    h, w = shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    rad = torch.sqrt((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2)
    disc = (rad <= 0.4 * min(h, w)).flatten().double()
    rim = ((rad > 0.22 * min(h, w)) & (rad <= 0.4 * min(h, w))).flatten().double()
    d = h * w
    mask = disc[:, None] * disc[None, :]

    def cov(std, length):
        return std**2 * _grid_covariance(shape, length) * mask

    means = torch.stack([torch.zeros(d), 1.0 * disc, 0.5 * disc, 0.3 * disc + 0.9 * rim])
    covs = torch.stack([torch.zeros(d, d), cov(0.30, 2.0), cov(0.25, 0.7), cov(0.10, 1.5)])
    return DenseGaussianMixture(shape, (0.30, 0.30, 0.25, 0.15), means, covs,
                                names=("air", "smooth", "grainy", "ring"))


def air_mask(dist: DenseGaussianMixture) -> torch.Tensor:
    """Pixels that are exactly 0 in every image of ``dist`` (boolean, ``shape``)."""
    var = torch.einsum("kij,kj->ki", dist.vec**2, dist.lam)
    return ((var.abs().max(0).values < 1e-12) & (dist.mu.abs().max(0).values < 1e-12)).reshape(dist.shape)
