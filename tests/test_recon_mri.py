"""A toy multi-coil MRI problem end to end: complex 16x16 images (2 real channels) from a complex
stationary Gaussian field, 4 smooth coils, 1-D Cartesian undersampling (every 3rd phase-encode
line plus 4 centre lines), white k-space noise; both samplers through ``recon.mri``."""

import numpy as np
import pytest
import torch
from _mri_fixtures import coil_maps

from ambient_med.recon import dense_matrix, sample_dc, sample_dps
from ambient_med.recon.mri import measurement, sense_operator, to_complex_image
from ambient_med.synthetic.mixtures import GaussianField

FIELD = GaussianField((16, 16))          # real and imaginary parts: independent copies
SIGMA_Y = 0.05


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(16, 16, dtype=torch.float64)
    mask[::3] = 1
    mask[6:10] = 1
    fwd, adj = sense_operator(torch.from_numpy(coil_maps(16, 4)).to(torch.complex128)[None], mask)
    x0 = torch.cat([FIELD.sample(1, g), FIELD.sample(1, g)], 1).double()   # (1, 2, 16, 16)
    clean = fwd(x0)
    y = clean + SIGMA_Y * torch.randn(clean.shape, generator=g, dtype=torch.float64) * measurement(
        torch.ones(1, 4, 16, 16, dtype=torch.complex128), mask).abs().sign()
    # dense closed form: the image flattens channel-major, so C = blockdiag(C_field, C_field)
    a = dense_matrix(fwd, (2, 16, 16)).numpy()
    c = np.kron(np.eye(2), FIELD.covariance())
    keep = np.abs(a).sum(1) > 0                              # measured k-space entries only
    a, yv = a[keep], y.reshape(-1).numpy()[keep]
    s = a @ c @ a.T + SIGMA_Y**2 * np.eye(a.shape[0])
    mean = c @ a.T @ np.linalg.solve(s, yv)
    cov = c - c @ a.T @ np.linalg.solve(s, a @ c)
    return dict(fwd=fwd, adj=adj, y=y, x0=x0, mean=mean, cov=cov)


def _err(x, ref):
    return float((x - ref).norm() / ref.norm())


def test_toy_mri_exact_dps_end_to_end(problem):
    p, k = problem, 4      # 32 steps to keep it fast: the means, not the variances, are checked
    seen = []
    out = sample_dps(FIELD.wiener, p["fwd"], p["adj"], p["y"], SIGMA_Y, n_samples=k, steps=32,
                     cg_iters=20, generator=torch.Generator().manual_seed(1),
                     callback=lambda i, s, x, d: seen.append(i))
    assert out["samples"].shape == (k, 1, 2, 16, 16) and out["std"].shape == (1, 2, 16, 16)
    assert torch.isfinite(out["samples"]).all() and (out["std"] > 0).all()
    assert seen == list(range(len(seen))) and len(seen) == 32
    assert out["forward_calls"] == 32 and out["calls"] > 2 * 32
    # samples are draws from the posterior: k |mean - mu|^2 in posterior units ~ chi^2_512
    err = out["samples"].reshape(k, -1).numpy().mean(0) - p["mean"]
    chi2 = k * err @ np.linalg.solve(p["cov"], err)
    assert chi2 < 512 + 5 * np.sqrt(2 * 512), chi2
    zero_filled = p["adj"](p["y"])
    assert _err(out["mean"], p["x0"]) < 0.6 * _err(zero_filled, p["x0"])
    assert to_complex_image(out["mean"]).shape == (1, 16, 16)


def test_toy_mri_data_consistency_end_to_end(problem):
    p, k = problem, 4
    out = sample_dc(FIELD.wiener, p["fwd"], p["adj"], p["y"], SIGMA_Y, sigma_data=1.0,
                    n_samples=k, chunk=2, generator=torch.Generator().manual_seed(2))
    assert out["samples"].shape == (k, 1, 2, 16, 16)
    assert torch.isfinite(out["samples"]).all() and (out["std"] > 0).all()
    assert out["calls"] == out["forward_calls"] == 2 * 128 and out["jacobian_calls"] == 0
    # biased for this correlated prior (see test_recon_gaussian), but far better than zero filling
    # and consistent with the measurements to about the noise level
    zero_filled = p["adj"](p["y"])
    assert _err(out["mean"], p["x0"]) < 0.6 * _err(zero_filled, p["x0"])
    resid = p["fwd"](out["mean"]) - p["y"]
    n_meas = int((p["fwd"](torch.ones_like(out["mean"])) != 0).sum())
    assert float(resid.pow(2).sum() / n_meas) ** 0.5 < 2 * SIGMA_Y
