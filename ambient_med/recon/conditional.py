"""Conditional denoisers ``E[x0 | x_sigma, y]`` for a linear inverse problem ``y = A x0 + sigma_y e``.

Everything is in model space on real channel-first tensors (complex images as 2 channels; see
:mod:`ambient_med.recon.operators`); ``sigma_y`` is the noise std per real channel of ``y``.
``x_sigma = x0 + sigma z`` is the diffusion at level ``sigma``, ``D(x, sigma) = E[x0 | x_sigma]``
the prior's denoiser. Given ``x0``, ``y`` is independent of ``x_sigma``, so

    p(x0 | x_sigma, y)  is proportional to  p(x0 | x_sigma) N(y; A x0, sigma_y^2 I).

If ``p(x0 | x_sigma)`` is Gaussian, ``N(D, Sigma)`` with ``Sigma = Cov[x0 | x_sigma]``, the product
is Gaussian and its mean is the Kalman / Wiener update

    E[x0 | x_sigma, y] = D + Sigma A^T (A Sigma A^T + sigma_y^2 I)^{-1} (y - A D)          (*)
                       = argmin_z ||A z - y||^2 / sigma_y^2 + (z - D)^T Sigma^{-1} (z - D).

Tweedie's second-order identity gives the covariance from the denoiser itself,
``Sigma = sigma^2 dD/dx`` (its Jacobian is symmetric: ``D = x + sigma^2 grad log p_sigma``), so
``Sigma v`` is one Jacobian-vector product through the network (Efron, JASA 2011; Meng et al.,
NeurIPS 2021). Plugging (*) into the stochastic reverse chain samples ``p(x0 | y)`` exactly when
the prior is Gaussian (every ``p(x0 | x_sigma)`` is then Gaussian) and the chain is calibrated;
otherwise it is the Gaussian (moment-matching) approximation of ``p(x0 | x_sigma)``
(Boys et al., "Tweedie moment projected diffusions", 2023, arXiv 2310.06721; Rozet et al.,
"Learning diffusion priors from observations by expectation maximization", NeurIPS 2024,
arXiv 2405.13712, who solve the inner system by CG with vector-Jacobian products as here).

Cheaper special cases of (*), by what they assume of ``Sigma``:

- ``tweedie_denoiser(mode="pigdm")``: ``Sigma = gamma I`` inside the inverse, the true Jacobian
  outside (Song et al., "Pseudoinverse-guided diffusion models", ICLR 2023, PiGDM).
- ``tweedie_denoiser(mode="dps")``: ``A Sigma A^T`` dropped, ``D + sigma^2 J^T A^T (y - A D) / sigma_y^2``,
  the gradient of the Gaussian likelihood ``log N(y; A D(x), sigma_y^2 I)`` through the network
  (Chung et al., "Diffusion posterior sampling", ICLR 2023). It over-corrects wherever
  ``A Sigma A^T`` is not small against ``sigma_y^2`` (high ``sigma``, low ``sigma_y``); Chung et al.
  replace the weight by a normalised step size for that reason. Kept for comparison.
- :func:`dc_denoiser`: ``Sigma = gamma I`` everywhere: the data-consistency projection of ``D``
  (no Jacobian, no network call beyond ``D``). Exact when the prior is white Gaussian,
  ``x0 ~ N(0, sd^2 I)``, where ``Cov[x0 | x_sigma] = sigma^2 sd^2 / (sigma^2 + sd^2) I``
  (:func:`white_gamma`). For a correlated prior no scalar ``gamma`` is exact: the true ``Sigma``
  shrinks each eigen-direction of the prior by its own factor, ``p sigma^2 / (p + sigma^2)`` for
  prior variance ``p``; :func:`noise_gamma` (``sigma^2``) is exact for the directions of large
  ``p``, which for images are the ones the measurements inform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ambient_med.recon.cg import cg
from ambient_med.recon.operators import Operator
from ambient_med.utils import Denoiser, append_dims, as_sigma

Gamma = Callable[[torch.Tensor], torch.Tensor] | float
MODES = ("exact", "pigdm", "dps")


@dataclass
class CallCounter:
    """Network evaluations: ``forward`` calls of ``D`` and ``jacobian`` products (each one
    backward or forward-mode pass, about the cost of a forward)."""

    forward: int = 0
    jacobian: int = 0

    @property
    def total(self) -> int:
        return self.forward + self.jacobian


def white_gamma(sigma_data: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``gamma(sigma) = sigma^2 sd^2 / (sigma^2 + sd^2)``: the per-pixel ``Var[x0 | x_sigma]`` of a
    white Gaussian prior of std ``sd``. For any prior of per-pixel variance ``sd^2`` it is the
    MSE of the best scalar shrinkage ``c x_sigma``, hence an upper bound on the per-pixel MMSE
    (the mean diagonal of ``Cov[x0 | x_sigma]``): it trusts ``D`` no more than it deserves,
    tends to ``sd^2`` at high ``sigma`` and to ``sigma^2`` at low ``sigma``, and needs nothing but
    the prior's ``sigma_data``."""
    sd2 = float(sigma_data) ** 2
    if sd2 <= 0:
        raise ValueError("sigma_data must be positive")
    return lambda sigma: sigma**2 * sd2 / (sigma**2 + sd2)


def noise_gamma(sigma: torch.Tensor) -> torch.Tensor:
    """``gamma(sigma) = sigma^2``: ``Var[x0 | x_sigma]`` along every direction where the prior's
    variance is far above ``sigma^2`` (there ``x_sigma`` alone pins ``x0`` to within ``sigma``), the
    limit of :func:`white_gamma` as ``sd -> inf``, and DiffPIR's data step with ``lambda = 1``
    (Zhu et al., "Denoising diffusion models for plug-and-play image restoration", CVPR 2023).
    The default of :func:`~ambient_med.recon.samplers.sample_dc`: images put most of their
    variance in the low spatial frequencies that k-space sampling keeps, where the prior's
    variance is up to 1000x its per-pixel mean ``sd^2``, so :func:`white_gamma`, which saturates at
    ``sd^2``, trusts ``D`` too much there at high ``sigma``. Measured with the exact Gaussian prior
    of the MRI benchmark (``benchmarks/results/recon_gaussian.md``): 0.47 -> 0.30 dB from the exact
    posterior mean at R = 8, 0.11 -> 0.17 at R = 4."""
    return sigma**2


def _gamma(gamma: Gamma, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``gamma`` at the per-sample levels ``s`` (N,), broadcastable to ``x`` (per sample or per pixel)."""
    g = gamma(s) if callable(gamma) else torch.as_tensor(gamma, dtype=x.dtype, device=x.device)
    g = torch.as_tensor(g, dtype=x.dtype, device=x.device)
    if g.ndim == 0:
        g = g.expand(x.shape[0])
    if g.ndim == 1:
        g = append_dims(g, x.ndim)
    if bool((g <= 0).any()):
        raise ValueError("gamma(sigma) must be positive")
    return g


def _check_sigma_y(sigma_y: float) -> float:
    sigma_y = float(sigma_y)
    if not sigma_y > 0:
        raise ValueError("sigma_y must be > 0 (for noise-free data use a small sigma_y, "
                         "e.g. 1e-3 of the signal scale)")
    return sigma_y


def dc_denoiser(denoiser: Denoiser, forward: Operator, adjoint: Operator, y: torch.Tensor,
                sigma_y: float, gamma: Gamma, *, cg_iters: int = 8, cg_tol: float = 1e-6,
                counter: CallCounter | None = None) -> Denoiser:
    """``D`` projected onto the measurements (docs/design.md section 5), one network call per level:

        z = argmin_z ||A z - y||^2 / sigma_y^2 + ||z - D(x, sigma)||^2 / gamma(sigma),
        (A^T A / sigma_y^2 + I / gamma) z = A^T y / sigma_y^2 + D / gamma,

    solved by ``cg_iters`` CG steps warm-started at ``D`` (no network call inside CG).
    ``gamma`` is a float or a function of the per-sample ``sigma`` (N,) returning (N,) or a
    per-pixel tensor: :func:`noise_gamma` or :func:`white_gamma` (exactness: module docstring)."""
    sigma_y = _check_sigma_y(sigma_y)
    counter = counter if counter is not None else CallCounter()
    w = 1.0 / sigma_y**2
    aty = adjoint(y) * w

    def conditional(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = as_sigma(sigma, x)
        d = denoiser(x, s)
        counter.forward += 1
        g = _gamma(gamma, s, x)
        z, _ = cg(lambda z: w * adjoint(forward(z)) + z / g, aty + d / g, d,
                  iters=cg_iters, tol=cg_tol)
        return z

    return conditional


def tweedie_denoiser(denoiser: Denoiser, forward: Operator, adjoint: Operator, y: torch.Tensor,
                     sigma_y: float, *, mode: str = "exact", jacobian: str = "vjp",
                     gamma: Gamma | None = None, cg_iters: int = 16, cg_tol: float = 1e-6,
                     warm_start: bool = True, counter: CallCounter | None = None) -> Denoiser:
    """The conditional denoiser (*) with ``Sigma v = sigma^2 J v``, ``J = dD/dx`` by autograd.

    ``mode="exact"`` (default) solves ``(A Sigma A^T + sigma_y^2 I) u = y - A D`` by CG, each
    step one Jacobian product; per level that is 1 forward + (CG steps + 1) Jacobian products.
    ``"pigdm"`` (needs ``gamma``) and ``"dps"`` use 1 forward + 1 Jacobian product (module docstring).
    ``jacobian="vjp"`` (default) uses ``J^T v`` by reverse mode on one retained graph, equal to
    ``J v`` for an exact denoiser (symmetric Jacobian; a trained network is symmetric only
    approximately); ``"jvp"`` uses forward mode (``torch.func.jvp``, re-evaluates ``D`` each time).
    An indefinite learned Jacobian can make the CG system indefinite: CG then stops per row
    (:mod:`ambient_med.recon.cg`). With ``warm_start`` the inner CG starts from the previous
    call's solution ``u`` (adjacent levels have nearby systems): one extra Jacobian product for
    the starting residual, usually several fewer CG steps."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    if jacobian not in ("vjp", "jvp"):
        raise ValueError("jacobian must be 'vjp' or 'jvp'")
    if mode == "pigdm" and gamma is None:
        raise ValueError("mode='pigdm' needs gamma (e.g. white_gamma(sigma_data))")
    sigma_y = _check_sigma_y(sigma_y)
    counter = counter if counter is not None else CallCounter()
    last: dict[str, torch.Tensor] = {}

    def conditional(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = as_sigma(sigma, x)
        s2 = append_dims(s**2, x.ndim)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(jacobian == "vjp")
            d = denoiser(xg, s)
        counter.forward += 1

        def cov(v: torch.Tensor) -> torch.Tensor:  # Sigma v = sigma^2 J v
            counter.jacobian += 1
            if jacobian == "vjp":
                with torch.enable_grad():
                    (jv,) = torch.autograd.grad(d, xg, v, retain_graph=True)
            else:
                _, jv = torch.func.jvp(lambda z: denoiser(z, s), (x.detach(),), (v,))
            return s2 * jv

        d0 = d.detach()
        r = y - forward(d0)
        if mode == "exact":
            u0 = last.get("u") if warm_start else None
            u0 = u0 if u0 is not None and u0.shape == r.shape else None
            u, _ = cg(lambda u: forward(cov(adjoint(u))) + sigma_y**2 * u, r, u0,
                      iters=cg_iters, tol=cg_tol)
            last["u"] = u
        elif mode == "pigdm":
            g = _gamma(gamma, s, x)
            u, _ = cg(lambda u: forward(g * adjoint(u)) + sigma_y**2 * u, r,
                      iters=cg_iters, tol=cg_tol)
        else:
            u = r / sigma_y**2
        return d0 + cov(adjoint(u)).detach()

    return conditional
