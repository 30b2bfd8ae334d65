"""The classical baselines of the MRI benchmarks: SENSE by conjugate gradients and L1-wavelet
(sigpy), with their regularisation tuned on training slices."""

from __future__ import annotations

import numpy as np
import torch

from ambient_med.mri.operators import SenseOp
from ambient_med.recon.cg import cg

from .scoring import psnr


def sense_cg(ku: np.ndarray, maps: np.ndarray, mask: np.ndarray, lam: float,
             iters: int = 30) -> np.ndarray:
    """SENSE: ``(A^H A + lam I) x = A^H y`` by the package's CG (``recon.cg``), complex (H, W)."""
    op = SenseOp(torch.from_numpy(maps)[None], torch.from_numpy(mask.astype(np.float32)))
    b = op.H(torch.from_numpy(ku)[None])
    x, _ = cg(lambda v: op.normal(v) + lam * v, b, iters=iters, tol=1e-8)
    return x[0].numpy()


def l1_wavelet(ku: np.ndarray, maps: np.ndarray, mask: np.ndarray, lam: float,
               iters: int = 100) -> np.ndarray:
    """sigpy's L1-wavelet reconstruction (db4), ``lamda = lam``, ``iters`` iterations."""
    import sigpy.mri.app as app

    w = np.broadcast_to(mask, ku.shape[-2:]).astype(np.float32)
    return np.asarray(app.L1WaveletRecon(ku, maps, lam, weights=w, max_iter=iters,
                                         show_pbar=False).run())


ALPHAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)        # L1-wavelet lamda = alpha * sigma
BETAS = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0)             # SENSE lam = beta * sigma^2 / q^2


def tune(ks: np.ndarray, x0s: np.ndarray, maps: np.ndarray, mask: np.ndarray, sigma: float,
         q: float) -> dict:
    """Pick ``alpha`` and ``beta`` by mean PSNR on training slices."""
    out = {}
    for name, grid, fn in (("alpha", ALPHAS, lambda k, a: l1_wavelet(k, maps, mask, a * sigma)),
                           ("beta", BETAS, lambda k, b: sense_cg(k, maps, mask, b * sigma**2 / q**2))):
        scores = {g: float(np.mean([psnr(fn(k * mask, g), x) for k, x in zip(ks, x0s)])) for g in grid}
        out[name] = max(scores, key=scores.get)
        out[name + "_scores"] = {str(g): s for g, s in scores.items()}
    return out
