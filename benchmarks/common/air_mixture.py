"""The law of the below-noise benchmark (``below_noise.py``): the air mixture on 8x8 images, what
its scores compare with (``Truth``), the sampler every model is judged through, and the small
network each objective trains (an MLP: on 8x8 images it runs some 20x faster on a CPU core than
the package's UNet)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ambient_med.diffusion.sampling import sample
from ambient_med.synthetic.mixtures import air_mask, air_mixture, gaussian_frechet_distance, radial_power_bands
from ambient_med.utils import append_dims, as_sigma

SHAPE = (8, 8)
SAMPLE_SEED = 12


class MLPDenoiser(nn.Module):
    """``D(x, s) = c_skip x + c_out F(c_in x, c_noise)`` (EDM preconditioning, as
    ``ambient_med.diffusion.networks.EDMDenoiser``) with ``F`` a residual MLP on the flattened image whose
    blocks are modulated (FiLM) by Fourier features of ``c_noise = ln(s)/4``."""

    def __init__(self, shape=SHAPE, width: int = 256, depth: int = 4, sigma_data: float = 1.0,
                 n_freq: int = 16):
        super().__init__()
        d = math.prod(shape)
        self.register_buffer("sigma_data", torch.tensor(float(sigma_data)))
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(64), n_freq)))
        self.emb = nn.Sequential(nn.Linear(2 * n_freq, width), nn.SiLU(), nn.Linear(width, width),
                                 nn.SiLU())
        self.inp = nn.Linear(d, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.film = nn.ModuleList(nn.Linear(width, 2 * width) for _ in range(depth))
        self.lin1 = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.lin2 = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, d))

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = as_sigma(sigma, x).float()
        sd = self.sigma_data
        s2 = sigma**2 + sd**2
        c_skip, c_out, c_in = sd**2 / s2, sigma * sd / s2.sqrt(), 1 / s2.sqrt()
        a = (sigma.log() / 4)[:, None] * self.freqs
        e = self.emb(torch.cat([a.sin(), a.cos()], 1))
        h = self.inp((append_dims(c_in, x.ndim) * x).flatten(1).float())
        for norm, film, l1, l2 in zip(self.norms, self.film, self.lin1, self.lin2):
            scale, shift = film(e).chunk(2, 1)
            h = h + l2(nn.functional.silu(l1(norm(h)) * (1 + scale) + shift))
        f = self.out(h).reshape(x.shape).to(x.dtype)
        return append_dims(c_skip, x.ndim) * x + append_dims(c_out, x.ndim) * f


class Truth:
    """What the scores compare with, computed once per process. ``fd_floor`` is the Frechet
    distance of the exact denoiser's samples through the same sampler from the same noise
    (``SAMPLE_SEED``): no model can be expected to do better, and with the noise shared the
    finite-sample fluctuation of the distance is largely shared too."""

    def __init__(self, n_eval: int, classify_sigma: float = 1.0):
        self.dist = air_mixture(SHAPE)
        self.air = air_mask(self.dist)
        self.mean, self.cov = self.dist.moments()
        big = self.dist.sample(20000, torch.Generator().manual_seed(99))
        self.bands = radial_power_bands(big)
        self.classify_sigma = classify_sigma
        self.n_eval = n_eval
        exact = draw_samples(lambda x, s: self.dist.denoise(x.double(), s).float(), n_eval)
        self.fd_floor = self.fd(exact)
        self.exact_samples = exact

    def fd(self, x: torch.Tensor) -> float:
        flat = x.reshape(x.shape[0], -1).double().numpy()
        return gaussian_frechet_distance(flat.mean(0), np.cov(flat, rowvar=False), self.mean, self.cov)

    def weights_tv(self, x: torch.Tensor, sigma_n: float) -> float:
        lab = torch.cat([self.dist.classify(c, self.classify_sigma) for c in x.split(1000)])
        frac = torch.bincount(lab, minlength=self.dist.n_components).double() / len(lab)
        return float(0.5 * (frac - self.dist.w).abs().sum())

    def air_rms(self, x: torch.Tensor) -> float:
        """RMS of ``x`` (N, 1, *SHAPE) over the air pixels."""
        return float(x[:, :, self.air].double().square().mean().sqrt())

    def tv_floor(self, sigma_n: float) -> float:
        return self.weights_tv(self.exact_samples, sigma_n)


@torch.no_grad()
def draw_samples(denoiser, n: int, stop: float | None = None) -> torch.Tensor:
    """``n`` samples by the package's ``sample()`` (Heun, 40 steps), from noise seeded
    ``SAMPLE_SEED``; ``stop``: integrate down to that level and return ``D`` there."""
    g = torch.Generator().manual_seed(SAMPLE_SEED)
    sizes = [1000] * (n // 1000) + ([n % 1000] if n % 1000 else [])
    kw = {"mode": "truncated", "sigma_n": stop} if stop is not None else {}
    return torch.cat([sample(denoiser, (c, 1, *SHAPE), steps=40, generator=g, **kw) for c in sizes])
