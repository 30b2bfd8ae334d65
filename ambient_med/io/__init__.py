"""Readers: fastMRI HDF5 (lazy), BART cfl/hdr, NIfTI, NumPy, TIFF/OME-TIFF and frame folders;
files/folders/globs -> sources."""

from ambient_med.io.discover import discover, open_source
from ambient_med.io.fastmri import FastMRIFile
from ambient_med.io.microscopy import FrameFolderSource, TiffSource
from ambient_med.io.volumes import read_cfl, write_cfl

__all__ = ["FastMRIFile", "FrameFolderSource", "TiffSource", "discover", "open_source", "read_cfl", "write_cfl"]
