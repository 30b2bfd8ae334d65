"""Is a below-``sigma_n`` objective right where it should be, and wrong where it should be?

A training signal below the data noise has no clean target, so its minimiser is defined only
implicitly: a fixed point of the model's own chains or caches. Two questions decide whether it
can work (``docs/design.md``, section 4):

- *stationarity*: at the exact denoisers, its expected update vanishes (for any data law);
- *no identity trap*: at ``D(x, s) = x`` for ``s < sigma_n`` (exact above), the expected update
  is far from 0, toward the exact denoiser. (Every nearby-levels pair fails this: the identity
  makes the reverse chain a martingale.)

The update is measured as the training loop sees it: the term is built with the model under
test (chains, caches and targets without gradient), and only its final, gradient-carrying
network call is perturbed, ``D + a v`` for a direction ``v(x, s)``; the per-sample derivative
at ``a = 0`` (a central difference) is averaged over draws. Its mean over its standard error is
the z-score; ``|z| < 3`` at 20,000 draws is "stationary within 3 standard errors".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..utils import Denoiser, append_dims, as_sigma
from .chain_terms import anchored_term, consistency_term
from .distill import CleanCache, distill_term, refresh_clean_cache
from .losses import LossConfig, Term

DIRECTIONS = ("toward_exact", "offset", "scale")


def below_noise_terms(model: Denoiser, y: torch.Tensor, sigma_n: torch.Tensor, cfg: LossConfig,
                      generator: torch.Generator) -> Term:
    """The below-``sigma_n`` term of ``cfg`` for the observations ``y``, built with ``model`` (also as
    the teacher: at a fixed point teacher and student agree). ``distill`` fills its cache from
    this very batch and draws as many items."""
    if cfg.consistency_variant == "pair":
        return consistency_term(model, y, sigma_n, cfg, generator)
    if cfg.consistency_variant == "anchored":
        return anchored_term(model, y, sigma_n, cfg, generator)
    cache = CleanCache(y.shape[0])
    refresh_clean_cache(cache, model, y, sigma_n, cfg)
    return distill_term(cache, y.shape[0], cfg, generator)


def identity_below(exact: Denoiser, sigma_n: float) -> Denoiser:
    """``D(x, s) = x`` for ``s < sigma_n``, ``exact`` at and above ``sigma_n``."""
    def d(x, s):
        s = as_sigma(s, x)
        above = append_dims(s >= sigma_n * (1 - 1e-6), x.ndim)
        return torch.where(above, exact(x, s), x)
    return d


@dataclass
class UpdateZ:
    """Mean per-sample derivative of the loss along each direction, and its z-score."""

    mean: dict
    z: dict
    draws: int


@torch.no_grad()
def expected_update(model: Denoiser, exact: Denoiser, sample_clean: Callable[[int, torch.Generator], torch.Tensor],
                    sigma_n: float, cfg: LossConfig, *, draws: int = 20000, chunk: int = 4000,
                    seed: int = 0, h: float = 1e-3) -> UpdateZ:
    """The expected update of ``cfg``'s below-``sigma_n`` term at ``model`` along the directions
    ``toward_exact`` (``v = exact(x, s) - model(x, s)``, or ``exact - x`` where they agree),
    ``offset`` (``v = 1``) and ``scale`` (``v = x``), from ``draws`` observations
    ``y = x0 + sigma_n e`` of ``sample_clean``. Descent moves along ``-derivative``: a negative
    ``toward_exact`` derivative means the loss falls toward the exact denoiser."""
    g = torch.Generator().manual_seed(seed)
    per = {k: [] for k in DIRECTIONS}
    n_done = 0
    while n_done < draws:
        n = min(chunk, draws - n_done)
        x0 = sample_clean(n, g).double()
        y = x0 + sigma_n * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        sn = torch.full((n,), sigma_n, dtype=y.dtype)
        term = below_noise_terms(model, y, sn, cfg, g)
        base = model(term.x, term.sigma).double()
        ex = exact(term.x, term.sigma).double()
        gap = ex - base
        if float(gap.abs().max()) < 1e-12:     # model == exact: probe the denoising direction
            gap = ex - term.x.double()
        dirs = {"toward_exact": gap, "offset": torch.ones_like(base), "scale": term.x.double()}
        for k, v in dirs.items():
            up = term.finish(base + h * v)
            dn = term.finish(base - h * v)
            per[k].append(((up - dn) / (2 * h)).double())
        n_done += n
    mean, z = {}, {}
    for k, vals in per.items():
        v = torch.cat(vals)
        mean[k] = float(v.mean())
        se = float(v.std()) / math.sqrt(v.numel())
        z[k] = mean[k] / se if se > 0 else 0.0
    return UpdateZ(mean, z, n_done)
