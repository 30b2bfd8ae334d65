"""MRI learning curves on this machine's CPU: PSNR against CPU-minutes, one long run per prior.

The data, network and scoring of ``mri_recon.py`` (MNI slices at 64x64 with a random smooth
phase, 8 birdcage coils at 20 dB, 93 training and 4 held-out slices, the same seed and masks):
``ambient+consistency``, ``naive`` and the ``clean`` oracle, each trained in slices of
``--slice`` steps by the package's ``train`` (checkpointed, resumed), its process CPU time
summed; at each mark of ``--marks`` CPU-minutes (5, 15, 30, 60) the EMA prior of that moment is
scored on denoising (posterior mean) and on R = 4 and R = 8 reconstruction (DC sampler, 4
antithetic chains x 24 steps from sigma_max 10, as ``mri_recon.py``). Tuned L1-wavelet is the line.

Resumable: ``--work`` holds the runs (keep it out of git); a rerun continues each prior and scores
the marks it has not reached yet. The learning rate is constant after a 100-step warm-up.

Run:  python benchmarks/mri_curve.py [--budget 60] [--objectives ...] [--quick]
Writes benchmarks/results/mri_curve.{json,md,png} (``--quick``: ``mri_curve_quick.*``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mri_recon as mr  # noqa: E402  (data, network and scoring of the MRI benchmark)
from common.curves import curve_args  # noqa: E402
from common.work import Progress  # noqa: E402

from ambient_med.diffusion.losses import LossConfig  # noqa: E402
from ambient_med.diffusion.networks import EDMDenoiser  # noqa: E402
from ambient_med.mri.complex import complex_to_channels  # noqa: E402
from ambient_med.prior import AmbientPrior, PriorMetadata  # noqa: E402
from ambient_med.training.loop import TrainConfig, train  # noqa: E402

OBJECTIVES = ("ambient+consistency", "naive", "clean")
TASKS = ("denoise", "recon_R4", "recon_R8")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    return curve_args(p, Path("/tmp/ambient_med_mri_curve"), argv)


def setup(args):
    """``mri_recon.main``'s data, in the same random order."""
    rng = np.random.default_rng(args.seed)
    mag, area = mr.mni_slices(args.size)
    train_idx, test_idx = mr.split(area, args.n_test, args.gap)
    phases = np.stack([mr.smooth_phase(rng, args.size) for _ in range(mag.shape[0])])
    x0 = (mag * np.exp(1j * phases)).astype(np.complex64)
    maps = mr.coil_maps(args.coils, args.size)
    sigma = mr.sigma_at_snr(x0[train_idx], args.snr_db)
    k_all = mr.simulate(x0, maps, sigma, rng)
    y_all = mr.combine(k_all, maps)
    scale = mr.intensity_scale(y_all[train_idx], sigma)
    masks = {accel: mr.line_mask(args.size, accel, rng) for accel in (4, 8)}
    tune_idx = np.linspace(0, len(train_idx) - 1, args.n_tune).round().astype(int)
    q = float(np.percentile(np.abs(y_all[train_idx]), 99))
    l1 = {}
    for accel, m in masks.items():
        tn = mr.tune(k_all[train_idx][tune_idx], x0[train_idx][tune_idx], maps, m, sigma, q)
        l1[f"recon_R{accel}"] = float(np.mean([mr.psnr(mr.l1_wavelet(k_all[z] * m, maps, m, tn["alpha"] * sigma),
                                                       x0[z]) for z in test_idx]))
    return {"x0": x0, "y": y_all, "k": k_all, "maps": maps, "sigma": sigma, "scale": scale,
            "masks": masks, "train": train_idx, "test": test_idx, "l1": l1}


def score(prior, d, args) -> dict:
    out = {"denoise": float(np.mean([mr.psnr(prior.denoise(torch.from_numpy(d["y"][z])[None, None], d["sigma"])
                                             [0, 0].numpy(), d["x0"][z]) for z in d["test"]]))}
    for accel, m in d["masks"].items():
        vals = []
        for j, z in enumerate(d["test"]):
            res, _, _ = mr.run_sampler(prior, d["k"][z] * m, m, d["maps"], d["sigma"], "dc", args,
                                       args.seed + 1000 * accel + j)
            vals.append(mr.psnr(res["mean"][0].cpu().numpy(), d["x0"][z]))
        out[f"recon_R{accel}"] = float(np.mean(vals))
    return out


def run_prior(obj, d, a, args, log) -> dict:
    folder = a.work / obj.replace("+", "_")
    folder.mkdir(parents=True, exist_ok=True)
    prog = Progress(folder / "progress.json")
    to_ch = lambda x: complex_to_channels(torch.from_numpy(x)[:, None], dim=1) / d["scale"]  # noqa: E731
    x0m, ym = to_ch(d["x0"][d["train"]]), to_ch(d["y"][d["train"]])
    sn = d["sigma"] / d["scale"]
    sd = float(x0m.std()) if obj == "clean" else (float(ym.std()) if obj == "naive"
                                                   else math.sqrt(max(float(ym.var()) - sn**2, 1e-8)))
    net = mr.network(args, sd)
    data = mr.PatchSet(ym, sn, args.patch, clean=x0m if obj == "clean" else None)
    tcfg = TrainConfig(steps=10**7, batch_size=args.batch_size, lr=args.lr, lr_warmup=100,
                       log_every=a.slice, checkpoint_every=a.slice, keep_checkpoints=1, seed=args.seed)
    torch.manual_seed(args.seed)
    model = EDMDenoiser(net)
    while prog.d["cpu_s"] / 60 < a.budget:
        c0, k = time.process_time(), prog.d["steps"]
        # consistency_start is a fraction of cfg.steps: mri_recon.py's warm-up in steps
        loss = LossConfig(objective=obj, sigma_data=sd)
        loss = replace(loss, consistency_start=loss.consistency_start * args.steps / tcfg.steps)
        res = train(model, data, loss, tcfg, run_dir=folder,
                    resume=k > 0, device="cpu", stop_after=k + a.slice)
        prog.d["steps"], prog.d["cpu_s"] = k + a.slice, prog.d["cpu_s"] + time.process_time() - c0
        for mark in a.marks:
            if prog.d["cpu_s"] / 60 >= mark and str(mark) not in prog.d["marks"]:
                meta = PriorMetadata(network=net.to_dict(), data_kind="complex",
                                     sigma_n_data=0.0 if obj == "clean" else d["sigma"],
                                     sigma_n_model=0.0 if obj == "clean" else sn, scale=d["scale"],
                                     training={"image_shape": [args.patch, args.patch], "objective": obj})
                s = score(AmbientPrior(res.model, meta), d, args)
                prog.d["marks"][str(mark)] = {"steps": prog.d["steps"], "cpu_min": prog.d["cpu_s"] / 60, **s}
                log(f"  {obj}: {mark:g} CPU-min at step {prog.d['steps']}: " +
                    ", ".join(f"{t} {v:.2f}" for t, v in s.items()))
        prog.save()
    return prog.d


def main(argv=None):
    a = parse(argv)
    torch.set_num_threads(a.threads)
    args = mr.parse(["--threads", str(a.threads)])
    log = lambda s: print(s, flush=True)  # noqa: E731
    a.work.mkdir(parents=True, exist_ok=True)
    d = setup(args)
    log(f"MNI: {len(d['train'])} training slices, test {d['test']}; L1-wavelet {d['l1']}")
    curves = {obj: run_prior(obj, d, a, args, log) for obj in a.objectives}
    write(a, curves, d["l1"])


def write(a, curves, l1):
    stem = "mri_curve" + ("_quick" if a.quick else "")
    meta = {"date": time.strftime("%Y-%m-%d"), "threads": a.threads, "budget_cpu_min": a.budget,
            "marks": a.marks, "l1_wavelet": l1, "torch": torch.__version__}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{stem}.json").write_text(json.dumps({"curves": curves, "meta": meta}, indent=1))
    lines = ["# MRI learning curves on the CPU (benchmarks/mri_curve.py)\n",
             f"{meta['date']}; mri_recon.py's data, network and scoring; {a.threads} torch threads; "
             "CPU-minutes are process CPU time. PSNR (dB) at each mark; L1-wavelet (tuned): "
             + ", ".join(f"{t} {v:.2f}" for t, v in l1.items()) + ". Blank: not reached yet.\n",
             "| prior | task | " + " | ".join(f"{m:g} CPU-min" for m in a.marks) + " |",
             "|---|---|" + "---|" * len(a.marks)]
    for obj, d in curves.items():
        for t in TASKS:
            cells = [f"{d['marks'][str(m)][t]:.2f}" if str(m) in d["marks"] else "" for m in a.marks]
            lines.append(f"| {obj} | {t} | " + " | ".join(cells) + " |")
    (a.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, t in zip(axes, TASKS):
        for obj, d in curves.items():
            pts = sorted((v["cpu_min"], v[t]) for v in d["marks"].values())
            if pts:
                ax.plot(*zip(*pts), "o-", label=obj)
        if t in l1:
            ax.axhline(l1[t], color="k", ls="--", label="L1-wavelet")
        ax.set_title(t), ax.set_xlabel("CPU-minutes of training"), ax.set_ylabel("PSNR (dB)"), ax.legend()
    fig.tight_layout()
    fig.savefig(a.out / f"{stem}.png", dpi=110)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
