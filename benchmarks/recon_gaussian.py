"""Reconstruction samplers on the MRI benchmark's own geometry, driven by an EXACT Gaussian prior.

The geometry, data and noise of ``mri_recon.py`` (MNI template slices at 64x64 with a random
smooth phase, 8 birdcage coils, 20 dB, Cartesian line masks at R = 4 and 8, the same seed), but
the prior is a stationary complex Gaussian fitted to the clean training slices: the power
spectrum ``P(k) = mean |F x0|^2`` (centred orthonormal FFT). Its MMSE denoiser is the Wiener
filter ``D(x, sigma) = F^H [P / (P + 2 sigma^2)] F x`` (``sigma`` per real channel), and its
posterior mean given undersampled multi-coil k-space is a linear solve,

    (A^H A + 2 sigma_y^2 C^{-1}) x = A^H y,   C^{-1} = F^H diag(1/P) F,   A = M F S,

done here by the package's CG. Every sampler (``dc``; ``dps`` in the modes ``exact`` and
``pigdm``) driven by that denoiser must land on that posterior mean: what it loses is the
sampler's, not the prior's. Each runs at the package's default steps (128 from sigma_max 80) and
at the settings ``mri_recon.py`` uses (24 steps from sigma_max 10), K chains per slice. The
K-chain mean carries Monte-Carlo error ``tr(Cov) / K`` on top of the exact mean's; ``mc floor``
is the PSNR a perfect sampler's K-mean of independent chains would have (exact MSE plus the
samples' variance / K). Each sampler runs with independent chains and with antithetic pairs
(``antithetic=True``, the package default: a pair's mean is exact for this affine denoiser).
SENSE-CG and L1-wavelet (tuned as in ``mri_recon.py``) give the classical lines.

Run:  python benchmarks/recon_gaussian.py [--quick]
Writes benchmarks/results/recon_gaussian.{json,md} (``--quick``: ``recon_gaussian_quick.*``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common.mni import combine, simulated
from common.mri_baselines import l1_wavelet, sense_cg, tune
from common.results import RESULTS, run_meta, settings, stem, write_json
from common.scoring import psnr
from common.tables import analysis, table

from ambient_med.recon import StationaryGaussian, sample_dc, sample_dps
from ambient_med.recon.mri import measurement, sense_operator, to_complex_image

SETTINGS = {"default (128 steps from 80)": dict(steps=None, sigma_max=80.0),
            "mri_recon.py (24 steps from 10)": dict(steps=24, sigma_max=10.0)}
SAMPLERS = {"dc": dict(method="dc"), "dps exact": dict(method="dps", mode="exact"),
            "dps pigdm": dict(method="dps", mode="pigdm")}
CHAINS = {"iid": False, "antithetic": True}


def run_sampler(name: str, setting: dict, den, ku, maps, mask, sigma, sigma_data, k, seed,
                antithetic: bool = True) -> tuple[np.ndarray, float, float]:
    fwd, adj = sense_operator(torch.from_numpy(maps)[None], torch.from_numpy(mask.astype(np.float32)))
    y = measurement(torch.from_numpy(ku)[None])
    g = torch.Generator().manual_seed(seed)
    spec = SAMPLERS[name]
    common = dict(n_samples=k, steps=setting["steps"], sigma_max=setting["sigma_max"], generator=g, chunk=k,
                  antithetic=antithetic)
    t = time.perf_counter()
    with torch.no_grad() if spec["method"] == "dc" else torch.enable_grad():
        if spec["method"] == "dc":
            out = sample_dc(den, fwd, adj, y, sigma, sigma_data=sigma_data, **common)
        else:
            out = sample_dps(den, fwd, adj, y, sigma, mode=spec["mode"], sigma_data=sigma_data, **common)
    sec = time.perf_counter() - t
    mean = to_complex_image(out["mean"])[0].detach().numpy()
    var = float((out["std"].detach() ** 2).sum()) if k > 1 else 0.0
    return mean, var, sec


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--snr-db", type=float, default=20.0)
    p.add_argument("--n-test", type=int, default=4)
    p.add_argument("--chains", type=int, default=8, help="K chains per slice")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="2 test slices, 2 chains: checks the path")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.n_test, args.chains = 2, 2
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)        # the same draws, in the same order, as mri_recon.py
    d = simulated(args.size, args.coils, args.snr_db, args.n_test, 3, rng)
    x0, maps, sigma, k_all, masks = d["x0"], d["maps"], d["sigma"], d["k"], d["masks"]
    train_idx, test_idx = d["train"], d["test"]
    den = StationaryGaussian.fit(x0[train_idx])
    sigma_data = den.sigma_data
    y_tr = combine(k_all[train_idx], maps)
    q = float(np.percentile(np.abs(y_tr), 99))
    tune_idx = np.linspace(0, len(train_idx) - 1, 4).round().astype(int)
    rows = []
    for accel, mask in masks.items():
        tuning = tune(k_all[train_idx][tune_idx], x0[train_idx][tune_idx], maps, mask, sigma, q)
        per = {}
        for j, z in enumerate(test_idx):
            ku, ref = k_all[z] * mask, x0[z]
            exact = den.posterior_mean(ku, maps, mask, sigma).numpy()
            add = lambda key, v: per.setdefault(key, []).append(v)  # noqa: E731
            add(("exact Gaussian posterior mean", "-"), (psnr(exact, ref), 0.0, 0.0))
            add(("SENSE-CG (tuned)", "-"), (psnr(sense_cg(ku, maps, mask, tuning["beta"] * sigma**2 / q**2), ref), 0.0, 0.0))
            add(("L1-wavelet (tuned)", "-"), (psnr(l1_wavelet(ku, maps, mask, tuning["alpha"] * sigma), ref), 0.0, 0.0))
            mse_exact = float(np.mean(np.abs(exact - ref) ** 2))
            for sname, setting in SETTINGS.items():
                for name in SAMPLERS:
                    for cname, anti in CHAINS.items():
                        mean, var, sec = run_sampler(name, setting, den, ku, maps, mask, sigma, sigma_data,
                                                     args.chains, args.seed + j, anti)
                        floor = 10 * np.log10(np.abs(ref).max() ** 2 / (mse_exact + var / ref.size / args.chains))
                        ok = bool(np.isfinite(mean).all()) and np.abs(mean).max() < 1e3 * np.abs(ref).max()
                        add((name, f"{sname}, {cname}"),
                            (psnr(mean, ref) if ok else float("nan"), floor if not anti else 0.0, sec))
        for (method, setting), vals in per.items():
            v = np.array(vals)
            rows.append({"R": accel, "method": method, "setting": setting, "psnr": float(v[:, 0].mean()),
                         "mc_floor": float(v[:, 1].mean()) if v[:, 1].any() and np.isfinite(v[:, 0]).all() else None,
                         "seconds_per_slice": float(v[:, 2].mean()), "per_slice": v[:, 0].tolist()})
        ex = next(r["psnr"] for r in rows if r["R"] == accel and r["method"].startswith("exact"))
        for r in rows:
            if r["R"] == accel:
                r["gap_to_exact"] = ex - r["psnr"]
        print(f"R{accel}: " + ", ".join(f"{r['method']} [{r['setting']}] {r['psnr']:.2f}"
                                        for r in rows if r["R"] == accel), flush=True)
    meta = {"settings": settings(args), "test_slices": test_idx, "sigma": sigma, "sigma_data": sigma_data,
            "wall_seconds": time.perf_counter() - t0, **run_meta()}
    name = stem("recon_gaussian", args.quick)
    write_json(args.out / f"{name}.json", {"rows": rows, "meta": meta})
    md = args.out / f"{name}.md"
    md.write_text(markdown(rows, meta) + ("" if args.quick else "\n" + analysis(md)))   # keeps the reading
    print(markdown(rows, meta))
    return {"rows": rows, "meta": meta}


def markdown(rows: list[dict], meta: dict) -> str:
    s = meta["settings"]
    out = ["# Reconstruction samplers with an exact Gaussian prior (benchmarks/recon_gaussian.py)\n",
           f"{meta['date']}; MNI {s['size']}x{s['size']}, {s['coils']} coils, {s['snr_db']} dB "
           f"(sigma {meta['sigma']:.4f} per real channel), test slices {meta['test_slices']}, "
           f"{s['chains']} chains per slice, CPU {s['threads']} thread(s), wall time "
           f"{meta['wall_seconds'] / 60:.1f} min. PSNR (dB) of the complex image, mean over the test "
           "slices. `gap` = exact posterior mean's PSNR minus this row's; `mc floor` = a perfect "
           "sampler's K-chain mean.\n"]
    for accel in sorted({r["R"] for r in rows}):
        out += [f"\n## R = {accel}\n", *table(["method", "sampler settings", "PSNR", "gap to exact", "mc floor", "s/slice"])]
        for r in (r for r in rows if r["R"] == accel):
            fl = "" if r["mc_floor"] is None else f"{r['mc_floor']:.2f}"
            if not np.isfinite(r["psnr"]):
                out.append(f"| {r['method']} | {r['setting']} | diverged | | | {r['seconds_per_slice']:.1f} |")
                continue
            out.append(f"| {r['method']} | {r['setting']} | {r['psnr']:.2f} | {r['gap_to_exact']:+.2f} | "
                       f"{fl} | {r['seconds_per_slice']:.1f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
