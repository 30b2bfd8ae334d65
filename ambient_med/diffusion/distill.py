"""Self-distillation below ``sigma_n`` (the default ``consistency_variant``, ``docs/design.md``
section 4): a cache of the teacher's probability-flow ODE images of the observations, and the
ambient-Tweedie term that trains the levels between them and ``sigma_n``
(after SFBD: Lu et al., "Stochastic Forward-Backward Deconvolution", ICML 2025).
:func:`ambient_med.diffusion.objective.objective_loss` refreshes the cache and adds the term."""

from __future__ import annotations

import torch

from .losses import (
    Denoiser,
    LossConfig,
    Term,
    _per_sample,
    edm_weight,
    renoise,
    sample_sigma_loguniform,
    tweedie_noisy_mean,
)
from .reverse import probability_flow


class CleanCache:
    """A ring buffer of the teacher's estimates ``x_c`` of draws at a low level ``c`` (per item),
    with the data noise level ``sigma_n`` of the observation each came from; filled by
    :func:`refresh_clean_cache`, read by :func:`distill_term`. Its tensors are the ``cache`` entry
    of checkpoints (exact resume)."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.x: torch.Tensor | None = None
        self.level: torch.Tensor | None = None
        self.sigma_n: torch.Tensor | None = None
        self.filled = 0
        self.pos = 0
        self.calls = 0      # training steps served: the refresh runs on every distill_every-th
        self.owed = 0.0     # images due (distill_refresh x batch per step; carried, not rounded)

    def push(self, x: torch.Tensor, level: torch.Tensor, sigma_n: torch.Tensor) -> None:
        if self.x is None or self.x.shape[1:] != x.shape[1:]:
            self.x = x.new_zeros((self.capacity, *x.shape[1:]))
            self.level = level.new_zeros(self.capacity)
            self.sigma_n = sigma_n.new_zeros(self.capacity)
            self.filled = self.pos = 0
        idx = (self.pos + torch.arange(x.shape[0], device=x.device)) % self.capacity
        self.x[idx], self.level[idx], self.sigma_n[idx] = x.detach(), level.detach(), sigma_n.detach()
        self.pos = int((self.pos + x.shape[0]) % self.capacity)
        self.filled = min(self.filled + x.shape[0], self.capacity)

    def draw(self, n: int, generator=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.randint(self.filled, (n,), generator=generator, device=self.x.device)
        return self.x[idx], self.level[idx], self.sigma_n[idx]

    def state_dict(self) -> dict:
        return {"x": self.x, "level": self.level, "sigma_n": self.sigma_n, "filled": self.filled,
                "pos": self.pos, "capacity": self.capacity, "calls": self.calls,
                "owed": self.owed}

    def load_state_dict(self, d: dict) -> None:
        self.capacity, self.filled, self.pos = int(d["capacity"]), int(d["filled"]), int(d["pos"])
        self.calls, self.owed = int(d.get("calls", 0)), float(d.get("owed", 0.0))
        self.x, self.level, self.sigma_n = d["x"], d["level"], d["sigma_n"]


def refresh_clean_cache(cache: CleanCache, teacher: Denoiser, y: torch.Tensor,
                        sigma_n: torch.Tensor, cfg: LossConfig) -> None:
    """Push ``x_c = ODE(y: sigma_n -> c)`` of ``teacher`` (no gradient), ``c = distill_level sigma_n``."""
    x_c = probability_flow(teacher, y, sigma_n, cfg.distill_steps, min_ratio=cfg.distill_level,
                           to_zero=False)
    cache.push(x_c, sigma_n * cfg.distill_level, sigma_n)


def distill_term(cache: CleanCache, n: int, cfg: LossConfig, generator=None) -> Term:
    """Self-distillation below ``sigma_n`` (after SFBD: Lu et al., "Stochastic Forward-Backward
    Deconvolution", ICML 2025): the teacher's probability-flow ODE carries each observation ``y``
    from ``sigma_n`` down to a low level ``c`` (``x_c``, cached), and the ambient-Tweedie term,
    with ``x_c`` as the data and ``c`` as its noise level, trains the levels ``s`` log-uniform on
    ``(c, sigma_n]``:

        w(s) || r x_s + (1 - r) D(x_s, s) - x_c ||^2,   x_s = x_c + sqrt(s^2 - c^2) z,   r = c^2/s^2.

    With the exact denoisers the ODE carries ``p_{sigma_n}`` (the law of ``y``) to ``p_c``, so ``x_c``
    is an exact draw at level ``c`` and the term's minimiser is the exact denoiser again: exact
    denoisers are a fixed point (up to the ODE's discretisation). Stopping at ``c > 0`` instead of
    integrating into 0 avoids the last step's error, which under-disperses the weakest image
    modes. The identity is not a fixed point: it leaves ``x_c`` noisy, and the term then pulls
    ``D`` below ``sigma_n`` toward the denoiser of the noisy images."""
    x_c, c, sigma_n = cache.draw(n, generator)
    s = sample_sigma_loguniform(n, c * (1 + 1e-4), sigma_n * cfg.distill_max_ratio,
                                generator=generator, device=x_c.device).to(x_c.dtype)
    eta = torch.randn(x_c.shape, generator=generator, device=x_c.device, dtype=x_c.dtype)
    x_s = renoise(x_c, s, c, eta)
    one_minus_r = 1 - c**2 / s**2
    w = edm_weight(s, cfg.sigma_data) / one_minus_r.square().clamp_min(cfg.ambient_weight_floor)
    return Term(x_s, s, lambda d: _per_sample(w, (tweedie_noisy_mean(x_s, d, s, c) - x_c) ** 2))


__all__ = ["CleanCache", "refresh_clean_cache", "distill_term"]
