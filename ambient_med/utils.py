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


def resolve_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``: ``auto`` picks CUDA when available; plain ``cuda``
    takes the GPU of this ``local_rank``. Asking for CUDA without it is a user error."""
    from .errors import ConfigError

    name = "auto" if name is None else str(name).lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda requested but CUDA is not available on this machine "
                              "(use --device cpu or auto)")
        if name == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
    elif name != "cpu":
        raise ConfigError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)
