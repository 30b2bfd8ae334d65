"""Learning curves against CPU-minutes (``fmd_curve.py``, ``mri_curve.py``): the options they
share, training slice by slice to the budget with the marks scored on the way, the report.

A run trains in slices of ``--slice`` steps; after each slice its process CPU time (all
threads) is added to the run's total and its ``Progress`` saved; whenever the total passes a
mark of ``--marks`` CPU-minutes, the model of that moment is scored. A rerun continues from the
progress file and scores only the marks not reached yet.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .figures import save
from .results import RESULTS, run_meta, stem, write_json
from .tables import analysis
from .work import Progress, quick_folder

MARKS = (5.0, 15.0, 30.0, 60.0)


def curve_args(p: argparse.ArgumentParser, work: Path, argv=None) -> argparse.Namespace:
    """The options every learning-curve script shares (marks, budget, slices, threads, --quick)."""
    p.add_argument("--marks", type=float, nargs="+", default=list(MARKS), help="CPU-minutes")
    p.add_argument("--budget", type=float, default=60.0, help="stop each run at this many CPU-minutes")
    p.add_argument("--slice", type=int, default=25, help="steps between CPU-time checks and checkpoints")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=work)
    p.add_argument("--quick", action="store_true", help="0.2 and 0.5 CPU-minute marks, 5-step slices")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if a.quick:
        a.marks, a.budget, a.slice, a.work = [0.2, 0.5], 0.5, 5, quick_folder(a.work)
    return a


def train_to_budget(name: str, prog: Progress, a, train_slice, score, log) -> dict:
    """Train by ``train_slice(k)`` (steps ``k`` to ``k + a.slice``; returns the model to score)
    until ``a.budget`` CPU-minutes; at each mark passed, ``score(model)`` (a dict of values)."""
    while prog.d["cpu_s"] / 60 < a.budget:
        c0, k = time.process_time(), prog.d["steps"]
        model = train_slice(k)
        prog.d["steps"] = k + a.slice
        prog.d["cpu_s"] += time.process_time() - c0
        for mark in a.marks:
            if prog.d["cpu_s"] / 60 >= mark and str(mark) not in prog.d["marks"]:
                s = score(model)
                prog.d["marks"][str(mark)] = {"steps": prog.d["steps"], "cpu_min": prog.d["cpu_s"] / 60, **s}
                log(f"  {name}: {mark:g} CPU-min mark at step {prog.d['steps']}: "
                    + ", ".join(f"{t} {v:.2f}" for t, v in s.items()))
        prog.save()
    return prog.d


def mark_cells(run: dict, marks, key: str) -> list[str]:
    """A run's ``key`` at each mark, to 2 decimals; blank where the mark is not reached yet."""
    return [f"{run['marks'][str(m)][key]:.2f}" if str(m) in run["marks"] else "" for m in marks]


def plot_marks(ax, curves: dict, key: str, label=lambda name: name) -> None:
    """One line per run: ``key`` against the CPU-minutes of its marks."""
    for name, run in curves.items():
        pts = sorted((v["cpu_min"], v[key]) for v in run["marks"].values())
        if pts:
            ax.plot(*zip(*pts), "o-", label=label(name))


def curve_meta(a, **extra) -> dict:
    """The date, torch, threads, budget and marks of a curve run, then ``extra``."""
    return {**run_meta(a.threads), "budget_cpu_min": a.budget, "marks": a.marks, **extra}


def write_curves(a, name: str, curves: dict, meta: dict, lines: list[str], fig, dpi: int) -> None:
    """``<name>.json`` (curves and meta), ``<name>.md`` (``lines``, then the hand-written reading
    of the existing report, from its ``<!-- analysis -->`` line on) and ``<name>.png`` (``fig``)
    in ``a.out``; ``<name>_quick.*`` for --quick."""
    name = stem(name, a.quick)
    write_json(a.out / f"{name}.json", {"curves": curves, "meta": meta})
    md = a.out / f"{name}.md"
    kept = analysis(md)
    md.write_text("\n".join(lines) + "\n" + (f"\n{kept}" if kept else ""))
    save(fig, a.out / f"{name}.png", dpi)
    print("\n".join(lines))
