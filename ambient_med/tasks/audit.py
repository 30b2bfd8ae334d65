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

Both checks run where the prior lives: in model space (data divided by the scale ``s``; complex
images as (re, im) channels). For priors with a noise model (Poisson-Gaussian microscopy,
Rician or noncentral-chi magnitudes) the images are first variance-stabilised with the noise
model the prior recorded (``z = f(y)``, unit-variance Gaussian noise), so correlations are of
stabilised images and the attack adds Gaussian noise in stabilised units; the report says so in
``space``. Their numbers compare training with held-out images of the same prior; they are not
on the scale of a Gaussian prior's. Images are 2D or 3D, as the prior.
"""

from __future__ import annotations

import numpy as np
import torch

GAUSSIAN_SPACE = "model space: data / scale (complex as re, im channels)"
STABILISED_SPACE = ("variance-stabilised ({name} VST of the prior's recorded noise model), / scale: "
                    "correlations of stabilised images, attack noise Gaussian in stabilised units; "
                    "compare train with held-out, not with a Gaussian prior's numbers")


def audit_space(prior, x: torch.Tensor) -> torch.Tensor:
    """Images in data units -> the space the prior models: stabilised with its recorded noise
    model (if any), then model space (module doc)."""
    model = prior.noise_model
    if model is not None and model.name != "gaussian":
        x = model.stabilise(x.double()).float()
    return prior.to_model(x)


def _flat(v: torch.Tensor) -> torch.Tensor:
    """Model-space images -> vectors (N, D), centred and unit-norm."""
    v = v.reshape(v.shape[0], -1).double()
    v = v - v.mean(1, keepdim=True)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


def nearest_correlation(samples: torch.Tensor, train: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """For each sample, the largest normalised correlation with any training image (both in the
    same space, ``(N, C, *spatial)``)."""
    a = _flat(samples)
    best = torch.full((a.shape[0],), -1.0, dtype=torch.float64)
    for i in range(0, train.shape[0], chunk):
        best = torch.maximum(best, (a @ _flat(train[i:i + chunk]).T).amax(1))
    return best


def attack_error(prior, images: torch.Tensor, sigma_a: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image ``||D(x + sigma_a e, sigma_a) - x|| / ||x||`` for model-space images ``x``
    (``sigma_a`` model space), computed on the prior's device (``generator`` must live there),
    returned on the images' device."""
    x = images.to(prior.device)
    noise = torch.randn(x.shape, dtype=x.dtype, generator=generator, device=x.device)
    d = prior.denoise_model(x + sigma_a * noise, sigma_a).to(images.device)
    diff = (d - images).reshape(images.shape[0], -1)
    return diff.norm(dim=1) / images.reshape(images.shape[0], -1).norm(dim=1).clamp_min(1e-12)


def audit(prior, train: torch.Tensor, *, heldout: torch.Tensor | None = None, n_samples: int = 64,
          steps: int | None = None, attack_sigma: float = 1.0, n_attack: int = 16,
          seed: int = 0) -> dict:
    """Run both checks; ``train`` and ``heldout`` are images ``(N, C, *spatial)`` in data units
    (complex for complex priors). ``attack_sigma`` is in units of the prior's ``sigma_data``
    (model space): ``sigma_a = attack_sigma * sigma_data``, reported in model space and, for
    Gaussian priors, in data units (times ``s``). The network runs on the prior's device; the
    images and the report stay on the CPU."""
    g = torch.Generator(device=prior.device).manual_seed(seed)
    train_m = audit_space(prior, train)
    shape = tuple(train.shape[2:])
    samples = prior.sample(n_samples, steps=steps, shape=shape, generator=g, space="model").cpu()
    rho = nearest_correlation(samples, train_m)
    q = [0.5, 0.9, 0.99, 1.0]
    nm = prior.noise_model
    stabilised = nm is not None and nm.name != "gaussian"
    report = {"space": STABILISED_SPACE.format(name=nm.name) if stabilised else GAUSSIAN_SPACE,
              "noise_model": nm.name if stabilised else "gaussian",
              "n_samples": n_samples, "n_train": int(train.shape[0]),
              "share_rho_gt_0.95": float((rho > 0.95).double().mean()),
              "share_rho_gt_0.9": float((rho > 0.9).double().mean()),
              "nearest_rho_quantiles": dict(zip(map(str, q), torch.quantile(rho, torch.tensor(
                  q, dtype=rho.dtype)).tolist())),
              "nearest_rho_mean": float(rho.mean())}
    sigma_a = attack_sigma * prior.metadata.sigma_data
    att = {"sigma_model": sigma_a,
           "sigma_data_units": None if stabilised else sigma_a * prior.metadata.scale,
           "train_error": float(attack_error(prior, train_m[:n_attack], sigma_a, g).mean())}
    if heldout is not None:
        att["heldout_error"] = float(attack_error(prior, audit_space(prior, heldout)[:n_attack], sigma_a, g).mean())
        att["train_over_heldout"] = att["train_error"] / max(att["heldout_error"], 1e-12)
    report["reconstruction_attack"] = att
    return report


def load_images(path, prior) -> torch.Tensor:
    """Images in data units ``(N, C, *spatial)`` (complex for complex priors) from ``.npy``
    ``(N, [C,] *spatial)``, or from what ``train`` reads for image data: TIFF stacks, folders of
    frames, NIfTI volumes (their 2D or 3D items, as the prior's ``spatial_dims``). k-space files
    hold no images: export complex images to ``.npy``."""
    from pathlib import Path

    from ambient_med.errors import DataError

    path = Path(path)
    if not path.exists():
        raise DataError(path, "does not exist")
    if path.suffix == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise DataError(path, f"is not a readable .npy file ({e or 'no data'})") from None
        if a.ndim == prior.metadata.spatial_dims + 1:
            a = a[:, None]
    else:
        a = _read_items(path, prior.metadata.spatial_dims)
    if a.dtype.kind not in "fiuc":
        raise DataError(path, f"has dtype {a.dtype}; expected real or complex numbers")
    x = torch.from_numpy(np.ascontiguousarray(a))
    x = x.to(torch.complex64) if torch.is_complex(x) else x.float()
    if not torch.isfinite(torch.view_as_real(x) if torch.is_complex(x) else x).all():
        raise DataError(path, "has NaN or Inf values")
    try:
        prior.to_model(x[:1])
    except ValueError as e:
        raise DataError(path, f"does not match the prior: {e}") from None
    flat = x.reshape(x.shape[0], -1)
    constant = (flat == flat[:, :1]).all(1)
    if bool(constant.any()):
        raise DataError(path, f"image {int(constant.nonzero()[0, 0])} is constant: the audit compares "
                              "image structure, and a constant image has none")
    return x


def _read_items(path, spatial_dims: int) -> np.ndarray:
    """Every item of an image file or frame folder, stacked ``(N, C, *spatial)``."""
    from ambient_med.errors import DataError
    from ambient_med.io.discover import open_source

    src = open_source(path, spatial_dims)
    if src.kind == "kspace":
        raise DataError(path, "holds k-space, not images: the audit compares images; save the complex "
                              "coil-combined images as .npy (N, H, W)")
    items = [src.read(i) for i in range(len(src))]
    if len({x.shape for x in items}) > 1:
        raise DataError(path, f"items differ in shape ({sorted({x.shape for x in items})[:3]}...); "
                              "the audit needs images of one size")
    return np.stack(items)
