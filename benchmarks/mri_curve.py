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
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common.curves import curve_args, curve_meta, mark_cells, plot_marks, train_to_budget, write_curves
from common.figures import pyplot
from common.mni import combine, intensity_scale, simulated
from common.mri_baselines import l1_wavelet, tune
from common.mri_priors import PatchSet, network, run_sampler
from common.scoring import psnr
from common.tables import row, rule
from common.work import Progress

from ambient_med.diffusion.losses import LossConfig
from ambient_med.diffusion.networks import EDMDenoiser
from ambient_med.mri.complex import complex_to_channels
from ambient_med.prior import AmbientPrior, PriorMetadata
from ambient_med.training.loop import TrainConfig, train

OBJECTIVES = ("ambient+consistency", "naive", "clean")
TASKS = ("denoise", "recon_R4", "recon_R8")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    return curve_args(p, Path("/tmp/ambient_med_mri_curve"), argv)


def setup(args):
    """``mri_recon.main``'s data, in the same random order."""
    rng = np.random.default_rng(args.seed)
    d = simulated(args.size, args.coils, args.snr_db, args.n_test, args.gap, rng)
    x0, k_all, maps, sigma, train_idx, test_idx = d["x0"], d["k"], d["maps"], d["sigma"], d["train"], d["test"]
    y_all = combine(k_all, maps)
    scale = intensity_scale(y_all[train_idx], sigma)
    tune_idx = np.linspace(0, len(train_idx) - 1, args.n_tune).round().astype(int)
    q = float(np.percentile(np.abs(y_all[train_idx]), 99))
    l1 = {}
    for accel, m in d["masks"].items():
        tn = tune(k_all[train_idx][tune_idx], x0[train_idx][tune_idx], maps, m, sigma, q)
        l1[f"recon_R{accel}"] = float(np.mean([psnr(l1_wavelet(k_all[z] * m, maps, m, tn["alpha"] * sigma), x0[z])
                                               for z in test_idx]))
    return {"x0": x0, "y": y_all, "k": k_all, "maps": maps, "sigma": sigma, "scale": scale,
            "masks": d["masks"], "train": train_idx, "test": test_idx, "l1": l1}


def score(prior, d, args) -> dict:
    out = {"denoise": float(np.mean([psnr(prior.denoise(torch.from_numpy(d["y"][z])[None, None], d["sigma"])
                                          [0, 0].numpy(), d["x0"][z]) for z in d["test"]]))}
    for accel, m in d["masks"].items():
        vals = []
        for j, z in enumerate(d["test"]):
            res, _, _ = run_sampler(prior, d["k"][z] * m, m, d["maps"], d["sigma"], "dc", args,
                                    args.seed + 1000 * accel + j)
            vals.append(psnr(res["mean"][0].cpu().numpy(), d["x0"][z]))
        out[f"recon_R{accel}"] = float(np.mean(vals))
    return out


def prior_parts(obj, d, args):
    """The training data in model units, the network and the metadata of ``obj``'s prior."""
    to_ch = lambda x: complex_to_channels(torch.from_numpy(x)[:, None], dim=1) / d["scale"]  # noqa: E731
    x0m, ym = to_ch(d["x0"][d["train"]]), to_ch(d["y"][d["train"]])
    sn = d["sigma"] / d["scale"]
    sd = float(x0m.std()) if obj == "clean" else (float(ym.std()) if obj == "naive"
                                                   else math.sqrt(max(float(ym.var()) - sn**2, 1e-8)))
    net = network(args, sd)
    meta = PriorMetadata(network=net.to_dict(), data_kind="complex",
                         sigma_n_data=0.0 if obj == "clean" else d["sigma"],
                         sigma_n_model=0.0 if obj == "clean" else sn, scale=d["scale"],
                         training={"image_shape": [args.patch, args.patch], "objective": obj})
    return x0m, ym, sn, sd, net, meta


def run_prior(obj, d, a, args, log) -> dict:
    folder = a.work / obj.replace("+", "_")
    folder.mkdir(parents=True, exist_ok=True)
    prog = Progress(folder / "progress.json")
    x0m, ym, sn, sd, net, meta = prior_parts(obj, d, args)
    data = PatchSet(ym, sn, args.patch, clean=x0m if obj == "clean" else None)
    tcfg = TrainConfig(steps=10**7, batch_size=args.batch_size, lr=args.lr, lr_warmup=100,
                       log_every=a.slice, checkpoint_every=a.slice, keep_checkpoints=1, seed=args.seed)
    torch.manual_seed(args.seed)
    model = EDMDenoiser(net)
    # consistency_start is a fraction of cfg.steps: mri_recon.py's warm-up in steps
    loss = LossConfig(objective=obj, sigma_data=sd)
    loss = replace(loss, consistency_start=loss.consistency_start * args.steps / tcfg.steps)

    def train_slice(k):
        return train(model, data, loss, tcfg, run_dir=folder, resume=k > 0, device="cpu", stop_after=k + a.slice).model

    return train_to_budget(obj, prog, a, train_slice, lambda m: score(AmbientPrior(m, meta), d, args), log)


def main(argv=None):
    a = parse(argv)
    torch.set_num_threads(a.threads)
    import mri_recon

    args = mri_recon.parse(["--threads", str(a.threads)])
    log = lambda s: print(s, flush=True)  # noqa: E731
    a.work.mkdir(parents=True, exist_ok=True)
    d = setup(args)
    log(f"MNI: {len(d['train'])} training slices, test {d['test']}; L1-wavelet {d['l1']}")
    curves = {obj: run_prior(obj, d, a, args, log) for obj in a.objectives}
    write(a, curves, d["l1"])


def write(a, curves, l1):
    meta = curve_meta(a, l1_wavelet=l1)
    lines = ["# MRI learning curves on the CPU (benchmarks/mri_curve.py)\n",
             f"{meta['date']}; mri_recon.py's data, network and scoring; {a.threads} torch threads; "
             "CPU-minutes are process CPU time. PSNR (dB) at each mark; L1-wavelet (tuned): "
             + ", ".join(f"{t} {v:.2f}" for t, v in l1.items()) + ". Blank: not reached yet.\n",
             row(["prior", "task", *(f"{m:g} CPU-min" for m in a.marks)]), rule(2 + len(a.marks))]
    lines += [row([obj, t, *mark_cells(d, a.marks, t)]) for obj, d in curves.items() for t in TASKS]
    fig, axes = pyplot().subplots(1, 3, figsize=(13, 4))
    for ax, t in zip(axes, TASKS):
        plot_marks(ax, curves, t)
        if t in l1:
            ax.axhline(l1[t], color="k", ls="--", label="L1-wavelet")
        ax.set_title(t), ax.set_xlabel("CPU-minutes of training"), ax.set_ylabel("PSNR (dB)"), ax.legend()
    write_curves(a, "mri_curve", curves, meta, lines, fig, dpi=110)


if __name__ == "__main__":
    main()
