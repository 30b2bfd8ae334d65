"""The results table of the MRI benchmark (``mri_recon.py``): cells ``{task, method, prior, metric,
value}`` (means over slices, per-slice values beside them), the scores that fill them, and their
Markdown rendering."""

from __future__ import annotations

import numpy as np

from .scoring import psnr, ssim
from .tables import row, rule


class Table:
    """Cells ``{task, method, prior, metric, value}`` and the per-slice values behind each."""

    def __init__(self):
        self.cells, self.per_slice = [], {}

    def add(self, task, method, prior, metric, values):
        values = [float(v) for v in np.atleast_1d(values)]
        self.cells.append({"task": task, "method": method, "prior": prior, "metric": metric,
                           "value": float(np.mean(values))})
        self.per_slice[f"{task}|{method}|{prior}|{metric}"] = values

    def get(self, task, method, prior, metric):
        for c in self.cells:
            if (c["task"], c["method"], c["prior"], c["metric"]) == (task, method, prior, metric):
                return c["value"]
        return None


def record(tab: Table, task: str, method: str, prior, rows: list[dict]) -> None:
    """One cell per metric of ``rows`` (one dict of metrics per slice)."""
    for metric in rows[0]:
        tab.add(task, method, prior, metric, [r[metric] for r in rows])


def score(est: np.ndarray, ref: np.ndarray, *, magnitude: bool = False) -> dict:
    """PSNR (complex, or magnitude) and SSIM of the magnitude, peak max |ref|."""
    peak = float(np.abs(ref).max())
    e, r = (np.abs(est), np.abs(ref)) if magnitude else (est, ref)
    return {"psnr": psnr(e, r, peak), "ssim": ssim(np.abs(est), np.abs(ref), peak)}


METRICS = (("psnr", "PSNR dB", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"), ("cov2", "cov2", "{:.1%}"),
           ("covK", "covK", "{:.1%}"), ("calls", "net calls/slice", "{:.0f}"),
           ("sec", "s/slice", "{:.2f}"))


def markdown(tab: Table) -> str:
    """One row per (task, method, prior) in the order measured, one column per metric."""
    seen = list(dict.fromkeys((c["task"], c["method"], c["prior"]) for c in tab.cells))
    rows = [row(["task", "method", "prior", *(m[1] for m in METRICS)]), rule(3 + len(METRICS))]
    for task, method, prior in seen:
        vals = []
        for m, _, fmt in METRICS:
            v = tab.get(task, method, prior, m)
            if m == "calls" and task == "denoise" and method == "posterior_mean":
                vals.append(f"1 (+{tab.get(task, method, prior, 'calls_std'):.0f} for std)")
            elif m == "sec" and task == "denoise" and method == "posterior_mean":
                vals.append(f"{v:.2f} (+{tab.get(task, method, prior, 'sec_std'):.1f} for std)")
            else:
                vals.append("" if v is None else fmt.format(v))
        rows.append(row([task, method, prior, *vals]))
    return "\n".join(rows)
