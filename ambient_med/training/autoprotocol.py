"""Which protocol fits the data: the file format decides when the user names no protocol, and a
protocol's ``data.reader`` refuses files of another format (one line naming the file).

    fastMRI-style k-space HDF5 (``.h5``)  -> fastmri-knee-multicoil, or fastmri-brain-multicoil
                                             when the acquisition is axial brain (``AX...``) or
                                             the file name says ``brain``
    NIfTI (``.nii``, ``.nii.gz``)          -> nifti-3d (magnitude volumes)
    BART ``.cfl``, NumPy ``.npy/.npz``     -> no packaged protocol: pass ``--protocol FILE.yaml``
    TIFF / OME-TIFF (``.tif``, ``.tiff``),  -> microscopy-3d when the file's own metadata (OME-XML,
    folders of PNG/TIFF frames                 ImageJ) names a Z axis with more than one plane,
                                             otherwise microscopy-2d (planes; a page stack
                                             without metadata is read plane by plane)
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, DataError

FORMATS = {".h5": "fastmri", ".hdf5": "fastmri", ".nii": "nifti", ".nii.gz": "nifti",
           ".npy": "numpy", ".npz": "numpy", ".cfl": "cfl", ".hdr": "cfl",
           ".tif": "tiff", ".tiff": "tiff"}
DESCRIBE = {"fastmri": "fastMRI-style k-space HDF5", "nifti": "NIfTI magnitude volumes",
            "numpy": "NumPy image arrays", "cfl": "BART .cfl k-space", "tiff": "TIFF images"}
DESCRIBE["tiff"] = "TIFF microscopy images or frame folders"


def file_format(path: str | Path) -> str:
    """The reader a file needs, from its name: fastmri | nifti | numpy | cfl | tiff | unknown
    (a folder, which :func:`~ambient_med.io.discover` returns for PNG frames, is ``tiff``)."""
    if Path(path).is_dir():
        return "tiff"
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return "nifti"
    return FORMATS.get(Path(name).suffix, "unknown")


def check_reader(reader: str, protocol_name: str, files: list[Path]) -> None:
    """``data.reader`` acts: every file must be of the protocol's format (``auto``: any)."""
    if reader == "auto":
        return
    for f in files:
        fmt = file_format(f)
        if fmt not in (reader, "unknown"):
            hint = suggest(fmt)
            raise ConfigError(
                f"{f}: is {DESCRIBE.get(fmt, fmt)}, but protocol {protocol_name} reads "
                f"{DESCRIBE.get(reader, reader)} (data.reader: {reader}); "
                + (f"use --protocol {hint}" if hint else "pass a protocol with data.reader: "
                   f"{fmt} or auto"))


def suggest(fmt: str) -> str | None:
    return {"fastmri": "fastmri-knee-multicoil", "nifti": "nifti-3d", "tiff": "microscopy-2d"}.get(fmt)


def _is_volume_stack(path: Path) -> bool:
    """A TIFF whose own metadata (OME-XML / ImageJ, not a guess from the page count) names a Z
    axis of more than one plane holds 3D volumes."""
    if path.is_dir():
        return False
    try:
        from ..io.microscopy import TiffSource

        src = TiffSource(path, 2)
    except DataError:
        return False  # unreadable: the reader reports it with its own message
    return "Z" in src.axes and not src.axes_inferred


def _is_brain(path: Path) -> tuple[bool, str]:
    """fastMRI brain files are axial (``acquisition`` AXT1, AXT2, AXFLAIR, ...), knee files
    coronal (CORPD_FBK, CORPDFS_FBK)."""
    acq = ""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            acq = str(f.attrs.get("acquisition", ""))
    except (OSError, ValueError):
        pass  # unreadable: the reader reports it with its own message
    brain = acq.upper().startswith("AX") or "brain" in path.name.lower()
    return brain, (f"acquisition {acq}" if acq else "")


def choose_protocol(files: list[Path]) -> tuple[str, str]:
    """``(protocol name, why)`` for these files, or a ConfigError saying what to pass."""
    formats = sorted({file_format(f) for f in files})
    if len(formats) > 1:
        raise ConfigError(f"the inputs mix formats {formats} ({files[0]} ...); train on one "
                          "format at a time or pass --protocol")
    fmt = formats[0]
    if fmt == "fastmri":
        brain, acq = _is_brain(files[0])
        why = DESCRIBE[fmt] + (f", {acq}" if acq else "")
        return ("fastmri-brain-multicoil" if brain else "fastmri-knee-multicoil"), why
    if fmt == "nifti":
        return "nifti-3d", DESCRIBE[fmt]
    if fmt == "tiff":
        if _is_volume_stack(files[0]):
            return "microscopy-3d", "TIFF stack whose metadata names a Z axis (3D volumes)"
        return "microscopy-2d", DESCRIBE[fmt]
    raise ConfigError(f"{files[0]}: no packaged protocol for {DESCRIBE.get(fmt, 'these files')}; "
                      "pass --protocol FILE.yaml (copy one from ambient_med/protocols and set "
                      f"data.reader: {fmt if fmt != 'unknown' else 'auto'})")
