"""Shared by the exactness benchmarks (``exactness.py`` on Gaussian fields, ``exactness_mixture.py``
on a Gaussian mixture field): the objectives compared, the noise levels of the excess error, the
network, the interleaved step timing and the loss defaults recorded with the results."""

from __future__ import annotations

import statistics
import time

import torch

from ambient_med.diffusion.losses import LossConfig
from ambient_med.diffusion.networks import NetworkConfig
from ambient_med.diffusion.objective import objective_loss
from ambient_med.training.loop import TensorDataset

RATIOS = (0.125, 0.25, 0.5, 1.0, 2.0)          # excess error at these multiples of sigma_n
OBJECTIVES = ("clean", "naive", "ambient", "ambient+consistency")


def network_config(size: int) -> NetworkConfig:
    """The exactness benchmarks' U-Net on ``size`` x ``size`` fields."""
    # Stationary fields need no attention; a small UNet keeps the GPU step launch-bound-cheap.
    return NetworkConfig(spatial_dims=2, channels=1, sigma_data=1.0, features=(32, 64, 64),
                         attention_levels=(False, False, False), num_res_blocks=1,
                         norm_num_groups=8, num_head_channels=16)


def time_steps(models: dict, cfgs: dict, data: TensorDataset, batch: int, device, rounds=5, k=5):
    """Median wall time of one optimisation step per objective, interleaved to share any
    background load fairly."""
    times = {name: [] for name in models}
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-5) for n, m in models.items()}
    g = torch.Generator(device=device).manual_seed(0)
    y = data.images[:batch].to(device)
    clean = data.clean[:batch].to(device)
    sn = data.sigma_n[:batch].to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for r in range(rounds + 1):
        for name, m in models.items():
            sync()
            t = time.perf_counter()
            for _ in range(k):
                out = objective_loss(m, y, sn, cfgs[name], progress=1.0, clean=clean, generator=g)
                opts[name].zero_grad()
                out.loss.backward()
                opts[name].step()
            sync()
            if r > 0:  # round 0 is warm-up
                times[name].append((time.perf_counter() - t) / k)
    med = {n: statistics.median(v) for n, v in times.items()}
    return {n: med[n] / med["clean"] for n in med}, med


def loss_defaults() -> dict:
    """``LossConfig()``'s settings, JSON-ready."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(LossConfig()).items()}
