"""Synthetic multi-coil MRI with known answers: random ellipse phantoms, birdcage coil maps,
complex Gaussian k-space noise of a known ``sigma``, written as fastMRI-format HDF5.

Used by ``ambient-med demo`` (no data needed on a fresh install) and by the CLI tests. The
noise is white per real channel with std ``sigma`` in k-space; with the orthonormal FFT and maps
normalised to ``sum |S_c|^2 = 1`` the coil-combined image carries the same ``sigma``
(DESIGN sections 2 and 6), so the truth for ``--sigma-n auto`` is exactly ``sigma``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .mri.fft import fftc


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


def ismrmrd_header(kx: int, ky: int, recon: tuple[int, int] | None = None,
                   encoded_fov_mm: tuple[float, float, float] = (200, 200, 3),
                   recon_fov_mm: tuple[float, float, float] | None = None) -> str:
    """The ISMRMRD XML header of a fastMRI file: encoded matrix ``(kx, ky)`` and the recon matrix
    (default: the same, i.e. no readout oversampling to crop)."""
    rx, ry = recon if recon is not None else (kx, ky)
    ex, ey, ez = encoded_fov_mm
    fx, fy, fz = recon_fov_mm if recon_fov_mm is not None else encoded_fov_mm
    return f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>
<encodedSpace><matrixSize><x>{kx}</x><y>{ky}</y><z>1</z></matrixSize>
<fieldOfView_mm><x>{ex}</x><y>{ey}</y><z>{ez}</z></fieldOfView_mm></encodedSpace>
<reconSpace><matrixSize><x>{rx}</x><y>{ry}</y><z>1</z></matrixSize>
<fieldOfView_mm><x>{fx}</x><y>{fy}</y><z>{fz}</z></fieldOfView_mm></reconSpace>
</encoding></ismrmrdHeader>"""


def write_fastmri_h5(path: str | Path, kspace: np.ndarray, attrs: dict | None = None) -> Path:
    """Write (slices, coils, kx, ky) complex k-space in the public fastMRI multicoil layout."""
    from .mri.fft import ifftc

    path = Path(path)
    k = np.asarray(kspace, dtype=np.complex64)
    rss = np.sqrt(np.sum(np.abs(ifftc(k)) ** 2, axis=1)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=k)
        f.create_dataset("reconstruction_rss", data=rss)
        f.create_dataset("ismrmrd_header", data=np.bytes_(ismrmrd_header(*k.shape[-2:])))
        f.attrs["acquisition"] = "SYNTHETIC_PHANTOM"
        f.attrs["max"] = float(rss.max())
        f.attrs["norm"] = float(np.linalg.norm(rss))
        f.attrs["patient_id"] = "phantom"
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    return path


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
        path = write_fastmri_h5(folder / f"phantom_{i:03d}.h5", k_clean + noise,
                                {"true_sigma": sigma})
        files.append(path)
        clean.append(x)
    return {"files": files, "clean": np.concatenate(clean), "maps": maps, "sigma": sigma}
