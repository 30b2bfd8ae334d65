"""``ambient-med recon``: undersampled k-space file + prior -> posterior mean and std map files; every
bad input is one line naming the file and exit code 2. Tiny untrained priors, 16x16, 3 steps."""

from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from _cli_fixtures import assert_user_error, cli

from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig
from ambient_med.io.volumes import write_cfl
from ambient_med.mri.fft import fftc
from ambient_med.prior import AmbientPrior, PriorMetadata
from ambient_med.synthetic.phantoms import birdcage_maps, ellipse_phantom

SIGMA_K = 0.02


def _save_prior(path, channels=2, kind="complex"):
    net = NetworkConfig(channels=channels, sigma_data=0.5, features=(8, 16),
                        attention_levels=(False, False), norm_num_groups=4, num_head_channels=8)
    torch.manual_seed(0)
    meta = PriorMetadata(network=net.to_dict(), data_kind=kind, scale=1.0, sigma_n_data=SIGMA_K,
                         sigma_n_model=SIGMA_K, training={"image_shape": [16, 16]})
    return AmbientPrior(EDMDenoiser(net), meta).save(path)


def _kspace(slices=2):
    rng = np.random.default_rng(0)
    maps = birdcage_maps(16, 4)
    x = np.stack([ellipse_phantom(16, rng) for _ in range(slices)])
    k = fftc(torch.from_numpy(maps[None] * x[:, None]).to(torch.complex64), axes=(-2, -1)).numpy()
    k = k + SIGMA_K * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
    mask = np.zeros(16, np.float32)
    mask[::2] = 1
    mask[6:11] = 1
    return (k * mask).astype(np.complex64), mask


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recon")
    k, mask = _kspace()
    data = tmp / "under.h5"
    with h5py.File(data, "w") as f:
        f.create_dataset("kspace", data=k)
        f.create_dataset("mask", data=mask)
    return {"tmp": tmp, "data": data, "k": k, "mask": mask,
            "prior": _save_prior(tmp / "prior.safetensors"),
            "magnitude": _save_prior(tmp / "mag.safetensors", channels=1, kind="magnitude")}


def recon(env, data, out, *extra, prior="prior"):
    return cli("recon", "--prior", env[prior], "--data", data, "--out", out, "--steps", "3",
               "--samples", "2", "--device", "cpu", *extra)


def test_recon_h5_writes_mean_and_std_and_never_overwrites(env):
    out = env["tmp"] / "rec.h5"
    r = recon(env, env["data"], out, "--sigma", str(SIGMA_K))
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    assert f"wrote {out}" in r.stdout and "mask from" in r.stderr
    with h5py.File(out) as f:
        mean, std = f["reconstruction_mean"][()], f["reconstruction_std"][()]
        assert f.attrs["method"] == "dc" and f.attrs["steps"] == 3
    assert mean.shape == (2, 16, 16) and np.iscomplexobj(mean) and np.isfinite(mean).all()
    assert std.shape == (2, 16, 16) and std.dtype == np.float32 and (std >= 0).all()
    assert_user_error(recon(env, env["data"], out), "rec.h5", "exists", "--overwrite")
    r = recon(env, env["data"], out, "--overwrite", "--no-progress", "--method", "dps")
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)


def test_recon_cfl_with_detected_mask_to_nifti_and_npy(env):
    base = env["tmp"] / "under_bart"
    write_cfl(base, np.moveaxis(env["k"][0], 0, -1)[:, :, None, :])       # (X, Y, 1, coils)
    r = recon(env, base.with_suffix(".cfl"), env["tmp"] / "rec.nii.gz", "--no-progress")
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    assert "zero-filled detection" in r.stderr
    img = nib.load(env["tmp"] / "rec.nii.gz").get_fdata()
    assert img.shape == (16, 16, 1) and nib.load(env["tmp"] / "rec_std.nii.gz").shape == (16, 16, 1)
    np.save(env["tmp"] / "mask.npy", env["mask"])
    r = recon(env, env["data"], env["tmp"] / "rec.npy", "--no-progress", "--mask",
              env["tmp"] / "mask.npy")
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    assert np.load(env["tmp"] / "rec.npy").dtype == np.complex64
    assert np.load(env["tmp"] / "rec_std.npy").shape == (2, 16, 16)


def test_recon_bad_inputs_one_line_exit_2(env):
    t = env["tmp"]
    assert_user_error(recon(env, t / "nope.h5", t / "o1.h5"), "nope.h5", "does not exist")
    garbage = t / "garbage.h5"
    garbage.write_bytes(b"not an HDF5 file" * 10)
    assert_user_error(recon(env, garbage, t / "o2.h5"), "garbage.h5", "not a readable HDF5")
    nok = t / "nokspace.h5"
    with h5py.File(nok, "w") as f:
        f.create_dataset("reconstruction_rss", data=np.ones((2, 16, 16), np.float32))
    assert_user_error(recon(env, nok, t / "o3.h5"), "nokspace.h5", "kspace")
    badmask = t / "badmask.h5"
    with h5py.File(badmask, "w") as f:
        f.create_dataset("kspace", data=env["k"])
        f.create_dataset("mask", data=np.ones(15, np.float32))
    assert_user_error(recon(env, badmask, t / "o4.h5"), "badmask.h5", "mask", "broadcast")
    nan = t / "nan.h5"
    k = env["k"].copy()
    k[1, 0, 3, 0] = np.nan
    with h5py.File(nan, "w") as f:
        f.create_dataset("kspace", data=k)
        f.create_dataset("mask", data=env["mask"])
    assert_user_error(recon(env, nan, t / "o5.h5"), "nan.h5", "NaN")
    assert_user_error(recon(env, env["data"], t / "o6.h5", prior="magnitude"),
                      "mag.safetensors", "channel")
    assert_user_error(recon(env, env["data"], t / "o7.h5", "--sigma", "-1"), "--sigma")
    assert_user_error(recon(env, env["data"], t / "o8.txt"), "o8.txt", ".h5")
    assert not any((t / f"o{i}.h5").exists() for i in range(1, 8))
