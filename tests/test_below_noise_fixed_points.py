"""The default below-``sigma_n`` objective, at the package's default settings, keeps the exact
denoiser stationary and does not keep the identity.

Measured as the training loop sees the term (``ambient_med.diffusion.fixed_points``): built with the model
under test, then only its gradient-carrying call perturbed along a direction ``v``; the mean
per-sample derivative over its standard error is the z-score.

- Stationarity: at the exact denoisers of the i.i.d. pixel mixture, the Gaussian mixture of
  fields, the Gaussian field, +-1 pixels and the air mixture (exact zeros), every direction's
  z-score is within 3 at 20,000 draws.
- No identity trap: with ``D(x, s) = x`` below ``sigma_n`` (exact above), the derivative toward the
  exact denoiser is negative (descent moves toward it) by more than 5 standard errors on the air
  mixture, while the nearby-levels pair (``consistency_variant="pair"``) barely sees it.
"""

import pytest
import torch

from ambient_med.diffusion.fixed_points import expected_update, identity_below
from ambient_med.diffusion.losses import LossConfig
from ambient_med.synthetic.mixtures import GaussianField, GaussianMixtureField, PixelMixture, air_mixture

AIR = air_mixture()
FIELDMIX = GaussianMixtureField((8, 8))
PIXMIX = PixelMixture(weights=(0.5, 0.3, 0.2), means=(-1.2, 0.4, 1.8), stds=(0.3, 0.5, 0.2))
PM1 = PixelMixture()
FIELD = GaussianField((8, 8))
CASES = {"air": (AIR, AIR.denoise), "fieldmix": (FIELDMIX, FIELDMIX.denoise),
         "pixmix": (PIXMIX, PIXMIX.denoise), "gaussian": (FIELD, FIELD.wiener),
         "pm1": (PM1, PM1.denoise)}


def _exact(case):
    dist, den = CASES[case]
    return (lambda x, s: den(x.double(), s)), (lambda n, g: dist.sample(n, g))


@pytest.mark.slow
@pytest.mark.parametrize("case,sigma_n", [("pixmix", 0.5), ("fieldmix", 0.5), ("fieldmix", 1.0),
                                          ("gaussian", 1.0), ("pm1", 0.5), ("air", 0.5),
                                          ("air", 1.0)])
def test_exact_denoiser_is_stationary_for_the_default_objective(case, sigma_n):
    torch.set_num_threads(1)
    exact, draw = _exact(case)
    r = expected_update(exact, exact, draw, sigma_n, LossConfig(sigma_data=1.0), draws=20000)
    assert r.draws >= 20000
    for k, z in r.z.items():
        assert abs(z) < 3, f"{case}@{sigma_n}: update along {k} is {z:+.1f} standard errors from 0"


@pytest.mark.parametrize("sigma_n", [0.5, 1.0])
def test_default_objective_leaves_the_identity_below_sigma_n(sigma_n):
    torch.set_num_threads(1)
    exact, draw = _exact("air")
    r = expected_update(identity_below(exact, sigma_n), exact, draw, sigma_n,
                        LossConfig(sigma_data=1.0), draws=4000)
    assert r.z["toward_exact"] < -5, r.z
    # the nearby-levels pair has the identity as a fixed point below sigma_n
    pair = expected_update(identity_below(exact, sigma_n), exact, draw, sigma_n,
                           LossConfig(sigma_data=1.0, consistency_variant="pair"), draws=4000)
    assert abs(pair.z["toward_exact"]) < abs(r.z["toward_exact"]) / 4


def test_the_exact_denoiser_scores_better_than_the_identity():
    """The same statistic at the exact denoiser is within noise of 0, at the identity far below."""
    exact, draw = _exact("air")
    cfg = LossConfig(sigma_data=1.0)
    at_exact = expected_update(exact, exact, draw, 0.5, cfg, draws=4000)
    at_identity = expected_update(identity_below(exact, 0.5), exact, draw, 0.5, cfg, draws=4000)
    assert abs(at_exact.z["toward_exact"]) < 3
    assert at_identity.mean["toward_exact"] < 0
    assert at_identity.z["toward_exact"] < at_exact.z["toward_exact"] - 5
