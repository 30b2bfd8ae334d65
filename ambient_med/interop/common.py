"""Library-neutral pieces of the adapters (no third-party imports)."""

from __future__ import annotations

import torch

from ambient_med.utils import append_dims, as_sigma


def prior_denoise(prior, x: torch.Tensor, sigma, space: str = "data") -> torch.Tensor:
    """``D(x, sigma)`` of ``prior`` on real channels, differentiable; units as in :mod:`ambient_med.interop.deepinv`."""
    if space not in ("data", "model"):
        raise ValueError(f"space must be 'data' or 'model', got {space!r}")
    if torch.is_complex(x):
        raise TypeError("deepinv images are real: pass complex images as (re, im) channels")
    s = float(prior.metadata.scale) if space == "data" else 1.0
    xm = x.to(prior.device, torch.float32) / s
    sig = as_sigma(torch.as_tensor(sigma, dtype=torch.float32, device=xm.device), xm) / s
    zero = sig == 0
    d = prior.model(xm, torch.where(zero, torch.ones_like(sig), sig))
    d = torch.where(append_dims(zero, xm.ndim), xm, d)       # sigma 0: the image is clean already
    return (d * s).to(x.dtype)
