# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Microscopy in 3D: a clean prior of Z stacks from noisy stacks alone
#
# The 3D counterpart of `microscopy_quickstart.py`: noisy fluorescence **volumes** (Z stacks)
# train a 3D prior with the `microscopy-3d` protocol, and a held-out noisy volume is denoised
# with posterior samples and an uncertainty map; the figure shows a few Z slices.
#
# * By default: synthetic 3D cells (`synthetic_cells` with a 3D shape) under Poisson-Gaussian
#   noise, written as one ImageJ TIFF with axes `TZYX` (one volume per time point).
# * Set `DATA` to a TIFF / OME-TIFF with a named Z axis (`ZYX` or `TZYX`) to use real stacks:
#   every volume but the last trains, the last one is denoised.
#
# Environment variables as in the quick start: `AMBIENT_MED_STEPS` (default 2000),
# `AMBIENT_MED_OUT` (default `ambient-med-microscopy-3d`), `AMBIENT_MED_OVERWRITE=1`,
# `AMBIENT_MED_TINY=1` (tiny volumes and network: a smoke test). 3D training is heavy: the
# default settings want a GPU; on a CPU try `AMBIENT_MED_STEPS=200` first.

# %%
import builtins
import os
import time
from pathlib import Path

import matplotlib

if "MPLBACKEND" not in os.environ and not hasattr(builtins, "__IPYTHON__"):
    matplotlib.use("Agg")   # run as a script: no display needed
import matplotlib.pyplot as plt
import numpy as np
import tifffile
import torch
import yaml

from ambient_med import AmbientPrior, resolve_protocol_path, run_training
from ambient_med.synthetic.fluorescence import poisson_gaussian_noise, synthetic_cells

DATA = None   # None: synthetic 3D cells; or a TIFF with axes ZYX / TZYX
STEPS = int(os.environ.get("AMBIENT_MED_STEPS", "2000"))
OUT = Path(os.environ.get("AMBIENT_MED_OUT", "ambient-med-microscopy-3d"))
OVERWRITE = os.environ.get("AMBIENT_MED_OVERWRITE", "0") == "1"
TINY = os.environ.get("AMBIENT_MED_TINY", "0") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SEED = 0

if OUT.exists() and any(OUT.iterdir()) and not OVERWRITE:
    raise FileExistsError(f"{OUT} exists and is not empty; set AMBIENT_MED_OVERWRITE=1 to replace "
                          f"it or AMBIENT_MED_OUT to another folder")
OUT.mkdir(parents=True, exist_ok=True)
t_start = time.perf_counter()

# %% [markdown]
# ## 1. Data: noisy volumes only

# %%
A_TRUE, B_TRUE = 2.0, 4.0                        # gain, read-noise variance
SHAPE = (8, 32, 32) if TINY else (16, 96, 96)    # (Z, Y, X) of each volume
N_VOLUMES = 3 if TINY else 12
clean_test = None

if DATA is None:
    rng = np.random.default_rng(SEED)
    cells = dict(n_cells=3 if TINY else 8, cell_size=3.0 if TINY else 8.0, background=10.0, peak=200.0)
    clean = np.stack([synthetic_cells(SHAPE, rng=rng, **cells) for _ in range(N_VOLUMES + 1)])
    noisy = poisson_gaussian_noise(clean, A_TRUE, B_TRUE, rng=rng).astype(np.float32)
    train_file = OUT / "noisy_volumes.tif"
    tifffile.imwrite(train_file, noisy[:-1], imagej=True, metadata={"axes": "TZYX"})
    test_noisy, clean_test = noisy[-1], clean[-1].astype(np.float32)
    print(f"synthetic: {N_VOLUMES} noisy volumes of {SHAPE} -> {train_file} (true a = {A_TRUE}, b = {B_TRUE})")
else:
    vols = tifffile.imread(DATA).astype(np.float32)
    vols = vols if vols.ndim == 4 else vols[None]
    if len(vols) < 2:
        raise ValueError(f"{DATA}: need at least 2 volumes (axes TZYX) to hold one out")
    train_file = OUT / "training_volumes.tif"
    tifffile.imwrite(train_file, vols[:-1], imagej=True, metadata={"axes": "TZYX"})
    test_noisy = vols[-1]
    print(f"real data: {len(vols) - 1} training volumes of {vols.shape[1:]} from {DATA}")

# %% [markdown]
# ## 2. Train a 3D prior (`microscopy-3d`), the noise model fitted from the data

# %%
protocol = yaml.safe_load(resolve_protocol_path("microscopy-3d").read_text())
protocol["name"] = "microscopy-3d-notebook"
protocol["train"].update(log_every=max(STEPS // 10, 1), checkpoint_every=max(STEPS // 2, 1))
if TINY:
    protocol["data"].update(patch_size=list(SHAPE), num_workers=0)
    protocol["network"].update(features=[8, 16], attention_levels=[False, False], norm_num_groups=4,
                               num_head_channels=8)
    protocol["train"].update(batch_size=2, num_workers=0, lr_warmup=1, mixed_precision=False)
protocol_file = OUT / "protocol.yaml"
protocol_file.write_text(yaml.safe_dump(protocol, sort_keys=False))

t0 = time.perf_counter()
result = run_training([str(train_file)], OUT / "run", protocol=protocol_file, sigma_n="auto", steps=STEPS,
                      device=DEVICE, overwrite=OVERWRITE, previews=0, handle_signals=False, log=print,
                      callback=lambda step, row: print(f"step {step}: loss {row.get('loss', float('nan')):.4f}, {row['steps_per_sec']:.2f} steps/s"))
fitted = result.info.noise
print(f"trained {result.step} steps in {time.perf_counter() - t0:.0f} s; prior: {result.prior_path}")
print("fitted noise model:", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in fitted.items()})

# %% [markdown]
# ## 3. Denoise the held-out volume
#
# The same call as in 2D, on a `(1, 1, Z, Y, X)` tensor, in the input's data units
# (`sigma_y="prior"`: the noise model fitted on the training volumes).

# %%
prior = AmbientPrior.load(result.prior_path, device=DEVICE)
y = torch.as_tensor(test_noisy, dtype=torch.float32)[None, None].to(prior.device)
n_samples = 2 if TINY else 4
post = prior.posterior(y, sigma_y="prior", n_samples=n_samples, steps=4 if TINY else None,
                       generator=torch.Generator(device=prior.device).manual_seed(SEED))
mean = post["mean"][0, 0].cpu().numpy()
samples = post["samples"][:, 0, 0].cpu().numpy()
std = post["std"][0, 0].cpu().numpy()
np.savez(OUT / "denoised.npz", noisy=test_noisy, mean=mean, samples=samples, std=std,
         **({} if clean_test is None else {"clean": clean_test}))
tifffile.imwrite(OUT / "denoised_mean.tif", mean.astype(np.float32), imagej=True, metadata={"axes": "ZYX"})
tifffile.imwrite(OUT / "denoised_std.tif", std.astype(np.float32), imagej=True, metadata={"axes": "ZYX"})


def psnr(x, ref):
    return float(10 * np.log10((ref.max() - ref.min()) ** 2 / np.mean((x - ref) ** 2)))


if clean_test is not None:
    print(f"PSNR of the volume (dB): noisy {psnr(test_noisy, clean_test):.2f}, "
          f"posterior mean {psnr(mean, clean_test):.2f}")
print(f"mean posterior std: {std.mean():.3f} data units")

# %% [markdown]
# ## 4. A few Z slices
#
# Rows: Z slices; columns: noisy, posterior mean, two samples, std, and the clean slice when known.

# %%
zs = np.linspace(0, SHAPE[0] - 1 if DATA is None else test_noisy.shape[0] - 1, 3).round().astype(int)
cols = [("noisy", test_noisy), ("posterior mean", mean), ("sample 1", samples[0]), ("sample 2", samples[1])]
if clean_test is not None:
    cols.append(("clean (reference)", clean_test))
lo, hi = np.percentile(test_noisy if clean_test is None else clean_test, [0.5, 99.5])
fig, axes = plt.subplots(len(zs), len(cols) + 1, figsize=(2.6 * (len(cols) + 1), 2.6 * len(zs)), squeeze=False)
for r, z in enumerate(zs):
    for c, (title, vol) in enumerate(cols):
        axes[r, c].imshow(vol[z], cmap="gray", vmin=lo, vmax=hi)
        axes[r, c].set_title(f"{title}, z = {z}", fontsize=8)
    im = axes[r, -1].imshow(std[z], cmap="magma", vmin=0, vmax=float(std.max()))
    axes[r, -1].set_title(f"posterior std, z = {z}", fontsize=8)
for ax in axes.ravel():
    ax.set_axis_off()
fig.colorbar(im, ax=axes[:, -1].tolist(), fraction=0.046, pad=0.04)
fig.suptitle(f"ambient-med 3D, {result.step} steps on noisy volumes only; fitted a = {fitted['a']:.2f}, "
             f"b = {fitted['b']:.2f}", fontsize=10)
figure_path = OUT / "microscopy_3d.png"
fig.savefig(figure_path, dpi=100)
print(f"figure: {figure_path}; total {time.perf_counter() - t_start:.0f} s")
