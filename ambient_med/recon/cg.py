"""Batched conjugate gradients on tensors (Hestenes & Stiefel, J. Res. NBS 49, 1952).

Solves ``M x = b`` independently for every row of the batch axis 0, for a symmetric positive
(semi)definite linear map ``M`` given as a callable. The inner product is the real one over all
non-batch axes, ``<a, c> = Re sum conj(a) c`` (for real tensors the plain sum), so the same code
serves real-channel images, complex k-space and flat vectors, on any device.

Each row keeps its own step sizes and stops on its own when ``||r|| <= tol ||b||``; a row whose
curvature ``<p, M p>`` is not positive (an indefinite ``M``: a learned Jacobian need not be PSD)
is frozen at its last iterate instead of diverging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ambient_med.utils import append_dims


def inner(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Per-row real inner product ``Re <a, c>`` over all non-batch axes, shape ``(N,)``."""
    prod = a.conj() * c if torch.is_complex(a) else a * c
    prod = prod.real if torch.is_complex(prod) else prod
    return prod.reshape(prod.shape[0], -1).sum(1)


@dataclass
class CGInfo:
    """``iters``: iterations run (operator applications, the warm-start residual excluded);
    ``residual``: final ``||b - M x|| / ||b||`` per row."""

    iters: int
    residual: torch.Tensor


def cg(op: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
       x0: torch.Tensor | None = None, *, iters: int = 10,
       tol: float = 1e-6) -> tuple[torch.Tensor, CGInfo]:
    """``iters`` CG steps (at most) on ``op(x) = b`` per batch row, from ``x0`` (zeros if None).

    A warm start ``x0`` costs one extra ``op`` call for its residual. Returns ``(x, CGInfo)``."""
    if iters < 0:
        raise ValueError("iters must be >= 0")
    if x0 is None:
        x, r = torch.zeros_like(b), b.clone()
    else:
        x = x0.clone()
        r = b - op(x)
    bnorm = inner(b, b).sqrt()
    thresh = tol * bnorm
    rr = inner(r, r)
    done = rr.sqrt() <= thresh
    p = r.clone()
    n = 0
    for _ in range(iters):
        if bool(done.all()):
            break
        ap = op(p)
        n += 1
        pap = inner(p, ap)
        ok = (~done) & (pap > 0)
        alpha = torch.where(ok, rr / torch.where(ok, pap, torch.ones_like(pap)),
                            torch.zeros_like(rr))
        x = x + append_dims(alpha, x.ndim).to(x.dtype) * p
        r = r - append_dims(alpha, r.ndim).to(r.dtype) * ap
        rr_new = inner(r, r)
        done = done | ~ok | (rr_new.sqrt() <= thresh)
        beta = torch.where(done, torch.zeros_like(rr), rr_new / rr.clamp_min(torch.finfo(rr.dtype).tiny))
        p = r + append_dims(beta, p.ndim).to(p.dtype) * p
        rr = rr_new
    rel = rr.sqrt() / bnorm.clamp_min(torch.finfo(bnorm.dtype).tiny)
    return x, CGInfo(n, rel)
