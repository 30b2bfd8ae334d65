"""The training objective on one batch: which terms it gets and how they are weighted
(docs/design.md section 4).

Above ``sigma_n`` every noisy batch gets the ambient-Tweedie term (:func:`.losses.ambient_term`),
optionally SURE; after the warm-up (``consistency_start``) a ``consistency_fraction`` share also
gets the below-``sigma_n`` term of ``consistency_variant``: self-distillation on the model's own
probability-flow images (:mod:`.distill`, the default), the pair consistency term or the anchored
form (:mod:`.chain_terms`). The ``clean`` and ``naive`` objectives are plain denoising score
matching on clean or noisy images.
"""

from __future__ import annotations

import torch

from ..utils import Denoiser
from .chain_terms import anchored_term, consistency_term
from .distill import CleanCache, distill_term, refresh_clean_cache
from .losses import LossConfig, LossOutput, ambient_term, diffusion_loss, evaluate_terms, sure_term


def consistency_loss(denoiser: Denoiser, y: torch.Tensor, sigma_n: torch.Tensor, cfg: LossConfig,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample consistency loss (see ``consistency_term``)."""
    return evaluate_terms(denoiser, [consistency_term(denoiser, y, sigma_n, cfg, generator)])[0]


def objective_loss(denoiser: Denoiser, batch: torch.Tensor, sigma_n: torch.Tensor,
                   cfg: LossConfig, *, progress: float = 1.0, clean: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, teacher: Denoiser | None = None,
                   cache: CleanCache | None = None) -> LossOutput:
    """The loss of ``cfg.objective`` on one batch; ``progress`` in [0, 1] is the training fraction
    done (the consistency term starts at ``cfg.consistency_start``). ``clean`` is only used by the
    ``clean`` oracle (benchmarks); real users never have it. All terms share one network call
    with gradient; the below-``sigma_n`` term adds no-grad calls on a ``consistency_fraction`` share
    (``distill``: the ODE images of a ``distill_refresh`` share go into ``cache``, which the
    training loop keeps across steps; without one, this batch's own images are distilled).
    ``teacher`` runs the no-grad chains and ODEs (``LossConfig.teacher == "ema"``); None: the
    network itself."""
    sigma_n = torch.as_tensor(sigma_n, dtype=batch.dtype, device=batch.device).expand(batch.shape[0])
    if cfg.objective in ("clean", "naive"):
        if cfg.objective == "clean" and clean is None:
            raise ValueError("the 'clean' objective needs clean data")
        x0 = clean if cfg.objective == "clean" else batch
        loss = diffusion_loss(denoiser, x0, cfg, generator).mean()
        return LossOutput(loss, {"dsm": loss.detach()})

    terms, names = [ambient_term(batch, sigma_n, cfg, generator)], ["ambient"]
    noisy = (sigma_n > 0).nonzero().flatten()  # clean samples (sigma_n = 0) need neither term
    if cfg.sure_fraction > 0 and noisy.numel() > 0:
        idx = noisy[:max(int(round(cfg.sure_fraction * batch.shape[0])), 1)]
        terms.append(sure_term(batch[idx], sigma_n[idx], cfg, generator))
        names.append("sure")
    if cfg.objective == "ambient+consistency" and progress >= cfg.consistency_start:
        n_term = max(int(round(cfg.consistency_fraction * batch.shape[0])), 1)
        idx = noisy[:n_term]
        parts = cfg.consistency_variant.split("+")
        if idx.numel() > 0 and "pair" in parts:
            terms.append(consistency_term(denoiser, batch[idx], sigma_n[idx], cfg, generator))
            names.append("consistency")
        if idx.numel() > 0 and "anchored" in parts:
            terms.append(anchored_term(denoiser, batch[idx], sigma_n[idx], cfg, generator,
                                       teacher))
            names.append("anchored")
        if idx.numel() > 0 and "distill" in parts:
            if cache is None:  # a one-off call (train() keeps one cache across steps)
                every = 1
                cache = CleanCache(max(int(round(cfg.distill_refresh * batch.shape[0])), 1))
            else:
                every = cfg.distill_every
            # distill_refresh x batch images per step on average, in whole images: a batch of 2
            # refreshes one image every 8 steps, not one (half the batch) every step
            cache.owed += cfg.distill_refresh * batch.shape[0]
            if cache.filled == 0 or (cache.calls % every == 0 and cache.owed >= 1):
                n_fresh = min(max(int(cache.owed), 1), noisy.numel())
                cache.owed = max(cache.owed - n_fresh, 0.0) if n_fresh < noisy.numel() else 0.0
                fresh = noisy[:n_fresh]
                with torch.no_grad():
                    refresh_clean_cache(cache, teacher if teacher is not None else denoiser,
                                        batch[fresh], sigma_n[fresh], cfg)
            cache.calls += 1
            terms.append(distill_term(cache, n_term, cfg, generator))
            names.append("distill")
    losses = evaluate_terms(denoiser, terms)
    weights = {"ambient": 1.0, "sure": 1.0, "consistency": cfg.consistency_weight,
               "anchored": cfg.consistency_weight, "distill": cfg.consistency_weight}
    parts, loss = {}, 0.0
    for name, per_sample in zip(names, losses):
        part = per_sample.mean()
        parts[name] = part.detach()
        loss = loss + weights[name] * part
    return LossOutput(loss, parts)
