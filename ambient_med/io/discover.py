"""Files, folders and globs -> one list of data sources.

Supported suffixes: ``.h5``/``.hdf5`` (fastMRI k-space), ``.cfl``/``.hdr`` (BART k-space),
``.nii``/``.nii.gz`` (magnitude volumes), ``.npy``/``.npz`` (image arrays), ``.tif``/``.tiff``/
``.ome.tif`` (microscopy stacks). A folder that holds ``.png`` files is one source, a stack of
frames (:class:`ambient_med.io.microscopy.FrameFolderSource`; pass a folder of 2D TIFF frames
to :func:`open_source` directly to read it the same way). Folders are searched recursively;
glob patterns are expanded; the result is sorted and de-duplicated. Volumes of
different sizes and coil counts are fine: every source reports its own shape per item.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from ambient_med.errors import DataError
from ambient_med.io.fastmri import FastMRIFile
from ambient_med.io.microscopy import FrameFolderSource, TiffSource
from ambient_med.io.volumes import CflSource, nifti_source, numpy_source

SUFFIXES = (".h5", ".hdf5", ".cfl", ".nii", ".nii.gz", ".npy", ".npz", ".tif", ".tiff")


def _suffix(p: Path) -> str:
    name = p.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else p.suffix.lower()


def discover(paths: str | Path | list[str | Path]) -> list[Path]:
    """Expand files, folders (recursive) and glob patterns into a sorted list of data files."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: set[Path] = set()
    for p in paths:
        s = os.fspath(p)
        if glob.has_magic(s):
            matches = [Path(m) for m in glob.glob(s, recursive=True)]
            if not matches:
                raise DataError(s, "glob pattern matches no files")
        else:
            matches = [Path(s)]
        for m in matches:
            if m.is_dir():
                hits = [f for f in m.rglob("*") if f.is_file() and _suffix(f) in SUFFIXES]
                frame_dirs = {f.parent for f in m.rglob("*.png") if f.is_file()}
                hits = [f for f in hits if f.parent not in frame_dirs] + sorted(frame_dirs)
                if not hits:
                    raise DataError(m, f"folder holds no supported files {SUFFIXES}")
                found.update(f.with_suffix(".cfl") if _suffix(f) == ".hdr" else f for f in hits)
            elif m.suffix.lower() == ".hdr" and m.with_suffix(".cfl").exists():
                found.add(m.with_suffix(".cfl"))
            elif not m.exists():
                raise DataError(m, "does not exist")
            elif _suffix(m) not in SUFFIXES + (".hdr",) and not glob.has_magic(s):
                found.add(m)  # explicit file of unknown type: let open_source give the error
            elif _suffix(m) in SUFFIXES:
                found.add(m)
    if not found:
        raise DataError(None, f"no supported data files in {list(map(str, paths))}")
    return sorted(found)


def open_source(path: str | Path, spatial_dims: int = 2, **options):
    """Open one file as a source with ``kind``, ``len()``, ``read(i)``, ``n_coils``.

    ``options`` go to the format reader (``crop_oversampling``, ``crop_padding`` for HDF5;
    ``n_coils`` for NIfTI; ``key`` for ``.npz``).
    """
    p = Path(path)
    if p.is_dir():
        return FrameFolderSource(p, spatial_dims)
    if not p.exists() and not (_suffix(p) == ".cfl" and p.with_suffix(".hdr").exists()):
        raise DataError(p, "does not exist")
    suf = _suffix(p)
    if suf in (".cfl", ".hdr"):
        return CflSource(p, spatial_dims)
    if suf in (".nii", ".nii.gz"):
        return nifti_source(p, spatial_dims, options.get("n_coils"))
    if suf in (".npy", ".npz"):
        return numpy_source(p, spatial_dims, options.get("key"))
    if suf in (".tif", ".tiff"):
        return TiffSource(p, spatial_dims)
    if p.stat().st_size == 0:
        raise DataError(p, "is empty (0 bytes)")
    # .h5, .hdf5 and anything unrecognised: try HDF5, which gives a clear "not HDF5" error.
    if spatial_dims != 2:
        raise DataError(p, "fastMRI HDF5 holds 2D slices; use spatial_dims=2")
    return FastMRIFile(p, **{k: v for k, v in options.items() if k in ("crop_oversampling", "crop_padding")})
