"""Microscopy readers: TIFF / OME-TIFF stacks and PNG frame folders (ambient_med.io.microscopy)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from ambient_med.errors import DataError
from ambient_med.io import discover, open_source
from ambient_med.io.microscopy import FrameFolderSource, TiffSource


def _arr(*shape, dtype=np.uint16):
    return (np.arange(int(np.prod(shape))) % 1000).reshape(shape).astype(dtype)


def test_plain_2d_and_page_stack(tmp_path):
    a = _arr(12, 10)
    tifffile.imwrite(tmp_path / "one.tif", a)
    src = open_source(tmp_path / "one.tif")
    assert isinstance(src, TiffSource) and src.kind == "intensity" and src.axes == "YX"
    assert len(src) == 1 and src.read(0).shape == (1, 12, 10) and src.read(0).dtype == np.float32
    np.testing.assert_array_equal(src.read(0)[0], a)
    # a page stack without metadata: inferred as Z, and the description says so
    z = _arr(5, 12, 10)
    tifffile.imwrite(tmp_path / "pages.tiff", z, metadata=None)
    src = open_source(tmp_path / "pages.tiff")
    assert src.axes == "ZYX" and src.axes_inferred and "inferred" in src.describe()
    assert len(src) == 5
    np.testing.assert_array_equal(src.read(3)[0], z[3])
    vol = open_source(tmp_path / "pages.tiff", spatial_dims=3)
    assert len(vol) == 1 and vol.read(0).shape == (1, 5, 12, 10)


def test_imagej_zyx_and_tyx(tmp_path):
    z = _arr(4, 8, 9)
    tifffile.imwrite(tmp_path / "z.tif", z, imagej=True, metadata={"axes": "ZYX"})
    src = open_source(tmp_path / "z.tif")
    assert src.axes == "ZYX" and not src.axes_inferred and len(src) == 4
    np.testing.assert_array_equal(open_source(tmp_path / "z.tif", spatial_dims=3).read(0)[0], z)
    t = _arr(6, 8, 9)
    tifffile.imwrite(tmp_path / "t.tif", t, imagej=True, metadata={"axes": "TYX"})
    src = open_source(tmp_path / "t.tif")
    assert src.axes == "TYX" and len(src) == 6
    np.testing.assert_array_equal(src.read(5)[0], t[5])
    with pytest.raises(DataError, match=r"t\.tif: has axes TYX: no Z axis"):
        open_source(tmp_path / "t.tif", spatial_dims=3)


def test_ome_time_series_of_volumes_with_channels(tmp_path):
    a = _arr(3, 4, 2, 8, 9, dtype=np.float32)                       # T Z C Y X, C = 2, T = 3, Z = 4
    tifffile.imwrite(tmp_path / "tzyx.ome.tif", a[:, :, :1], metadata={"axes": "TZCYX"})
    src = open_source(tmp_path / "tzyx.ome.tif")
    assert src.axes == "TZYX" and not src.axes_inferred and len(src) == 12
    np.testing.assert_array_equal(src.read(4)[0], a[1, 0, 0])          # item 4 = (t=1, z=0)
    vol = open_source(tmp_path / "tzyx.ome.tif", spatial_dims=3)
    assert len(vol) == 3 and vol.read(2).shape == (1, 4, 8, 9)
    np.testing.assert_array_equal(vol.read(2)[0], a[2, :, 0])
    # Z and channels: (C, Y, X) planes
    tifffile.imwrite(tmp_path / "zc.ome.tif", a[0], metadata={"axes": "ZCYX"})
    src = open_source(tmp_path / "zc.ome.tif")
    assert src.axes == "ZCYX" and len(src) == 4 and src.read(1).shape == (2, 8, 9)
    np.testing.assert_array_equal(src.read(1), a[0, 1])
    assert open_source(tmp_path / "zc.ome.tif", spatial_dims=3).read(0).shape == (2, 4, 8, 9)


def test_unusual_axes_one_line_error(tmp_path):
    a = _arr(3, 4, 2, 8, 9)
    tifffile.imwrite(tmp_path / "tzc.ome.tif", a, metadata={"axes": "TZCYX"})
    with pytest.raises(DataError) as e:
        open_source(tmp_path / "tzc.ome.tif")
    msg = str(e.value)
    assert "tzc.ome.tif" in msg and "'TZCYX'" in msg and "unusual axes" in msg and "\n" not in msg
    tifffile.imwrite(tmp_path / "odd.ome.tif", _arr(2, 3, 8, 9), metadata={"axes": "RAYX"})
    with pytest.raises(DataError, match=r"odd\.ome\.tif: has axes .*not supported"):
        open_source(tmp_path / "odd.ome.tif")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(DataError, match=r"bad\.tif: is not a readable TIFF"):
        open_source(tmp_path / "bad.tif")


def test_png_frame_folder_and_discover(tmp_path):
    frames = tmp_path / "field1"
    frames.mkdir()
    imgs = [_arr(16, 12, dtype=np.uint8) + k for k in range(4)]
    for k, im in enumerate(imgs):
        Image.fromarray(im).save(frames / f"cap_{k:03d}.png")
    src = open_source(frames)
    assert isinstance(src, FrameFolderSource) and src.axes == "ZYX" and len(src) == 4
    np.testing.assert_array_equal(src.read(2)[0], imgs[2])
    assert open_source(frames, spatial_dims=3).read(0).shape == (1, 4, 16, 12)
    tifffile.imwrite(tmp_path / "stack.tif", _arr(3, 8, 8), photometric="minisblack")
    found = discover(tmp_path)
    assert found == sorted([frames, tmp_path / "stack.tif"])
    # a frame of another size is its own 2D item; a 3D volume of them is refused, naming it
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(frames / "cap_999.png")
    assert open_source(frames).read(4).shape == (1, 5, 5)
    with pytest.raises(DataError, match=r"cap_999\.png: frame has shape \(5, 5\)"):
        open_source(frames, spatial_dims=3).read(0)
