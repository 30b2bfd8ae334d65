"""The prior as a DeepInverse denoiser (``pip install ambient-med[deepinv]``).

DeepInverse (Tachella et al., "DeepInverse: a Python package for solving imaging inverse problems
with deep learning", 2025, arXiv 2505.20160) plugs any ``deepinv.models.Denoiser`` into its
plug-and-play and diffusion solvers (``DiffPIR``, ``DPS``, ...) through ``forward(x, sigma)``:
``x`` a real ``(B, C, H, W)`` image with white Gaussian noise of std ``sigma`` (float or ``(B,)``),
returning an estimate of the clean image. The prior's denoiser is the MMSE estimate
``D(x, sigma) = E[x0 | x0 + sigma e = x]`` (Tweedie; docs/design.md section 3), exactly that contract.

Layout and units: deepinv works on real tensors, so complex images are the prior's interleaved
(re, im) channels ``(B, 2C, H, W)``, as deepinv's own MRI physics does. ``space="data"`` (default)
takes ``x`` and ``sigma`` in the units of the user's data and divides by the prior's scale ``s``
on the way in (``D_data(x, sigma) = s D_model(x / s, sigma / s)``); deepinv's examples assume images
in ``[0, 1]``, so for a prior trained on other units either rescale the problem or pass
``space="model"`` when the problem is already in model units. The call is differentiable in
``x`` (DPS back-propagates through the denoiser).
"""

from __future__ import annotations

from ambient_med.interop.common import prior_denoise

__all__ = ["AmbientDenoiser", "prior_denoise"]


def _base():
    try:
        from deepinv.models import Denoiser
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ambient_med.interop.deepinv needs deepinv: "
                          "pip install 'ambient-med[deepinv]'") from e
    return Denoiser


class AmbientDenoiser(_base()):
    """``deepinv.models.Denoiser`` wrapping an :class:`~ambient_med.prior.AmbientPrior`.

    >>> den = AmbientDenoiser(AmbientPrior.load("prior.safetensors"), space="model")
    >>> x_hat = deepinv.sampling.DiffPIR(den, deepinv.optim.data_fidelity.L2())(y, physics)
    """

    def __init__(self, prior, space: str = "data"):
        super().__init__()
        self.prior = prior
        self.space = space
        self.model = prior.model          # registered: .to(device) moves the network

    def forward(self, x, sigma, *args, **kwargs):
        return prior_denoise(self.prior, x, sigma, self.space)
