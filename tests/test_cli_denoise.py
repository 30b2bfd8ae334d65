"""``ambient-med denoise``: file in, posterior mean (and std map) out in the same format and
units, tiled beyond the training patch; bad inputs one line and exit 2."""

import numpy as np
import pytest
import tifffile
from _cli_fixtures import assert_user_error, cli
from _micro_fixtures import A, B
from test_noise_model_training import _stub_prior

from ambient_med import noise


@pytest.fixture
def stub_prior(tmp_path):
    """A prior file with the mean-denoiser stub (its state dict: one parameter ``w``), so the
    plumbing is tested without training. Saved through AmbientPrior.save; loaded by the CLI
    through a monkeypatched network class."""
    prior = _stub_prior(noise.PoissonGaussian(A, B))
    prior.metadata.training["image_shape"] = [16, 16]
    return prior


@pytest.fixture
def patched(monkeypatch, stub_prior, tmp_path):
    from test_noise_model_training import MeanDenoiser

    import ambient_med.prior as P

    monkeypatch.setattr(P, "EDMDenoiser", lambda cfg: MeanDenoiser())
    monkeypatch.setattr(P.NetworkConfig, "from_dict", staticmethod(lambda d: d))
    path = stub_prior.save(tmp_path / "prior.safetensors")
    return path


def _flat(tmp_path, m=30.0, shape=(40, 40)):
    from ambient_med.synthetic.fluorescence import poisson_gaussian_noise

    y = poisson_gaussian_noise(np.full(shape, m), A, B, rng=np.random.default_rng(0)).astype(np.float32)
    f = tmp_path / "in.tif"
    tifffile.imwrite(f, y, photometric="minisblack")
    return f, y


def test_denoise_tiff_in_tiff_out_tiled_with_std(patched, tmp_path):
    f, y = _flat(tmp_path)
    out = tmp_path / "out.tif"
    r = cli("denoise", "--prior", patched, "--input", f, "--out", out, "--samples", "2", "--sigma", "prior", "--no-progress")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    mean, std = tifffile.imread(out), tifffile.imread(tmp_path / "out_std.tif")
    assert mean.shape == y.shape == std.shape          # 40x40 > 16x16 patch: tiled and blended
    assert float(mean.mean()) == pytest.approx(30.0, rel=0.1) and np.all(std >= 0)
    r = cli("denoise", "--prior", patched, "--input", f, "--out", out, "--no-progress")
    assert_user_error(r, "out.tif", "--overwrite")


def test_denoise_writes_a_tweedie_std_map_by_default(patched, tmp_path):
    f, y = _flat(tmp_path, shape=(16, 16))
    out = tmp_path / "out.tif"
    r = cli("denoise", "--prior", patched, "--input", f, "--out", out, "--sigma", "prior", "--no-progress")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    std = tifffile.imread(tmp_path / "out_std.tif")
    # the stub averages the image: Tweedie's std is the noise std at the mean over sqrt(N)
    assert float(std.mean()) == pytest.approx(np.sqrt(A * 30.0 + B) / 16, rel=0.15)
    r = cli("denoise", "--prior", patched, "--input", f, "--out", tmp_path / "o2.tif", "--sigma", "prior",
            "--uncertainty", "none", "--no-progress")
    assert r.exit_code == 0 and not (tmp_path / "o2_std.tif").exists()
    r = cli("denoise", "--prior", patched, "--input", f, "--out", tmp_path / "o3.tif",
            "--uncertainty", "samples", "--no-progress")
    assert_user_error(r, "--samples 2")


def test_denoise_npy_and_nifti_keep_their_format(patched, tmp_path):
    import nibabel as nib

    _, y = _flat(tmp_path, shape=(2, 16, 16))
    np.save(tmp_path / "s.npy", y)
    r = cli("denoise", "--prior", patched, "--input", tmp_path / "s.npy", "--out", tmp_path / "o.npy", "--sigma", "prior", "--no-progress")
    assert r.exit_code == 0, r.stderr
    assert np.load(tmp_path / "o.npy").shape == (2, 16, 16)
    nib.save(nib.Nifti1Image(y[0], np.diag([2, 2, 2, 1.0])), tmp_path / "v.nii.gz")
    r = cli("denoise", "--prior", patched, "--input", tmp_path / "v.nii.gz", "--out", tmp_path / "o.nii.gz",
            "--sigma", "prior", "--no-progress")
    assert r.exit_code == 0, r.stderr
    o = nib.load(tmp_path / "o.nii.gz")
    assert o.shape == (16, 16) and np.allclose(o.affine, np.diag([2, 2, 2, 1.0]))


def test_denoise_bad_inputs_one_line(patched, tmp_path):
    r = cli("denoise", "--prior", patched, "--input", tmp_path / "missing.tif", "--out", tmp_path / "o.tif")
    assert_user_error(r, "missing.tif", "does not exist")
    (tmp_path / "x.txt").write_text("hello")
    r = cli("denoise", "--prior", patched, "--input", tmp_path / "x.txt", "--out", tmp_path / "o.txt")
    assert_user_error(r, "unsupported format")
    bad = np.ones((16, 16), np.float32)
    bad[3, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    r = cli("denoise", "--prior", patched, "--input", tmp_path / "nan.npy", "--out", tmp_path / "o.npy")
    assert_user_error(r, "nan.npy", "NaN")
    np.save(tmp_path / "rgb.npy", np.ones((1, 3, 16, 16), np.float32))
    r = cli("denoise", "--prior", patched, "--input", tmp_path / "rgb.npy", "--out", tmp_path / "o.npy")
    assert_user_error(r, "rgb.npy", "3 channel(s)", "trained on 1")
    np.save(tmp_path / "ok.npy", np.full((16, 16), 30, np.float32))
    r = cli("denoise", "--prior", patched, "--input", tmp_path / "ok.npy", "--out", tmp_path / "o.npy", "--sigma", "2")
    assert_user_error(r, "--sigma", "not one number")


def test_denoise_png_frame_keeps_its_dtype_and_reports_the_noise_fit(patched, tmp_path):
    from PIL import Image

    _, y = _flat(tmp_path, shape=(64, 64))                 # enough 8x8 blocks for the fit
    for dt in (np.uint8, np.uint16):
        f = tmp_path / f"frame_{np.dtype(dt).name}.png"
        Image.fromarray(np.clip(np.rint(y), 0, 255).astype(dt)).save(f)
        out = tmp_path / f"den_{np.dtype(dt).name}.png"
        r = cli("denoise", "--prior", patched, "--input", f, "--out", out, "--no-progress")
        assert r.exit_code == 0, (r.stdout, r.stderr)
        assert "noise model poisson-gaussian (a = " in r.stderr and "fitted on the input" in r.stderr
        mean = np.asarray(Image.open(out))
        assert mean.dtype == dt and mean.shape == y.shape
        assert float(mean.mean()) == pytest.approx(30.0, rel=0.15)
        std = tifffile.imread(tmp_path / f"den_{np.dtype(dt).name}_std.tif")   # float, not rounded
        assert std.dtype == np.float32 and std.shape == y.shape and np.all(std >= 0)


def test_denoise_saves_posterior_samples_in_the_input_format(patched, tmp_path):
    f, y = _flat(tmp_path, shape=(16, 16))
    out = tmp_path / "out.tif"
    r = cli("denoise", "--prior", patched, "--input", f, "--out", out, "--samples", "3", "--save-samples",
            "--sigma", "prior", "--no-progress")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    draws = [tifffile.imread(tmp_path / f"out_sample{k}.tif") for k in (1, 2, 3)]
    assert all(d.shape == y.shape for d in draws) and not np.allclose(draws[0], draws[1])
    # the std map is the std of exactly these samples
    assert np.allclose(tifffile.imread(tmp_path / "out_std.tif"), np.std(draws, axis=0, ddof=1), rtol=1e-4, atol=1e-4)
    r = cli("denoise", "--prior", patched, "--input", f, "--out", tmp_path / "o2.tif", "--save-samples",
            "--no-progress")
    assert_user_error(r, "--save-samples", "--samples")


def test_denoise_a_folder_of_frames_into_a_folder(patched, tmp_path):
    from PIL import Image

    src = tmp_path / "frames"
    src.mkdir()
    _, y = _flat(tmp_path, shape=(64, 64))
    for i in range(3):
        Image.fromarray(np.clip(np.rint(y + i), 0, 255).astype(np.uint8)).save(src / f"f{i}.png")
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "denoised"
    r = cli("denoise", "--prior", patched, "--input", src, "--out", out, "--no-progress")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert sorted(p.name for p in out.iterdir()) == ["f0.png", "f0_std.tif", "f1.png", "f1_std.tif",
                                                     "f2.png", "f2_std.tif"]
    assert r.stderr.count("noise model poisson-gaussian") == 3       # one fit per frame
    r = cli("denoise", "--prior", patched, "--input", src, "--out", out, "--no-progress")
    assert_user_error(r, "f0.png", "--overwrite")
    r = cli("denoise", "--prior", patched, "--input", src, "--out", src, "--overwrite", "--no-progress")
    assert_user_error(r, "other than the input")


def test_denoise_keeps_an_integer_tiff_stack_integer(patched, tmp_path):
    _, y = _flat(tmp_path, shape=(3, 16, 16))               # a stack of 3 frames
    f = tmp_path / "stack16.tif"
    tifffile.imwrite(f, np.clip(np.rint(y), 0, 65535).astype(np.uint16), photometric="minisblack")
    r = cli("denoise", "--prior", patched, "--input", f, "--out", tmp_path / "den.tif", "--samples", "2",
            "--save-samples", "--sigma", "prior", "--no-progress")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    mean, std = tifffile.imread(tmp_path / "den.tif"), tifffile.imread(tmp_path / "den_std.tif")
    sample = tifffile.imread(tmp_path / "den_sample1.tif")
    assert mean.dtype == sample.dtype == np.uint16 and mean.shape == sample.shape == (3, 16, 16)
    assert std.dtype == np.float32                            # a std map is not rounded


def test_denoise_out_of_memory_is_one_line_naming_tile(patched, tmp_path, monkeypatch):
    import ambient_med.diffusion.tweedie as tweedie

    def oom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 34359738368 bytes.")
    monkeypatch.setattr(tweedie, "posterior_variance", oom)
    f, _ = _flat(tmp_path, shape=(16, 16))
    r = cli("denoise", "--prior", patched, "--input", f, "--out", tmp_path / "o.tif", "--sigma", "prior",
            "--no-progress")
    assert r.exit_code == 2 and "Traceback" not in r.stderr + r.stdout, (r.exit_code, r.stderr)
    last = r.stderr.strip().splitlines()[-1]          # after the line that names the noise model
    assert last.startswith("error: out of memory") and "--tile" in last, last
