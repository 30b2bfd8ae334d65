"""``AmbientPrior.reconstruct``: undersampled multi-coil k-space in data units -> posterior images
in data units, on a tiny untrained complex prior (16x16, few steps). What is checked does not
depend on the prior being any good: shapes, dtypes, the intensity scale, data consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig
from ambient_med.errors import DataError
from ambient_med.mri.fft import fftc
from ambient_med.prior import AmbientPrior, PriorMetadata
from ambient_med.recon import sample_dc
from ambient_med.recon.mri import measurement, sense_operator
from ambient_med.recon.prior_glue import calibration_width, estimate_kspace_sigma
from ambient_med.synthetic.phantoms import birdcage_maps, ellipse_phantom

NET = NetworkConfig(channels=2, sigma_data=0.5, features=(8, 16), attention_levels=(False, False),
                    norm_num_groups=4, num_head_channels=8)
S = 1000.0           # data units: a scanner's arbitrary k-space scale
SIGMA_K = 0.02 * S


def _prior(scale: float = S) -> AmbientPrior:
    torch.manual_seed(0)
    meta = PriorMetadata(network=NET.to_dict(), data_kind="complex", scale=scale,
                         sigma_n_data=SIGMA_K, sigma_n_model=SIGMA_K / scale,
                         training={"image_shape": [16, 16]})
    return AmbientPrior(EDMDenoiser(NET), meta)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    maps = birdcage_maps(16, 4).astype(np.complex64)
    x = np.stack([ellipse_phantom(16, rng) for _ in range(2)]) * S             # (2, 16, 16)
    k = fftc(torch.from_numpy(maps[None] * x[:, None]).to(torch.complex64), axes=(-2, -1))
    k = k + SIGMA_K * torch.randn(k.shape, dtype=torch.complex64,
                                  generator=torch.Generator().manual_seed(1)) * np.sqrt(2)
    mask = torch.zeros(16)
    mask[::2] = 1
    mask[6:10] = 1                                 # 4 centre lines: the calibration region
    return dict(k=k * mask, mask=mask, maps=torch.from_numpy(maps), x=x)


def test_sigma_estimate_and_calibration_width(problem):
    assert calibration_width(torch.as_tensor(problem["mask"]).reshape(1, 1, 1, 16)) == 5
    sigma = estimate_kspace_sigma(problem["k"], problem["mask"])
    assert sigma == pytest.approx(SIGMA_K, rel=0.3)


def test_reconstruct_shapes_units_and_data_consistency(problem):
    p, prior = problem, _prior()
    seen = []
    out = prior.reconstruct(p["k"], p["mask"], maps=p["maps"][None], sigma=SIGMA_K, n_samples=2,
                            steps=6, generator=torch.Generator().manual_seed(0),
                            callback=lambda i, *a: seen.append(i))
    assert out["mean"].shape == (2, 1, 16, 16) and out["mean"].dtype == torch.complex64
    assert out["std"].shape == (2, 1, 16, 16) and out["samples"].shape == (2, 2, 1, 16, 16)
    assert out["calls"] == 6 and len(seen) == 6   # the 2 chains run as one batch and out["sigma"] == SIGMA_K
    assert torch.isfinite(torch.view_as_real(out["samples"])).all()
    # data units: the image is as bright as the data (|x| ~ S), not model space (~1)
    assert 0.2 * S < float(out["mean"].abs().amax()) < 5 * S
    # the mean agrees with the acquired k-space to about the noise level (data units)
    fwd, adj = sense_operator(p["maps"][None], p["mask"])
    resid = fwd(torch.view_as_real(out["mean"][:, 0]).permute(0, 3, 1, 2)) - measurement(p["k"])
    n_meas = int(2 * 4 * 2 * 16 * p["mask"].sum())
    rms = float(resid.pow(2).sum() / n_meas) ** 0.5
    assert rms < 3 * SIGMA_K, rms
    # the same data at 1/S brightness with a prior of scale 1: the same answer, 1/S as bright
    small = _prior(1.0).reconstruct(p["k"] / S, p["mask"], maps=p["maps"][None],
                                    sigma=SIGMA_K / S, n_samples=2, steps=6,
                                    generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(small["mean"] * S, out["mean"], rtol=1e-3, atol=1e-2 * SIGMA_K)


def test_reconstruct_unbatched_espirit_auto_sigma_and_dps(problem):
    p, prior = problem, _prior()
    out = prior.reconstruct(p["k"][0], p["mask"], n_samples=1, steps=3, method="dps",
                            generator=torch.Generator().manual_seed(0), cg_iters=2)
    assert out["mean"].shape == (1, 16, 16) and out["samples"].shape == (1, 1, 16, 16)
    assert out["maps"].shape == (4, 16, 16) and out["sigma"] == pytest.approx(SIGMA_K, rel=0.4)
    assert out["calls"] > 3                     # Jacobian products on top of the 3 denoiser calls
    with pytest.raises(DataError, match="does not broadcast"):
        prior.reconstruct(p["k"], torch.ones(15), sigma=1.0)
    with pytest.raises(DataError, match="NaN"):
        bad = p["k"].clone()
        bad[0, 0, 0, 0] = float("nan")
        prior.reconstruct(bad, p["mask"], sigma=1.0)


def test_user_operator_through_samplers_directly(problem):
    """A user's own forward/adjoint callables (here: a masked real 2-D FFT of real images, written
    from scratch) work with ``recon.samplers`` and the prior's network in model space."""
    prior = _prior(1.0)
    keep = torch.rand(16, 16, generator=torch.Generator().manual_seed(3)) < 0.5

    def forward(x):          # (B, 2, 16, 16) real channels -> (B, 2, 16, 16) masked k-space (re, im)
        k = torch.fft.fft2(torch.complex(x[:, 0], x[:, 1]), norm="ortho") * keep
        return torch.stack([k.real, k.imag], 1)

    def adjoint(y):
        x = torch.fft.ifft2(torch.complex(y[:, 0], y[:, 1]) * keep, norm="ortho")
        return torch.stack([x.real, x.imag], 1)

    x0 = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(4)) * 0.5
    y = forward(x0) + 0.05 * torch.randn(1, 2, 16, 16) * keep
    with torch.no_grad():
        out = sample_dc(prior.model, forward, adjoint, y, 0.05, sigma_data=0.5, n_samples=2,
                        steps=5, generator=torch.Generator().manual_seed(5))
    assert out["mean"].shape == (1, 2, 16, 16) and out["calls"] == 5
    resid = forward(out["mean"]) - y
    assert float(resid.pow(2).sum() / (2 * keep.sum())) ** 0.5 < 3 * 0.05


class _WhiteWiener(torch.nn.Module):
    """The exact denoiser of a white Gaussian prior of std 0.5: pointwise, so tiling is exact."""

    def __init__(self):
        super().__init__()
        self.register_buffer("sigma_data", torch.tensor(0.5))
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, x, sigma):
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.ndim - 1)))
        return x * 0.25 / (0.25 + s**2) + 0 * self.anchor


def test_reconstruct_tiles_images_larger_than_the_training_patch(problem):
    """A prior trained on 8x8 patches sees 8x8 tiles of a 16x16 slice; with a local (here
    pointwise) denoiser the tiled reconstruction is the whole-image one."""
    p = problem
    meta = _prior().metadata
    meta.training = {"image_shape": [8, 8]}
    net = EDMDenoiser(NET)
    shapes = []
    net.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape[2:])))
    kw = dict(maps=p["maps"][None], sigma=SIGMA_K, n_samples=2, steps=4)
    out = AmbientPrior(net, meta).reconstruct(p["k"], p["mask"], **kw,
                                              generator=torch.Generator().manual_seed(0))
    assert set(shapes) == {(8, 8)} and out["mean"].shape == (2, 1, 16, 16)
    assert torch.isfinite(torch.view_as_real(out["samples"])).all()
    wiener = AmbientPrior(_WhiteWiener(), meta)
    tiled = wiener.reconstruct(p["k"], p["mask"], **kw, generator=torch.Generator().manual_seed(0))
    whole = wiener.reconstruct(p["k"], p["mask"], **kw, tile=16,
                               generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(tiled["samples"], whole["samples"], rtol=1e-4, atol=1e-3 * SIGMA_K)


def test_reconstruct_whitens_correlated_coil_noise():
    """Raw multi-coil noise is correlated and unequal across coils; ``reconstruct(whiten=True)``
    estimates the covariance from the acquired readout edges and whitens data and maps with it,
    which is the same as reconstructing pre-whitened data with whitened maps (and as passing the
    estimated covariance itself)."""
    from ambient_med.mri.coils import whitening_matrix

    rng = np.random.default_rng(5)
    n, c = 32, 4
    maps = birdcage_maps(n, c).astype(np.complex64)
    x = ellipse_phantom(n, rng) * S
    sig = np.array([1.0, 2.0, 0.5, 1.5]) * SIGMA_K
    cov = np.outer(sig, sig) * (0.5 + 0.5 * np.eye(c))              # correlation 0.5 between coils
    L = np.linalg.cholesky(cov)
    noise = L @ (rng.standard_normal((c, n * n)) + 1j * rng.standard_normal((c, n * n)))
    k = fftc(torch.from_numpy(maps * x), axes=(-2, -1)) + torch.from_numpy(noise.reshape(c, n, n))
    k = k.to(torch.complex64)
    mask = torch.zeros(n)
    mask[::2] = 1
    mask[12:20] = 1
    prior, kw = _prior(), dict(n_samples=2, steps=4, maps=torch.from_numpy(maps))
    out = prior.reconstruct(k, mask, **kw, whiten=True, generator=torch.Generator().manual_seed(0))
    est = out["noise_cov"]
    assert est is not None
    assert np.linalg.norm(est - cov) / np.linalg.norm(cov) < 0.15
    assert out["sigma"] == pytest.approx(np.sqrt(np.mean(sig**2)), rel=0.15)
    w = torch.from_numpy(whitening_matrix(est)).to(torch.complex64)
    by_hand = prior.reconstruct(torch.einsum("dc,c...->d...", w, k * mask),
                                mask, **{**kw, "maps": torch.einsum("dc,c...->d...", w, kw["maps"])},
                                whiten=False, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["samples"], by_hand["samples"], rtol=1e-4, atol=1e-3 * SIGMA_K)
    assert by_hand["noise_cov"] is None
    given = prior.reconstruct(k, mask, **kw, whiten=est, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(given["samples"], out["samples"])
    assert prior.reconstruct(k, mask, **kw, generator=torch.Generator().manual_seed(0))["noise_cov"] is None
