"""Readers: lazy fastMRI HDF5, BART cfl/hdr, NIfTI, NumPy, discovery; bad files -> DataError."""

import io

import h5py
import nibabel as nib
import numpy as np
import pytest
from _mri_fixtures import write_fastmri

from ambient_med.errors import DataError
from ambient_med.io import FastMRIFile, discover, open_source, read_cfl, write_cfl
from ambient_med.io.fastmri import crop_readout, parse_ismrmrd_matrix
from ambient_med.mri import ifftc

SLICES, COILS, KX, KY = 20, 15, 640, 368


class CountingFile(io.FileIO):
    """A binary file that counts the bytes h5py reads through it."""

    bytes_read = 0

    def readinto(self, b):
        n = super().readinto(b)
        self.bytes_read += n or 0
        return n


@pytest.fixture(scope="module")
def fastmri_file(tmp_path_factory):
    return write_fastmri(tmp_path_factory.mktemp("fastmri") / "file_brain_AXT2.h5",
                         SLICES, COILS, KX, KY, recon=(320, 320), pad=(10, 12))


def test_one_slice_reads_one_slice_of_bytes(fastmri_file):
    size = fastmri_file.stat().st_size
    slice_bytes = COILS * KX * KY * 8
    assert size > SLICES * slice_bytes
    with CountingFile(fastmri_file, "rb") as fobj:
        src = FastMRIFile(fobj, crop_oversampling=None, crop_padding=False)
        opened = fobj.bytes_read
        fobj.bytes_read = 0
        k = src.read(7)
        got = fobj.bytes_read
    assert opened < 100_000  # metadata only
    assert slice_bytes <= got < 1.05 * slice_bytes, (got, slice_bytes)
    assert got < size / 15
    with h5py.File(fastmri_file, "r") as f:
        np.testing.assert_array_equal(k, f["kspace"][7])


def test_fastmri_layout_header_crop_and_padding(fastmri_file):
    src = open_source(fastmri_file)
    assert isinstance(src, FastMRIFile) and src.kind == "kspace"
    assert len(src) == SLICES and src.n_coils == COILS
    assert src.matrix == {"encoded": (640, 368, 1), "recon": (320, 320, 1)}
    assert src.attrs["acquisition"] == "CORPD_FBK" and src.attrs["max"] == pytest.approx(5e-4)
    k = src.read(3)
    assert k.shape == (COILS, 320, KY - 22) and k.dtype == np.complex64  # readout cropped, pads gone
    with h5py.File(fastmri_file, "r") as f:
        raw = f["kspace"][3][..., 10 : KY - 12]
    img = ifftc(raw, axes=(-2,))[:, 160:480]
    np.testing.assert_allclose(ifftc(k, axes=(-2,)), img, atol=1e-5)
    assert FastMRIFile(fastmri_file, crop_oversampling=400).read(0).shape[1] == 400


def test_readout_crop_keeps_white_noise_sigma():
    rng = np.random.default_rng(0)
    k = 0.7 * (rng.normal(size=(4, 512, 256)) + 1j * rng.normal(size=(4, 512, 256)))
    c = crop_readout(k, 256, axis=-2)
    assert c.shape == (4, 256, 256)
    assert np.std(c.real) == pytest.approx(0.7, rel=0.01) and np.std(c.imag) == pytest.approx(0.7, rel=0.01)


def test_parse_header_without_namespace():
    h = b"<a><encodedSpace><matrixSize><x>10</x><y>4</y></matrixSize></encodedSpace></a>"
    assert parse_ismrmrd_matrix(h) == {"encoded": (10, 4, 1)}


def test_singlecoil_fastmri(tmp_path):
    p = tmp_path / "single.h5"
    with h5py.File(p, "w") as f:
        f["kspace"] = (np.ones((3, 32, 24)) + 1j).astype(np.complex64)
    src = open_source(p)
    assert src.n_coils == 1 and src.read(2).shape == (1, 32, 24)


# ---- bad files: each names the file and the problem ----

def _h5(tmp_path, name, **datasets):
    p = tmp_path / name
    with h5py.File(p, "w") as f:
        for k, v in datasets.items():
            f[k] = v
    return p


def test_not_hdf5(tmp_path):
    p = tmp_path / "notes.h5"
    p.write_text("this is not hdf5")
    with pytest.raises(DataError, match="notes.h5.*not a readable HDF5"):
        open_source(p)


def test_no_kspace(tmp_path):
    p = _h5(tmp_path, "nok.h5", reconstruction_rss=np.ones((2, 4, 4), np.float32))
    with pytest.raises(DataError, match=r"nok.h5.*no 'kspace'"):
        open_source(p)


@pytest.mark.parametrize("shape", [(8, 8), (1, 2, 3, 4, 5)])
def test_wrong_rank(tmp_path, shape):
    p = _h5(tmp_path, "rank.h5", kspace=np.ones(shape, np.complex64))
    with pytest.raises(DataError, match="rank.h5.*rank"):
        open_source(p)


def test_real_kspace_dtype(tmp_path):
    with pytest.raises(DataError, match="expected complex"):
        open_source(_h5(tmp_path, "real.h5", kspace=np.ones((2, 4, 4), np.float32)))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite(tmp_path, bad):
    k = np.ones((2, 3, 8, 8), np.complex64)
    k[1, 0, 2, 2] = bad
    src = open_source(_h5(tmp_path, "nan.h5", kspace=k))
    src.read(0)
    with pytest.raises(DataError, match="nan.h5: slice 1 .*NaN or Inf"):
        src.read(1)


def test_empty(tmp_path):
    with pytest.raises(DataError, match="empty.h5.*empty"):
        open_source(_h5(tmp_path, "empty.h5", kspace=np.ones((0, 4, 8, 8), np.complex64)))
    z = tmp_path / "zero.h5"
    z.write_bytes(b"")
    with pytest.raises(DataError, match="zero.h5.*empty"):
        open_source(z)
    e = tmp_path / "e.npy"
    np.save(e, np.zeros((0, 4)))
    with pytest.raises(DataError, match="e.npy.*empty"):
        open_source(e)


def test_all_zero_slice(tmp_path):
    src = open_source(_h5(tmp_path, "zeros.h5", kspace=np.zeros((1, 2, 8, 8), np.complex64)))
    with pytest.raises(DataError, match="all zeros"):
        src.read(0)


def test_missing_and_corrupt_volumes(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_source(tmp_path / "nope.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.nii.gz.*NIfTI"):
        open_source(bad)
    (tmp_path / "x.hdr").write_text("# Dimensions\n4 4 1 2\n")
    (tmp_path / "x.cfl").write_bytes(b"\0" * 10)
    with pytest.raises(DataError, match="x.cfl.*bytes"):
        read_cfl(tmp_path / "x")


# ---- volumes ----

def test_cfl_roundtrip_fortran_order(tmp_path):
    a = (np.arange(2 * 3 * 4 * 5) + 1j).reshape(2, 3, 4, 5).astype(np.complex64)
    write_cfl(tmp_path / "a", a)
    assert (tmp_path / "a.hdr").read_text().startswith("# Dimensions\n2 3 4 5 1")
    np.testing.assert_array_equal(read_cfl(tmp_path / "a.cfl"), a)
    raw = np.fromfile(tmp_path / "a.cfl", np.complex64)
    assert raw[1] == a[1, 0, 0, 0]  # first index fastest, as BART writes
    src = open_source(tmp_path / "a.cfl")  # (X,Y,Z,C) = (2,3,4,5): 3D k-space, 5 coils
    assert src.kind == "kspace" and src.read(0).shape == (5, 2, 3, 4)


def test_nifti_slices_and_volumes(tmp_path):
    vol = np.random.default_rng(0).random((10, 12, 6, 2)).astype(np.float32)
    p = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), p)
    s2 = open_source(p, spatial_dims=2)
    assert s2.kind == "magnitude" and len(s2) == 12
    np.testing.assert_allclose(s2.read(6 + 4)[0], vol[:, :, 4, 1])
    s3 = open_source(p, spatial_dims=3)
    assert len(s3) == 2 and s3.read(1).shape == (1, 10, 12, 6)
    np.testing.assert_allclose(s3.read(1)[0], vol[..., 1])


def test_numpy_sources(tmp_path):
    a = np.random.default_rng(1).random((3, 8, 9)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "b.npz", data=a + 1j * a)
    sa = open_source(tmp_path / "a.npy")
    assert sa.kind == "intensity" and len(sa) == 3 and sa.read(2).shape == (1, 8, 9)
    sb = open_source(tmp_path / "b.npz")
    assert sb.kind == "complex" and sb.read(0).dtype == np.complex64


def test_discover_files_folders_globs(tmp_path):
    (tmp_path / "sub").mkdir()
    write_fastmri(tmp_path / "sub" / "a.h5", slices=2, coils=4, kx=32, ky=24, recon=(16, 16))
    write_fastmri(tmp_path / "b.h5", slices=3, coils=8, kx=48, ky=20, recon=(24, 24))
    write_cfl(tmp_path / "c", np.ones((1, 16, 16, 2), np.complex64))
    (tmp_path / "readme.txt").write_text("x")
    files = discover([tmp_path])
    assert [f.name for f in files] == ["b.h5", "c.cfl", "a.h5"]
    assert discover(str(tmp_path / "**" / "*.h5")) == sorted([tmp_path / "b.h5", tmp_path / "sub" / "a.h5"])
    assert discover([tmp_path / "c.hdr"]) == [tmp_path / "c.cfl"]
    shapes = {f.name: open_source(f).read(0).shape for f in files}  # sizes and coil counts differ
    assert shapes == {"b.h5": (8, 24, 20), "c.cfl": (2, 16, 16), "a.h5": (4, 16, 24)}
    with pytest.raises(DataError, match="matches no files"):
        discover(str(tmp_path / "*.zzz"))
    with pytest.raises(DataError, match="does not exist"):
        discover([tmp_path / "missing.h5"])
