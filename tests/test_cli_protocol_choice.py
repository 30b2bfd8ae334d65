"""The protocol comes from the data when the user names none, and the CLI says which; every
protocol key acts: ``data.reader`` refuses files of another format, a protocol naming a reader
the package lacks is refused at load time, and a broken ``.tif`` input gets a TIFF message
rather than 'not a readable HDF5 file'."""

from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest
from _cli_fixtures import assert_user_error, cli, tiny_data, tiny_protocol

from ambient_med.errors import ConfigError
from ambient_med.training.autoprotocol import choose_protocol


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("choice")
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:16, :16, :16]
    ball = (((x - 8) ** 2 + (y - 8) ** 2 + (z - 8) ** 2) < 25).astype(np.float32)
    noise = 0.05 * (rng.standard_normal(ball.shape) + 1j * rng.standard_normal(ball.shape))
    nib.save(nib.Nifti1Image(np.abs(ball + noise).astype(np.float32), np.eye(4)),
             str(tmp / "volume.nii.gz"))                  # a Rician magnitude volume
    return {"tmp": tmp, "data": tiny_data(tmp / "data", n_files=1, slices=4),
            "nifti": tmp / "volume.nii.gz", "proto": tiny_protocol(tmp)}


def test_nifti_without_protocol_trains_with_nifti_3d_and_says_so(env):
    out = env["tmp"] / "nifti_run"
    r = cli("train", "--data", env["nifti"], "--sigma-n", "auto", "--out", out, "--steps", "1",
            "--batch-size", "1", "--previews", "0", "--no-progress", "--device", "cpu")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert "protocol: nifti-3d (chosen from the data: NIfTI" in r.stderr
    assert (out / "prior.safetensors").is_file()


def test_kspace_hdf5_chooses_knee_or_brain(env):
    files = sorted(env["data"].glob("*.h5"))
    assert choose_protocol(files)[0] == "fastmri-knee-multicoil"
    with h5py.File(files[0], "a") as f:
        f.attrs["acquisition"] = "AXT2"
    try:
        name, why = choose_protocol(files)
        assert name == "fastmri-brain-multicoil" and "AXT2" in why
    finally:
        with h5py.File(files[0], "a") as f:
            f.attrs["acquisition"] = "SYNTHETIC_PHANTOM"
    r = cli("train", "--data", env["data"], "--out", env["tmp"] / "knee", "--steps", "1",
            "--no-progress")
    assert "protocol: fastmri-knee-multicoil (chosen from the data: fastMRI" in r.stderr
    np.save(env["tmp"] / "frames.npy", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ConfigError, match="no packaged protocol.*--protocol"):
        choose_protocol([env["tmp"] / "frames.npy"])


def test_reader_refuses_files_of_another_format(env):
    r = cli("train", "--data", env["nifti"], "--out", env["tmp"] / "mismatch", "--protocol",
            env["proto"], "--no-progress")
    assert_user_error(r, "volume.nii.gz", "NIfTI", "reader: fastmri", "--protocol nifti-3d")


def test_a_broken_tiff_gets_a_tiff_message(env):
    """TIFF is read now: a corrupt .tif is reported by the TIFF reader (never tried as HDF5),
    a fastMRI protocol refuses it by format, and microscopy-2d refuses k-space files."""
    tif = env["tmp"] / "cells.tif"
    tif.write_bytes(b"II*\x00" + bytes(64))
    r = cli("train", "--data", tif, "--out", env["tmp"] / "tif", "--no-progress")
    assert "protocol: microscopy-2d" in r.stderr          # chosen from the file name, said once
    r.stderr_bytes = "\n".join(ln for ln in r.stderr.splitlines() if not ln.startswith("protocol:")).encode()
    line = assert_user_error(r, "cells.tif", "TIFF")
    assert "HDF5" not in line
    r = cli("train", "--data", tif, "--out", env["tmp"] / "tif", "--no-progress", "--protocol", env["proto"])
    assert_user_error(r, "cells.tif", "TIFF", "reader: fastmri", "--protocol microscopy-2d")
    r = cli("train", "--data", env["data"], "--out", env["tmp"] / "micro", "--protocol",
            "microscopy-2d", "--no-progress")
    assert_user_error(r, "k-space", "reader: tiff")


def test_a_free_text_key_is_refused(env):
    path = tiny_protocol(env["tmp"], "prose", data={"preprocessing": "reorient to canonical"})
    r = cli("train", "--data", env["data"], "--out", env["tmp"] / "prose", "--protocol", path)
    assert_user_error(r, "data.preprocessing", "prose.yaml")


def test_nifti_3d_reorients_to_closest_canonical(tmp_path):
    from ambient_med.training.config import load_protocol
    from ambient_med.training.datasets import build_training_set

    assert load_protocol("nifti-3d").data.reorient
    vol = np.random.default_rng(1).uniform(1, 2, (8, 6, 4)).astype(np.float32)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])                  # stored L->R flipped, P->A flipped
    nib.save(nib.Nifti1Image(vol, lps), str(tmp_path / "lps.nii.gz"))
    ds, info = build_training_set([tmp_path / "lps.nii.gz"], sigma_n=0.0, spatial_dims=3,
                                  reorient=True)
    got = ds[0]["image"][0].numpy() * info.scale
    np.testing.assert_allclose(got, vol[::-1, ::-1, :], rtol=1e-6)
    canon = nib.as_closest_canonical(nib.load(str(tmp_path / "lps.nii.gz")))
    np.testing.assert_allclose(got, np.asarray(canon.dataobj), rtol=1e-6)
    with pytest.raises(ConfigError, match="reorient needs 3D NIfTI"):
        build_training_set([tmp_path / "lps.nii.gz"], sigma_n=0.0, spatial_dims=2, reorient=True)
