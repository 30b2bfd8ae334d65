"""Tiny Poisson-Gaussian microscopy stacks (:func:`ambient_med.synthetic.fluorescence.cells_stack`)
as TIFF files, for the noise-model and microscopy tests."""

from __future__ import annotations

from pathlib import Path

from ambient_med.synthetic.fluorescence import cells_stack  # noqa: F401 (the tests import it from here)

A, B = 2.0, 4.0   # cells_stack's gain (data units per photon) and read-noise variance


def write_cells_tif(path: Path, n: int = 8, size: int = 32, seed: int = 0, axes: str | None = None) -> Path:
    """A noisy stack as TIFF; ``axes="ZYX"`` writes ImageJ metadata naming the axis."""
    import tifffile

    _, noisy = cells_stack(n, size, seed)
    if axes is None:
        tifffile.imwrite(path, noisy, photometric="minisblack")
    else:
        tifffile.imwrite(path, noisy, imagej=True, metadata={"axes": axes})
    return Path(path)
