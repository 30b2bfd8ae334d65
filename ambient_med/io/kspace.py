"""Undersampled k-space in, reconstructions out (the files of ``ambient-med recon``). Every problem with an input is a :class:`~ambient_med.errors.DataError` naming
the file (the CLI turns it into one line and exit code 2).

Inputs:

- fastMRI-style HDF5: ``kspace`` ``(slices, coils, kx, ky)`` (multi-coil) or ``(slices, kx, ky)``
  (single-coil), zero-filled where not acquired, and a ``mask`` dataset broadcastable to it
  (fastMRI stores ``(ky,)``). Without ``mask`` (or with ``mask_path``) see below.
- BART ``.cfl``/``.hdr`` k-space ``(X, Y, Z, coils)`` (:class:`ambient_med.io.volumes.CflSource`):
  one slice.

The mask comes from, in order: ``mask_path`` (``.npy`` or BART ``.cfl``, real 0/1), the HDF5
``mask`` dataset, else zero-filled detection: the phase-encode lines (last axis) that are non-zero
in some slice, coil and readout sample.

Outputs by suffix of ``out``: ``.h5`` (datasets ``reconstruction_mean`` complex64
``(slices, kx, ky)`` and ``reconstruction_std`` float32), ``.npy`` (``X.npy`` the complex mean,
``X_std.npy`` the std), ``.nii``/``.nii.gz`` (``X.nii.gz`` the magnitude of the mean, ``X_std.nii.gz``
the std; NIfTI viewers do not show complex data; identity affine, axes ``(kx, ky, slice)``).
The std map is that of the complex value, ``sqrt(Var[Re] + Var[Im])`` per voxel, data units.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ambient_med.errors import DataError


def _check_kspace(path: Path, k: np.ndarray) -> np.ndarray:
    if not np.issubdtype(k.dtype, np.complexfloating):
        raise DataError(path, f"k-space has dtype {k.dtype}; expected complex")
    if k.size == 0:
        raise DataError(path, f"k-space is empty (shape {k.shape})")
    if not np.all(np.isfinite(k)):
        raise DataError(path, "k-space has NaN or Inf values")
    return k.astype(np.complex64, copy=False)


def detect_mask(k: np.ndarray) -> np.ndarray:
    """Zero-filled detection: acquired phase-encode lines (last axis) of ``(N, C, kx, ky)``."""
    return np.any(k != 0, axis=tuple(range(k.ndim - 1))).astype(np.float32)


def _read_mask_file(path: Path) -> np.ndarray:
    from ambient_med.io.volumes import read_cfl

    if not path.exists() and not (path.suffix in (".cfl", ".hdr") or
                                  path.with_suffix(".cfl").exists()):
        raise DataError(path, "mask file not found")
    try:
        m = np.asarray(read_cfl(path, mmap=False)) if path.suffix in (".cfl", ".hdr") else np.load(path)
    except (OSError, ValueError) as e:
        raise DataError(path, f"is not a readable .npy or BART mask ({e})") from None
    if np.iscomplexobj(m):
        if np.any(m.imag != 0):
            raise DataError(path, "the mask has imaginary values; expected real 0/1")
        m = m.real
    return np.asarray(m, dtype=np.float32)


def read_undersampled(path: str | Path, mask_path: str | Path | None = None
                      ) -> tuple[np.ndarray, np.ndarray, str]:
    """``(kspace (N, C, kx, ky) complex64, mask, where the mask came from)``. The mask is read
    as given; :func:`ambient_med.recon.prior_glue.broadcast_mask` checks it against the k-space."""
    path = Path(path)
    if not path.exists() and not (path.suffix in (".cfl", ".hdr") and
                                  path.with_suffix(".cfl").exists()):
        raise DataError(path, "does not exist")
    hmask = None
    if path.is_dir() or path.name.lower().endswith((".tif", ".tiff", ".png", ".nii", ".nii.gz", ".npy")):
        raise DataError(path, "holds images, not k-space: recon reads undersampled k-space (fastMRI-style "
                              ".h5 with 'kspace', or BART .cfl); to denoise an image use 'ambient-med denoise'")
    if path.suffix in (".cfl", ".hdr"):
        from ambient_med.io.volumes import CflSource

        src = CflSource(path)
        if src.spatial_dims != 2:
            raise DataError(path, f"has {src.spatial_dims} spatial axes; recon supports 2-D slices")
        k = _check_kspace(path, src.read(0)[None])
    else:
        try:
            with h5py.File(path, "r") as f:
                if "kspace" not in f:
                    raise DataError(path, f"has no 'kspace' dataset (found {sorted(f.keys())})")
                k = np.asarray(f["kspace"][()])
                if "mask" in f:
                    hmask = np.asarray(f["mask"][()], dtype=np.float32)
        except OSError as e:
            raise DataError(path, f"is not a readable HDF5 file ({e})") from None
        if k.ndim == 3:
            k = k[:, None]
        if k.ndim != 4:
            raise DataError(path, f"'kspace' has rank {k.ndim} (shape {k.shape}); expected "
                                  "(slices, coils, kx, ky) or (slices, kx, ky)")
        k = _check_kspace(path, k)
    if mask_path is not None:
        mask, where = _read_mask_file(Path(mask_path)), str(mask_path)
    elif hmask is not None:
        mask, where = hmask, f"{path}:mask"
    else:
        mask, where = detect_mask(k), "zero-filled detection"
    return k, mask, where


def output_paths(out: str | Path) -> tuple[Path, Path | None]:
    """``(mean file, std file or None when the mean file holds both)``."""
    out = Path(out)
    name = out.name
    if name.endswith(".h5"):
        return out, None
    if name.endswith(".npy"):
        return out, out.with_name(name[:-4] + "_std.npy")
    for suf in (".nii.gz", ".nii"):
        if name.endswith(suf):
            return out, out.with_name(name[: -len(suf)] + "_std" + suf)
    raise DataError(out, "unknown output type: use a .h5, .npy, .nii or .nii.gz name")


def write_reconstruction(out: str | Path, mean: np.ndarray, std: np.ndarray, *,
                         overwrite: bool = False, attrs: dict | None = None) -> list[Path]:
    """Write ``mean`` (N, kx, ky) complex and ``std`` (N, kx, ky) real; refuses to replace
    existing files unless ``overwrite``. Each file is written to a temporary name, then renamed."""
    main, extra = output_paths(out)
    paths = [p for p in (main, extra) if p is not None]
    for p in paths:
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists")
    main.parent.mkdir(parents=True, exist_ok=True)
    mean = np.asarray(mean, dtype=np.complex64)
    std = np.asarray(std, dtype=np.float32)

    def tmp(p: Path) -> Path:
        return p.with_name(".tmp-" + p.name)

    if extra is None:
        with h5py.File(tmp(main), "w") as f:
            f.create_dataset("reconstruction_mean", data=mean)
            f.create_dataset("reconstruction_std", data=std)
            for k, v in (attrs or {}).items():
                f.attrs[k] = v
    elif main.name.endswith(".npy"):
        with open(tmp(main), "wb") as fh:
            np.save(fh, mean)
        with open(tmp(extra), "wb") as fh:
            np.save(fh, std)
    else:
        import nibabel as nib

        for p, a in ((main, np.abs(mean)), (extra, std)):
            vol = np.ascontiguousarray(np.moveaxis(a.astype(np.float32), 0, -1))  # (kx, ky, N)
            nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp(p)))
    for p in paths:
        tmp(p).replace(p)
    return paths
