"""The below-``sigma_n`` terms built on the model's own reverse chains (``docs/design.md``
section 4): the nearby-levels ``pair`` (:func:`consistency_term`) and Daras et al.'s ``anchored``
target ``D(y, sigma_n)`` on averaged chains (:func:`anchored_term`). Options beside the default
self-distillation (:mod:`ambient_med.diffusion.distill`); :func:`ambient_med.diffusion.objective.objective_loss` adds
them."""

from __future__ import annotations

import torch

from ..utils import append_dims
from .losses import Denoiser, LossConfig, Term, _per_sample, edm_weight, renoise, sample_sigma_loguniform
from .reverse import reverse_chain


def consistency_term(denoiser: Denoiser, y: torch.Tensor, sigma_n: torch.Tensor,
                     cfg: LossConfig, generator=None) -> Term:
    """Consistency term below ``sigma_n`` (martingale property of exact denoisers:
    ``E[x0 | x_s] = E[ E[x0 | x_u] | x_s ]`` for ``u < s``), per sample.

    ``pair``: from ``y`` (an exact draw at ``sigma_n``) run the model's reverse chain to a random
    ``s < sigma_n`` (or, for ``s > sigma_n`` when ``consistency_max_ratio > 1``, re-noise ``y``); take two independent reverse chains of ``consistency_substeps`` steps to
    ``u < s``; penalise ``(T - D(x_u1, u)) . (T - D(x_u2, u))`` with the fixed target
    ``T = D(x_s, s)``. Its conditional mean given ``x_s`` is ``|| T - E[D(x_u, u) | x_s] ||^2``, zero
    at the exact denoisers for *any* data distribution if the kernel ``x_s -> x_u`` is the true
    one. Each pair chain starts with a first-order step (its mean given ``x_s`` is exact, so the
    pair is exactly centred for Gaussian data); further sub-steps are second order
    (``reverse.py``). On non-Gaussian data the kernel's missing variance biases the pair; nearby
    levels and sub-steps shrink that bias (measured in ``benchmarks/consistency_kernels.py``).

    The higher-noise side is held fixed (no gradient), so what the exact ``sigma >= sigma_n``
    denoisers know flows downward; letting gradients reach it diverged in trials (docs/design.md section 4).
    The weight is EDM's ``lambda`` at the lower level, so every level counts as in the clean loss.
    The returned term's inputs are the two lower-level draws, stacked.
    """
    n = y.shape[0]
    lo, hi = sigma_n * cfg.consistency_min_ratio, sigma_n * cfg.consistency_max_ratio
    s = sample_sigma_loguniform(n, lo, hi, generator=generator, device=y.device)
    order = cfg.consistency_order
    with torch.no_grad():
        if cfg.consistency_max_ratio > 1:  # s above sigma_n: an exact draw, y re-noised
            eta = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
            above = append_dims(s > sigma_n, y.ndim)
            x_s, _ = reverse_chain(denoiser, y, sigma_n, torch.minimum(s, sigma_n),
                                   cfg.consistency_chain_steps, generator, order=order)
            x_s = torch.where(above, renoise(y, s, sigma_n, eta), x_s)
        else:
            x_s, _ = reverse_chain(denoiser, y, sigma_n, s, cfg.consistency_chain_steps,
                                   generator, order=order)
        target = denoiser(x_s, s)
        r0, r1 = cfg.consistency_step_ratio
        u = s * (r0 + (r1 - r0) * torch.rand(n, generator=generator, device=y.device))
        two = lambda t: torch.cat([t, t])  # noqa: E731 - two independent chains, one batch
        # no memory of the chain into x_s: the first step from x_s must be first order, the
        # only step whose mean given x_s is exact (Tweedie) for any data
        x_u, _ = reverse_chain(denoiser, two(x_s), two(s), two(u), cfg.consistency_substeps,
                               generator, order=order, first=two(target))
    level = u
    w = edm_weight(level, cfg.sigma_data)

    def finish(pred):
        p1, p2 = pred.chunk(2)
        return _per_sample(w, (target - p1) * (target - p2))

    return Term(x_u, level.repeat(2), finish)


def anchored_term(denoiser: Denoiser, y: torch.Tensor, sigma_n: torch.Tensor, cfg: LossConfig,
                  generator=None, teacher: Denoiser | None = None) -> Term:
    """Anchored consistency: the exact denoisers satisfy ``E[D(x_s, s) | x_{sigma_n} = y] = D(y, sigma_n)``
    for every ``s < sigma_n`` when ``x_s`` follows the true reverse kernel from ``y``. With ``K``
    independent reverse chains from ``y`` to ``s`` (``consistency_chain_steps`` second-order steps,
    no gradient) and the fixed target ``T = D(y, sigma_n)``, the leave-one-out statistic

        1/(K(K-1)) sum_{i != j} (T - D(x_s^i, s)) . (T - D(x_s^j, s))

    is unbiased for ``||T - E[D(x_s, s) | y]||^2``. Every level is tied to ``sigma_n`` directly, so
    the identity is not a fixed point; the chains' kernel error biases it on non-Gaussian data
    (measured in ``benchmarks/consistency_kernels.py``)."""
    k = cfg.anchored_chains
    n = y.shape[0]
    s = sample_sigma_loguniform(n, sigma_n * cfg.consistency_min_ratio, sigma_n,
                                generator=generator, device=y.device).to(y.dtype)
    net = teacher if teacher is not None else denoiser
    with torch.no_grad():
        target = net(y, sigma_n)
        rep = lambda t: t.repeat(k, *([1] * (t.ndim - 1)))  # noqa: E731 - K chains, one batch
        x_s, _ = reverse_chain(net, rep(y), rep(sigma_n), rep(s), cfg.consistency_chain_steps,
                               generator, order=cfg.consistency_order, first=rep(target))
    # the residual T - E[D(x_s, s) | y] is on the scale of the posterior std at sigma_n, whatever s:
    # EDM's weight at s (~1/s^2) would let the lowest levels' noise swamp every other term
    w = edm_weight(sigma_n, cfg.sigma_data)

    def finish(pred):
        r = (target[None] - pred.reshape(k, *y.shape)).flatten(2)       # (K, n, d)
        total = r.sum(0)
        pair_sum = (total * total).sum(-1) - (r * r).sum((0, 2))      # sum_{i != j} r_i . r_j
        return w * pair_sum / (k * (k - 1) * r.shape[-1])

    return Term(x_s, rep(s), finish)


__all__ = ["consistency_term", "anchored_term"]
