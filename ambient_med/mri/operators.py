"""SENSE forward model ``A = M F S`` and its adjoint, on channel-first torch tensors.

    A x   = M * F(S * x)                 x: (N, *spatial) complex -> (N, C, *spatial)
    A^H y = sum_c conj(S_c) * F^H(M * y)  y: (N, C, *spatial) -> (N, *spatial)

``F`` is the centred orthonormal FFT over the spatial axes, ``S`` the coil maps
(N or 1, C, *spatial), ``M`` a real sampling mask broadcastable to k-space (0/1, or any
real weights, since ``M^H = M``). ``<A x, y> = <x, A^H y>`` holds to round-off (tested).
Real-channel images ``(N, 2, *spatial)`` convert with :mod:`ambient_med.mri.complex`.
The operator follows its inputs' device; nothing is moved. (Operator-with-adjoint design
after sigpy's ``linop``, BSD-3.)
"""

from __future__ import annotations

import torch

from ambient_med.mri.fft import fftc, ifftc


class SenseOp:
    """Callable SENSE operator; ``op(x)`` is ``A x`` and ``op.H(y)`` is ``A^H y``.

    Args:
        maps: complex coil maps (N or 1, C, *spatial).
        mask: real mask broadcastable to (N, C, *spatial), or None for full sampling.
    """

    def __init__(self, maps: torch.Tensor, mask: torch.Tensor | None = None):
        if not torch.is_complex(maps):
            raise TypeError("coil maps must be a complex tensor (N, C, *spatial)")
        self.maps = maps
        self.mask = mask
        self.axes = tuple(range(2, maps.ndim))

    def _m(self, k: torch.Tensor) -> torch.Tensor:
        return k if self.mask is None else k * self.mask.to(k.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._m(fftc(self.maps * x.unsqueeze(1), axes=self.axes))

    forward = __call__

    def H(self, y: torch.Tensor) -> torch.Tensor:
        return torch.sum(self.maps.conj() * ifftc(self._m(y), axes=self.axes), dim=1)

    adjoint = H

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^H A x``: for CG on the normal equations (docs/design.md section 5)."""
        return self.H(self(x))
