"""Noise: estimators of ``sigma`` and noise models that stabilise data to unit-variance
Gaussian noise (docs/design.md section 6).

* :mod:`ambient_med.noise.estimate`: the Gaussian noise-level estimators (noise scan, k-space
  corners, wavelet MAD) and :class:`NoiseEstimate`;
* :mod:`ambient_med.noise.piesno`: magnitude noise from the air (PIESNO, effective chi);
* :mod:`ambient_med.noise.resolve`: the choice of model and estimator for a data kind, and the
  source-level entry point (files: :func:`ambient_med.tasks.noise.estimate_noise`);
* :mod:`ambient_med.noise.models`: the :class:`NoiseModel` contract (estimate, stabilise,
  invert_mean, invert_sample, to_dict/from_dict) and its registry;
* :mod:`ambient_med.noise.gaussian`, :mod:`ambient_med.noise.poisson_gaussian`,
  :mod:`ambient_med.noise.magnitude`: one module per model.
"""

from ambient_med.noise.estimate import (
    MAD_REL_SE,
    MAD_TO_SIGMA,
    ROUNDOFF_RATIO,
    NoiseEstimate,
    corner_mask,
    from_image_wavelet,
    from_kspace,
    from_noise_scan,
    mad_sigma,
    shrink_covariance,
)
from ambient_med.noise.piesno import effective_chi, from_magnitude, magnitude_volume_estimate
from ambient_med.noise.resolve import (
    ESTIMATORS,
    NOISE_MODELS,
    estimate_sigma,
    estimate_source,
    resolve_noise_model,
)

__all__ = [
    "ESTIMATORS", "MAD_REL_SE", "MAD_TO_SIGMA", "NOISE_MODELS", "ROUNDOFF_RATIO", "NoiseEstimate",
    "corner_mask", "effective_chi", "estimate_sigma", "estimate_source",
    "from_image_wavelet", "from_kspace", "from_magnitude", "from_noise_scan", "mad_sigma",
    "magnitude_volume_estimate", "resolve_noise_model", "shrink_covariance",
]

from ambient_med.noise.gaussian import Gaussian  # noqa: E402
from ambient_med.noise.magnitude import NoncentralChi, Rician  # noqa: E402
from ambient_med.noise.models import NoiseModel, from_dict  # noqa: E402
from ambient_med.noise.poisson_gaussian import TOPUP_DRAWS, PoissonGaussian  # noqa: E402

__all__ += ["Gaussian", "NoiseModel", "NoncentralChi", "PoissonGaussian", "Rician", "TOPUP_DRAWS", "from_dict"]
