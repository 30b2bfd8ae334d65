"""Magnitude MRI on real data: the non-central chi noise model, trained and used through the CLI path.

The real 8-coil sum-of-squares volume ``test_piesno.nii.gz`` (96 x 96 x 14, dipy's PIESNO test
data) has background noise that is chi with 16 degrees of freedom: its mean is not zero but
``sigma sqrt(2) Gamma(8.5) / Gamma(8)`` (about 3.9 sigma). A prior trained as if the noise were
Gaussian would learn that floor as part of the clean image (the package refuses
``noise_model: gaussian`` for magnitude data for that reason). The ``noncentral-chi`` model
(``--n-coils 8``) trains in the variance-stabilised domain and inverts with the unbiased
inverse, so the denoised background should come down to the noise-free level (0 in air). The
comparison is the same volume under the ``rician`` model (one coil: what a user gets without
``--n-coils``), whose PIESNO sigma is several times too high, and under the ``noncentral-chi``
model with ``--noise-estimator effective-chi``: this volume's air is wider than chi(16) noise
(an effective N of about 5 and a larger sigma, as parallel imaging or correlated coils leave it;
Aja-Fernandez et al. 2011), and the effective fit makes the stabilised air unit-variance with the
mean the model expects.

Both priors are trained with ``run_training`` (what ``ambient-med train`` runs: the NIfTI
reader, PIESNO ``--sigma-n auto``, 2D slices, random patches) with the same network and step
budget, and the volume is denoised with ``denoise_file`` (what ``ambient-med denoise`` runs).

Background: voxels whose 5x5-smoothed magnitude is below 1.5 times the chi noise mean, eroded
by 2 voxels (air, no signal), inside the acquired field of view (the file's rotated square is
framed by exact zeros, which are excluded). Foreground: voxels whose smoothed magnitude is above 10 times the
noise mean (tissue at high SNR, where both noise models agree).

Run:  PYTHONPATH=. python benchmarks/magnitude_mri.py [--quick]
Prints a table and writes benchmarks/results/magnitude_mri.{json,md,png}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from common.figures import pyplot, save
from common.magnitude_volume import DIPY_PIESNO, N_COILS, data_file, regions
from common.overrides import loss_overrides
from common.results import RESULTS, write_json

from ambient_med.noise import from_dict
from ambient_med.noise.piesno import chi_noise_mean, magnitude_volume_estimate


def protocol(folder: Path, name: str, noise_model: str, estimator: str, steps: int, batch: int,
             loss: dict, seed: int = 0) -> Path:
    p = {
        "name": name,
        "description": f"magnitude benchmark, {noise_model} noise model",
        "data": {"reader": "nifti", "kind": "magnitude", "spatial_dims": 2, "coil_maps": False,
                 "patch_size": [32, 32], "sigma_n": "auto", "noise_model": noise_model,
                 "noise_estimator": estimator, "num_workers": 0},
        "network": {"features": [16, 32, 32], "attention_levels": [False, False, False],
                    "num_res_blocks": 1, "norm_num_groups": 8, "num_head_channels": 16},
        "loss": {"objective": "ambient+consistency", "consistency_start": 0.5, **loss},
        "train": {"steps": steps, "batch_size": batch, "lr": 1e-3, "lr_warmup": 100,
                  "ema_decay": 0.995, "log_every": 50, "checkpoint_every": max(steps, 1),
                  "keep_checkpoints": 1, "mixed_precision": False, "seed": seed},
        "sampler": {"sampler": "heun", "steps": 40, "mode": "full", "previews": 0},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=8)  # 14 slices in the volume
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ambient-med-magnitude"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--quick", action="store_true", help="20 steps: checks the path, not the figures")
    ap.add_argument("--reuse", action="store_true", help="reuse the priors already trained in --work")
    ap.add_argument("--name", default="magnitude_mri", help="output file stem in --out")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="training seeds per model (the table gives the mean and each seed's background)")
    ap.add_argument("--models", nargs="+", default=["noncentral-chi", "rician", "effective-chi"],
                    choices=["noncentral-chi", "rician", "effective-chi"])
    ap.add_argument("--loss", nargs="*", default=[], metavar="KEY=VALUE",
                    help="loss settings for both priors (e.g. sure_fraction=0.5)")
    a = ap.parse_args()
    f = data_file()
    if not f.is_file():
        sys.exit(f"{f}: absent (set AMBIENT_MED_SHARED_DATA); nothing to measure")
    steps = 20 if a.quick else a.steps
    torch.set_num_threads(a.threads)
    import nibabel as nib

    from ambient_med.prior import AmbientPrior
    from ambient_med.tasks.denoise import denoise_file
    from ambient_med.tasks.train import run_training

    a.work.mkdir(parents=True, exist_ok=True)
    vol = np.asarray(nib.load(f).get_fdata(), dtype=np.float64)
    rows, priors, t0 = {}, {}, time.perf_counter()
    variants = {"noncentral-chi": ("noncentral-chi", "piesno", N_COILS),
                "rician": ("rician", "piesno", None),
                "effective-chi": ("noncentral-chi", "effective-chi", N_COILS)}
    for model in a.models:
        noise_model, estimator, n_coils = variants[model]
        for seed in a.seeds:
            t = time.perf_counter()
            tag = model if seed == 0 else f"{model}-s{seed}"
            prior_path = a.work / f"run-{tag}" / "prior.safetensors"
            reused = a.reuse and prior_path.is_file()
            if not reused:
                prior_path = run_training(
                    [str(f)], a.work / f"run-{tag}",
                    protocol=protocol(a.work, f"mag-{tag}", noise_model, estimator, steps, a.batch_size,
                                      loss_overrides(a.loss), seed), sigma_n="auto",
                    n_coils=n_coils, previews=0, overwrite=True, handle_signals=False).prior_path
            train_s = None if reused else time.perf_counter() - t   # None: trained by an earlier run
            out = a.work / f"denoised-{tag}.nii.gz"
            t = time.perf_counter()
            denoise_file(prior_path, f, out, overwrite=True, device="cpu")
            den = np.asarray(nib.load(out).get_fdata(), dtype=np.float64)
            priors[model] = AmbientPrior.load(prior_path)
            row = rows.setdefault(model, {"denoised": den, "per_seed": [], "train_seconds": [],
                                          "noise": priors[model].metadata.noise,
                                          "sigma_n_data": priors[model].metadata.sigma_n_data})
            row["per_seed"].append(den)
            row["train_seconds"].append(train_s)
            row["denoise_seconds"] = time.perf_counter() - t
    sigma = magnitude_volume_estimate(vol, N_COILS).sigma   # PIESNO, N = 8 (what the regions use)
    bg, fg = regions(vol, sigma)
    floor = chi_noise_mean(sigma, N_COILS)
    table = {"input": {"background_mean": float(vol[bg].mean()), "background_std": float(vol[bg].std()),
                       "foreground_mean": float(vol[fg].mean())}}
    for model, r in rows.items():
        per = [float(d[bg].mean()) for d in r["per_seed"]]
        table[model] = {"background_mean": float(np.mean(per)),
                        "background_std": float(np.mean([d[bg].std() for d in r["per_seed"]])),
                        "foreground_mean": float(np.mean([d[fg].mean() for d in r["per_seed"]])),
                        "background_mean_per_seed": per, "seeds": a.seeds,
                        "train_seconds": r["train_seconds"], "denoise_seconds": r["denoise_seconds"]}
    result = {
        "file": f.name, "shape": list(vol.shape), "steps": steps, "batch_size": a.batch_size,
        "quick": a.quick, "n_coils": N_COILS, "sigma_piesno_package": sigma, "sigma_piesno_dipy": DIPY_PIESNO,
        "chi_noise_floor_mean": floor, "noise_free_background_mean": 0.0,
        "background_voxels": int(bg.sum()), "foreground_voxels": int(fg.sum()),
        "noise_models": {m: r["noise"] for m, r in rows.items()},
        "sigma_n_data": {m: r["sigma_n_data"] for m, r in rows.items()},
        "table": table, "wall_seconds": time.perf_counter() - t0,
    }
    lines = ["| image | background mean / chi floor | per seed | background std / sigma | foreground mean / input |",
             "|---|---|---|---|---|"]
    for name, v in table.items():
        per = ", ".join(f"{b / floor:.3f}" for b in v.get("background_mean_per_seed", []))
        lines.append(f"| {name} | {v['background_mean'] / floor:.3f} | {per} | {v['background_std'] / sigma:.3f} | "
                     f"{v['foreground_mean'] / table['input']['foreground_mean']:.4f} |")
    lines += ["", "| noise model | its sigma, N | input air in z: std (model: 1) | mean - E[z given 0] (model: 0) |",
              "|---|---|---|---|"]
    for model, r in rows.items():
        nm = from_dict(r["noise"])
        z = np.asarray(nm.stabilise(vol))[bg]
        e0 = float(np.interp(0.0, nm.tables.nu, nm.tables.ef))   # E[f(m) | nu = 0]
        table[model]["air_z_std"], table[model]["air_z_mean_minus_e0"] = float(z.std()), float(z.mean() - e0)
        lines.append(f"| {model} | {nm.sigma:.6f}, {getattr(nm, 'n_coils', 1):.3g} | {z.std():.3f} | "
                     f"{z.mean() - e0:+.3f} |")
    md = "\n".join(lines)
    print(f"sigma (package PIESNO, N={N_COILS}) = {sigma:.6f} (dipy {DIPY_PIESNO}); chi floor = {floor:.5f}")
    print(md)
    if a.quick:
        return
    result["loss_overrides"] = loss_overrides(a.loss)
    write_json(a.out / f"{a.name}.json", result, indent=2)
    _figure(vol, rows, bg, a.out / f"{a.name}.png")
    (a.out / f"{a.name}.md").write_text(
        f"# Magnitude MRI: test_piesno.nii.gz (8-coil sum of squares) through train and denoise\n\n"
        f"`benchmarks/magnitude_mri.py`, {steps} steps x batch {a.batch_size} per prior, seeds {a.seeds}, 32x32 patches, "
        f"CPU, {result['wall_seconds']:.0f} s{' (priors reused from an earlier run)' if a.reuse else ''}"
        f"{'; loss ' + ', '.join(a.loss) if a.loss else ''}. PIESNO sigma (N = 8) = {sigma:.6f} (dipy: {DIPY_PIESNO}); "
        f"the chi(16) noise floor in air is {floor:.5f}; noise-free air is 0. "
        f"{int(bg.sum())} background and {int(fg.sum())} foreground voxels.\n\n{md}\n\n"
        f"![magnitude]({a.name}.png)\n")


def _figure(vol, rows, bg, path):
    plt = pyplot()
    z = vol.shape[2] // 2
    panels = [("input (8-coil SoS)", vol[..., z])] + [(f"denoised, {m} model", r["denoised"][..., z])
                                                       for m, r in rows.items()]
    vmax = float(np.percentile(vol, 99.5))
    fig, axes = plt.subplots(2, len(panels), figsize=(4 * len(panels), 8))
    for i, (title, img) in enumerate(panels):
        axes[0, i].imshow(img.T, cmap="gray", vmin=0, vmax=vmax, origin="lower")
        axes[0, i].set_title(title)
        axes[1, i].imshow(img.T, cmap="magma", vmin=0, vmax=vmax * 0.08, origin="lower")
        axes[1, i].contour(bg[..., z].T, levels=[0.5], colors="c", linewidths=0.5, origin="lower")
        axes[1, i].set_title("window 0-8% (background in cyan)")
        for ax in axes[:, i]:
            ax.axis("off")
    save(fig, path, 80)


if __name__ == "__main__":
    main()
