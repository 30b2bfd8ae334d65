"""Posterior sampling for Gaussian linear inverse problems against dense closed forms.

Prior ``x ~ N(0, C)`` (``GaussianField((8, 8))``, exact denoiser ``wiener``, or white ``N(0, I)``),
``y = A x + sigma_y n``. Posterior mean ``C A^T (A C A^T + sigma_y^2 I)^{-1} y``, covariance
``C - C A^T (A C A^T + sigma_y^2 I)^{-1} A C``.

The reverse chain driven by an affine conditional denoiser is an affine map of its Gaussian
inputs (the start ``x ~ N(0, sigma_max^2 I)`` and one ``xi`` per step), so its output mean and
covariance can be computed *exactly*, without Monte Carlo error, by pushing the linear part
(one row per input noise component) through the package's own step ``reverse.ancestral_step``
(:func:`chain_moments`). That isolates the sampler's discretisation error at its default step
count; Monte Carlo tests of ``sample_dps`` / ``sample_dc`` themselves come on top.
"""

import numpy as np
import pytest
import torch

from ambient_med.diffusion.reverse import ReverseMemory, ancestral_step
from ambient_med.diffusion.sampling import karras_sigmas
from ambient_med.mri.fft import fftc, ifftc
from ambient_med.recon import (
    RECON_STEPS,
    complex_to_real,
    dc_denoiser,
    dense_matrix,
    matrix_operator,
    noise_gamma,
    sample_dc,
    sample_dps,
    tweedie_denoiser,
    white_gamma,
)
from ambient_med.synthetic.mixtures import GaussianField

SHAPE = (1, 8, 8)
D = 64
FIELD = GaussianField((8, 8))
SIGMA_Y = 0.2


def white(x, sigma):
    """Exact denoiser of ``N(0, I)``: ``x / (1 + sigma^2)``."""
    s2 = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1))) ** 2
    return x / (1 + s2)


PRIORS = {"field": (FIELD.wiener, FIELD.covariance()), "white": (white, np.eye(D))}


def fourier_operator(mask):
    """Real image (N, 1, 8, 8) -> masked centred FFT, as real channels (N, 2, 8, 8)."""
    return complex_to_real(lambda x: mask * fftc(x), lambda k: ifftc(mask * k), real_image=True)


def make_problem(kind, prior, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        fwd, adj = matrix_operator(torch.randn(10, D, generator=g, dtype=torch.float64) / 8, SHAPE)
    else:  # 1-D Cartesian undersampling: 3 of 8 phase-encode lines, centre included
        mask = torch.zeros(8, 8, dtype=torch.float64)
        mask[[1, 4, 6]] = 1
        fwd, adj = fourier_operator(mask)
    denoiser, c = PRIORS[prior]
    x0 = torch.as_tensor(np.linalg.cholesky(c + 1e-12 * np.eye(D))
                         @ torch.randn(D, generator=g, dtype=torch.float64).numpy()).reshape(1, *SHAPE)
    clean = fwd(x0)
    y = clean + SIGMA_Y * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    a = dense_matrix(fwd, SHAPE).numpy()
    yv = y.reshape(-1).numpy()
    s = a @ c @ a.T + SIGMA_Y**2 * np.eye(a.shape[0])
    mean = c @ a.T @ np.linalg.solve(s, yv)
    cov = c - c @ a.T @ np.linalg.solve(s, a @ c)
    return dict(fwd=fwd, adj=adj, y=y, a=a, c=c, mean=mean, cov=cov, denoiser=denoiser)


def conditional(p, sampler, y):
    if sampler == "dc":
        return dc_denoiser(p["denoiser"], p["fwd"], p["adj"], y, SIGMA_Y, white_gamma(1.0),
                           cg_iters=300, cg_tol=1e-13)
    return tweedie_denoiser(p["denoiser"], p["fwd"], p["adj"], y, SIGMA_Y, cg_iters=300,
                            cg_tol=1e-13, warm_start=False)


def chain_moments(p, sampler, steps=RECON_STEPS):
    """Exact mean and covariance of the output of the default chain (``sample_ancestral``'s loop,
    second order, ``karras_sigmas(steps, 0.002, 80)``) driven by the affine conditional denoiser.

    The state of a second-order step is ``(x, D_prev)``, affine in the chain's Gaussian inputs;
    its covariance is carried as a square-root factor ``[X | P]`` (rows: independent unit
    normals), re-compressed by QR to ``2 D`` rows after each step (Gram matrix unchanged)."""
    sigmas = karras_sigmas(steps, 0.002, 80.0).double()
    eye = torch.eye(D, dtype=torch.float64)
    zeros = torch.zeros(D, D, dtype=torch.float64)
    fx, fp = sigmas[0] * eye, zeros                     # x_init ~ N(0, sigma_max^2 I)
    mean, mean_p = torch.zeros(1, D, dtype=torch.float64), None
    basis = torch.cat([torch.zeros(1, *SHAPE), torch.eye(D).reshape(D, *SHAPE)]).double()
    cond = conditional(p, sampler, p["y"].expand(D + 1, *p["y"].shape[1:]))
    for i in range(len(sigmas) - 1):
        a, b = sigmas[i], sigmas[i + 1]
        out = cond(basis, a.expand(D + 1)).reshape(D + 1, D)
        h, g = out[:1], out[1:] - out[:1]              # D(x) = x @ g + h on row vectors
        r = fx.shape[0] + D                              # one more block of rows: this step's xi
        fd = torch.cat([fx @ g, zeros])
        xi = torch.cat([torch.zeros(fx.shape[0], D, dtype=torch.float64), eye])
        prev = None if i == 0 else ReverseMemory(torch.cat([fp, zeros]), sigmas[i - 1].expand(r))
        fx = ancestral_step(torch.cat([fx, zeros]), fd, a.expand(r), b.expand(r), xi, prev)
        fx, fp = torch.linalg.qr(torch.cat([fx, fd], 1), mode="r")[1].split(D, 1)
        d_mean = mean @ g + h
        prev = None if i == 0 else ReverseMemory(mean_p, sigmas[i - 1].expand(1))
        mean = ancestral_step(mean, d_mean, a.expand(1), b.expand(1), torch.zeros_like(mean), prev)
        mean_p = d_mean
    return mean[0].numpy(), (fx.T @ fx).numpy()


def closed_form_conditional(p, x, sigma):
    """``E[x0 | x_sigma, y]`` for the Gaussian prior: precision ``C^-1 + I/sigma^2 + A^T A/sigma_y^2``."""
    c, a = p["c"], p["a"]
    prec = np.linalg.inv(c) + np.eye(D) / sigma**2 + a.T @ a / SIGMA_Y**2
    rhs = x.reshape(x.shape[0], D).numpy() / sigma**2 + (a.T @ p["y"].reshape(-1).numpy()) / SIGMA_Y**2
    return np.linalg.solve(prec, rhs.T).T


def _fourier_block(cov, rows):
    """``F cov F^H`` restricted to the given DFT rows (flattened, centred orthonormal FFT)."""
    f = fftc(torch.eye(D, dtype=torch.complex128).reshape(D, 8, 8)).reshape(D, D).T.numpy()
    return (f @ cov @ f.conj().T)[np.ix_(rows, rows)]


# ---------------------------------------------------------------------------------------------
# the conditional denoisers, level by level (deterministic)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("jacobian", ["vjp", "jvp"])
@pytest.mark.parametrize("kind", ["random", "fourier"])
def test_tweedie_conditional_denoiser_is_the_closed_form(kind, jacobian):
    p = make_problem(kind, "field")
    g = torch.Generator().manual_seed(5)
    x = 2 * torch.randn(3, *SHAPE, generator=g, dtype=torch.float64)
    cond = tweedie_denoiser(FIELD.wiener, p["fwd"], p["adj"], p["y"].expand(3, *p["y"].shape[1:]),
                            SIGMA_Y, jacobian=jacobian, cg_iters=300, cg_tol=1e-13)
    for sigma in (0.03, 0.7, 20.0):
        got = cond(x, torch.full((3,), sigma, dtype=torch.float64)).reshape(3, D).numpy()
        want = closed_form_conditional(p, x, sigma)
        assert np.abs(got - want).max() < 1e-8 * np.abs(want).max(), sigma


def test_dc_and_pigdm_conditionals_are_the_closed_form_for_a_white_prior():
    """With ``Cov[x0 | x_sigma] = gamma I`` (white prior, gamma = sigma^2/(1 + sigma^2)) the
    data-consistency projection and PiGDM are the exact conditional denoiser."""
    p = make_problem("random", "white")
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    y = p["y"].expand(2, *p["y"].shape[1:])
    dc = dc_denoiser(white, p["fwd"], p["adj"], y, SIGMA_Y, white_gamma(1.0), cg_iters=200,
                     cg_tol=1e-13)
    pigdm = tweedie_denoiser(white, p["fwd"], p["adj"], y, SIGMA_Y, mode="pigdm",
                             gamma=white_gamma(1.0), cg_iters=200, cg_tol=1e-13)
    for sigma in (0.03, 0.7, 20.0):
        s = torch.full((2,), sigma, dtype=torch.float64)
        want = closed_form_conditional(p, x, sigma)
        for cond in (dc, pigdm):
            assert np.abs(cond(x, s).reshape(2, D).numpy() - want).max() < 1e-8 * np.abs(want).max()


def test_dps_mode_is_the_first_order_limit_of_the_exact_update():
    """Plain DPS drops ``A Sigma A^T`` against ``sigma_y^2``: it agrees with the exact update when
    ``sigma_y^2`` dominates (relative gap ~ ||A Sigma A^T|| / sigma_y^2) and not otherwise."""
    p = make_problem("random", "field")
    x = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    s = torch.full((1,), 0.3, dtype=torch.float64)

    def gap(sigma_y):
        kw = dict(cg_iters=200, cg_tol=1e-13)
        d = FIELD.wiener(x, s)
        ex = tweedie_denoiser(FIELD.wiener, p["fwd"], p["adj"], p["y"], sigma_y, **kw)(x, s) - d
        dps = tweedie_denoiser(FIELD.wiener, p["fwd"], p["adj"], p["y"], sigma_y, mode="dps", **kw)(x, s) - d
        return float((ex - dps).norm() / ex.norm())

    assert gap(10.0) < 2e-3
    assert gap(0.05) > 0.5


# ---------------------------------------------------------------------------------------------
# the whole chain at the default step count: exact moments (no Monte Carlo error)
# ---------------------------------------------------------------------------------------------

def _check_moments(p, mean, cov, tol):
    rel_mean = np.abs(mean - p["mean"]).max() / np.abs(p["mean"]).max()
    pix = np.diag(cov) / np.diag(p["cov"])
    w, v = np.linalg.eigh(p["cov"])
    spec = np.einsum("ij,ik,kj->j", v, cov, v) / w      # every eigen-direction of the posterior
    assert rel_mean < 2e-3, rel_mean
    assert np.abs(pix - 1).max() < tol, pix
    assert abs(np.trace(cov) / np.trace(p["cov"]) - 1) < tol
    assert np.abs(spec - 1).max() < 1.5 * tol, spec


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["random", "fourier"])
def test_exact_dps_chain_has_the_posterior_mean_and_covariance_of_a_correlated_gaussian(kind):
    """Measured at 128 steps: mean within 4e-4 (relative), per-pixel variance and trace 0.7%
    high, every posterior eigen-direction within 1.2%."""
    p = make_problem(kind, "field")
    mean, cov = chain_moments(p, "dps")
    _check_moments(p, mean, cov, tol=0.02)


@pytest.mark.parametrize("kind", ["random", "fourier"])
def test_dc_chain_is_exact_for_a_white_gaussian_prior(kind):
    p = make_problem(kind, "white")
    mean, cov = chain_moments(p, "dc")
    _check_moments(p, mean, cov, tol=0.02)


def test_dc_chain_with_a_correlated_prior_is_exact_only_off_the_measurements():
    """No scalar ``gamma`` is exact for a correlated prior. With masked Fourier measurements of a
    stationary field everything is diagonal in frequency, so the unmeasured frequencies follow
    the prior chain and come out exact; the measured ones do not (eigen-directions up to ~11%
    off here), and for a random ``A`` that mixes frequencies the mean is 66% off and the trace
    50% high. This is why ``sample_dps`` (exact mode) is the reference sampler."""
    p = make_problem("fourier", "field")
    mean, cov = chain_moments(p, "dc")
    # a real image measured on rows 1, 4, 6 (frequencies -3, 0, +2 of the centred FFT) is also
    # measured on their Hermitian partners, rows 7 and 2: unmeasured are rows 0, 3, 5
    unmeasured = [i for i in range(D) if i // 8 in (0, 3, 5)]
    got, want = _fourier_block(cov, unmeasured), _fourier_block(p["cov"], unmeasured)
    assert np.abs(np.diag(got).real / np.diag(want).real - 1).max() < 0.02
    assert np.abs(got - want).max() < 0.02 * np.abs(np.diag(want)).max()
    measured = [i for i in range(D) if i // 8 not in (0, 3, 5)]
    bad = np.diag(_fourier_block(cov, measured)).real / np.diag(_fourier_block(p["cov"], measured)).real
    assert np.abs(bad - 1).max() > 0.05          # the known bias on the measured frequencies

    p = make_problem("random", "field")
    mean, cov = chain_moments(p, "dc")
    assert np.trace(cov) / np.trace(p["cov"]) > 1.2


# ---------------------------------------------------------------------------------------------
# the public samplers end to end (Monte Carlo)
# ---------------------------------------------------------------------------------------------

def _mc_check(p, out, k):
    s = out["samples"].reshape(k, D).numpy()
    err = s.mean(0) - p["mean"]
    chi2 = k * err @ np.linalg.solve(p["cov"], err)             # ~ chi^2_64: mean 64, sd 11.3
    assert chi2 < D + 5 * np.sqrt(2 * D), chi2
    ratio = np.trace(np.cov(s, rowvar=False)) / np.trace(p["cov"])
    assert abs(ratio - 1) < 0.08, ratio
    assert out["std"].shape == out["mean"].shape == (1, *SHAPE)


@pytest.mark.slow
def test_sample_dps_end_to_end_matches_the_posterior():
    p = make_problem("fourier", "field")
    k = 200
    out = sample_dps(FIELD.wiener, p["fwd"], p["adj"], p["y"], SIGMA_Y, n_samples=k,
                     cg_iters=64, generator=torch.Generator().manual_seed(11))
    _mc_check(p, out, k)
    assert out["forward_calls"] == RECON_STEPS
    assert out["jacobian_calls"] >= 2 * RECON_STEPS and out["calls"] == (
        out["forward_calls"] + out["jacobian_calls"])


def test_sample_dc_end_to_end_matches_the_white_posterior_and_counts_calls_per_chunk():
    p = make_problem("random", "white")
    k = 200
    out = sample_dc(white, p["fwd"], p["adj"], p["y"], SIGMA_Y, gamma="white", sigma_data=1.0, n_samples=k,
                    chunk=50, cg_iters=16, generator=torch.Generator().manual_seed(12))
    _mc_check(p, out, k)
    assert out["calls"] == out["forward_calls"] == 4 * RECON_STEPS and out["jacobian_calls"] == 0


def test_sample_dc_gamma_names_and_bad_values():
    p = make_problem("random", "white")
    kw = dict(n_samples=2, steps=4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="needs sigma_data"):
        sample_dc(white, p["fwd"], p["adj"], p["y"], SIGMA_Y, gamma="white", **kw)
    with pytest.raises(ValueError, match="'noise', 'white'"):
        sample_dc(white, p["fwd"], p["adj"], p["y"], SIGMA_Y, gamma="wiener", **kw)
    a = sample_dc(white, p["fwd"], p["adj"], p["y"], SIGMA_Y, **kw)["mean"]
    b = sample_dc(white, p["fwd"], p["adj"], p["y"], SIGMA_Y, gamma=noise_gamma, **{**kw, "generator": torch.Generator().manual_seed(0)})["mean"]
    assert torch.equal(a, b)                                 # "noise" is the default
