"""Training and inference under a noise model (docs/design.md section 6): Poisson-Gaussian microscopy
and noncentral-chi magnitudes are variance-stabilised for training, the prior records the
model, and ``denoise`` / ``posterior`` return results in the units of the input."""

import json

import numpy as np
import pytest
import torch
from _cli_fixtures import cli, one_thread, tiny_protocol
from _micro_fixtures import A, B, write_cells_tif
from _mri_fixtures import shared_data

from ambient_med import noise
from ambient_med.prior import AmbientPrior, PriorMetadata


def _micro_protocol(folder, name="tiny-micro", **data):
    return tiny_protocol(folder, name, data={"reader": "tiff", "kind": "intensity", "coil_maps": False,
                                             "noise_model": "poisson-gaussian", **data},
                         train={"steps": 2, "batch_size": 2, "checkpoint_every": 2})


def _raw_metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["ambient_med"])


def test_prior_trained_on_poisson_gaussian_cells_records_the_model(tmp_path):
    from ambient_med.tasks.train import run_training

    tif = write_cells_tif(tmp_path / "cells.tif", n=6, size=32)
    logs = []
    with one_thread():
        res = run_training([str(tif)], tmp_path / "run", protocol=_micro_protocol(tmp_path), sigma_n="auto",
                           previews=0, handle_signals=False, log=logs.append)
    assert any("poisson-gaussian" in m and "a = " in m and "sigma_n = 1" in m for m in logs), logs
    info = res.info
    assert info.noise["name"] == "poisson-gaussian" and info.sigma_n_data == 1.0
    assert info.noise["a"] == pytest.approx(A, rel=0.25)
    prior = AmbientPrior.load(res.prior_path)
    assert prior.metadata.noise == info.noise and prior.metadata.noise_model == "poisson-gaussian"
    assert prior.noise_model == noise.PoissonGaussian(**{k: v for k, v in info.noise.items() if k != "name"})
    raw = _raw_metadata(res.prior_path)
    assert raw["format_version"] == 2 and raw["noise"]["name"] == "poisson-gaussian"
    # round trip: saving the loaded prior again keeps the model
    again = AmbientPrior.load(prior.save(tmp_path / "again.safetensors"))
    assert again.noise_model == prior.noise_model


def test_gaussian_priors_keep_the_old_format():
    meta = PriorMetadata(network={"spatial_dims": 2, "channels": 1, "sigma_data": 0.5})
    d = json.loads(meta.to_json())
    assert d["format_version"] == 1 and "noise" not in d
    old = PriorMetadata.from_json(json.dumps({k: v for k, v in d.items()}))
    assert old.noise is None


class MeanDenoiser(torch.nn.Module):
    """D(x, sigma) = the spatial mean of x: on a constant image, the posterior mean of its
    stabilised noise is E[z] (a stand-in for a perfect denoiser of flat images)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, sigma):
        return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True).expand_as(x) + 0 * self.w


def _stub_prior(model, scale=7.0):
    meta = PriorMetadata(network={"spatial_dims": 2, "channels": 1, "sigma_data": 0.5}, data_kind="intensity",
                         sigma_n_data=1.0, sigma_n_model=1.0 / scale, scale=scale,
                         noise_model=model.name, noise=model.to_dict())
    return AmbientPrior(MeanDenoiser(), meta)


@pytest.mark.parametrize("m", [3.0, 40.0])
def test_denoise_returns_input_units_through_the_unbiased_inverse(m):
    """Constant image of mean m under Poisson-Gaussian noise -> stabilise -> mean -> invert_mean
    gives m back; the algebraic inverse would be biased low (Jensen), visibly at low counts."""
    model = noise.PoissonGaussian(A, B)
    rng = np.random.default_rng(1)
    from ambient_med.synthetic.fluorescence import poisson_gaussian_noise

    y = torch.as_tensor(poisson_gaussian_noise(np.full((1, 1, 128, 128), m), A, B, rng=rng), dtype=torch.float32)
    prior = _stub_prior(model)
    out = prior.denoise(y)
    assert out.shape == y.shape and out.dtype == torch.float32
    assert float(out.mean()) == pytest.approx(m, rel=0.03)
    biased = float(model.invert_sample(model.stabilise(y).mean()))
    if m < 10:
        assert abs(biased - m) > 3 * abs(float(out.mean()) - m)
    # sigma="auto" fits (a, b) on the input; a number is refused for Poisson-Gaussian priors
    assert float(prior.denoise(y, "auto").mean()) == pytest.approx(m, rel=0.05)
    with pytest.raises(ValueError, match="not one number"):
        prior.denoise(y, 2.0)


def test_posterior_samples_and_std_are_in_input_units():
    model = noise.PoissonGaussian(A, B)
    from ambient_med.synthetic.fluorescence import poisson_gaussian_noise

    m = 20.0   # flat: the stub's posterior mean is exact there, so mean and samples come back near m
    y = torch.as_tensor(poisson_gaussian_noise(np.full((1, 1, 32, 32), m), A, B, rng=np.random.default_rng(3)),
                        dtype=torch.float32)
    prior = _stub_prior(model)
    post = prior.posterior(y, n_samples=3, steps=4, generator=torch.Generator().manual_seed(0),
                           uncertainty="samples")
    assert post["samples"].shape == (3, *y.shape) and post["std"].shape == y.shape
    assert torch.allclose(post["std"], post["samples"].std(0))
    assert float(post["samples"].mean()) == pytest.approx(m, rel=0.2)
    assert float(post["mean"].mean()) == pytest.approx(m, rel=0.05)


def test_tweedie_std_is_mapped_back_to_input_units():
    """The stub's Jacobian is the averaging matrix, so Tweedie's posterior variance in the
    stabilised domain is 1/N per pixel (unit noise, N pixels); through the slope of the inverse
    transform it becomes the noise std at the mean, sqrt(a m + b), over sqrt(N)."""
    model = noise.PoissonGaussian(A, B)
    from ambient_med.synthetic.fluorescence import poisson_gaussian_noise

    m = 20.0
    y = torch.as_tensor(poisson_gaussian_noise(np.full((1, 1, 32, 32), m), A, B, rng=np.random.default_rng(4)),
                        dtype=torch.float32)
    post = _stub_prior(model).posterior(y, n_samples=0, generator=torch.Generator().manual_seed(0))
    assert post["samples"].shape[0] == 0
    expected = np.sqrt(A * m + B) / 32
    assert float(post["std"].mean()) == pytest.approx(expected, rel=0.1)


def test_magnitude_training_through_the_cli_records_noncentral_chi(tmp_path):
    f = shared_data() / "mri" / "wheel_mri_magnitude" / "test_piesno.nii.gz"
    if not f.is_file():
        pytest.skip(f"{f} absent")
    proto = tiny_protocol(tmp_path, "tiny-mag", data={"reader": "nifti", "kind": "magnitude", "coil_maps": False,
                                                      "patch_size": [32, 32]},
                          train={"steps": 2, "batch_size": 2, "checkpoint_every": 2})
    r = cli("train", "--data", f, "--out", tmp_path / "run", "--protocol", proto, "--sigma-n", "auto",
            "--n-coils", "8", "--no-progress", "--previews", "0")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert "noise model: noncentral-chi" in r.stderr and "n_coils = 8" in r.stderr
    prior = AmbientPrior.load(tmp_path / "run" / "prior.safetensors")
    assert prior.metadata.noise["name"] == "noncentral-chi" and prior.metadata.noise["n_coils"] == 8
    assert prior.metadata.noise["sigma"] == pytest.approx(0.010749, rel=1e-3)   # dipy's PIESNO
    assert prior.metadata.sigma_n_data == 1.0
