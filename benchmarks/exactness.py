"""Exactness benchmark: on stationary Gaussian random fields (clean variance 1, smooth power
spectrum) the optimal denoiser is the Wiener filter, so every objective can be scored against
the truth. Trains `clean` (oracle), `naive`, `ambient` and `ambient+consistency` with the same
network, batch and number of steps, in one run, at each sigma_n; only `clean` ever sees clean data.

Reports, per sigma_n and objective:
  1. excess denoising error over the Wiener MMSE, relative: E||D(x_s,s) - W(x_s,s)||^2 / MMSE(s)
     (= (MSE - MMSE)/MMSE by orthogonality), at s in {sigma_n/8, /4, /2, 1, 2} x sigma_n;
  2. Frechet distance of 2,000 samples to the true Gaussian, divided by that of the noisy-data
     Gaussian N(0, C + sigma_n^2 I) (naive ~ 1, perfect 0), for full and truncated sampling,
     plus the same for exact-Wiener sampling (the finite-sample floor, `fd_floor`);
     and `fd_spectral`, the Frechet distance in the DFT domain: the field is stationary, so its
     covariance is diagonal in the orthonormal DFT basis, and with the samples' per-frequency
     power P_hat_f (about their mean m) FD = ||m||^2 + sum_f (sqrt(P_hat_f) - sqrt(P_f))^2,
     normalised by the same noisy-data distance. It estimates d numbers instead of a d x d
     covariance, so its finite-sample floor (`fd_spectral_floor`) is far lower;
  3. the wall time of one training step relative to `clean` (same network and batch, interleaved).
Also the radially averaged sample power per frequency band relative to the truth.

Training `ambient` and `ambient+consistency` shares the first `consistency_start` of the budget
(the same seed gives the same first half), so the consistency variants branch from one snapshot.

    python benchmarks/exactness.py                      # full run (GPU: ~8 min per sigma_n)
    python benchmarks/exactness.py --quick              # a CPU smoke run
Every score is a list over seeds (`--seeds`, seed i trains on data and an initialisation drawn
from seed `--seed + i`); floors and step-time ratios are single values.
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
from common.exact import OBJECTIVES, RATIOS, loss_defaults, network_config, time_steps
from common.figures import pyplot, save, tile2x2
from common.results import RESULTS, settings, write_json
from common.tables import mean_halfrange

from ambient_med.diffusion.losses import LossConfig
from ambient_med.diffusion.networks import EDMDenoiser
from ambient_med.diffusion.sampling import sample
from ambient_med.synthetic.mixtures import (
    GaussianField,
    frechet_to_truth,
    gaussian_frechet_distance,
    radial_power_bands,
)
from ambient_med.training.loop import TensorDataset, TrainConfig, train
from ambient_med.utils import resolve_device


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
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (scores are per-seed lists)")
    p.add_argument("--n-test", type=int, default=4096, help="test points for the excess error")
    p.add_argument("--timing-rounds", type=int, default=5)
    p.add_argument("--timing-k", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke run")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    if a.quick:  # never over the real results (their merged report reads every file in --out)
        a.steps, a.n_train, a.n_samples, a.batch_size, a.sample_steps = 200, 2048, 500, 32, 16
        a.n_test, a.timing_rounds, a.timing_k = 1024, 2, 2
        a.out = Path("/tmp/ambient_med_exactness_quick") if a.out == RESULTS else a.out
    return a


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
    return (frechet_to_truth(x, truth_cov) / fd_noisy, spectral_frechet(x, field) / fd_noisy,
            bands.tolist(), x[:16])


def spectral_frechet(x: torch.Tensor, field: GaussianField) -> float:
    """Frechet distance between N(m, diag(P_hat)) and N(0, diag(P)) in the orthonormal DFT basis:
    ``||m||^2 + sum_f (sqrt(P_hat_f) - sqrt(P_f))^2`` with ``P_hat_f`` the samples' power at
    frequency ``f`` about their mean ``m`` (exact for the stationary truth, whose covariance is
    diagonal there; the samples' off-diagonal DFT covariance is ignored)."""
    x = x.double().cpu()
    m = x.mean(0, keepdim=True)
    dims = tuple(range(2, x.ndim))
    p_hat = (torch.fft.fftn(x - m, dim=dims, norm="ortho").abs() ** 2).sum(0) / (x.shape[0] - 1)
    p = field.power.double().expand_as(p_hat)
    return float(m.square().sum() + (p_hat.sqrt() - p.sqrt()).square().sum())


def train_seed(sigma_n: float, seed: int, args, device, tmp: Path):
    """Train every objective (and variant) on one seed's data; returns models, seconds, histories."""
    field = GaussianField((args.size, args.size))
    g = torch.Generator().manual_seed(seed)
    x0 = field.sample(args.n_train, g)
    y = x0 + sigma_n * torch.randn(x0.shape, generator=g)
    data = TensorDataset(y, sigma_n, clean=x0)
    net = network_config(args.size)
    base = LossConfig(sigma_data=1.0)
    tcfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       lr_warmup=min(200, max(args.steps // 5, 1)),
                       log_every=max(args.steps // 20, 1), checkpoint_every=10**9, seed=seed)
    cfgs = {o: replace(base, objective=o) for o in OBJECTIVES}
    for spec in args.variants:
        name, c = parse_variant(spec, cfgs["ambient+consistency"])
        cfgs[name] = c

    def fresh():
        torch.manual_seed(seed)
        return EDMDenoiser(net)

    models, train_time, history = {}, {}, {}
    for obj in [o for o in ("clean", "naive") if o in args.objectives]:
        t = time.perf_counter()
        r = train(fresh(), data, cfgs[obj], tcfg, device=device)
        models[obj], train_time[obj], history[obj] = r.model, time.perf_counter() - t, r.history
        print(f"  seed {seed} trained {obj:<24s} {train_time[obj]:7.1f} s  final loss {r.history[-1]['loss']:.4f}", flush=True)
    # the ambient-only first part is shared by every consistency variant
    half = int(round(base.consistency_start * args.steps))
    snap = tmp / f"snap_{sigma_n}_{seed}"
    t = time.perf_counter()
    if half > 0:
        train(fresh(), data, cfgs["ambient"], tcfg, run_dir=snap, device=device, stop_after=half)
    t_half = time.perf_counter() - t
    for obj in [o for o in cfgs if o.startswith("ambient")
                and (o in args.objectives or o not in OBJECTIVES)]:
        run = tmp / f"{obj}_{sigma_n}_{seed}".replace("[", "_").replace("]", "").replace(":", "_")
        if half > 0:
            shutil.copytree(snap, run)
        t = time.perf_counter()
        r = train(fresh(), data, cfgs[obj], tcfg, run_dir=run, resume=half > 0, device=device)
        models[obj], history[obj] = r.model, r.history
        train_time[obj] = t_half + time.perf_counter() - t
        print(f"  seed {seed} trained {obj:<24s} {train_time[obj]:7.1f} s  final {r.history[-1]}", flush=True)
    return models, train_time, history, cfgs, data, fresh


def run_sigma(sigma_n: float, args, device, tmp: Path):
    field = GaussianField((args.size, args.size))
    truth_cov = field.covariance()
    d = args.size**2
    fd_noisy = gaussian_frechet_distance(np.zeros(d), truth_cov + sigma_n**2 * np.eye(d),
                                         np.zeros(d), truth_cov)
    floor, floor_spec, floor_bands, _ = sample_scores(field.wiener, field, sigma_n, truth_cov,
                                                      fd_noisy, args, device, "full")
    floors = {"fd_floor": floor, "fd_spectral_floor": floor_spec, "power_bands_floor": floor_bands}
    print(f"  floor (exact Wiener, {args.n_samples} samples): fd {floor:.4f}, spectral {floor_spec:.4f}", flush=True)
    results, extra = {}, {}
    for seed in range(args.seed, args.seed + args.seeds):
        models, train_time, history, cfgs, data, fresh = train_seed(sigma_n, seed, args, device, tmp)
        for obj, m in models.items():
            m = m.to(device).eval()
            args_s = replace_seed(args, seed)
            fd_full, spec_full, bands_full, pics = sample_scores(m, field, sigma_n, truth_cov, fd_noisy,
                                                                 args_s, device, "full")
            fd_trunc, spec_trunc, bands_trunc, _ = sample_scores(m, field, sigma_n, truth_cov, fd_noisy,
                                                                 args_s, device, "truncated")
            r = results.setdefault(obj, {"excess_error": {str(x): [] for x in RATIOS}, "fd_full": [],
                                         "fd_truncated": [], **floors, "fd_spectral_full": [],
                                         "fd_spectral_truncated": []})
            for key, v in excess_errors(m, field, sigma_n, device, n=args.n_test).items():
                r["excess_error"][key].append(v)
            r["fd_full"].append(fd_full)
            r["fd_truncated"].append(fd_trunc)
            r["fd_spectral_full"].append(spec_full)
            r["fd_spectral_truncated"].append(spec_trunc)
            e = extra.setdefault(obj, {"power_bands_full": [], "power_bands_truncated": [],
                                       "train_seconds": [], "final_metrics": [], "samples": pics})
            e["power_bands_full"].append(bands_full)
            e["power_bands_truncated"].append(bands_trunc)
            e["train_seconds"].append(train_time[obj])
            e["final_metrics"].append(history[obj][-1])
            print(f"  seed {seed} scored {obj:<24s} excess@1/4 {r['excess_error']['0.25'][-1]:.4f} "
                  f"fd full {fd_full:.4f} trunc {fd_trunc:.4f} [floor {floor:.4f}] spectral full "
                  f"{spec_full:.4f} [floor {floor_spec:.4f}] bands {np.round(bands_full, 2).tolist()}", flush=True)
    ratios, med = time_steps({o: fresh().to(device) for o in cfgs}, cfgs, data, args.batch_size, device,
                             rounds=args.timing_rounds, k=args.timing_k)
    for obj in results:
        results[obj]["step_time_ratio"] = ratios[obj]
        extra[obj]["step_seconds"] = med[obj]
    return results, extra, floors


def replace_seed(args, seed):
    a = argparse.Namespace(**vars(args))
    a.seed = seed
    return a


def write_report(results, extra, floors, sn, args, device):
    """Write this sigma_n's files, then merge every ``exactness_sn*.json`` in the folder into
    ``exactness.json`` / ``exactness.md`` (sigma_n values may run as separate processes)."""
    args.out.mkdir(parents=True, exist_ok=True)
    main = {o: r for o, r in results.items() if o in OBJECTIVES}
    write_json(args.out / f"exactness_sn{sn}.json", main, indent=2)
    details = {"device": str(device), "torch": torch.__version__, "args": settings(args),
               "loss_config_defaults": loss_defaults(),
               "floors_exact_wiener_sampler": floors,
               "variants": {o: r for o, r in results.items() if o not in OBJECTIVES},
               **{o: {k: v for k, v in e.items() if k != "samples"} for o, e in extra.items()}}
    write_json(args.out / f"exactness_details_sn{sn}.json", details, indent=2)
    seeds = f"seed {args.seed}" if args.seeds == 1 else f"seeds {args.seed}..{args.seed + args.seeds - 1}, mean ± half-range"
    lines = [f"## sigma_n = {sn}  ({device}, {args.steps} steps, batch {args.batch_size}, "
             f"{args.size}x{args.size} fields, {args.n_samples} samples, {seeds}; exact-Wiener sampler "
             f"floor of the normalised distance: {floors['fd_floor']:.3f}, of the spectral one: "
             f"{floors['fd_spectral_floor']:.4f})\n",
             "Excess error is (MSE - MMSE)/MMSE at sigma = ratio x sigma_n; fd is the Frechet "
             "distance to the truth over that of the noisy data [its floor in brackets]; fd spectral is "
             "the same in the DFT domain (per-frequency power only); power bands are sample power / "
             "true power from low to high radial frequency.\n",
             "| objective | " + " | ".join(f"excess @ {r}" for r in RATIOS)
             + " | fd full [floor] | fd truncated [floor] | fd spectral full [floor] | fd spectral truncated [floor] "
             "| step time / clean | power bands (full sampling) |",
             "|---" * (len(RATIOS) + 7) + "|"]
    for o, r in results.items():
        pb = extra[o]["power_bands_full"]
        bands = " ".join(f"{statistics.mean(b[i] for b in pb):.2f}" for i in range(len(pb[0])))
        f, fs = floors["fd_floor"], floors["fd_spectral_floor"]
        lines.append(f"| {o} | " + " | ".join(mean_halfrange(r['excess_error'][str(x)]) for x in RATIOS)
                     + f" | {mean_halfrange(r['fd_full'])} [{f:.3f}] | {mean_halfrange(r['fd_truncated'])} [{f:.3f}]"
                     f" | {mean_halfrange(r['fd_spectral_full'])} [{fs:.4f}] | {mean_halfrange(r['fd_spectral_truncated'])} [{fs:.4f}]"
                     f" | {r['step_time_ratio']:.2f} | {bands} |")
    if device.type == "cpu":
        lines.append("\nCPU run at a reduced budget (no GPU was available); the full-budget run "
                     "(3 seeds, 4000 steps x batch 128) needs a GPU.\n")
    text = "\n".join(lines) + "\n"
    (args.out / f"exactness_sn{sn}.md").write_text(text)
    print(text, flush=True)
    merged = {f.stem.removeprefix("exactness_sn"): json.loads(f.read_text())
              for f in sorted(args.out.glob("exactness_sn*.json"))}
    write_json(args.out / "exactness.json", merged, indent=2)
    (args.out / "exactness.md").write_text("# Exactness benchmark (benchmarks/exactness.py)\n\n" + "\n".join(
        f.read_text() for f in sorted(args.out.glob("exactness_sn*.md"))))
    try:
        plt = pyplot()
        objs = list(extra)
        fig, axes = plt.subplots(1, len(objs) + 1, figsize=(2.6 * (len(objs) + 1), 2.9))
        for o in objs:
            axes[0].plot(np.mean(extra[o]["power_bands_full"], 0), marker="o", label=o)
        axes[0].axhline(1, color="k", lw=0.5)
        axes[0].set_yscale("log")
        axes[0].set_title(f"sample power / truth, sn={sn}", fontsize=8)
        axes[0].set_xlabel("radial band (low->high)", fontsize=7)
        axes[0].legend(fontsize=5)
        for j, o in enumerate(objs):
            axes[j + 1].imshow(tile2x2(extra[o]["samples"][:4, 0]).numpy(), cmap="gray", vmin=-2.5, vmax=2.5)
            axes[j + 1].set_title(o, fontsize=6)
            axes[j + 1].axis("off")
        save(fig, args.out / f"exactness_samples_sn{sn}.png", 110)
    except Exception as e:  # noqa: BLE001 - the figure is optional, the numbers are not
        print(f"(figure skipped: {e})")


def main():
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device {device}; {args.steps} steps x batch {args.batch_size}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for sn in args.sigma_n:
            print(f"sigma_n = {sn}", flush=True)
            res, extra, floors = run_sigma(sn, args, device, Path(tmp))
            torch.save((res, extra, floors), Path(tempfile.gettempdir()) / f"exactness_raw_sn{sn}.pt")
            write_report(res, extra, floors, sn, args, device)


if __name__ == "__main__":
    main()
