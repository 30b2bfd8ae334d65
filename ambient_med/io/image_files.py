"""One image file in, one out: what ``denoise`` reads and writes. TIFF (tifffile; the first
series, grey saved as RGB read as one channel), PNG frames (8/16 bit), NIfTI (the affine kept),
NumPy ``.npy`` (no pickles), HDF5 (the dataset ``image``, or the only one). :func:`read_image`
returns the array and what writing it back in the same format and dtype needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

SUFFIXES = (".tif", ".tiff", ".png", ".nii", ".nii.gz", ".npy", ".h5", ".hdf5")


def suffix(p: Path) -> str:
    """The format suffix, ``.nii.gz`` whole."""
    n = p.name.lower()
    return ".nii.gz" if n.endswith(".nii.gz") else p.suffix.lower()


def read_image(path: Path) -> tuple[np.ndarray, dict]:
    """The array and what writing it back needs (NIfTI affine, HDF5 dataset name)."""
    suf = suffix(path)
    if not path.is_file():
        raise DataError(path, "does not exist")
    if suf not in SUFFIXES:
        raise DataError(path, f"unsupported format {suf or '(no suffix)'}; use one of {', '.join(SUFFIXES)}")
    try:
        if suf in (".tif", ".tiff"):
            x = _read_tiff(path)
            return x, {"dtype": x.dtype}
        if suf == ".png":
            return _read_png(path)
        if suf in (".nii", ".nii.gz"):
            import nibabel as nib

            img = nib.load(str(path))
            return np.asarray(img.dataobj), {"affine": img.affine}
        if suf == ".npy":
            return np.load(path, allow_pickle=False), {}
        import h5py

        with h5py.File(path, "r") as f:
            names = [k for k in f if isinstance(f[k], h5py.Dataset)]
            key = "image" if "image" in names else (names[0] if len(names) == 1 else None)
            if key is None:
                raise DataError(path, f"HDF5 file has datasets {names}; name the image 'image'")
            return np.asarray(f[key]), {"key": key}
    except DataError:
        raise
    except Exception as e:  # each reader raises its own types for corrupt files
        raise DataError(path, f"is not a readable {suf} file ({str(e).splitlines()[0]})") from None


def _read_tiff(path: Path) -> np.ndarray:
    """The first series of a TIFF; RGB samples (axis ``S``) as one grey channel, or refused
    (:func:`~ambient_med.io.microscopy.one_channel_of_rgb`)."""
    import tifffile

    from .microscopy import _quiet_tifffile, one_channel_of_rgb

    with _quiet_tifffile(), tifffile.TiffFile(path) as tf:
        if not tf.series:
            raise DataError(path, "TIFF holds no image series")
        axes, x = tf.series[0].axes, np.asarray(tf.series[0].asarray())
    if "S" in axes and x.shape[axes.index("S")] > 1:
        x = one_channel_of_rgb(path, x, axes.index("S"), f"axes {axes!r}, shape {x.shape}")
    return x


def _read_png(path: Path) -> tuple[np.ndarray, dict]:
    """A PNG frame (8 or 16 bit; grey saved as RGB read as one channel) and its dtype, so that
    the denoised frame is written back in it."""
    from PIL import Image

    from .microscopy import one_channel_of_rgb

    with Image.open(path) as im:
        x = np.asarray(im)
    if x.ndim == 3:
        x = one_channel_of_rgb(path, x, -1, f"axes 'YXS', shape {x.shape}")
    return x, {"dtype": x.dtype}


def write_image(path: Path, x: np.ndarray, meta: dict, keep_dtype: bool = True) -> Path:
    """Write ``x`` in ``path``'s format with what :func:`read_image` returned in ``meta``. PNG and
    TIFF keep the input's integer type (rounded, clipped to its range) when ``keep_dtype`` (a
    denoised image or a sample); ``keep_dtype=False`` writes float32 (a std map: integer steps
    would round it away). PNG holds integers only."""
    suf = suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dt = np.dtype(meta.get("dtype", np.float32))
    if suf == ".png":
        from PIL import Image

        dt = dt if dt.kind in "ui" else np.dtype(np.uint16)
        Image.fromarray(_to_integer(x, dt)).save(path)
        return path
    if suf in (".tif", ".tiff"):
        import tifffile

        x = _to_integer(x, dt) if keep_dtype and dt.kind in "ui" else x.astype(np.float32)
        tifffile.imwrite(path, x, photometric="minisblack")
    elif suf in (".nii", ".nii.gz"):
        import nibabel as nib

        nib.save(nib.Nifti1Image(x.astype(np.float32), meta.get("affine", np.eye(4))), str(path))
    elif suf == ".npy":
        np.save(path, x.astype(np.float32))
    else:
        import h5py

        with h5py.File(path, "w") as f:
            f.create_dataset(meta.get("key", "image"), data=x.astype(np.float32))
    return path


def _to_integer(x: np.ndarray, dt: np.dtype) -> np.ndarray:
    info = np.iinfo(dt)
    return np.clip(np.rint(x), info.min, info.max).astype(dt)
