"""Centred orthonormal N-D FFTs for torch tensors and NumPy arrays.

    fftc(x)  = fftshift(fft(ifftshift(x), norm="ortho"))
    ifftc(k) = fftshift(ifft(ifftshift(k), norm="ortho"))

With ``norm="ortho"`` the transform is unitary, so white noise of std ``sigma`` per real
channel keeps std ``sigma`` (docs/design.md section 2), and ``ifftc`` is the adjoint of ``fftc``.
The shifts put the k-space centre (DC) at index ``n // 2`` along each transformed axis, the
convention of fastMRI and BART.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


def _axes(x: Array, axes: int | Sequence[int] | None) -> tuple[int, ...]:
    if axes is None:
        axes = (-2, -1)
    if isinstance(axes, int):
        axes = (axes,)
    return tuple(int(a) for a in axes)


def _complex_like(x: np.ndarray) -> np.dtype:
    # NumPy's FFT promotes to complex128; keep single precision for single-precision input.
    return np.complex64 if x.dtype in (np.float32, np.complex64) else np.complex128


def _centred(x: Array, axes, torch_fn, numpy_fn) -> Array:
    ax = _axes(x, axes)
    if isinstance(x, torch.Tensor):
        x = torch.fft.ifftshift(x, dim=ax)
        return torch.fft.fftshift(torch_fn(x, dim=ax, norm="ortho"), dim=ax)
    x = np.asarray(x)
    out = np.fft.fftshift(numpy_fn(np.fft.ifftshift(x, axes=ax), axes=ax, norm="ortho"), axes=ax)
    return out.astype(_complex_like(x), copy=False)


def fftc(x: Array, axes: int | Sequence[int] | None = (-2, -1)) -> Array:
    """Centred orthonormal forward FFT of ``x`` over ``axes`` (default: the last two)."""
    return _centred(x, axes, torch.fft.fftn, np.fft.fftn)


def ifftc(k: Array, axes: int | Sequence[int] | None = (-2, -1)) -> Array:
    """Centred orthonormal inverse FFT of ``k`` over ``axes``; the adjoint and inverse of ``fftc``."""
    return _centred(k, axes, torch.fft.ifftn, np.fft.ifftn)
