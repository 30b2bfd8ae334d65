"""Image and raw-array volumes: BART ``.cfl/.hdr``, NIfTI (nibabel), NumPy ``.npy/.npz``.

Each source presents items ``read(i)`` as channel-first arrays ``(C, *spatial)``:
2D slices ``(C, H, W)`` when ``spatial_dims == 2``, whole volumes ``(C, D, H, W)`` for 3D.

BART format (Uecker et al., BART toolbox): ``name.hdr`` is text, a ``# Dimensions`` line of
up to 16 sizes ``[READ, PHS1, PHS2, COIL, MAPS, ...]``; ``name.cfl`` is the raw complex64
array in Fortran (column-major) order.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ambient_med.errors import DataError


def _cfl_base(path: str | Path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".cfl", ".hdr") else p


def read_cfl_dims(path: str | Path) -> tuple[int, ...]:
    """Dimensions from a BART ``.hdr`` (trailing singleton dims dropped, at least 1 kept)."""
    hdr = _cfl_base(path).with_suffix(".hdr")
    try:
        lines = hdr.read_text().splitlines()
        dims = [int(v) for v in lines[lines.index("# Dimensions") + 1].split()]
    except FileNotFoundError:
        raise DataError(hdr, "BART header not found") from None
    except (ValueError, IndexError):
        raise DataError(hdr, "is not a BART header (no '# Dimensions' line of integers)") from None
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return tuple(dims)


def read_cfl(path: str | Path, mmap: bool = True) -> np.ndarray:
    """Read a BART array as complex64 with its BART dimension order (Fortran layout)."""
    base = _cfl_base(path)
    dims = read_cfl_dims(base)
    cfl = base.with_suffix(".cfl")
    n = int(np.prod(dims))
    if not cfl.exists():
        raise DataError(cfl, "BART data file not found")
    if cfl.stat().st_size != 8 * n:
        raise DataError(cfl, f"has {cfl.stat().st_size} bytes; header dims {dims} need {8 * n}")
    if n == 0:
        raise DataError(cfl, f"is empty (dims {dims})")
    if mmap:
        return np.memmap(cfl, dtype=np.complex64, mode="r", shape=dims, order="F")
    return np.fromfile(cfl, dtype=np.complex64, count=n).reshape(dims, order="F")


def write_cfl(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as BART ``path.cfl`` + ``path.hdr`` (complex64, Fortran order)."""
    base = _cfl_base(path)
    a = np.asarray(array, dtype=np.complex64)
    dims = list(a.shape) + [1] * max(0, 16 - a.ndim)
    base.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(map(str, dims)) + " \n")
    a.ravel(order="F").tofile(base.with_suffix(".cfl"))


def _check_finite(path: Path, x: np.ndarray, where: str) -> np.ndarray:
    if x.size == 0:
        raise DataError(path, f"{where} is empty (shape {x.shape})")
    if not np.all(np.isfinite(x)):
        raise DataError(path, f"{where} has NaN or Inf values")
    return x


class CflSource:
    """BART k-space ``(X, Y, Z, C)``: one item ``(C, *spatial)`` whose spatial axes are the
    non-singleton ones of ``X, Y, Z`` (2D data is often stored as ``1 x Y x Z``). Higher BART
    dims (maps, time, ...) must be singleton; the reader refuses them.
    """

    kind = "kspace"

    def __init__(self, path: str | Path, spatial_dims: int = 2):
        self.path = _cfl_base(path).with_suffix(".cfl")
        self.data = read_cfl(path)
        d = self.data.shape + (1,) * max(0, 4 - self.data.ndim)
        if len(d) > 4:
            raise DataError(self.path, f"has BART dims {self.data.shape}; only (X, Y, Z, coils) is supported")
        self.dims = d
        self.spatial = tuple(n for n in d[:3] if n > 1)
        self.spatial_dims = len(self.spatial)
        if self.spatial_dims < 2:
            raise DataError(self.path, f"has BART dims {self.data.shape}: fewer than 2 spatial axes")

    def __len__(self) -> int:
        return 1

    @property
    def n_coils(self) -> int:
        return self.dims[3]

    def read(self, index: int = 0) -> np.ndarray:
        x = np.asarray(self.data).reshape(self.dims, order="F")
        x = np.moveaxis(x, 3, 0).reshape(self.n_coils, *self.spatial)
        return _check_finite(self.path, np.ascontiguousarray(x, dtype=np.complex64), "k-space")

    def read_volume(self) -> np.ndarray:
        return self.read(0)


class ArraySource:
    """A real or complex image array ``(..., H, W)`` (2D items) or ``(..., D, H, W)`` (3D items),
    one channel; leading axes index the items. ``kind``: complex for complex dtypes, else
    ``default_kind`` (magnitude for NIfTI, intensity for NumPy)."""

    def __init__(self, path: Path, array, spatial_dims: int, default_kind: str, n_coils: int | None = None):
        self.path, self.array, self.spatial_dims = path, array, spatial_dims
        shape = tuple(array.shape)
        if len(shape) < spatial_dims:
            raise DataError(path, f"has shape {shape}; need at least {spatial_dims} spatial dims")
        if 0 in shape:
            raise DataError(path, f"is empty (shape {shape})")
        self.item_shape = shape[len(shape) - spatial_dims:]
        self.lead = shape[: len(shape) - spatial_dims]
        self.kind = "complex" if np.issubdtype(np.dtype(array.dtype), np.complexfloating) else default_kind
        self.n_coils = n_coils

    def __len__(self) -> int:
        return int(np.prod(self.lead, dtype=int))

    def read(self, index: int) -> np.ndarray:
        idx = np.unravel_index(index, self.lead) if self.lead else ()
        x = self._load(tuple(int(i) for i in idx))
        dtype = np.complex64 if self.kind == "complex" else np.float32
        return _check_finite(self.path, x.astype(dtype)[None], f"item {index}")

    def read_volume(self) -> np.ndarray:
        return _check_finite(self.path, self._load(...), "volume")

    def _load(self, sel) -> np.ndarray:
        """Read lazily stored data; a truncated or corrupt file fails here, not on opening."""
        try:
            return np.asarray(self.array[sel])
        except (EOFError, OSError, ValueError, zlib.error) as e:
            raise DataError(self.path, f"is truncated or corrupt: reading its data failed ({e})") from None


class _NiftiView:
    """Present a NIfTI (X, Y, Z, ...) as (..., Z, X, Y)-style lead+spatial axes for slicing.

    2D items are axial slices ``(X, Y)`` at each ``Z`` (and each later index); 3D items are
    ``(X, Y, Z)`` volumes. Slicing goes through nibabel's array proxy, which reads only the
    requested part of uncompressed files.
    """

    def __init__(self, img, spatial_dims: int):
        self.proxy, self.sd = img.dataobj, spatial_dims
        s = img.shape
        if len(s) < spatial_dims:
            raise ValueError(f"shape {s} has fewer than {spatial_dims} dims")
        self.extra = s[3:] if len(s) > 3 else ()
        if spatial_dims == 2:
            self.shape = (*self.extra, *(s[2:3] if len(s) > 2 else ()), s[0], s[1])
        else:
            self.shape = (*self.extra, *s[:3])
        self.dtype = img.get_data_dtype()

    def __getitem__(self, idx):
        if idx is Ellipsis:
            return np.asarray(self.proxy)
        idx = tuple(idx)
        extra, rest = idx[: len(self.extra)], idx[len(self.extra):]
        if self.sd == 2:
            z = rest[0] if rest else 0
            return np.asarray(self.proxy[(slice(None), slice(None), z, *extra)])
        return np.asarray(self.proxy[(slice(None), slice(None), slice(None), *extra)])


def nifti_source(path: Path, spatial_dims: int = 2, n_coils: int | None = None) -> ArraySource:
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises several types for corrupt files
        raise DataError(path, f"is not a readable NIfTI file ({e})") from None
    try:
        view = _NiftiView(img, spatial_dims)
    except ValueError as e:
        raise DataError(path, str(e)) from None
    return ArraySource(path, view, spatial_dims, "magnitude", n_coils)


def numpy_source(path: Path, spatial_dims: int = 2, key: str | None = None) -> ArraySource:
    try:
        if path.suffix == ".npz":
            with np.load(path) as z:
                names = list(z.keys())
                if not names:
                    raise DataError(path, "is an empty .npz archive")
                arr = z[key or ("data" if "data" in names else names[0])]
        else:
            arr = np.load(path, mmap_mode="r")
    except DataError:
        raise
    except Exception as e:
        raise DataError(path, f"is not a readable NumPy file ({e})") from None
    if arr.dtype.kind not in "fciub":
        raise DataError(path, f"has dtype {arr.dtype}; expected numbers")
    return ArraySource(path, arr, spatial_dims, "intensity")
