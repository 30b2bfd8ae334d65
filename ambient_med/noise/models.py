"""One contract for every noise model (docs/design.md section 6): estimate, stabilise, invert.

A :class:`NoiseModel` instance *is* its parameters. The ambient objective is exact only for
clean data plus white Gaussian noise of known std, so a model maps data ``y`` to
``z = stabilise(y)`` whose noise is (approximately) Gaussian with **unit variance**; the prior
is trained on ``z`` with ``sigma_n = 1``. After denoising in ``z``:

* ``invert_mean(z_hat)``: the *exact unbiased inverse* for a posterior mean (or any estimate of
  ``E[z | clean]``): the clean signal ``c`` with ``E[stabilise(y) | c] = z_hat``. The algebraic
  inverse of a nonlinear VST is biased here, because ``E[f(y)] != f(E[y])`` (Jensen); the
  bias is largest at low counts / low SNR (Makitalo & Foi, IEEE TIP 20:99, 2011).
* ``invert_sample(z)``: the algebraic inverse ``f^{-1}(z)``, for samples, which carry their own
  noise-free variability and must not be shifted by the Jensen correction.

``estimate(data)`` (a classmethod) fits the parameters from the data alone and returns a
model; ``details`` records the method and its figures. ``to_dict()`` gives JSON-ready
``{"name": ..., **params}``; :func:`from_dict` rebuilds any registered model from it.

Arrays: NumPy arrays or torch tensors of any shape; a tensor comes back as a tensor of the
same dtype and device (the tabulated transforms are evaluated on the CPU in float64).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

REGISTRY: dict[str, type[NoiseModel]] = {}


def to_numpy(x) -> np.ndarray:
    """float64 NumPy copy of an array or tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def like(out: np.ndarray, ref):
    """``out`` as the type of ``ref``: a tensor of ``ref``'s dtype and device, or a NumPy array
    of ``ref``'s floating dtype (float64 for integer input)."""
    if hasattr(ref, "detach"):
        import torch

        dtype = ref.dtype if ref.dtype.is_floating_point else torch.float32
        return torch.as_tensor(out, dtype=dtype, device=ref.device)
    ref = np.asarray(ref)
    return out.astype(ref.dtype) if np.issubdtype(ref.dtype, np.floating) else out


class NoiseModel(ABC):
    """Base class; subclasses set ``name`` and implement the four maps and ``params``."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            REGISTRY[cls.name] = cls

    details: dict[str, Any]

    @classmethod
    @abstractmethod
    def estimate(cls, data, **options) -> NoiseModel:
        """Fit the parameters from the noisy data alone."""

    @property
    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The parameters, JSON-ready (floats and ints), as ``__init__`` takes them."""

    @abstractmethod
    def stabilise(self, y):
        """Data -> ``z`` with unit-variance (approximately Gaussian) noise."""

    def stabilise_observation(self, y, seed: int = 0):
        """What a prior trained with this model sees of an observation ``y``: :meth:`stabilise`,
        plus, for models that equalise the noise per pixel, the same top-up noise the training
        images got (drawn with ``seed``)."""
        return self.stabilise(y)

    @abstractmethod
    def invert_mean(self, z_hat):
        """Exact unbiased inverse: the clean signal whose expected ``stabilise`` is ``z_hat``."""

    @abstractmethod
    def invert_sample(self, z):
        """Algebraic inverse of :meth:`stabilise`."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NoiseModel:
        return from_dict(d)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.params == other.params


def from_dict(d: dict[str, Any]) -> NoiseModel:
    """Rebuild a model from :meth:`NoiseModel.to_dict` (e.g. a prior's JSON metadata)."""
    d = dict(d)
    name = d.pop("name", None)
    if name not in REGISTRY:
        from ambient_med.errors import ConfigError

        raise ConfigError(f"unknown noise model {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](**d)
