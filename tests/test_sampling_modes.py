"""The sampling modes: ``auto`` (the default) stops at 0.5 sigma_n for an ambient prior of noisy
data and runs to 0 otherwise; ``stop`` goes with ``auto`` and ``truncated`` only."""
import pytest
import torch

from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig
from ambient_med.diffusion.sampling import AUTO_STOP, resolve_mode, sample
from ambient_med.prior import AmbientPrior, PriorMetadata
from ambient_med.training.config import SamplerConfig

NET = NetworkConfig(channels=1, sigma_data=0.5, features=(8, 16), attention_levels=(False, False),
                    norm_num_groups=4, num_head_channels=8)


def test_resolve_mode():
    assert resolve_mode("auto", 0.1) == ("truncated", AUTO_STOP) == ("truncated", 0.5)
    assert resolve_mode("auto", 0.0) == ("full", 1.0)
    assert resolve_mode("auto", 0.1, 0.25) == ("truncated", 0.25)
    assert resolve_mode("truncated", 0.1) == ("truncated", 1.0)
    assert resolve_mode("full", 0.1) == ("full", 1.0)
    with pytest.raises(ValueError, match="stop"):
        resolve_mode("full", 0.1, 0.5)
    with pytest.raises(ValueError, match="mode"):
        resolve_mode("half", 0.1)


def test_protocol_sampler_keys():
    assert SamplerConfig().mode == "auto"
    SamplerConfig(mode="truncated", stop=0.25)
    with pytest.raises(ValueError, match="stop"):
        SamplerConfig(mode="full", stop=0.5)
    with pytest.raises(ValueError, match="stop"):
        SamplerConfig(stop=0.0)


@pytest.mark.parametrize("objective, sigma_n, expect", [
    ("ambient+consistency", 0.2, 0.5), ("naive", 0.2, None), ("clean", 0.0, None)])
def test_prior_default_is_auto(objective, sigma_n, expect):
    torch.manual_seed(0)
    model = EDMDenoiser(NET).eval()
    prior = AmbientPrior(model, PriorMetadata(network=NET.to_dict(), sigma_n_data=sigma_n,
                                              sigma_n_model=sigma_n,
                                              training={"image_shape": [8, 8], "objective": objective}))
    got = prior.sample(2, steps=4, generator=torch.Generator().manual_seed(1), space="model")
    kw = {"mode": "full"} if expect is None else {"mode": "truncated", "stop": expect,
                                                  "sigma_n": sigma_n}
    with torch.no_grad():
        ref = sample(model, (2, 1, 8, 8), steps=4, generator=torch.Generator().manual_seed(1), **kw)
    torch.testing.assert_close(got, ref)
