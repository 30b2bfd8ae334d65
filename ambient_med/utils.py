"""Small shared helpers: N-D broadcasting and device selection."""

from __future__ import annotations

import torch


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions so that a per-sample tensor ``(N,)`` broadcasts
    against a batch ``(N, C, *spatial)`` of total rank ``ndim`` (2D and 3D alike)."""
    missing = ndim - x.ndim
    if missing < 0:
        raise ValueError(f"tensor of rank {x.ndim} cannot be broadcast to rank {ndim}")
    return x.reshape(*x.shape, *([1] * missing))


def as_sigma(sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Return ``sigma`` as a per-sample tensor of shape ``(N,)`` on ``x``'s device and dtype."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    return s.reshape(x.shape[0])


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
