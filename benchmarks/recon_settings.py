"""The ``dc`` reconstruction sampler's two settings, measured on learned priors: the scalar
``gamma(sigma)`` of its data step and whether the network runs on tiles.

``dc`` projects the prior's ``D(x, sigma)`` onto the measurements with ``Sigma = gamma I`` for
``Cov[x0 | x_sigma]`` (``ambient_med.recon.conditional``). Two choices of ``gamma``:

- ``white``: ``sigma^2 sd^2 / (sigma^2 + sd^2)``, exact for a white prior of std ``sd`` (the
  prior's ``sigma_data``);
- ``noise``: ``sigma^2``, exact where the prior's variance along a direction is far above
  ``sigma^2``, as it is for the low spatial frequencies that the data constrain (DiffPIR's data
  step with ``lambda = 1``; Zhu et al., CVPR 2023).

Tiling: ``reconstruct`` runs the network on tiles of the training patch when the image is larger
(``tiled``), or on the whole image (``whole``).

The priors are the final checkpoints of ``mri_curve.py``'s runs (60 CPU-minutes each; its
``--work`` folder), scored on ``mri_recon.py``'s simulated MNI problems (4 test slices, R = 4 and
8, 4 antithetic chains x 24 steps from sigma_max 10, as ``mri_curve.py``) and on the ESPIRiT real
k-space (R = 4 and 8, one slice, magnitude PSNR). Tuned L1-wavelet is the classical line.

Resumable: every measured row goes to ``--rows`` (out of git) and a rerun skips it.

Run:  python benchmarks/recon_settings.py [--work /tmp/ambient_med_mri_curve] [--quick]
Writes benchmarks/results/recon_settings.{json,md} (``--quick``: ``recon_settings_quick.*``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common.mni import combine, intensity_scale, simulated
from common.mri_baselines import l1_wavelet, sense_cg, tune
from common.mri_real import real_problems, real_score
from common.results import RESULTS, run_meta, settings, stem, write_json
from common.scoring import psnr
from common.tables import analysis, table
from common.work import append_jsonl, read_jsonl

from ambient_med.diffusion.networks import EDMDenoiser
from ambient_med.prior import AmbientPrior
from ambient_med.recon import white_gamma

OBJECTIVES = ("clean", "ambient+consistency", "naive")
DEFAULT_OBJECTIVES = ("clean", "ambient+consistency")


def gammas(sigma_data: float) -> dict:
    return {"white": white_gamma(sigma_data), "noise": lambda s: s**2}


def load_prior(obj: str, work: Path, d: dict, args) -> AmbientPrior | None:
    """The last checkpoint (EMA weights) of ``mri_curve.py``'s run of ``obj``, with its metadata."""
    from mri_curve import prior_parts

    cks = sorted((work / obj.replace("+", "_") / "checkpoints").glob("step_*.pt"))
    if not cks:
        return None
    *_, net, meta = prior_parts(obj, d, args)
    model = EDMDenoiser(net)
    state = torch.load(cks[-1], weights_only=True)
    model.load_state_dict(state["ema"])
    meta.training["steps"] = int(state["step"])
    return AmbientPrior(model.eval(), meta)


def recon_mean(prior, ku, mask, maps, sigma, gamma, tile, seed, args) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = prior.reconstruct(ku, mask, maps=maps, sigma=sigma, method="dc", n_samples=args.recon_samples,
                                steps=args.recon_steps, sigma_max=args.sigma_max, chunk=args.recon_samples,
                                generator=g, gamma=gamma, tile=tile)
    return out["mean"][0].cpu().numpy()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/ambient_med_mri_curve"),
                   help="mri_curve.py's work folder (its checkpoints)")
    p.add_argument("--objectives", nargs="+", default=list(DEFAULT_OBJECTIVES), choices=OBJECTIVES)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="one test slice, R = 4 only")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--rows", type=Path, default=Path("/tmp/ambient_med_recon_settings/rows.jsonl"),
                   help="measured rows (a rerun skips them; keep it out of git)")
    a = p.parse_args(argv)
    a.work_rows = a.rows.with_name("rows_quick.jsonl") if a.quick else a.rows
    torch.set_num_threads(a.threads)
    import mri_recon

    args = mri_recon.parse(["--threads", str(a.threads)])
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)            # mri_recon.py's draws, in its order
    d = simulated(args.size, args.coils, args.snr_db, args.n_test, args.gap, rng)
    d["y"] = combine(d["k"], d["maps"])
    d["scale"] = intensity_scale(d["y"][d["train"]], d["sigma"])
    test = d["test"][:1] if a.quick else d["test"]
    masks = {4: d["masks"][4]} if a.quick else d["masks"]
    problems = {}                                     # task -> list of (ku, mask, maps, ref, sigma, fit)
    q = float(np.percentile(np.abs(d["y"][d["train"]]), 99))
    tune_idx = np.linspace(0, len(d["train"]) - 1, args.n_tune).round().astype(int)
    l1, tunings = {}, {}
    for accel, m in masks.items():
        problems[f"sim_R{accel}"] = [(d["k"][z] * m, m, d["maps"], d["x0"][z], d["sigma"], None) for z in test]
        tn = tunings[accel] = tune(d["k"][d["train"]][tune_idx], d["x0"][d["train"]][tune_idx], d["maps"], m,
                                   d["sigma"], q)
        l1[f"sim_R{accel}"] = float(np.mean([psnr(l1_wavelet(ku, mp, mk, tn["alpha"] * s), ref)
                                             for ku, mk, mp, ref, s, _ in problems[f"sim_R{accel}"]]))
    if not a.quick:
        for name, pr in real_problems(args, rng).items():
            if name.startswith("real_espirit"):
                # mri_recon.py's intensity match: the SENSE image's 99th percentile to the priors' scale
                c = d["scale"] / float(np.percentile(np.abs(sense_cg(pr["ku"], pr["maps"], pr["mask"], 0.0)), 99))
                ku, sigma, ref = pr["ku"] * c, pr["sigma"] * c, pr["ref"] * c
                problems[name] = [(ku, pr["mask"], pr["maps"], ref, sigma, pr["fit"])]
                alpha = tunings[8 if name.endswith("R8") else 4]["alpha"]
                l1[name] = real_score(l1_wavelet(ku, pr["maps"], pr["mask"], alpha * sigma), ref, pr["fit"])["psnr"]
    a.work_rows.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["prior"], r["task"], r["gamma"], r["tiles"]): r for r in read_jsonl(a.work_rows)}
    rows = []
    for obj in a.objectives:
        prior = load_prior(obj, a.work, d, args)
        if prior is None:
            print(f"{obj}: no checkpoint in {a.work}; skipped", flush=True)
            continue
        for task, items in problems.items():
            for gname, gamma in gammas(prior.metadata.sigma_data).items():
                for tname in ("tiled", "whole"):
                    if (obj, task, gname, tname) in done:
                        rows.append(done[(obj, task, gname, tname)])
                        continue
                    t = time.perf_counter()
                    vals = []
                    for j, (ku, mk, mp, ref, s, fit) in enumerate(items):
                        tile = None if tname == "tiled" else max(ku.shape[-2:])
                        est = recon_mean(prior, ku, mk, mp, s, gamma, tile, args.seed + 1000 * j, args)
                        vals.append(psnr(est, ref) if fit is None else real_score(est, ref, fit)["psnr"])
                    rows.append({"prior": obj, "steps": prior.metadata.training["steps"], "task": task,
                                 "gamma": gname, "tiles": tname, "psnr": float(np.mean(vals)),
                                 "seconds": time.perf_counter() - t})
                    append_jsonl(a.work_rows, rows[-1])
                    print(f"{obj} {task} gamma={gname} {tname}: {rows[-1]['psnr']:.2f}", flush=True)
    meta = {"settings": settings(a), "test_slices": [int(z) for z in test], "l1_wavelet": l1,
            "wall_seconds": time.perf_counter() - t0, **run_meta(a.threads)}
    name = stem("recon_settings", a.quick)
    write_json(a.out / f"{name}.json", {"rows": rows, "meta": meta})
    md = a.out / f"{name}.md"
    md.write_text(markdown(rows, meta) + ("" if a.quick else "\n" + analysis(md)))
    print(markdown(rows, meta))


def markdown(rows, meta) -> str:
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    combos = [(g, t) for g in ("white", "noise") for t in ("tiled", "whole")]
    lines = ["# The dc sampler's gamma and tiling on learned priors (benchmarks/recon_settings.py)\n",
             f"{meta['date']}; the final checkpoints of mri_curve.py's runs (60 CPU-minutes each; steps in the "
             f"table); mri_recon.py's problems and sampler settings (4 antithetic chains x 24 steps from "
             f"sigma_max 10); PSNR in dB (simulation: complex image, mean over slices {meta['test_slices']}; "
             f"real ESPIRiT k-space: magnitude). CPU, {meta['threads']} thread(s), wall "
             f"{meta['wall_seconds'] / 60:.1f} min. L1-wavelet (tuned): "
             + ", ".join(f"{k} {v:.2f}" for k, v in meta["l1_wavelet"].items()) + ".\n"]
    header = ["prior (steps)", "task", *(f"gamma {g}, {t}" for g, t in combos)]
    body = []
    for obj in dict.fromkeys(r["prior"] for r in rows):
        for task in tasks:
            cells = {(r["gamma"], r["tiles"]): r for r in rows if r["prior"] == obj and r["task"] == task}
            if cells:
                steps = next(iter(cells.values()))["steps"]
                body.append([f"{obj} ({steps})", task,
                             *(f"{cells[c]['psnr']:.2f}" if c in cells else "" for c in combos)])
    return "\n".join(lines + table(header, body)) + "\n"


if __name__ == "__main__":
    main()
