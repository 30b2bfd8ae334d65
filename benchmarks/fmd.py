"""FMD confocal benchmark: denoise real fluorescence captures with a prior learned from
noisy captures alone, against BM3D, Noise2Void and a supervised oracle, in one run and one table.

Data: ``../shared/data/microscopy/fmd_confocal_bpae_b`` (FMD, Zhang et al. CVPR 2019,
Confocal_BPAE_B): 50 raw 512x512 uint8 captures of each of 5 fields of view and their 50-capture
averages. Every learned method trains on random patches of the *single raw captures* of fields
1-4 (the oracle also sees their averages, nothing else does); all are scored on raw captures of
field 5 against its 50-capture average, which no method ever sees.

Noise model (docs/design.md section 6). ``y = a Poisson(x/a) + N(mu, b)`` with ``(a, b, mu)`` fitted by
:meth:`ambient_med.noise.PoissonGaussian.estimate` from the noisy data alone (per training
folder while building the training set, per test capture at test time, as ``denoise --sigma
auto`` does); everything works in the generalised-Anscombe domain ``z = f(y)`` (noise ~N(0, 1))
and goes back to data units by the exact unbiased inverse ``invert_mean``; posterior samples by
the algebraic inverse ``invert_sample``. BM3D (the ``bm3d`` package) gets the same ``z`` and
``sigma = 1`` and the same unbiased inverse.

Methods (same U-Net, ``--features``, same patches, batch, steps, optimiser and EMA for all
learned rows; ``ambient_med.training.loop.train`` for the three diffusion objectives):

* ``noisy``: the raw capture;
* ``bm3d``: BM3D on ``z`` (profile ``np``, both stages), unbiased inverse;
* ``n2v``: Noise2Void (Krull et al., CVPR 2019), written here because CAREamics would replace
  the package's torch: blind-spot masking of one random pixel per ``--n2v-box``^2 cell of every
  patch, each replaced by a random other pixel of its 5x5 neighbourhood, MSE on the masked
  pixels only; the same U-Net without the diffusion preconditioning (a plain ``z -> z`` map:
  the EDM skip path would hand the masked pixel's replacement to the output), trained on ``z``;
* ``naive``: the ``naive`` prior (score matching on the noisy captures as if clean), posterior
  mean ``D(z, 1)``;
* ``ambient+consistency``: the package's objective, posterior mean ``D(z, 1)``;
* ``oracle (clean prior)``: the ``clean`` objective on the averages of fields 1-4 mapped to
  ``z`` by ``E[f(y) | x]`` (so that ``invert_mean`` is its exact inverse), posterior mean
  ``D(z, 1)``: the same engine with clean data (docs/design.md section 4);
* ``oracle (supervised)``: the same network at ``sigma = 1`` trained by MSE from raw-capture
  patches to the co-located average patches (in ``z``): the best this network learns with clean
  targets and the real, spatially correlated noise at this budget.

Posterior means are computed by :func:`ambient_med.diffusion.tiling.tiled_apply` over the 512x512 captures
(tile = training patch, overlap a quarter). Uncertainty (``ambient+consistency``):
``--samples`` posterior samples by the package's stochastic posterior sampler on
``--unc-crops`` crops of ``--unc-size`` pixels, whole crops at a time (a convolutional network
without attention; per-tile sampling would blend independent samples in the tile overlaps and
shrink their variance there); coverage of ``mean +- 2 std`` and the Pearson correlation of std
with the absolute error over pixels, against the average and, second, with the average's own
noise (variance over the 50 captures / 50, plus rounding) added to the interval.

    PYTHONPATH=. python benchmarks/fmd.py --quick           # CPU smoke run (minutes), /tmp
    PYTHONPATH=. python benchmarks/fmd.py --threads 1       # the real run (see fmd.md)

Writes ``benchmarks/results/fmd.json`` (``cells``: one per table cell, keys method, metric,
value), ``fmd.md`` and ``fmd.png``. Trained networks are kept in ``--work-dir`` (priors as
``.safetensors``); ``--reuse`` evaluates those instead of training again.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from common.figures import pyplot, save
from common.fmd_data import DATA_RANGE, crop_for_quick, expected_z, reference_fit, test_field, training_setup, unc_crops
from common.fmd_methods import LABEL, LEARNED, SHORT, denoiser_fn, posterior_mean, train_methods
from common.paths import FMD as DATA
from common.results import RESULTS, settings, write_json
from common.scoring import psnr, ssim_uniform
from common.tables import analysis, table
from common.work import quick_folder

from ambient_med.diffusion.networks import count_parameters
from ambient_med.diffusion.sampling import POSTERIOR_STEPS, denoise_posterior
from ambient_med.noise import PoissonGaussian
from ambient_med.prior import AmbientPrior


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--train-fields", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--test-field", type=int, default=5)
    p.add_argument("--test-captures", type=int, nargs="+", default=[0, 24, 49],
                   help="indices (sorted file order) of the field's raw captures to score")
    p.add_argument("--methods", nargs="+", default=list(LEARNED), choices=LEARNED)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--features", type=int, nargs="+", default=[16, 32, 32])
    p.add_argument("--n2v-box", type=int, default=6, help="one masked pixel per box x box cell")
    p.add_argument("--samples", type=int, default=8, help="posterior samples for the std map")
    p.add_argument("--posterior-steps", type=int, default=POSTERIOR_STEPS)
    p.add_argument("--unc-crops", type=int, default=3)
    p.add_argument("--unc-size", type=int, default=128)
    p.add_argument("--no-ablations", action="store_true",
                   help="skip the noise-parameter ablations (BM3D with the 50-capture gain fit; "
                        "the ambient posterior mean at sigma 0.9 and 1.1)")
    p.add_argument("--loss", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override the microscopy-2d protocol's loss settings for the priors "
                        "(e.g. sure_fraction=0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/ambient_med_fmd"))
    p.add_argument("--reuse", action="store_true", help="load trained networks from --work-dir")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (writes to /tmp unless --out)")
    p.add_argument("--diagnose", action="store_true",
                   help="after a run: with the networks in --work-dir, on the first test capture, the "
                        "ambient posterior mean D(z, c) for c around 1, the error of each learned method "
                        "by reference intensity, and the posterior-sample average on the first "
                        "uncertainty crop; writes fmd_diagnostics.json")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.batch_size, a.patch, a.warmup = 6, 2, 32, 2
        a.test_captures, a.samples, a.posterior_steps = [0], 2, 4
        a.unc_crops, a.unc_size, a.n2v_box = 1, 32, 4
        a.work_dir = quick_folder(a.work_dir)
    if a.out is None:
        a.out = Path("/tmp/ambient_med_fmd_quick_results") if a.quick else RESULTS
    return a


def scores(ref: np.ndarray, xs) -> dict:
    """PSNR and SSIM of each of ``xs`` against the 50-capture average, over the 8-bit range."""
    return {"psnr": [psnr(x, ref, DATA_RANGE) for x in xs], "ssim": [ssim_uniform(x, ref, DATA_RANGE) for x in xs]}


def ablations(args, nets, caps, models, stack, ref, scale, sn, log) -> dict:
    """The noise parameters: BM3D with the 50-capture gain fit, the ambient posterior mean at
    0.9 and 1.1 sigma, how far the single-image fit's ``z`` noise is from N(0, 1)."""
    import bm3d

    out = {}
    refm = reference_fit(stack)
    out["reference_fit"] = refm.params
    xs = [refm.invert_mean(bm3d.bm3d(refm.stabilise(y), 1.0)) for y in caps]
    s = scores(ref, xs)
    out["bm3d_reference_fit_psnr"], out["bm3d_reference_fit_ssim"] = s["psnr"], s["ssim"]
    if "ambient+consistency" in nets:
        for c in (0.9, 1.1):
            fn = denoiser_fn("ambient+consistency", nets["ambient+consistency"], c * sn)
            out[f"ambient_mean_at_sigma_{c}_psnr"] = [
                psnr(posterior_mean(fn, y, model, scale, args.patch), ref, DATA_RANGE) for y, model in zip(caps, models)]
    # how far the single-image fit's z noise is from N(0, 1), by intensity, over the 50 captures
    zs = models[0].stabilise(stack)
    zv, mean = zs.var(0, ddof=1), stack.mean(0)
    bins = [(0, 5), (5, 10), (10, 20), (20, 50), (50, 256)]
    out["z_noise_variance_by_mean"] = {
        f"{lo}-{hi}": {"share": float(((mean >= lo) & (mean < hi)).mean()),
                       "var": float(zv[(mean >= lo) & (mean < hi)].mean()) if ((mean >= lo) & (mean < hi)).any() else None}
        for lo, hi in bins}
    zc = zs - zs.mean(0)
    out["z_noise_neighbour_correlation"] = {
        "x": float((zc[:, :, 1:] * zc[:, :, :-1]).mean() / zc.var()),
        "y": float((zc[:, 1:] * zc[:, :-1]).mean() / zc.var())}
    log(f"ablations: {json.dumps(out)}")
    return out


def uncertainty(args, net, caps, models, ref, ref_var, scale, sn, log) -> tuple[dict, dict]:
    """Posterior samples of the ambient prior on the crops with most signal: coverage of
    ``mean +- 2 std`` and the correlation of std with the error (module doc)."""
    g = torch.Generator().manual_seed(args.seed + 1)
    where = unc_crops(ref, args.unc_crops, args.unc_size)
    cov, cov_ref, corr, errs, stds, z_cov = [], [], [], [], [], []
    figure_post = None
    for k, (i, j) in enumerate(where):
        ci = k % len(caps)
        y, model = caps[ci], models[ci]
        sl = (slice(i, i + args.unc_size), slice(j, j + args.unc_size))
        zm = torch.from_numpy(model.stabilise(y[sl]) / scale).float()[None, None]
        with torch.no_grad():
            post = denoise_posterior(net, zm, sn, n_samples=args.samples, steps=args.posterior_steps,
                                     generator=g)
        samples = model.invert_sample(post["samples"][:, 0, 0].double().numpy() * scale)
        mean = model.invert_mean(post["mean"][0, 0].double().numpy() * scale)
        std = samples.std(0, ddof=1)
        err = np.abs(mean - ref[sl])
        cov.append(float((err <= 2 * std).mean()))
        cov_ref.append(float((err <= 2 * np.sqrt(std**2 + ref_var[sl])).mean()))
        corr.append(float(np.corrcoef(std.ravel(), err.ravel())[0, 1]))
        zstd = post["samples"][:, 0, 0].std(0).numpy() * scale
        z_cov.append(float((np.abs(post["mean"][0, 0].numpy() * scale - expected_z(model, ref[sl]))
                            <= 2 * zstd).mean()))
        errs.append(err.ravel())
        stds.append(std.ravel())
        if k == 0:
            figure_post = {"sl": sl, "cap": ci, "samples": samples[:2], "std": std, "err": err, "mean": mean}
    e, s = np.concatenate(errs), np.concatenate(stds)
    unc = {"coverage_2std": float((e <= 2 * s).mean()), "coverage_2std_per_crop": cov,
           "coverage_2std_with_reference_noise": float(np.mean(cov_ref)),
           "coverage_2std_z_domain": float(np.mean(z_cov)),
           "pearson_std_abs_error": float(np.corrcoef(s, e)[0, 1]), "pearson_per_crop": corr,
           "mean_std": float(s.mean()), "rmse": float(np.sqrt((e**2).mean())),
           "crops": [[int(i), int(j), args.unc_size, int(args.test_captures[k % len(caps)])]
                     for k, (i, j) in enumerate(where)],
           "samples": args.samples, "posterior_steps": args.posterior_steps}
    log(f"uncertainty: {json.dumps(unc)}")
    return unc, figure_post


def main():
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.diagnose:
        return diagnose(args)
    t_start = time.perf_counter()
    log = lambda s: print(s, flush=True)  # noqa: E731
    args.work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    times = {}

    setup = training_setup(args, log)
    times.update(setup.pop("times"))
    info, scale, sn = setup["info"], setup["scale"], setup["sn"]
    nets, times["train_s"] = train_methods(args, setup, log)

    # ---- test captures of the held-out field
    import bm3d

    t_eval = time.perf_counter()
    stack, ref = test_field(args.data, args.test_field)
    ref_var = stack.var(0, ddof=1) / stack.shape[0] + 1.0 / 12     # the average's own noise
    caps = [stack[i] for i in args.test_captures]
    if args.quick:
        caps, ref, ref_var, stack = ([crop_for_quick(c) for c in caps], crop_for_quick(ref),
                                     crop_for_quick(ref_var), crop_for_quick(stack))
    models = [PoissonGaussian.estimate(c) for c in caps]
    log(f"test field {args.test_field}: captures {args.test_captures}; fits {[repr(m) for m in models]}")

    outputs = {m: [] for m in ["noisy", "bm3d", *args.methods]}
    bm3d_s = 0.0
    for y, model in zip(caps, models):
        outputs["noisy"].append(y)
        t = time.perf_counter()
        outputs["bm3d"].append(model.invert_mean(bm3d.bm3d(model.stabilise(y), 1.0)))
        bm3d_s += time.perf_counter() - t
        for method in args.methods:
            outputs[method].append(posterior_mean(denoiser_fn(method, nets[method], sn), y, model, scale, args.patch))
    times["bm3d_s_per_capture"] = bm3d_s / len(caps)
    score = {m: scores(ref, xs) for m, xs in outputs.items()}
    for m, s in score.items():
        log(f"  {m:<22s} PSNR {np.mean(s['psnr']):.2f}  SSIM {np.mean(s['ssim']):.4f}")
    abl = {} if args.no_ablations else ablations(args, nets, caps, models, stack, ref, scale, sn, log)
    unc, figure_post = {}, None
    if "ambient+consistency" in nets:
        t = time.perf_counter()
        unc, figure_post = uncertainty(args, nets["ambient+consistency"], caps, models, ref, ref_var, scale, sn, log)
        times["uncertainty_s"] = time.perf_counter() - t
    times["eval_s"] = time.perf_counter() - t_eval
    times["total_s"] = time.perf_counter() - t_start

    write(args, score, unc, abl, info, models, times, outputs, ref, figure_post,
          {m: count_parameters(n) for m, n in nets.items()})


def diagnose(args):
    """``--diagnose`` (see ``parse``): where the learned methods lose, without training again."""
    nets = {m: AmbientPrior.load(args.work_dir / f"{m.replace('+', '_')}.safetensors") for m in args.methods}
    meta = nets[args.methods[0]].metadata
    scale, sn = meta.scale, meta.sigma_n_model
    stack, ref = test_field(args.data, args.test_field)
    y = stack[args.test_captures[0]]
    model = PoissonGaussian.estimate(y)
    zm = torch.from_numpy(model.stabilise(y) / scale).float()[None, None]
    mean = lambda m, c=1.0: posterior_mean(denoiser_fn(m, nets[m].model, c * sn), y, model, scale, args.patch)  # noqa: E731

    out = {"capture": args.test_captures[0], "noise_fit": model.params}
    if "ambient+consistency" in nets:
        out["ambient_psnr_at_sigma_c_times_1"] = {
            str(c): psnr(mean("ambient+consistency", c), ref, DATA_RANGE)
            for c in (0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5)}
        print(out["ambient_psnr_at_sigma_c_times_1"], flush=True)
    bins = [(0, 5), (5, 10), (10, 20), (20, 50), (50, 256)]
    out["error_by_reference_intensity"] = {}
    for m in nets:
        e = mean(m) - ref
        row = {f"{lo}-{hi}": {"share": float(sel.mean()), "mse": float((e[sel] ** 2).mean()),
                              "bias": float(e[sel].mean())}
               for lo, hi in bins for sel in [(ref >= lo) & (ref < hi)]}
        row["total_mse"] = float((e**2).mean())
        out["error_by_reference_intensity"][m] = row
        print(m, json.dumps(row), flush=True)
    if "ambient+consistency" in nets:
        (i, j), = unc_crops(ref, 1, args.unc_size)
        sl = (slice(i, i + args.unc_size), slice(j, j + args.unc_size))
        g = torch.Generator().manual_seed(args.seed + 1)
        with torch.no_grad():
            post = denoise_posterior(nets["ambient+consistency"].model, zm[..., sl[0], sl[1]], sn,
                                     n_samples=args.samples, steps=args.posterior_steps, generator=g)
        samples = model.invert_sample(post["samples"][:, 0, 0].double().numpy() * scale)
        p = lambda x: psnr(x, ref[sl], DATA_RANGE)  # noqa: E731
        out["crop"] = {"rows_cols": [int(i), int(j), args.unc_size],
                       "psnr_posterior_mean_D": p(model.invert_mean(post["mean"][0, 0].double().numpy() * scale)),
                       "psnr_average_of_samples": p(samples.mean(0)),
                       **{f"psnr_{m}_tiled": p(mean(m)[sl]) for m in nets if m != "ambient+consistency"}}
        print(out["crop"], flush=True)
    write_json(args.out / "fmd_diagnostics.json", out, indent=2)


# ----------------------------------------------------------------------------------- report
def write(args, scores, unc, ablations, info, models, times, outputs, ref, post, params):
    out = args.out
    cells = []
    for m, s in scores.items():
        for metric in ("psnr", "ssim"):
            cells.append({"method": m, "metric": metric, "value": float(np.mean(s[metric])),
                          "per_capture": s[metric]})
    if unc:
        cells.append({"method": "ambient+consistency", "metric": "coverage_2std", "value": unc["coverage_2std"]})
        cells.append({"method": "ambient+consistency", "metric": "pearson_std_abs_error",
                      "value": unc["pearson_std_abs_error"]})
    val = {(c["method"], c["metric"]): c["value"] for c in cells}
    targets = {}
    a = val.get(("ambient+consistency", "psnr"))
    if a is not None:
        for other in ("bm3d", "n2v"):
            if (other, "psnr") in val:
                targets[f"ambient_minus_{other}_db"] = a - val[(other, "psnr")]
        for o in ("clean", "supervised"):
            if (o, "psnr") in val:
                targets[f"oracle_{o}_minus_ambient_db"] = val[(o, "psnr")] - a
    meta = {"data": str(args.data), "train_fields": args.train_fields, "test_field": args.test_field,
            "test_captures": args.test_captures, "quick": args.quick, "settings": settings(args),
            "noise_fits_training": {Path(k).name: v for k, v in info.noise_files.items()},
            "noise_fits_test_captures": [m.params for m in models],
            "scale": info.scale, "sigma_n_model": info.sigma_n_model, "sigma_data": info.sigma_data,
            "parameters": params, "times_s": times, "torch": torch.__version__,
            "machine": f"{platform.machine()} cpu, torch threads {torch.get_num_threads()}",
            "data_range": DATA_RANGE}
    write_json(out / "fmd.json", {"cells": cells, "targets": targets, "uncertainty": unc,
                                  "ablations": ablations, "meta": meta}, indent=2)
    rows = table(["method", "PSNR (dB)", "SSIM"],
                 [[LABEL[m], f"{np.mean(s['psnr']):.2f}", f"{np.mean(s['ssim']):.4f}"] for m, s in scores.items()])
    ulines = []
    if unc:
        ulines = table(["ambient+consistency posterior", "value"], [
            ["coverage of mean +- 2 std (vs the average)", f"{100 * unc['coverage_2std']:.1f}%"],
            ["same, the average's own noise added to the interval", f"{100 * unc['coverage_2std_with_reference_noise']:.1f}%"],
            ["same in the stabilised domain z (vs E[f(y) given the average])", f"{100 * unc['coverage_2std_z_domain']:.1f}%"],
            ["Pearson correlation of std with absolute error", f"{unc['pearson_std_abs_error']:.3f}"],
            ["mean std / RMSE on the crops (data units)", f"{unc['mean_std']:.2f} / {unc['rmse']:.2f}"]])
    text = (f"## FMD Confocal_BPAE_B, field {args.test_field}, captures {args.test_captures}"
            f"{' (QUICK smoke run: 128x128 crop, a few steps)' if args.quick else ''}\n\n"
            f"{args.steps} steps x batch {args.batch_size} of {args.patch}x{args.patch} patches per learned "
            f"method, U-Net features {args.features} (no attention, {max(params.values()) if params else 0} "
            f"parameters), CPU, {torch.get_num_threads()} thread(s); total wall time "
            f"{times['total_s'] / 60:.1f} min. Priors' loss: protocol microscopy-2d"
            f"{', with ' + ', '.join(args.loss) if args.loss else ''}.\n\n" + "\n".join(rows) + "\n\n"
            + "\n".join(ulines) + "\n")
    print(text, flush=True)
    print(json.dumps(targets, indent=2))
    md = out / "fmd.md"
    kept = "" if args.quick else analysis(md)     # keep the analysis written below the generated part
    md.write_text("# FMD confocal benchmark (benchmarks/fmd.py)\n\n" + text + ("\n" + kept if kept else ""))
    try:
        figure(out / "fmd.png", outputs, ref, post, args)
    except Exception as e:  # noqa: BLE001 - the figure is optional, the numbers are not
        print(f"(figure skipped: {e})")


def figure(path, outputs, ref, post, args):
    plt = pyplot()
    if post is not None:
        sl, ci = post["sl"], post["cap"]
    else:
        n = min(128, ref.shape[0])
        sl, ci = (slice(0, n), slice(0, n)), 0
    panels = [(SHORT[m], xs[ci][sl]) for m, xs in outputs.items()] + [("50-capture average", ref[sl])]
    extra = []
    if post is not None:
        extra = [("posterior sample 1", post["samples"][0], "gray"), ("posterior sample 2", post["samples"][1], "gray"),
                 ("posterior std", post["std"], "magma"), ("|mean - average|", post["err"], "magma")]
    cols = max(len(panels), len(extra))
    fig, axes = plt.subplots(2, cols, figsize=(2.1 * cols, 4.6))
    vmax = float(np.percentile(ref[sl], 99.5))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, img) in zip(axes[0], panels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(title, fontsize=7)
    emax = float(np.percentile(np.concatenate([post["std"].ravel(), post["err"].ravel()]), 99)) if post else 1
    for ax, (title, img, cmap) in zip(axes[1], extra):
        ax.imshow(img, cmap=cmap, vmin=0, vmax=vmax if cmap == "gray" else emax)
        ax.set_title(title, fontsize=7)
    fig.suptitle(f"FMD confocal field {args.test_field}, capture {args.test_captures[ci]}, crop "
                 f"rows {sl[0].start}-{sl[0].stop} cols {sl[1].start}-{sl[1].stop}", fontsize=8)
    save(fig, path, 110)


if __name__ == "__main__":
    main()
