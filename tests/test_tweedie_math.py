"""The ambient objective against closed forms on Gaussian data (where E[x0 | x_sigma] is known)."""

import pytest
import torch

from ambient_med.diffusion.losses import (
    LossConfig,
    ambient_loss,
    diffusion_loss,
    renoise,
    sample_sigma_truncated,
    tweedie_noisy_mean,
)
from ambient_med.diffusion.objective import consistency_loss
from ambient_med.synthetic.mixtures import GaussianField

FIELD = GaussianField((4, 4), k0=0.15)


def wiener(x, sigma):
    return FIELD.wiener(x, sigma)


def test_tweedie_noisy_mean_equals_closed_form_posterior_of_noisier_observation():
    # E[x_{sigma_n} | x_s] for Gaussian x0 is F^H (P + sigma_n^2)/(P + s^2) F x_s.
    g = torch.Generator().manual_seed(0)
    x_s = torch.randn((64, 1, 4, 4), generator=g, dtype=torch.float64)
    for s, sn in [(1.0, 0.5), (0.7, 0.1), (3.0, 2.9)]:
        s_t = torch.full((64,), s, dtype=torch.float64)
        sn_t = torch.full((64,), sn, dtype=torch.float64)
        got = tweedie_noisy_mean(x_s, wiener(x_s, s_t), s_t, sn_t)
        X = torch.fft.fftn(x_s, dim=(-2, -1), norm="ortho")
        P = FIELD.power
        want = torch.fft.ifftn(X * (P + sn**2) / (P + s**2), dim=(-2, -1), norm="ortho").real
        assert torch.allclose(got, want, atol=1e-12)


def test_renoised_observation_has_the_clean_process_statistics():
    g = torch.Generator().manual_seed(1)
    n, sn, s = 40_000, 0.5, 1.2
    x0 = FIELD.sample(n, g).double()
    y = x0 + sn * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    x_s = renoise(y, torch.full((n,), s, dtype=x0.dtype), torch.full((n,), sn, dtype=x0.dtype),
                  torch.randn(x0.shape, generator=g, dtype=x0.dtype))
    power = (torch.fft.fftn(x_s, dim=(-2, -1), norm="ortho").abs() ** 2).mean((0, 1))
    assert torch.allclose(power, FIELD.power + s**2, rtol=0.04)


@pytest.mark.parametrize("s", [0.6, 1.0, 2.0])
def test_ambient_least_squares_minimiser_is_the_wiener_filter(s):
    """Fit a linear denoiser W to the ambient objective in closed form from observations y only:
    min_W E|| r x_s + (1 - r) W x_s - y ||^2. Its minimiser must be the clean Wiener filter."""
    g = torch.Generator().manual_seed(2)
    n, sn = 200_000, 0.5
    x0 = FIELD.sample(n, g).double()
    y = x0 + sn * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    st, snt = torch.full((n,), s, dtype=x0.dtype), torch.full((n,), sn, dtype=x0.dtype)
    x_s = renoise(y, st, snt, torch.randn(x0.shape, generator=g, dtype=x0.dtype))
    X, Y = x_s.reshape(n, -1), y.reshape(n, -1)
    # residual is affine in W: (1-r) X W^T - (Y - r X)  ->  W^T = lstsq((1-r) X, Y - r X)
    # (the package's tweedie_noisy_mean with D = W x_s gives exactly r X + (1-r) X W^T)
    r = sn**2 / s**2
    Wt = torch.linalg.lstsq((1 - r) * X, Y - r * X).solution
    C = torch.from_numpy(FIELD.covariance())
    W_wiener = C @ torch.linalg.inv(C + s**2 * torch.eye(16, dtype=C.dtype))
    err = torch.linalg.norm(Wt.T - W_wiener) / torch.linalg.norm(W_wiener)
    assert err < 0.03, f"relative error {err:.3f}"
    # and the naive fit (pretend y is clean) converges to the *noisy* data's filter instead
    X_naive = Y + s * torch.randn(Y.shape, generator=g, dtype=Y.dtype)
    Wn = torch.linalg.lstsq(X_naive, Y).solution
    W_noisy = (C + sn**2 * torch.eye(16)) @ torch.linalg.inv(C + (sn**2 + s**2) * torch.eye(16))
    assert torch.linalg.norm(Wn.T - W_noisy) / torch.linalg.norm(W_noisy) < 0.03


def _loss_with(denoiser, fn, y, sn, seed, cfg):
    return fn(denoiser, y, torch.full((y.shape[0],), sn), cfg,
              torch.Generator().manual_seed(seed)).mean().item()


def test_package_ambient_loss_is_lowest_at_the_exact_clean_denoiser():
    g = torch.Generator().manual_seed(3)
    sn = 0.5
    x0 = FIELD.sample(20_000, g)
    y = x0 + sn * torch.randn(x0.shape, generator=g)
    cfg = LossConfig(objective="ambient", sigma_data=1.0, sigma_max=20.0)
    noisy_field_denoiser = lambda x, s: _wiener_noisy(x, s, sn)  # what `naive` converges to
    exact = _loss_with(wiener, ambient_loss, y, sn, 7, cfg)
    for other in (noisy_field_denoiser, lambda x, s: 0.9 * wiener(x, s),
                  lambda x, s: wiener(x, 1.2 * s)):
        assert exact < _loss_with(other, ambient_loss, y, sn, 7, cfg) - 1e-3


def _wiener_noisy(x, s, sn):
    """The denoiser of the *noisy* distribution (what `naive` learns): power P + sigma_n^2."""
    P = FIELD.power + sn**2
    s2 = (torch.as_tensor(s, dtype=torch.float64).reshape(-1, 1, 1, 1)) ** 2
    X = torch.fft.fftn(x.double(), dim=(-2, -1), norm="ortho")
    return torch.fft.ifftn(X * P / (P + s2), dim=(-2, -1), norm="ortho").real.to(x.dtype)


def test_ambient_loss_with_zero_sigma_n_is_the_clean_loss():
    g = torch.Generator().manual_seed(4)
    x0 = FIELD.sample(256, g)
    cfg = LossConfig(objective="ambient", sigma_data=1.0)
    a = ambient_loss(wiener, x0, torch.zeros(256), cfg, torch.Generator().manual_seed(9))
    c = diffusion_loss(wiener, x0, cfg, torch.Generator().manual_seed(9))
    assert torch.equal(a, c)


def test_consistency_loss_vanishes_for_exact_denoisers_only():
    """Exact denoisers of *any* distribution are a martingale, so the term is zero in
    expectation for the clean Wiener filter and for the noisy data's filter alike (which is why
    the ambient term is needed to pick the clean one), and positive for an inconsistent family."""
    g = torch.Generator().manual_seed(5)
    sn = 0.5
    x0 = FIELD.sample(40_000, g)
    y = x0 + sn * torch.randn(x0.shape, generator=g)
    cfg = LossConfig(sigma_data=1.0, consistency_variant="pair", consistency_chain_steps=2)
    sn_t = torch.full((y.shape[0],), sn)

    def mean_and_se(denoiser):
        v = consistency_loss(denoiser, y, sn_t, cfg, torch.Generator().manual_seed(1))
        return v.mean().item(), (v.std() / v.numel() ** 0.5).item()

    for exact in (wiener, lambda x, s: _wiener_noisy(x, s, sn)):
        m, se = mean_and_se(exact)
        assert abs(m) < 4 * se
    m, se = mean_and_se(lambda x, s: 0.8 * wiener(x, s))
    assert m > 10 * se


def test_below_noise_settings_are_validated():
    with pytest.raises(ValueError, match="consistency_variant"):
        LossConfig(consistency_variant="nearest")
    with pytest.raises(ValueError, match="anchored_chains"):
        LossConfig(consistency_variant="anchored", anchored_chains=1)
    with pytest.raises(ValueError, match="teacher"):
        LossConfig(teacher="student")
    with pytest.raises(ValueError, match="distill_level"):
        LossConfig(distill_level=0.0)


def test_truncated_sigma_draws_cover_the_open_interval_without_clamping():
    g = torch.Generator().manual_seed(6)
    low = torch.tensor([0.0, 0.5, 2.0, 10.0]).repeat(25_000)
    s = sample_sigma_truncated(low.numel(), -1.2, 1.2, low, 80.0, generator=g)
    assert bool((s > low).all()) and bool((s <= 80.0 * (1 + 1e-6)).all())
    # no mass piles up at the lower edge (a clamp would put a large fraction there)
    assert float((s[1::4] < 0.5 * 1.001).float().mean()) < 0.01
    # low = 0 is EDM's log-normal
    ln = s[0::4].log()
    assert abs(ln.mean().item() + 1.2) < 0.03 and abs(ln.std().item() - 1.2) < 0.03
