"""Issue 8: n_coils and the noise model as protocol keys and CLI options, used by the
estimators; non-finite and noise-free inputs refused in one line (exit 2)."""

import json

import nibabel as nib
import numpy as np
import pytest
from _cli_fixtures import assert_user_error, cli
from _mri_fixtures import shared_data

from ambient_med import noise
from ambient_med.errors import ConfigError, NoiseEstimateError
from ambient_med.io.fastmri import write_fastmri
from ambient_med.synthetic.phantoms import make_phantom_dataset
from ambient_med.training.config import apply_overrides, load_protocol, protocol_from_dict

DIPY_PIESNO = 0.010749  # dipy 1.12.1 piesno(test_piesno, N=8); dipy is not a dependency


def _piesno_file():
    return shared_data() / "mri" / "wheel_mri_magnitude" / "test_piesno.nii.gz"


def test_estimate_noise_cli_with_n_coils_matches_dipy():
    r = cli("estimate-noise", _piesno_file(), "--n-coils", "8", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["sigma"] == pytest.approx(DIPY_PIESNO, rel=1e-3)
    assert d["noise_model"] == "noncentral-chi" and d["n_coils"] == 8
    one = json.loads(cli("estimate-noise", _piesno_file(), "--json").stdout.strip())
    assert one["noise_model"] == "rician" and one["n_coils"] == 1  # the file does not say


def test_train_path_estimate_with_n_coils_matches_dipy():
    """What ``train --protocol nifti-3d --sigma-n auto --n-coils 8`` estimates (run.load_data)."""
    from ambient_med.tasks.train import load_data

    proto = apply_overrides(load_protocol("nifti-3d"), {"data": {"n_coils": 8, "sigma_n": "auto"}})
    _, info = load_data([str(_piesno_file())], proto, "auto")
    # the magnitudes are variance-stabilised with that model: sigma_n = 1 in stabilised units
    assert info.noise == {"name": "noncentral-chi", "sigma": pytest.approx(DIPY_PIESNO, rel=1e-3), "n_coils": 8}
    assert info.sigma_n_data == 1.0
    assert info.noise_model == "noncentral-chi" and info.n_coils == 8
    assert info.noise_method.startswith("PIESNO") and "N=8" in info.noise_method


def test_noise_model_keys_select_or_refuse():
    assert noise.resolve_noise_model("kspace") == ("gaussian", "kspace-corners", None)
    assert noise.resolve_noise_model("magnitude", n_coils=8) == ("noncentral-chi", "piesno", 8)
    assert noise.resolve_noise_model("magnitude", file_n_coils=4) == ("noncentral-chi", "piesno", 4)
    assert noise.resolve_noise_model("magnitude") == ("rician", "piesno", 1)
    for args, words in [(("magnitude", "gaussian"), "does not describe magnitude"),
                        (("magnitude", "rician", "auto", 8), "rician means one coil"),
                        (("magnitude", "noncentral-chi"), "needs the number of coils"),
                        (("complex", "rician"), "for magnitude data"),
                        (("kspace", "auto", "piesno"), "use kspace-corners")]:
        with pytest.raises(ConfigError, match=words):
            noise.resolve_noise_model(*args)


def test_protocol_naming_a_missing_noise_model_is_refused_at_load():
    # poisson-gaussian is implemented now (variance-stabilised training); an unknown name is not
    assert protocol_from_dict({"data": {"noise_model": "poisson-gaussian"}}).data.noise_model == "poisson-gaussian"
    with pytest.raises(ConfigError) as e:
        protocol_from_dict({"data": {"noise_model": "mixed-poisson"}})
    msg = str(e.value)
    assert "mixed-poisson" in msg and "not implemented" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="noise-scan"):
        protocol_from_dict({"data": {"noise_estimator": "noise-scan"}})
    with pytest.raises(ConfigError, match="n_coils"):
        protocol_from_dict({"data": {"n_coils": 0}})


def test_estimate_noise_cli_refuses_nan_anywhere(tmp_path):
    truth = make_phantom_dataset(tmp_path / "d", n_files=1, slices=5, size=16, coils=2, sigma=0.05)
    import h5py

    with h5py.File(truth["files"][0], "r") as f:
        k = f["kspace"][()]
    k[0, 0, 3, 3] = np.nan  # not the middle slice the estimator reads
    bad = write_fastmri(tmp_path / "nan.h5", k)
    assert_user_error(cli("estimate-noise", bad), "nan.h5", "NaN or Inf")
    vol = np.abs(np.random.default_rng(0).normal(size=(16, 16, 4))).astype(np.float32)
    vol[1, 2, 3] = np.inf
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "inf.nii.gz")
    assert_user_error(cli("estimate-noise", tmp_path / "inf.nii.gz"), "inf.nii.gz", "NaN or Inf")


def test_train_refuses_nan_nifti_in_one_line(tmp_path):
    vol = np.abs(np.random.default_rng(0).normal(size=(16, 16, 8))).astype(np.float32)
    vol[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "nan.nii.gz")
    r = cli("train", "--data", tmp_path / "nan.nii.gz", "--out", tmp_path / "run", "--protocol",
            "nifti-3d", "--sigma-n", "auto", "--steps", "1", "--no-progress")
    assert_user_error(r, "nan.nii.gz", "NaN or Inf")


def test_every_estimator_refuses_noise_free_data(tmp_path):
    const = np.full((32, 32, 8), 100.0, np.float32)
    with pytest.raises(NoiseEstimateError, match="noise-free"):
        noise.from_magnitude(const, n_coils=1)  # PIESNO said 0.56 before
    with pytest.raises(NoiseEstimateError, match="noise-free"):
        noise.from_magnitude(const, n_coils=8, measurements_axis=-1)
    with pytest.raises(NoiseEstimateError, match="noise-free"):
        noise.from_image_wavelet(const[..., 0])
    with pytest.raises(NoiseEstimateError, match="noise-free"):
        noise.from_noise_scan(np.zeros((4, 100), np.complex64) + 1)
    nib.save(nib.Nifti1Image(const, np.eye(4)), tmp_path / "const.nii.gz")
    assert_user_error(cli("estimate-noise", tmp_path / "const.nii.gz"), "const.nii.gz", "noise-free")
