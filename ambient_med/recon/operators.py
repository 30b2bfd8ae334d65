"""Linear measurement operators as pairs of callables ``(forward, adjoint)`` in model space.

The samplers of :mod:`ambient_med.recon` work on real channel-first tensors ``(N, C, *spatial)``
(docs/design.md section 2) and need only ``A`` and its adjoint ``A^T`` with respect to the real inner
product ``<a, b> = sum a b`` over all non-batch axes; the measurement ``y = A x`` may have any
shape ``(N, ...)``. Operators must act per sample along axis 0 (the samplers stack the chains of
``K`` samples as a batch of ``K*N``, sample ``j`` of measurement ``n`` in row ``j*N + n``).

A complex-linear operator ``A`` on complex tensors becomes a real-linear one on real channels by
``R(x) = complex_to_channels(A(channels_to_complex(x)))``. The channel map is an isometry between
``C^n`` with ``Re <., .>`` and ``R^{2n}``, and ``Re <A x, y> = Re <x, A^H y>``, so the real adjoint
is the same construction around ``A^H`` (:func:`complex_to_real`). For a *real* image seen by a
complex operator (e.g. a real field under a Fourier transform) the real adjoint is
``Re(A^H y)`` (``real_image=True``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ambient_med.mri.complex import channels_to_complex, complex_to_channels

Operator = Callable[[torch.Tensor], torch.Tensor]


def complex_to_real(forward: Operator, adjoint: Operator, *,
                    real_image: bool = False) -> tuple[Operator, Operator]:
    """Wrap complex-domain ``A`` / ``A^H`` on channel-first complex tensors ``(N, C, ...)`` into
    real-channel callables on ``(N, 2C, ...)`` (``[re_0, im_0, re_1, ...]``).

    With ``real_image`` the image is real ``(N, C, ...)`` (no imaginary channels); the
    measurement is still complex and goes to ``2*C_y`` real channels."""

    def fwd(x: torch.Tensor) -> torch.Tensor:
        xc = torch.complex(x, torch.zeros_like(x)) if real_image else channels_to_complex(x, dim=1)
        return complex_to_channels(forward(xc), dim=1)

    def adj(y: torch.Tensor) -> torch.Tensor:
        xc = adjoint(channels_to_complex(y, dim=1))
        return xc.real if real_image else complex_to_channels(xc, dim=1)

    return fwd, adj


def matrix_operator(a: torch.Tensor | np.ndarray, image_shape: tuple[int, ...]
                    ) -> tuple[Operator, Operator]:
    """A dense real matrix ``a`` (m, d) acting on flattened images of shape ``image_shape``
    (``d = prod(image_shape)``, without the batch axis); measurements are ``(N, m)``."""
    a = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))

    def fwd(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1) @ a.to(x).T

    def adj(y: torch.Tensor) -> torch.Tensor:
        return (y @ a.to(y)).reshape(y.shape[0], *image_shape)

    return fwd, adj


def dense_matrix(forward: Operator, image_shape: tuple[int, ...],
                 dtype=torch.float64, device=None) -> torch.Tensor:
    """The matrix ``(m, d)`` of a real linear ``forward`` (by applying it to the ``d`` basis
    images): for tests and closed forms on small problems."""
    d = int(np.prod(image_shape))
    eye = torch.eye(d, dtype=dtype, device=device).reshape(d, *image_shape)
    return forward(eye).reshape(d, -1).T


def adjoint_mismatch(forward: Operator, adjoint: Operator, x: torch.Tensor,
                     y: torch.Tensor) -> float:
    """The dot-product test ``|<A x, y> - <x, A^T y>| / (||A x|| ||y||)`` (real inner products);
    round-off for a correct adjoint."""
    ax, aty = forward(x), adjoint(y)
    lhs = torch.sum((ax.conj() * y).real if torch.is_complex(ax) else ax * y)
    rhs = torch.sum((x.conj() * aty).real if torch.is_complex(x) else x * aty)
    scale = torch.linalg.vector_norm(ax) * torch.linalg.vector_norm(y)
    return float((lhs - rhs).abs() / scale.clamp_min(torch.finfo(scale.dtype).tiny))
