"""What ``ambient-med recon`` does: reconstruct every slice of an undersampled multi-coil k-space
file with a prior (posterior mean and std map) and write them (docs/design.md section 5).

Slices are reconstructed one at a time, so memory stays that of one slice; the sampler draws
``samples`` posterior samples per slice (:meth:`ambient_med.prior.AmbientPrior.reconstruct`) and
the std map is that of the complex value, ``sqrt(Var[Re] + Var[Im])``, in data units.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import AmbientMedError, ConfigError, DataError
from ..io.kspace import output_paths, read_undersampled, write_reconstruction
from ..prior import AmbientPrior, prior_file
from ..recon.prior_glue import broadcast_mask
from ..recon.samplers import RECON_STEPS
from ..utils import parse_sigma, resolve_device
from .progress import Bar

METHODS = ("dc", "dps")


def reconstruct_file(prior: str | Path, data: str | Path, out: str | Path, *, mask: str | Path | None = None,
                     method: str = "dc", samples: int = 8, steps: int | None = None,
                     sigma: str | float = "auto", seed: int = 0, tile: int | None = None, whiten: bool = False,
                     device: str = "auto", overwrite: bool = False, progress: bool = False,
                     log: Callable[[str], None] = lambda m: None) -> list[Path]:
    """Reconstruct ``data`` (fastMRI-style .h5 or BART .cfl k-space) with the prior file (or
    run folder) ``prior``; write ``out`` (.h5, .npy or .nii.gz, see
    :func:`ambient_med.io.kspace.write_reconstruction`) and return the paths written.

    ``sigma``: ``"auto"`` (from the k-space corners) or the k-space noise std per real channel
    in data units. No output file is replaced unless ``overwrite``."""
    if method not in METHODS:
        raise ConfigError(f"--method must be 'dc' or 'dps', got {method!r}")
    sig = parse_sigma(sigma, "--sigma")
    for p in filter(None, output_paths(out)):
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists")
    dev = resolve_device(device)
    pr = AmbientPrior.load(prior, device=dev)
    m = pr.metadata
    if not pr.is_complex or m.channels != 2 or m.spatial_dims != 2:
        raise DataError(prior, f"prior of {m.data_kind} {m.spatial_dims}-D images with {m.channels} "
                               "channel(s) does not match k-space data (needs single complex 2-D images: "
                               "2 real channels)")
    k, msk, where = read_undersampled(data, mask)
    try:
        broadcast_mask(msk, k.shape)
    except DataError as e:
        raise DataError(data if mask is None else mask, e.problem) from None
    acquired = float(np.mean(np.broadcast_to(msk, k.shape[-msk.ndim:]) != 0))
    log(f"{data}: {k.shape[0]} slice(s), {k.shape[1]} coil(s), {k.shape[2]}x{k.shape[3]}; "
        f"mask from {where}, {100 * acquired:.0f}% acquired")
    n_steps = steps or RECON_STEPS
    means, stds, sigmas = [], [], []
    g = torch.Generator(device=dev).manual_seed(seed)
    with Bar("recon", progress) as bar:
        bar.total(k.shape[0] * n_steps)
        for i in range(k.shape[0]):
            try:
                r = pr.reconstruct(k[i], msk if msk.ndim < 4 else msk[min(i, msk.shape[0] - 1)],
                                   sigma=sig, method=method, n_samples=samples, steps=n_steps,
                                   generator=g, callback=lambda *a: bar.advance(), tile=tile, whiten=whiten)
            except AmbientMedError as e:
                raise DataError(data, f"slice {i}: {getattr(e, 'problem', e)}") from None
            means.append(r["mean"][0].cpu().numpy())
            std = r["std"][0].cpu()
            stds.append(torch.sqrt(std.real ** 2 + std.imag ** 2).numpy())
            sigmas.append(r["sigma"])
    return write_reconstruction(out, np.stack(means), np.stack(stds), overwrite=overwrite,
                                attrs={"method": method, "samples": samples, "steps": n_steps,
                                       "sigma_k": float(np.mean(sigmas)), "prior": str(prior_file(prior))})
