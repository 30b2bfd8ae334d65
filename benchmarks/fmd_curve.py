"""FMD learning curves on this machine's CPU: PSNR against CPU-minutes, one long run per method.

The data, network, scoring and methods of ``fmd.py`` (confocal BPAE, train on the raw captures
of fields 1-4, test captures 0, 24 and 49 of field 5 against its 50-capture average, PSNR over
the 8-bit range): ``ambient+consistency`` (the package's defaults), the clean-prior oracle, the
supervised oracle and Noise2Void; BM3D (generalised Anscombe, sigma 1) is a line. Each method
trains in slices of ``--slice`` steps; after each slice its process CPU time (all threads) is
added to the method's total, a checkpoint is written, and whenever the total passes a mark of
``--marks`` CPU-minutes (5, 15, 30, 60) the EMA weights of that moment are saved and scored.

Resumable: everything lives in ``--work`` (keep it out of git); a rerun continues every method
from its last checkpoint and finishes the marks it has not reached, so a curve can be completed
later with a larger ``--budget``. Learning-rate schedule: constant after a 100-step warm-up, so
a checkpoint is the same whatever the final budget.

Run:  python benchmarks/fmd_curve.py [--budget 60] [--methods ...] [--quick]
      python benchmarks/fmd_curve.py --report --work DIR   (the tables and figure from DIR's runs)
Writes benchmarks/results/fmd_curve.{json,md,png} (``--quick``: ``fmd_curve_quick.*``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common.curves import curve_args, curve_meta, mark_cells, plot_marks, train_to_budget, write_curves
from common.figures import pyplot
from common.fmd_data import DATA_RANGE, test_field, training_setup
from common.fmd_methods import (
    PRIORS,
    SHORT,
    Plain,
    custom_batches,
    custom_optimiser,
    custom_step,
    denoiser_fn,
    n2v_loss,
    posterior_mean,
    prior_loss,
    supervised_loss,
)
from common.scoring import psnr
from common.tables import row, rule
from common.work import Progress, save_torch

from ambient_med.diffusion.networks import EDMDenoiser
from ambient_med.noise import PoissonGaussian
from ambient_med.training.loop import train

METHODS = ("ambient+consistency", "clean", "supervised", "n2v")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--noise-map", action=argparse.BooleanOptionalAction, default=True,
                   help="equalise the stabilised noise per pixel (data.noise_map, the microscopy "
                        "protocols' default) for every learned method, in training and scoring")
    p.add_argument("--report", action="store_true",
                   help="train nothing: write the results from the runs in --work as they stand")
    return curve_args(p, Path("/tmp/ambient_med_fmd_curve"), argv)


def fmd_args(a):
    """``fmd.py``'s settings (its defaults) with the curve's threads."""
    import fmd

    args = fmd.parse([])
    args.threads, args.quick, args.noise_map = a.threads, False, a.noise_map
    return args


def run_method(method, setup, a, args, score, log) -> dict:
    """Train ``method`` slice by slice until ``a.budget`` CPU-minutes; score each mark passed."""
    folder = a.work / method.replace("+", "_")
    folder.mkdir(parents=True, exist_ok=True)
    prog = Progress(folder / "progress.json")
    torch.manual_seed(args.seed)
    fresh = EDMDenoiser(setup["net_cfg"])
    # an open-ended constant-rate run: a checkpoint does not depend on the budget
    tcfg = replace(setup["tcfg"], steps=10**7, checkpoint_every=a.slice, log_every=a.slice, keep_checkpoints=1)
    if method in PRIORS:
        data = setup["paired"] if method == "clean" else setup["ds"]
        lcfg = prior_loss(setup["base_loss"], method)
        # consistency_start is a fraction of cfg.steps: keep fmd.py's warm-up in steps, not a
        # quarter of the open-ended run (which would never end)
        lcfg = replace(lcfg, consistency_start=lcfg.consistency_start * args.steps / tcfg.steps)

        def train_slice(k):
            return train(fresh, data, lcfg, tcfg, run_dir=folder, resume=k > 0, device="cpu",
                         stop_after=k + a.slice).model
    else:
        net = Plain(fresh) if method == "n2v" else fresh
        ema, opt, gen = custom_optimiser(net, tcfg)
        state = folder / "state.pt"
        if state.exists():
            s = torch.load(state, weights_only=True)
            net.load_state_dict(s["model"]), ema.load_state_dict(s["ema"]), opt.load_state_dict(s["opt"])
            gen.set_state(s["gen"])
        data = setup["ds"] if method == "n2v" else setup["paired"]
        loss_fn = n2v_loss(args.n2v_box) if method == "n2v" else supervised_loss(setup["sn"])
        it = custom_batches(data, tcfg, start=prog.d["steps"] * tcfg.batch_size)

        def train_slice(k):
            for step in range(k, k + a.slice):
                custom_step(net, ema, opt, next(it), step, tcfg, loss_fn, gen)
            save_torch(state, {"model": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                               "gen": gen.get_state()})
            return ema

    return train_to_budget(method, prog, a, train_slice, lambda model: {"psnr": score(method, model)}, log)


def main(argv=None):
    a = parse(argv)
    torch.set_num_threads(a.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731
    if a.report:
        curves = {m: Progress(a.work / m.replace("+", "_") / "progress.json").d for m in a.methods}
        write(a, curves, json.loads((a.work / "bm3d.json").read_text())["psnr"])
        return
    args = fmd_args(a)
    a.work.mkdir(parents=True, exist_ok=True)
    setup = training_setup(args, log)
    # the test captures, their noise fits and BM3D, once (BM3D is cached in --work)
    stack, ref = test_field(args.data, args.test_field)
    caps = [stack[i] for i in args.test_captures]
    fits = [PoissonGaussian.estimate(c) for c in caps]
    models = [PoissonGaussian(m.a, m.b, m.mu, equalise=a.noise_map) for m in fits]
    bm3d_file = a.work / "bm3d.json"
    if not bm3d_file.exists():
        import bm3d

        vals = [psnr(m.invert_mean(bm3d.bm3d(m.stabilise(c), 1.0)), ref, DATA_RANGE) for c, m in zip(caps, fits)]
        bm3d_file.write_text(json.dumps({"psnr": float(np.mean(vals))}))
    bm3d_psnr = json.loads(bm3d_file.read_text())["psnr"]
    scale, sn, patch = setup["scale"], setup["sn"], args.patch

    @torch.no_grad()
    def score(method, model) -> float:
        fn = model.eval() if method == "n2v" else denoiser_fn(method, model.eval(), sn)
        return float(np.mean([psnr(posterior_mean(fn, c, m, scale, patch), ref, DATA_RANGE)
                              for c, m in zip(caps, models)]))

    curves = {}
    for method in a.methods:
        log(f"{method}: training to {a.budget:g} CPU-minutes")
        curves[method] = run_method(method, setup, a, args, score, log)
    write(a, curves, bm3d_psnr)


def write(a, curves, bm3d_psnr):
    meta = curve_meta(a, bm3d_psnr=bm3d_psnr, noise_map=a.noise_map)
    lines = ["# FMD learning curves on the CPU (benchmarks/fmd_curve.py)\n",
             f"{meta['date']}; fmd.py's data, network and scoring"
             f"{'; noise map on (stabilised noise equalised per pixel, posterior mean over 4 top-up draws)' if a.noise_map else ''}"
             f"; {a.threads} torch threads; CPU-minutes "
             f"are process CPU time (all threads). BM3D: {bm3d_psnr:.2f} dB. Marks beyond a method's "
             f"training so far (last columns) are blank.\n",
             row(["method", *(f"{m:g} CPU-min" for m in a.marks), "steps so far", "CPU-min so far"]),
             rule(len(a.marks) + 3)]
    lines += [row([method, *mark_cells(d, a.marks, "psnr"), d["steps"], f"{d['cpu_s'] / 60:.1f}"])
              for method, d in curves.items()]
    fig, ax = pyplot().subplots(figsize=(6, 4))
    plot_marks(ax, curves, "psnr", lambda m: SHORT.get(m, m))
    ax.axhline(bm3d_psnr, color="k", ls="--", label="BM3D")
    ax.set_xlabel("CPU-minutes of training"), ax.set_ylabel("PSNR (dB), FMD field 5"), ax.legend()
    write_curves(a, "fmd_curve", curves, meta, lines, fig, dpi=120)


if __name__ == "__main__":
    main()
