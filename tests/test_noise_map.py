"""The per-pixel noise level of Poisson-Gaussian data after the generalised Anscombe transform
(docs/design.md section 6): its closed-form variance, the equalisation to unit variance that
makes the ambient objective's noise model hold below one photon per pixel, and the
``noise_map`` key through training and denoising."""

import numpy as np
import pytest
import torch
from _cli_fixtures import one_thread, tiny_protocol
from _micro_fixtures import write_cells_tif

from ambient_med.noise import PoissonGaussian
from ambient_med.noise.poisson_gaussian import gat_variance
from ambient_med.training.config import DataConfig

LAMS = np.array([0.0, 0.2, 0.5, 1.0, 2.0, 4.0, 10.0, 50.0])


def _draws(a, b, mu, lam, n, rng):
    return a * rng.poisson(lam, size=(n, *np.shape(lam))) + mu + np.sqrt(b) * rng.standard_normal((n, *np.shape(lam)))


@pytest.mark.parametrize("s2", [0.0, 0.1, 0.5])
def test_gat_variance_matches_monte_carlo(s2):
    """Var of the GAT of Poisson(lam) + N(0, s2) counts, against 200,000 draws per lam; the
    tolerance is 4 standard errors of the sample variance (sqrt(2 / n) of it, times the kurtosis
    margin of a discrete law)."""
    rng = np.random.default_rng(1)
    n = 200_000
    z = PoissonGaussian(1.0, s2).stabilise(_draws(1.0, s2, 0.0, LAMS, n, rng))
    mc = z.var(0)
    se = 4 * np.sqrt(3.0 / n) * np.maximum(mc, 0.05)
    assert np.all(np.abs(gat_variance(LAMS, s2) - mc) < se), (gat_variance(LAMS, s2), mc)
    # the reason for the map: far from 1 below one count (the more so with less read noise),
    # within 4% of it from 4 counts up
    assert gat_variance(np.array([0.2]), s2)[0] < 0.85
    assert np.all(np.abs(gat_variance(np.array([4.0, 10.0, 50.0]), s2) - 1) < 0.04)


def test_equalised_noise_has_unit_variance_where_the_plain_transform_does_not():
    """Blocks of constant photon count, 400 captures: after ``stabilise_observation`` of an
    equalising model, the noise around E[stabilise | lam] has variance 1 within 5% in every block
    (0.6-0.8 at half a photon and below without it, with this read noise), and mean zero."""
    rng = np.random.default_rng(2)
    a, b, mu = 3.0, 2.0, 10.0
    lam = np.repeat(np.repeat(np.array([[0.3, 1.0, 3.0], [10.0, 0.5, 40.0]]), 16, 0), 16, 1)
    y = _draws(a, b, mu, lam, 400, rng)
    plain, eq = PoissonGaussian(a, b, mu), PoissonGaussian(a, b, mu, equalise=True)
    zp = plain.stabilise(y)
    ze = np.stack([eq.stabilise_observation(f, seed=i) for i, f in enumerate(y)])
    for r in range(2):
        for c in range(3):   # inner 10x10 of each block: away from the edges of the 5x5 local mean
            blk = (slice(None), slice(16 * r + 3, 16 * r + 13), slice(16 * c + 3, 16 * c + 13))
            lam_rc = lam[16 * r, 16 * c]
            ve, vp = ze[blk].var(0).mean(), zp[blk].var(0).mean()
            assert abs(ve - 1) < 0.05, (lam_rc, ve)
            mean_err = ze[blk].mean() - eq.expected_stabilised(lam_rc)[0]
            assert abs(mean_err) < 0.02, (lam_rc, mean_err)
            if lam_rc <= 0.5:
                assert vp < 0.8, (lam_rc, vp)


def test_equalising_model_round_trips_and_records_itself():
    eq = PoissonGaussian(2.0, 4.0, 1.0, equalise=True)
    assert 1.0 <= eq.level < 1.05
    lam = np.array([0.5, 3.0, 30.0, 300.0])
    np.testing.assert_allclose((eq.invert_mean(eq.expected_stabilised(lam)) - 1.0) / 2.0, lam, rtol=1e-3, atol=1e-3)
    y = np.array([5.0, 50.0])
    np.testing.assert_allclose(eq.invert_sample(eq.stabilise(y)), y)
    d = eq.to_dict()
    assert d["equalise"] is True and PoissonGaussian.from_dict(d) == eq
    assert "equalise" not in PoissonGaussian(2.0).to_dict()           # old metadata unchanged
    t = torch.full((1, 1, 8, 8), 7.0)
    out = eq.stabilise_observation(t, seed=3)
    assert torch.is_tensor(out) and torch.equal(out, eq.stabilise_observation(t, seed=3))
    assert not torch.equal(out, eq.stabilise(t))
    with pytest.raises(ValueError, match="equalise"):
        PoissonGaussian(2.0).equalise_noise(np.zeros(3), np.zeros(3), np.random.default_rng(0))


def test_noise_map_is_refused_for_other_noise_models():
    with pytest.raises(ValueError, match="noise_map"):
        DataConfig(noise_model="gaussian", noise_map=True)


def test_training_with_noise_map_records_and_reuses_the_equalisation(tmp_path):
    """Through ``run_training``: the item images are equalised (deterministic per item), the prior
    records ``equalise``, and ``denoise`` with ``sigma="auto"`` refits the input equalised too."""
    from ambient_med.prior import AmbientPrior
    from ambient_med.tasks.train import run_training
    from ambient_med.training.datasets import build_training_set

    tif = write_cells_tif(tmp_path / "cells.tif", n=6, size=32)
    ds, info = build_training_set([tif], noise_map=True)
    assert info.noise["equalise"] is True
    assert torch.equal(ds[0]["image"], build_training_set([tif], noise_map=True)[0][0]["image"])
    plain, _ = build_training_set([tif])
    assert not torch.equal(ds[0]["image"], plain[0]["image"])
    protocol = tiny_protocol(tmp_path, "tiny-micro-map",
                             data={"reader": "tiff", "kind": "intensity", "coil_maps": False,
                                   "noise_model": "poisson-gaussian", "noise_map": True},
                             train={"steps": 2, "batch_size": 2, "checkpoint_every": 2})
    logs = []
    with one_thread():
        res = run_training([str(tif)], tmp_path / "run", protocol=protocol, sigma_n="auto", previews=0,
                           handle_signals=False, log=logs.append)
    prior = AmbientPrior.load(res.prior_path)
    assert prior.noise_model.equalise
    import tifffile

    x = torch.from_numpy(np.asarray(tifffile.imread(tif), dtype=np.float32))[:, None]   # 6 frames
    assert prior.input_noise(x, "auto").equalise
    out = prior.denoise(x, "auto")
    assert out.shape == x.shape and torch.isfinite(out).all()
