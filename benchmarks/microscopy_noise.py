"""Does the Poisson-Gaussian fit from ONE frame hold on a real microscope? Checked against the 50
captures of each FMD field, and band by band in the stabilised domain where the model works.

Data: the five confocal fields of ``../shared/data/microscopy/fmd_confocal_bpae_b`` (50 raw 512x512
uint8 captures each). For every field:

* **reference**: a line through the per-pixel mean and variance of the 50 captures,
  ``Var[y] = a (E[y] - mu) + b`` (pixels with mean in (3, 200) counts): what the detector really
  does, spatially correlated noise included;
* **one frame**: :meth:`ambient_med.noise.PoissonGaussian.estimate` on captures 0, 24 and 49
  alone, with the third-difference taps 1 pixel apart (the former estimator) and 2 apart (the
  default: immune to the lag-1 correlation of the scan line);
* **stack**: the same on all 50 captures (what ``train`` fits on a folder, up to its frame limit).

Calibration: every capture is stabilised with a fitted model (generalised Anscombe), and the
per-pixel variance of the 50 stabilised captures around their mean is averaged per band of
photons (``(E[y] - mu) / a`` of the reference). The model assumes 1 everywhere; the figure shows
where that holds within 5%. Also measured: the lag-1 noise correlation of the captures (their
residuals around the 50-capture mean).

Run:  python benchmarks/microscopy_noise.py [--fields 1 2 3 4 5]
Writes benchmarks/results/microscopy_noise.{json,md,png}; a few seconds per field.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common.figures import pyplot, save
from common.fmd_data import read_folder
from common.paths import FMD
from common.results import RESULTS, write_json
from common.tables import row, rule

from ambient_med.noise import PoissonGaussian

DATA = FMD / "raw"
BANDS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)   # photons
FRAMES = (0, 24, 49)


def reference_fit(stack: np.ndarray) -> PoissonGaussian:
    m, v = stack.mean(0).ravel(), stack.var(0, ddof=1).ravel()
    ok = (m > 3) & (m < 200)
    a, b_eff = np.polyfit(m[ok], v[ok], 1)
    return PoissonGaussian(a, 0.0, -b_eff / a) if b_eff < 0 else PoissonGaussian(a, b_eff, 0.0)


def lag1_correlation(stack: np.ndarray) -> dict:
    r = stack - stack.mean(0)
    r = r / np.maximum(r.std(0), 1e-9)
    return {"along_rows": float(np.mean(r[:, :, 1:] * r[:, :, :-1])),
            "along_columns": float(np.mean(r[:, 1:] * r[:, :-1]))}


def band_variance(stack: np.ndarray, model: PoissonGaussian, ref: PoissonGaussian) -> list[float | None]:
    """Mean per-pixel variance of the stabilised captures, per band of reference photons."""
    z = np.stack([model.stabilise(f) for f in stack])
    v = z.var(0, ddof=1)
    photons = (stack.mean(0) - ref.mu) / ref.a
    out = []
    for lo, hi in zip(BANDS[:-1], BANDS[1:]):
        sel = (photons >= lo) & (photons < hi)
        out.append(float(v[sel].mean()) if sel.sum() >= 200 else None)
    return out


def fit_row(model: PoissonGaussian, ref: PoissonGaussian) -> dict:
    return {"a": model.a, "b": model.b, "mu": model.mu, "a_rel_error": model.a / ref.a - 1}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fields", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if not DATA.is_dir():
        raise SystemExit(f"FMD captures not found at {DATA}")
    t0 = time.time()
    fields = {}
    for f in a.fields:
        stack = read_folder(DATA / str(f))
        ref = reference_fit(stack)
        entry = {"reference": fit_row(ref, ref), "correlation": lag1_correlation(stack),
                 "median_photons": float(np.median((stack - ref.mu) / ref.a))}
        for stride in (1, 2):
            fits = [PoissonGaussian.estimate(stack[i], stride=stride) for i in FRAMES]
            entry[f"one_frame_stride{stride}"] = [fit_row(m, ref) for m in fits]
            entry[f"bands_stride{stride}"] = band_variance(stack, fits[0], ref)
        entry["stack_stride2"] = fit_row(PoissonGaussian.estimate(stack), ref)
        entry["bands_reference"] = band_variance(stack, ref, ref)
        fields[str(f)] = entry
        print(f"field {f}: reference a={ref.a:.3f} mu={ref.mu:.2f}; one frame a = "
              + ", ".join(f"{np.mean([r['a'] for r in entry[f'one_frame_stride{s}']]):.3f} (stride {s})"
                          for s in (1, 2)), flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "fields": a.fields, "frames": list(FRAMES),
            "bands_photons": list(BANDS), "seconds": round(time.time() - t0, 1)}
    write_json(a.out / "microscopy_noise.json", {"fields": fields, "meta": meta})
    write_md(a.out / "microscopy_noise.md", fields, meta)
    figure(a.out / "microscopy_noise.png", fields)


def write_md(path: Path, fields: dict, meta: dict) -> None:
    mean = lambda rows, k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    lines = [f"# Poisson-Gaussian fit from one frame against 50 captures (FMD confocal, {meta['date']})", "",
             "Gain `a` in counts per photon. One frame: the mean over captures "
             f"{', '.join(map(str, meta['frames']))} (each fitted alone). Lag-1 correlation of the noise"
             " (residuals around the 50-capture mean).", "",
             "| field | median photons | lag-1 corr. rows / columns | reference a | one frame, stride 1 | "
             "one frame, stride 2 (default) | all 50, stride 2 |", "|---|---|---|---|---|---|---|"]
    for f, r in fields.items():
        s1, s2, st = r["one_frame_stride1"], r["one_frame_stride2"], r["stack_stride2"]
        lines.append(f"| {f} | {r['median_photons']:.2f} | {r['correlation']['along_rows']:.3f} / "
                     f"{r['correlation']['along_columns']:.3f} | {r['reference']['a']:.3f} | "
                     f"{mean(s1, 'a'):.3f} ({100 * mean(s1, 'a_rel_error'):+.1f}%) | "
                     f"{mean(s2, 'a'):.3f} ({100 * mean(s2, 'a_rel_error'):+.1f}%) | "
                     f"{st['a']:.3f} ({100 * st['a_rel_error']:+.1f}%) |")
    b = meta["bands_photons"]
    names = [f"{lo:g}-{hi:g}" for lo, hi in zip(b[:-1], b[1:])]
    lines += ["", "Variance of the stabilised captures around their mean, per band of photons "
              "(the model assumes 1; blank: fewer than 200 pixels).", "",
              row(["field", "fit", *names]), rule(2 + len(names))]
    for f, r in fields.items():
        for key, label in (("bands_stride1", "one frame, stride 1"), ("bands_stride2", "one frame, stride 2"),
                           ("bands_reference", "50-capture reference")):
            lines.append(f"| {f} | {label} | " + " | ".join("" if v is None else f"{v:.3f}" for v in r[key]) + " |")
    path.write_text("\n".join(lines) + "\n")


def figure(path: Path, fields: dict) -> None:
    plt = pyplot()
    b = np.array(BANDS)
    centres = np.sqrt(np.maximum(b[:-1], 0.25) * b[1:])
    fig, ax = plt.subplots(1, 1, figsize=(7, 4.2))
    styles = {"bands_stride1": ("tab:red", "one frame, stride 1"), "bands_stride2": ("tab:blue", "one frame, stride 2"),
              "bands_reference": ("k", "50-capture reference")}
    for key, (colour, label) in styles.items():
        for i, r in enumerate(fields.values()):
            y = np.array([np.nan if v is None else v for v in r[key]])
            ax.plot(centres, y, "o-", color=colour, alpha=0.6, ms=3, label=label if i == 0 else None)
    ax.axhspan(0.95, 1.05, color="0.85", label="within 5% of 1")
    ax.set_xscale("log")
    ax.set_xlabel("photons per pixel (reference fit)")
    ax.set_ylabel("variance of stabilised captures")
    ax.set_title("FMD confocal fields: is the stabilised noise unit-variance?")
    ax.legend(fontsize=8)
    save(fig, path, 120)


if __name__ == "__main__":
    main()
