"""The settings of the speed benchmark (``gpu.py``): the protocols it times, their networks, loss
and train settings, synthetic data on the device, an untrained knee prior, the recon mask."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ambient_med.diffusion.losses import LossConfig
from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig
from ambient_med.training.config import load_protocol
from ambient_med.training.loop import TensorDataset, TrainConfig

KNEE, VOL = "fastmri-knee-multicoil", "nifti-3d"
OBJECTIVES = ("clean", "ambient", "ambient+consistency")
SIGMA_N, SIGMA_DATA = 0.1, 0.5
KNEE_SET_SLICES = 35_000
# (image size, batch) per protocol: full (GPU) and quick (CPU smoke)
SIZES = {"full": {KNEE: ((320, 320), 16), VOL: ((128, 128, 128), 2)},
         "quick": {KNEE: ((64, 64), 2), VOL: ((32, 32, 32), 2)}}


def network_config(protocol: str, spatial_dims: int, channels: int) -> NetworkConfig:
    """The protocol's network for ``channels``-channel images in ``spatial_dims`` dimensions."""
    net = load_protocol(protocol).network.to_dict()
    net.update(spatial_dims=spatial_dims, channels=channels, sigma_data=SIGMA_DATA)
    return NetworkConfig(**net)


def loss_config(protocol: str, objective: str, variant: str | None = "pair") -> LossConfig:
    """The protocol's loss settings with the consistency term active from the first step.
    ``variant`` pins the below-``sigma_n`` term: ``"pair"`` (the one the bare loop writes out by
    hand, so that package and bare loop run the same maths) or None (the protocol's own)."""
    d = vars(load_protocol(protocol).loss).copy()
    d.update(objective=objective, sigma_data=SIGMA_DATA, consistency_start=0.0)
    if variant is not None:
        d["consistency_variant"] = variant
    return LossConfig(**d)


def train_config(protocol: str, batch: int, steps: int, **options) -> TrainConfig:
    """The protocol's train settings; ``steps`` timed after as many warm-up steps, one log row
    each (a row's ``steps_per_sec`` covers its interval, between two device syncs)."""
    t = load_protocol(protocol).train
    return replace(t, steps=2 * steps, batch_size=batch, log_every=steps, lr_warmup=1,
                   checkpoint_every=10**9, num_workers=0, **options)


def synthetic_set(shape, channels: int, n: int, dev: torch.device, seed: int = 0) -> TensorDataset:
    """Noisy images ``y = x0 + sigma_n e`` and their clean ``x0`` on the device (timing only:
    the content does not change the cost)."""
    g = torch.Generator().manual_seed(seed)
    x0 = SIGMA_DATA * torch.randn((n, channels, *shape), generator=g)
    y = x0 + SIGMA_N * torch.randn(x0.shape, generator=g)
    return TensorDataset(y.to(dev), SIGMA_N, clean=x0.to(dev))


def knee_prior(shape, dev):
    """An untrained prior with the knee protocol's network (timing only), on ``dev``."""
    from ambient_med.prior import AmbientPrior, PriorMetadata

    torch.manual_seed(0)
    cfg = network_config(KNEE, 2, 2)
    meta = PriorMetadata(network=cfg.to_dict(), data_kind="complex", sigma_n_data=SIGMA_N,
                         sigma_n_model=SIGMA_N, training={"image_shape": list(shape)})
    return AmbientPrior(EDMDenoiser(cfg).eval(), meta).to(dev)


def equispaced_mask(ny: int, r: int = 8, centre: float = 0.04) -> np.ndarray:
    """fastMRI-style equispaced 1-D mask: every ``r``-th phase line plus ``centre`` of the lines
    around k = 0 fully sampled (acceleration slightly below ``r``)."""
    m = np.zeros(ny, np.float32)
    m[::r] = 1
    c = max(int(round(centre * ny)), 2)
    m[ny // 2 - c // 2: ny // 2 + (c + 1) // 2] = 1
    return m
