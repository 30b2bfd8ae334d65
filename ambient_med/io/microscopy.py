"""Microscopy readers: TIFF / OME-TIFF stacks (tifffile) and folders of PNG or TIFF frames.

Both present the reader interface of :mod:`ambient_med.io.volumes` (``kind``, ``len()``,
``read(i)`` -> channel-first float32 ``(C, *spatial)``, ``read_volume()``, ``n_coils``,
``spatial_dims``), with ``kind = "intensity"`` (photon counts or camera units: Poisson-Gaussian
noise, :class:`ambient_med.noise.PoissonGaussian`).

Axes (tifffile letters): ``T`` time, ``Z`` depth, ``C`` channel, ``S`` samples (RGB), ``Y X``
the image plane; ``I``/``Q`` an unnamed page axis. They come from OME-XML or ImageJ metadata
when the file has them (tifffile's ``series.axes``); otherwise a 3D page stack is taken as
``Z`` (``axes_inferred`` is True and :meth:`TiffSource.describe` says so). Singleton axes are
dropped. Supported layouts: ``YX``, one of ``T/Z/I/Q`` before ``YX``, ``TZ`` (a time series of
volumes), each optionally with one channel axis (``C`` or ``S``). Items:

* ``spatial_dims = 2``: every plane ``(C, Y, X)``; items run over the stack axes (``T``, ``Z``);
* ``spatial_dims = 3``: every volume ``(C, Z, Y, X)``; items run over ``T`` (a page stack
  without metadata counts as ``Z``; a pure time series ``TYX`` has no 3D items).

Anything else (channels, time and depth all present; two channel axes; axes tifffile could not
name) is refused with one ``DataError`` line naming the file, the axes and the shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ambient_med.errors import DataError

FRAME_SUFFIXES = (".png", ".tif", ".tiff")
STACK_AXES = ("T", "Z", "I", "Q")
CHANNEL_AXES = ("C", "S")


def _finite(path, x: np.ndarray, where: str) -> np.ndarray:
    if x.size == 0:
        raise DataError(path, f"{where} is empty (shape {x.shape})")
    if not np.all(np.isfinite(x)):
        raise DataError(path, f"{where} has NaN or Inf values")
    return x


def _quiet_tifffile():
    """tifffile logs what it finds wrong in a corrupt file before raising; the reader's own
    one-line error says it, so the log would be a second line."""
    import contextlib
    import logging

    @contextlib.contextmanager
    def quiet():
        log = logging.getLogger("tifffile")
        level, log.level = log.level, logging.CRITICAL
        try:
            yield
        finally:
            log.setLevel(level)
    return quiet()


def one_channel_of_rgb(path, x: np.ndarray, axis: int, found: str) -> np.ndarray:
    """An RGB(A) image as one grey channel, or a one-line ``DataError``.

    Grey images saved as RGB (equal R, G, B; alpha ignored) are read as their first channel.
    True colour is refused: a colour camera's demosaicing correlates neighbouring pixels and its
    channels differ in gain, and a rendered merge is no longer counts, so the Poisson-Gaussian
    model the package fits would not hold. The message names the axes and how to pick a channel."""
    rgb = np.take(x, range(min(3, x.shape[axis])), axis=axis)
    first = np.take(rgb, [0], axis=axis)
    if np.array_equal(rgb, np.broadcast_to(first, rgb.shape)):
        return np.take(x, 0, axis=axis)
    name = Path(path).name
    pick = "[..., 0]" if axis in (-1, x.ndim - 1) else f" (channel axis {axis})"
    raise DataError(path, f"is an RGB colour image ({found}); the noise models need one channel of raw "
                          f"intensities: save the channel to denoise as its own file, e.g. "
                          f"tifffile.imwrite('red.tif', tifffile.imread('{name}'){pick})")


def canonical_axes(path, axes: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """Drop singleton axes; map unnamed page axes (``I``, ``Q``) to ``Z``; check the layout.

    Returns ``(axes, order)``: the canonical axes string, ordered ``[T][Z][C]YX``, and the
    permutation of the squeezed array that gives it."""
    kept = [(a, i) for i, (a, n) in enumerate(zip(axes, shape)) if n > 1 or a in "YX"]
    letters = "".join(a for a, _ in kept)
    found = f"axes {axes!r} (shape {tuple(shape)})"
    if len(letters) < 2 or "Y" not in letters or "X" not in letters:
        raise DataError(path, f"has {found}: no Y and X image plane")
    if any(a not in "TZIQCSYX" for a in letters):
        raise DataError(path, f"has {found}: axes {sorted(set(letters) - set('TZIQCSYX'))} are not "
                              "supported (only T, Z, C/S and Y, X)")
    stacks = [a for a in letters if a in STACK_AXES]
    chans = [a for a in letters if a in CHANNEL_AXES]
    named = ["Z" if a in "IQ" else a for a in stacks]
    if len(chans) > 1 or len(named) != len(set(named)) or len(stacks) > 2 or (stacks and chans and len(stacks) == 2):
        raise DataError(path, f"has {found}: unusual axes (supported: [T|Z]YX, TZYX, each with at "
                              "most one channel axis, but not channels, time and depth together)")
    src = {("Z" if a in "IQ" else a): i for i, (a, _) in enumerate(kept)}
    out = "".join(a for a in "TZ" if a in named) + ("C" if chans else "") + "YX"
    src["C"] = next((i for i, (a, _) in enumerate(kept) if a in CHANNEL_AXES), None)
    return out, tuple(src[a] for a in out)


class PlaneStack:
    """A canonical ``[T][Z][C]YX`` array -> items (see module doc). Subclasses set ``path``,
    ``axes``, ``array`` (squeezed and transposed to ``axes``, lazily sliceable)."""

    kind = "intensity"
    n_coils = None

    def _setup(self, spatial_dims: int):
        if spatial_dims not in (2, 3):
            raise DataError(self.path, f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        a = self.axes
        self.has_c = "C" in a
        lead = [ax for ax in a if ax in "TZ"]
        if spatial_dims == 3:
            if "Z" not in lead:
                raise DataError(self.path, f"has axes {a}: no Z axis, so no 3D items "
                                           "(use spatial_dims=2 to read its planes)")
            lead = [ax for ax in lead if ax != "Z"]
        self.lead_axes = "".join(lead)
        self.lead = tuple(self.shape[a.index(ax)] for ax in lead)
        self.item_shape = tuple(self.shape[a.index(ax)] for ax in ("Z" if spatial_dims == 3 else "") + "YX")

    def __len__(self) -> int:
        return int(np.prod(self.lead, dtype=int))

    def read(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: item {index} out of range ({len(self)} items)")
        idx = np.unravel_index(index, self.lead) if self.lead else ()
        sel = [slice(None)] * len(self.axes)
        for ax, i in zip(self.lead_axes, idx):
            sel[self.axes.index(ax)] = int(i)
        x = np.asarray(self._get(tuple(sel)), dtype=np.float32)
        rest = [ax for ax in self.axes if ax not in self.lead_axes]     # e.g. Z C Y X
        if self.has_c:
            x = np.moveaxis(x, rest.index("C"), 0)
        else:
            x = x[None]
        return _finite(self.path, np.ascontiguousarray(x), f"item {index}")

    def read_volume(self) -> np.ndarray:
        return _finite(self.path, np.asarray(self._get(Ellipsis), dtype=np.float32), "volume")

    def describe(self) -> str:
        how = "inferred from the shape" if self.axes_inferred else "from the file's metadata"
        return (f"{self.path}: axes {self.axes} {self.shape} ({how}; file axes {self.file_axes!r}), "
                f"{len(self)} items of {self.item_shape}")


class TiffSource(PlaneStack):
    """A TIFF / OME-TIFF / ImageJ-TIFF file (its first series), loaded whole on opening
    (microscopy stacks are small next to memory; items are views of it)."""

    def __init__(self, path: str | Path, spatial_dims: int = 2):
        import tifffile

        self.path = Path(path)
        try:
            with _quiet_tifffile(), tifffile.TiffFile(self.path) as tf:
                if not tf.series:
                    raise DataError(self.path, "TIFF holds no image series")
                s = tf.series[0]
                self.file_axes, shape = s.axes, tuple(s.shape)
                meta = tf.is_ome or tf.is_imagej or tf.is_shaped
                data = s.asarray()
        except DataError:
            raise
        except Exception as e:  # tifffile raises several types for corrupt files
            raise DataError(self.path, f"is not a readable TIFF file ({e})") from None
        if data.dtype.kind not in "fiub":
            raise DataError(self.path, f"has dtype {data.dtype}; expected real numbers")
        if "S" in self.file_axes and shape[self.file_axes.index("S")] > 1:
            data = one_channel_of_rgb(self.path, data, self.file_axes.index("S"),
                                      f"axes {self.file_axes!r}, shape {shape}")
            self.file_axes, shape = self.file_axes.replace("S", ""), data.shape
        self.axes_inferred = not meta or any(a in "IQ" for a in self.file_axes if shape[self.file_axes.index(a)] > 1)
        self.axes, order = canonical_axes(self.path, self.file_axes, shape)
        sq = data.reshape([n for a, n in zip(self.file_axes, shape) if n > 1 or a in "YX"])
        self.array = np.transpose(sq, order)
        self.shape = self.array.shape
        self._setup(spatial_dims)

    def _get(self, sel):
        return self.array[sel]


def _read_frame(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as im:
                x = np.asarray(im)
        else:
            import tifffile

            x = tifffile.imread(path)
    except Exception as e:
        raise DataError(path, f"is not a readable image frame ({e})") from None
    if x.ndim == 3 and x.shape[-1] in (3, 4):
        x = one_channel_of_rgb(path, x, -1, f"axes 'YXS', shape {x.shape}")
    elif x.ndim != 2:
        raise DataError(path, f"frame has shape {x.shape}; expected a 2D image (H, W) or RGB (H, W, 3|4)")
    return x


def frame_files(folder: Path) -> list[Path]:
    """The frames of a folder: its PNG files, else its TIFF files (not recursive), sorted."""
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in FRAME_SUFFIXES)
    png = [f for f in files if f.suffix.lower() == ".png"]
    return png or files


class FrameFolderSource(PlaneStack):
    """A folder of 2D frames (PNG via Pillow, or TIFF), sorted by name, as a ``Z`` stack (or
    the pages of a time series: the 2D items are the frames either way; 3D gives one volume).
    Frames are read one at a time. As 2D items they may differ in size (each item is one frame;
    training draws patches or crops to a common size); a 3D volume needs one frame size."""

    def __init__(self, folder: str | Path, spatial_dims: int = 2):
        self.path = Path(folder)
        self.files = frame_files(self.path)
        if not self.files:
            raise DataError(self.path, f"folder holds no frames {FRAME_SUFFIXES}")
        first = _read_frame(self.files[0])
        self.file_axes = "CYX" if first.ndim == 3 else "YX"
        self.frame_shape = first.shape
        self.axes_inferred = True
        self.axes = ("Z" if len(self.files) > 1 else "") + self.file_axes
        self.shape = ((len(self.files),) if len(self.files) > 1 else ()) + first.shape
        self._setup(spatial_dims)

    def _frame(self, i: int, stacked: bool = True) -> np.ndarray:
        x = _read_frame(self.files[i])
        if stacked and x.shape != self.frame_shape:
            raise DataError(self.files[i], f"frame has shape {x.shape}; the folder's first frame "
                                           f"{self.files[0].name} has {self.frame_shape}")
        return x

    def _get(self, sel):
        if sel is Ellipsis or "Z" not in self.axes:
            frames = [self._frame(i) for i in range(len(self.files))]
            return np.stack(frames) if "Z" in self.axes else frames[0]
        if isinstance(sel[0], slice):                                   # 3D: the whole stack
            return np.stack([self._frame(i) for i in range(len(self.files))[sel[0]]])[(slice(None), *sel[1:])]
        return self._frame(sel[0], stacked=False)[sel[1:]]
