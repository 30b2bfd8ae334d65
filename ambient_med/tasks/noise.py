"""What ``ambient-med estimate-noise`` does: open a file and measure its noise with the model
``train`` would use (docs/design.md section 6).

* k-space (fastMRI HDF5, BART cfl): Gaussian ``sigma`` per real channel from the outer k-space
  corners of the middle slice;
* magnitude volumes (NIfTI): PIESNO in the air with ``n_coils`` (Rician for one coil, noncentral
  chi for more), or the effective-chi fit;
* complex image arrays: wavelet MAD;
* intensity data (TIFF stacks, frame folders: microscopy): the Poisson-Gaussian fit ``train``
  makes, ``Var[y | x] = a (x - mu) + b``, reported in a microscopist's units: gain ``a`` in
  counts per photon, read noise ``sqrt(b)`` in counts, photons at the median intensity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, NoiseEstimateError
from ..io.discover import open_source
from ..noise import NoiseEstimate, estimate_source


def estimate_noise_file(path: str | Path, n_coils: int | None = None, noise_model: str = "auto",
                        estimator: str = "auto", check_finite: bool = True, **kwargs) -> NoiseEstimate:
    """Open any supported file (see :func:`ambient_med.io.open_source`) and estimate its
    Gaussian or magnitude noise (:func:`ambient_med.noise.estimate_source`). With
    ``check_finite`` every item is read once first, so a NaN or Inf anywhere in the file is
    refused (``DataError`` naming the file), not only in the part the estimator reads.
    ``details["path"]`` records the file."""
    src = open_source(path)
    if check_finite and src.kind != "magnitude":  # readers refuse non-finite items on read
        for i in range(len(src)):
            src.read(i)
    try:
        est = estimate_source(src, noise_model, estimator, n_coils, **kwargs)
    except NoiseEstimateError as e:
        raise NoiseEstimateError(f"{path}: {e}") from None
    est.details["path"] = str(path)
    return est


def estimate_noise(path: str | Path, *, noise_model: str = "auto", n_coils: int | None = None,
                   estimator: str = "auto") -> dict:
    """The noise of one file as a flat dict (what ``estimate-noise --json`` prints).

    ``noise_model="auto"`` picks Poisson-Gaussian for intensity data (TIFF stacks, frame
    folders), as ``train`` does; the dict then holds ``a``, ``b``, ``mu``, ``read_noise_counts``,
    ``median_counts`` and ``photons_at_median``. Otherwise it holds ``sigma`` (data units, per
    real channel), its relative ``uncertainty``, the ``method``, ``noise_model`` and ``n_coils``.
    """
    from ..training.datasets import is_microscopy

    src = open_source(path)
    if noise_model == "poisson-gaussian" or (noise_model == "auto" and is_microscopy(src)):
        return _poisson_gaussian(path, src)
    est = estimate_noise_file(path, n_coils=n_coils, noise_model=noise_model, estimator=estimator)
    return {"file": str(path), "sigma": est.sigma, "method": est.method, "uncertainty": est.uncertainty,
            "noise_model": est.details.get("noise_model"), "n_coils": est.details.get("n_coils")}


def _poisson_gaussian(path, src) -> dict:
    from ..training.datasets import fit_noise_model

    if src.kind != "intensity":
        raise ConfigError(f"{path}: noise model poisson-gaussian is for intensity data (microscopy); "
                          f"this file holds {src.kind} data")
    m = fit_noise_model(src, path, "poisson-gaussian", None, "auto")
    idx = np.unique(np.linspace(0, len(src) - 1, min(16, len(src))).round().astype(int))
    median = float(np.median(np.concatenate([src.read(int(i)).ravel() for i in idx])))
    return {"file": str(path), "noise_model": "poisson-gaussian", "frames": len(src), "a": m.a, "b": m.b,
            "mu": m.mu, "read_noise_counts": float(np.sqrt(m.b)), "median_counts": median,
            "photons_at_median": (median - m.mu) / m.a, "method": m.details.get("method")}


def describe(d: dict) -> str:
    """One line for a person: the file, the fit and what ``train`` does with it."""
    if d["noise_model"] == "poisson-gaussian":
        return (f"{d['file']}: noise model poisson-gaussian, {d['frames']} frame(s): gain a = {d['a']:.4g} "
                f"counts per photon, read noise {d['read_noise_counts']:.4g} counts (offset {d['mu']:.4g}); "
                f"median intensity {d['median_counts']:.4g} counts = {d['photons_at_median']:.3g} photons. "
                "train stabilises it (generalised Anscombe) to noise of std 1, the sigma_n = 1 it reports"
                + ("; below a few photons the transform leaves less (about 0.6 std at half a photon), so "
                   "the microscopy protocols top each pixel up to 1 (data.noise_map)"
                   if d["photons_at_median"] < 4 else ""))
    return (f"{d['file']}: sigma_n = {d['sigma']:.6g} (+/- {100 * d['uncertainty']:.1f}%, "
            f"{d['method']}, noise model {d['noise_model']})")
