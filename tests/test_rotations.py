"""Posterior means over quarter turns (``diffusion.rotations``): the exact denoiser of a
rotation-invariant law is a fixed point of the ensemble, an error that depends on the orientation
cancels, and the priors of the microscopy protocols (only those) average over turns."""

from __future__ import annotations

import pytest
import torch

from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig
from ambient_med.diffusion.rotations import ensemble_mean, rotate
from ambient_med.noise import PoissonGaussian
from ambient_med.prior import AmbientPrior, PriorMetadata
from ambient_med.synthetic.mixtures import GaussianField
from ambient_med.training.config import load_protocol

FIELD = GaussianField((8, 8))


def test_exact_denoiser_of_an_isotropic_field_is_a_fixed_point():
    """The Wiener filter of a stationary isotropic Gaussian field commutes with quarter turns."""
    g = torch.Generator().manual_seed(0)
    x = FIELD.sample(6, g).double() + 0.5 * torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
    exact = FIELD.wiener(x, 0.5)
    ens = ensemble_mean(lambda t: FIELD.wiener(t, 0.5), [x], rotations=True)
    torch.testing.assert_close(ens, exact)


def test_an_orientation_error_cancels_and_a_plain_mean_keeps_it():
    """A learned denoiser off by a directional derivative (an error with an orientation): the
    turns average it to exactly zero; the mean over draws without turns does not."""
    g = torch.Generator().manual_seed(1)
    x = FIELD.sample(4, g).double() + 0.5 * torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    exact = lambda t: FIELD.wiener(t, 0.5)  # noqa: E731
    learned = lambda t: exact(t) + 0.1 * (torch.roll(t, -1, -1) - torch.roll(t, 1, -1))  # noqa: E731
    draws = [x, x.clone(), x.clone(), x.clone()]
    torch.testing.assert_close(ensemble_mean(learned, draws, rotations=True), exact(x))
    assert (ensemble_mean(learned, draws, rotations=False) - exact(x)).abs().max() > 0.01


@pytest.mark.parametrize("n_inputs,calls", [(1, 4), (4, 4), (6, 6)])
def test_each_draw_takes_its_own_turn_so_four_draws_cost_four_calls(n_inputs, calls):
    seen = []

    def fn(t):
        seen.append(t)
        return t

    inputs = [torch.full((1, 1, 3, 5), float(k)) + torch.arange(15.0).reshape(1, 1, 3, 5) for k in range(n_inputs)]
    out = ensemble_mean(fn, inputs, rotations=True)
    assert len(seen) == calls
    assert [tuple(t.shape[-2:]) for t in seen[:4]] == [(3, 5), (5, 3), (3, 5), (5, 3)]  # non-square turns
    expect = sum(inputs[k % n_inputs] for k in range(calls)) / calls
    torch.testing.assert_close(out, expect)
    assert torch.equal(rotate(rotate(inputs[0], 3), -3), inputs[0])


def test_only_the_microscopy_protocols_declare_rotation_invariance():
    for name in ("microscopy-2d", "microscopy-2d-cpu", "microscopy-3d"):
        assert load_protocol(name).data.rotation_invariant
    for name in ("fastmri-knee-multicoil", "fastmri-brain-multicoil", "nifti-3d", "demo"):
        assert not load_protocol(name).data.rotation_invariant


def _prior(rotation_invariant: bool) -> AmbientPrior:
    torch.manual_seed(0)
    net = NetworkConfig(channels=1, sigma_data=0.5, features=(8, 16), attention_levels=(False, False),
                        norm_num_groups=4, num_head_channels=8)
    model = EDMDenoiser(net).eval()
    with torch.no_grad():
        for p in model.parameters():  # MONAI zero-initialises the output convolution
            p.add_(0.05 * torch.randn_like(p))
    noise = PoissonGaussian(2.0, 4.0, 30.0, equalise=True).to_dict()
    return AmbientPrior(model, PriorMetadata(
        network=net.to_dict(), sigma_n_data=1.0, sigma_n_model=0.2, scale=5.0, noise_model="poisson-gaussian",
        noise=noise, training={"image_shape": [16, 16], "rotation_invariant": rotation_invariant}))


def test_a_rotation_invariant_prior_denoises_with_the_turn_ensemble():
    """``AmbientPrior.denoise`` of a microscopy prior: top-up draw k in turn k; without the flag
    the plain mean of the draws (what priors trained before the key give)."""
    y = 30.0 + 2.0 * torch.poisson(torch.full((2, 1, 16, 12), 15.0))
    on, off = _prior(True), _prior(False)
    assert on.rotation_invariant and not off.rotation_invariant
    model = on.input_noise(y, "prior")
    zs = [on.to_model(model.stabilise_observation(y, seed=k)) for k in range(4)]
    den = lambda t: on.denoise_model(t, on.sigma_to_model(1.0))  # noqa: E731
    for prior, rot in ((on, True), (off, False)):
        expect = model.invert_mean(prior.to_data(ensemble_mean(den, zs, rot), as_complex=False))
        torch.testing.assert_close(prior.denoise(y, "prior"), expect)
    assert (on.denoise(y, "prior") - off.denoise(y, "prior")).abs().max() > 1e-3
    # posterior() reports the same mean as denoise()
    torch.testing.assert_close(on.posterior(y, "prior", n_samples=0)["mean"], on.denoise(y, "prior"))


def test_z_stacks_turn_in_the_image_plane_only():
    """A 3D stack (N, C, Z, Y, X) turns in (Y, X): the planes stay in their order."""
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 1, 2, 3, 4)
    seen = []
    out = ensemble_mean(lambda t: seen.append(t.shape) or t, [x], rotations=True)
    assert seen == [(1, 1, 2, 3, 4), (1, 1, 2, 4, 3)] * 2
    torch.testing.assert_close(out, x)
    assert torch.equal(rotate(x, 1)[0, 0, 1], torch.rot90(x[0, 0, 1]))
