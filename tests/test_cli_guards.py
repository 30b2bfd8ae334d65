"""Guards that keep the noise model true: a sigma_n that leaves no signal is refused before
training; a non-finite loss stops the run, keeps the last good checkpoint and writes no prior;
denoising at sigma = 0 is the identity."""

from __future__ import annotations

import pytest
import torch
from _cli_fixtures import assert_user_error, cli, tiny_data, tiny_protocol

from ambient_med.training.checkpoint import list_checkpoints


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guards")
    return {"tmp": tmp, "data": tiny_data(tmp / "data", n_files=1, slices=4)}


def _train(env, out, proto, *extra):
    return cli("train", "--data", env["data"], "--out", out, "--protocol", proto, "--previews", "0",
               "--no-progress", "--device", "cpu", "--batch-size", "2", *extra)


@pytest.mark.parametrize("sigma", ["1000", "0.5"])
def test_sigma_n_at_or_above_the_data_std_is_refused_before_training(env, sigma):
    out = env["tmp"] / f"loud{sigma}"
    r = _train(env, out, tiny_protocol(env["tmp"]), "--sigma-n", sigma)
    line = assert_user_error(r, "sigma_n", "standard deviation", "no signal")
    assert str(env["data"]) in line                       # names the data
    assert not (out / "prior.safetensors").exists() and not (out / "checkpoints").exists()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(env, monkeypatch):
    import ambient_med.training.loop as train_mod

    real, calls = train_mod.objective_loss, {"n": 0}

    def poisoned(*a, **k):                                # steps 6, 7, ... diverge
        out = real(*a, **k)
        calls["n"] += 1
        if calls["n"] >= 6:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(train_mod, "objective_loss", poisoned)
    out = env["tmp"] / "nan"
    proto = tiny_protocol(env["tmp"], "nanproto", train={"steps": 12, "checkpoint_every": 4,
                                                         "log_every": 100})
    r = _train(env, out, proto, "--sigma-n", "0.05")
    line = assert_user_error(r, "non-finite", "checkpoint")
    assert "step 4" in line
    ck = list_checkpoints(out / "checkpoints")
    assert [k for k, _ in ck] == [4]                      # step 8 (after the NaN) never written
    state = torch.load(ck[-1][1], weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (out / "prior.safetensors").exists()       # never a NaN prior


def test_denoise_at_sigma_zero_is_the_identity():
    from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig
    from ambient_med.prior import AmbientPrior, PriorMetadata

    torch.manual_seed(0)
    net = NetworkConfig(sigma_data=0.5, features=(8, 16), attention_levels=(False, False),
                        norm_num_groups=4, num_head_channels=8)
    prior = AmbientPrior(EDMDenoiser(net), PriorMetadata(network=net.to_dict(), scale=3.7))
    x = torch.randn(3, 1, 16, 16)
    assert torch.equal(prior.denoise(x, 0.0), x)
    mixed = prior.denoise(x, torch.tensor([0.0, 0.3, 0.0]))
    assert torch.equal(mixed[[0, 2]], x[[0, 2]]) and torch.isfinite(mixed).all()
    assert not torch.equal(mixed[1], x[1])
    assert torch.equal(prior.denoise(x, 0.0, space="model"), x)
