"""Which noise model and estimator a data kind gets, and the entry point that estimates the
noise of an open source (docs/design.md section 6). The estimators themselves are in
:mod:`ambient_med.noise.estimate` (Gaussian: noise scan, k-space corners, wavelet MAD) and
:mod:`ambient_med.noise.piesno` (magnitude: PIESNO, effective chi).

This module does no file I/O: :func:`ambient_med.tasks.noise.estimate_noise` opens files.
"""

from __future__ import annotations

import numpy as np

from ambient_med.noise.estimate import NoiseEstimate, from_image_wavelet, from_kspace, from_noise_scan
from ambient_med.noise.piesno import _wider_than_chi, effective_chi, from_magnitude, magnitude_volume_estimate

NOISE_MODELS = ("gaussian", "rician", "noncentral-chi")
ESTIMATORS = ("kspace-corners", "wavelet-mad", "piesno", "effective-chi")


def resolve_noise_model(data_kind: str, noise_model: str = "auto", estimator: str = "auto",
                        n_coils: int | None = None, file_n_coils: int | None = None,
                        where: str = "") -> tuple[str, str, int | None]:
    """``(noise_model, estimator, n_coils)`` for data of ``data_kind`` (a reader's kind:
    ``kspace``, ``complex``, ``intensity``, ``magnitude``).

    Complex data (k-space, complex images) and real intensities: Gaussian per real channel,
    estimated from the k-space corners or by wavelet MAD. Magnitude data: Rician (one coil, or a
    complex coil combination) or noncentral chi with ``n_coils`` (root sum of squares), both
    estimated by PIESNO with ``N = n_coils``, or (estimator ``effective-chi``) with the effective,
    non-integer ``N_eff`` and ``sigma_eff`` that fit the air (:func:`effective_chi`; the nominal
    ``n_coils`` seeds it). ``n_coils``: the one given (option or protocol)
    wins, then the file's own (``file_n_coils``), then 1 for Rician. ``auto`` picks the model
    and estimator from the data. A model or estimator that does not fit the data is refused
    (``ConfigError``, one line), never silently replaced.
    """
    from ambient_med.errors import ConfigError

    pre = f"{where}: " if where else ""
    if noise_model != "auto" and noise_model not in NOISE_MODELS:
        raise ConfigError(f"{pre}noise_model {noise_model!r} is not implemented; choose auto or one of "
                          f"{', '.join(NOISE_MODELS)}")
    if estimator != "auto" and estimator not in ESTIMATORS:
        raise ConfigError(f"{pre}noise_estimator {estimator!r} is not implemented; choose auto or "
                          f"one of {', '.join(ESTIMATORS)}")
    if n_coils is not None and int(n_coils) < 1:
        raise ConfigError(f"{pre}n_coils must be a positive integer, got {n_coils}")
    if data_kind == "magnitude":
        n = n_coils or file_n_coils
        if estimator == "effective-chi" and noise_model != "gaussian":   # gaussian: refused below
            if noise_model == "rician":
                raise ConfigError(f"{pre}noise_estimator effective-chi fits the number of coils, but noise_model "
                                  "rician fixes it at 1; use noise_model noncentral-chi (or auto)")
            if n is None:
                raise ConfigError(f"{pre}noise_estimator effective-chi starts from the nominal number of coils: "
                                  "pass --n-coils or set data.n_coils")
            return "noncentral-chi", estimator, int(n)
        if noise_model == "auto":
            noise_model = "noncentral-chi" if (n or 1) > 1 else "rician"
        if noise_model == "gaussian":
            raise ConfigError(f"{pre}noise_model gaussian does not describe magnitude data (its noise is "
                              "Rician or noncentral chi); use rician, or noncentral-chi with n_coils")
        if noise_model == "rician":
            if n is not None and n != 1:
                raise ConfigError(f"{pre}noise_model rician means one coil, but n_coils is {n}; use "
                                  "noncentral-chi for a root-sum-of-squares of several coils")
            n = 1
        elif n is None:
            raise ConfigError(f"{pre}noise_model noncentral-chi needs the number of coils: pass "
                              "--n-coils or set data.n_coils")
        want = "piesno"
    else:
        if noise_model == "auto":
            noise_model = "gaussian"
        if noise_model != "gaussian":
            raise ConfigError(f"{pre}noise_model {noise_model} is for magnitude data; these data are "
                              f"{data_kind} (Gaussian noise per real channel)")
        want = "kspace-corners" if data_kind == "kspace" else "wavelet-mad"
        n = n_coils or file_n_coils
    if estimator == "auto":
        estimator = want
    if estimator != want:
        raise ConfigError(f"{pre}noise_estimator {estimator} does not fit {data_kind} data with "
                          f"noise_model {noise_model}; use {want} (or auto)")
    return noise_model, estimator, (int(n) if n is not None else None)


def estimate_source(src, noise_model: str = "auto", estimator: str = "auto",
                    n_coils: int | None = None, index: int | None = None, **kwargs) -> NoiseEstimate:
    """Estimate sigma of an opened source (:func:`ambient_med.io.open_source`) with the noise
    model and estimator that :func:`resolve_noise_model` chooses: k-space corners of item
    ``index`` (default the middle one), PIESNO on a magnitude file's whole array, wavelet MAD
    of one complex or intensity item. ``details`` record ``noise_model`` and ``n_coils``."""
    where = str(getattr(src, "path", ""))
    model, est_name, n = resolve_noise_model(src.kind, noise_model, estimator, n_coils,
                                             getattr(src, "n_coils", None), where)
    i = len(src) // 2 if index is None else index
    if est_name == "kspace-corners":
        est = from_kspace(src.read(i), **kwargs)
    elif est_name in ("piesno", "effective-chi"):
        vol = src.read_volume()
        if not np.all(np.isfinite(vol)):
            from ambient_med.errors import DataError

            raise DataError(where, "has NaN or Inf values")
        if est_name == "piesno":
            est = magnitude_volume_estimate(vol, n, **kwargs)
            est.method += _wider_than_chi(vol, n)
        else:
            est = effective_chi(vol, n, **kwargs)
            n = est.details["n_coils"]       # N_eff replaces the nominal N (kept in details)
    else:
        item = src.read(i)
        est = from_image_wavelet(item, axes=tuple(range(1, item.ndim)), **kwargs)
    est.details.update(noise_model=model, n_coils=n, estimator=est_name)
    return est


def estimate_sigma(data: np.ndarray, kind: str = "complex", **kwargs) -> NoiseEstimate:
    """Dispatch on ``kind``: ``"noise"`` (prescan), ``"kspace"``, ``"complex"`` or
    ``"intensity"`` (wavelet MAD), ``"magnitude"`` (PIESNO; pass ``n_coils``)."""
    estimators = {"noise": from_noise_scan, "kspace": from_kspace, "complex": from_image_wavelet,
                  "intensity": from_image_wavelet, "magnitude": from_magnitude}
    if kind not in estimators:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(estimators)}")
    return estimators[kind](data, **kwargs)
