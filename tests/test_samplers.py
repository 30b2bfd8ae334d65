"""Each sampler, driven by the exact Wiener denoiser, must reproduce the true distribution."""

import pytest
import torch

from ambient_med.diffusion.sampling import denoise_posterior, karras_sigmas, sample
from ambient_med.synthetic.mixtures import GaussianField

FIELD = GaussianField((8, 8), k0=0.12)
N = 6000


def spectrum(x):
    return (torch.fft.fftn(x.double(), dim=(-2, -1), norm="ortho").abs() ** 2).mean((0, 1))


def test_karras_schedule_endpoints_and_monotonicity():
    s = karras_sigmas(10, 0.002, 80.0)
    assert s.shape == (11,) and s[-1] == 0
    assert torch.isclose(s[0], torch.tensor(80.0)) and torch.isclose(s[-2], torch.tensor(0.002))
    assert bool((s[:-1] > s[1:]).all())


@pytest.mark.parametrize("sampler,steps,tol", [("heun", 48, 0.06), ("ancestral", 200, 0.06)])
def test_full_sampling_with_exact_denoiser_reproduces_the_covariance(sampler, steps, tol):
    g = torch.Generator().manual_seed(0)
    x = sample(FIELD.wiener, (N, 1, 8, 8), steps=steps, sampler=sampler, sigma_max=40.0,
               generator=g)
    ratio = spectrum(x) / FIELD.power
    # each frequency's power is a chi-square mean of N draws: relative std sqrt(2/N) ~ 0.018
    assert (ratio - 1).abs().max() < tol, ratio


def test_heun_with_churn_still_reproduces_the_covariance():
    g = torch.Generator().manual_seed(1)
    x = sample(FIELD.wiener, (N, 1, 8, 8), steps=48, sampler="heun", churn=10.0,
               sigma_max=40.0, generator=g)
    assert (spectrum(x) / FIELD.power - 1).abs().max() < 0.08


def test_truncated_sampling_returns_the_blurred_posterior_mean_distribution():
    # D(x_{sigma_n}, sigma_n) for x_{sigma_n} ~ N(0, C + sigma_n^2) has power P^2 / (P + sigma_n^2)
    g = torch.Generator().manual_seed(2)
    sn = 0.5
    x = sample(FIELD.wiener, (N, 1, 8, 8), steps=48, mode="truncated", sigma_n=sn,
               sigma_max=40.0, generator=g)
    want = FIELD.power**2 / (FIELD.power + sn**2)
    assert (spectrum(x) / want - 1).abs().max() < 0.06


def test_posterior_denoising_matches_the_gaussian_posterior():
    g = torch.Generator().manual_seed(3)
    sy = 0.7
    x0 = FIELD.sample(2000, g)
    y = x0 + sy * torch.randn(x0.shape, generator=g)
    out = denoise_posterior(FIELD.wiener, y, sy, n_samples=3, steps=64, generator=g)
    assert torch.allclose(out["mean"], FIELD.wiener(y, sy))
    # residual of posterior samples around the posterior mean has the posterior covariance
    resid = (out["samples"] - out["mean"]).reshape(-1, 1, 8, 8)
    post = FIELD.power * sy**2 / (FIELD.power + sy**2)
    assert (spectrum(resid) / post - 1).abs().max() < 0.1
    # the uncertainty map is the per-pixel posterior std
    assert abs(out["std"].pow(2).mean().item() / post.mean().item() - 1) < 0.1
