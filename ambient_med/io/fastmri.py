"""fastMRI-format HDF5 k-space (Zbontar et al., arXiv 1811.08839): a lazy reader and a writer.

Layout: ``kspace`` (slices, [coils,] kx, ky) complex64, ``kx`` the readout; optional
``reconstruction_rss`` / ``reconstruction_esc``, ``ismrmrd_header`` (ISMRMRD XML, bytes) and
attributes ``acquisition``, ``max``, ``norm``. Only the requested slice is read (an HDF5
hyperslab), so a 20-slice file costs one slice of I/O per item. The file is reopened for each
read, which keeps the reader picklable and safe in forked data-loader workers.

Readout oversampling: the ISMRMRD header gives ``encodedSpace`` and ``reconSpace`` matrix
sizes; when the encoded readout is larger (fastMRI knee: 640 vs 320) the slice is cropped
in image space along ``kx`` and transformed back, with the orthonormal FFT so the per-channel
noise std is unchanged. Zero-padded phase-encode columns (all coils, all ``kx`` exactly 0)
are detected; when they sit only at the edges they are cropped, which keeps the image noise
white (zero columns inside k-space mean undersampling and are left alone).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import h5py
import numpy as np

from ambient_med.errors import DataError
from ambient_med.mri.fft import fftc, ifftc


def parse_ismrmrd_matrix(header: bytes | str) -> dict[str, tuple[int, int, int]]:
    """``{"encoded": (x, y, z), "recon": (x, y, z)}`` matrix sizes from an ISMRMRD XML header."""
    root = ET.fromstring(header)
    out = {}
    for key, tag in (("encoded", "encodedSpace"), ("recon", "reconSpace")):
        node = next((e for e in root.iter() if e.tag.split("}")[-1] == tag), None)
        if node is None:
            continue
        ms = next(e for e in node.iter() if e.tag.split("}")[-1] == "matrixSize")
        vals = {c.tag.split("}")[-1]: int(c.text) for c in ms}
        out[key] = (vals.get("x", 0), vals.get("y", 0), vals.get("z", 1))
    return out


def crop_readout(kspace: np.ndarray, size: int, axis: int = -2) -> np.ndarray:
    """Crop the readout ``axis`` of centred k-space to ``size`` in image space (removes
    oversampling): ``F(crop(F^H k))``, orthonormal, so white noise keeps its std."""
    n = kspace.shape[axis]
    if size >= n:
        return kspace
    img = ifftc(kspace, axes=(axis,))
    start = (n - size) // 2
    img = np.take(img, np.arange(start, start + size), axis=axis)
    return fftc(img, axes=(axis,))


def acquired_columns(kspace: np.ndarray) -> np.ndarray:
    """Boolean mask over the last axis (phase encode): True where any sample is non-zero."""
    k = np.asarray(kspace)
    return np.any(k != 0, axis=tuple(range(k.ndim - 1)))


class FastMRIFile:
    """One fastMRI HDF5 file; ``len(f)`` slices, ``f.read(i)`` -> (C, kx, ky) complex64.

    Args:
        path: file path, or an open binary file object (read through directly, used by the
            lazy-read test to count bytes).
        crop_oversampling: ``"header"`` (from ``ismrmrd_header``, default), an int readout
            size, or None to keep the encoded matrix.
        crop_padding: crop zero-padded phase-encode columns found at the k-space edges.
    """

    kind = "kspace"

    def __init__(self, path: str | Path | IO[bytes], crop_oversampling: str | int | None = "header",
                 crop_padding: bool = True):
        self.fileobj = None if isinstance(path, (str, Path)) else path
        self.path = Path(path) if self.fileobj is None else Path(getattr(path, "name", "<fileobj>"))
        self.crop_padding = crop_padding
        try:
            with self._open() as f:
                if "kspace" not in f:
                    raise DataError(self.path, f"has no 'kspace' dataset (found {sorted(f.keys())})")
                ds = f["kspace"]
                if ds.ndim not in (3, 4):
                    raise DataError(self.path, f"'kspace' has rank {ds.ndim} (shape {ds.shape}); "
                                    "expected (slices, coils, kx, ky) or (slices, kx, ky)")
                if not np.issubdtype(ds.dtype, np.complexfloating):
                    raise DataError(self.path, f"'kspace' has dtype {ds.dtype}; expected complex")
                if ds.size == 0:
                    raise DataError(self.path, f"'kspace' is empty (shape {ds.shape})")
                self.raw_shape = tuple(ds.shape)
                self.attrs: dict[str, Any] = {k: _plain(v) for k, v in f.attrs.items()}
                header = f["ismrmrd_header"][()] if "ismrmrd_header" in f else None
        except OSError as e:
            raise DataError(self.path, f"is not a readable HDF5 file ({e})") from None
        self.multicoil = len(self.raw_shape) == 4
        self.matrix = parse_ismrmrd_matrix(header) if header is not None else {}
        self.readout = self._readout_size(crop_oversampling)

    def _open(self) -> h5py.File:
        return h5py.File(self.fileobj if self.fileobj is not None else self.path, "r")

    def _readout_size(self, crop) -> int:
        kx = self.raw_shape[-2]
        if crop is None:
            return kx
        if crop == "header":
            recon = self.matrix.get("recon")
            return min(kx, recon[0]) if recon and recon[0] > 0 else kx
        return min(kx, int(crop))

    def __len__(self) -> int:
        return self.raw_shape[0]

    @property
    def n_coils(self) -> int:
        return self.raw_shape[1] if self.multicoil else 1

    def read(self, index: int) -> np.ndarray:
        """Slice ``index`` as centred k-space (C, kx, ky) complex64, cropped as configured."""
        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: slice {index} out of range 0..{len(self) - 1}")
        with self._open() as f:
            k = np.asarray(f["kspace"][index])
        if not self.multicoil:
            k = k[None]
        if not np.all(np.isfinite(k)):
            raise DataError(self.path, f"slice {index} of 'kspace' has NaN or Inf values")
        if self.crop_padding:
            cols = np.flatnonzero(acquired_columns(k))
            if cols.size == 0:
                raise DataError(self.path, f"slice {index} of 'kspace' is all zeros")
            if cols.size == cols[-1] - cols[0] + 1:  # zeros only at the edges: padding
                k = k[..., cols[0] : cols[-1] + 1]
        return crop_readout(k, self.readout, axis=-2).astype(np.complex64, copy=False)

    def read_volume(self) -> np.ndarray:
        return np.stack([self.read(i) for i in range(len(self))])


def _plain(v):
    return v.item() if isinstance(v, np.generic) else (v.decode() if isinstance(v, bytes) else v)


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


def write_fastmri(path: str | Path, kspace: np.ndarray | Sequence[np.ndarray], *, header: str | None = None,
                  rss: np.ndarray | None = None, attrs: dict | None = None) -> Path:
    """Write multicoil k-space ``(slices, coils, kx, ky)`` in the public fastMRI layout.

    ``kspace`` is an array, or a sequence of ``(coils, kx, ky)`` slices written one at a time
    (large files without holding them in memory). ``header`` defaults to
    :func:`ismrmrd_header` of the k-space matrix; ``rss`` (``reconstruction_rss``) to the
    root-sum-of-squares of the coil images when ``kspace`` is an array; ``attrs`` are added to
    (or replace) ``acquisition``, ``max``, ``norm`` and ``patient_id``."""
    path = Path(path)
    first = np.asarray(kspace[0])
    shape = (len(kspace), *first.shape)
    if rss is None and isinstance(kspace, np.ndarray):
        rss = np.sqrt(np.sum(np.abs(ifftc(kspace)) ** 2, axis=1)).astype(np.float32)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("kspace", shape=shape, dtype=np.complex64)
        for i in range(shape[0]):
            ds[i] = first if i == 0 else np.asarray(kspace[i], dtype=np.complex64)
        if rss is not None:
            f.create_dataset("reconstruction_rss", data=np.asarray(rss, np.float32))
        f.create_dataset("ismrmrd_header", data=np.bytes_(header or ismrmrd_header(*shape[-2:])))
        base = {"acquisition": "SYNTHETIC", "patient_id": "synthetic",
                "max": float(np.max(rss)) if rss is not None else 0.0,
                "norm": float(np.linalg.norm(rss)) if rss is not None else 0.0}
        for key, value in {**base, **(attrs or {})}.items():
            f.attrs[key] = value
    return path
