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
# # Microscopy quick start: a clean prior from noisy frames alone
#
# This notebook trains an `ambient-med` diffusion prior on **noisy** fluorescence frames only
# (no clean reference anywhere), then denoises a held-out noisy frame and shows the posterior
# mean, two posterior samples and the per-pixel posterior std (the uncertainty map).
#
# * By default it makes a small synthetic dataset: smooth cells under Poisson-Gaussian noise
#   `y = a Poisson(x / a) + N(0, b)`, a stack of noisy frames written as one TIFF. The clean
#   images are known, so the notebook reports PSNRs.
# * Set `DATA` below to a folder of real frames (PNG/TIFF) to use your own data instead, e.g.
#   the FMD confocal frames `../shared/data/microscopy/fmd_confocal_bpae_b/raw/1`; its
#   `gt/1/avg50.png` (the mean of 50 frames) is then used for PSNRs if it exists.
#
# Settings come from environment variables so that the same file runs as a test:
# `AMBIENT_MED_STEPS` (training steps, default 2000), `AMBIENT_MED_OUT` (output folder, default
# `ambient-med-microscopy` in the current directory), `AMBIENT_MED_OVERWRITE=1` (replace an
# existing output folder; without it an existing folder is refused, as `ambient-med train` does)
# and `AMBIENT_MED_TINY=1` (tiny images and network: a smoke test, not a useful prior).
#
# On a GPU the notebook trains the packaged `microscopy-2d` network (2000 steps: minutes); on a
# CPU a lighter network (see step 2), which still takes a while (2000 steps: 6 min on a 2-core
# CPU, posterior mean 40.4 dB from 27.0 dB; measured 2026-12-05): `AMBIENT_MED_STEPS=300` is a
# quick first look.

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

DATA = None   # None: synthetic cells; or a folder of real frames (PNG/TIFF), see above
STEPS = int(os.environ.get("AMBIENT_MED_STEPS", "2000"))
OUT = Path(os.environ.get("AMBIENT_MED_OUT", "ambient-med-microscopy"))
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
# ## 1. Data: noisy frames only
#
# Synthetic: `N_FRAMES` different clean images of cells, each observed once under
# Poisson-Gaussian noise with gain `a` and read-noise variance `b`; plus one more noisy frame,
# held out of training, to denoise. Real data: every frame of `DATA` but the last one trains, the
# last one is denoised.

# %%
A_TRUE, B_TRUE = 2.0, 4.0                     # gain (data units per photon), read-noise variance
SIZE = 32 if TINY else 128                    # frame size (pixels)
N_FRAMES = 6 if TINY else 64
clean_test = None

if DATA is None:
    rng = np.random.default_rng(SEED)
    cells = dict(n_cells=4 if TINY else 10, cell_size=4.0 if TINY else 10.0, background=10.0, peak=200.0)
    clean = np.stack([synthetic_cells((SIZE, SIZE), rng=rng, **cells) for _ in range(N_FRAMES + 1)])
    noisy = poisson_gaussian_noise(clean, A_TRUE, B_TRUE, rng=rng).astype(np.float32)
    train_files = [OUT / "noisy_stack.tif"]
    tifffile.imwrite(train_files[0], noisy[:-1], photometric="minisblack")   # what training sees
    test_noisy, clean_test = noisy[-1], clean[-1].astype(np.float32)
    print(f"synthetic: {N_FRAMES} noisy {SIZE}x{SIZE} frames -> {train_files[0]} "
          f"(true a = {A_TRUE}, b = {B_TRUE})")
else:
    from PIL import Image

    frames = sorted(p for p in Path(DATA).iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff"))
    if len(frames) < 2:
        raise ValueError(f"{DATA}: need at least 2 frames (PNG/TIFF), found {len(frames)}")
    train_files, test_file = frames[:-1], frames[-1]
    test_noisy = np.asarray(Image.open(test_file), dtype=np.float32)
    gt = Path(DATA).parent.parent / "gt" / Path(DATA).name / "avg50.png"   # the FMD layout
    if gt.is_file():
        clean_test = np.asarray(Image.open(gt), dtype=np.float32)
    c = 64 if TINY else 256                   # denoise a centre crop (keeps CPU inference short)
    y0, x0 = max(0, (test_noisy.shape[0] - c) // 2), max(0, (test_noisy.shape[1] - c) // 2)
    test_noisy = test_noisy[y0:y0 + c, x0:x0 + c]
    clean_test = None if clean_test is None else clean_test[y0:y0 + c, x0:x0 + c]
    print(f"real data: {len(train_files)} training frames from {DATA}, held out {test_file.name}")

# %% [markdown]
# ## 2. Train a prior on the noisy frames, with the noise model fitted from the data
#
# `sigma_n="auto"` (`--sigma-n auto` on the command line) fits the Poisson-Gaussian model
# `(a, b)` on the data, trains in the variance-stabilised space (generalised Anscombe transform,
# unit-variance Gaussian noise) and records the model in the prior file. We start from the packaged
# `microscopy-2d` protocol; without a GPU we shrink its network (no attention, 16/32/32 features,
# 32x32 patches, batch 8), and in tiny mode further.

# %%
protocol = yaml.safe_load(resolve_protocol_path("microscopy-2d").read_text())
protocol["name"] = "microscopy-2d-notebook"
protocol["train"].update(batch_size=16, log_every=max(STEPS // 10, 1), checkpoint_every=max(STEPS // 2, 1))
if DEVICE == "cpu" and not TINY:   # the packaged network is sized for a GPU; a lighter one for CPUs
    protocol["data"].update(patch_size=[32, 32])
    protocol["network"].update(features=[16, 32, 32], attention_levels=[False, False, False])
    protocol["train"].update(batch_size=8, lr=0.001, lr_warmup=100)
if TINY:
    protocol["data"].update(patch_size=[SIZE, SIZE], num_workers=0)
    protocol["network"].update(features=[8, 16], attention_levels=[False, False], norm_num_groups=4,
                               num_head_channels=8)
    protocol["train"].update(batch_size=2, num_workers=0, lr_warmup=1, mixed_precision=False)
protocol_file = OUT / "protocol.yaml"
protocol_file.write_text(yaml.safe_dump(protocol, sort_keys=False))

t0 = time.perf_counter()
result = run_training([str(p) for p in train_files], OUT / "run", protocol=protocol_file, sigma_n="auto",
                      steps=STEPS, device=DEVICE, overwrite=OVERWRITE, previews=0, handle_signals=False,
                      log=print, callback=lambda step, row: print(f"step {step}: loss {row.get('loss', float('nan')):.4f}, {row['steps_per_sec']:.2f} steps/s"))
train_seconds = time.perf_counter() - t0
fitted = result.info.noise
print(f"trained {result.step} steps in {train_seconds:.0f} s; prior: {result.prior_path}")
print("fitted noise model:", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in fitted.items()})
if DATA is None:
    print(f"(true a = {A_TRUE}, b = {B_TRUE})")

# %% [markdown]
# ## 3. Denoise the held-out frame: posterior mean, samples and uncertainty
#
# `posterior` works in the input's data units. `sigma_y="prior"` uses the noise model fitted on
# the training frames (same camera, same settings); `sigma_y="auto"` would fit `(a, b)` on the
# input itself (it needs a frame of at least about 64x64 pixels). It samples in the stabilised
# space and maps every sample back; `mean` uses the unbiased inverse of the transform, `std` is
# the per-pixel std of the back-mapped samples.

# %%
prior = AmbientPrior.load(result.prior_path, device=DEVICE)
y = torch.as_tensor(test_noisy, dtype=torch.float32)[None, None].to(prior.device)
n_samples = 2 if TINY else 8
post = prior.posterior(y, sigma_y="prior", n_samples=n_samples, steps=4 if TINY else None,
                       generator=torch.Generator(device=prior.device).manual_seed(SEED))
mean = post["mean"][0, 0].cpu().numpy()
samples = post["samples"][:, 0, 0].cpu().numpy()
std = post["std"][0, 0].cpu().numpy()
np.savez(OUT / "denoised.npz", noisy=test_noisy, mean=mean, samples=samples, std=std,
         **({} if clean_test is None else {"clean": clean_test}))
tifffile.imwrite(OUT / "denoised_mean.tif", mean.astype(np.float32))
tifffile.imwrite(OUT / "denoised_std.tif", std.astype(np.float32))


def psnr(x, ref):
    """PSNR in dB with the reference's range as the peak."""
    return float(10 * np.log10((ref.max() - ref.min()) ** 2 / np.mean((x - ref) ** 2)))


scores = {}
if clean_test is not None:
    scores = {"noisy": psnr(test_noisy, clean_test), "posterior mean": psnr(mean, clean_test),
              "one posterior sample": psnr(samples[0], clean_test)}
    print("PSNR against the clean image (dB):", {k: round(v, 2) for k, v in scores.items()})
print(f"mean posterior std: {std.mean():.3f} data units (noisy frame mean {test_noisy.mean():.1f})")

# %% [markdown]
# ## 4. Figure
#
# Noisy input, posterior mean, two posterior samples (each a plausible clean image; where they
# differ, the data cannot tell), the posterior std map, and the clean image when it is known.
# Images share one grey scale; the std map has its own.

# %%
panels = [("noisy input", test_noisy), ("posterior mean", mean), ("posterior sample 1", samples[0]),
          ("posterior sample 2", samples[1])]
if clean_test is not None:
    panels.append(("clean (reference)", clean_test))
lo, hi = np.percentile(test_noisy if clean_test is None else clean_test, [0.5, 99.5])
fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3 * (len(panels) + 1), 3.4))
for ax, (title, img) in zip(axes, panels):
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
    if title in ("noisy input", "posterior mean") and scores:
        title += f"\n{scores['noisy' if title == 'noisy input' else 'posterior mean']:.1f} dB"
    ax.set_title(title, fontsize=9)
im = axes[-1].imshow(std, cmap="magma")
axes[-1].set_title(f"posterior std ({n_samples} samples)", fontsize=9)
fig.colorbar(im, ax=axes[-1], fraction=0.046, pad=0.04)
for ax in axes:
    ax.set_axis_off()
fig.suptitle(f"ambient-med, {result.step} training steps on noisy frames only; fitted a = "
             f"{fitted['a']:.2f}, b = {fitted['b']:.2f}", fontsize=10)
fig.tight_layout()
figure_path = OUT / "microscopy_quickstart.png"
fig.savefig(figure_path, dpi=110)
print(f"figure: {figure_path}; total {time.perf_counter() - t_start:.0f} s")
