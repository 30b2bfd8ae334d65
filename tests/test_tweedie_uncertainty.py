"""Posterior uncertainty from Tweedie's second moment, ``Cov[x0 | x] = sigma^2 dD/dx``, checked
against closed forms: the Gaussian field (Wiener filter: the posterior variance is the same in
every pixel), the Gaussian mixture of fields and the air mixture (exact zeros: the posterior
variance is exactly 0 in the background), and the i.i.d. pixel mixture (posterior variance per
pixel in closed form)."""

import math

import pytest
import torch

from ambient_med.diffusion.tweedie import colour_masks, posterior_principal_components, posterior_variance, probe_count
from ambient_med.synthetic.mixtures import (
    DenseGaussianMixture,
    GaussianField,
    GaussianMixtureField,
    PixelMixture,
    air_mask,
    air_mixture,
)

AIR = air_mixture()
FIELD = GaussianField((8, 8))
FIELDMIX = GaussianMixtureField((8, 8))
PIXMIX = PixelMixture(weights=(0.5, 0.3, 0.2), means=(-1.2, 0.4, 1.8), stds=(0.3, 0.5, 0.2))


def _noisy(dist, n, sigma, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = dist.sample(n, g).double()
    return x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64), g


def test_dense_mixture_satisfies_tweedie_second_moment():
    """The closed forms agree with each other: sigma^2 dD/dx is the posterior covariance."""
    y, _ = _noisy(AIR, 3, 0.4)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(
            lambda v: AIR.denoise(v.reshape(1, 1, 8, 8), 0.4).reshape(-1), y[i].reshape(-1))
        cov = AIR.posterior_covariance(y[i:i + 1], 0.4)[0]
        assert torch.allclose(0.16 * jac, cov, atol=1e-10)
        assert torch.allclose(torch.diagonal(cov), AIR.posterior_variance(y[i:i + 1], 0.4).reshape(-1))


def test_air_mixture_has_exact_zeros_and_its_denoiser_keeps_them():
    mask = air_mask(AIR)
    assert mask.sum() == 32
    x = AIR.sample(500, torch.Generator().manual_seed(1))
    assert x[:, 0][:, mask].abs().max() == 0
    y, _ = _noisy(AIR, 200, 0.5)
    assert AIR.denoise(y, 0.5)[:, 0][:, mask].abs().max() < 1e-12
    assert AIR.posterior_variance(y, 0.5)[:, 0][:, mask].abs().max() < 1e-12


@pytest.mark.parametrize("case,sigma", [("field", 1.0), ("fieldmix", 0.5), ("air", 0.5),
                                        ("air", 1.0), ("pixmix", 0.5)])
def test_probed_variance_matches_the_closed_form(case, sigma):
    """With a period covering the whole 8x8 image the probes are exact (up to the finite
    difference, forward or central); with the default settings (rank 8, period 4), within 10% on average of the exact per-pixel
    posterior variance, and 0 where the posterior variance is 0."""
    dist, exact_var = {
        "field": (FIELD, lambda y, s: torch.full_like(y, FIELD.mmse(s))),
        "fieldmix": (FIELDMIX, FIELDMIX.posterior_variance),
        "air": (AIR, AIR.posterior_variance),
        "pixmix": (PIXMIX, lambda y, s: PIXMIX.posterior(y, s)[1]),
    }[case]
    den = {"field": FIELD.wiener}.get(case, getattr(dist, "denoise", None))
    y, g = _noisy(dist, 64, sigma)
    truth = exact_var(y, sigma).double()
    for difference in ("forward", "central"):
        full = posterior_variance(lambda x, s: den(x.double(), s).float(), y.float(), sigma, period=8, rank=0,
                                  generator=g, difference=difference)
        assert float((full.double() - truth).abs().mean() / truth.mean()) < 1e-3
    default = posterior_variance(lambda x, s: den(x.double(), s).float(), y.float(), sigma,
                                 generator=g)
    assert float((default.double() - truth).abs().mean() / truth.mean()) < 0.10
    if case == "air":
        assert default[:, 0][:, air_mask(AIR)].abs().max() < 1e-6


def test_posterior_principal_components_match_the_exact_eigenpairs():
    y, g = _noisy(AIR, 4, 0.5, seed=3)
    lam, comps = posterior_principal_components(lambda x, s: AIR.denoise(x.double(), s).float(),
                                                y.float(), 0.5, k=3, iters=12, generator=g)
    cov = AIR.posterior_covariance(y, 0.5)
    ev, evec = torch.linalg.eigh(cov)
    assert torch.allclose(lam.double(), ev.flip(-1)[:, :3], rtol=0.02, atol=1e-4)
    # the leading component spans the leading eigenvector (up to sign)
    lead = comps[:, 0].reshape(4, -1).double()
    cos = (lead * evec[..., -1]).sum(-1).abs()
    assert (cos > 0.98).all()
    assert torch.allclose(comps.reshape(4, 3, -1).norm(dim=-1), torch.ones(4, 3), atol=1e-4)


def test_colour_masks_cover_every_pixel_once():
    for shape in [(2, 8, 8), (1, 6, 10), (1, 4, 4, 4)]:
        masks = colour_masks(shape, 4)
        assert len(masks) == probe_count(shape, 4)
        cover = torch.stack(masks).sum(0)
        assert (cover == 1).all()


@pytest.mark.parametrize("rank,power", [(0, 1), (8, 1), (4, 0), (4, 2)])
def test_probe_count_is_the_number_of_network_calls_less_one(rank, power):
    """One call for ``D(x)``, then one per Jacobian product (a forward difference) with one probe
    per call: what the timing of a std map follows."""
    calls = []

    def den(a, s):
        calls.append(a.shape[0])
        return 0.5 * a

    posterior_variance(den, torch.randn(1, 1, 8, 8), 0.3, rank=rank, power=power, batch=1)
    assert len(calls) == 1 + probe_count((1, 8, 8), 4, rank=rank, power=power)
    with pytest.raises(ValueError, match="forward"):
        posterior_variance(den, torch.randn(1, 1, 8, 8), 0.3, difference="backward")


def test_identity_denoiser_has_variance_sigma_squared_and_constant_has_zero():
    """``D(x) = x`` (no prior information): Cov = sigma^2 I; ``D(x) = c``: Cov = 0."""
    x = torch.randn(3, 2, 8, 8)
    v = posterior_variance(lambda a, s: a, x, 0.3, rank=0)
    assert torch.allclose(v, torch.full_like(x, 0.09), rtol=1e-3)
    # the default's low-rank part, a random subspace of a flat spectrum, costs a few percent
    v = posterior_variance(lambda a, s: a, x, 0.3, generator=torch.Generator().manual_seed(0))
    assert float((v - 0.09).abs().mean()) < 0.05 * 0.09
    v0 = posterior_variance(lambda a, s: torch.zeros_like(a), x, 0.3)
    assert v0.abs().max() == 0


def test_dense_mixture_moments_match_samples():
    d = DenseGaussianMixture((2, 2), (0.3, 0.7), torch.tensor([[0.0] * 4, [1.0, 2.0, 0.0, -1.0]]),
                             torch.stack([torch.zeros(4, 4), torch.eye(4) * 0.5]))
    mean, cov = d.moments()
    x = d.sample(200000, torch.Generator().manual_seed(4)).reshape(-1, 4).double()
    assert torch.allclose(x.mean(0), torch.as_tensor(mean), atol=0.01)
    assert torch.allclose(torch.cov(x.T), torch.as_tensor(cov), atol=0.02)
    assert math.isclose(float(d.w.sum()), 1.0)
