"""The public prior API cannot mix units: images and sigma in the units of the user's data
(what ``estimate-noise`` prints) in and out, complex images as complex tensors; model space
only when asked for (``space="model"``)."""

from __future__ import annotations

import pytest
import torch

from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig
from ambient_med.prior import AmbientPrior, PriorMetadata

NET = NetworkConfig(channels=2, sigma_data=0.5, features=(8, 16), attention_levels=(False, False),
                    norm_num_groups=4, num_head_channels=8)
S = 4.0


def _priors():
    torch.manual_seed(0)
    model = EDMDenoiser(NET)
    meta = dict(network=NET.to_dict(), data_kind="complex", training={"image_shape": [16, 16]})
    unit = AmbientPrior(model, PriorMetadata(scale=1.0, sigma_n_data=0.1, sigma_n_model=0.1, **meta))
    scaled = AmbientPrior(model, PriorMetadata(scale=S, sigma_n_data=0.1 * S, sigma_n_model=0.1,
                                               **meta))
    return unit, scaled


def test_denoise_and_score_take_data_units_and_complex_tensors():
    unit, scaled = _priors()
    y = torch.randn(3, 1, 16, 16, dtype=torch.complex64)          # complex image, data units
    d1 = unit.denoise(y, 0.3)
    assert d1.dtype == torch.complex64 and d1.shape == y.shape
    # the same image recorded S times brighter, with S times the noise: S times the answer
    torch.testing.assert_close(scaled.denoise(S * y, 0.3 * S), S * d1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scaled.score(S * y, 0.3 * S), unit.score(y, 0.3) / S,
                               rtol=1e-4, atol=1e-5)
    # real (re, im) channels are accepted and come back real
    real = torch.view_as_real(y[:, 0]).permute(0, 3, 1, 2)
    torch.testing.assert_close(scaled.denoise(S * real, 0.3 * S),
                               S * torch.view_as_real(d1[:, 0]).permute(0, 3, 1, 2),
                               rtol=1e-4, atol=1e-5)
    # the expert path: model space, no conversion
    torch.testing.assert_close(scaled.denoise(real, 0.3, space="model"), unit.denoise(real, 0.3))
    assert scaled.sigma_n == pytest.approx(0.1 * S)              # data units, like estimate-noise
    with pytest.raises(ValueError, match="shape"):
        scaled.denoise(torch.randn(2, 3, 16, 16), 0.1)


def test_sample_and_posterior_in_data_units_with_sampling_defaults(monkeypatch):
    import ambient_med.prior as prior_mod

    unit, scaled = _priors()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = unit.sample(2, steps=2, generator=g1), scaled.sample(2, steps=2, generator=g2)
    assert a.dtype == torch.complex64 and a.shape == (2, 1, 16, 16)
    torch.testing.assert_close(b, S * a)
    seen = {}
    real = prior_mod.denoise_posterior

    def spy(model, y, sigma_y, **kw):
        seen.update(kw, sigma_y=sigma_y)
        return real(model, y, sigma_y, **{**kw, "steps": 2})

    monkeypatch.setattr(prior_mod, "denoise_posterior", spy)
    y = S * torch.randn(2, 1, 16, 16, dtype=torch.complex64)
    post = scaled.posterior(y, 0.3 * S, n_samples=2, generator=torch.Generator().manual_seed(0))
    assert seen["sigma_y"] == pytest.approx(0.3)                 # converted to model space
    assert "sampler" not in seen and seen.get("steps") is None   # the sampling module's defaults
    assert post["mean"].dtype == torch.complex64 and post["samples"].shape == (2, 2, 1, 16, 16)
    torch.testing.assert_close(post["mean"], scaled.denoise(y, 0.3 * S))


def test_principal_components_scale_with_the_data_and_stay_unit_vectors():
    unit, scaled = _priors()
    y = torch.randn(2, 1, 16, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(3))
    opts = dict(k=2, generator=torch.Generator().manual_seed(0))
    v1, c1 = unit.principal_components(y, 0.3, **opts)
    opts["generator"] = torch.Generator().manual_seed(0)
    v2, c2 = scaled.principal_components(S * y, 0.3 * S, **opts)
    assert c1.dtype == torch.complex64 and c1.shape == (2, 2, 1, 16, 16)
    # S times brighter data: S^2 times the variances, the same unit directions
    torch.testing.assert_close(v2, S**2 * v1, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(c1.abs().square().sum(dim=(2, 3, 4)), torch.ones(2, 2))
    overlap = (c1.conj() * c2).sum(dim=(2, 3, 4)).abs()
    torch.testing.assert_close(overlap, torch.ones(2, 2), rtol=1e-3, atol=1e-3)
