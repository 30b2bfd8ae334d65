"""MRI glue: the SENSE model ``A = M F S`` (:class:`ambient_med.mri.operators.SenseOp`) as real-channel
``forward`` / ``adjoint`` callables for :mod:`ambient_med.recon`.

Layout (docs/design.md section 2): the image is one complex channel as 2 real channels ``(N, 2, *spatial)``;
the measurement is the masked multi-coil k-space ``(N, C, *spatial)`` complex, as ``2C`` real
channels ``(N, 2C, *spatial)`` (zeros where the mask is 0). The FFT is centred and orthonormal, so
white k-space noise of std ``sigma_k`` per real channel is ``sigma_y = sigma_k`` in the same units.

Intensity scale: the operators are linear and scale-free; the caller brings k-space to model
space, ``kspace / s`` and ``sigma_y = sigma_k / s`` with the prior's scale ``s``, and multiplies the
reconstruction by ``s`` afterwards. k-space should be noise-whitened (``mri.coils.whiten``) so that
one ``sigma_y`` holds for every coil.

Batches: maps and mask of batch 1 broadcast over any batch; maps or mask of batch ``N`` are tiled
to a batch ``K*N`` in the samplers' order (row ``j*N + n`` uses entry ``n``).
"""

from __future__ import annotations

import numpy as np
import torch

from ambient_med.mri.complex import channels_to_complex, complex_to_channels
from ambient_med.mri.operators import SenseOp
from ambient_med.recon.operators import Operator


def _tile(t: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    if t is None or t.shape[0] in (1, batch):
        return t
    if batch % t.shape[0]:
        raise ValueError(f"batch {batch} is not a multiple of the operator's batch {t.shape[0]}")
    return t.repeat(batch // t.shape[0], *([1] * (t.ndim - 1)))


def sense_operator(maps: torch.Tensor | np.ndarray,
                   mask: torch.Tensor | np.ndarray | None = None) -> tuple[Operator, Operator]:
    """Real-channel ``(forward, adjoint)`` of SENSE with coil maps ``maps`` (N or 1, C, *spatial)
    complex and a real ``mask`` broadcastable to k-space (N or 1, C or 1, *spatial), or None.

    ``forward``: image ``(B, 2, *spatial)`` -> k-space ``(B, 2C, *spatial)``; ``adjoint`` back."""
    maps = torch.as_tensor(maps)
    if not torch.is_complex(maps):
        raise TypeError("coil maps must be complex (N, C, *spatial)")
    if mask is not None:
        mask = torch.as_tensor(mask)
        if torch.is_complex(mask):
            raise TypeError("the sampling mask must be real")
        mask = mask.reshape(*([1] * (maps.ndim - mask.ndim)), *mask.shape)
    cache: dict[tuple, SenseOp] = {}

    def op(batch: int, dtype: torch.dtype, device) -> SenseOp:
        key = (batch, dtype, device)
        if key not in cache:
            m = _tile(mask, batch)
            cache[key] = SenseOp(_tile(maps, batch).to(device=device, dtype=dtype),
                                 None if m is None else m.to(device=device, dtype=dtype.to_real()))
        return cache[key]

    def forward(x: torch.Tensor) -> torch.Tensor:
        xc = channels_to_complex(x, dim=1)
        if xc.shape[1] != 1:
            raise ValueError(f"SENSE images have 2 real channels, got {x.shape[1]}")
        return complex_to_channels(op(x.shape[0], xc.dtype, x.device)(xc[:, 0]), dim=1)

    def adjoint(y: torch.Tensor) -> torch.Tensor:
        yc = channels_to_complex(y, dim=1)
        return complex_to_channels(op(y.shape[0], yc.dtype, y.device).H(yc)[:, None], dim=1)

    return forward, adjoint


def measurement(kspace: torch.Tensor | np.ndarray,
                mask: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Complex k-space (N, C, *spatial) (masked if ``mask`` is given) as real channels (N, 2C, *spatial)."""
    k = torch.as_tensor(kspace)
    if mask is not None:
        k = k * torch.as_tensor(mask).to(k.device)
    return complex_to_channels(k, dim=1)


def to_complex_image(x: torch.Tensor, spatial_dims: int = 2) -> torch.Tensor:
    """Real-channel images ``(..., 2, *spatial)`` -> complex ``(..., *spatial)`` (e.g. the samplers'
    ``mean`` (N, 2, H, W) -> (N, H, W), or ``samples`` (K, N, 2, H, W) -> (K, N, H, W))."""
    d = x.ndim - spatial_dims - 1
    return channels_to_complex(x, dim=d).squeeze(d)


def espirit_sense_operator(kspace: np.ndarray, mask: np.ndarray | None = None, *,
                           calib_width: int = 24, **espirit_kwargs
                           ) -> tuple[Operator, Operator, np.ndarray]:
    """SENSE with ESPIRiT maps (sigpy, :func:`ambient_med.mri.coils.espirit_maps`) estimated per
    sample from the (undersampled) k-space ``(N, C, *spatial)`` or ``(C, *spatial)``, whose fully
    sampled centre of ``calib_width`` lines is the calibration region. Returns
    ``(forward, adjoint, maps)``, maps ``(N, C, *spatial)`` complex64.

    Defaults to ``fill=False``: the noise-level estimate behind ``fill`` reads k-space corners,
    which undersampling leaves empty; with the default ``crop=0`` the maps are unit-norm in every
    voxel anyway. Pass ``fill=True, sigma=...`` to override."""
    from ambient_med.mri.coils import espirit_maps

    k = np.asarray(kspace)
    k = k[None] if k.ndim == 3 else k
    espirit_kwargs.setdefault("fill", False)
    maps = np.stack([espirit_maps(kn, calib_width=calib_width, **espirit_kwargs) for kn in k])
    forward, adjoint = sense_operator(torch.from_numpy(maps),
                                      None if mask is None else torch.as_tensor(np.asarray(mask)))
    return forward, adjoint, maps
