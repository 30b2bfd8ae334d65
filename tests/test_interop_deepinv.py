"""The prior as a DeepInverse denoiser. The unit conversion and differentiability are checked
without deepinv; the deepinv solver run is skipped when deepinv is not installed."""

from __future__ import annotations

import pytest
import torch

from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig
from ambient_med.interop.common import prior_denoise
from ambient_med.prior import AmbientPrior, PriorMetadata

NET = NetworkConfig(channels=2, sigma_data=0.5, features=(8, 16), attention_levels=(False, False),
                    norm_num_groups=4, num_head_channels=8)


def _prior(scale=4.0):
    torch.manual_seed(0)
    return AmbientPrior(EDMDenoiser(NET), PriorMetadata(
        network=NET.to_dict(), data_kind="complex", scale=scale, sigma_n_data=0.1 * scale,
        sigma_n_model=0.1, training={"image_shape": [16, 16]}))


def test_prior_denoise_matches_prior_units_and_is_differentiable():
    prior = _prior()
    x = torch.randn(3, 2, 16, 16) * 4.0
    sigma = torch.tensor([0.4, 1.0, 0.0])
    ref = prior.denoise(x, sigma)                                  # data units, real channels
    out = prior_denoise(prior, x.requires_grad_(), sigma)
    torch.testing.assert_close(out.detach(), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[2].detach(), x[2].detach())     # sigma 0: unchanged
    (g,) = torch.autograd.grad(out[:2].sum(), x)
    assert torch.isfinite(g).all() and g[:2].abs().sum() > 0
    torch.testing.assert_close(prior_denoise(prior, x.detach() / 4.0, sigma / 4.0, "model"),
                               ref / 4.0, rtol=1e-4, atol=1e-5)


def test_deepinv_diffpir_runs_with_our_denoiser():
    dinv = pytest.importorskip("deepinv")
    from ambient_med.interop.deepinv import AmbientDenoiser

    den = AmbientDenoiser(_prior(1.0), space="model")
    assert isinstance(den, dinv.models.Denoiser)
    torch.manual_seed(0)
    physics = dinv.physics.Inpainting(img_size=(2, 16, 16), mask=0.5,
                                      noise_model=dinv.physics.GaussianNoise(sigma=0.05))
    x = 0.5 * torch.randn(1, 2, 16, 16)
    y = physics(x)
    solver = dinv.sampling.DiffPIR(den, dinv.optim.data_fidelity.L2(), sigma=0.05, max_iter=3)
    x_hat = solver(y, physics)
    assert x_hat.shape == x.shape and torch.isfinite(x_hat).all()
    # the data term keeps the observed pixels close to the measurements
    kept = physics.mask.expand_as(x) > 0
    assert float((x_hat - y)[kept].pow(2).mean()) ** 0.5 < 0.5
