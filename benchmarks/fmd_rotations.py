"""Posterior means over quarter turns on FMD: the learning-curve networks scored with and without.

Cells under a microscope have no "up", so the microscopy protocols declare their images
rotation-invariant (``data.rotation_invariant``) and ``denoise`` averages the denoiser over the
four quarter turns of the frame, top-up draw k in turn k (``ambient_med.diffusion.rotations``):
the same 4 network passes as the plain mean of the 4 top-up draws. This script measures what that
gives, on the trained networks of ``fmd_curve.py`` (its ``--work`` folder; every method's latest
weights, and with ``--checkpoint METHOD=FILE`` other weights of a run, e.g. a copy of an earlier
checkpoint), scored as ``fmd_curve.py`` scores (captures 0, 24 and
49 of FMD field 5 against the 50-capture average, PSNR over the 8-bit range, noise map on):
``plain`` is the mean of the 4 top-up draws (the curve's score), ``rotations`` the same draws in
4 turns. BM3D (``fmd_curve.py``'s, cached in the work folder) is the line to beat.

The CPU-minutes of a checkpoint come from the run's progress file (linear between its marks and
its last slice).

Run:  python benchmarks/fmd_rotations.py [--work DIR] [--checkpoint ambient+consistency=FILE ...]
Writes benchmarks/results/fmd_rotations.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from common.fmd_data import DATA_RANGE, test_field, training_setup
from common.fmd_methods import SHORT, Plain, denoiser_fn, posterior_mean
from common.results import RESULTS, run_meta, settings, write_json
from common.scoring import psnr
from common.tables import analysis, table
from common.work import Progress

from ambient_med.diffusion.networks import EDMDenoiser
from ambient_med.noise import PoissonGaussian

METHODS = ("ambient+consistency", "clean", "supervised", "n2v")


def weights_file(work: Path, method: str) -> Path:
    """A method's latest weights in an ``fmd_curve.py`` work folder."""
    folder = work / method.replace("+", "_")
    if method in ("n2v", "supervised"):
        return folder / "state.pt"
    return sorted((folder / "checkpoints").glob("step_*.pt"))[-1]


def load_ema(path: Path) -> tuple[dict, int | None]:
    """The EMA weights of a checkpoint and its step (None for the custom loops' state files)."""
    s = torch.load(path, weights_only=True, map_location="cpu")
    return s["ema"], s.get("step")


def cpu_minutes(progress: dict, steps: int) -> float:
    """CPU-minutes at ``steps`` by linear interpolation over the run's marks and last slice."""
    pts = sorted([(v["steps"], v["cpu_min"]) for v in progress["marks"].values()]
                 + [(progress["steps"], progress["cpu_s"] / 60)])
    return float(np.interp(steps, *zip(*pts)))


def main(argv=None):
    import fmd_curve

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/ambient_med_fmd_curve_map"))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--checkpoint", nargs="*", default=[], metavar="METHOD=FILE",
                   help="also score these weights of METHOD's run (a row of their own)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    runs = [(m, weights_file(a.work, m)) for m in a.methods]
    runs += [(m, Path(f)) for m, f in (c.split("=", 1) for c in a.checkpoint)]
    args = fmd_curve.fmd_args(fmd_curve.parse(["--threads", str(a.threads)]))
    stack, ref = test_field(args.data, args.test_field)
    caps = [stack[i] for i in args.test_captures]
    models = [PoissonGaussian(m.a, m.b, m.mu, equalise=True) for m in map(PoissonGaussian.estimate, caps)]
    # the training set's scale, model-space sigma_n and network, as fmd_curve.py set them up
    setup = training_setup(args, lambda s: None)
    scale, sn, net_cfg = float(setup["scale"]), float(setup["sn"]), setup["net_cfg"]
    bm3d = json.loads((a.work / "bm3d.json").read_text())["psnr"]
    rows = []
    for method, path in sorted(runs, key=lambda r: METHODS.index(r[0])):
        ema, step = load_ema(path)
        progress = Progress(a.work / method.replace("+", "_") / "progress.json").d
        steps = step if step is not None else progress["steps"]
        net = EDMDenoiser(net_cfg)
        (Plain(net) if method == "n2v" else net).load_state_dict(ema)
        fn = denoiser_fn(method, net.eval(), sn)
        r = {"method": method, "weights": str(path), "steps": steps, "cpu_min": cpu_minutes(progress, steps)}
        with torch.no_grad():
            for name, rot in (("plain", False), ("rotations", True)):
                r[name] = float(np.mean([psnr(posterior_mean(fn, c, m, scale, args.patch, rotations=rot), ref,
                                              DATA_RANGE) for c, m in zip(caps, models)]))
        rows.append(r)
        print(f"{method}: {steps} steps ({r['cpu_min']:.1f} CPU-min): plain {r['plain']:.2f}, "
              f"rotations {r['rotations']:.2f} dB", flush=True)
    meta = {"settings": settings(a), "bm3d_psnr": bm3d, **run_meta(a.threads)}
    write_json(a.out / "fmd_rotations.json", {"rows": rows, "meta": meta})
    body = [[SHORT.get(r["method"], r["method"]), r["steps"], f"{r['cpu_min']:.1f}", f"{r['plain']:.2f}",
             f"{r['rotations']:.2f}", f"{r['rotations'] - r['plain']:+.2f}", f"{r['rotations'] - bm3d:+.2f}"]
            for r in rows]
    md = a.out / "fmd_rotations.md"
    text = "\n".join([
        "# Posterior means over quarter turns on FMD (benchmarks/fmd_rotations.py)\n",
        f"{meta['date']}; the networks of `fmd_curve.py` (work folder `{a.work}`), scored as there: "
        f"captures {list(args.test_captures)} of FMD field {args.test_field}, noise map on, the mean of 4 "
        f"top-up draws (`plain`) or the same draws in the 4 quarter turns (`rotations`, what `denoise` "
        f"does for a rotation-invariant prior: the same 4 network passes). BM3D: {bm3d:.2f} dB.\n",
        *table(["method", "steps", "CPU-min", "plain (dB)", "rotations (dB)", "gain", "vs BM3D"], body)])
    md.write_text(text + "\n\n" + analysis(md))
    print(text)


if __name__ == "__main__":
    main()
