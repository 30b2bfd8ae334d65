"""MRI benchmark of the priors at work: posterior denoising and undersampled multi-coil
reconstruction on real anatomy, then on real k-space that nobody here simulated.

Simulated part. Axial slices of the MNI152 2009a T1 template (../shared/data; an average of many
subjects, nearly noise-free, skull-stripped) are the clean reference: a 192 x 192 mm box around
the brain, area-averaged to ``--size`` (default 64 x 64, 3 mm pixels), intensities / 255, times a
smooth random phase (a random quadratic, a few radians across the field of view). Each slice is
simulated as 8-coil Cartesian k-space with sigpy birdcage maps (normalised to
``sum_c |S_c|^2 = 1``), centred orthonormal FFT, and white complex noise of std ``sigma`` per real
channel and coil, ``sigma`` set for ``--snr-db`` (20 dB) image SNR:
``10 log10(mean_object |x0|^2 / (2 sigma^2))`` over pixels above 10% of the peak, pooled over the
training slices. With normalised maps the fully sampled coil-combined image ``S^H F^H k`` is
``x0 + sigma e``: these noisy images are the training data of ``naive`` and
``ambient+consistency``; ``clean`` (the oracle) trains on ``x0``.

Split: ``--n-test`` held-out slices evenly spaced through the brain; training uses every
slice with brain more than ``--gap`` slices (mm) from any test slice. One template, so held-out
slices are new anatomy levels of the same average brain, not new subjects.

Priors: the three objectives at equal budget (same network, initial weights, steps, batch of
random ``--patch`` x ``--patch`` patches, learning rate, seed), through the package's training
loop (``ambient_med.training.loop.train``, ``LossConfig`` defaults), one shared intensity scale ``s``
(``sqrt(p99(|y|^2) - 2 sigma^2)`` as ``datasets.build_training_set``), ``sigma_data`` as a user's
run estimates it (``sqrt(var(y) - sigma_n^2)`` for ambient, ``std(y)`` for naive, ``std(x0)``
for clean). Inference on the whole held-out images (the network is convolutional).

Tasks on the held-out slices (metrics below):

1. denoising the fully sampled coil-combined image: posterior mean ``D(y, sigma)`` (one network
   call); the std map from ``--post-samples`` posterior samples (``AmbientPrior.posterior``,
   ``--post-steps`` steps each);
2. reconstruction at R = 4 and 8: 1D Cartesian along the last (phase-encode) axis, a fully
   sampled centre of 1/8 (R = 4) or 1/16 (R = 8) of the lines, the other lines one per equal
   bin of the outer k-space at a random position (seeded, the same mask for every slice); true
   coil maps. Baselines: zero-filled ``A^H y``; SENSE by CG (``ambient_med.recon.cg`` on
   ``(A^H A + beta sigma^2/q^2 I) x = A^H y``, 30 iterations); L1-wavelet
   (``sigpy.mri.app.L1WaveletRecon``, db4, 100 iterations, ``lamda = alpha sigma``). ``alpha``
   and ``beta`` are tuned per R on ``--n-tune`` *training* slices. Priors:
   ``AmbientPrior.reconstruct`` with ``method="dc"`` (CG data consistency) and ``"dps"``
   (Tweedie-covariance guidance, ``--dps-mode``), ``--recon-samples`` chains of
   ``--recon-steps`` steps from ``--sigma-max``.

Real k-space (``--no-real`` skips): ``espirit_brain_8coil/full`` (fully sampled, 230 x 180 x 8)
retrospectively undersampled at R = 4 and 8 (same mask rule) and scored against its fully
sampled SENSE reconstruction; ``bart_brain_8coil/ksp`` (Poisson-disc) scored against BART's
``img`` (the two ESPIRiT-map images, root-sum-of-squares) after a least-squares scale fit of the
magnitude. Coil noise is whitened (``noise.from_kspace`` corner covariance). The priors know
3 mm pixels: the k-space centre is cropped to the same pixel size (about 1 mm native pixels:
230 x 180 -> 76 x 60 at ``--size 64``), which is the acquisition a scanner makes at that
resolution; references are cropped the same way. Coil maps: ESPIRiT (sigpy) on the fully sampled
cropped k-space for ``espirit`` (a separate calibration; the same maps for every method and the
reference), on the fully sampled calibration square for ``bart``. Intensities are brought to the
prior's scale by the 99th percentile of the SENSE image of the undersampled data. The priors
were trained on skull-stripped template brains: the real heads (scalp, skull, fat, finer detail,
other contrast) are out of their distribution. L1-wavelet appears twice: ``alpha`` transferred
from the simulation, and ``l1_wavelet_oracle`` with ``lamda`` tuned on this image against its
reference (the baseline's best case).

Metrics: PSNR in dB (simulation: of the complex image, peak ``max |x0|`` per slice; real data:
of the magnitude, peak ``max |ref|``), SSIM of the magnitude (Wang et al. IEEE TIP 2004: Gaussian
window sigma 1.5 truncated at 3.5 sigma, K1 = 0.01, K2 = 0.03, data range the peak, population
covariances, the 5-pixel border excluded: skimage's ``structural_similarity(gaussian_weights=True,
use_sample_covariance=False)``, reimplemented because skimage is not installed); coverage: the
share of pixels and real channels with ``|mean - x0| <= 2 std`` (``cov2``), and of the K-sample
prediction interval ``|mean - x0| <= t_{K-1}(0.97725) sqrt(1 + 1/K) std`` (``covK``, 95.45% for a
calibrated Gaussian posterior whatever K; with K samples even a perfect sampler gives
``cov2 = P(|t_{K-1}| <= 2 / sqrt(1 + 1/K))``, printed in the table header); network calls per
slice counted in single-image evaluations (forward passes and Jacobian products through the
network, each chain counted: K chains x steps for DC); seconds per slice on this CPU
(``--threads`` torch threads; wall time, so it includes whatever else the machine runs).

    python benchmarks/mri_recon.py --quick            # smoke run, minutes
    python benchmarks/mri_recon.py                     # the CPU run of benchmarks/results
Writes ``mri_recon.json`` (cells ``{task, method, prior, metric, value}``, means over slices;
per-slice values, settings, tuning and timings beside them), ``mri_recon.md`` (the table; text
after the ``<!-- analysis -->`` line of an existing file is kept), ``mri_recon.png`` (simulation)
and ``mri_recon_real.png``. Trained priors go to ``--work`` and are reused when their settings
match (``--retrain`` to force).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from common.figures import image_grid
from common.mni import BOX_MM, MNI, combine, intensity_scale, simulated
from common.mri_baselines import ALPHAS, l1_wavelet, sense_cg, tune
from common.mri_priors import run_sampler, train_priors
from common.mri_real import real_problems, real_score
from common.mri_table import Table, markdown, record, score
from common.results import RESULTS, settings, stem, write_json
from common.scoring import coverage, ideal_cov2
from common.tables import MARKER, analysis
from common.work import quick_folder

from ambient_med.diffusion.sampling import POSTERIOR_STEPS

OBJECTIVES = ("ambient+consistency", "naive", "clean")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64, help="image size (pixels) of the MNI slices")
    p.add_argument("--patch", type=int, default=32, help="training patch size")
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--snr-db", type=float, default=20.0)
    p.add_argument("--n-test", type=int, default=4, help="held-out slices")
    p.add_argument("--gap", type=int, default=3, help="slices (mm) kept free around test slices")
    p.add_argument("--n-tune", type=int, default=4, help="training slices for baseline tuning")
    p.add_argument("--features", type=int, nargs="+", default=[16, 32, 32])
    p.add_argument("--steps", type=int, default=500, help="training steps per prior")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--post-samples", type=int, default=8, help="posterior samples (denoising)")
    p.add_argument("--post-steps", type=int, default=None, help="steps per denoising sample "
                   "(default: the package's POSTERIOR_STEPS)")
    p.add_argument("--recon-samples", type=int, default=4, help="chains per slice (recon)")
    p.add_argument("--recon-steps", type=int, default=24, help="sampler steps per chain (recon)")
    p.add_argument("--sigma-max", type=float, default=10.0, help="recon chains start here "
                   "(model space; the data's sigma_data is about 0.3-0.5)")
    p.add_argument("--dps-mode", default="pigdm", choices=("exact", "pigdm", "dps"))
    p.add_argument("--dps-cg-iters", type=int, default=4, help="inner CG steps for --dps-mode exact")
    p.add_argument("--no-real", action="store_true", help="skip the real k-space part")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto: where the priors train and sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    p.add_argument("--retrain", action="store_true", help="ignore priors cached in --work")
    p.add_argument("--work", type=Path, default=Path("/tmp/ambient-med-bench/mri_recon"))
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if a.quick:
        a.size, a.patch, a.n_test, a.n_tune, a.steps, a.batch_size = 32, 16, 2, 2, 12, 8
        a.post_samples, a.post_steps, a.recon_samples, a.recon_steps = 2, 4, 2, 4
        a.work = quick_folder(a.work)
    return a


def evaluate_simulation(priors, x0_test, k_test, maps, sigma, masks, tuning, args, tab):
    k_post = args.post_samples
    figs = {"truth": np.abs(x0_test[0])}
    # 1. denoising
    y_test = combine(k_test, maps)
    record(tab, "denoise", "noisy_input", "-", [score(y, x) for y, x in zip(y_test, x0_test)])
    figs["noisy"] = np.abs(y_test[0])
    for obj, prior in priors.items():
        rows = []
        for j, (y, x) in enumerate(zip(y_test, x0_test)):
            yt = torch.from_numpy(y)[None, None].to(prior.device)
            t = time.perf_counter()
            mean = prior.denoise(yt, sigma)[0, 0].cpu().numpy()
            t_mean = time.perf_counter() - t
            g = torch.Generator(device=prior.device).manual_seed(args.seed + 100 + j)
            t = time.perf_counter()
            post = prior.posterior(yt, sigma, n_samples=k_post, steps=args.post_steps, generator=g)
            if prior.device.type == "cuda":
                torch.cuda.synchronize()
            t_post = time.perf_counter() - t
            steps = args.post_steps or POSTERIOR_STEPS
            cov2, covk = coverage(mean, post["std"][0, 0].cpu().numpy(), x, k_post)
            rows.append({**score(mean, x), "cov2": cov2, "covK": covk, "calls": 1,
                         "calls_std": k_post * steps, "sec": t_mean, "sec_std": t_post})
            if j == 0:
                figs[f"denoise {obj}"] = np.abs(mean)
                if obj == OBJECTIVES[0]:
                    figs[f"denoise std {obj}"] = post["std"][0, 0].abs().cpu().numpy()
        record(tab, "denoise", "posterior_mean", obj, rows)
        print(f"  denoise {obj:<20s} PSNR {tab.get('denoise', 'posterior_mean', obj, 'psnr'):.2f}", flush=True)
    # 2. reconstruction
    for accel, mask in masks.items():
        task = f"recon_R{accel}"
        tn = tuning[accel]
        base = {"zero_filled": lambda ku: combine(ku, maps),
                "sense_cg": lambda ku: sense_cg(ku, maps, mask, tn["beta"] * sigma**2 / tn["q"] ** 2),
                "l1_wavelet": lambda ku: l1_wavelet(ku, maps, mask, tn["alpha"] * sigma)}
        for name, fn in base.items():
            rows = []
            for j, (k, x) in enumerate(zip(k_test, x0_test)):
                t = time.perf_counter()
                est = fn(k * mask)
                rows.append({**score(est, x), "calls": 0, "sec": time.perf_counter() - t})
                if j == 0:
                    figs[f"R{accel} {name}"] = np.abs(est)
            record(tab, task, name, "-", rows)
        for obj, prior in priors.items():
            for method in ("dc", "dps"):
                rows = []
                for j, (k, x) in enumerate(zip(k_test, x0_test)):
                    out, sec, calls = run_sampler(prior, k * mask, mask, maps, sigma, method, args,
                                                  args.seed + 1000 * accel + j)
                    mean, std = out["mean"][0].cpu().numpy(), out["std"][0].cpu().numpy()
                    cov2, covk = coverage(mean, std, x, args.recon_samples)
                    rows.append({**score(mean, x), "cov2": cov2, "covK": covk, "calls": calls, "sec": sec})
                    if j == 0:
                        figs[f"R{accel} {method} {obj}"] = np.abs(mean)
                        if obj == OBJECTIVES[0]:
                            figs[f"R{accel} {method} std {obj}"] = np.hypot(std.real, std.imag)
                record(tab, task, method, obj, rows)
                print(f"  {task} {method:<3s} {obj:<20s} PSNR {tab.get(task, method, obj, 'psnr'):.2f}  "
                      f"{np.mean([r['sec'] for r in rows]):.1f} s/slice", flush=True)
    return figs


def evaluate_real(priors, tuning, scale, args, tab, rng):
    probs = real_problems(args, rng)
    figs, infos = {}, {}
    for task, pr in probs.items():
        accel = 8 if task.endswith("R8") else 4
        ku0, mask, maps = pr["ku"], pr["mask"], pr["maps"]
        # bring the data to the priors' intensity scale: p99 magnitude of the SENSE image
        sense0 = sense_cg(ku0, maps, mask, 0.0)
        c = scale / float(np.percentile(np.abs(sense0), 99))
        ku, sigma, ref = ku0 * c, pr["sigma"] * c, pr["ref"] * c
        q = float(np.percentile(np.abs(sense0 * c), 99))
        infos[task] = {**pr["info"], "intensity_factor": c, "sigma_after_scaling": sigma}
        if not pr["fit"]:   # the reference is in the units of the k-space (bart's is not)
            obj = np.abs(ref)[np.abs(ref) > 0.1 * np.abs(ref).max()]
            infos[task]["snr_db_reference"] = 10 * math.log10(float(np.mean(obj**2)) / (2 * sigma**2))
        tn = tuning[accel]
        figs[f"{task} reference"] = np.abs(ref)
        base = {"zero_filled": lambda: combine(ku, maps),
                "sense_cg": lambda: sense_cg(ku, maps, mask, tn["beta"] * sigma**2 / q**2),
                "l1_wavelet": lambda: l1_wavelet(ku, maps, mask, tn["alpha"] * sigma)}
        for name, fn in base.items():
            t = time.perf_counter()
            est = fn()
            record(tab, task, name, "-", [{**real_score(est, ref, pr["fit"]), "calls": 0,
                                           "sec": time.perf_counter() - t}])
            figs[f"{task} {name}"] = np.abs(est)
        # the baseline's best case: lamda tuned on this image against its own reference
        best = max(((a, real_score(l1_wavelet(ku, maps, mask, a * sigma), ref, pr["fit"])["psnr"])
                    for a in ALPHAS + (16.0, 32.0)), key=lambda v: v[1])
        t = time.perf_counter()
        est = l1_wavelet(ku, maps, mask, best[0] * sigma)
        record(tab, task, "l1_wavelet_oracle", "-", [{**real_score(est, ref, pr["fit"]), "calls": 0,
                                                       "sec": time.perf_counter() - t}])
        infos[task]["l1_oracle_alpha"] = best[0]
        for obj, prior in priors.items():
            for method in ("dc", "dps"):
                out, sec, calls = run_sampler(prior, ku[None], mask, maps[None], sigma, method, args,
                                              args.seed + 7)
                mean, std = out["mean"][0, 0].cpu().numpy(), out["std"][0, 0].cpu().numpy()
                row = {**real_score(mean, ref, pr["fit"]), "calls": calls, "sec": sec}
                if not pr["fit"]:   # same maps as the reference: coverage of ref = x0 + noise
                    row["cov2"], row["covK"] = coverage(mean, std, ref, args.recon_samples, sigma**2)
                record(tab, task, method, obj, [row])
                figs[f"{task} {method} {obj}"] = np.abs(mean)
                print(f"  {task} {method:<3s} {obj:<20s} PSNR {row['psnr']:.2f}  {sec:.1f} s", flush=True)
    return figs, infos


def targets(tab: Table, args) -> list[str]:
    """The benchmark's targets, checked on the measured means."""
    g = tab.get
    a, n, c = "ambient+consistency", "naive", "clean"
    out = []

    def line(ok, text):
        out.append(f"- [{'x' if ok else ' '}] {text}")

    for task, method in (("denoise", "posterior_mean"), ("recon_R4", "dc"), ("recon_R4", "dps")):
        pa, pn, pc = (g(task, method, p, "psnr") for p in (a, n, c))
        if None in (pa, pn, pc):
            continue
        line(pc - pa <= 0.5, f"{task} {method}: ambient+consistency within 0.5 dB of clean "
                             f"({pa:.2f} vs {pc:.2f} dB, gap {pc - pa:+.2f})")
        line(pa - pn >= 1.0, f"{task} {method}: ambient+consistency >= 1 dB above naive "
                             f"({pa:.2f} vs {pn:.2f} dB, {pa - pn:+.2f})")
    pa, pl = g("recon_R8", "dc", a, "psnr"), g("recon_R8", "l1_wavelet", "-", "psnr")
    calls = g("recon_R8", "dc", a, "calls")
    if pa is not None and pl is not None:
        line(pa - pl >= 2 and calls <= 100, f"recon_R8 dc: >= 2 dB above L1-wavelet with <= 100 calls/slice "
                                            f"({pa:.2f} vs {pl:.2f} dB, {pa - pl:+.2f}; {calls:.0f} calls)")
    for task, method in (("denoise", "posterior_mean"), ("recon_R4", "dc"), ("recon_R8", "dc"),
                         ("recon_R4", "dps"), ("recon_R8", "dps")):
        v = g(task, method, a, "cov2")
        k = args.post_samples if task == "denoise" else args.recon_samples
        vk = g(task, method, a, "covK")
        if v is not None:
            line(0.90 <= v <= 0.98, f"{task} {method} ambient+consistency: 2-std coverage {v:.1%} in 90-98% "
                                    f"(K = {k}: a calibrated posterior gives {ideal_cov2(k):.1%}; "
                                    f"K-corrected interval {vk:.1%}, nominal 95.4%)")
    for task in ("real_espirit_R4", "real_espirit_R8", "real_bart_poisson"):
        pl = g(task, "l1_wavelet", "-", "psnr")
        po = g(task, "l1_wavelet_oracle", "-", "psnr")
        for method in ("dc", "dps"):
            pa = g(task, method, a, "psnr")
            if pa is not None and pl is not None:
                line(pa > pl, f"{task} {method}: ambient+consistency better than L1-wavelet "
                              f"({pa:.2f} vs {pl:.2f} dB transferred lamda, {po:.2f} dB oracle lamda)")
    return out


def main(argv=None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    d = simulated(args.size, args.coils, args.snr_db, args.n_test, args.gap, rng)
    x0, maps, sigma, k_all, masks = d["x0"], d["maps"], d["sigma"], d["k"], d["masks"]
    train_idx, test_idx = d["train"], d["test"]
    y_all = combine(k_all, maps)
    x_tr, y_tr = x0[train_idx], y_all[train_idx]
    scale = intensity_scale(y_tr, sigma)
    print(f"MNI {args.size}x{args.size}: {len(train_idx)} training slices, test slices {test_idx}; "
          f"sigma {sigma:.4f} ({args.snr_db} dB), scale {scale:.4f}", flush=True)

    # priors at equal budget
    t = time.perf_counter()
    priors, train_info = train_priors(OBJECTIVES, x_tr, y_tr, sigma, scale, args, args.work, "mni")
    t_train = time.perf_counter() - t

    # baselines tuned on training slices
    tune_idx = np.linspace(0, len(train_idx) - 1, args.n_tune).round().astype(int)
    q = float(np.percentile(np.abs(y_tr), 99))
    tuning = {accel: {**tune(k_all[train_idx][tune_idx], x_tr[tune_idx], maps, m, sigma, q), "q": q}
              for accel, m in masks.items()}
    print("  tuned " + ", ".join(f"R{a}: alpha {v['alpha']}, beta {v['beta']}" for a, v in tuning.items()),
          flush=True)

    tab = Table()
    t = time.perf_counter()
    figs = evaluate_simulation(priors, x0[test_idx], k_all[test_idx], maps, sigma, masks, tuning,
                               args, tab)
    t_sim = time.perf_counter() - t
    t = time.perf_counter()
    real_info = {}
    if not args.no_real:
        real_figs, real_info = evaluate_real(priors, tuning, scale, args, tab, rng)
    t_real = time.perf_counter() - t

    name = stem("mri_recon", args.quick)
    meta = {
        "settings": settings(args),
        "data": {"mni": str(MNI.name), "size": args.size, "pixel_mm": BOX_MM / args.size,
                 "train_slices": train_idx, "test_slices": test_idx, "sigma": sigma, "scale": scale,
                 "snr_db": args.snr_db, "coils": args.coils,
                 "masks": {str(a): m.astype(int).tolist() for a, m in masks.items()}},
        "training": train_info, "tuning": {str(a): v for a, v in tuning.items()}, "real": real_info,
        "ideal_cov2": {"denoise": ideal_cov2(args.post_samples), "recon": ideal_cov2(args.recon_samples)},
        "wall_seconds": {"train": t_train, "simulation_eval": t_sim, "real_eval": t_real,
                         "total": time.perf_counter() - t_start},
        "torch": torch.__version__, "threads": args.threads,
    }
    result = {"cells": tab.cells, "per_slice": tab.per_slice, "meta": meta}
    write_json(args.out / f"{name}.json", result)
    image_grid(figs, args.out / f"{name}.png", f"held-out MNI slice {test_idx[0]}, magnitudes (std: posterior std maps)")
    if not args.no_real:
        image_grid(real_figs, args.out / f"mri_recon_real{'_quick' if args.quick else ''}.png",
                   "real k-space, magnitudes (priors trained on MNI template slices)")
    table = markdown(tab)
    md_path = args.out / f"{name}.md"
    kept = analysis(md_path) or MARKER
    tr = ", ".join(f"{o} {v['train_seconds']:.0f} s" for o, v in train_info.items())
    md = f"""# MRI benchmark: denoising and reconstruction with the priors

Generated by `python benchmarks/mri_recon.py{' --quick' if args.quick else ''}` (settings in
`{name}.json`). MNI152 template slices at {args.size}x{args.size} ({BOX_MM / args.size:.0f} mm
pixels), {args.coils} birdcage coils, complex noise sigma = {sigma:.4f} ({args.snr_db:g} dB image SNR);
{len(train_idx)} training slices, {len(test_idx)} held-out test slices {test_idx}. Priors: network
features {tuple(args.features)}, {args.steps} steps x batch {args.batch_size} of {args.patch}x{args.patch}
patches, lr {args.lr}, equal for all three (training wall time: {tr}). Denoising std from
K = {args.post_samples} posterior samples; recon samplers K = {args.recon_samples} chains x
{args.recon_steps} steps from sigma_max = {args.sigma_max} (DPS mode `{args.dps_mode}`). Values are means
over the test slices (real data: one image). CPU, {args.threads} torch thread(s); wall time of this
invocation {meta['wall_seconds']['total'] / 60:.1f} min (training {t_train / 60:.1f}, simulation
{t_sim / 60:.1f}, real data {t_real / 60:.1f}; priors whose settings match are reused from `--work`).

cov2: share of pixels x real channels with |mean - truth| <= 2 std (a calibrated posterior
estimated from K samples gives {ideal_cov2(args.post_samples):.1%} at K = {args.post_samples},
{ideal_cov2(args.recon_samples):.1%} at K = {args.recon_samples}); covK: the K-sample prediction interval,
nominal 95.4% for any K. Real data: PSNR/SSIM of magnitudes; `espirit` coverage is of the noisy
fully sampled reference, the interval widened by its noise; `bart` after a least-squares scale fit.

{table}

## Targets

{chr(10).join(targets(tab, args))}

{kept}"""
    md_path.write_text(md)
    print(table)
    print("\n".join(targets(tab, args)))
    print(f"wall time {meta['wall_seconds']['total']:.0f} s")
    return result


if __name__ == "__main__":
    main()
