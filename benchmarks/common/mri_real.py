"""The real k-space of the MRI benchmark (``mri_recon.py``): ESPIRiT's fully sampled 8-coil brain,
retrospectively undersampled, and BART's Poisson-disc brain, coil-whitened and cropped to the
priors' pixel size, with their references and coil maps."""

from __future__ import annotations

import numpy as np

from ambient_med.mri.fft import fftc, ifftc

from .mni import BOX_MM, combine, line_mask
from .paths import MRI_DATA
from .scoring import psnr, ssim

ESPIRIT = MRI_DATA / "espirit_brain_8coil" / "full"
BART_KSP = MRI_DATA / "bart_brain_8coil" / "ksp"
BART_IMG = MRI_DATA / "bart_brain_8coil" / "img"


def real_size(size: int) -> tuple[int, int]:
    """The crop of the ~1 mm 230 x 180 k-space that gives the priors' pixel size
    (``BOX_MM / size`` mm), rounded to multiples of 4 (the network's size multiple)."""
    px = BOX_MM / size
    return tuple(max(4 * int(round(n / px / 4)), 8) for n in (230, 180))


def crop_centre(k: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The centre ``shape`` of the last two axes."""
    h, w = k.shape[-2:]
    i, j = h // 2 - shape[0] // 2, w // 2 - shape[1] // 2
    return k[..., i:i + shape[0], j:j + shape[1]]


def whitened(k: np.ndarray) -> tuple[np.ndarray, float, dict]:
    """Coil-whitened k-space (C, H, W) and its sigma per real channel (noise.from_kspace)."""
    from ambient_med.mri.coils import whiten, whitening_matrix
    from ambient_med.noise.estimate import from_kspace

    est = from_kspace(k)
    w = whitening_matrix(est.covariance, est.sigma)
    info = {"sigma": est.sigma, "n_noise_samples": int(est.details["n_samples"]),
            "max_coil_correlation": float(np.max(est.details["correlation"] - np.eye(k.shape[0])))}
    return whiten(k, w).astype(np.complex64), est.sigma, info


def real_problems(args, rng) -> dict:
    """{name: dict(ku, mask, maps, ref, sigma, magnitude_fit)} in whitened k-space units."""
    from ambient_med.io.volumes import read_cfl
    from ambient_med.mri.coils import espirit_maps

    shape = real_size(args.size)
    probs = {}
    full = np.moveaxis(np.asarray(read_cfl(ESPIRIT, mmap=False))[0], -1, 0)    # (8, 230, 180)
    kw, sig, info = whitened(full)
    kc = crop_centre(kw, shape)
    maps = espirit_maps(kc, calib_width=min(24, shape[1]), fill=False)
    ref = combine(kc, maps)
    for accel in (4, 8):
        mask = line_mask(shape[1], accel, rng)
        probs[f"real_espirit_R{accel}"] = dict(ku=kc * mask, mask=mask, maps=maps, ref=ref, sigma=sig,
                                               fit=False, info={**info, "shape": list(shape),
                                                                "sampled": float(mask.mean())})
    ksp = np.moveaxis(np.asarray(read_cfl(BART_KSP, mmap=False))[0], -1, 0)     # (8, 180, 230)
    kw, sig, info = whitened(ksp)
    bshape = (shape[1], shape[0])
    kc = crop_centre(kw, bshape)
    mask = (np.abs(kc) > 0).any(0).astype(np.float32)
    cw = calib_square(mask)
    maps = espirit_maps(kc, calib_width=cw, fill=False)
    img = np.asarray(read_cfl(BART_IMG, mmap=False))[0, :, :, 0, :]              # (180, 230, 2)
    low = ifftc(crop_centre(fftc(np.moveaxis(img, -1, 0)), bshape))              # (2, h, w)
    ref = np.sqrt(np.sum(np.abs(low) ** 2, 0)).astype(np.float32)
    probs["real_bart_poisson"] = dict(ku=kc * mask, mask=mask, maps=maps, ref=ref, sigma=sig, fit=True,
                                      info={**info, "shape": list(bshape), "sampled": float(mask.mean()),
                                            "calib_width": cw,
                                            "sampled_uncropped": float((np.abs(ksp) > 0).any(0).mean())})
    return probs


def calib_square(mask: np.ndarray) -> int:
    """Width of the largest fully sampled square at the k-space centre."""
    h, w = mask.shape
    best = 0
    for c in range(2, min(h, w) + 1):
        i, j = h // 2 - c // 2, w // 2 - c // 2
        if mask[i:i + c, j:j + c].all():
            best = c
        else:
            break
    return best


def real_score(est: np.ndarray, ref: np.ndarray, fit: bool) -> dict:
    """PSNR and SSIM of the magnitude, peak ``max |ref|`` (``fit``: after a least-squares scale)."""
    a, r = np.abs(est), np.abs(ref)
    if fit:          # least-squares scale of the magnitude
        a = a * float(np.sum(a * r) / max(np.sum(a * a), 1e-30))
    peak = float(r.max())
    return {"psnr": psnr(a, r, peak), "ssim": ssim(a, r, peak)}
