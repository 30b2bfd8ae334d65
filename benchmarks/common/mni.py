"""The simulated MRI problem of the MRI benchmarks (``mri_recon.py``, ``mri_curve.py``,
``recon_gaussian.py``, ``audit.py``).

Axial slices of the MNI152 2009a T1 template (an average of many subjects, nearly noise-free,
skull-stripped) in a 192 x 192 mm box around the brain, area-averaged to the image size,
intensities / 255, times a smooth random phase; 8-coil Cartesian k-space with sigpy birdcage maps
(normalised to ``sum_c |S_c|^2 = 1``), centred orthonormal FFT and white complex noise of std
``sigma`` per real channel and coil; 1D Cartesian line masks.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ambient_med.mri.fft import fftc
from ambient_med.mri.operators import SenseOp
from ambient_med.training.datasets import intensity_scale as package_intensity_scale

from .paths import MRI_DATA

MNI = MRI_DATA / "wheel_mri_magnitude" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
CENTRE = {4: 1 / 8, 8: 1 / 16}          # fully sampled centre, share of the lines
BOX_MM = 192                            # the MNI field of view that is resampled to the image size


def mni_slices(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Axial MNI slices (Z, size, size) float64 in [0, 1] (rows anterior-posterior) and each
    slice's brain area in mm^2."""
    import nibabel as nib

    vol = np.asarray(nib.load(str(MNI)).dataobj, dtype=np.float32) / 255.0     # (x, y, z) 1 mm
    obj = vol > 0.1
    cx = int(round(np.mean(np.nonzero(obj.any((1, 2)))[0][[0, -1]])))
    cy = int(round(np.mean(np.nonzero(obj.any((0, 2)))[0][[0, -1]])))
    h = BOX_MM // 2
    padded = np.pad(vol, ((h, h), (h, h), (0, 0)))
    box = padded[cx:cx + 2 * h, cy:cy + 2 * h]                       # (192, 192, z)
    t = torch.from_numpy(np.ascontiguousarray(box.transpose(2, 1, 0)))[:, None]   # (z, 1, y, x)
    small = torch.nn.functional.interpolate(t, size=(size, size), mode="area")[:, 0]
    small = small.flip(1)                                            # anterior at the top
    return small.double().numpy(), obj.sum((0, 1)).astype(float)


def smooth_phase(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random quadratic phase over [-1, 1]^2: offset uniform, slopes and curvatures of about a
    radian each."""
    u = np.linspace(-1, 1, size)
    yy, xx = np.meshgrid(u, u, indexing="ij")
    c = rng.normal(0, 1.0, 5)
    return rng.uniform(-np.pi, np.pi) + c[0] * xx + c[1] * yy + 0.7 * (c[2] * xx**2 + c[3] * yy**2 + c[4] * xx * yy)


def coil_maps(coils: int, size: int) -> np.ndarray:
    """sigpy birdcage maps, normalised to ``sum_c |S_c|^2 = 1``."""
    import sigpy.mri as mr

    s = mr.birdcage_maps((coils, size, size), r=1.5, nzz=coils)
    return (s / np.sqrt(np.sum(np.abs(s) ** 2, 0, keepdims=True))).astype(np.complex64)


def split(area: np.ndarray, n_test: int, gap: int) -> tuple[list[int], list[int]]:
    """Test slices evenly spaced through the slices whose brain area is >= 25% of the largest;
    training slices: every such slice more than ``gap`` from any test slice."""
    usable = np.nonzero(area >= 0.25 * area.max())[0]
    lo, hi = usable.min(), usable.max()
    test = [int(round(v)) for v in np.linspace(lo, hi, n_test + 2)[1:-1]]
    train_idx = [int(z) for z in usable if min(abs(z - t) for t in test) > gap]
    return train_idx, test


def line_mask(n: int, accel: int, rng: np.random.Generator) -> np.ndarray:
    """1D Cartesian mask of ``round(n / accel)`` lines: a fully sampled centre of
    ``round(n * CENTRE[accel])`` lines (at least 2), the others one per equal bin of the
    outer lines, at a random position in each bin."""
    total = max(int(round(n / accel)), 2)
    centre = max(int(round(n * CENTRE[accel])), 2)
    m = np.zeros(n, np.float32)
    c0 = n // 2 - centre // 2
    m[c0:c0 + centre] = 1
    outer = np.nonzero(m == 0)[0]
    for b in np.array_split(outer, total - centre):
        if len(b):
            m[rng.choice(b)] = 1
    return m


def simulate(x0: np.ndarray, maps: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Noisy fully sampled multi-coil k-space (N, C, H, W) of complex images x0 (N, H, W)."""
    k = fftc(maps[None] * x0[:, None])
    noise = rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)
    return (k + sigma * noise).astype(np.complex64)


def combine(k: np.ndarray, maps: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``A^H k`` = ``sum_c conj(S_c) F^H (M k_c)`` (zero-filled SENSE combination), numpy;
    k-space (N, C, H, W) -> (N, H, W) or (C, H, W) -> (H, W)."""
    k = np.asarray(k)
    op = SenseOp(torch.from_numpy(np.asarray(maps))[None] if maps.ndim == 3 else torch.from_numpy(maps),
                 None if mask is None else torch.from_numpy(np.asarray(mask, np.float32)))
    out = op.H(torch.from_numpy(k if k.ndim == 4 else k[None])).numpy()
    return out if k.ndim == 4 else out[0]


def intensity_scale(noisy: np.ndarray, sigma: float) -> float:
    """The package's intensity scale (``datasets.intensity_scale``) of complex images."""
    return package_intensity_scale(np.abs(noisy) ** 2, 2 * sigma**2)


def sigma_at_snr(images: np.ndarray, snr_db: float) -> float:
    """Complex noise std per real channel giving ``snr_db`` image SNR: RMS magnitude of the
    object (pixels above 10% of each image's peak) over ``sqrt(2) 10^(snr/20)``."""
    obj = np.concatenate([np.abs(x[np.abs(x) > 0.1 * np.abs(x).max()]) for x in images])
    return math.sqrt(float(np.mean(obj**2))) / (math.sqrt(2) * 10 ** (snr_db / 20))


def simulated(size: int, coils: int, snr_db: float, n_test: int, gap: int, rng: np.random.Generator) -> dict:
    """The simulated problem, drawn from ``rng`` in a fixed order (phases, k-space noise, the
    R = 4 and R = 8 masks), so that every MRI benchmark with the same seed sees the same data:
    clean complex slices ``x0``, coil ``maps``, noise ``sigma``, noisy k-space ``k``, ``masks``
    by acceleration, ``train`` and ``test`` slice indices."""
    mag, area = mni_slices(size)
    train_idx, test_idx = split(area, n_test, gap)
    phases = np.stack([smooth_phase(rng, size) for _ in range(mag.shape[0])])
    x0 = (mag * np.exp(1j * phases)).astype(np.complex64)
    maps = coil_maps(coils, size)
    sigma = sigma_at_snr(x0[train_idx], snr_db)
    k = simulate(x0, maps, sigma, rng)
    masks = {accel: line_mask(size, accel, rng) for accel in (4, 8)}
    return {"x0": x0, "maps": maps, "sigma": sigma, "k": k, "masks": masks, "train": train_idx, "test": test_idx}
