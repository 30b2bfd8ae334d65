"""Samplers at the package's DEFAULT settings, driven by exact denoisers of a Gaussian field and of
a non-Gaussian distribution (a mixture of Gaussian fields), against closed forms.

Gaussian data only test conditional means; the mixture also tests variances and mode weights.
"""

import pytest
import torch

from ambient_med.diffusion.sampling import denoise_posterior, sample
from ambient_med.synthetic.mixtures import GaussianField, GaussianMixtureField, radial_power_bands

FIELD = GaussianField((8, 8), k0=0.12)
MIX = GaussianMixtureField((8, 8))


def _field_posterior_variance(y, sigma):
    pv = (FIELD.power * sigma**2 / (FIELD.power + sigma**2)).mean()
    return torch.full_like(y, float(pv))


CASES = {"gaussian": (FIELD, FIELD.wiener, _field_posterior_variance),
         "mixture": (MIX, MIX.denoise, MIX.posterior_variance)}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("sigma_y", [0.3, 0.8])
def test_posterior_samples_at_default_steps_have_the_closed_form_variance_and_coverage(case, sigma_y):
    dist, denoiser, post_var = CASES[case]
    g = torch.Generator().manual_seed(0)
    x0 = dist.sample(120, g)
    y = x0 + sigma_y * torch.randn(x0.shape, generator=g)
    k = 64
    out = denoise_posterior(denoiser, y, sigma_y, n_samples=k, generator=g)  # default sampler/steps
    assert torch.allclose(out["mean"], denoiser(y, sigma_y))
    want = post_var(y, sigma_y)
    # per-pixel posterior variance of the samples (around their own mean) vs the closed form
    ratio = out["samples"].var(0).mean() / want.mean()
    assert abs(ratio.item() - 1) < 0.05, ratio
    # the 2-std interval of the uncertainty map covers the truth 95.4% of the time; with the std
    # estimated from k = 64 draws the exact rate is P(|t_63| < 2) = 95.0%
    cover = ((x0 - out["mean"]).abs() <= 2 * out["std"]).float().mean().item()
    assert abs(cover - 0.954) < 0.015, cover


def test_the_first_order_chain_is_what_under_disperses():
    """The defect the default fixes: DDPM's first-order step at 16 steps keeps ~60% of the variance."""
    g = torch.Generator().manual_seed(1)
    x0 = FIELD.sample(200, g)
    y = x0 + 0.8 * torch.randn(x0.shape, generator=g)
    first = denoise_posterior(FIELD.wiener, y, 0.8, n_samples=16, steps=16, order=1, generator=g)
    ratio = first["samples"].var(0).mean() / _field_posterior_variance(y, 0.8).mean()
    assert ratio < 0.8


@pytest.mark.parametrize("sampler", ["heun", "ancestral"])
@pytest.mark.parametrize("case", CASES)
def test_full_sampling_at_default_steps_matches_band_power_and_mode_weights(case, sampler):
    dist, denoiser, _ = CASES[case]
    g = torch.Generator().manual_seed(2)
    x = sample(denoiser, (4000, 1, 8, 8), sampler=sampler, generator=g)  # default steps
    truth = radial_power_bands(dist.sample(40000, torch.Generator().manual_seed(9)))
    ratio = radial_power_bands(x) / truth
    assert abs(ratio - 1).max() < 0.05, ratio
    if case == "mixture":
        weights = torch.bincount(MIX.classify(x), minlength=MIX.n_components) / x.shape[0]
        assert (weights.double() - MIX.w).abs().sum() / 2 < 0.03, weights


def test_posterior_with_a_deterministic_sampler_is_refused():
    y = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="stochastic"):
        denoise_posterior(FIELD.wiener, y, 0.5, sampler="heun")
