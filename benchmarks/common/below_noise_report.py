"""The report of the below-noise benchmark (``below_noise.py``): its cells aggregated over seeds,
the Markdown tables (medians over seeds), the targets of the default objective, the figure."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np

from ambient_med.synthetic.mixtures import air_mixture

from .air_mixture import SHAPE, draw_samples
from .figures import pyplot, save
from .tables import table


def aggregate(cells: list[dict], sigmas, names) -> dict:
    """Per noise level and objective, each score as a list over seeds (in seed order)."""
    out: dict = {}
    for sn in sigmas:
        block = {}
        for name in names:
            cs = sorted((c for c in cells if c["sigma_n"] == sn and c["objective"] == name),
                        key=lambda c: c["seed"])
            if not cs:
                continue
            block[name] = {
                "excess_error": {r: [c["excess_error"][r] for c in cs] for r in cs[0]["excess_error"]},
                "mmse": cs[0]["mmse"],
                "air_std": [c["air_std"] for c in cs],
                "weights_tv": [c["weights_tv"] for c in cs],
                "fd_full": [c["fd_full"] for c in cs],
                "fd_floor": cs[0]["fd_floor"],
                "tv_floor": cs[0]["tv_floor"],
                "bands": [c["bands"] for c in cs],
                "stopped": {k: {m: [c["stopped"][k][m] for c in cs] for m in ("air_std", "fd", "weights_tv")}
                            for k in cs[0].get("stopped", {})},
                "posterior": ({u: {m: [c["posterior"][u][m] for c in cs]
                                   for m in ("calibration", "pearson", "coverage", "cpu_s_per_image")}
                               for u in ("samples", "tweedie")} if "posterior" in cs[0] else {}),
                "posterior_mean_excess": [c["posterior"]["mean_excess"] for c in cs if "posterior" in c],
                "wall_s": float(np.mean([c.get("cpu_s", c["wall_s"]) for c in cs])),
                "steps": [c["steps"] for c in cs],
                "seeds": [c["seed"] for c in cs],
            }
        out[str(sn)] = block
    return out


def _med(v):
    """Median over seeds."""
    return statistics.median(v)


def markdown(agg: dict, args) -> str:
    """The report's tables, one section per noise level."""
    lines = ["# Below the noise floor: objectives on the air mixture (`benchmarks/below_noise.py`)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores, one core per run. "
             f"Budget {args.minutes:g} CPU-minutes of training per run (equal for every objective: "
             f"each run times its own steps first), batch {args.batch_size}, lr {args.lr:g} "
             f"({args.lr_schedule}), EMA {args.ema}, {args.n_train} training images, network: "
             f"residual MLP width {args.width} depth {args.depth}; {args.n_eval} samples (Heun, "
             f"40 steps, sigma 80 -> 0) and {args.n_test} test images per cell. Medians over seeds "
             f"{', '.join(map(str, args.seeds))}; per-seed values in the JSON. Excess errors are "
             "per pixel, `E||D - D*||^2 / d`; the MMSE beside them is `E Var[x0 | x_s]`.", ""]
    for sn, block in agg.items():
        if not block:
            continue
        any_cell = next(iter(block.values()))
        mm = any_cell["mmse"]
        lines += [f"## sigma_n = {sn}", "",
                  "MMSE per pixel: " + ", ".join(f"s = {r} sigma_n: {v:.2e}" for r, v in mm.items())
                  + f"; Frechet floor {any_cell['fd_floor']:.4f} (the exact denoiser through the same "
                  f"sampler from the same noise), weight-TV floor {any_cell['tv_floor']:.3f}.", "",
                  *table(["objective", "seeds", "steps", "excess s/8", "excess s/4", "excess s/2", "excess s",
                          "air std / sigma_n", "weights TV", "FD full", "FD / floor", "band power (low -> high)"])]
        for name, c in block.items():
            ex = c["excess_error"]
            bands = np.median(np.array(c["bands"]), 0)
            lines.append(
                f"| {name} | {len(c['seeds'])} | {int(_med(c['steps']))} | "
                + " | ".join(f"{_med(ex[r]):.2e}" for r in ex) + " | "
                f"{_med(c['air_std']):.3f} | {_med(c['weights_tv']):.3f} | {_med(c['fd_full']):.4f} | "
                f"{_med(c['fd_full']) / c['fd_floor']:.2f} | " + " ".join(f"{b:.2f}" for b in bands) + " |")
        lines.append("")
        lines += targets(block)
        lines += stopped_table(block)
        lines += posterior_table(block)
    return "\n".join(lines)


def targets(block: dict, name: str = "default") -> list[str]:
    """The default objective against the clean oracle (medians over seeds)."""
    if name not in block or "clean" not in block:
        return []
    d, o = block[name], block["clean"]
    rows = [("excess error at sigma_n/4 <= 2x the oracle's", _med(d["excess_error"]["0.25"]),
             2 * _med(o["excess_error"]["0.25"]), f"{_med(d['excess_error']['0.25']):.2e} vs oracle "
             f"{_med(o['excess_error']['0.25']):.2e}"),
            ("air std of samples <= 0.1 sigma_n", _med(d["air_std"]), 0.1,
             f"{_med(d['air_std']):.3f} (oracle {_med(o['air_std']):.3f})"),
            ("weights TV <= oracle + 0.02", _med(d["weights_tv"]), _med(o["weights_tv"]) + 0.02,
             f"{_med(d['weights_tv']):.3f} vs oracle {_med(o['weights_tv']):.3f}"),
            ("FD full <= 1.25x oracle", _med(d["fd_full"]), 1.25 * _med(o["fd_full"]),
             f"{_med(d['fd_full']):.4f} vs oracle {_med(o['fd_full']):.4f}")]
    out = [f"Targets for `{name}` (medians):", "",
           *table(["target", "measured", "met"], [(t, txt, "yes" if v <= lim else "no") for t, v, lim, txt in rows])]
    return out + [""]


def stopped_table(block: dict) -> list[str]:
    """Full sampling against sampling stopped at k sigma_n."""
    out = ["Sampling modes (medians): `full` integrates to 0; `stop k` integrates to k sigma_n "
           "and returns D there (k = 1: truncated at sigma_n).", "",
           *table(["objective", "mode", "air std / sigma_n", "FD", "weights TV"])]
    for name, c in block.items():
        out.append(f"| {name} | full | {_med(c['air_std']):.3f} | {_med(c['fd_full']):.4f} | "
                   f"{_med(c['weights_tv']):.3f} |")
        for k, v in c.get("stopped", {}).items():
            out.append(f"| {name} | stop {k} | {_med(v['air_std']):.3f} | {_med(v['fd']):.4f} | "
                       f"{_med(v['weights_tv']):.3f} |")
    return out + [""]


def posterior_table(block: dict) -> list[str]:
    """The posterior mean and std maps of denoising."""
    if not any(c.get("posterior") for c in block.values()):
        return []
    out = [f"Denoising `y = x0 + sigma_n e` ({'posterior mean excess per pixel'}; std maps against the "
           "exact posterior std: mean variance ratio, Pearson correlation, coverage of "
           "|x0 - mean| <= 2 std on the disc, CPU seconds per 8x8 image):", "",
           *table(["objective", "mean excess", "std map", "calibration", "Pearson", "coverage", "CPU s / image"])]
    for name, c in block.items():
        for u, v in c.get("posterior", {}).items():
            out.append(f"| {name} | {_med(c['posterior_mean_excess']):.2e} | {u} | "
                       f"{_med(v['calibration']):.2f} | {_med(v['pearson']):.2f} | "
                       f"{100 * _med(v['coverage']):.1f}% | {_med(v['cpu_s_per_image']):.4f} |")
    return out + [""]


def figure(cells: list[dict], path: Path, sigmas, names) -> None:
    """Samples of seed 0 from the same noise as the exact denoiser's (first row), 8 of the first 16:
    every one that is not the all-zero air image, then air images."""
    plt = pyplot()
    dist = air_mixture(SHAPE)
    exact = draw_samples(lambda x, s: dist.denoise(x.double(), s).float(), 16)
    air = dist.classify(exact, 1.0) == 0
    idx = ([i for i in range(16) if not air[i]] + [i for i in range(16) if air[i]])[:8]
    rows = [("exact D*\n(same noise)", exact[idx, 0].numpy())]
    for sn in sigmas:
        for name in names:
            c = next((c for c in cells if c["sigma_n"] == sn and c["objective"] == name and c["seed"] == 0), None)
            if c is not None:
                rows.append((f"{name}\nsigma_n={sn}", np.array(c["examples"])[idx]))
    fig, axes = plt.subplots(len(rows), 8, figsize=(8 * 0.9, len(rows) * 0.95))
    axes = np.atleast_2d(axes)
    for i, (label, imgs) in enumerate(rows):
        for j in range(8):
            ax = axes[i, j]
            ax.imshow(imgs[j], cmap="gray", vmin=-0.2, vmax=1.5)
            ax.set_xticks([]), ax.set_yticks([])
        axes[i, 0].set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    fig.suptitle("full-sampling samples (seed 0), grey scale -0.2 .. 1.5", fontsize=8)
    save(fig, path, 110)
