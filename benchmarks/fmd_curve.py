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
Writes benchmarks/results/fmd_curve.{json,md,png} (``--quick``: ``fmd_curve_quick.*``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fmd  # noqa: E402  (data, network, losses and scoring of the FMD benchmark)

from ambient_med.diffusion.losses import LossConfig  # noqa: E402
from ambient_med.diffusion.networks import EDMDenoiser  # noqa: E402
from ambient_med.noise import PoissonGaussian  # noqa: E402
from ambient_med.training.loop import ResumableSampler, _batches, train  # noqa: E402

METHODS = ("ambient+consistency", "clean", "supervised", "n2v")
MARKS = (5.0, 15.0, 30.0, 60.0)


def curve_args(p: argparse.ArgumentParser, work: Path, argv=None) -> argparse.Namespace:
    """The options every learning-curve script shares (marks, budget, slices, threads, --quick)."""
    p.add_argument("--marks", type=float, nargs="+", default=list(MARKS), help="CPU-minutes")
    p.add_argument("--budget", type=float, default=60.0, help="stop each run at this many CPU-minutes")
    p.add_argument("--slice", type=int, default=25, help="steps between CPU-time checks and checkpoints")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=work)
    p.add_argument("--quick", action="store_true", help="0.2 and 0.5 CPU-minute marks, 5-step slices")
    p.add_argument("--out", type=Path, default=fmd.RESULTS)
    a = p.parse_args(argv)
    if a.quick:
        a.marks, a.budget, a.slice, a.work = [0.2, 0.5], 0.5, 5, a.work.with_name(a.work.name + "_quick")
    return a


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    return curve_args(p, Path("/tmp/ambient_med_fmd_curve"), argv)


def fmd_args(a):
    """``fmd.py``'s settings (its defaults) with the curve's threads."""
    sys_argv, sys.argv = sys.argv, [sys.argv[0]]
    try:
        args = fmd.parse()
    finally:
        sys.argv = sys_argv
    args.threads, args.quick = a.threads, False
    return args


class Progress:
    """The method's state file: steps done, CPU seconds spent, marks scored."""

    def __init__(self, path: Path):
        self.path = path
        self.d = json.loads(path.read_text()) if path.exists() else {"steps": 0, "cpu_s": 0.0, "marks": {}}

    def save(self):
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.d, indent=1))
        os.replace(tmp, self.path)


def custom_state(path: Path, model, ema, opt, gen):
    if path.exists():
        s = torch.load(path, weights_only=True)
        model.load_state_dict(s["model"]), ema.load_state_dict(s["ema"]), opt.load_state_dict(s["opt"])
        gen.set_state(s["gen"])


def save_custom(path: Path, model, ema, opt, gen):
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                "gen": gen.get_state()}, tmp)
    os.replace(tmp, path)


def run_method(method, setup, a, args, score, log) -> dict:
    """Train ``method`` slice by slice until ``a.budget`` CPU-minutes; score each mark passed."""
    folder = a.work / method.replace("+", "_")
    folder.mkdir(parents=True, exist_ok=True)
    prog = Progress(folder / "progress.json")
    torch.manual_seed(args.seed)
    fresh = EDMDenoiser(setup["net_cfg"])
    # an open-ended constant-rate run: a checkpoint does not depend on the budget
    tcfg = replace(setup["tcfg"], steps=10**7, checkpoint_every=a.slice, log_every=a.slice, keep_checkpoints=1)
    if method in fmd.PRIORS:
        data = setup["paired"] if method == "clean" else setup["ds"]
        lcfg = LossConfig(**{**setup["base_loss"].__dict__, "objective": method,
                             **({} if method.startswith("ambient") else {"sure_fraction": 0.0})})
        # consistency_start is a fraction of cfg.steps: keep fmd.py's warm-up in steps, not a
        # quarter of the open-ended run (which would never end)
        lcfg = replace(lcfg, consistency_start=lcfg.consistency_start * args.steps / tcfg.steps)
    else:
        net = fmd.Plain(fresh) if method == "n2v" else fresh
        ema = __import__("copy").deepcopy(net).eval().requires_grad_(False)
        opt = torch.optim.AdamW(net.parameters(), lr=tcfg.lr, betas=tcfg.betas, weight_decay=tcfg.weight_decay)
        gen = torch.Generator().manual_seed(tcfg.seed * 7919)
        custom_state(folder / "state.pt", net, ema, opt, gen)
        data = setup["ds"] if method == "n2v" else setup["paired"]
        loss_fn = fmd.n2v_loss(args.n2v_box) if method == "n2v" else fmd.supervised_loss(setup["sn"])
        it = iter(_batches(data, ResumableSampler(len(data), tcfg.seed, start=prog.d["steps"] * tcfg.batch_size,
                                                  keyed=True), tcfg, torch.device("cpu")))
    while prog.d["cpu_s"] / 60 < a.budget:
        c0, k = time.process_time(), prog.d["steps"]
        if method in fmd.PRIORS:
            r = train(fresh, data, lcfg, tcfg, run_dir=folder, resume=k > 0, device="cpu",
                      stop_after=k + a.slice)
            model = r.model
        else:
            for step in range(k, k + a.slice):
                fmd.custom_step(net, ema, opt, next(it), step, tcfg, loss_fn, gen)
            save_custom(folder / "state.pt", net, ema, opt, gen)
            model = ema
        prog.d["steps"] = k + a.slice
        prog.d["cpu_s"] += time.process_time() - c0
        for mark in a.marks:
            if prog.d["cpu_s"] / 60 >= mark and str(mark) not in prog.d["marks"]:
                prog.d["marks"][str(mark)] = {"steps": prog.d["steps"], "cpu_min": prog.d["cpu_s"] / 60,
                                              "psnr": score(method, model)}
                log(f"  {method}: {mark:g} CPU-min mark at step {prog.d['steps']}: "
                    f"PSNR {prog.d['marks'][str(mark)]['psnr']:.2f}")
        prog.save()
    return prog.d


def main(argv=None):
    a = parse(argv)
    torch.set_num_threads(a.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731
    args = fmd_args(a)
    a.work.mkdir(parents=True, exist_ok=True)
    setup = fmd.training_setup(args, log)
    # the test captures, their noise fits and BM3D, once (BM3D is cached in --work)
    stack = fmd.read_folder(args.data / "raw" / str(args.test_field))
    ref = fmd.read_folder(args.data / "gt" / str(args.test_field))[0]
    caps = [stack[i] for i in args.test_captures]
    models = [PoissonGaussian.estimate(c) for c in caps]
    bm3d_file = a.work / "bm3d.json"
    if not bm3d_file.exists():
        import bm3d

        vals = [fmd.psnr(ref, m.invert_mean(bm3d.bm3d(m.stabilise(c), 1.0))) for c, m in zip(caps, models)]
        bm3d_file.write_text(json.dumps({"psnr": float(np.mean(vals))}))
    bm3d_psnr = json.loads(bm3d_file.read_text())["psnr"]
    scale, sn, patch = setup["scale"], setup["sn"], args.patch

    @torch.no_grad()
    def score(method, model) -> float:
        model = model.eval()
        fn = (lambda t: model(t)) if method == "n2v" else (lambda t: model(t, torch.full((t.shape[0],), sn)))
        vals = []
        for c, m in zip(caps, models):
            zm = torch.from_numpy(m.stabilise(c) / scale).float()[None, None]
            vals.append(fmd.psnr(ref, m.invert_mean(fmd.tiled(fn, zm, patch)[0, 0].double().numpy() * scale)))
        return float(np.mean(vals))

    curves = {}
    for method in a.methods:
        log(f"{method}: training to {a.budget:g} CPU-minutes")
        curves[method] = run_method(method, setup, a, args, score, log)
    write(a, curves, bm3d_psnr)


def write(a, curves, bm3d_psnr):
    stem = "fmd_curve" + ("_quick" if a.quick else "")
    meta = {"date": time.strftime("%Y-%m-%d"), "threads": a.threads, "budget_cpu_min": a.budget,
            "marks": a.marks, "torch": torch.__version__, "bm3d_psnr": bm3d_psnr}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{stem}.json").write_text(json.dumps({"curves": curves, "meta": meta}, indent=1))
    lines = ["# FMD learning curves on the CPU (benchmarks/fmd_curve.py)\n",
             f"{meta['date']}; fmd.py's data, network and scoring; {a.threads} torch threads; CPU-minutes "
             f"are process CPU time (all threads). BM3D: {bm3d_psnr:.2f} dB. Marks not reached within "
             f"the budget run so far ({a.budget:g} CPU-min per method) are blank.\n",
             "| method | " + " | ".join(f"{m:g} CPU-min" for m in a.marks) + " | steps so far |",
             "|---|" + "---|" * (len(a.marks) + 1)]
    for method, d in curves.items():
        cells = [f"{d['marks'][str(m)]['psnr']:.2f}" if str(m) in d["marks"] else "" for m in a.marks]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {d['steps']} |")
    (a.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, d in curves.items():
        pts = sorted((v["cpu_min"], v["psnr"]) for v in d["marks"].values())
        if pts:
            ax.plot(*zip(*pts), "o-", label=fmd.SHORT.get(method, method))
    ax.axhline(bm3d_psnr, color="k", ls="--", label="BM3D")
    ax.set_xlabel("CPU-minutes of training"), ax.set_ylabel("PSNR (dB), FMD field 5"), ax.legend()
    fig.tight_layout()
    fig.savefig(a.out / f"{stem}.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
