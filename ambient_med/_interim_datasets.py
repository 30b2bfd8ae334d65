"""STOPGAP for issue 3's ``ambient_med.datasets.build_training_set`` (same signature and
``DatasetInfo`` fields). ``ambient_med.run`` uses the real module whenever it exists; delete
this file once ``datasets.py`` is merged.

Minimal pipeline, all in memory: discover files -> read every item -> (k-space) estimate the
coil covariance on the middle slice, whiten, low-resolution coil maps, complex coil combine ->
2 real channels (complex) or 1 (real) -> one intensity scale ``s`` (99.5th percentile of the
magnitude) -> ``sigma_n`` in model space ``sigma_n_data / s``. ``patch_size`` centre-crops.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import DataError, NoiseEstimateError
from .io.discover import discover, open_source
from .mri.coils import coil_combine, normalize_maps, whiten, whitening_matrix
from .mri.complex import complex_to_channels
from .mri.fft import fftc, ifftc
from .noise import from_image_wavelet, from_kspace, from_magnitude
from .train import TensorDataset


@dataclass
class DatasetInfo:
    files: list[str]
    kind: str
    channels: int
    spatial_dims: int
    shape: list[int]
    scale: float
    sigma_n_data: float
    sigma_n_model: float
    noise_method: str
    noise_uncertainty: float
    sigma_data: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def lowres_maps(coil_images_k: np.ndarray, width: int = 12) -> np.ndarray:
    """Coil maps from a Hann-windowed k-space centre: smooth, normalised ``sum |S_c|^2 = 1``."""
    c, kx, ky = coil_images_k.shape
    wx = np.hanning(min(width, kx) + 2)[1:-1]
    wy = np.hanning(min(width, ky) + 2)[1:-1]
    win = np.zeros((kx, ky))
    x0, y0 = kx // 2 - len(wx) // 2, ky // 2 - len(wy) // 2
    win[x0:x0 + len(wx), y0:y0 + len(wy)] = np.outer(wx, wy)
    return normalize_maps(ifftc(coil_images_k * win)).astype(np.complex64)


def kspace_to_image(k: np.ndarray, W: np.ndarray, coil_maps: bool = True) -> np.ndarray:
    """Whitened, coil-combined image of one slice (complex with maps, RSS magnitude without)."""
    kw = whiten(k, W)
    imgs = ifftc(kw)
    if not coil_maps:
        return coil_combine(imgs, None).astype(np.float32)
    return coil_combine(imgs, lowres_maps(kw)).astype(np.complex64)


def _center_crop(x: np.ndarray, size) -> np.ndarray:
    sl = []
    for n, p in zip(x.shape[-len(size):], size):
        if p > n:
            raise DataError(None, f"patch_size {list(size)} is larger than the images {list(x.shape[-len(size):])}")
        sl.append(slice((n - p) // 2, (n - p) // 2 + p))
    return x[(..., *sl)]


def build_training_set(paths, *, sigma_n="auto", kind="auto", spatial_dims=2, patch_size=None,
                       cache_dir=None, coil_maps=True, num_workers=0):
    files = discover(paths)
    images, methods, sigmas, uncs, kinds = [], [], [], [], set()
    for f in files:
        src = open_source(f, spatial_dims=spatial_dims)
        if len(src) == 0:
            raise DataError(f, "holds no images")
        if kind != "auto" and src.kind != kind:
            raise DataError(f, f"holds {src.kind} data but the protocol expects {kind} data")
        if src.kind == "kspace":
            est = from_kspace(src.read(len(src) // 2)) if sigma_n == "auto" else None
            cov = est.covariance if est is not None else None
            W = whitening_matrix(cov) if cov is not None else np.eye(src.n_coils)
            items = [kspace_to_image(src.read(i), W, coil_maps) for i in range(len(src))]
            kinds.add("complex" if coil_maps else "magnitude")
        else:
            items = [src.read(i)[0] for i in range(len(src))]
            est = None
            if sigma_n == "auto":
                vol = np.stack(items)
                est = (from_magnitude(vol, n_coils=src.n_coils or 1) if src.kind == "magnitude"
                       else from_image_wavelet(vol, axes=tuple(range(1, vol.ndim))))
            kinds.add(src.kind)
        for x in items:
            if x.ndim != spatial_dims:
                raise DataError(f, f"items have {x.ndim} spatial dims; the protocol expects {spatial_dims}")
        if est is not None:
            methods.append(est.method)
            sigmas.append(est.sigma)
            uncs.append(est.uncertainty)
        images.extend(items)
    if not images:
        raise DataError(None, "the dataset is empty")
    if len(kinds) > 1:
        raise DataError(None, f"files mix data kinds {sorted(kinds)}")
    data_kind = kinds.pop()
    if patch_size:
        images = [_center_crop(x, patch_size) for x in images]
    shapes = {x.shape for x in images}
    if len(shapes) > 1:
        raise DataError(None, f"images have different shapes {sorted(shapes)}; set data.patch_size")
    arr = np.stack(images)
    x = complex_to_channels(arr[:, None], dim=1) if np.iscomplexobj(arr) else arr[:, None]
    if not np.all(np.isfinite(x)):
        raise DataError(files[0] if len(files) == 1 else None, "data has NaN or Inf values")
    mag = np.abs(arr)
    scale = float(np.percentile(mag, 99.5))
    if not scale > 0:
        raise DataError(files[0] if len(files) == 1 else None, "data is all zeros")
    if sigma_n == "auto":
        sn_data = float(np.sqrt(np.mean(np.square(sigmas))))
        method, unc = "; ".join(sorted(set(methods))), float(np.max(uncs))
    else:
        sn_data, method, unc = float(sigma_n), "given", 0.0
    y = torch.from_numpy(np.ascontiguousarray(x / scale, dtype=np.float32))
    sn_model = sn_data / scale
    sd = float(np.sqrt(max(float(y.var()) - sn_model**2, 1e-4)))
    info = DatasetInfo([str(p) for p in files], data_kind, y.shape[1], spatial_dims,
                       list(y.shape[2:]), scale, sn_data, sn_model, method, unc, sd)
    return TensorDataset(y, sn_model), info


__all__ = ["build_training_set", "DatasetInfo", "NoiseEstimateError"]
