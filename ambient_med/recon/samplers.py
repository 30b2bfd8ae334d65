"""Posterior samplers for linear inverse problems ``y = A x0 + sigma_y e``: the package's calibrated
stochastic reverse chain (:func:`ambient_med.diffusion.sampling.sample_ancestral`, second order) driven by a
*conditional* denoiser ``E[x0 | x_sigma, y]`` (:mod:`ambient_med.recon.conditional`).

Conditioning on ``y`` does not change the forward process: given ``y``, ``x_sigma = x0 + sigma z``
with ``x0 ~ p(x0 | y)``, so the reverse chain that samples the prior from ``D`` samples the
posterior from ``E[x0 | x_sigma, y]``. Chains start at ``sigma_max`` from ``N(0, sigma_max^2 I)``.

- :func:`sample_dc`:  data-consistency projection of ``D`` with a scalar ``gamma`` (CG on the
                      normal equations); one network call per level. ``gamma="noise"``
                      (``sigma^2``, the default) or ``"white"`` (exact for white Gaussian priors).
- :func:`sample_dps`: diffusion posterior sampling through the network, by default the
                      Tweedie-covariance update (exact for Gaussian priors); ``mode="pigdm"`` and
                      ``"dps"`` are its cheaper approximations.

``forward`` / ``adjoint`` are any real linear map and its adjoint on model-space tensors
(:mod:`ambient_med.recon.operators`; complex operators via ``complex_to_real``, MRI via
:mod:`ambient_med.recon.mri`). The ``K`` chains run as one batch of ``K*N`` (or ``chunk*N``) rows,
sample ``j`` of measurement ``n`` in row ``j*N + n``, so the operators must act per row on such
a batch (true for operators that broadcast over the batch and for those of ``recon.mri``).
Both return ``{"mean", "std", "samples" (K, N, ...), "calls", "forward_calls", "jacobian_calls"}``,
the call counts summed over all chains and chunks (a batched call counts once).

Antithetic chains (``antithetic=True``, the default, for an even number of chains in even
chunks): chain ``j + k/2`` of a chunk starts at ``-x`` of chain ``j`` and takes the negated step
noise (antithetic variates, e.g. Owen, *Monte Carlo theory, methods and examples*, ch. 8). Each
chain is still a posterior sample, but the pair's average cancels the sampling noise to first
order, and exactly for an affine conditional denoiser: with a Gaussian prior, one pair gives the
posterior mean. The ``mean`` of K = 4 chains is then no longer 1/K of a posterior spread away
from the posterior mean. Measured (``benchmarks/results/recon_gaussian.md`` and
``mri_recon.md``): +1.0 to +1.5 dB for the MNI priors at R = 4 and 8 at the same cost. The
``std`` of paired chains is taken about their mean with no degree of freedom spent on it
(``correction=0``), which is unbiased when the pair means are exact.
"""

from __future__ import annotations

from typing import Callable

import torch

from ambient_med.diffusion.sampling import DEFAULT_STEPS, Callback, karras_sigmas, sample_ancestral
from ambient_med.recon.conditional import (
    CallCounter,
    Denoiser,
    Gamma,
    dc_denoiser,
    noise_gamma,
    tweedie_denoiser,
    white_gamma,
)
from ambient_med.recon.operators import Operator

# The chain from sigma_max = 80 at the step count calibrated for full sampling (sampling.py).
RECON_STEPS = DEFAULT_STEPS["ancestral"]


def _run(make: Callable[[torch.Tensor, CallCounter], Denoiser], adjoint: Operator,
         y: torch.Tensor, *, n_samples: int, steps: int | None, sigma_min: float,
         sigma_max: float, rho: float, chunk: int | None, generator: torch.Generator | None,
         callback: Callback, antithetic: bool = True) -> dict:
    if n_samples < 1:
        raise ValueError("n_samples must be >= 1")
    aty = adjoint(y)
    if torch.is_complex(aty):
        raise TypeError("the adjoint returned a complex image; the samplers work on real "
                        "channels: wrap complex operators with recon.operators.complex_to_real")
    n, image = y.shape[0], tuple(aty.shape[1:])
    if aty.shape[0] != n:
        raise ValueError(f"adjoint(y) has batch {aty.shape[0]}, y has {n}")
    steps = steps or RECON_STEPS
    chunk = min(chunk or n_samples, n_samples)
    sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho, device=y.device)
    counter = CallCounter()
    draws = []
    paired = antithetic and chunk % 2 == 0 and n_samples % 2 == 0
    for start in range(0, n_samples, chunk):
        k = min(chunk, n_samples - start)
        yk = y.repeat(k, *([1] * (y.ndim - 1)))
        pairs = paired and k % 2 == 0
        x = sigma_max * torch.randn(((k // 2 if pairs else k) * n, *image), generator=generator,
                                    device=y.device, dtype=aty.dtype)
        if pairs:                    # chain j + k/2 is chain j's antithetic twin
            x = torch.cat([x, -x])
        x = sample_ancestral(make(yk, counter), x, sigmas, generator=generator,
                             callback=callback, antithetic=pairs)
        draws.append(x.reshape(k, n, *image))
    samples = torch.cat(draws)
    if n_samples < 2:
        std = torch.zeros_like(samples[0])
    elif paired:       # the pair means are exact to first order: no degree of freedom spent on them
        std = samples.std(0, correction=0)
    else:
        std = samples.std(0)
    return {"mean": samples.mean(0), "std": std, "samples": samples, "calls": counter.total,
            "forward_calls": counter.forward, "jacobian_calls": counter.jacobian}


def sample_dc(denoiser: Denoiser, forward: Operator, adjoint: Operator, y: torch.Tensor,
              sigma_y: float, *, sigma_data: float | None = None, gamma: Gamma | str = "noise",
              n_samples: int = 8, steps: int | None = None, sigma_min: float = 0.002,
              sigma_max: float = 80.0, rho: float = 7.0, cg_iters: int = 8,
              cg_tol: float = 1e-6, chunk: int | None = None, antithetic: bool = True,
              generator: torch.Generator | None = None, callback: Callback = None) -> dict:
    """Posterior samples with the data-consistency denoiser (:func:`~ambient_med.recon.conditional.dc_denoiser`).

    ``gamma``: ``"noise"`` (default, :func:`~ambient_med.recon.conditional.noise_gamma`,
    ``sigma^2``), ``"white"`` (:func:`~ambient_med.recon.conditional.white_gamma` of the prior's
    ``sigma_data``, ``sigma^2 sd^2/(sigma^2 + sd^2)``, exact for a white Gaussian prior of std
    ``sd``), a float or a function of ``sigma``. For a correlated prior no scalar is exact; on the
    MRI benchmark's exact Gaussian prior ``"noise"`` lands 0.17 dB (R = 4) and 0.30 dB (R = 8)
    below the posterior mean at the default steps, ``"white"`` 0.47 dB below at R = 8
    (``benchmarks/results/recon_gaussian.md``).
    ``steps`` defaults to ``RECON_STEPS`` (128, the calibrated full-sampling count), one network
    call each."""
    if isinstance(gamma, str):
        if gamma not in ("noise", "white"):
            raise ValueError(f"gamma must be 'noise', 'white', a number or a function of sigma, got {gamma!r}")
        if gamma == "white" and sigma_data is None:
            raise ValueError("sample_dc(gamma='white') needs sigma_data (the prior's)")
        gamma = noise_gamma if gamma == "noise" else white_gamma(sigma_data)

    def make(yk, counter):
        return dc_denoiser(denoiser, forward, adjoint, yk, sigma_y, gamma, cg_iters=cg_iters,
                           cg_tol=cg_tol, counter=counter)

    return _run(make, adjoint, y, n_samples=n_samples, steps=steps, sigma_min=sigma_min,
                sigma_max=sigma_max, rho=rho, chunk=chunk, generator=generator, callback=callback,
                antithetic=antithetic)


def sample_dps(denoiser: Denoiser, forward: Operator, adjoint: Operator, y: torch.Tensor,
               sigma_y: float, *, mode: str = "exact", jacobian: str = "vjp",
               sigma_data: float | None = None, gamma: Gamma | None = None, n_samples: int = 8,
               steps: int | None = None, sigma_min: float = 0.002, sigma_max: float = 80.0,
               rho: float = 7.0, cg_iters: int = 16, cg_tol: float = 1e-6,
               chunk: int | None = None, antithetic: bool = True,
               generator: torch.Generator | None = None, callback: Callback = None) -> dict:
    """Posterior samples guided through the network (:func:`~ambient_med.recon.conditional.tweedie_denoiser`).

    ``mode="exact"`` (default): ``E[x0 | x_sigma, y] = D + Sigma A^T (A Sigma A^T + sigma_y^2 I)^{-1}
    (y - A D)``, ``Sigma = sigma^2 dD/dx`` (Tweedie), inner system by ``cg_iters`` CG steps of one
    Jacobian product each: exact for Gaussian priors. ``"pigdm"`` (``gamma`` or ``sigma_data``)
    and ``"dps"`` are the PiGDM and DPS approximations. ``steps`` defaults to ``RECON_STEPS``."""
    if mode == "pigdm" and gamma is None and sigma_data is not None:
        gamma = white_gamma(sigma_data)

    def make(yk, counter):
        return tweedie_denoiser(denoiser, forward, adjoint, yk, sigma_y, mode=mode,
                                jacobian=jacobian, gamma=gamma, cg_iters=cg_iters,
                                cg_tol=cg_tol, counter=counter)

    return _run(make, adjoint, y, n_samples=n_samples, steps=steps, sigma_min=sigma_min,
                sigma_max=sigma_max, rho=rho, chunk=chunk, generator=generator, callback=callback,
                antithetic=antithetic)
