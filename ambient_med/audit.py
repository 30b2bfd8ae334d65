"""Memorisation audit of a prior against its training images.

Two checks, in the spirit of Carlini et al., "Extracting training data from diffusion models"
(USENIX Security 2023) and Somepalli et al., "Diffusion art or digital forgery?" (CVPR 2023):

1. **Nearest-neighbour similarity of samples.** Draw ``n`` samples of the prior; for each, the
   largest normalised correlation with any training image,
   ``rho(a, b) = <a - mean a, b - mean b> / (||a - mean a|| ||b - mean b||)`` over all real
   channels and pixels (complex images as (re, im)). Reported: the share of samples with
   ``rho > 0.95`` and ``> 0.9`` (near-copies), and quantiles of the nearest ``rho``. Ambient
   training on noisy data is meant to keep these low (Daras et al., "Ambient diffusion posterior
   sampling", 2024, arXiv 2403.08728).
2. **Reconstruction attack.** Noise a training image heavily (``x + sigma_a e``, ``sigma_a`` a
   multiple of the data's ``sigma_data``), denoise with the prior's posterior mean, and measure the
   normalised error ``||D - x|| / ||x||``. A prior that memorised its training set brings training
   images back much better than held-out images of the same kind; the report gives both and
   their ratio (``train / heldout``; near 1: no sign of memorisation).
"""

from __future__ import annotations

import numpy as np
import torch


def _flat(prior, x: torch.Tensor) -> torch.Tensor:
    """Images in data units -> model-space vectors (N, D), centred and unit-norm."""
    v = prior.to_model(x).reshape(x.shape[0], -1).double()
    v = v - v.mean(1, keepdim=True)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


def nearest_correlation(prior, samples: torch.Tensor, train: torch.Tensor,
                        chunk: int = 1024) -> torch.Tensor:
    """For each sample, the largest normalised correlation with any training image."""
    a = _flat(prior, samples)
    best = torch.full((a.shape[0],), -1.0, dtype=torch.float64)
    for i in range(0, train.shape[0], chunk):
        b = _flat(prior, train[i:i + chunk])
        best = torch.maximum(best, (a @ b.T).amax(1))
    return best


def attack_error(prior, images: torch.Tensor, sigma_a: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image ``||D(x + sigma_a e, sigma_a) - x|| / ||x||`` (data units), computed on the
    prior's device (``generator`` must live there), returned on the images' device."""
    x = images.to(prior.device)
    noise = torch.randn(x.shape, dtype=x.dtype, generator=generator, device=x.device)
    if torch.is_complex(x):
        noise = noise * np.sqrt(2)               # std sigma_a per real channel
    d = prior.denoise(x + sigma_a * noise, sigma_a).to(images.device)
    diff = (d - images).reshape(images.shape[0], -1).abs()
    return diff.norm(dim=1) / images.reshape(images.shape[0], -1).abs().norm(dim=1).clamp_min(1e-12)


def audit(prior, train: torch.Tensor, *, heldout: torch.Tensor | None = None, n_samples: int = 64,
          steps: int | None = None, attack_sigma: float = 1.0, n_attack: int = 16,
          seed: int = 0) -> dict:
    """Run both checks; ``train`` and ``heldout`` are images ``(N, C, *spatial)`` in data units
    (complex for complex priors). ``attack_sigma`` is in units of the prior's ``sigma_data``
    (model space), i.e. ``sigma_a = attack_sigma * sigma_data * s`` in data units. The network
    runs on the prior's device; the images and the report stay on the CPU."""
    g = torch.Generator(device=prior.device).manual_seed(seed)
    shape = tuple(train.shape[2:])
    samples = prior.sample(n_samples, steps=steps, shape=shape, generator=g).cpu()
    rho = nearest_correlation(prior, samples, train)
    q = [0.5, 0.9, 0.99, 1.0]
    report = {"n_samples": n_samples, "n_train": int(train.shape[0]),
              "share_rho_gt_0.95": float((rho > 0.95).double().mean()),
              "share_rho_gt_0.9": float((rho > 0.9).double().mean()),
              "nearest_rho_quantiles": dict(zip(map(str, q), torch.quantile(rho, torch.tensor(
                  q, dtype=rho.dtype)).tolist())),
              "nearest_rho_mean": float(rho.mean())}
    sigma_a = attack_sigma * prior.metadata.sigma_data * prior.metadata.scale
    att = {"sigma_data_units": sigma_a,
           "train_error": float(attack_error(prior, train[:n_attack], sigma_a, g).mean())}
    if heldout is not None:
        att["heldout_error"] = float(attack_error(prior, heldout[:n_attack], sigma_a, g).mean())
        att["train_over_heldout"] = att["train_error"] / max(att["heldout_error"], 1e-12)
    report["reconstruction_attack"] = att
    return report


def load_images(path, prior) -> torch.Tensor:
    """Training images from a ``.npy`` file: ``(N, H, W)`` or ``(N, C, H, W)`` in data units,
    complex for complex priors. Other formats: export the images to ``.npy`` first."""
    from pathlib import Path

    from ambient_med.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "does not exist")
    if path.suffix != ".npy":
        raise DataError(path, "audit reads images from .npy files (N, [C,] *spatial)")
    try:
        a = np.load(path)
    except (OSError, ValueError) as e:
        raise DataError(path, f"is not a readable .npy file ({e})") from None
    if a.ndim == prior.metadata.spatial_dims + 1:
        a = a[:, None]
    x = torch.from_numpy(np.ascontiguousarray(a))
    x = x.to(torch.complex64) if torch.is_complex(x) else x.float()
    if not torch.isfinite(torch.view_as_real(x) if torch.is_complex(x) else x).all():
        raise DataError(path, "has NaN or Inf values")
    try:
        prior.to_model(x[:1])
    except ValueError as e:
        raise DataError(path, f"does not match the prior: {e}") from None
    return x
