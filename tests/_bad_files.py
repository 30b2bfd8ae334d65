"""Small broken files, one maker per (reader, fault), for the table-driven bad-input test.

Each maker writes into a folder and returns the path the user would pass (a file, or a folder
of frames), or None where the fault cannot exist for that format (a PNG holds no NaN)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = 16
READERS = ("h5", "npy", "tif", "png", "nii", "cfl")
FAULTS = ("truncated", "empty", "nan", "inf", "constant", "rank", "dtype", "rgb", "grey_rgb", "mixed",
          "missing")


def _images(n: int = 4, seed: int = 0) -> np.ndarray:
    """Noisy discs, (n, SIZE, SIZE) float32, positive (camera-like counts)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (SIZE / 3) ** 2).astype(np.float32)
    return (50 + 100 * disc[None] + 5 * rng.standard_normal((n, SIZE, SIZE))).astype(np.float32)


def _cells(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """8-bit frames of synthetic cells with Poisson-Gaussian noise (what a camera gives)."""
    from _micro_fixtures import cells_stack

    _, noisy = cells_stack(n, size, seed)
    return [np.clip(f, 0, 255).astype(np.uint8) for f in noisy]


def _kspace(n: int = 4) -> np.ndarray:
    rng = np.random.default_rng(1)
    img = _images(n).astype(np.complex64)[:, None] * np.ones((1, 2, 1, 1), np.complex64)
    k = np.fft.fft2(img, norm="ortho")
    return (k + 0.5 * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))).astype(np.complex64)


def _write(reader: str, path: Path, x: np.ndarray) -> Path:
    """Write ``x`` in ``reader``'s format (images (n, H, W) or k-space (n, C, H, W))."""
    if reader == "h5":
        import h5py

        from ambient_med.io.fastmri import write_fastmri

        if np.iscomplexobj(x) and x.ndim == 4:
            return write_fastmri(path, x)
        with h5py.File(path, "w") as h:
            h.create_dataset("kspace", data=x)
        return path
    if reader == "npy":
        np.save(path, x)
        return path
    if reader == "tif":
        import tifffile

        tifffile.imwrite(path, x, photometric="rgb" if x.ndim == 3 and x.shape[-1] == 3 and x.dtype == np.uint8
                         else "minisblack")
        return path
    if reader == "nii":
        import nibabel as nib

        nib.save(nib.Nifti1Image(x, np.eye(4)), str(path))
        return path
    if reader == "cfl":
        from ambient_med.io.volumes import write_cfl

        write_cfl(path, x)
        return path
    raise ValueError(reader)


def _png_folder(folder: Path, frames: list[np.ndarray]) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"frame{i:02d}.png")
    return folder


def _good(reader: str) -> np.ndarray:
    if reader == "h5":
        return _kspace()
    if reader == "cfl":
        return np.moveaxis(_kspace(1)[0], 0, -1)[:, :, None, :]         # (X, Y, 1, coils)
    if reader == "nii":
        return np.moveaxis(_images(), 0, -1)                             # (X, Y, Z)
    return _images()


def applicable(reader: str, fault: str) -> bool:
    """Whether ``fault`` can exist in ``reader``'s format (``make`` returns None otherwise)."""
    if fault == "missing":
        return True
    if reader == "png":
        return fault in ("truncated", "empty", "constant", "rgb", "grey_rgb", "mixed")
    if fault in ("rgb", "grey_rgb"):
        return reader == "tif"
    if fault == "mixed":
        return False
    return not ((fault == "rank" and reader == "tif") or (fault == "dtype" and reader == "cfl"))


def make(reader: str, fault: str, folder: Path) -> Path | None:
    """The broken input ``fault`` in ``reader``'s format (module doc); made once per folder."""
    folder = Path(folder) / f"{reader}-{fault}"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = {"h5": ".h5", "npy": ".npy", "tif": ".tif", "nii": ".nii.gz", "cfl": ".cfl"}.get(reader, "")
    name = f"bad_{reader}_{fault}{suffix}"
    path = folder / name
    if fault == "missing" or path.exists():   # made already (one file serves every command)
        return path
    if reader == "png":
        frames = [np.clip(f, 0, 255).astype(np.uint8) for f in _images()]
        if fault in ("grey_rgb", "mixed"):       # cases that train: Poisson-Gaussian cells
            frames = _cells(8, 32)
        if fault == "truncated":
            p = _png_folder(path, frames)
            f0 = p / "frame00.png"
            f0.write_bytes(f0.read_bytes()[: 40])
            return p
        if fault == "empty":
            path.mkdir()
            return path
        if fault == "constant":
            return _png_folder(path, [np.full_like(f, 7) for f in frames])
        if fault == "rgb":
            rng = np.random.default_rng(2)
            return _png_folder(path, [rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8) for _ in frames])
        if fault == "grey_rgb":
            return _png_folder(path, [np.repeat(f[..., None], 3, -1) for f in frames])
        if fault == "mixed":
            return _png_folder(path, frames + _cells(2, 48, seed=3))
        return None                          # PNG holds no NaN, no other rank or dtype here
    if fault == "empty":
        path.write_bytes(b"")
        return path
    if fault in ("rgb", "grey_rgb", "mixed") and reader != "tif":
        return None
    good = _good(reader)
    if fault == "truncated":
        _write(reader, path, good)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path
    if fault in ("nan", "inf"):
        bad = good.copy()
        bad.flat[5] = np.nan if fault == "nan" else np.inf
        return _write(reader, path, bad)
    if fault == "constant":
        return _write(reader, path, np.ones_like(good))
    if fault == "rank":
        if reader == "tif":
            return None                       # tifffile writes a line as a 1 x N image
        return _write(reader, path, good.reshape(-1)[:SIZE].copy())
    if fault == "dtype":
        if reader == "cfl":
            return None                       # .cfl is complex by definition
        bad = {"h5": good.real.astype(np.float32), "npy": np.array([["a"] * SIZE] * SIZE),
               "tif": good.astype(np.complex64), "nii": good.astype(np.complex64)}[reader]
        return _write(reader, path, bad)
    if fault == "rgb":
        rng = np.random.default_rng(2)
        return _write(reader, path, rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    if fault == "grey_rgb":
        g = np.clip(_images(1)[0], 0, 255).astype(np.uint8)
        return _write(reader, path, np.repeat(g[..., None], 3, -1))
    if fault == "mixed":
        return None
    raise ValueError(fault)
