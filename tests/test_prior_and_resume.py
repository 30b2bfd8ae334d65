"""The prior file round trip and exact resume of training."""

import pytest
import torch

from ambient_med.diffusion.losses import LossConfig
from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig
from ambient_med.errors import DataError
from ambient_med.prior import AmbientPrior, PriorMetadata
from ambient_med.synthetic.mixtures import GaussianField
from ambient_med.training.loop import TensorDataset, TrainConfig, train

NET = NetworkConfig(sigma_data=1.0, features=(8, 16), attention_levels=(False, False),
                    norm_num_groups=4)


def _data():
    g = torch.Generator().manual_seed(0)
    x0 = GaussianField((8, 8)).sample(64, g)
    return TensorDataset(x0 + 0.5 * torch.randn(x0.shape, generator=g), 0.5)


def test_prior_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = EDMDenoiser(NET)
    meta = PriorMetadata(network=NET.to_dict(), data_kind="complex", sigma_n_data=3.0,
                         sigma_n_model=0.5, scale=6.0, training={"image_shape": [8, 8]})
    prior = AmbientPrior(model, meta)
    path = prior.save(tmp_path / "p.safetensors")
    loaded = AmbientPrior.load(path)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(prior.denoise(x, 0.3), loaded.denoise(x, 0.3))
    assert loaded.metadata == meta
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k])
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(prior.sample(2, steps=3, generator=g1), loaded.sample(2, steps=3, generator=g2))
    with pytest.raises(FileExistsError):
        prior.save(path)


def test_loading_a_non_prior_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x80\x04 pickled stuff")
    with pytest.raises(DataError, match="model.safetensors"):
        AmbientPrior.load(bad)
    with pytest.raises(DataError, match="not found"):
        AmbientPrior.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("objective", ["ambient", "ambient+consistency"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, objective):
    data = _data()
    loss = LossConfig(objective=objective, sigma_data=1.0, consistency_start=0.0)
    cfg = TrainConfig(steps=6, batch_size=16, checkpoint_every=100, log_every=2, lr_warmup=2)

    torch.manual_seed(0)
    straight = train(EDMDenoiser(NET), data, loss, cfg, run_dir=tmp_path / "a")

    torch.manual_seed(0)
    first = train(EDMDenoiser(NET), data, loss, cfg, run_dir=tmp_path / "b", stop_after=3)
    assert first.step == 3
    torch.manual_seed(123)  # a different fresh init must not matter: everything comes from disk
    resumed = train(EDMDenoiser(NET), data, loss, cfg, run_dir=tmp_path / "b", resume=True)
    assert resumed.step == 6
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # steps 2, 4, 6: the log continues, nothing duplicated
