"""Synthetic multi-coil MRI with known answers: a blurred complex ellipse phantom, smooth coil
maps, a known correlated coil covariance, noisy k-space, and fastMRI-format files of them.

The noise is complex Gaussian with covariance ``cov`` per real channel (docs/design.md sections
2 and 6), so every estimator has an exact answer to meet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.fastmri import ismrmrd_header, write_fastmri
from ..mri.fft import fftc


def phantom(n: int | tuple[int, int] = 128, blur: float = 1.5) -> np.ndarray:
    """Complex ellipse phantom with inner structure and a smooth phase, peak magnitude ~1.

    Edges are blurred by a Gaussian of ``blur`` pixels, so that, as in real acquisitions, the
    outer k-space is noise-dominated even at 40 dB (a perfectly sharp ellipse is not)."""
    ny, nx = (n, n) if isinstance(n, int) else n
    y, x = np.mgrid[-1 : 1 : ny * 1j, -1 : 1 : nx * 1j]
    img = 1.0 * ((x / 0.7) ** 2 + (y / 0.85) ** 2 < 1)
    img -= 0.4 * ((x / 0.55) ** 2 + (y / 0.7) ** 2 < 1)
    img += 0.3 * (((x - 0.2) / 0.15) ** 2 + (y / 0.25) ** 2 < 1)
    img += 0.2 * (((x + 0.25) / 0.1) ** 2 + ((y + 0.2) / 0.1) ** 2 < 1)
    img = img * np.exp(1j * np.pi * 0.5 * (x + 0.5 * y))
    fy, fx = np.fft.fftfreq(ny), np.fft.fftfreq(nx)
    g = np.exp(-2 * (np.pi * blur) ** 2 * (fy[:, None] ** 2 + fx[None, :] ** 2))
    return np.fft.ifft2(np.fft.fft2(img) * g).astype(np.complex64)


def coil_maps(n: int | tuple[int, int] = 128, coils: int = 8) -> np.ndarray:
    """Smooth Gaussian coil sensitivities around a circle, normalised to sum |S_c|^2 = 1."""
    ny, nx = (n, n) if isinstance(n, int) else n
    y, x = np.mgrid[-1 : 1 : ny * 1j, -1 : 1 : nx * 1j]
    maps = []
    for c in range(coils):
        a = 2 * np.pi * c / coils
        cx, cy = 1.2 * np.cos(a), 1.2 * np.sin(a)
        maps.append(np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 1.2) * np.exp(1j * a))
    maps = np.array(maps)
    return (maps / np.sqrt(np.sum(np.abs(maps) ** 2, axis=0))).astype(np.complex64)


def coil_covariance(coils: int, sigma: float, rng) -> np.ndarray:
    """A known coil covariance per real channel: per-coil sigmas spread x0.7..1.4 around
    ``sigma``, correlations up to about 0.4."""
    s = sigma * rng.uniform(0.7, 1.4, coils)
    a = rng.normal(size=(coils, coils)) + 1j * rng.normal(size=(coils, coils))
    r = np.eye(coils) + 0.12 * (a @ a.conj().T) / coils
    d = np.sqrt(np.real(np.diag(r)))
    r = r / np.outer(d, d)
    return r * np.outer(s, s)


def correlated_noise(cov: np.ndarray, shape: tuple[int, ...], rng) -> np.ndarray:
    """Complex noise (C, *shape) with covariance per real channel ``cov``: ``n = L z``."""
    L = np.linalg.cholesky(cov)
    z = rng.normal(size=(cov.shape[0], *shape)) + 1j * rng.normal(size=(cov.shape[0], *shape))
    return np.tensordot(L, z, axes=(1, 0))


def multicoil_kspace(n=128, coils=8, snr_db=20.0, seed=0):
    """Noisy k-space (C, n, n), its clean part, the true covariance and maps.

    SNR (dB) = 10 log10( mean |S_c x|^2 / (2 * mean sigma_c^2) ) over coils and pixels."""
    rng = np.random.default_rng(seed)
    x, maps = phantom(n), coil_maps(n, coils)
    coil_img = maps * x
    power = np.mean(np.abs(coil_img) ** 2)
    sigma = np.sqrt(power / 10 ** (snr_db / 10) / 2)
    cov = coil_covariance(coils, sigma, rng)
    clean = fftc(coil_img)
    noise = correlated_noise(cov, (n, n), rng)
    return (clean + noise).astype(np.complex64), clean, noise, cov, maps


def write_knee_like(path: Path, slices=20, coils=15, kx=640, ky=368, recon=(320, 320), pad=(0, 0), seed=0,
                  sigma=0.02):
    """A fastMRI multicoil file shaped like the knee data (contiguous complex64 ``kspace``): a
    phantom filling the central half of the 2x-oversampled readout FOV, smooth coil maps,
    white noise of std ``sigma`` per real channel (``sigma=0``: noise-free)."""
    rng = np.random.default_rng(seed)
    header = ismrmrd_header(kx, ky, recon, encoded_fov_mm=(280, 140, 4.5), recon_fov_mm=(140, 140, 3))
    obj = np.zeros((kx, ky), np.complex64)
    obj[kx // 4 : kx // 4 + kx // 2] = phantom((kx // 2, ky))
    base = fftc(coil_maps((kx, ky), coils) * obj)
    base = (base + sigma * (rng.normal(size=base.shape) + 1j * rng.normal(size=base.shape))).astype(np.complex64)
    if pad[0] or pad[1]:
        base[..., : pad[0]] = 0
        base[..., ky - pad[1] :] = 0
    return write_fastmri(path, _ScaledSlices(base, slices), header=header,
                         rss=np.ones((slices, *recon), np.float32),
                         attrs={"acquisition": "CORPD_FBK", "max": 0.0005, "norm": 0.1})


class _ScaledSlices:
    """``slices`` copies of one k-space slice, scaled by 1 + 0.01 s, made one at a time."""

    def __init__(self, base: np.ndarray, slices: int):
        self.base, self.n = base, slices

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, s: int) -> np.ndarray:
        return self.base * np.float32(1 + 0.01 * s)
