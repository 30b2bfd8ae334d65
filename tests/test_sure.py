"""The SURE term (``losses.sure_term``) is an unbiased estimate of the clean denoising error, for
any denoiser, so its minimiser is the posterior mean ``E[x0 | x_sigma]`` at ``sigma = sigma_n``
too, where the ambient-Tweedie weight vanishes. Checked on non-Gaussian (mixture) data against the
true clean error, for the exact mixture denoiser and for wrong ones, and in bf16 autocast."""

import math

import pytest
import torch

from ambient_med.diffusion.losses import LossConfig, edm_weight, sure_loss, sure_term
from ambient_med.diffusion.objective import objective_loss
from ambient_med.synthetic.mixtures import GaussianMixtureField, PixelMixture

PIXMIX = PixelMixture(weights=(0.5, 0.3, 0.2), means=(-1.2, 0.4, 1.8), stds=(0.3, 0.5, 0.2))
FIELDMIX = GaussianMixtureField((8, 8))


def _shrunk(denoise):
    """A wrong but smooth denoiser: the exact one pulled 30% towards a tanh of its input."""
    return lambda x, s: 0.7 * denoise(x, s) + 0.3 * torch.tanh(x)


@pytest.mark.parametrize("dist", [PIXMIX, FIELDMIX], ids=["pixmix", "fieldmix"])
@pytest.mark.parametrize("wrong", [False, True], ids=["exact", "wrong"])
def test_sure_is_unbiased_for_the_clean_error(dist, wrong):
    """Mean SURE estimate minus the true weighted clean error, per sample and on the same draws:
    within 3 standard errors of 0 (20,000 draws), at the default finite-difference step."""
    cfg = LossConfig(sigma_data=1.0, sure_fraction=1.0, sure_max_ratio=2.0)
    denoiser = _shrunk(dist.denoise) if wrong else dist.denoise
    g = torch.Generator().manual_seed(1)
    sigma_n = 0.5
    diffs = []
    for _ in range(5):
        x0 = dist.sample(4000, g).double()
        y = x0 + sigma_n * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        term = sure_term(y, torch.full((4000,), sigma_n, dtype=y.dtype), cfg, generator=g)
        pred = denoiser(term.x, term.sigma)
        est = term.finish(pred)
        s = term.sigma[:4000]
        true = edm_weight(s, 1.0) * (pred[:4000] - x0).square().flatten(1).mean(1)
        diffs.append(est - true)
    d = torch.cat(diffs)
    z = d.mean() / (d.std() / math.sqrt(d.numel()))
    assert abs(z) < 3, f"SURE - clean error: mean {d.mean():.3g}, {z:.1f} standard errors"


def test_sure_ranks_the_exact_denoiser_first():
    """The SURE loss (no clean data) is lowest for the exact posterior mean at sigma_n."""
    cfg = LossConfig(sigma_data=1.0, sure_fraction=1.0, sure_max_ratio=1.0 + 1e-6)
    g = torch.Generator().manual_seed(2)
    x0 = PIXMIX.sample(20000, g).double()
    sn = torch.full((20000,), 0.5, dtype=x0.dtype)
    y = x0 + 0.5 * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    losses = {}
    for name, d in {"exact": PIXMIX.denoise, "wrong": _shrunk(PIXMIX.denoise),
                    "identity": lambda x, s: x}.items():
        losses[name] = float(sure_loss(d, y, sn, cfg, generator=torch.Generator().manual_seed(3)).mean())
    assert losses["exact"] < losses["wrong"] < losses["identity"], losses


def test_sure_in_bf16_autocast_is_evaluated_in_full_precision():
    """Under bf16 autocast the ambient term runs in bf16 and the SURE pair in float32: the
    finite difference of a float32 network must match the loss computed with autocast off."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.SiLU(),
                              torch.nn.Conv2d(8, 1, 3, padding=1))
    seen = []

    def denoiser(x, s):
        seen.append((x.shape[0], torch.is_autocast_enabled("cpu")))
        return x + net(x)

    cfg = LossConfig(sigma_data=1.0, objective="ambient", sure_fraction=0.5)
    y = torch.randn(4, 1, 8, 8)
    out = {}
    for autocast in (False, True):
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out[autocast] = objective_loss(denoiser, y, 0.5, cfg,
                                           generator=torch.Generator().manual_seed(5)).parts
        if autocast:
            assert seen == [(4, True), (4, False)]   # ambient batch in bf16, SURE pair in fp32
        else:
            assert seen == [(8, False)]             # one batched call
    assert torch.isclose(out[True]["sure"], out[False]["sure"], rtol=1e-4)


def test_sure_settings_are_validated():
    with pytest.raises(ValueError, match="sure_fraction"):
        LossConfig(sure_fraction=1.5)
    with pytest.raises(ValueError, match="sure_max_ratio"):
        LossConfig(sure_max_ratio=0.5)


def test_sure_does_not_reward_anti_denoisers_when_the_noise_is_overestimated():
    """Pixels ``x0 ~ N(0, 0.1)``, true noise variance 0.1, assumed 0.5 (a noise model that is
    wrong the way a low-count Anscombe domain is). For ``D_c(x) = c x``, plain SURE is minimised at
    ``c = 1 - 0.5 / 0.2 = -1.5``: a sign-flipping 'denoiser' (what an FMD pilot learned, SSIM 0.75).
    With the divergence floored at 0 (exact denoisers have PSD Jacobians), negative ``c`` gains
    nothing and the minimiser over-smooths (``c = 0``) instead."""
    cfg = LossConfig(sigma_data=1.0, sure_fraction=1.0, sure_max_ratio=1.0 + 1e-6)
    g = torch.Generator().manual_seed(4)
    n = 20000
    y = math.sqrt(0.2) * torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64)
    sn = torch.full((n,), math.sqrt(0.5), dtype=y.dtype)
    loss = {c: float(sure_loss(lambda x, s, c=c: c * x, y, sn, cfg,
                               generator=torch.Generator().manual_seed(6)).mean())
            for c in (-1.5, -0.5, 0.0, 0.5)}
    assert min(loss, key=loss.get) == 0.0, loss


def test_sure_is_refused_for_objectives_without_a_noise_level():
    for objective in ("clean", "naive"):
        with pytest.raises(ValueError, match="sure_fraction"):
            LossConfig(objective=objective, sure_fraction=0.5)


def test_a_negative_sure_loss_is_reported_as_a_noise_model_that_overstates_the_noise():
    """The training run logs this check's line: in the FMD pilot the SURE term settled near
    -0.4 (the Anscombe domain is not unit-variance at one photon per pixel), with the right
    noncentral-chi model on test_piesno near +0.13."""
    from ambient_med.diffusion.losses import sure_noise_check

    assert sure_noise_check([1.2, 0.1, -0.4, -0.37, -0.43, -0.44], 0.1542, 0.09605) is not None
    assert "less noisy" in sure_noise_check([-0.4] * 4, 0.1542, 0.09605)
    assert sure_noise_check([1.2, 0.5, 0.2, 0.13, 0.12, 0.14], 0.1542, 0.09605) is None
    assert sure_noise_check([], 0.5, 0.1) is None
    # the exact denoiser of smooth data (x0 ~ N(0, 0.01) per pixel) less noisy than assumed
    # (true 0.3, assumed 0.5): the loss itself goes negative and the check fires
    cfg = LossConfig(sigma_data=1.0, sure_fraction=1.0, sure_max_ratio=1.0 + 1e-6)
    g = torch.Generator().manual_seed(7)
    y = math.sqrt(0.01 + 0.09) * torch.randn(8000, 1, 4, 4, generator=g, dtype=torch.float64)
    v = sure_loss(lambda x, s: 0.1 * x, y, torch.full((8000,), 0.5, dtype=y.dtype), cfg, generator=g)
    assert sure_noise_check([float(v.mean())] * 4, 1.0, 0.5) is not None
