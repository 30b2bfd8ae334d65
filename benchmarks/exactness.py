"""Exactness benchmark: on stationary Gaussian random fields (clean variance 1, smooth power
spectrum) the optimal denoiser is the Wiener filter, so every objective can be scored against
the truth. Trains `clean` (oracle), `naive`, `ambient` and `ambient+consistency` with the same
network, batch and number of steps, in one run, at each sigma_n; only `clean` ever sees clean data.

Reports, per sigma_n and objective:
  1. excess denoising error over the Wiener MMSE, relative: E||D(x_s,s) - W(x_s,s)||^2 / MMSE(s)
     (= (MSE - MMSE)/MMSE by orthogonality), at s in {sigma_n/8, /4, /2, 1, 2} x sigma_n;
  2. Frechet distance of 2,000 samples to the true Gaussian, divided by that of the noisy-data
     Gaussian N(0, C + sigma_n^2 I) (naive ~ 1, perfect 0), for full and truncated sampling,
     plus the same for exact-Wiener sampling (the finite-sample floor);
  3. the wall time of one training step relative to `clean` (same network and batch, interleaved).
Also the radially averaged sample power per frequency band relative to the truth.

Training `ambient` and `ambient+consistency` shares the first `consistency_start` of the budget
(the same seed gives the same first half), so the consistency variants branch from one snapshot.

    python benchmarks/exactness.py                      # full run (GPU: ~8 min per sigma_n)
    python benchmarks/exactness.py --quick              # a CPU smoke run
Writes benchmarks/results/exactness.json (all sigma_n found there), exactness.md, and per sigma_n
exactness_sn<sigma_n>.{json,md}, exactness_details_sn<sigma_n>.json, exactness_samples_sn<sigma_n>.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ambient_med.losses import LossConfig, objective_loss
from ambient_med.networks import EDMDenoiser, NetworkConfig
from ambient_med.sampling import sample
from ambient_med.synthetic import (GaussianField, frechet_to_truth, gaussian_frechet_distance,
                                   radial_power_bands)
from ambient_med.train import TensorDataset, TrainConfig, train
from ambient_med.utils import resolve_device

RESULTS = Path(__file__).resolve().parent / "results"
RATIOS = (0.125, 0.25, 0.5, 1.0, 2.0)
OBJECTIVES = ("clean", "naive", "ambient", "ambient+consistency")


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sigma-n", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-train", type=int, default=16384)
    p.add_argument("--n-samples", type=int, default=2000)
    p.add_argument("--sample-steps", type=int, default=32)
    p.add_argument("--variants", nargs="*", default=[],
                   help="extra consistency variants to compare, e.g. anchored pair:steps=1")
    p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES,
                   help="which objectives to train (step times are always measured for all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke run")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    if a.quick:
        a.steps, a.n_train, a.n_samples, a.batch_size, a.sample_steps = 200, 2048, 500, 32, 16
    return a


def network_config(size: int) -> NetworkConfig:
    # Stationary fields need no attention; a small UNet keeps the GPU step launch-bound-cheap.
    return NetworkConfig(spatial_dims=2, channels=1, sigma_data=1.0, features=(32, 64, 64),
                         attention_levels=(False, False, False), num_res_blocks=1,
                         norm_num_groups=8, num_head_channels=16)


def parse_variant(spec: str, base: LossConfig) -> tuple[str, LossConfig]:
    """``anchored`` or ``pair:chain_steps=1,fraction=0.5,weight=2``."""
    name, _, opts = spec.partition(":")
    cfg = replace(base, consistency_variant=name)
    for kv in filter(None, opts.split(",")):
        k, v = kv.split("=")
        field = {"steps": "consistency_chain_steps", "fraction": "consistency_fraction",
                 "weight": "consistency_weight", "start": "consistency_start",
                 "min_ratio": "consistency_min_ratio"}.get(k, k)
        cfg = replace(cfg, **{field: type(getattr(cfg, field))(v)})
    return f"ambient+consistency[{spec}]", cfg


@torch.no_grad()
def excess_errors(model, field: GaussianField, sigma_n: float, device, n=4096, seed=11):
    g = torch.Generator().manual_seed(seed)
    x0 = field.sample(n, g).to(device)
    out = {}
    for ratio in RATIOS:
        s = ratio * sigma_n
        xs = x0 + s * torch.randn(x0.shape, generator=g).to(device)
        d = torch.cat([model(c, torch.full((c.shape[0],), s, device=device))
                       for c in xs.split(1024)])
        w = field.wiener(xs, s)
        out[str(ratio)] = float((d - w).square().mean() / field.mmse(s))
    return out


def sample_scores(denoiser, field, sigma_n, truth_cov, fd_noisy, args, device, mode):
    g = torch.Generator(device=device).manual_seed(args.seed + 5)
    xs = []
    for chunk in np.array_split(np.arange(args.n_samples), max(args.n_samples // 1000, 1)):
        xs.append(sample(denoiser, (len(chunk), 1, args.size, args.size), steps=args.sample_steps,
                         mode=mode, sigma_n=sigma_n, device=device, generator=g).cpu())
    x = torch.cat(xs)
    bands = radial_power_bands(x) / radial_power_bands(field.sample(20000))
    return frechet_to_truth(x, truth_cov) / fd_noisy, bands.tolist(), x[:16]


def time_steps(models: dict, cfgs: dict, data: TensorDataset, batch: int, device, rounds=5, k=5):
    """Median wall time of one optimisation step per objective, interleaved to share any
    background load fairly."""
    times = {name: [] for name in models}
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-5) for n, m in models.items()}
    g = torch.Generator(device=device).manual_seed(0)
    y = data.images[:batch].to(device)
    clean = data.clean[:batch].to(device)
    sn = data.sigma_n[:batch].to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for r in range(rounds + 1):
        for name, m in models.items():
            sync()
            t = time.perf_counter()
            for _ in range(k):
                out = objective_loss(m, y, sn, cfgs[name], progress=1.0, clean=clean, generator=g)
                opts[name].zero_grad()
                out.loss.backward()
                opts[name].step()
            sync()
            if r > 0:  # round 0 is warm-up
                times[name].append((time.perf_counter() - t) / k)
    med = {n: statistics.median(v) for n, v in times.items()}
    return {n: med[n] / med["clean"] for n in med}, med


def run_sigma(sigma_n: float, args, device, tmp: Path):
    field = GaussianField((args.size, args.size))
    g = torch.Generator().manual_seed(args.seed)
    x0 = field.sample(args.n_train, g)
    y = x0 + sigma_n * torch.randn(x0.shape, generator=g)
    data = TensorDataset(y, sigma_n, clean=x0)
    net = network_config(args.size)
    base = LossConfig(sigma_data=1.0)
    tcfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_warmup=200,
                       log_every=max(args.steps // 20, 1), checkpoint_every=10**9, seed=args.seed)
    cfgs = {o: replace(base, objective=o) for o in OBJECTIVES}
    for spec in args.variants:
        name, c = parse_variant(spec, cfgs["ambient+consistency"])
        cfgs[name] = c

    def fresh():
        torch.manual_seed(args.seed)
        return EDMDenoiser(net)

    models, train_time, history = {}, {}, {}
    for obj in [o for o in ("clean", "naive") if o in args.objectives]:
        t = time.perf_counter()
        r = train(fresh(), data, cfgs[obj], tcfg, device=device)
        models[obj], train_time[obj], history[obj] = r.model, time.perf_counter() - t, r.history
        print(f"  trained {obj:<24s} {train_time[obj]:7.1f} s  final loss {r.history[-1]['loss']:.4f}", flush=True)
    # the ambient-only first part is shared by every consistency variant
    half = int(round(base.consistency_start * args.steps))
    snap = tmp / f"snap_{sigma_n}"
    t = time.perf_counter()
    train(fresh(), data, cfgs["ambient"], tcfg, run_dir=snap, device=device, stop_after=half)
    t_half = time.perf_counter() - t
    for obj in [o for o in cfgs if o.startswith("ambient")
                and (o in args.objectives or o not in OBJECTIVES)]:
        run = tmp / f"{obj}_{sigma_n}".replace("[", "_").replace("]", "").replace(":", "_")
        shutil.copytree(snap, run)
        t = time.perf_counter()
        r = train(fresh(), data, cfgs[obj], tcfg, run_dir=run, resume=True, device=device)
        models[obj], history[obj] = r.model, r.history
        train_time[obj] = t_half + time.perf_counter() - t
        print(f"  trained {obj:<24s} {train_time[obj]:7.1f} s  final {r.history[-1]}", flush=True)

    truth_cov = field.covariance()
    d = args.size**2
    fd_noisy = gaussian_frechet_distance(np.zeros(d), truth_cov + sigma_n**2 * np.eye(d),
                                         np.zeros(d), truth_cov)
    fd_floor, _, _ = sample_scores(field.wiener, field, sigma_n, truth_cov, fd_noisy, args, device, "full")
    ratios, med = time_steps({o: fresh().to(device) for o in cfgs}, cfgs, data, args.batch_size, device)
    results, extra = {}, {}
    for obj, m in models.items():
        m = m.to(device).eval()
        fd_full, bands_full, pics = sample_scores(m, field, sigma_n, truth_cov, fd_noisy, args, device, "full")
        fd_trunc, bands_trunc, _ = sample_scores(m, field, sigma_n, truth_cov, fd_noisy, args, device, "truncated")
        results[obj] = {"excess_error": excess_errors(m, field, sigma_n, device),
                        "fd_full": fd_full, "fd_truncated": fd_trunc,
                        "step_time_ratio": ratios[obj]}
        extra[obj] = {"power_bands_full": bands_full, "power_bands_truncated": bands_trunc,
                      "train_seconds": train_time[obj], "step_seconds": med[obj],
                      "final_metrics": history[obj][-1], "samples": pics}
    return results, extra, fd_floor


def write_report(results, extra, floor, sn, args, device):
    """Write this sigma_n's files, then merge every ``exactness_sn*.json`` in the folder into
    ``exactness.json`` / ``exactness.md`` (sigma_n values may run as separate processes)."""
    args.out.mkdir(parents=True, exist_ok=True)
    main = {o: r for o, r in results.items() if o in OBJECTIVES}
    (args.out / f"exactness_sn{sn}.json").write_text(json.dumps(main, indent=2) + "\n")
    details = {"device": str(device), "torch": torch.__version__,
               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "fd_floor_exact_wiener_sampler": floor,
               "variants": {o: r for o, r in results.items() if o not in OBJECTIVES},
               **{o: {k: v for k, v in e.items() if k != "samples"} for o, e in extra.items()}}
    (args.out / f"exactness_details_sn{sn}.json").write_text(json.dumps(details, indent=2) + "\n")
    lines = [f"## sigma_n = {sn}  ({device}, {args.steps} steps, batch {args.batch_size}, "
             f"{args.size}x{args.size} fields, {args.n_samples} samples; exact-Wiener sampler "
             f"floor of the normalised distance: {floor:.3f})\n",
             "Excess error is (MSE - MMSE)/MMSE at sigma = ratio x sigma_n; fd is the Frechet "
             "distance to the truth over that of the noisy data; power bands are sample power / "
             "true power from low to high radial frequency.\n",
             "| objective | " + " | ".join(f"excess @ {r}" for r in RATIOS)
             + " | fd full | fd truncated | step time / clean | power bands (full sampling) |",
             "|---" * (len(RATIOS) + 5) + "|"]
    for o, r in results.items():
        bands = " ".join(f"{b:.2f}" for b in extra[o]["power_bands_full"])
        lines.append(f"| {o} | " + " | ".join(f"{r['excess_error'][str(x)]:.3f}" for x in RATIOS)
                     + f" | {r['fd_full']:.3f} | {r['fd_truncated']:.3f} | {r['step_time_ratio']:.2f} | {bands} |")
    text = "\n".join(lines) + "\n"
    (args.out / f"exactness_sn{sn}.md").write_text(text)
    print(text, flush=True)
    merged = {f.stem.removeprefix("exactness_sn"): json.loads(f.read_text())
              for f in sorted(args.out.glob("exactness_sn*.json"))}
    (args.out / "exactness.json").write_text(json.dumps(merged, indent=2) + "\n")
    (args.out / "exactness.md").write_text("# Exactness benchmark (benchmarks/exactness.py)\n\n" + "\n".join(
        f.read_text() for f in sorted(args.out.glob("exactness_sn*.md"))))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        objs = list(extra)
        fig, axes = plt.subplots(1, len(objs) + 1, figsize=(2.6 * (len(objs) + 1), 2.9))
        for o in objs:
            axes[0].plot(extra[o]["power_bands_full"], marker="o", label=o)
        axes[0].axhline(1, color="k", lw=0.5)
        axes[0].set_yscale("log")
        axes[0].set_title(f"sample power / truth, sn={sn}", fontsize=8)
        axes[0].set_xlabel("radial band (low->high)", fontsize=7)
        axes[0].legend(fontsize=5)
        for j, o in enumerate(objs):
            pics = extra[o]["samples"][:4, 0]
            grid = torch.cat([torch.cat(list(pics[:2]), 1), torch.cat(list(pics[2:4]), 1)], 0)
            axes[j + 1].imshow(grid.numpy(), cmap="gray", vmin=-2.5, vmax=2.5)
            axes[j + 1].set_title(o, fontsize=6)
            axes[j + 1].axis("off")
        fig.tight_layout()
        fig.savefig(args.out / f"exactness_samples_sn{sn}.png", dpi=110)
    except Exception as e:  # noqa: BLE001 - the figure is optional, the numbers are not
        print(f"(figure skipped: {e})")


def main():
    args = parse()
    device = resolve_device(args.device)
    print(f"device {device}; {args.steps} steps x batch {args.batch_size}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for sn in args.sigma_n:
            print(f"sigma_n = {sn}", flush=True)
            res, extra, floor = run_sigma(sn, args, device, Path(tmp))
            write_report(res, extra, floor, sn, args, device)


if __name__ == "__main__":
    main()
