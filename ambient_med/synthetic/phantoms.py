"""Synthetic multi-coil MRI with known answers: random ellipse phantoms, birdcage coil maps,
complex Gaussian k-space noise of a known ``sigma``, written as fastMRI-format HDF5.

Used by ``ambient-med demo`` (no data needed on a fresh install) and by the CLI tests. The
noise is white per real channel with std ``sigma`` in k-space; with the orthonormal FFT and maps
normalised to ``sum |S_c|^2 = 1`` the coil-combined image carries the same ``sigma``
(docs/design.md sections 2 and 6), so the truth for ``--sigma-n auto`` is exactly ``sigma``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.fastmri import write_fastmri
from ..mri.fft import fftc


def ellipse_phantom(n: int, rng: np.random.Generator, blur: float = 0.8) -> np.ndarray:
    """A randomised Shepp-Logan-like complex image (n, n), peak magnitude about 1.

    An outer head-like ellipse, a darker interior and 3-5 random inner ellipses, a smooth
    random phase (real MR images are complex), edges blurred by ``blur`` pixels so that the
    outer k-space holds noise, not signal (as in real, band-limited acquisitions)."""
    y, x = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]

    def ellipse(cx, cy, a, b, theta):
        c, s = np.cos(theta), np.sin(theta)
        u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
        return (u / a) ** 2 + (v / b) ** 2 < 1

    a, b = rng.uniform(0.6, 0.8), rng.uniform(0.7, 0.88)
    img = 1.0 * ellipse(0, 0, a, b, rng.uniform(-0.2, 0.2))
    img -= 0.5 * ellipse(0, 0, 0.85 * a, 0.85 * b, 0)
    for _ in range(rng.integers(3, 6)):
        img += rng.uniform(-0.2, 0.5) * ellipse(rng.uniform(-0.35, 0.35), rng.uniform(-0.4, 0.4),
                                                rng.uniform(0.06, 0.25), rng.uniform(0.06, 0.3),
                                                rng.uniform(0, np.pi))
    img = np.clip(img, 0, None)
    phase = np.pi * (rng.uniform(-0.3, 0.3) * x + rng.uniform(-0.3, 0.3) * y)
    f = np.fft.fftfreq(n)
    g = np.exp(-2 * (np.pi * blur) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    img = np.fft.ifft2(np.fft.fft2(img) * g) * np.exp(1j * phase)
    return (img / np.abs(img).max()).astype(np.complex64)


def birdcage_maps(n: int, coils: int) -> np.ndarray:
    """Birdcage coil sensitivities (sigpy), normalised to ``sum_c |S_c|^2 = 1``."""
    import sigpy.mri as mr

    maps = mr.birdcage_maps((coils, n, n), r=1.3, nzz=coils)
    return (maps / np.sqrt(np.sum(np.abs(maps) ** 2, axis=0, keepdims=True))).astype(np.complex64)


def make_phantom_dataset(folder: str | Path, *, n_files: int = 4, slices: int = 16, size: int = 32,
                         coils: int = 8, sigma: float = 0.05, seed: int = 0) -> dict:
    """Write ``n_files`` fastMRI files of noisy multi-coil phantoms into ``folder``.

    Returns ``{"files", "clean" (N, size, size) complex, "maps", "sigma"}``; ``clean`` lists the
    noise-free phantoms in file-then-slice order (the order the readers use)."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    maps = birdcage_maps(size, coils)
    files, clean = [], []
    for i in range(n_files):
        x = np.stack([ellipse_phantom(size, rng) for _ in range(slices)])         # (S, n, n)
        k_clean = fftc(maps[None] * x[:, None])                                   # (S, C, n, n)
        noise = sigma * (rng.standard_normal(k_clean.shape) + 1j * rng.standard_normal(k_clean.shape))
        path = write_fastmri(folder / f"phantom_{i:03d}.h5", (k_clean + noise).astype(np.complex64),
                             attrs={"acquisition": "SYNTHETIC_PHANTOM", "patient_id": "phantom",
                                    "true_sigma": sigma})
        files.append(path)
        clean.append(x)
    return {"files": files, "clean": np.concatenate(clean), "maps": maps, "sigma": sigma}
