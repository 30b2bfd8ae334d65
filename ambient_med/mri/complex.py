"""Complex <-> real-channel conversion (docs/design.md section 2: a complex image is 2 real channels).

``C`` complex channels become ``2*C`` real channels ordered ``[re_0, im_0, re_1, im_1, ...]``,
so that one complex image is ``(real, imaginary)`` and each real channel carries noise of
std ``sigma``.
"""

from __future__ import annotations

import numpy as np
import torch


def complex_to_channels(x: torch.Tensor | np.ndarray, dim: int = 0):
    """``(..., C, *spatial)`` complex -> ``(..., 2*C, *spatial)`` real, interleaving re/im per channel."""
    d = dim if dim >= 0 else x.ndim + dim
    if isinstance(x, torch.Tensor):
        return torch.stack([x.real, x.imag], dim=d + 1).flatten(d, d + 1)
    x = np.asarray(x)
    out = np.stack([x.real, x.imag], axis=d + 1)
    return out.reshape(*x.shape[:d], 2 * x.shape[d], *x.shape[d + 1 :])


def channels_to_complex(x: torch.Tensor | np.ndarray, dim: int = 0):
    """Inverse of :func:`complex_to_channels`: ``(..., 2*C, *spatial)`` real -> ``(..., C, *spatial)`` complex."""
    d = dim if dim >= 0 else x.ndim + dim
    if x.shape[d] % 2:
        raise ValueError(f"channel dimension {d} has odd size {x.shape[d]}; expected 2*C real channels")
    shape = (*x.shape[:d], x.shape[d] // 2, 2, *x.shape[d + 1 :])
    if isinstance(x, torch.Tensor):
        x = x.reshape(shape)
        return torch.complex(x.select(d + 1, 0), x.select(d + 1, 1))
    x = np.asarray(x).reshape(shape)
    return np.take(x, 0, axis=d + 1) + 1j * np.take(x, 1, axis=d + 1)
