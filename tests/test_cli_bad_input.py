"""Bad input never produces a traceback: each case gives exit code 2 and ONE line on stderr
that names the cause (and the file, where there is one)."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch
from _cli_fixtures import assert_user_error, cli, tiny_data, tiny_protocol

from ambient_med.io.fastmri import write_fastmri
from ambient_med.synthetic.phantoms import ellipse_phantom


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    return {"tmp": tmp, "data": tiny_data(tmp / "data", n_files=1, slices=4),
            "proto": tiny_protocol(tmp),
            "images": tiny_protocol(tmp, name="images", data={"reader": "numpy", "kind": "auto",
                                                               "coil_maps": False})}


def train(env, data, *extra, out=None, proto="proto"):
    out = out or env["tmp"] / f"out{np.random.randint(1 << 30)}"
    return cli("train", "--data", data, "--out", out, "--protocol", env[proto],
               "--steps", "2", "--batch-size", "2", "--no-progress", "--previews", "0", *extra)


def test_missing_file(env):
    assert_user_error(train(env, env["tmp"] / "nope.h5"), "nope.h5", "does not exist")


def test_unreadable_not_hdf5(env):
    bad = env["tmp"] / "garbage.h5"
    bad.write_bytes(b"this is not an HDF5 file" * 10)
    assert_user_error(train(env, bad), "garbage.h5", "not a readable HDF5")


def test_unreadable_permission(env, monkeypatch):
    f = env["tmp"] / "locked.h5"
    write_fastmri(f, np.ones((2, 2, 16, 16), np.complex64))
    os.chmod(f, 0)
    if os.geteuid() == 0:  # root reads anything: simulate the permission error h5py would raise
        import ambient_med.io.fastmri as fm

        def denied(path, *a, **k):
            raise PermissionError(13, "Permission denied", str(path))
        monkeypatch.setattr(fm.h5py, "File", denied)
    try:
        assert_user_error(train(env, f), "locked.h5", "permission denied")
    finally:
        os.chmod(f, 0o644)


def test_hdf5_without_kspace(env):
    f = env["tmp"] / "nokspace.h5"
    with h5py.File(f, "w") as h:
        h.create_dataset("reconstruction_rss", data=np.ones((2, 16, 16), np.float32))
    assert_user_error(train(env, f), "nokspace.h5", "kspace")


def test_wrong_dimensions(env):
    f = env["tmp"] / "rank2.h5"
    with h5py.File(f, "w") as h:
        h.create_dataset("kspace", data=np.ones((16, 16), np.complex64))
    assert_user_error(train(env, f), "rank2.h5", "rank 2")
    g = env["tmp"] / "line.npy"
    np.save(g, np.ones(64, np.float32))
    assert_user_error(train(env, g, proto="images"), "line.npy", "spatial")


def test_nan_and_inf(env):
    k = np.fft.fft2(np.stack([ellipse_phantom(16, np.random.default_rng(0))] * 4)[:, None] *
                    np.ones((1, 2, 1, 1)))
    k = (k + 0.05 * np.random.default_rng(1).standard_normal(k.shape)).astype(np.complex64)
    k[2, 0, 3, 3] = np.nan
    f = write_fastmri(env["tmp"] / "nan.h5", k)
    assert_user_error(train(env, f, "--sigma-n", "0.05"), "nan.h5", "NaN or Inf")
    g = env["tmp"] / "inf.npy"
    a = np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)
    a[1, 2, 2] = np.inf
    np.save(g, a)
    assert_user_error(train(env, g, "--sigma-n", "0.1", proto="images"), "inf.npy", "NaN or Inf")


def test_empty_dataset(env):
    empty = env["tmp"] / "empty_folder"
    empty.mkdir()
    assert_user_error(train(env, empty), "empty_folder", "no supported files")
    f = env["tmp"] / "zero_slices.h5"
    with h5py.File(f, "w") as h:
        h.create_dataset("kspace", shape=(0, 2, 16, 16), dtype=np.complex64)
    assert_user_error(train(env, f), "zero_slices.h5", "empty")
    z = env["tmp"] / "zero.h5"
    z.write_bytes(b"")
    assert_user_error(train(env, z), "zero.h5", "empty")


@pytest.mark.parametrize("value,words", [("-1", ["--sigma-n", "-1"]), ("abc", ["--sigma-n", "abc"]),
                                         ("nan", ["--sigma-n"])])
def test_bad_sigma_n(env, value, words):
    assert_user_error(train(env, env["data"], "--sigma-n", value), *words)


def test_sigma_n_zero_means_clean(env):
    out = env["tmp"] / "clean_run"
    r = train(env, env["data"], "--sigma-n", "0", out=out)
    assert r.exit_code == 0, r.stderr
    from ambient_med.prior import AmbientPrior

    m = AmbientPrior.load(out / "prior.safetensors").metadata
    assert m.sigma_n_data == 0.0 and m.sigma_n_model == 0.0


def test_auto_on_noise_free_data(env):
    f = env["tmp"] / "clean.npy"
    a = np.stack([np.abs(ellipse_phantom(16, np.random.default_rng(i), blur=0.0)) for i in range(4)])
    np.save(f, np.round(a * 4) / 4)  # piecewise constant, no noise at all
    r = train(env, f, "--sigma-n", "auto", proto="images")
    assert_user_error(r, "noise-free", "sigma")


def test_3d_protocol_on_2d_data(env):
    proto = tiny_protocol(env["tmp"], name="three_d", data={"spatial_dims": 3})
    r = cli("train", "--data", env["data"], "--out", env["tmp"] / "o3d", "--protocol", proto,
            "--sigma-n", "0.05", "--no-progress")
    line = assert_user_error(r)
    assert "2d" in line.lower() or "spatial_dims=2" in line.lower()


def test_image_size_not_divisible(env):
    data = tiny_data(env["tmp"] / "odd", n_files=1, slices=4, size=18)
    proto = tiny_protocol(env["tmp"], name="deep", network={"features": [8, 8, 8],
                                                            "attention_levels": [False] * 3})
    r = cli("train", "--data", data, "--out", env["tmp"] / "o_odd", "--protocol", proto,
            "--sigma-n", "0.05", "--no-progress")
    assert_user_error(r, "[18, 18]", "divisible by 4")


def test_patch_larger_than_images(env):
    proto = tiny_protocol(env["tmp"], name="big_patch", data={"patch_size": [64, 64]})
    r = cli("train", "--data", env["data"], "--out", env["tmp"] / "o_patch", "--protocol", proto,
            "--sigma-n", "0.05", "--no-progress")
    assert_user_error(r, "first item", "patch_size")


def test_unknown_protocol_key_and_name(env):
    proto = tiny_protocol(env["tmp"], name="typo", loss={"objectve": "ambient"})
    r = cli("train", "--data", env["data"], "--out", env["tmp"] / "o_typo", "--protocol", proto)
    assert_user_error(r, "loss.objectve", "typo.yaml")
    r = cli("train", "--data", env["data"], "--out", env["tmp"] / "o_name", "--protocol", "kneee")
    assert_user_error(r, "unknown protocol 'kneee'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_requested_without_cuda(env):
    assert_user_error(train(env, env["data"], "--device", "cuda"), "cuda", "not available")


def test_out_of_memory(env, monkeypatch):
    import ambient_med.tasks.train as run

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(run, "train", oom)
    assert_user_error(train(env, env["data"], "--sigma-n", "0.05"), "out of memory", "--batch-size")


def test_batch_larger_than_dataset_and_nothing_to_resume(env):
    r = cli("train", "--data", env["data"], "--out", env["tmp"] / "o_big", "--protocol",
            env["proto"], "--batch-size", "64", "--sigma-n", "0.05", "--no-progress")
    assert_user_error(r, "fewer than one batch", "--batch-size")
    r = cli("train", "--data", env["data"], "--out", env["tmp"] / "nothing", "--resume")
    assert_user_error(r, "nothing", "no run to resume")


def test_bad_prior_files(env):
    junk = env["tmp"] / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    assert_user_error(cli("info", junk), "junk.safetensors")
    assert_user_error(cli("info", env["tmp"] / "missing.safetensors"), "not found")
    assert_user_error(cli("sample", "--prior", junk, "--out", env["tmp"] / "s.png"), "junk.safetensors")
    assert_user_error(cli("estimate-noise", env["tmp"] / "nope.h5"), "does not exist")
