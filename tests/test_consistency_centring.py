"""The consistency pair (``consistency_variant="pair"``) at its default settings is centred at the exact denoisers of
non-Gaussian data (a Gaussian mixture of fields, i.i.d. mixture pixels) and of Gaussian data.

For exact denoisers the pair ``(T - D(x_u1, u)) . (T - D(x_u2, u))`` has conditional mean
``||T - E_kernel[D(x_u, u) | x_s]||^2``, zero only if the reverse kernel is right: a Gaussian
test cannot see a kernel variance error, the mixtures can. The bias of every variant that was
tried, with its cost, is in benchmarks/results/consistency_kernels.md."""

import math

import pytest
import torch

from ambient_med.diffusion.losses import LossConfig
from ambient_med.diffusion.objective import consistency_loss
from ambient_med.synthetic.mixtures import GaussianField, GaussianMixtureField, PixelMixture

FIELDMIX = GaussianMixtureField((8, 8))
PIXMIX = PixelMixture(weights=(0.5, 0.3, 0.2), means=(-1.2, 0.4, 1.8), stds=(0.3, 0.5, 0.2))
FIELD = GaussianField((8, 8))
CASES = {"fieldmix": (FIELDMIX, FIELDMIX.denoise), "pixmix": (PIXMIX, PIXMIX.denoise),
         "gaussian": (FIELD, FIELD.wiener)}


@pytest.mark.parametrize("case,sigma_n", [("fieldmix", 1.0), ("fieldmix", 0.5), ("pixmix", 0.5),
                                          ("gaussian", 1.0)])
def test_default_consistency_pair_is_centred_at_the_exact_denoiser(case, sigma_n):
    cfg = LossConfig(sigma_data=1.0, consistency_variant="pair")  # the pair's own defaults
    _assert_centred(case, sigma_n, cfg, seed=0)


def _assert_centred(case, sigma_n, cfg, seed):
    """5 x 4000 pair-loss draws at the exact denoiser: mean within 3 standard errors of 0."""
    dist, denoiser = CASES[case]
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(5):
        x0 = dist.sample(4000, g).double()
        y = x0 + sigma_n * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        vals.append(consistency_loss(denoiser, y, torch.full((4000,), sigma_n, dtype=y.dtype),
                                     cfg, generator=g))
    v = torch.cat(vals)
    z = v.mean() / (v.std() / math.sqrt(v.numel()))
    assert abs(z) < 3, f"mean {v.mean():.4g} is {z:.1f} standard errors from 0"



@pytest.mark.parametrize("ratio", [(0.8, 0.95), (0.5, 0.9)])
@pytest.mark.parametrize("case,sigma_n", [("fieldmix", 1.0), ("pixmix", 0.5), ("gaussian", 1.0)])
def test_pairs_reaching_above_sigma_n_stay_centred(case, sigma_n, ratio):
    """``consistency_max_ratio = 2``: upper levels above sigma_n are exact re-noised draws of y;
    the pair stays centred (the default step ratio and a wider one)."""
    cfg = LossConfig(sigma_data=1.0, consistency_variant="pair", consistency_max_ratio=2.0,
                     consistency_step_ratio=ratio)
    _assert_centred(case, sigma_n, cfg, seed=1)


def test_consistency_ratios_are_validated():
    with pytest.raises(ValueError, match="consistency_max_ratio"):
        LossConfig(consistency_max_ratio=0.5)
