"""``ambient-med denoise``: one image file in, its posterior mean (and std map) out, same format.

Formats: TIFF (``.tif``/``.tiff``, tifffile), PNG frames (8/16 bit; the mean is written in the
input's integer type, the std map as a float TIFF), NIfTI (``.nii``/``.nii.gz``, the affine kept),
NumPy ``.npy``, HDF5 (``.h5``/``.hdf5``: the dataset ``image``, or the only dataset). Layout of
the array, for a prior with ``d`` spatial dims and ``C`` channels: ``(*spatial)``,
``(C, *spatial)`` (``C > 1``), ``(N, *spatial)`` (``C = 1``: a stack of N images) or
``(N, C, *spatial)``; the output has the input's shape.

Noise (docs/design.md section 6). ``sigma``: ``"auto"`` fits the prior's noise model on the input
(Poisson-Gaussian ``a, b``; PIESNO ``sigma`` for magnitudes; wavelet MAD for Gaussian priors);
a number is the noise std in data units (Gaussian priors; a magnitude model's ``sigma``). The
input is stabilised ``z = f(y)`` (unit-variance noise), denoised in ``z`` and mapped back: the
posterior mean by ``invert_mean`` (unbiased), each posterior sample by ``invert_sample``. A prior
of rotation-invariant images (microscopy) averages the mean over quarter turns, one top-up draw
per turn (:mod:`ambient_med.diffusion.rotations`).

The std map (``OUT_std``): by default from Tweedie's second moment at the input's noise level
(``uncertainty="tweedie"``, :mod:`ambient_med.diffusion.tweedie`; mapped back through the slope of
``invert_sample`` for stabilised data); with ``uncertainty="samples"`` the per-pixel std of
``samples >= 2`` inverted posterior samples; ``"none"`` writes no std map.

Images larger than the training patch are processed in overlapping tiles of ``tile`` pixels
(default: the training patch) blended by :func:`ambient_med.diffusion.tiling.tiled_apply` (overlap a
quarter of the tile). Posterior samples are drawn per tile and blended, so they are samples of
each tile's posterior, not one joint sample of the whole image (the std map is per pixel). The
Tweedie std map is one estimate over the whole image, with its probes drawn image-wide and the
Jacobian taken through the tiled denoiser, so it has no seams at tile borders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError, DataError, NoiseEstimateError
from ..io.image_files import SUFFIXES, read_image, suffix, write_image
from ..noise import TOPUP_DRAWS


def std_path(out: Path) -> Path:
    """``OUT_std.EXT``; a PNG's std map is a float TIFF (8- or 16-bit steps would round it away)."""
    suf = suffix(out)
    return out.with_name(out.name[: -len(suf)] + "_std" + (".tif" if suf == ".png" else suf))


def sample_path(out: Path, k: int) -> Path:
    """``OUT_sample{k}.EXT`` (k from 1), the input's format."""
    suf = suffix(out)
    return out.with_name(f"{out.name[: -len(suf)]}_sample{k}{suf}")


def to_batch(path: Path, x: np.ndarray, d: int, c: int) -> torch.Tensor:
    """Array -> ``(N, C, *spatial)`` float32 (module doc), or a one-line DataError."""
    if x.dtype.kind not in "fiu":
        raise DataError(path, f"has dtype {x.dtype}; expected real numbers")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise DataError(path, "has NaN or Inf values")
    if x.ndim == d:
        x = x[None, None]
    elif x.ndim == d + 1:
        x = x[:, None] if c == 1 else x[None]
    elif x.ndim != d + 2:
        raise DataError(path, f"has shape {x.shape}; the prior is {d}D with {c} channel(s): expected "
                              f"(*spatial), (N, *spatial) or (N, C, *spatial)")
    if x.shape[1] != c:
        raise DataError(path, f"has {x.shape[1]} channel(s) (shape {x.shape}) but the prior was trained on {c}")
    return torch.from_numpy(np.ascontiguousarray(x))


def denoise_file(prior_file, input: Path, out: Path, *, sigma: str | float = "auto", samples: int = 0,
                 uncertainty: str | None = None, tile: int | None = None, device: str = "auto",
                 overwrite: bool = False, progress: Callable[[int], None] | None = None,
                 total: Callable[[int], None] | None = None, seed: int = 0,
                 log: Callable[[str], None] | None = None, save_samples: bool = False) -> list[Path]:
    """Denoise ``input`` with the prior; write ``out`` (posterior mean) and ``OUT_std`` beside it
    (module docstring; ``uncertainty`` None: ``"samples"`` when ``samples >= 2`` were asked for,
    else ``"tweedie"``), and with ``save_samples`` each posterior sample as ``OUT_sample{k}``
    (data units, the input's format and dtype). ``progress(k)`` is told of each finished pass;
    ``total(n)`` first. A folder ``input`` is :func:`denoise_folder`'s."""
    from ..diffusion.rotations import ensemble_mean
    from ..diffusion.sampling import denoise_posterior
    from ..diffusion.tiling import tiled_apply, tiled_denoiser
    from ..diffusion.tweedie import posterior_variance
    from ..prior import AmbientPrior, inverse_slope
    from ..utils import resolve_device

    input, out = Path(input), Path(out)
    if input.is_dir():
        return denoise_folder(prior_file, input, out, sigma=sigma, samples=samples, uncertainty=uncertainty,
                              tile=tile, device=device, overwrite=overwrite, progress=progress, total=total,
                              seed=seed, log=log, save_samples=save_samples)
    if not input.is_file():
        raise DataError(input, "does not exist")
    if suffix(input) not in SUFFIXES:
        raise DataError(input, f"unsupported format {suffix(input) or '(no suffix)'}; use one of {', '.join(SUFFIXES)}")
    if suffix(out) not in SUFFIXES:
        raise ConfigError(f"--out {out}: unsupported format; use one of {', '.join(SUFFIXES)}")
    if suffix(out) != suffix(input):
        raise ConfigError(f"--out {out}: write the input's format ({suffix(input)})")
    if uncertainty is None:
        uncertainty = "samples" if samples >= 2 else "tweedie"
    if uncertainty not in ("tweedie", "samples", "none"):
        raise ConfigError(f"--uncertainty must be tweedie, samples or none, got {uncertainty!r}")
    if uncertainty == "samples" and samples < 2:
        raise ConfigError("--uncertainty samples needs --samples 2 or more")
    if save_samples and samples < 1:
        raise ConfigError("--save-samples needs --samples 1 or more")
    outs = [out] + ([std_path(out)] if uncertainty != "none" else [])
    outs += [sample_path(out, k + 1) for k in range(samples)] if save_samples else []
    for p in outs:
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p}: exists")
    prior = AmbientPrior.load(prior_file, device=resolve_device(device))
    meta = prior.metadata
    arr, io_meta = read_image(input)
    x = to_batch(input, arr, meta.spatial_dims, meta.channels).to(prior.device)
    try:
        model = prior.input_noise(x, sigma if isinstance(sigma, str) else float(sigma))
        if model is None:   # Gaussian prior: the noise std in data units
            from ..noise import Gaussian

            model = Gaussian.estimate(x.cpu().numpy(), axes=tuple(range(2, x.ndim))) if sigma == "auto" \
                else Gaussian(float(sigma))
            z, s_data = x, float(model.sigma)
            zs = [z]
            inv_mean = inv_sample = _identity
        else:
            # an equalising noise model tops the input up to unit noise: the mean averages
            # TOPUP_DRAWS draws of that noise (benchmarks/results/microscopy_preset.md)
            zs = [model.stabilise_observation(x, seed=k)
                  for k in range(TOPUP_DRAWS if getattr(model, "equalise", False) else 1)]
            z, s_data = zs[0], 1.0
            inv_mean, inv_sample = model.invert_mean, model.invert_sample
    except NoiseEstimateError as e:
        raise NoiseEstimateError(f"{input}: {e}") from None
    except ValueError as e:
        raise ConfigError(f"--sigma: {e}") from None
    if log is not None:
        params = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                           for k, v in model.params.items())
        how = "fitted on the input" if sigma == "auto" else ("the prior's" if sigma == "prior" else "given")
        log(f"{input}: noise model {model.name} ({params}; {how})")
    zm, sm = prior.to_model(z), float(prior.sigma_to_model(s_data))
    patch = tile or max(meta.training.get("image_shape", [0]) or [0]) or max(x.shape[2:])
    overlap = patch // 4
    need_tiles = any(n > patch for n in x.shape[2:])
    if total is not None:
        total(1 + samples + (uncertainty == "tweedie"))

    def run(fn, blend="smooth", inp=zm):
        with torch.no_grad():
            return tiled_apply(fn, inp, patch, overlap, blend=blend) if need_tiles else fn(inp)

    z_hat = prior.to_data(ensemble_mean(lambda t: run(lambda u: prior.denoise_model(u, sm), inp=t),
                                        [prior.to_model(zk) for zk in zs], prior.rotation_invariant),
                          as_complex=False)
    mean = inv_mean(z_hat)
    if progress is not None:
        progress(1)
    g = torch.Generator(device=prior.device).manual_seed(seed)
    std = None
    if uncertainty == "tweedie":
        # one estimate over the whole image through the tiled denoiser (a smooth function of the
        # whole image): per-tile estimates each draw their own probes and left level steps at seams
        den = tiled_denoiser(prior.model, patch, overlap) if need_tiles else prior.model
        with torch.no_grad():
            var = posterior_variance(den, zm, sm, generator=g)
        std = prior.to_data(var.sqrt(), as_complex=False).abs()      # model -> data units: times s
        if inv_sample is not _identity:
            std = inverse_slope(model, z_hat) * std
        if progress is not None:
            progress(1)
    draws = []
    for _ in range(samples):
        # random draws: one patch per pixel (blending independent draws would shrink the std)
        s = run(lambda t: denoise_posterior(prior.model, t, sm, n_samples=1, generator=g)["samples"][0],
                blend="nearest")
        draws.append(inv_sample(prior.to_data(s, as_complex=False)))
        if progress is not None:
            progress(1)
    shape = arr.shape
    written = [write_image(out, mean.cpu().numpy().reshape(shape), io_meta)]
    if uncertainty == "samples":
        std = torch.stack(draws).std(0)
    if std is not None:
        written.append(write_image(std_path(out), std.cpu().numpy().reshape(shape), io_meta, keep_dtype=False))
    if save_samples:
        written += [write_image(sample_path(out, k + 1), d.cpu().numpy().reshape(shape), io_meta)
                    for k, d in enumerate(draws)]
    return written


def denoise_folder(prior_file, folder: Path, out: Path, **options) -> list[Path]:
    """Every image file of ``folder`` (sorted; the formats of :data:`SUFFIXES`), denoised into the
    folder ``out`` under the same names, each with its own noise fit when ``sigma="auto"``. Stops
    before writing anything if an output exists (without ``overwrite``) or ``out`` is a file."""
    files = sorted(f for f in Path(folder).iterdir() if f.is_file() and suffix(f) in SUFFIXES)
    if not files:
        raise DataError(folder, f"holds no image files ({', '.join(SUFFIXES)})")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: the input is a folder, so --out must be a folder (it is a file)")
    if out.resolve() == Path(folder).resolve():
        raise ConfigError(f"--out {out}: choose a folder other than the input's (nothing is overwritten)")
    if not options.get("overwrite"):
        for f in files:
            if (out / f.name).exists():
                raise FileExistsError(f"{out / f.name}: exists")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for f in files:
        written += denoise_file(prior_file, f, out / f.name, **options)
    return written


def _identity(t):
    return t
