"""The training objectives, selectable by name in one engine.

Notation (docs/design.md section 4): clean data ``x0``, observation ``y = x0 + sigma_n * e``, forward
process ``x_sigma = x0 + sigma * z``; ``D(x, sigma)`` estimates ``E[x0 | x_sigma]``; ``sigma`` is the
standard deviation per real channel.

- ``clean``     denoising score matching on clean data (the oracle; Karras et al. 2022, eq. 2).
- ``naive``     the same on noisy data as if it were clean (learns the *noisy* distribution).
- ``ambient``   the ambient-Tweedie term for sigma > sigma_n (Daras, Dimakis, Daskalakis,
                "Consistent Diffusion Meets Tweedie", ICML 2024, arXiv 2404.10177).
- ``ambient+consistency``  plus the consistency term for sigma < sigma_n.

Optional SURE term (``sure_fraction > 0``) for the band ``[sigma_n, sure_max_ratio sigma_n]``, where
the ambient weight vanishes. For Gaussian noise of known level, Stein's unbiased risk estimate

    ||D(x_sigma) - x_sigma||^2 + 2 sigma^2 div D(x_sigma) - N sigma^2

has the clean error ``||D(x_sigma) - x0||^2`` as its mean for *any* weakly differentiable ``D``
(Stein 1981), so its minimiser is again ``E[x0 | x_sigma]``, at ``sigma = sigma_n`` included: the
posterior mean that denoising reads off. The divergence is the Monte-Carlo estimate
``b . (D(x + eps b) - D(x)) / eps``, ``b ~ N(0, I)`` (Ramani, Blu, Unser 2008). Training score
networks with SURE from noisy data: Aali, Arvinte, Kumar, Tamir, "Solving inverse problems with
score-based generative priors learned from noisy data" (2023).

Ambient-Tweedie. Re-noising ``x_sigma = y + sqrt(sigma^2 - sigma_n^2) * eta`` is an exact draw of the
clean process at level ``sigma``, and Tweedie's formula applied twice gives

    E[x_{sigma_n} | x_sigma] = r x_sigma + (1 - r) E[x0 | x_sigma],      r = sigma_n^2 / sigma^2,

so regressing ``r x_sigma + (1 - r) D(x_sigma, sigma)`` onto the observed ``y`` has the exact clean
denoiser as its minimiser for every sigma > sigma_n. In x0-space the residual is
``(1 - r) (D - x0_hat)`` with the unbiased target ``x0_hat = (y - r x_sigma) / (1 - r)``.

A sample with ``sigma_n = 0`` gives ``r = 0`` and the ambient term *is* the clean objective, so mixed
clean and noisy datasets need no special case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..utils import Denoiser, append_dims
from .reverse import ancestral_step, probability_flow, reverse_chain  # noqa: F401 (re-exported)

OBJECTIVES = ("clean", "naive", "ambient", "ambient+consistency")
VARIANTS = ("pair", "distill", "anchored", "distill+pair")


# --------------------------------------------------------------------------------------------
# Noise levels and weights
# --------------------------------------------------------------------------------------------

def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM's loss weight ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2`` (unit effective
    weight on the network output ``F``)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _normal_icdf(u: torch.Tensor) -> torch.Tensor:
    return math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)


def sample_sigma_truncated(n: int, p_mean: float, p_std: float, low: torch.Tensor | float,
                           high: float, *, generator: torch.Generator | None = None,
                           device=None) -> torch.Tensor:
    """Draw ``ln(sigma) ~ N(p_mean, p_std^2)`` truncated to ``(low, high]`` by inverse-CDF sampling.

    Every draw lies strictly inside the support, so none is wasted on a clamp. ``low`` may be a
    per-sample tensor (per-sample ``sigma_n``); ``low = 0`` gives EDM's untruncated log-normal
    (capped at ``high``). Computed in float64: the CDF is flat far in the tails.
    """
    low = torch.as_tensor(low, dtype=torch.float64, device=device).expand(n)
    z_lo = (low.clamp_min(1e-30).log() - p_mean) / p_std
    f_lo = torch.where(low > 0, _normal_cdf(z_lo), torch.zeros_like(z_lo))
    f_hi = _normal_cdf(torch.tensor((math.log(high) - p_mean) / p_std, dtype=torch.float64,
                                    device=device))
    u = torch.rand(n, dtype=torch.float64, generator=generator, device=device)
    # open interval (f_lo, f_hi]: u in [0, 1) maps to (f_lo, f_hi] by flipping
    p = f_hi - u * (f_hi - f_lo)
    eps = torch.finfo(torch.float64).eps
    z = _normal_icdf(p.clamp(eps, 1 - eps))
    sigma = (p_mean + p_std * z).exp()
    # guard against round-off at the lower edge without clamping into it
    sigma = torch.where(sigma > low, sigma, low * (1 + 1e-6) + 1e-12)
    return sigma.float()


def sample_sigma_loguniform(n: int, low: torch.Tensor | float, high: torch.Tensor | float, *,
                            generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """``ln(sigma)`` uniform on ``[ln low, ln high)`` (per-sample bounds allowed)."""
    low = torch.as_tensor(low, dtype=torch.float32, device=device).expand(n)
    high = torch.as_tensor(high, dtype=torch.float32, device=device).expand(n)
    u = torch.rand(n, generator=generator, device=device)
    return (low.log() + u * (high.log() - low.log())).exp()


# --------------------------------------------------------------------------------------------
# Tweedie pieces (pure math, used by the losses and checked against closed forms in the tests)
# --------------------------------------------------------------------------------------------

def renoise(y: torch.Tensor, sigma: torch.Tensor, sigma_n: torch.Tensor,
            eta: torch.Tensor) -> torch.Tensor:
    """``x_sigma = y + sqrt(sigma^2 - sigma_n^2) * eta``: an exact draw at level ``sigma > sigma_n``."""
    extra = (sigma**2 - sigma_n**2).clamp_min(0).sqrt()
    return y + append_dims(extra, y.ndim) * eta


def tweedie_noisy_mean(x_sigma: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor,
                       sigma_n: torch.Tensor) -> torch.Tensor:
    """``E[x_{sigma_n} | x_sigma] = r x_sigma + (1 - r) E[x0 | x_sigma]`` with ``r = sigma_n^2/sigma^2``."""
    r = append_dims(sigma_n**2 / sigma**2, x_sigma.ndim)
    return r * x_sigma + (1 - r) * denoised


# --------------------------------------------------------------------------------------------
# Objective
# --------------------------------------------------------------------------------------------

@dataclass
class LossConfig:
    """Settings of the objective. Defaults were chosen on the Gaussian benchmark
    (``benchmarks/exactness.py``; figures in ``benchmarks/results/``)."""

    objective: str = "ambient+consistency"
    sigma_data: float = 0.5
    p_mean: float = -1.2          # EDM log-normal for ln(sigma)
    p_std: float = 1.2
    sigma_max: float = 80.0
    sigma_min: float = 0.002
    # (1-r)^2 is floored at this value in the y-space weight lambda(sigma)/(1-r)^2, so the
    # effective x0-space weight is exactly EDM's lambda where r <= 1 - sqrt(floor) and goes to
    # zero (instead of infinity, with the target variance) as sigma -> sigma_n.
    ambient_weight_floor: float = 0.25
    # ---- the term below sigma_n (objective "ambient+consistency"), docs/design.md section 4.
    # "distill" (default): self-distillation on a cache of the model's probability-flow ODE images
    # of the observations; the exact denoisers are stationary on every law tested and the identity
    # is not (tests/test_below_noise_fixed_points.py). "pair": nearby-levels consistency pairs
    # (the identity is a fixed point below sigma_n: it learns only from the pairs that touch
    # sigma_n). "anchored": the target D(y, sigma_n) on K reverse chains from y (fast, but its
    # chains' kernel error biases it on non-Gaussian data). Chosen on benchmarks/below_noise.py.
    consistency_variant: str = "distill"
    consistency_weight: float = 1.0
    consistency_fraction: float = 0.5    # share of each batch that gets the term
    consistency_start: float = 0.25      # fraction of training done on the ambient term alone
    consistency_min_ratio: float = 0.02  # pair, anchored: lowest sigma / sigma_n the term trains
    teacher: str = "model"               # whose chains and caches: "model" (no lag) or "ema"
    # "distill": the ODE runs from y at sigma_n down to distill_level * sigma_n (Heun, distill_steps
    # steps, 2 distill_steps - 2 calls without gradient; 32 keeps the exact denoisers stationary,
    # 16 does not on mixtures of fields); a cache of distill_cache batches is refreshed every
    # distill_every steps with the distill_refresh * distill_every * batch images due since (at
    # most a batch; one batched ODE: on a CPU, 16 images cost 5x one, not 16x), and trains the
    # levels up to distill_max_ratio sigma_n
    distill_steps: int = 32
    distill_level: float = 0.02
    distill_max_ratio: float = 1.0
    distill_refresh: float = 0.0625
    distill_cache: int = 2
    distill_every: int = 1
    # "pair": the chain to the upper level s (consistency_chain_steps no-grad steps from y, or y
    # re-noised where s > sigma_n, up to consistency_max_ratio sigma_n); the lower level u/s drawn
    # in consistency_step_ratio; two independent chains of consistency_substeps steps from x_s to u.
    # Nearby levels and two sub-steps keep the pair centred on non-Gaussian data
    # (benchmarks/results/consistency_kernels.md)
    consistency_chain_steps: int = 1
    consistency_max_ratio: float = 1.0
    consistency_step_ratio: tuple[float, float] = (0.8, 0.95)
    consistency_substeps: int = 2
    consistency_order: int = 2           # 1: DDPM ancestral kernel; 2: DPM-Solver++(2M) SDE
    # "anchored": anchored_chains reverse chains from y to s, consistency_chain_steps steps each
    anchored_chains: int = 2
    # SURE term on [sigma_n, sure_max_ratio sigma_n] (0: off). Each of its samples costs two
    # network calls with gradient, in full precision (a finite difference does not survive bf16)
    sure_fraction: float = 0.0
    sure_max_ratio: float = 1.5
    sure_epsilon: float = 1e-3           # finite-difference step, relative to sigma

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {OBJECTIVES}")
        if self.consistency_variant not in VARIANTS:
            raise ValueError(f"consistency_variant must be one of {VARIANTS}")
        if self.teacher not in ("model", "ema"):
            raise ValueError(f"teacher must be 'model' or 'ema', got {self.teacher!r}")
        if not 0 < self.distill_level < 1 or self.distill_max_ratio <= self.distill_level:
            raise ValueError("need 0 < distill_level < 1 and distill_max_ratio > distill_level")
        if self.distill_steps < 2 or self.distill_cache < 1 or not 0 < self.distill_refresh <= 1:
            raise ValueError("need distill_steps >= 2, distill_cache >= 1 and 0 < distill_refresh <= 1")
        if self.distill_every < 1:
            raise ValueError("need distill_every >= 1 (refresh the cache every that many steps)")
        if self.anchored_chains < 2:
            raise ValueError("anchored_chains must be >= 2 (the statistic pairs independent chains)")
        if self.consistency_order not in (1, 2):
            raise ValueError("consistency_order must be 1 or 2")
        if self.consistency_substeps < 1 or self.consistency_chain_steps < 1:
            raise ValueError("consistency_substeps and consistency_chain_steps must be >= 1")
        if not 0 < self.consistency_min_ratio < 1 <= self.consistency_max_ratio:
            raise ValueError("need 0 < consistency_min_ratio < 1 <= consistency_max_ratio")
        if not 0 <= self.sure_fraction <= 1:
            raise ValueError("sure_fraction must lie in [0, 1]")
        if self.sure_fraction > 0 and self.objective in ("clean", "naive"):
            raise ValueError(f"sure_fraction applies to the ambient objectives; objective "
                             f"{self.objective!r} has no noise level to apply it at (set it to 0)")
        if self.sure_max_ratio < 1 or not 0 < self.sure_epsilon < 0.1:
            raise ValueError("need sure_max_ratio >= 1 and 0 < sure_epsilon < 0.1")


_BELOW_NOISE_KEYS = {
    "pair": {"consistency_chain_steps", "consistency_max_ratio", "consistency_step_ratio",
             "consistency_substeps", "consistency_order", "consistency_min_ratio"},
    "distill": {"teacher", "distill_steps", "distill_level", "distill_max_ratio", "distill_refresh",
                "distill_cache", "distill_every"},
    "anchored": {"teacher", "consistency_chain_steps", "consistency_order", "anchored_chains",
                 "consistency_min_ratio"},
}
_BELOW_NOISE_SHARED = {"consistency_variant", "consistency_weight", "consistency_fraction",
                       "consistency_start"}


def inactive_keys(cfg: LossConfig) -> set[str]:
    """The ``LossConfig`` fields that do nothing under ``cfg``'s objective, below-``sigma_n`` variant
    and SURE setting (a protocol that sets one is refused: every key it names must act)."""
    every = set().union(*_BELOW_NOISE_KEYS.values()) | _BELOW_NOISE_SHARED
    if cfg.objective != "ambient+consistency":
        out = set(every)
    else:
        active = set().union(*(_BELOW_NOISE_KEYS[v] for v in cfg.consistency_variant.split("+")))
        out = every - active - _BELOW_NOISE_SHARED
    if cfg.objective in ("clean", "naive"):
        out |= {"ambient_weight_floor", "sure_fraction"}
    if cfg.sure_fraction == 0:
        out |= {"sure_max_ratio", "sure_epsilon"}
    return out


@dataclass
class LossOutput:
    loss: torch.Tensor
    parts: dict = field(default_factory=dict)


@dataclass
class Term:
    """One loss term prepared for a (shared) network call: inputs ``x`` at levels ``sigma`` and
    ``finish(D(x, sigma))`` giving the per-sample loss. Terms of one step are evaluated in a
    single batched call, which costs far less than one call per term on a GPU (launch-bound
    small networks) and gives DDP one forward per backward."""

    x: torch.Tensor
    sigma: torch.Tensor
    finish: Callable[[torch.Tensor], torch.Tensor]
    full_precision: bool = False   # evaluated outside any autocast (finite differences)


def _batched_call(denoiser: Denoiser, terms: list[Term]) -> list[torch.Tensor]:
    out = denoiser(torch.cat([t.x for t in terms]), torch.cat([t.sigma for t in terms]))
    return list(out.split([t.x.shape[0] for t in terms]))


def evaluate_terms(denoiser: Denoiser, terms: list[Term]) -> list[torch.Tensor]:
    """Run ``denoiser`` once on the concatenated inputs of ``terms``; return each term's loss.
    Under autocast, ``full_precision`` terms get a second call with autocast off."""
    device_type = terms[0].x.device.type
    split = torch.is_autocast_enabled(device_type) and any(t.full_precision for t in terms)
    if not split:
        return [t.finish(c) for t, c in zip(terms, _batched_call(denoiser, terms))]
    outs: dict[int, torch.Tensor] = {}
    for full in (False, True):
        idx = [i for i, t in enumerate(terms) if t.full_precision == full]
        if not idx:
            continue
        with torch.autocast(device_type, enabled=not full):
            chunks = _batched_call(denoiser, [terms[i] for i in idx])
        outs.update({i: c.float() for i, c in zip(idx, chunks)})
    return [t.finish(outs[i]) for i, t in enumerate(terms)]


def _per_sample(w: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    return (append_dims(w, sq.ndim) * sq).flatten(1).mean(1)


def dsm_term(x0: torch.Tensor, cfg: LossConfig, generator=None) -> Term:
    """Denoising score matching (``clean`` and ``naive``): ``lambda(s) ||D(x0 + s z, s) - x0||^2``."""
    n = x0.shape[0]
    sigma = sample_sigma_truncated(n, cfg.p_mean, cfg.p_std, 0.0, cfg.sigma_max,
                                   generator=generator, device=x0.device)
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_s = x0 + append_dims(sigma, x0.ndim) * z
    return Term(x_s, sigma, lambda d: _per_sample(edm_weight(sigma, cfg.sigma_data), (d - x0) ** 2))


def ambient_term(y: torch.Tensor, sigma_n: torch.Tensor, cfg: LossConfig, generator=None) -> Term:
    """Ambient-Tweedie term, per sample:
    ``w(s) || r x_s + (1 - r) D(x_s, s) - y ||^2`` with ``s`` drawn on ``(sigma_n, sigma_max]``.

    ``w(s) = lambda(s) / max((1-r)^2, floor)`` makes the x0-space weight EDM's ``lambda(s)`` away
    from ``sigma_n`` and keeps it bounded (vanishing) where ``x0_hat``'s variance diverges."""
    n = y.shape[0]
    sigma = sample_sigma_truncated(n, cfg.p_mean, cfg.p_std, sigma_n, cfg.sigma_max,
                                   generator=generator, device=y.device)
    eta = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    x_s = renoise(y, sigma, sigma_n, eta)
    one_minus_r = 1 - sigma_n**2 / sigma**2
    w = edm_weight(sigma, cfg.sigma_data) / one_minus_r.square().clamp_min(cfg.ambient_weight_floor)
    return Term(x_s, sigma,
                lambda d: _per_sample(w, (tweedie_noisy_mean(x_s, d, sigma, sigma_n) - y) ** 2))


def sure_term(y: torch.Tensor, sigma_n: torch.Tensor, cfg: LossConfig, generator=None) -> Term:
    """Stein's unbiased risk estimate of ``lambda(s) ||D(x_s, s) - x0||^2``, per element, at a level
    ``s`` log-uniform on ``[sigma_n, sure_max_ratio sigma_n]`` (``x_s = y`` re-noised, an exact draw):

        lambda(s) [ ||D(x_s) - x_s||^2 + 2 s^2 b.(D(x_s + eps b) - D(x_s)) / eps - N s^2 ] / N,

    ``eps = sure_epsilon * s``. Unbiased for every ``D`` with a positive semi-definite Jacobian (all
    exact denoisers) up to the finite difference, whose error is O(eps^2) in the mean (the odd
    moments of ``b`` cancel the O(eps) term); the divergence estimate is floored at 0 per sample.
    SURE needs the noise level to be right: where the data are less noisy than ``sigma_n`` says,
    its minimiser over-smooths. The term's inputs are ``x_s`` and ``x_s + eps b``, stacked."""
    n = y.shape[0]
    s = sample_sigma_loguniform(n, sigma_n, sigma_n * cfg.sure_max_ratio, generator=generator,
                                device=y.device).to(y.dtype)
    eta = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    b = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    x_s = renoise(y, s, sigma_n, eta)
    eps = append_dims(cfg.sure_epsilon * s, y.ndim)

    def finish(pred):
        d, d_eps = pred.chunk(2)
        # b^T J b / N >= 0 for every exact denoiser (J = Cov[x0 | x_s] / s^2 is PSD), so the
        # floor costs them nothing; it removes the unbounded reward for a negative divergence
        # that SURE offers wherever the assumed noise level exceeds the true one
        div = (b * (d_eps - d) / eps).flatten(1).mean(1).clamp_min(0)
        est = ((d - x_s) ** 2).flatten(1).mean(1) + 2 * s**2 * div - s**2
        return edm_weight(s, cfg.sigma_data) * est

    return Term(torch.cat([x_s, x_s + eps * b]), s.repeat(2), finish, full_precision=True)


def sure_noise_check(values: list[float], sigma_data: float, sigma_n: float) -> str | None:
    """A warning when the logged SURE losses of the second half of training are negative.

    SURE estimates ``lambda(s) ||D - x0||^2 / N >= 0`` without bias when the noise level is
    right; its mean can go below 0 only if the data are less noisy than ``sigma_n`` says (then it
    is ``MSE + (sigma_n^2 - sigma_true^2)(2 div - 1)``). The threshold is 5% of the largest value
    it can fall to, ``-lambda(sigma_n) sigma_n^2``, so round-off and early training do not trip it."""
    half = values[len(values) // 2:]
    if len(half) < 2:
        return None
    mean = sum(half) / len(half)
    floor = float(edm_weight(torch.tensor(sigma_n), sigma_data)) * sigma_n**2
    if mean >= -0.05 * floor:
        return None
    return (f"warning: the SURE term averaged {mean:.3g} over the second half of training (lowest "
            f"possible {-floor:.3g}); an unbiased error estimate cannot be negative, so the data "
            f"are less noisy than the noise model says (sigma_n too high, or a stabilised domain "
            f"that is not unit-variance): the posterior mean will over-smooth")


def diffusion_loss(denoiser: Denoiser, x0: torch.Tensor, cfg: LossConfig,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample denoising score matching loss (one network call)."""
    return evaluate_terms(denoiser, [dsm_term(x0, cfg, generator)])[0]


def ambient_loss(denoiser: Denoiser, y: torch.Tensor, sigma_n: torch.Tensor, cfg: LossConfig,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample ambient-Tweedie loss (see ``ambient_term``)."""
    return evaluate_terms(denoiser, [ambient_term(y, sigma_n, cfg, generator)])[0]


def sure_loss(denoiser: Denoiser, y: torch.Tensor, sigma_n: torch.Tensor, cfg: LossConfig,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample SURE loss (see ``sure_term``)."""
    return evaluate_terms(denoiser, [sure_term(y, sigma_n, cfg, generator)])[0]
