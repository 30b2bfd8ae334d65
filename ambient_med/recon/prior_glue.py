"""Undersampled multi-coil MRI reconstruction with an :class:`~ambient_med.prior.AmbientPrior`, in
the units of the user's data (docs/design.md sections 2 and 5).

The measurement model is SENSE, ``k = M F S x0 + sigma_k e`` (:mod:`ambient_med.recon.mri`): ``x0``
one complex image, ``S`` coil maps, ``F`` the centred orthonormal FFT, ``M`` the sampling mask,
``e`` white complex noise of std ``sigma_k`` per real channel on the acquired samples. Because
``F`` is orthonormal, the image-domain noise of a fully sampled, coil-combined image is
``sigma_k`` too: the same units as the prior's ``sigma_n`` (what ``estimate-noise`` prints).

Units. The prior's network works in model space, images divided by its intensity scale ``s``.
``A`` is linear, so ``k / s = A (x0 / s) + (sigma_k / s) e``: the samplers get ``y = k / s`` and
``sigma_y = sigma_k / s``, and their images are multiplied by ``s`` on the way out.

Noise level. ``sigma="auto"`` estimates ``sigma_k`` from the *acquired* samples at the readout
edges (the outer ``edge_fraction`` of the readout axis, ``-2``, on every acquired line): there the
band-limited object contributes little and every sample is measured, unlike the k-space corners
used for fully sampled data, which undersampling leaves mostly empty. The estimate is the MAD of
the pooled real and imaginary parts (robust to the few signal samples left), pooled over coils;
k-space is assumed noise-whitened (``mri.coils.whiten``) so that one ``sigma_k`` holds for all coils.

Coil maps. Without ``maps``, ESPIRiT (Uecker et al., MRM 2014, via sigpy;
:func:`ambient_med.mri.coils.espirit_maps`) is calibrated per slice on the fully sampled centre,
whose width is read off the mask (the contiguous acquired lines around the centre).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ambient_med.errors import DataError
from ambient_med.mri.complex import channels_to_complex
from ambient_med.recon.mri import measurement, sense_operator
from ambient_med.recon.samplers import sample_dc, sample_dps

METHODS = ("dc", "dps")


def _as_complex_tensor(kspace) -> torch.Tensor:
    k = torch.as_tensor(np.asarray(kspace) if not isinstance(kspace, torch.Tensor) else kspace)
    if not torch.is_complex(k):
        raise DataError(None, f"k-space must be complex, got dtype {k.dtype}")
    return k


def broadcast_mask(mask, kshape: tuple[int, ...]) -> torch.Tensor:
    """The sampling mask as a real tensor of ``len(kshape)`` dims broadcastable to k-space
    ``kshape`` (N, C, *spatial); a 1-D fastMRI mask ``(ky,)`` applies along the last axis."""
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if torch.is_complex(m):
        raise DataError(None, "the sampling mask must be real (0/1), got a complex array")
    m = m.to(torch.float32)
    if m.ndim > len(kshape):
        m = m.reshape(m.shape[m.ndim - len(kshape):]) if all(
            d == 1 for d in m.shape[:m.ndim - len(kshape)]) else m
    m = m.reshape(*([1] * (len(kshape) - m.ndim)), *m.shape)
    try:
        torch.broadcast_shapes(tuple(m.shape), tuple(kshape))
    except RuntimeError:
        raise DataError(None, f"mask shape {tuple(np.shape(mask))} does not broadcast to k-space "
                              f"shape {tuple(kshape)}") from None
    if not torch.isfinite(m).all() or bool(((m != 0) & (m != 1)).any()):
        raise DataError(None, "the sampling mask must hold only 0 and 1")
    if not bool((m != 0).any()):
        raise DataError(None, "the sampling mask is all zeros: nothing was acquired")
    return m


def calibration_width(mask: torch.Tensor, axis: int = -1) -> int:
    """Width of the contiguous fully sampled block of lines around the centre of ``axis``
    (the autocalibration region of a Cartesian mask)."""
    m = mask
    axis = axis % m.ndim
    for d in range(m.ndim):          # lines acquired in every row, coil and sample
        if d != axis:
            m = m.amin(d, keepdim=True)
    line = m.reshape(-1).numpy() != 0
    n = line.size
    c = n // 2
    if not line[c]:
        return 0
    lo, hi = c, c
    while lo > 0 and line[lo - 1]:
        lo -= 1
    while hi < n - 1 and line[hi + 1]:
        hi += 1
    return hi - lo + 1


def _edge_samples(kspace, mask=None, edge_fraction: float = 0.25) -> torch.Tensor:
    """Acquired k-space samples at the readout edges, ``(C, M)`` complex, pooled over slices:
    the outer ``edge_fraction`` of the readout axis (``-2``; at least one row per edge), on the
    acquired locations (``mask != 0`` and not exactly zero in every coil)."""
    k = _as_complex_tensor(kspace)
    k = k[None] if k.ndim == 3 else k
    if mask is not None:
        k = k * broadcast_mask(mask, tuple(k.shape))
    nx = k.shape[-2]
    e = max(1, int(round(edge_fraction * nx / 2)))
    edges = torch.cat([k[..., :e, :], k[..., nx - e:, :]], dim=-2)      # (N, C, 2e, ky)
    acquired = (edges != 0).any(dim=1)                                   # (N, 2e, ky)
    return edges.movedim(1, -1)[acquired].T                              # (C, M)


def estimate_kspace_sigma(kspace, mask=None, edge_fraction: float = 0.25) -> float:
    """``sigma_k`` (std per real channel) from acquired k-space samples at the readout edges
    (:func:`_edge_samples`): the MAD of the pooled real and imaginary parts,
    ``median |v - median v| / 0.6745`` (Gaussian-consistent)."""
    from ambient_med.errors import NoiseEstimateError
    from ambient_med.noise.estimate import mad_sigma

    v = _edge_samples(kspace, mask, edge_fraction).reshape(-1)
    if v.numel() < 16:
        raise NoiseEstimateError(f"only {v.numel()} acquired samples at the readout edges; too few "
                                 "for a noise estimate: give sigma explicitly")
    sigma = mad_sigma(torch.cat([v.real, v.imag]).numpy())
    if bool((v == v[0]).all()):   # one value repeated: pooling re and im would fake a spread
        sigma = 0.0
    if not np.isfinite(sigma) or sigma <= 0:
        raise NoiseEstimateError("the acquired k-space edges are noise-free (sigma 0): "
                                 "give sigma explicitly")
    return sigma


def estimate_coil_covariance(kspace, mask=None, edge_fraction: float = 0.25,
                             min_per_coil: int = 16) -> np.ndarray | None:
    """Coil noise covariance per real channel, ``n n^H / (2 M)`` (:func:`ambient_med.mri.coils.noise_covariance`),
    from the acquired readout-edge samples; None when there are fewer than ``min_per_coil``
    samples per coil (too few for a ``C x C`` estimate). The band-limited object leaves little
    signal there; what it leaves adds slightly to the covariance."""
    from ambient_med.mri.coils import noise_covariance

    v = _edge_samples(kspace, mask, edge_fraction)
    if v.shape[1] < min_per_coil * v.shape[0]:
        return None
    return noise_covariance(v.numpy())


def _whiten_coils(k: torch.Tensor, maps: torch.Tensor | None, cov) -> tuple:
    """``W k`` and ``W S`` across the coil axis 1, ``W = sigma_out L^{-1}`` for ``cov = L L^H``
    (:func:`ambient_med.mri.coils.whitening_matrix`; ``sigma_out`` the RMS per-coil sigma, so the
    data keep their units). The SENSE model ``k = M F S x + n`` becomes ``W k = M F (W S) x + W n``
    with white ``W n``: the samplers' Gaussian likelihood is then the true one."""
    from ambient_med.mri.coils import whitening_matrix

    c = k.shape[1]
    cov = np.asarray(cov)
    if cov.shape != (c, c):
        raise DataError(None, f"the coil noise covariance must be {c} x {c} for {c} coils, "
                              f"got shape {cov.shape}")
    w = torch.from_numpy(whitening_matrix(cov)).to(torch.complex64)
    apply = lambda t: torch.einsum("dc,nc...->nd...", w.to(t.device), t.to(torch.complex64))  # noqa: E731
    return apply(k), (None if maps is None else apply(maps))


def espirit_maps_batch(kspace: torch.Tensor, calib_width: int) -> torch.Tensor:
    """ESPIRiT maps (N, C, *spatial) complex64 per slice, uncropped and unit-norm per voxel."""
    from ambient_med.mri.coils import espirit_maps

    if calib_width < 4:
        raise DataError(None, f"the mask has a fully sampled centre of {calib_width} lines; "
                              "ESPIRiT needs at least 4: pass coil maps explicitly")
    k = kspace.detach().cpu().numpy()
    return torch.from_numpy(np.stack([espirit_maps(kn, calib_width=calib_width, fill=False)
                                      for kn in k]))


def _maybe_tiled(prior, spatial: tuple[int, ...], tile: int | None):
    """The prior's network, tiled when the image is larger than ``tile`` (default: the
    training image size recorded in the prior)."""
    from ambient_med.diffusion.tiling import tiled_denoiser

    if tile is None:
        tile = max(prior.metadata.training.get("image_shape") or [0]) or max(spatial)
    if tile < 1:
        raise ValueError(f"tile must be a positive size, got {tile}")
    return tiled_denoiser(prior.model, int(tile)) if max(spatial) > tile else prior.model


def reconstruct(prior, kspace, mask, *, maps=None, sigma: str | float = "auto",
                method: str = "dc", n_samples: int = 8, steps: int | None = None,
                generator: torch.Generator | None = None,
                callback: Callable | None = None, tile: int | None = None,
                whiten=False, **sampler_kwargs) -> dict:
    """Posterior reconstruction of one complex image per slice from undersampled k-space.

    Args:
        prior: an :class:`~ambient_med.prior.AmbientPrior` of complex single-channel images.
        kspace: complex ``(N, C, *spatial)`` or ``(C, *spatial)`` centred k-space, data units.
        mask: real 0/1 mask broadcastable to k-space (``(ky,)``, ``(kx, ky)``, ...).
        maps: complex coil maps ``(N or 1, C, *spatial)``; ESPIRiT when None.
        sigma: ``"auto"`` or ``sigma_k``, the k-space noise std per real channel (data units).
        method: ``"dc"`` (:func:`~ambient_med.recon.samplers.sample_dc`, one network call per
            step) or ``"dps"`` (:func:`~ambient_med.recon.samplers.sample_dps`, Tweedie-covariance
            guidance through the network: more accurate, several times the cost).
        n_samples, steps, generator, callback: passed to the sampler.
        tile: images with a side longer than this are denoised in overlapping tiles of this
            size (:func:`ambient_med.diffusion.tiling.tiled_denoiser`). Default: the prior's training
            image size for ``method="dc"`` (a prior trained on patches sees patches), no
            tiling for ``"dps"``. The data consistency and the noise stay whole-image: only
            the network call is tiled. Measured on 64x64 MNI slices with a prior of 32x32
            patches at R = 4 (``benchmarks/mri_recon.py``): tiles gain 0.25 dB for ``dc`` and
            lose 0.9 dB for ``dps`` (PiGDM guidance through the tiled network; the cause is
            not yet understood), hence the split default.
        whiten: ``False`` (default) assumes k-space that is already white (``mri.coils.whiten``
            with a covariance from a noise scan or the corners of fully sampled data). A ``(C, C)``
            covariance (per real channel) whitens k-space and maps with it
            (:func:`_whiten_coils`); ``True`` estimates it from the acquired readout edges
            (:func:`estimate_coil_covariance`; skipped when they hold too few samples). Not the
            default: where the edges still hold signal (k-space cropped to a lower resolution)
            the estimate takes it for noise, which cost 0.7 dB on the BART brain in
            ``benchmarks/mri_recon.py``.

    Returns ``{"mean", "std", "samples", "calls", "sigma", "maps", "noise_cov"}``: ``mean`` and ``std``
    complex ``(N, 1, *spatial)`` in data units (``std``: real part the posterior std of the real
    parts, imaginary part that of the imaginary parts, as ``AmbientPrior.posterior``),
    ``samples`` ``(n_samples, N, 1, *spatial)``, ``calls`` the network calls, ``sigma`` the
    ``sigma_k`` used (after whitening), ``maps`` the coil maps used (whitened with the data),
    ``noise_cov`` the coil noise covariance whitened with (None: none). Unbatched input gives unbatched outputs
    (no ``N`` axis).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    meta = prior.metadata
    if not prior.is_complex or meta.channels != 2:
        raise DataError(None, f"the prior was trained on {meta.data_kind} images with "
                              f"{meta.channels} channel(s); k-space reconstruction needs a "
                              "prior of single complex images (2 real channels)")
    k = _as_complex_tensor(kspace)
    batched = k.ndim == meta.spatial_dims + 2
    if not batched and k.ndim != meta.spatial_dims + 1:
        raise DataError(None, f"k-space must be (N, C, *spatial) or (C, *spatial) with "
                              f"{meta.spatial_dims} spatial dims, got shape {tuple(k.shape)}")
    k = k if batched else k[None]
    if not bool(torch.isfinite(torch.view_as_real(k)).all()):
        raise DataError(None, "k-space has NaN or Inf values")
    m = broadcast_mask(mask, tuple(k.shape))
    k = k * m
    maps_t = None
    if maps is not None:
        maps_t = torch.as_tensor(maps)
        maps_t = maps_t if maps_t.ndim == k.ndim else maps_t[None]
        if not torch.is_complex(maps_t) or maps_t.shape[1:] != k.shape[1:]:
            raise DataError(None, f"coil maps must be complex (N, {k.shape[1]}, "
                                  f"{', '.join(map(str, k.shape[2:]))}), got shape "
                                  f"{tuple(maps_t.shape)}")
    cov = estimate_coil_covariance(k) if whiten is True else (None if whiten is False else whiten)
    if cov is not None:
        k, maps_t = _whiten_coils(k, maps_t, cov)
    if maps_t is None:  # calibrated on the whitened data
        maps_t = espirit_maps_batch(k, calibration_width(m))
    if isinstance(sigma, str):
        if sigma != "auto":
            raise ValueError(f"sigma must be 'auto' or a number, got {sigma!r}")
        sigma_k = estimate_kspace_sigma(k)
    else:
        sigma_k = float(sigma)
        if not np.isfinite(sigma_k) or sigma_k <= 0:
            raise ValueError(f"sigma must be a positive noise std, got {sigma}")
    s = float(meta.scale)
    dev = prior.device
    dtype = torch.complex64
    fwd, adj = sense_operator(maps_t.to(dtype).to(dev), m.to(dev))
    y = measurement(k.to(dtype).to(dev) / s)
    sigma_y = sigma_k / s
    common = dict(n_samples=n_samples, steps=steps, generator=generator, callback=callback,
                  sigma_data=meta.sigma_data, **sampler_kwargs)
    denoiser = (_maybe_tiled(prior, tuple(k.shape[2:]), tile)
                if method == "dc" or tile is not None else prior.model)
    if method == "dc":
        with torch.no_grad():
            out = sample_dc(denoiser, fwd, adj, y, sigma_y, **common)
    else:
        out = sample_dps(denoiser, fwd, adj, y, sigma_y, **common)

    def data(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
        x = channels_to_complex(x.detach() * s, dim=channel_dim)
        return x if batched else x.select(channel_dim - 1, 0)

    return {"mean": data(out["mean"], 1), "std": data(out["std"], 1),
            "samples": data(out["samples"], 2), "calls": out["calls"], "sigma": sigma_k,
            "maps": maps_t if batched else maps_t[0], "noise_cov": cov}
