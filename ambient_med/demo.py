"""``ambient-med demo``: the whole method on a laptop, with known answers.

1. Write a small multi-coil fastMRI-format dataset of random ellipse phantoms with complex
   Gaussian k-space noise of a known ``sigma`` (``phantoms.py``).
2. Estimate ``sigma_n`` from each file with the package's estimator and compare with the truth.
3. Train a small prior on the noisy files alone (protocol ``demo``), exactly as ``ambient-med
   train`` does.
4. Report: noisy inputs, posterior means (denoised), posterior std (uncertainty), prior samples,
   and PSNRs of noisy and denoised images against the known clean phantoms.

PSNR is computed on magnitude images (as fastMRI does), both sides in model units
(``|clean| / scale``), with the peak of the clean magnitudes as the signal: the coil-combined
complex image carries the estimated maps' phase, which magnitude is blind to.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import ConfigError

TRUE_SIGMA = 0.06
N_FILES, SLICES, SIZE, COILS = 4, 16, 32, 8


def psnr(x: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((x - ref) ** 2))
    return 10 * math.log10(float(ref.max()) ** 2 / mse)


def _table(rows: list[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    lines = [f"| {'quantity':<{w}} | value |", f"|{'-' * (w + 2)}|-------|"]
    lines += [f"| {k:<{w}} | {v} |" for k, v in rows]
    return "\n".join(lines)


def run_demo(out: str | Path = "ambient-med-demo", *, steps: int | None = None, device: str = "auto",
             overwrite: bool = False, log: Callable[[str], None] = print,
             n_files: int = N_FILES, slices: int = SLICES, previews: int = 8,
             posterior_samples: int = 8) -> dict:
    from .images import save_grid, to_display
    from .noise import estimate_noise_file
    from .phantoms import make_phantom_dataset
    from .prior import AmbientPrior
    from .progress import TrainProgress
    from .run import run_training

    # A 0.3M-parameter net on 32x32 images gains nothing from many threads, and OpenMP threads
    # spin against other processes: half the cores (1 on a 2-core machine) ran 3x faster here.
    torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) // 2)))
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
        shutil.rmtree(out)
    t0 = time.perf_counter()
    log(f"1/4 writing {n_files} fastMRI files of {slices} noisy {COILS}-coil phantoms "
        f"({SIZE}x{SIZE}, sigma = {TRUE_SIGMA}) to {out / 'data'}")
    truth = make_phantom_dataset(out / "data", n_files=n_files, slices=slices, size=SIZE,
                                 coils=COILS, sigma=TRUE_SIGMA)

    log("2/4 estimating sigma_n from the k-space corners")
    ests = [estimate_noise_file(f) for f in truth["files"]]
    sigma_files = float(np.sqrt(np.mean([e.sigma**2 for e in ests])))

    log("3/4 training a small prior on the noisy files alone")
    bar = TrainProgress()
    try:
        res = run_training([str(out / "data")], out / "run", protocol="demo", sigma_n="auto",
                           steps=steps, device=device, previews=0, on_start=bar.start,
                           callback=bar.update)
    finally:
        bar.stop()
    if res.interrupted:
        raise KeyboardInterrupt
    t_train = time.perf_counter() - t0

    log("4/4 denoising, posterior uncertainty and samples")
    info = res.info
    prior = AmbientPrior.load(res.prior_path, device=next(res.model.parameters()).device)
    y = torch.stack([res.dataset[i]["image"] for i in range(len(res.dataset))])
    y = y.to(prior.device)
    sn = prior.metadata.sigma_n_model     # the dataset's images are in model space
    with torch.no_grad():
        den = torch.cat([prior.denoise(b, sn, space="model") for b in y.split(32)])
    ref = np.abs(truth["clean"]) / info.scale
    noisy_mag, den_mag = to_display(y, True), to_display(den, True)
    if noisy_mag.shape != ref.shape:
        raise RuntimeError(f"dataset shape {noisy_mag.shape} does not match phantoms {ref.shape}")
    p_noisy = float(np.mean([psnr(a, r) for a, r in zip(noisy_mag, ref)]))
    p_den = float(np.mean([psnr(a, r) for a, r in zip(den_mag, ref)]))

    k = min(previews, y.shape[0])
    g = torch.Generator(device=prior.device).manual_seed(1)
    post = prior.posterior(y[:k], sn, n_samples=posterior_samples, generator=g, space="model")
    samples = prior.sample(k, steps=prior_steps(), generator=g, space="model")
    fig = save_grid([("clean |x|", ref[:k]), ("noisy input", noisy_mag[:k]),
                     ("denoised", den_mag[:k]),
                     ("posterior std", to_display(post["std"], True)),
                     ("prior samples", to_display(samples, True))],
                    out / "report.png", vmax=float(ref.max()),
                    cmaps={"posterior std": "magma"})

    wall = time.perf_counter() - t0
    figures = {
        "true_sigma_n": TRUE_SIGMA,
        "estimated_sigma_n_files": sigma_files,
        "estimated_sigma_n_training_set": float(info.sigma_n_data),
        "sigma_n_relative_error": float(info.sigma_n_data / TRUE_SIGMA - 1),
        "noise_method": info.noise_method,
        "noise_uncertainty": float(info.noise_uncertainty),
        "psnr_noisy_db": p_noisy, "psnr_denoised_db": p_den,
        "images": int(y.shape[0]), "steps": res.step, "parameters": res.parameters,
        "train_seconds": t_train, "wall_seconds": wall,
    }
    table = _table([
        ("true sigma_n (k-space, per real channel)", f"{TRUE_SIGMA:.4f}"),
        ("estimated sigma_n, per file (RMS of 4)", f"{sigma_files:.4f}"),
        ("estimated sigma_n, training set", f"{info.sigma_n_data:.4f} ({info.noise_method}, "
                                            f"+/- {100 * info.noise_uncertainty:.1f}%)"),
        ("PSNR noisy vs clean (magnitude)", f"{p_noisy:.2f} dB"),
        ("PSNR denoised vs clean (magnitude)", f"{p_den:.2f} dB"),
        ("images / steps / parameters", f"{y.shape[0]} / {res.step} / {res.parameters}"),
        ("wall time", f"{wall:.0f} s"),
    ])
    md = out / "report.md"
    md.write_text("# ambient-med demo\n\nA prior trained on noisy multi-coil phantoms only; "
                  "denoised = posterior mean D(y, sigma_n).\n\n" + table +
                  "\n\n![report](report.png)\n")
    (out / "report.json").write_text(json.dumps(figures, indent=2))
    return {"table": table, "markdown": md, "figure": fig, "figures": figures}


def prior_steps() -> int:
    from .config import load_protocol

    return load_protocol("demo").sampler.steps
