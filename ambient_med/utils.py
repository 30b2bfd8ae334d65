"""Small shared helpers: the denoiser type, N-D broadcasting and device selection."""

from __future__ import annotations

from typing import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``D(x, sigma)``: a batch ``(N, C, *spatial)`` and per-sample noise levels ``(N,)`` (or a
scalar) in, the estimate of ``E[x_0 | x_sigma = x]`` out, in model space (docs/design.md
section 3). Networks, closed-form denoisers and data-consistent wrappers all take this form."""


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


def parse_sigma(value, option: str = "--sigma", words: tuple[str, ...] = ("auto",),
                allow_zero: bool = False) -> str | float:
    """A noise level as the user gives it: one of ``words`` (case-insensitive) or a finite
    number, ``> 0`` (``>= 0`` with ``allow_zero``: 0 means clean data). A bad value is a
    ``ConfigError`` naming ``option``. The one parser of ``--sigma`` and ``--sigma-n``."""
    from .errors import ConfigError

    bound = ">= 0" if allow_zero else "> 0"
    choices = " or ".join(f"'{w}'" for w in words)
    what = f"{option} must be {choices} or a finite number {bound}"
    if isinstance(value, str):
        if value.strip().lower() in words:
            return value.strip().lower()
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{what}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what}, got {value!r}")
    value = float(value)
    if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):
        raise ConfigError(f"{what}{' (0 means clean data)' if allow_zero else ''}, got {value}")
    return value
