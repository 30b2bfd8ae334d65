"""Additive white Gaussian noise ``y = x + N(0, sigma^2)`` (per real channel, docs/design.md section 2).

The transform is linear, ``z = y / sigma``, so its algebraic inverse ``x = sigma z`` is also
the unbiased inverse for means. ``sigma`` is estimated by the wavelet MAD of the finest
all-detail Haar subband (:func:`ambient_med.noise.estimate.from_image_wavelet`).
"""

from __future__ import annotations

from ambient_med.noise.estimate import from_image_wavelet
from ambient_med.noise.models import NoiseModel, like, to_numpy


class Gaussian(NoiseModel):
    """Gaussian noise of std ``sigma`` (> 0), in the data's units."""

    name = "gaussian"

    def __init__(self, sigma: float):
        if not float(sigma) > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.sigma = float(sigma)
        self.details = {}

    @classmethod
    def estimate(cls, data, axes: tuple[int, ...] | None = None) -> Gaussian:
        est = from_image_wavelet(to_numpy(data), axes=axes)
        m = cls(est.sigma)
        m.details = {"method": est.method, "uncertainty": est.uncertainty, **est.details}
        return m

    @property
    def params(self):
        return {"sigma": self.sigma}

    def stabilise(self, y):
        return like(to_numpy(y) / self.sigma, y)

    def invert_mean(self, z_hat):
        return like(to_numpy(z_hat) * self.sigma, z_hat)

    def invert_sample(self, z):
        return self.invert_mean(z)
