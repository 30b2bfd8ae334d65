"""Every command through typer's test runner on tiny synthetic fastMRI files: train writes a
complete run folder and a prior with the right metadata; info, sample and estimate-noise read
it back; existing outputs are never replaced without asking."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from _cli_fixtures import TRUE_SIGMA, assert_user_error, cli, one_thread, tiny_data, tiny_protocol

from ambient_med.diffusion.networks import count_parameters
from ambient_med.prior import AmbientPrior


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    data = tiny_data(tmp / "data", n_files=2, slices=4)
    proto = tiny_protocol(tmp)
    out = tmp / "run"
    r = cli("train", "--data", data, "--out", out, "--protocol", proto, "--sigma-n", "auto",
            "--steps", "6", "--batch-size", "2", "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return {"tmp": tmp, "data": data, "proto": proto, "out": out, "result": r}


def test_train_writes_run_folder_and_prior(trained):
    out = trained["out"]
    assert (out / "prior.safetensors").is_file() and (out / "samples.png").is_file()
    assert f"prior: {out / 'prior.safetensors'}" in trained["result"].stdout
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["train"]["steps"] == 6 and cfg["train"]["batch_size"] == 2  # options win
    assert cfg["network"]["features"] == [8, 16]                            # protocol values kept
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert "consistency" in " ".join(rows[-1]) or rows[-1]["loss"] > 0

    prior = AmbientPrior.load(out / "prior.safetensors")
    m = prior.metadata
    assert m.data_kind == "complex" and m.channels == 2 and m.spatial_dims == 2
    assert m.training["image_shape"] == [16, 16] and m.training["steps"] == 6
    # sigma_n auto: the k-space corner estimate of the known noise, both spaces stored
    assert abs(m.sigma_n_data / TRUE_SIGMA - 1) < 0.3
    assert m.sigma_n_model == pytest.approx(m.sigma_n_data / m.scale, rel=1e-6)
    assert m.sigma_data == pytest.approx(cfg["resolved_from_data"]["sigma_data"])
    assert "corner" in m.training["noise_method"]


def test_existing_out_is_refused_then_overwrite_replaces(trained):
    out = trained["out"]
    before = (out / "prior.safetensors").stat().st_mtime_ns
    r = cli("train", "--data", trained["data"], "--out", out, "--protocol", trained["proto"],
            "--steps", "2", "--batch-size", "2", "--no-progress")
    assert_user_error(r, str(out), "--resume", "--overwrite")
    assert (out / "prior.safetensors").stat().st_mtime_ns == before

    out2 = trained["tmp"] / "run2"
    out2.mkdir()
    (out2 / "keep.txt").write_text("mine")
    r = cli("train", "--data", trained["data"], "--out", out2, "--protocol", trained["proto"],
            "--steps", "2", "--batch-size", "2", "--sigma-n", "0.05", "--previews", "0",
            "--overwrite", "--no-progress")
    assert r.exit_code == 0, r.stderr
    assert not (out2 / "keep.txt").exists() and (out2 / "prior.safetensors").is_file()


def test_info_describes_the_prior(trained):
    r = cli("info", trained["out"] / "prior.safetensors", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    prior = AmbientPrior.load(trained["out"] / "prior.safetensors")
    assert d["parameters"] == count_parameters(prior.model)
    assert d["image_shape"] == [16, 16] and d["data_kind"] == "complex"
    assert d["sigma_n_data"] == pytest.approx(prior.sigma_n)           # data units, as estimate-noise
    assert d["sigma_n_model"] == pytest.approx(prior.metadata.sigma_n_model)
    text = cli("info", trained["out"]).stdout          # a run folder works too
    assert "parameters" in text and str(d["parameters"]) in text


def test_sample_writes_png_and_npy_and_never_overwrites(trained):
    dst = trained["tmp"] / "samples" / "s"
    r = cli("sample", "--prior", trained["out"] / "prior.safetensors", "--n", "3", "--steps", "2",
            "--out", dst, "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    a = np.load(dst.with_suffix(".npy"))
    assert a.shape == (3, 1, 16, 16) and np.iscomplexobj(a) and np.all(np.isfinite(a))
    assert dst.with_suffix(".png").stat().st_size > 0
    r = cli("sample", "--prior", trained["out"] / "prior.safetensors", "--n", "2", "--steps", "2",
            "--out", dst.with_suffix(".npy"), "--mode", "truncated")
    assert_user_error(r, "exists", "--overwrite")
    assert np.load(dst.with_suffix(".npy")).shape[0] == 3          # untouched
    r = cli("sample", "--prior", trained["out"] / "prior.safetensors", "--n", "2", "--steps", "2",
            "--out", dst.with_suffix(".npy"), "--mode", "truncated", "--overwrite")
    assert r.exit_code == 0 and np.load(dst.with_suffix(".npy")).shape[0] == 2
    assert_user_error(cli("sample", "--prior", trained["out"], "--out", dst, "--mode", "half",
                          "--overwrite"), "--mode")


def test_estimate_noise_reports_estimate_method_uncertainty(trained):
    r = cli("estimate-noise", trained["data"], "--json")
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert abs(row["sigma"] / TRUE_SIGMA - 1) < 0.3
        assert "corner" in row["method"] and 0 < row["uncertainty"] < 0.5
    text = cli("estimate-noise", trained["data"]).stdout
    assert "sigma_n =" in text and "%" in text


def test_resume_of_a_finished_run_extends_it(trained, tmp_path):
    import shutil

    out = tmp_path / "ext"
    shutil.copytree(trained["out"], out)
    r = cli("train", "--data", trained["data"], "--out", out, "--resume", "--steps", "8",
            "--previews", "0", "--no-progress")
    assert r.exit_code == 0, r.stderr
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]
    assert AmbientPrior.load(out / "prior.safetensors").metadata.training["steps"] == 8
    # resumed with the run's own protocol and sigma_n, not the defaults
    assert yaml.safe_load((out / "config.yaml").read_text())["network"]["features"] == [8, 16]


def test_demo_small(tmp_path):
    from ambient_med.tasks.demo import run_demo

    with one_thread():
        rep = run_demo(tmp_path / "demo", steps=3, device="cpu", n_files=1, slices=16,
                       previews=2, noise_samples=2, log=lambda m: None)
    f = rep["figures"]
    assert (tmp_path / "demo" / "report.png").stat().st_size > 0
    assert json.loads((tmp_path / "demo" / "report.json").read_text())["steps"] == 3
    assert abs(f["estimated_sigma_n_training_set"] / f["true_sigma_n"] - 1) < 0.2
    assert 10 < f["psnr_noisy_db"] < 40 and np.isfinite(f["psnr_denoised_db"])
    assert "true sigma_n" in rep["table"] and "PSNR denoised" in rep["table"]
    # both priors trained with the same budget, and the number that tells them apart
    assert (tmp_path / "demo" / "run-naive" / "prior.safetensors").is_file()
    assert (tmp_path / "demo" / "run-ambient-consistency" / "prior.safetensors").is_file()
    residual = f["background_noise_over_sigma_n"]
    assert set(residual) == {"naive", "ambient+consistency", "noisy data", "denoised"}
    assert 0.8 < residual["noisy data"] < 2.0          # the background holds noise only
    assert f["background_pixels"] > 0 and all(np.isfinite(v) for v in residual.values())
    assert -1 <= f["posterior_std_error_pearson"] <= 1
    md = (tmp_path / "demo" / "report.md").read_text()
    assert "naive samples" in md and "ambient+consistency samples" in md
    assert "Pearson: posterior std vs |error|" in md
    r = cli("demo", "--out", tmp_path / "demo", "--steps", "1")
    assert_user_error(r, "exists", "--overwrite")
