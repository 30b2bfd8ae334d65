"""Tiny synthetic Poisson-Gaussian microscopy stacks for the noise-model and microscopy tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

A, B = 2.0, 4.0   # gain (data units per photon), read-noise variance


def cells_stack(n: int = 8, size: int = 32, seed: int = 0, a: float = A, b: float = B) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy) float32 stacks ``(n, size, size)`` of synthetic cells with
    ``y = a Poisson(x/a) + N(0, b)``."""
    from ambient_med.microscopy.synthetic import poisson_gaussian_noise, synthetic_cells

    rng = np.random.default_rng(seed)
    clean = np.stack([synthetic_cells((size, size), n_cells=4, cell_size=4.0, rng=rng) for _ in range(n)])
    noisy = poisson_gaussian_noise(clean, a, b, rng=rng)
    return clean.astype(np.float32), np.asarray(noisy, dtype=np.float32)


def write_cells_tif(path: Path, n: int = 8, size: int = 32, seed: int = 0, axes: str | None = None) -> Path:
    """A noisy stack as TIFF; ``axes="ZYX"`` writes ImageJ metadata naming the axis."""
    import tifffile

    _, noisy = cells_stack(n, size, seed)
    if axes is None:
        tifffile.imwrite(path, noisy, photometric="minisblack")
    else:
        tifffile.imwrite(path, noisy, imagej=True, metadata={"axes": axes})
    return Path(path)
