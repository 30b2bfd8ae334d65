"""Does the Poisson-Gaussian fit from ONE frame hold on a real microscope? Checked against the 50
captures of each FMD field, and band by band in the stabilised domain where the model works.

Data: the five confocal fields of ``../shared/data/microscopy/fmd_confocal_bpae_b`` (50 raw 512x512
uint8 captures each). For every field:

* **reference**: a line through the per-pixel mean and the per-pixel variance of *successive*
  captures, ``Var[y] = mean((y_t - y_{t+1})^2) / 2 = a (E[y] - mu) + b`` (pixels with mean in
  (3, 200) counts): what the detector does, spatially correlated noise included. Differences of
  neighbouring captures cancel what changes slowly over the 50 captures (bleaching, drift); the
  variance around the 50-capture mean does not, and its slope grows with the lag between the
  captures it compares (the ``lag`` columns), so it is kept only as the former reference;
* **one frame**: :meth:`ambient_med.noise.PoissonGaussian.estimate` on captures 0, 24 and 49
  alone, with the third-difference taps 1 pixel apart (the former estimator) and 2 apart (the
  default: immune to the lag-1 correlation of the scan line);
* **stack**: the same on all 50 captures (what ``train`` fits on a folder, up to its frame limit).

Calibration: every capture is stabilised with the one-frame fit (generalised Anscombe) and the
per-pixel variance of the stabilised captures, again from successive differences, is averaged
per band of photons (``(E[y] - mu) / a`` of the reference). Two noise models are compared with it:
one level for the whole image (variance 1, what the stabilisation promises) and the per-pixel
level of :meth:`~ambient_med.noise.PoissonGaussian.stabilised_variance` at each pixel's photon
count (the GAT's variance is well below 1 under about 2 photons). Also measured: the captures
after ``stabilise_observation`` of an equalising model (``noise_map``; each capture's own map and
top-up draw), which should be at 1 in every band; and the lag-1 noise correlation of the captures.

Run:  python benchmarks/microscopy_noise.py [--fields 1 2 3 4 5]
Writes benchmarks/results/microscopy_noise.{json,md,png}; about half a minute per field.
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
LAGS = (1, 2, 5, 10, 25, 49)


def line_fit(m: np.ndarray, v: np.ndarray) -> PoissonGaussian:
    ok = (m > 3) & (m < 200)
    a, b_eff = np.polyfit(m[ok], v[ok], 1)
    return PoissonGaussian(a, 0.0, -b_eff / a) if b_eff < 0 else PoissonGaussian(a, b_eff, 0.0)


def successive_variance(stack: np.ndarray, lag: int = 1) -> np.ndarray:
    """Per pixel ``mean((x_t - x_{t+lag})^2) / 2``: the noise variance, without slow changes."""
    return ((stack[lag:] - stack[:-lag]) ** 2).mean(0) / 2


def reference_fit(stack: np.ndarray) -> PoissonGaussian:
    return line_fit(stack.mean(0).ravel(), successive_variance(stack).ravel())


def around_mean_fit(stack: np.ndarray) -> PoissonGaussian:
    return line_fit(stack.mean(0).ravel(), stack.var(0, ddof=1).ravel())


def lag_slopes(stack: np.ndarray) -> dict:
    m = stack.mean(0).ravel()
    return {str(k): line_fit(m, successive_variance(stack, k).ravel()).a for k in LAGS}


def lag1_correlation(stack: np.ndarray) -> dict:
    r = stack - stack.mean(0)
    r = r / np.maximum(r.std(0), 1e-9)
    return {"along_rows": float(np.mean(r[:, :, 1:] * r[:, :, :-1])),
            "along_columns": float(np.mean(r[:, 1:] * r[:, :-1]))}


def per_band(values: np.ndarray, photons: np.ndarray) -> list[float | None]:
    out = []
    for lo, hi in zip(BANDS[:-1], BANDS[1:]):
        sel = (photons >= lo) & (photons < hi)
        out.append(float(values[sel].mean()) if sel.sum() >= 200 else None)
    return out


def calibration(stack: np.ndarray, model: PoissonGaussian, ref: PoissonGaussian) -> dict:
    """Per band of reference photons: the measured variance of the stabilised captures, the
    per-pixel model's variance, and the measured variance after equalisation."""
    photons = (stack.mean(0) - ref.mu) / ref.a
    z = np.stack([model.stabilise(f) for f in stack])
    own_lam = np.maximum((stack.mean(0) - model.mu) / model.a, 0.0)
    eq = PoissonGaussian(model.a, model.b, model.mu, equalise=True)
    ze = np.stack([eq.stabilise_observation(f, seed=t) for t, f in enumerate(stack)])
    return {"measured": per_band(successive_variance(z), photons),
            "per_pixel_model": per_band(model.stabilised_variance(own_lam), photons),
            "equalised": per_band(successive_variance(ze), photons)}


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
        stack = read_folder(DATA / str(f)).astype(np.float64)
        ref = reference_fit(stack)
        entry = {"reference": fit_row(ref, ref), "around_mean": fit_row(around_mean_fit(stack), ref),
                 "lag_slopes": lag_slopes(stack), "correlation": lag1_correlation(stack),
                 "median_photons": float(np.median((stack - ref.mu) / ref.a))}
        for stride in (1, 2):
            fits = [PoissonGaussian.estimate(stack[i], stride=stride) for i in FRAMES]
            entry[f"one_frame_stride{stride}"] = [fit_row(m, ref) for m in fits]
            if stride == 2:
                entry["bands"] = calibration(stack, fits[0], ref)
        entry["stack_stride2"] = fit_row(PoissonGaussian.estimate(stack), ref)
        fields[str(f)] = entry
        print(f"field {f}: reference a={ref.a:.3f} mu={ref.mu:.2f}; one frame a = "
              + ", ".join(f"{np.mean([r['a'] for r in entry[f'one_frame_stride{s}']]):.3f} (stride {s})"
                          for s in (1, 2)), flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "fields": a.fields, "frames": list(FRAMES),
            "bands_photons": list(BANDS), "lags": list(LAGS), "seconds": round(time.time() - t0, 1)}
    write_json(a.out / "microscopy_noise.json", {"fields": fields, "meta": meta})
    write_md(a.out / "microscopy_noise.md", fields, meta)
    figure(a.out / "microscopy_noise.png", fields)


def write_md(path: Path, fields: dict, meta: dict) -> None:
    mean = lambda rows, k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    pct = lambda x: f"{100 * x:+.1f}%"  # noqa: E731
    lines = [f"# Poisson-Gaussian fit from one frame against 50 captures (FMD confocal, {meta['date']})", "",
             "Gain `a` in counts per photon. Reference: per-pixel mean against the variance of successive "
             "captures. One frame: the mean over captures "
             f"{', '.join(map(str, meta['frames']))} (each fitted alone), error against the reference.", "",
             "| field | median photons | lag-1 corr. rows / columns | reference a | one frame, stride 1 | "
             "one frame, stride 2 (default) | all 50, stride 2 |", "|---|---|---|---|---|---|---|"]
    for f, r in fields.items():
        s1, s2, st = r["one_frame_stride1"], r["one_frame_stride2"], r["stack_stride2"]
        lines.append(f"| {f} | {r['median_photons']:.2f} | {r['correlation']['along_rows']:.3f} / "
                     f"{r['correlation']['along_columns']:.3f} | {r['reference']['a']:.3f} | "
                     f"{mean(s1, 'a'):.3f} ({pct(mean(s1, 'a_rel_error'))}) | "
                     f"{mean(s2, 'a'):.3f} ({pct(mean(s2, 'a_rel_error'))}) | "
                     f"{st['a']:.3f} ({pct(st['a_rel_error'])}) |")
    lines += ["", "Slope `a` of the variance of captures `lag` apart against the mean, and of the variance around the "
              "50-capture mean (the former reference): it grows with the lag, because the sample changes over the "
              "captures (bleaching, drift), not the detector.", "",
              row(["field", *(f"lag {k}" for k in meta["lags"]), "around the mean"]), rule(2 + len(meta["lags"]))]
    for f, r in fields.items():
        lines.append(row([f, *(f"{v:.3f}" for v in r["lag_slopes"].values()), f"{r['around_mean']['a']:.3f}"]))
    b = meta["bands_photons"]
    names = [f"{lo:g}-{hi:g}" for lo, hi in zip(b[:-1], b[1:])]
    lines += ["", "Variance of the stabilised captures (one-frame fit, stride 2), from successive captures, per band "
              "of photons; the per-pixel model's variance at the same pixels; the captures equalised with the noise "
              "map. One level for the whole image assumes 1. Blank: fewer than 200 pixels.", "",
              row(["field", "", *names]), rule(2 + len(names))]
    for f, r in fields.items():
        for key, label in (("measured", "measured"), ("per_pixel_model", "per-pixel model"),
                           ("equalised", "measured, equalised")):
            lines.append(row([f, label, *("" if v is None else f"{v:.3f}" for v in r["bands"][key])]))
        ratio = [None if m is None or p is None else m / p
                 for m, p in zip(r["bands"]["measured"], r["bands"]["per_pixel_model"])]
        lines.append(row([f, "measured / per-pixel model", *("" if v is None else f"{v:.3f}" for v in ratio)]))
    path.write_text("\n".join(lines) + "\n")


def figure(path: Path, fields: dict) -> None:
    plt = pyplot()
    b = np.array(BANDS)
    centres = np.sqrt(np.maximum(b[:-1], 0.25) * b[1:])
    fig, ax = plt.subplots(1, 1, figsize=(7, 4.2))
    styles = {"measured": ("tab:blue", "o-", "measured (one-frame fit)"),
              "per_pixel_model": ("k", "--", "per-pixel model"),
              "equalised": ("tab:green", "s-", "measured after equalisation (noise map)")}
    for key, (colour, style, label) in styles.items():
        for i, r in enumerate(fields.values()):
            y = np.array([np.nan if v is None else v for v in r["bands"][key]])
            ax.plot(centres, y, style, color=colour, alpha=0.6, ms=3, label=label if i == 0 else None)
    ax.axhspan(0.95, 1.05, color="0.85", label="within 5% of 1")
    ax.set_xscale("log")
    ax.set_xlabel("photons per pixel (reference fit)")
    ax.set_ylabel("variance of stabilised captures")
    ax.set_title("FMD confocal fields 1-5: stabilised noise per band of photons")
    ax.legend(fontsize=8)
    save(fig, path, 120)


if __name__ == "__main__":
    main()
