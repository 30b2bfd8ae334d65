"""What ``ambient-med sample`` and ``ambient-med info`` do with a prior file.

Samples are written in *data units* (model space times the prior's scale) so that they can be
compared with the user's data; complex priors give complex ``.npy`` arrays ``(N, C, *spatial)``.
No file is replaced unless ``overwrite``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..diffusion.networks import count_parameters
from ..errors import ConfigError
from ..prior import AmbientPrior, prior_file


def describe_prior(path: str | Path) -> dict:
    path = prior_file(path)
    prior = AmbientPrior.load(path, device="cpu")
    m = prior.metadata
    net = m.network
    return {"file": str(path), "format_version": m.format_version, "data_kind": m.data_kind,
            "spatial_dims": m.spatial_dims, "channels": m.channels,
            "image_shape": m.training.get("image_shape"),
            "sigma_n_data": m.sigma_n_data, "sigma_n_model": m.sigma_n_model, "scale": m.scale,
            "sigma_data": m.sigma_data, "noise_model": m.noise_model,
            "noise_method": m.training.get("noise_method"),
            "objective": m.training.get("objective"), "protocol": m.training.get("protocol"),
            "steps": m.training.get("steps"), "features": net.get("features"),
            "parameters": count_parameters(prior.model)}


def output_paths(out: str | Path) -> list[Path]:
    out = Path(out)
    if out.suffix in (".png", ".npy"):
        return [out]
    if out.suffix:
        raise ConfigError(f"--out {out}: use a .png or .npy name, or a name without suffix for both")
    return [out.with_suffix(".png"), out.with_suffix(".npy")]


def write_samples(prior_file: str | Path, out: str | Path, *, n: int = 8, steps: int | None = None,
                  mode: str = "auto", stop: float | None = None, sampler: str = "heun", seed: int = 0,
                  device: str = "auto", overwrite: bool = False) -> list[Path]:
    from ..io.images import save_grid, to_display
    from ..utils import resolve_device

    if mode not in ("auto", "full", "truncated"):
        raise ConfigError(f"--mode must be 'auto', 'full' or 'truncated', got {mode!r}")
    if stop is not None and (not 0 < stop <= 1 or mode == "full"):
        raise ConfigError(f"--stop must be in (0, 1] and goes with --mode auto or truncated, got {stop}")
    if sampler not in ("heun", "ancestral"):
        raise ConfigError(f"--sampler must be 'heun' or 'ancestral', got {sampler!r}")
    paths = output_paths(out)
    for p in paths:
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists")
    dev = resolve_device(device)
    prior = AmbientPrior.load(prior_file, device=dev)
    if mode == "truncated" and prior.sigma_n <= 0:
        raise ConfigError("--mode truncated needs a prior trained on noisy data (sigma_n > 0)")
    g = torch.Generator(device=dev).manual_seed(seed)
    x = prior.sample(n, steps=steps, mode=mode, stop=stop, sampler=sampler, generator=g,
                     space="model")
    written = []
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".png":
            written.append(save_grid([(f"{mode} samples",
                                       to_display(x, prior.metadata.data_kind == "complex"))], p))
        else:
            a = prior.to_data(x).cpu().numpy()   # data units; complex priors: complex arrays
            tmp = p.with_name(p.stem + ".tmp.npy")
            np.save(tmp, a)
            tmp.replace(p)
            written.append(p)
    return written
