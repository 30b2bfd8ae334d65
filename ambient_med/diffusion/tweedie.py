"""Posterior uncertainty at one noise level, without sampling below it (Tweedie's second moment).

For ``x = x0 + sigma z`` with white Gaussian noise, the exact denoiser ``D(x) = E[x0 | x]`` satisfies

    Cov[x0 | x] = sigma^2 J(x),        J = dD/dx                   (second-order Tweedie)

(Efron, "Tweedie's formula and selection bias", JASA 2011; Meng, Song, Li, Ermon, NeurIPS 2021).
The per-pixel posterior variance is ``sigma^2 diag(J)``, and the leading eigenvectors of ``J`` are
the posterior principal components (Manor and Michaeli, "On the posterior distribution in
denoising: application to uncertainty quantification", ICLR 2024). Both need only the network at
``sigma``: for a prior trained on data of noise ``sigma_n``, the level it knows best.

The diagonal is read off by probing (Bekas, Kokiopoulou and Saad, "An estimator for the diagonal
of a matrix", Appl. Numer. Math. 2007): for probes ``v`` with ``E[v v^T]`` diagonal,
``v * (J v)`` estimates ``diag J`` with every ``J_ij v_i v_j`` (``i != j``) as noise. A denoiser's
Jacobian is concentrated near the diagonal (a pixel's posterior covaries with its neighbours), so
the probes here are *coloured*: a probe is nonzero only on one colour class, the pixels whose
coordinates agree modulo ``period`` in every spatial axis and in one channel, with random signs
there. Only pixels ``period`` or more apart then leak into each other; ``period**dims * channels``
probes cover every pixel once per ``rounds``. ``J v`` is a forward finite difference
``(D(x + eps v) - D(x)) / eps`` in full precision, ``D(x)`` computed once for every probe, so a
product costs one network call (a central difference costs two). Its bias is ``O(eps)``: at
``eps = 3e-3 sigma`` the std map of a 512x512 fluorescence frame moved by 0.16% (relative L2)
from the central difference's with the same probes, against 4.2% between two draws of the probes
(``benchmarks/results/denoise_time.md``). Any denoiser callable works, tiled ones included.

A learned ``J`` is not exactly symmetric: the principal components use its symmetric part through
the power iteration on ``(J + J^T)/2``, with ``J^T v`` from autograd.
"""

from __future__ import annotations

import itertools

import torch

from ..utils import Denoiser, append_dims, as_sigma


def jvp_fd(denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor,
           rel_eps: float = 1e-2, base: torch.Tensor | None = None) -> torch.Tensor:
    """``J v`` by a central difference of ``denoiser`` at ``x`` (per-sample ``sigma``, full
    precision, error ``O(eps^2)``), or, given ``base = D(x)``, a forward difference (one call,
    error ``O(eps)``)."""
    eps = append_dims(rel_eps * sigma, x.ndim)
    if base is not None:
        return (denoiser(x + eps * v, sigma).float() - base) / eps
    both = denoiser(torch.cat([x + eps * v, x - eps * v]), torch.cat([sigma, sigma]))
    plus, minus = both.float().chunk(2)
    return (plus - minus) / (2 * eps)


def colour_masks(shape: tuple[int, ...], period: int, device=None) -> list[torch.Tensor]:
    """Boolean masks of ``shape = (C, *spatial)``, one per colour class: channel ``c`` and pixels
    whose coordinates are ``(k_1, ..., k_d)`` modulo ``period``."""
    channels, spatial = shape[0], shape[1:]
    grids = torch.meshgrid(*[torch.arange(n, device=device) % period for n in spatial], indexing="ij")
    out = []
    for c in range(channels):
        for ks in itertools.product(range(min(period, min(spatial))), repeat=len(spatial)):
            m = torch.zeros(shape, dtype=torch.bool, device=device)
            sel = torch.ones(spatial, dtype=torch.bool, device=device)
            for g, k in zip(grids, ks):
                sel &= g == k
            m[c] = sel
            out.append(m)
    return out


def _jv_many(denoiser: Denoiser, x: torch.Tensor, s: torch.Tensor, v: torch.Tensor,
             rel_eps: float, per_call: int, base: torch.Tensor) -> torch.Tensor:
    """``J v`` for a stack of probes ``v`` (G, N, C, ...), ``per_call`` probes per network call,
    by forward differences from ``base = D(x)`` (central ones when ``base`` is None)."""
    out = []
    reps = [1] * (x.ndim - 1)
    for i in range(0, v.shape[0], per_call):
        chunk = v[i:i + per_call]
        g = chunk.shape[0]
        jv = jvp_fd(denoiser, x.repeat(g, *reps), s.repeat(g), chunk.reshape(g * x.shape[0], *x.shape[1:]),
                    rel_eps, base=None if base is None else base.repeat(g, *reps))
        out.append(jv.reshape(chunk.shape))
    return torch.cat(out)


@torch.no_grad()
def posterior_variance(denoiser: Denoiser, x: torch.Tensor, sigma, *, period: int = 4,
                       rank: int = 8, power: int = 1, rounds: int = 1, rel_eps: float | None = None,
                       generator: torch.Generator | None = None,
                       batch: int | None = None, difference: str = "forward") -> torch.Tensor:
    """Per-pixel ``Var[x0 | x_sigma] = sigma^2 diag(J)`` of images ``x`` (N, C, *spatial), floored at 0.

    Two parts (the low-rank-plus-remainder split of Hutch++ / diag++: Meyer, Musco, Musco and
    Woodruff, SOSA 2021; Baston and Nakatsukasa 2022): ``Q``, an orthonormal basis of ``J W`` for
    ``rank`` Gaussian probes ``W``, catches the posterior's few image-wide modes (which component
    of a mixture, a region's overall intensity), whose diagonal ``diag(Q Q^T J)`` is computed
    exactly; the remainder ``(I - Q Q^T) J``, local, is read by ``period**dims * C * rounds``
    coloured probes. ``(2 + power) rank + period**dims * C * rounds`` Jacobian products, each one
    network call on the whole batch (``batch`` probes per call, default as many as fit 64 images;
    forward differences from one shared ``D(x)``; ``difference="central"`` takes two calls per
    product, error ``O(eps^2)``). ``rel_eps``: the step over ``sigma``, by default 3e-3 forward
    and 1e-2 central.
    Exact for a Jacobian whose non-local part has rank ``rank`` and whose local part couples only
    pixels closer than ``period``; ``rank=0`` skips the low-rank part."""
    s = as_sigma(sigma, x).float()
    x = x.float()
    n = x.shape[0]
    per_call = batch or max(1, 64 // max(n, 1))
    if difference not in ("forward", "central"):
        raise ValueError(f"difference must be 'forward' or 'central', not {difference!r}")
    base = denoiser(x, s).float() if difference == "forward" else None
    if rel_eps is None:
        rel_eps = 3e-3 if base is not None else 1e-2
    diag = torch.zeros_like(x)
    q = None
    if rank > 0:
        w = torch.randn((rank, *x.shape), generator=generator, device=x.device)
        y = _jv_many(denoiser, x, s, w, rel_eps, per_call, base)              # (k, N, ...)
        for _ in range(power):  # sharpen the basis toward the leading modes
            q, _ = torch.linalg.qr(y.reshape(rank, n, -1).permute(1, 2, 0))
            y = _jv_many(denoiser, x, s, q.permute(2, 0, 1).reshape(rank, *x.shape), rel_eps, per_call, base)
        q, _ = torch.linalg.qr(y.reshape(rank, n, -1).permute(1, 2, 0))        # (N, d, k)
        qs = q.permute(2, 0, 1).reshape(rank, *x.shape)
        jq = _jv_many(denoiser, x, s, qs, rel_eps, per_call, base)
        # diag(Q Q^T J)_i = sum_j Q_ij (J^T Q)_ij; J^T ~ J for a denoiser (Cov is symmetric)
        diag += (qs * jq).sum(0)
    masks = colour_masks(tuple(x.shape[1:]), period, x.device)
    acc = torch.zeros_like(x)
    for _ in range(rounds):
        signs = torch.randint(0, 2, (len(masks), *x.shape), generator=generator,
                              device=x.device).float() * 2 - 1
        v = torch.stack([m.expand_as(x) for m in masks]).float() * signs        # (G, N, C, ...)
        jv = _jv_many(denoiser, x, s, v, rel_eps, per_call, base)
        if q is not None:  # the remainder (I - Q Q^T) J v
            flat = jv.reshape(len(masks), n, -1).permute(1, 2, 0)              # (N, d, G)
            flat = flat - q @ (q.transpose(1, 2) @ flat)
            jv = flat.permute(2, 0, 1).reshape(jv.shape)
        acc += (v * jv).sum(0)
    diag += acc / rounds
    return (append_dims(s, x.ndim) ** 2 * diag).clamp_min(0)


def posterior_principal_components(denoiser: Denoiser, x: torch.Tensor, sigma, k: int = 4, *,
                                   iters: int = 10, oversample: int = 4,
                                   generator: torch.Generator | None = None
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` leading eigenpairs of ``Cov[x0 | x] = sigma^2 (J + J^T)/2`` for each image:
    variances ``(N, k)`` (descending) and unit components ``(N, k, C, *spatial)``, by subspace
    (block power) iteration on ``k + oversample`` vectors with ``iters`` rounds, then
    Rayleigh-Ritz (Halko, Martinsson and Tropp, SIAM Review 2011; Manor and Michaeli 2024 use the
    same iteration on ``J``). ``J v`` is a finite difference and ``J^T v`` a backward pass."""
    s = as_sigma(sigma, x).float()
    x = x.detach().float()
    n, d = x.shape[0], x[0].numel()
    m = k + oversample
    q = torch.randn((n, d, m), generator=generator, device=x.device)
    q, _ = torch.linalg.qr(q)

    def sym_jv(vs: torch.Tensor) -> torch.Tensor:
        """``(J + J^T)/2`` applied to the columns of ``vs`` (n, d, m)."""
        xs = x.repeat(m, *([1] * (x.ndim - 1))).requires_grad_(True)
        ss = s.repeat(m)
        v = vs.permute(2, 0, 1).reshape(m * n, *x.shape[1:])
        with torch.enable_grad():
            out = denoiser(xs, ss).float()
            (jt_v,) = torch.autograd.grad(out, xs, grad_outputs=v)
        with torch.no_grad():
            j_v = jvp_fd(denoiser, xs.detach(), ss, v)
        return (0.5 * (j_v + jt_v)).reshape(m, n, d).permute(1, 2, 0)

    for _ in range(iters):
        q, _ = torch.linalg.qr(sym_jv(q))
    small = q.transpose(1, 2) @ sym_jv(q)                               # Rayleigh-Ritz (n, m, m)
    lam, vec = torch.linalg.eigh(0.5 * (small + small.transpose(1, 2)))
    lam, vec = lam.flip(-1)[:, :k], vec.flip(-1)[..., :k]
    comps = (q @ vec).transpose(1, 2).reshape(n, k, *x.shape[1:])
    return (append_dims(s, 2) ** 2 * lam).clamp_min(0).detach(), comps.detach()


def probe_count(shape: tuple[int, ...], period: int = 4, rounds: int = 1, rank: int = 0,
                power: int = 1) -> int:
    """Jacobian products :func:`posterior_variance` uses for images of ``shape = (C, *spatial)``
    (one network call each, plus one for ``D(x)``)."""
    spatial = shape[1:]
    return shape[0] * min(period, min(spatial)) ** len(spatial) * rounds + (2 + power) * rank


__all__ = ["posterior_variance", "posterior_principal_components", "jvp_fd", "colour_masks",
           "probe_count"]
