"""Synthetic fluorescence images: smooth cells on a smooth background, and Poisson-Gaussian noise.

:func:`synthetic_cells` draws a clean intensity image (2D ``(H, W)`` or 3D ``(D, H, W)``): a
smooth background (a low-order polynomial ramp plus a few very broad Gaussian humps) and
``n_cells`` cells, each an anisotropic Gaussian cytoplasm with a brighter, smaller nucleus at a
random offset. Everything is infinitely smooth (no hard edges), so the image suits noise
estimators that assume locally smooth signal; intensities span ``[background, peak]``.

:func:`poisson_gaussian_noise` applies ``y = a * Poisson(x / a) + N(mu, b)``, optionally
quantised (rounded) and clipped to an integer dtype's range, as a camera would.
"""

from __future__ import annotations

import numpy as np


def _gaussian_blob(grids, centre, sigmas, rot: np.ndarray) -> np.ndarray:
    d = np.stack([g - c for g, c in zip(grids, centre)], axis=-1) @ rot
    return np.exp(-0.5 * np.sum((d / sigmas) ** 2, axis=-1))


def _add_blob(img: np.ndarray, amp: float, centre, sigmas, rot: np.ndarray) -> None:
    """``img += amp * blob`` inside the blob's 6-sigma bounding box (values outside < 1e-7)."""
    r = 6.0 * float(np.max(sigmas))
    box = tuple(slice(max(0, int(c - r)), min(n, int(c + r) + 2)) for c, n in zip(centre, img.shape))
    grids = np.meshgrid(*[np.arange(b.start, b.stop, dtype=np.float64) for b in box], indexing="ij")
    img[box] += amp * _gaussian_blob(grids, centre, sigmas, rot)


def _rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    return q * np.sign(np.diag(r))


def synthetic_cells(shape: tuple[int, ...] = (256, 256), n_cells: int = 12, background: float = 10.0,
                    peak: float = 200.0, cell_size: float = 14.0, rng=None) -> np.ndarray:
    """Clean intensity image of ``shape`` (2D or 3D), float64, values in ``[background, peak]``.

    ``cell_size``: typical cytoplasm std in pixels (nuclei are ~0.45 of it, 1.5-2.5x brighter).
    """
    rng = np.random.default_rng(rng)
    nd = len(shape)
    if nd not in (2, 3):
        raise ValueError(f"shape must be 2D or 3D, got {shape}")
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    norm = [g / max(n - 1, 1) - 0.5 for g, n in zip(grids, shape)]
    bg = 1.0 + sum(rng.uniform(-0.3, 0.3) * u for u in norm)
    for _ in range(3):
        c = [rng.uniform(0, n) for n in shape]
        bg += rng.uniform(0.2, 0.6) * _gaussian_blob(grids, c, np.array([0.35 * n for n in shape]), np.eye(nd))
    img = bg / bg.max() * 0.25
    for _ in range(n_cells):
        c = np.array([rng.uniform(0.1 * n, 0.9 * n) for n in shape])
        sig = cell_size * rng.uniform(0.7, 1.4, nd)
        rot = _rotation(rng, nd)
        _add_blob(img, rng.uniform(0.3, 0.6), c, sig, rot)
        cn = c + rng.uniform(-0.3, 0.3, nd) * sig
        _add_blob(img, rng.uniform(0.4, 0.9), cn, 0.45 * cell_size * rng.uniform(0.8, 1.2, nd), rot)
    img = (img - img.min()) / (img.max() - img.min())
    return background + (peak - background) * img


def poisson_gaussian_noise(x: np.ndarray, a: float, b: float = 0.0, mu: float = 0.0, rng=None,
                           dtype=None) -> np.ndarray:
    """``y = a * Poisson(x / a) + N(mu, b)`` (``b`` the read-noise variance). With an integer
    ``dtype`` the result is rounded and clipped to its range (quantisation adds ~1/12 to ``b``)."""
    rng = np.random.default_rng(rng)
    x = np.asarray(x, dtype=np.float64)
    if np.any(x < 0):
        raise ValueError("clean intensities must be >= 0")
    y = a * rng.poisson(x / a) + mu
    if b > 0:
        y = y + rng.normal(0.0, np.sqrt(b), x.shape)
    if dtype is not None and np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.round(y), info.min, info.max).astype(dtype)
    return y if dtype is None else y.astype(dtype)


def cells_stack(n: int = 8, size: int = 32, seed: int = 0, a: float = 2.0,
                b: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """``(clean, noisy)`` float32 stacks ``(n, size, size)`` of small cells (4 per frame) with
    ``y = a Poisson(x / a) + N(0, b)``: gain ``a`` counts per photon, read-noise variance ``b``."""
    rng = np.random.default_rng(seed)
    clean = np.stack([synthetic_cells((size, size), n_cells=4, cell_size=4.0, rng=rng) for _ in range(n)])
    noisy = poisson_gaussian_noise(clean, a, b, rng=rng)
    return clean.astype(np.float32), np.asarray(noisy, dtype=np.float32)
