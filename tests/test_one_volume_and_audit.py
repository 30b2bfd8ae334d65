"""What a user with one file meets: a single volume or large image trains with no protocol named;
NaN k-space with ``--sigma-n auto`` is one line even through the cache workers; the audit takes
Poisson-Gaussian microscopy priors, magnitude priors and 3D priors, from their own file formats."""

from __future__ import annotations

import json

import numpy as np
from _cli_fixtures import assert_user_error, cli, tiny_protocol
from _micro_fixtures import write_cells_tif

from ambient_med.io.fastmri import write_fastmri
from ambient_med.prior import AmbientPrior
from ambient_med.synthetic.phantoms import ellipse_phantom


def _magnitude_volume(path, shape=(48, 48, 12), sigma=3.0, seed=0):
    """A magnitude NIfTI of ellipse slices with Rician noise (one coil)."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    clean = np.stack([np.abs(ellipse_phantom(shape[0], rng)) * 100 for _ in range(shape[2])], -1)
    noisy = np.abs(clean + sigma * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)))
    nib.save(nib.Nifti1Image(noisy.astype(np.float32), np.eye(4)), str(path))
    return path


def test_nan_kspace_with_sigma_auto_through_the_cache_workers(tmp_path):
    """The reported case: 4 slices x 4 coils at 64x64, NaN in slice 0, no protocol named (the
    knee protocol fills its cache with DataLoader workers)."""
    rng = np.random.default_rng(0)
    img = np.stack([ellipse_phantom(64, rng) for _ in range(4)])[:, None] * np.ones((1, 4, 1, 1))
    k = np.fft.fft2(img, norm="ortho")
    k = (k + 0.05 * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))).astype(np.complex64)
    k[0, 0, 3, 3] = np.nan
    f = write_fastmri(tmp_path / "nan.h5", k)
    r = cli("train", "--data", f, "--out", tmp_path / "run", "--sigma-n", "auto", "--no-progress")
    assert_user_error(r, "nan.h5", "slice 0", "NaN")


def test_one_3d_volume_trains_with_no_protocol_named(tmp_path):
    f = _magnitude_volume(tmp_path / "one.nii.gz")
    r = cli("train", "--data", f, "--out", tmp_path / "run", "--sigma-n", "auto", "--steps", "1",
            "--batch-size", "2", "--previews", "0", "--no-progress")
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    assert "protocol: nifti-3d" in r.stderr and "1 volume(s)" in r.stdout
    assert (tmp_path / "run" / "prior.safetensors").is_file()


def test_one_large_2d_image_trains_with_no_protocol_named(tmp_path):
    import tifffile
    from _micro_fixtures import cells_stack

    _, noisy = cells_stack(1, 256, seed=1)
    f = tmp_path / "one.tif"
    tifffile.imwrite(f, noisy[0], photometric="minisblack")
    r = cli("train", "--data", f, "--out", tmp_path / "run", "--sigma-n", "auto", "--steps", "1",
            "--batch-size", "2", "--previews", "0", "--no-progress")
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    assert "protocol: microscopy-2d" in r.stderr and "1 image(s)" in r.stdout


def _train(tmp_path, data, name, **data_keys):
    proto = tiny_protocol(tmp_path, name, data={"reader": "auto", "kind": "auto", "coil_maps": False,
                                                 **data_keys},
                          train={"steps": 2, "batch_size": 2, "checkpoint_every": 2}, sampler={"previews": 0})
    out = tmp_path / f"run-{name}"
    r = cli("train", "--data", data, "--out", out, "--protocol", proto, "--sigma-n", "auto", "--no-progress")
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return out


def _audit(tmp_path, run, data, heldout, name) -> dict:
    out = tmp_path / f"audit-{name}.json"
    r = cli("audit", "--prior", run, "--data", data, "--heldout", heldout, "--n-samples", "3",
            "--steps", "2", "--out", out)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return json.loads(out.read_text())


def _check_report(rep: dict, noise_model: str, stabilised: bool):
    assert rep["noise_model"] == noise_model
    assert ("variance-stabilised" in rep["space"]) == stabilised
    att = rep["reconstruction_attack"]
    assert att["train_error"] > 0 and att["heldout_error"] > 0 and att["train_over_heldout"] > 0
    assert (att["sigma_data_units"] is None) == stabilised
    assert -1 <= rep["nearest_rho_quantiles"]["0.5"] <= 1


def test_audit_takes_a_poisson_gaussian_microscopy_prior_and_tiff_stacks(tmp_path):
    train = write_cells_tif(tmp_path / "train.tif", n=6, size=32, seed=0)
    held = write_cells_tif(tmp_path / "held.tif", n=4, size=32, seed=5)
    run = _train(tmp_path, train, "micro", noise_model="poisson-gaussian")
    assert AmbientPrior.load(run).noise_model.name == "poisson-gaussian"
    _check_report(_audit(tmp_path, run, train, held, "micro"), "poisson-gaussian", stabilised=True)


def test_audit_takes_a_magnitude_prior_2d_and_3d(tmp_path):
    train = _magnitude_volume(tmp_path / "train.nii.gz", seed=0)
    held = _magnitude_volume(tmp_path / "held.nii.gz", seed=9)
    run2 = _train(tmp_path, train, "mag2d", noise_model="rician", patch_size=[32, 32])
    _check_report(_audit(tmp_path, run2, train, held, "mag2d"), "rician", stabilised=True)
    run3 = _train(tmp_path, train, "mag3d", noise_model="rician", spatial_dims=3, patch_size=[16, 16, 8])
    rep = _audit(tmp_path, run3, train, held, "mag3d")
    _check_report(rep, "rician", stabilised=True)
    assert rep["n_train"] == 1                                        # one volume, one 3D item


def test_audit_refuses_kspace_and_constant_images(tmp_path):
    run = _train(tmp_path, write_cells_tif(tmp_path / "t.tif", n=6, size=32), "m", noise_model="poisson-gaussian")
    np.save(tmp_path / "flat.npy", np.ones((3, 32, 32), np.float32))
    assert_user_error(cli("audit", "--prior", run, "--data", tmp_path / "flat.npy"), "flat.npy", "constant")
    k = (np.random.default_rng(0).standard_normal((2, 2, 32, 32)) * (1 + 1j)).astype(np.complex64)
    f = write_fastmri(tmp_path / "k.h5", k)
    assert_user_error(cli("audit", "--prior", run, "--data", f), "k.h5", "k-space")
