"""What a prior learns below the data noise, judged on a closed-form law with exact zeros.

The law is `ambient_med.synthetic.mixtures.air_mixture()`: 8x8 images, a mixture of four Gaussian
components (an all-zero "air" image, a smooth, a grainy and a ring-shaped object on a disc;
every image is 0 outside the disc). Its MMSE denoiser, posterior covariance and moments are
closed forms, so every objective is scored against the truth. Grain below `sigma_n` shows
first in the air, where the clean value is exactly 0.

Each objective trains the same network (a FiLM-conditioned residual MLP with EDM's
preconditioning: on 8x8 images it runs some 20x faster on a CPU core than the package's UNet,
so that the clean oracle gets close to its finite-sample floor in minutes) with the package's
own `train()`, on the same noisy training set, for the same wall-clock budget: each run first
times its own steps (both phases of its objective), then trains for as many steps as fit.
The `clean` oracle trains on the clean images; every other objective sees only
`y = x0 + sigma_n e`.

Scores, per (sigma_n, objective, seed), of the EMA weights:
  - excess error over the MMSE, `E||D(x_s, s) - D*(x_s, s)||^2 / d` at s = sigma_n/8, /4, /2, 1
    (4,000 test images; `mmse` gives `E Var[x0 | x_s]` for scale);
  - `air_std`: the RMS of full-sampling samples on the air pixels (exact zeros of every
    component), over sigma_n;
  - `weights_tv`: total variation between the true component weights and the share of samples
    assigned to each component (most likely component when read at level sigma_n / 4, which
    tolerates some grain); `tv_floor` is the same for true samples;
  - `fd_full`: Frechet distance between the Gaussian fit of the samples and the law's exact
    mean and covariance; `fd_floor` is the same for as many true samples (finite-sample floor);
  - `bands`: power per radial frequency band of the samples over the truth's.
Samples: the package's `sample()` (Heun, 40 steps, sigma 80 -> 0), 2,000 per cell.

    python benchmarks/below_noise.py                          # 3 seeds x 2 noise levels, both cores
    python benchmarks/below_noise.py --quick                  # smoke run -> below_noise_quick.*
    python benchmarks/below_noise.py --objectives pair distill --minutes 4 --tag screen

Cells are appended to `<out>.cells.jsonl` as they finish; a rerun skips cells already there
(same objective settings, budget and seed), so a stopped run resumes. Writes
`benchmarks/results/below_noise{_tag}.{json,md,png}`.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from common.air_mixture import SHAPE, MLPDenoiser, Truth, draw_samples
from common.below_noise_report import aggregate, figure, markdown
from common.results import RESULTS, write_json
from common.tables import analysis
from common.work import append_jsonl, read_jsonl, settings_key

from ambient_med.diffusion.losses import LossConfig
from ambient_med.synthetic.mixtures import radial_power_bands
from ambient_med.training.loop import TensorDataset, TrainConfig, train

RATIOS = (0.125, 0.25, 0.5, 1.0)
STOP_RATIOS = (0.25, 0.5, 1.0)

# Objectives by name: LossConfig overrides on top of LossConfig()'s defaults (objective and
# sigma_data are set per run). "pair" and "anchored" pin the settings they are named after, so
# the rows keep their meaning when the package default changes.
OBJECTIVES: dict[str, dict] = {
    "clean": {"objective": "clean"},
    "ambient": {"objective": "ambient"},
    "default": {"objective": "ambient+consistency"},
    # the previous default: nearby-levels pairs on a quarter of each batch, second half of training
    "pair": {"objective": "ambient+consistency", "consistency_variant": "pair",
             "consistency_fraction": 0.25, "consistency_start": 0.5},
    "anchored": {"objective": "ambient+consistency", "consistency_variant": "anchored",
                 "consistency_chain_steps": 8, "consistency_fraction": 0.25,
                 "consistency_start": 0.5, "teacher": "ema"},
    # self-distillation variants tried on the way to the default (which is "distill-online" with
    # consistency_fraction 0.5, consistency_start 0.25 and a cache of 2 batches)
    "distill-ema": {"objective": "ambient+consistency", "consistency_variant": "distill",
                    "teacher": "ema", "distill_refresh": 0.03125, "distill_cache": 8,
                    "consistency_fraction": 0.25, "consistency_start": 0.5},
    "distill-ema-2sn": {"objective": "ambient+consistency", "consistency_variant": "distill",
                        "teacher": "ema", "distill_refresh": 0.03125, "distill_cache": 8,
                        "distill_max_ratio": 2.0, "consistency_fraction": 0.25,
                        "consistency_start": 0.5},
    "distill-online": {"objective": "ambient+consistency", "consistency_variant": "distill",
                       "distill_cache": 4, "consistency_fraction": 0.25, "consistency_start": 0.5},
    "distill+pair": {"objective": "ambient+consistency", "consistency_variant": "distill+pair",
                     "teacher": "ema", "distill_refresh": 0.03125, "distill_cache": 8,
                     "consistency_fraction": 0.25, "consistency_start": 0.5},
    "ambient+sure": {"objective": "ambient", "sure_fraction": 0.5},
}


def loss_config(name: str, sigma_data: float) -> LossConfig:
    return LossConfig(**{**OBJECTIVES[name], "sigma_data": sigma_data})


def _train_config(args, steps: int, seed: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr,
                       lr_warmup=min(200, max(steps // 10, 1)), ema_decay=args.ema,
                       lr_schedule=args.lr_schedule,
                       log_every=max(steps // 20, 1), checkpoint_every=10**9, seed=seed)


def _step_seconds(model_fn, data, loss_cfg: LossConfig, args, seed: int) -> float:
    """Mean seconds per step of this objective over its whole run: both phases (ambient warm-up
    and the below-noise term) timed separately and weighted by their shares."""
    def run(cfg, n):
        # CPU time of this single-threaded process: what else runs on the machine does not count
        with tempfile.TemporaryDirectory() as tmp:
            t = time.process_time()
            train(model_fn(), data, cfg, _train_config(args, n, seed), run_dir=Path(tmp))
            return time.process_time() - t

    def timed(cfg, n=args.timing_steps):
        # the difference of a 2n- and an n-step run: set-up costs (and cache fills) cancel;
        # a first short run pays the one-time costs (imports, allocator warm-up)
        run(cfg, 2)
        return (run(cfg, 2 * n) - run(cfg, n)) / n

    if loss_cfg.objective != "ambient+consistency" or loss_cfg.consistency_start <= 0:
        return timed(replace(loss_cfg, consistency_start=0.0))
    warm = timed(replace(loss_cfg, objective="ambient"))
    below = timed(replace(loss_cfg, consistency_start=0.0))
    return loss_cfg.consistency_start * warm + (1 - loss_cfg.consistency_start) * below


@torch.no_grad()
def score(model, truth: Truth, sigma_n: float, args) -> dict:
    dist = truth.dist
    g = torch.Generator().manual_seed(11)
    x0 = dist.sample(args.n_test, g)
    excess, mmse = {}, {}
    for r in RATIOS:
        s = r * sigma_n
        xs = x0 + s * torch.randn(x0.shape, generator=g)
        d = torch.cat([model(c, s) for c in xs.split(1000)])
        exact = torch.cat([dist.denoise(c, s) for c in xs.split(1000)])
        excess[str(r)] = float((d.double() - exact.double()).square().mean())
        mmse[str(r)] = float(torch.cat([dist.posterior_variance(c, s) for c in xs.split(1000)]).mean())
    x = draw_samples(model, args.n_eval)
    out = {"excess_error": excess, "mmse": mmse, "air_std": truth.air_rms(x) / sigma_n,
           "weights_tv": truth.weights_tv(x, sigma_n), "fd_full": truth.fd(x),
           "bands": (radial_power_bands(x) / truth.bands).tolist(), "examples": x[:16, 0].tolist()}
    # sampling stopped at kappa sigma_n with a last Tweedie step D(x, kappa sigma_n)
    # (kappa = 1: truncated at sigma_n)
    out["stopped"] = {}
    for kappa in STOP_RATIOS:
        xk = draw_samples(model, args.n_eval, stop=kappa * sigma_n)
        out["stopped"][str(kappa)] = {"air_std": truth.air_rms(xk) / sigma_n, "fd": truth.fd(xk),
                                      "weights_tv": truth.weights_tv(xk, sigma_n),
                                      "bands": (radial_power_bands(xk) / truth.bands).tolist()}
    out["posterior"] = posterior_scores(model, truth, sigma_n, args.n_post)
    return out


def posterior_scores(model, truth: Truth, sigma_n: float, n: int) -> dict:
    """Denoising ``y = x0 + sigma_n e``: the per-pixel posterior std from 8 posterior samples
    (the package's ``denoise_posterior``, 32 steps) and from Tweedie's second moment at sigma_n
    (``ambient_med.diffusion.tweedie.posterior_variance``, period 4: 16 probes), against the exact
    posterior std; each map's mean variance over the exact one (calibration), its Pearson
    correlation with the exact std, and the coverage of ``|x0 - mean| <= 2 std`` on the disc
    pixels (mean: D(y, sigma_n); a Gaussian posterior with the exact std covers 95.4%)."""
    from ambient_med.diffusion.sampling import denoise_posterior
    from ambient_med.diffusion.tweedie import posterior_variance

    dist = truth.dist
    g = torch.Generator().manual_seed(21)
    x0 = dist.sample(n, g)
    y = x0 + sigma_n * torch.randn(x0.shape, generator=g)
    exact_var = dist.posterior_variance(y.double(), sigma_n)
    t = time.process_time()
    post = denoise_posterior(model, y, sigma_n, n_samples=8, generator=g, uncertainty="samples")
    t_samples = time.process_time() - t
    t = time.process_time()
    tw_var = posterior_variance(model, y, sigma_n, period=4, generator=g)
    t_tweedie = time.process_time() - t
    mean = post["mean"].double()
    out = {"mean_excess": float((mean - dist.denoise(y.double(), sigma_n)).square().mean()),
           "posterior_air_std": truth.air_rms(post["samples"].flatten(0, 1)) / sigma_n}
    for name, var, sec in (("samples", post["std"].double() ** 2, t_samples),
                           ("tweedie", tw_var.double(), t_tweedie)):
        std = var.sqrt()
        out[name] = {"calibration": float(var.mean() / exact_var.mean()),
                     "pearson": float(np.corrcoef(std.flatten().numpy(), exact_var.sqrt().flatten().numpy())[0, 1]),
                     # on the disc: in the air the exact posterior is a point mass at 0
                     "coverage": float(((x0.double() - mean).abs() <= 2 * std)[:, :, ~truth.air].double().mean()),
                     "cpu_s_per_image": sec / n}
    return out


def run_cell(name: str, sigma_n: float, seed: int, args) -> dict:
    torch.set_num_threads(1)
    truth = Truth(args.n_eval)
    g = torch.Generator().manual_seed(1000 + seed)
    x0 = truth.dist.sample(args.n_train, g)
    y = x0 + sigma_n * torch.randn(x0.shape, generator=g)
    data = TensorDataset(y, sigma_n, clean=x0)
    sd = float(x0.std()) if name == "clean" else math.sqrt(max(float(y.var()) - sigma_n**2, 1e-4))
    cfg = loss_config(name, sd)

    def fresh():
        torch.manual_seed(seed)
        return MLPDenoiser(SHAPE, args.width, args.depth, sigma_data=sd)

    t_step = _step_seconds(fresh, data, cfg, args, seed)
    steps = max(int(args.minutes * 60 / t_step), 10)
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        res = train(fresh(), data, cfg, _train_config(args, steps, seed), run_dir=Path(tmp))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if args.keep:
        from safetensors.torch import save_file
        folder = Path(args.keep)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in res.model.state_dict().items()},
                  str(folder / f"{name}_{sigma_n}_{seed}.safetensors"))
    out = score(res.model, truth, sigma_n, args)
    out.update({"objective": name, "sigma_n": sigma_n, "seed": seed, "steps": steps,
                "step_seconds": t_step, "wall_s": wall, "cpu_s": cpu, "loss_config": _plain(asdict(cfg)),
                "fd_floor": truth.fd_floor, "tv_floor": truth.tv_floor(sigma_n)})
    return out


def _plain(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# LossConfig fields added after cells were measured, at the value that reproduces the old
# behaviour: left out of the key so that those cells stay valid
NEUTRAL = {"distill_every": 1}


def cell_key(name: str, sigma_n: float, seed: int, args) -> str:
    """Identifies a cell by everything that decides its result."""
    cfg = {k: v for k, v in _plain(asdict(loss_config(name, 1.0))).items()
           if NEUTRAL.get(k, object()) != v}
    return settings_key({"objective": cfg, "sigma_n": sigma_n,
                         "seed": seed, "minutes": args.minutes, "n_train": args.n_train,
                         "batch": args.batch_size, "lr": args.lr, "ema": args.ema, "lr_schedule": args.lr_schedule,
                         "net": [args.width, args.depth], "n_eval": args.n_eval}, 16)


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sigma-n", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--objectives", nargs="+", default=["clean", "pair", "anchored", "default"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--minutes", type=float, default=7.0, help="training budget per run (CPU minutes)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--lr-schedule", default="cosine", choices=["constant", "cosine"])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--n-train", type=int, default=131072)
    p.add_argument("--n-eval", type=int, default=10000)
    p.add_argument("--n-test", type=int, default=4000)
    p.add_argument("--n-post", type=int, default=1000, help="noisy test images for the posterior scores")
    p.add_argument("--timing-steps", type=int, default=20)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--tag", default="", help="suffix of the result files")
    p.add_argument("--keep", default="", help="folder to save each run's EMA weights in")
    p.add_argument("--render", action="store_true",
                   help="rewrite the report from the cells already in <tag>.cells.jsonl, run nothing")
    p.add_argument("--quick", action="store_true", help="smoke run: 0.2 min, 1 seed -> *_quick")
    a = p.parse_args()
    if a.quick:
        a.minutes, a.seeds, a.n_eval, a.n_test, a.n_post, a.timing_steps = 0.2, [0], 1000, 1000, 200, 4
        a.tag = a.tag or "quick"
    for name in a.objectives:
        if name not in OBJECTIVES:
            p.error(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
    return a


def main():
    args = parse()
    stem = RESULTS / ("below_noise" + (f"_{args.tag}" if args.tag else ""))
    cells_path = stem.with_suffix(".cells.jsonl")
    done = {c["key"]: c for c in read_jsonl(cells_path)}
    if args.render:  # only re-render the report from the cells already measured
        cells = list(done.values())
        names = list(dict.fromkeys(c["objective"] for c in cells))
        args.seeds = sorted({c["seed"] for c in cells})
        return write_report(stem, cells, sorted({c["sigma_n"] for c in cells}), names, args)
    # seed-major: a run cut short still has every noise level at the seeds it finished
    todo = [(n, sn, s) for s in args.seeds for sn in args.sigma_n for n in args.objectives
            if cell_key(n, sn, s, args) not in done]
    print(f"{len(todo)} cells to run ({len(done)} already in {cells_path.name}), "
          f"{args.workers} at a time, {args.minutes:g} min each", flush=True)
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_cell, n, sn, s, args): (n, sn, s) for n, sn, s in todo}
        for fut in futures:
            n, sn, s = futures[fut]
            c = fut.result()
            c["key"] = cell_key(n, sn, s, args)
            append_jsonl(cells_path, c)
            done[c["key"]] = c
            print(f"sigma_n {sn} {n:<12s} seed {s}: {c['steps']} steps, excess s/4 "
                  f"{c['excess_error']['0.25']:.2e}, air {c['air_std']:.3f}, TV {c['weights_tv']:.3f}, "
                  f"FD {c['fd_full']:.4f} (floor {c['fd_floor']:.4f})", flush=True)
    keys = {cell_key(n, sn, s, args) for sn in args.sigma_n for s in args.seeds for n in args.objectives}
    cells = [c for k, c in done.items() if k in keys]
    write_report(stem, cells, args.sigma_n, args.objectives, args)


def write_report(stem: Path, cells: list[dict], sigmas, names, args) -> None:
    agg = aggregate(cells, sigmas, names)
    write_json(stem.with_suffix(".json"), agg)
    md = markdown(agg, args) + f"\n![samples]({stem.name}.png)\n"
    md_path = stem.with_suffix(".md")
    kept = analysis(md_path)  # keep the hand-written reading
    md_path.write_text(md + ("\n" + kept if kept else ""))
    figure(cells, stem.with_suffix(".png"), sigmas, names)
    print(md)


if __name__ == "__main__":
    main()
