"""Where users train: the package's speed at real image sizes, against a bare PyTorch floor.

For the fastMRI knee protocol (320x320 complex slices, 2 channels, the network of
``protocols/fastmri-knee-multicoil.yaml``) and the 3D protocol (``nifti-3d``'s network on 128^3
patches) it measures

* training images/s, step time and peak memory for ``clean``, ``ambient`` and
  ``ambient+consistency`` (consistency active from the first step: its steady-state cost)
  through the package's loop (``ambient_med.training.loop.train``, in-memory data on the device);
* the same for a bare PyTorch loop that does the same loss math with the same MONAI network and
  no package code (AdamW, gradient clipping and a multi-tensor EMA, as the package): the floor of
  what the framework could cost. Before timing, the bare loss is checked against the package's
  on identical weights, data and random draws (``bare_vs_package_loss``);
* each speed option of ``TrainConfig`` (bf16 autocast, channels-last, torch.compile, gradient
  checkpointing, fused EMA) toggled alone on the ``ambient+consistency`` step;
* sampling time per slice (32 Heun steps, ``AmbientPrior.sample``) and reconstruction time per
  slice (data-consistency sampler, ``AmbientPrior.reconstruct(method="dc")`` at R = 8 with the
  ``recon`` command's defaults: 8 posterior samples x 128 steps);
* preprocessing of knee-size fastMRI-format phantom files (15 coils, ``phantoms.py``) on all CPU
  cores into the cache (and the projection to a 35,000-slice knee training set), and the share
  of step time spent waiting for data when training the knee protocol as shipped from that cache.

On a GPU, peak memory is ``torch.cuda.max_memory_allocated``. On a CPU it is the peak of live
tensor storages during one training step (``speed.TensorMemory``), with the 3D figure projected
linearly in voxels to 128^3 (the 3D network has no attention, so its activations scale with
the voxel count).

    python benchmarks/gpu.py --device cuda                  # the GPU figures (benchmarks/results/gpu.json/.md)
    python benchmarks/gpu.py --device cpu --quick           # CPU smoke: every path at 64x64 / 32^3

``--quick`` runs reduced sizes and few steps so that every code path is exercised on a CPU; its
figures are labelled CPU smoke figures and are not GPU figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common.paths import ROOT

sys.path.insert(0, str(ROOT))

from common.bare_loop import bare_matches_package, bare_run
from common.gpu_report import fmt, markdown, memory_projection
from common.gpu_setup import (
    KNEE,
    KNEE_SET_SLICES,
    OBJECTIVES,
    SIZES,
    VOL,
    equispaced_mask,
    knee_prior,
    loss_config,
    network_config,
    synthetic_set,
    train_config,
)
from common.results import RESULTS, write_json
from common.timing import device_info, guarded, peak_mb, reset_peak, sync

from ambient_med.diffusion.losses import LossConfig
from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig, count_parameters
from ambient_med.diffusion.objective import objective_loss
from ambient_med.training import speed
from ambient_med.training.config import load_protocol
from ambient_med.training.loop import TrainConfig, train
from ambient_med.utils import resolve_device


def package_run(cfg: NetworkConfig, data, c: LossConfig, t: TrainConfig, dev: torch.device) -> dict:
    torch.manual_seed(0)
    model = EDMDenoiser(cfg)
    reset_peak(dev)
    t0 = time.perf_counter()
    res = train(model, data, c, t, device=dev)
    row = res.history[-1]
    return {"images_per_sec": t.batch_size * row["steps_per_sec"],
            "step_ms": 1e3 / row["steps_per_sec"], "peak_memory_mb": peak_mb(dev),
            "data_share": row["data_share"], "wall_s": time.perf_counter() - t0}


def activation_peak_mb(cfg: NetworkConfig, shape, channels: int, batch: int, protocol: str,
                       checkpointing: bool) -> float:
    """CPU: peak MB of tensors created during one ``ambient+consistency`` forward and backward
    (the memory a step needs beyond weights, gradients, optimizer state and EMA)."""
    torch.manual_seed(0)
    model = EDMDenoiser(cfg)
    data = synthetic_set(shape, channels, batch, torch.device("cpu"))
    c = loss_config(protocol, "ambient+consistency", variant=None)
    with speed.gradient_checkpointing(model, checkpointing), speed.TensorMemory() as mem:
        objective_loss(model, data.images, data.sigma_n, c,
                       generator=torch.Generator().manual_seed(0)).loss.backward()
    return mem.peak / 2**20


def training_section(protocol: str, shape, batch: int, steps: int, dev: torch.device,
                     log) -> dict:
    channels = 2 if protocol == KNEE else 1
    cfg = network_config(protocol, len(shape), channels)
    data = synthetic_set(shape, channels, max(4 * batch, 8), dev)
    out = {"image": [channels, *shape], "batch": batch, "parameters": count_parameters(EDMDenoiser(cfg)),
           "bare_vs_package_loss": bare_matches_package(cfg, shape, channels, protocol, dev),
           "package": {}, "bare": {}}
    log(f"  bare vs package loss (relative): {out['bare_vs_package_loss']}")
    for obj in OBJECTIVES:
        c, t = loss_config(protocol, obj), train_config(protocol, batch, steps)
        out["package"][obj] = guarded(package_run, cfg, data, c, t, dev)
        out["bare"][obj] = guarded(bare_run, cfg, data, c, t, steps, dev)
        log(f"  {obj:<20} package {fmt(out['package'][obj])} | bare {fmt(out['bare'][obj])}")
    # the protocol's own below-sigma_n term (distill by default), package only
    own = loss_config(protocol, "ambient+consistency", variant=None)
    out["package"]["protocol"] = guarded(package_run, cfg, data, own,
                                         train_config(protocol, batch, steps), dev)
    out["protocol_variant"] = own.consistency_variant
    log(f"  ambient+consistency ({own.consistency_variant}) package {fmt(out['package']['protocol'])}")
    p, b = out["package"], out["bare"]
    if all("step_ms" in r for r in (p["clean"], b["clean"], p["protocol"])):
        out["clean_vs_bare"] = p["clean"]["step_ms"] / b["clean"]["step_ms"]
        out["consistency_vs_clean"] = p["protocol"]["step_ms"] / p["clean"]["step_ms"]
    if all("step_ms" in r for r in (p["clean"], p["ambient+consistency"])):
        out["pair_vs_clean"] = p["ambient+consistency"]["step_ms"] / p["clean"]["step_ms"]
    return out


OPTIONS = {  # name: (TrainConfig changes, CUDA only)
    "base": ({}, False),
    "fused_ema=false": ({"fused_ema": False}, False),
    "channels_last": ({"channels_last": True}, False),
    "grad_checkpointing": ({"grad_checkpointing": True}, False),
    "mixed_precision=false": ({"mixed_precision": False}, True),
    "compile=default": ({"compile": "default"}, True),
    "compile=reduce-overhead": ({"compile": "reduce-overhead"}, True),
    "channels_last+compile": ({"channels_last": True, "compile": "default"}, True),
}


def options_section(protocol: str, shape, batch: int, steps: int, dev: torch.device, log,
                    compile_on_cpu: bool) -> dict:
    """Each speed option alone on the ``ambient+consistency`` step (base: the package defaults;
    the protocol's own speed keys are reset to the defaults first)."""
    channels = 2 if protocol == KNEE else 1
    cfg = network_config(protocol, len(shape), channels)
    data = synthetic_set(shape, channels, max(4 * batch, 8), dev)
    c = loss_config(protocol, "ambient+consistency", variant=None)
    defaults = {k: getattr(TrainConfig(), k) for k in
                ("channels_last", "compile", "grad_checkpointing", "fused_ema", "mixed_precision")}
    out = {}
    for name, (changes, cuda_only) in OPTIONS.items():
        if (cuda_only and dev.type != "cuda") and not (compile_on_cpu and "compile" in name
                                                        and "reduce" not in name):
            out[name] = {"skipped": "CUDA only" if "compile" not in name else
                         "CPU: inductor compiles for minutes on a shared CPU (--compile-on-cpu)"}
            continue
        t = train_config(protocol, batch, steps, **{**defaults, **changes})
        out[name] = guarded(package_run, cfg, data, c, t, dev)
        log(f"  {name:<24} {fmt(out[name])}")
    if dev.type == "cpu":
        for ck in (False, True):
            key = "grad_checkpointing" if ck else "base"
            if "error" not in out.get(key, {}):
                out[key]["activation_peak_mb"] = activation_peak_mb(cfg, shape, channels, batch,
                                                                    protocol, ck)
    return out


def sampling_section(shape, batch: int, dev: torch.device, steps: int = 32) -> dict:
    prior = knee_prior(shape, dev)
    out = {"image": [2, *shape], "batch": batch, "steps": steps, "sampler": "heun",
           "network_calls": 2 * steps - 1}
    modes = {"fp32": False, "bf16_autocast": True} if dev.type == "cuda" else {"fp32": False}
    for name, amp in modes.items():
        def run():
            g = torch.Generator(device=dev).manual_seed(0)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                return prior.sample(batch, steps=steps, sampler="heun", generator=g, space="model")
        run()  # warm-up (cuDNN autotuning, allocator)
        reset_peak(dev)
        sync(dev)
        t0 = time.perf_counter()
        x = run()
        sync(dev)
        dt = time.perf_counter() - t0
        out[name] = {"seconds_per_slice": dt / batch, "peak_memory_mb": peak_mb(dev),
                     "finite": bool(torch.isfinite(x).all())}
    return out


def recon_section(shape, coils: int, batch: int, dev: torch.device, n_samples: int,
                  steps: int) -> dict:
    from ambient_med.mri.fft import fftc
    from ambient_med.synthetic.phantoms import birdcage_maps, ellipse_phantom

    prior = knee_prior(shape, dev)
    rng = np.random.default_rng(0)
    maps = birdcage_maps(shape[0], coils)
    x = np.stack([ellipse_phantom(shape[0], rng) for _ in range(batch)])
    k = fftc(maps[None] * x[:, None]) + 0.01 * (rng.standard_normal((batch, coils, *shape))
                                                + 1j * rng.standard_normal((batch, coils, *shape)))
    mask = equispaced_mask(shape[1])
    args = dict(maps=maps[None], sigma=0.01, method="dc", n_samples=n_samples)
    prior.reconstruct(k.astype(np.complex64), mask, steps=2, **args)  # warm-up
    reset_peak(dev)
    sync(dev)
    t0 = time.perf_counter()
    out = prior.reconstruct(k.astype(np.complex64), mask, steps=steps,
                            generator=torch.Generator(device=dev).manual_seed(0), **args)
    sync(dev)
    dt = time.perf_counter() - t0
    return {"image": [2, *shape], "coils": coils, "slices": batch,
            "acceleration": float(len(mask) / mask.sum()), "method": "dc",
            "n_samples": n_samples, "steps": steps, "network_calls": out["calls"],
            "seconds_per_slice": dt / batch, "peak_memory_mb": peak_mb(dev)}


def data_section(size: int, coils: int, files: int, slices: int, batch: int, steps: int,
                 prep_workers: int, loader_workers: int | None, dev: torch.device, log) -> dict:
    from ambient_med.synthetic.phantoms import make_phantom_dataset
    from ambient_med.tasks.train import build_model, load_data
    from ambient_med.training.cache import warm_cache
    from ambient_med.training.config import apply_overrides

    out = {"files": files, "slices": files * slices, "image": [size, size], "coils": coils}
    with tempfile.TemporaryDirectory(prefix="ambient_gpu_bench_") as tmp:
        tmp = Path(tmp)
        make_phantom_dataset(tmp / "data", n_files=files, slices=slices, size=size, coils=coils,
                             sigma=0.02)
        proto = load_protocol(KNEE)
        patch = min(proto.data.patch_size[0], size // 2)
        proto = apply_overrides(proto, {"data": {"patch_size": [patch, patch],
                                                 "num_workers": prep_workers}})
        # preprocessing (noise estimate, whitening, coil compression, ESPIRiT maps, combination)
        # of every slice, in prep_workers processes, into an empty cache: what a first run pays
        t0 = time.perf_counter()
        ds, info = load_data([str(tmp / "data")], proto, "auto", cache_dir=tmp / "cache")
        base = ds.data
        for p in (tmp / "cache").glob("*.pt"):
            p.unlink()
        t1 = time.perf_counter()
        warm_cache(base, prep_workers)
        fill = time.perf_counter() - t1
        rate = out["slices"] / fill
        out["preprocessing"] = {"workers": prep_workers, "slices_per_second": rate,
                                "seconds_per_slice_per_worker": prep_workers / rate,
                                "first_build_seconds": t1 - t0,
                                "projected_hours_35000_slices": KNEE_SET_SLICES / rate / 3600}
        log(f"  preprocessing: {rate:.2f} slices/s on {prep_workers} workers -> "
            f"{KNEE_SET_SLICES / rate / 3600:.1f} h for {KNEE_SET_SLICES} slices")
        # training the protocol as shipped (random patches from the cache, its loader workers)
        workers = proto.train.num_workers if loader_workers is None else loader_workers
        workers = min(workers, os.cpu_count() or 1)
        p = replace(proto, loss=replace(proto.loss, consistency_start=0.0),
                    train=replace(proto.train, steps=2 * steps, batch_size=batch, log_every=steps,
                                  lr_warmup=1, checkpoint_every=10**9, num_workers=workers))
        torch.manual_seed(0)
        model, loss_cfg = build_model(p, info)
        res = train(model, ds, loss_cfg, p.train, device=dev)
        row = res.history[-1]
        out["training"] = {"patch": [patch, patch], "batch": batch, "loader_workers": workers,
                           "objective": loss_cfg.objective, "data_share": row["data_share"],
                           "images_per_sec": batch * row["steps_per_sec"],
                           "step_ms": 1e3 / row["steps_per_sec"]}
        log(f"  training from the cache: data share {100 * row['data_share']:.1f}% "
            f"({workers} loader workers)")
    return out


def targets(res: dict, full: bool) -> dict:
    """The benchmark's targets; only meaningful for a full-size GPU run."""
    t = {}
    knee, vol = res.get("training", {}).get("knee", {}), res.get("training", {}).get("3d", {})
    if "clean_vs_bare" in knee:
        t["knee clean step within 10% of bare"] = knee["clean_vs_bare"] <= 1.10
        t["knee ambient+consistency <= 1.6x clean"] = knee["consistency_vs_clean"] <= 1.6
    if vol:
        t["3d 128^3 step fits at batch >= 2"] = all(
            "error" not in r for r in vol["package"].values()) and vol["batch"] >= 2
    s = res.get("sampling", {}).get("fp32", {})
    if s:
        t["sampling 320x320, 32 steps < 2 s per slice"] = s["seconds_per_slice"] < 2.0
    d = res.get("data", {})
    if d:
        t["data waiting < 5% of step time"] = d["training"]["data_share"] < 0.05
        t["35,000-slice preprocessing < 1 h"] = d["preprocessing"]["projected_hours_35000_slices"] < 1
    if not full:
        t = {k: None for k in t}  # reduced sizes: no verdict
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--quick", action="store_true",
                    help="reduced sizes (64x64, 32^3) and few steps: a CPU smoke run")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (as many warm-up)")
    ap.add_argument("--knee-batch", type=int, default=None)
    ap.add_argument("--vol-batch", type=int, default=None)
    ap.add_argument("--sections", default="training,options,sampling,recon,data",
                    help="comma-separated subset of training,options,sampling,recon,data")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--prep-workers", type=int, default=None,
                    help="processes that fill the preprocessing cache (default: all cores)")
    ap.add_argument("--compile-on-cpu", action="store_true",
                    help="also time torch.compile on a CPU (minutes of compiling)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default: results/gpu.json on CUDA, gpu_cpu_smoke.json on CPU)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other sections of an existing result file at --out (same "
                         "device kind and size): run the sections one command at a time")
    ap.add_argument("--render", type=Path, default=None,
                    help="only write the Markdown table of an existing JSON result")
    args = ap.parse_args()

    if args.render is not None:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    full = not args.quick
    sizes = SIZES["full" if full else "quick"]
    steps = args.steps or (20 if full else 2)
    sections = set(args.sections.split(","))
    (kshape, kbatch), (vshape, vbatch) = sizes[KNEE], sizes[VOL]
    kbatch, vbatch = args.knee_batch or kbatch, args.vol_batch or vbatch
    out = args.out or RESULTS / ("gpu.json" if dev.type == "cuda" and full else
                                 "gpu_cpu_smoke.json" if dev.type == "cpu" else "gpu_quick.json")
    label = ("GPU figures" if dev.type == "cuda" and full else
             "CPU smoke figures (reduced sizes, few steps; NOT GPU figures)" if dev.type == "cpu"
             else "GPU smoke figures (reduced sizes; not the target sizes)")
    command = "python benchmarks/gpu.py " + " ".join(sys.argv[1:])
    res = {"label": label, "command": command,
           "device": device_info(dev), "quick": args.quick, "timed_steps": steps,
           "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.merge and out.is_file():
        old = json.loads(out.read_text())
        if old.get("quick") == args.quick and old["device"]["device"] == dev.type:
            old.update({k: v for k, v in res.items() if k not in ("command",)})
            old["command"] = (old.get("command", "") + "; " + command).lstrip("; ")
            res = old
    log = lambda s: print(s, flush=True)  # noqa: E731
    log(f"{label} on {res['device'].get('gpu', res['device']['cpu'])}")
    t_start = time.perf_counter()

    if "training" in sections:
        res["training"] = {}
        for key, proto, shape, batch in (("knee", KNEE, kshape, kbatch), ("3d", VOL, vshape, vbatch)):
            log(f"training {key} {shape} batch {batch}")
            res["training"][key] = training_section(proto, shape, batch, steps, dev, log)
    if "options" in sections:
        res["options"] = {}
        for key, proto, shape, batch in (("knee", KNEE, kshape, kbatch), ("3d", VOL, vshape, vbatch)):
            log(f"speed options {key}")
            res["options"][key] = options_section(proto, shape, batch, steps, dev, log,
                                                  args.compile_on_cpu)
        o = res["options"]["3d"]
        if dev.type == "cpu" and "activation_peak_mb" in o.get("base", {}):
            res["memory_projection"] = memory_projection(o, vshape, vbatch)
    if "sampling" in sections:
        log("sampling")
        res["sampling"] = guarded(sampling_section, kshape, 8 if full else 1, dev)
        log(f"  {res['sampling']}")
    if "recon" in sections:
        log("recon")
        res["recon"] = guarded(recon_section, kshape, 15 if full else 4, 2 if full else 1, dev,
                               8 if full else 2, 128 if full else 4)
        log(f"  {res['recon']}")
    if "data" in sections:
        log("data")
        prep = args.prep_workers or (os.cpu_count() or 1)
        res["data"] = guarded(data_section, 320 if full else 64, 15 if full else 4,
                              2 if full else 2, 16 if full else 4, 32 if full else 2, steps,
                              prep, None, dev, log)
    res["targets"] = targets(res, full and dev.type == "cuda")
    res["wall_seconds"] = res.get("wall_seconds", 0.0) * bool(args.merge) + time.perf_counter() - t_start
    write_json(out, res, indent=2, default=float)
    md = out.with_suffix(".md")
    md.write_text(markdown(res))
    log(f"wrote {out} and {md} ({res['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
