"""Training speed of the protocol networks on this machine's CPU, option by option.

For each protocol network (``demo``, ``microscopy-2d``, ``fastmri-knee-multicoil``) at a CPU-sized
batch, the time of one training step of the network: a denoising loss at a random EDM noise level,
backward, Adam, EMA (the network is what a CPU step spends its time on: the objective adds
elementwise work and, below ``sigma_n``, calls of the same network). Options, each against the
protocol's network at ``--threads`` intra-op threads (``baseline``, default 1) and one inter-op thread:

- ``threads=2``: two intra-op threads (``torch.set_num_threads``);
- ``channels_last``: NHWC weights and activations (``train.channels_last``);
- ``bf16``: bf16 autocast on the CPU around forward and loss;
- ``compile``: ``torch.compile`` (inductor, CPU), timed after its compile, which is reported;
- shapes (``NetworkConfig``): no attention; ``cpu``: the protocol's levels with half the
  features and no attention (the preset a CPU user would train);
- ``explicit attention``: the attention blocks (the attention levels and MONAI's middle block,
  which always attends) with an explicit attention matrix, as before the networks used torch's
  fused ``scaled_dot_product_attention`` (the baseline).

Reported: images/s (batch / median step time over ``--steps`` timed steps after ``--warmup``),
its ratio to the baseline, parameters. Quality at equal steps is measured on real data by
``--quality``: the microscopy network, baseline and the fastest exact option (``channels_last`` or
``compile``, which change nothing but float round-off) and the ``cpu`` shape, each trained for the
same steps with the package's ``train`` on one FMD field (``fmd.py``'s data), PSNR of the
posterior mean against the 50-capture average.

Run:  python benchmarks/cpu_speed.py [--quick] [--quality] [--tag NAME]
Writes benchmarks/results/cpu_speed.{json,md} (``--quick``: ``cpu_speed_quick.*``; ``--tag``:
``cpu_speed_NAME.*``, for a run of some options only).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from common.paths import FMD
from common.results import RESULTS, run_meta, stem, write_json
from common.scoring import psnr
from common.tables import table

from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig
from ambient_med.training.config import load_protocol
from ambient_med.training.ema import ema_update

# protocol -> (channels, image size, CPU batch): the knee protocol's complex images are 2 channels
PROTOCOLS = {"demo": (2, 32, 12), "microscopy-2d": (1, 64, 8), "fastmri-knee-multicoil": (2, 128, 4)}
OPTIONS = ("baseline", "threads=2", "channels_last", "bf16", "compile", "no attention", "cpu",
           "explicit attention")
# options not run on the knee network unless --all: bf16 is 10-30x slower than fp32 on the smaller
# networks of this CPU (no bf16 instructions), so 4 knee steps would take most of an hour, and
# compiling the 18M-parameter U-Net takes longer than the run it would speed up
SLOW = {"fastmri-knee-multicoil": ("bf16", "compile")}


def network(protocol: str, option: str) -> NetworkConfig:
    net = asdict(load_protocol(protocol).network)
    channels = PROTOCOLS[protocol][0]
    cfg = NetworkConfig(**{**net, "channels": channels, "sigma_data": 0.5})
    if option == "no attention":
        cfg = replace(cfg, attention_levels=tuple(False for _ in cfg.features))
    if option == "cpu":
        half = tuple(max(cfg.norm_num_groups, f // 2) for f in cfg.features)
        cfg = replace(cfg, features=half, attention_levels=tuple(False for _ in half))
    return cfg


def step_time(protocol: str, option: str, steps: int, warmup: int, threads: int) -> dict:
    channels, size, batch = PROTOCOLS[protocol]
    torch.set_num_threads(2 if option == "threads=2" else threads)
    torch.manual_seed(0)
    model = EDMDenoiser(network(protocol, option))
    if option == "explicit attention":
        from monai.networks.blocks.selfattention import SABlock

        for block in model.modules():
            if isinstance(block, SABlock):
                block.use_flash_attention = False
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(batch, channels, size, size) * 0.5
    if option == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ema = copy.deepcopy(model).requires_grad_(False)
    net = model
    compile_s = None
    if option == "compile":
        t = time.perf_counter()
        net = torch.compile(model)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=option == "bf16")
    g = torch.Generator().manual_seed(1)

    def one():
        sigma = (torch.randn(batch, generator=g) * 1.2 - 1.2).exp()
        noisy = x + sigma.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=g)
        with autocast:
            loss = ((net(noisy, sigma) - x).float() ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, model, 0.999)

    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        one()
        dt = time.perf_counter() - t0
        if option == "compile" and i == 0:
            compile_s = time.perf_counter() - t
        if i >= warmup:
            times.append(dt)
    med = statistics.median(times)
    return {"protocol": protocol, "option": option, "batch": batch, "size": size, "params": params,
            "step_s": med, "images_per_s": batch / med, "compile_s": compile_s, "steps_timed": steps}


def quality(args, variants=("baseline", "channels_last", "cpu")) -> list[dict]:
    """PSNR after equal steps (module doc): ``microscopy-2d`` trained by ``run_training`` on
    captures 1-49 of FMD field ``args.field``, capture 0 denoised by ``denoise_file``, scored
    against the 50-capture average (8-bit range)."""
    import tempfile

    import numpy as np
    import yaml
    from PIL import Image

    from ambient_med.tasks.denoise import denoise_file
    from ambient_med.tasks.train import run_training

    raw = sorted((FMD / "raw" / str(args.field)).glob("*.png"))
    ref = np.asarray(Image.open(next((FMD / "gt" / str(args.field)).glob("*.png"))), dtype=np.float64)
    work = Path(tempfile.mkdtemp(prefix="cpu_speed_"))
    (work / "train").mkdir()
    for f in raw[1:]:
        (work / "train" / f.name).symlink_to(f)
    np.save(work / "held.npy", np.asarray(Image.open(raw[0]), dtype=np.float32))
    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "ambient_med" / "protocols"
                           / "microscopy-2d.yaml").read_text())
    rows = []
    for v in variants:
        torch.set_num_threads(args.threads)
        proto = copy.deepcopy(base)
        proto["name"] = f"microscopy-2d-{v}"
        proto["train"].update(steps=args.quality_steps, batch_size=4, num_workers=0,
                              lr_warmup=max(1, args.quality_steps // 10),
                              checkpoint_every=args.quality_steps, channels_last=v == "channels_last")
        proto["sampler"]["previews"] = 0
        if v == "cpu":
            net = network("microscopy-2d", "cpu")
            proto["network"].update(features=list(net.features), attention_levels=list(net.attention_levels))
        path = work / f"{v}.yaml"
        path.write_text(yaml.safe_dump(proto, sort_keys=False))
        t = time.perf_counter()
        res = run_training([str(work / "train")], work / f"run-{v}", protocol=path, sigma_n="auto",
                           previews=0, handle_signals=False)
        sec = time.perf_counter() - t
        denoise_file(res.prior_path, work / "held.npy", work / f"den-{v}.npy", uncertainty="none")
        den = np.load(work / f"den-{v}.npy").astype(np.float64)
        rows.append({"variant": v, "steps": args.quality_steps, "train_s": sec, "psnr": psnr(den, ref, 255.0),
                     "noisy_psnr": psnr(np.load(work / "held.npy"), ref, 255.0)})
        print(f"quality {v:14s} PSNR {rows[-1]['psnr']:.2f} dB after {args.quality_steps} steps ({sec:.0f} s)",
              flush=True)
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS))
    p.add_argument("--options", nargs="+", default=list(OPTIONS))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="demo network only, 2 steps: checks the path")
    p.add_argument("--all", action="store_true", help="also the SLOW options (bf16, compile) on the knee network")
    p.add_argument("--quality", action="store_true", help="also the PSNR after equal steps on FMD")
    p.add_argument("--quality-steps", type=int, default=150)
    p.add_argument("--field", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--tag", default="", help="write cpu_speed_TAG.* (a run of some options only)")
    args = p.parse_args(argv)
    if args.quick:
        args.protocols, args.steps, args.warmup = ["demo"], 2, 1
    torch.set_num_interop_threads(1)
    rows = []
    for proto in args.protocols:
        for opt in args.options:
            if opt in SLOW.get(proto, ()) and not args.all:
                continue
            r = step_time(proto, opt, args.steps, args.warmup, args.threads)
            rows.append(r)
            base = next(b for b in rows if b["protocol"] == proto and b["option"] == "baseline")
            r["speedup"] = r["images_per_s"] / base["images_per_s"]
            print(f"{proto:24s} {opt:14s} {r['images_per_s']:8.2f} img/s  x{r['speedup']:.2f}  "
                  f"{r['params'] / 1e6:.2f}M params" + (f"  compile {r['compile_s']:.0f} s" if r["compile_s"] else ""),
                  flush=True)
    qual = quality(args) if args.quality else []
    meta = {**run_meta(args.threads), "cpu_count": os.cpu_count(), "steps": args.steps, "warmup": args.warmup}
    name = stem("cpu_speed" + (f"_{args.tag}" if args.tag else ""), args.quick)
    write_json(args.out / f"{name}.json", {"rows": rows, "quality": qual, "meta": meta})
    (args.out / f"{name}.md").write_text(markdown(rows, qual, meta))
    return {"rows": rows, "quality": qual, "meta": meta}


def markdown(rows, qual, meta) -> str:
    out = ["# Training speed of the protocol networks on the CPU (benchmarks/cpu_speed.py)\n",
           f"{meta['date']}, torch {meta['torch']}, {meta['cpu_count']} CPU cores, baseline "
           f"{meta['threads']} threads; median of {meta['steps']} timed steps after {meta['warmup']} "
           "warm-up steps (network forward, loss, backward, Adam, EMA). Not run on the knee network: "
           + ", ".join(SLOW["fastmri-knee-multicoil"]) + " (see the script).\n",
           *table(["protocol", "option", "batch x size", "parameters", "images/s", "vs baseline", "compile (s)"])]
    for r in rows:
        c = f"{r['compile_s']:.0f}" if r["compile_s"] else ""
        out.append(f"| {r['protocol']} | {r['option']} | {r['batch']} x {r['size']}^2 | "
                   f"{r['params'] / 1e6:.2f}M | {r['images_per_s']:.2f} | x{r['speedup']:.2f} | {c} |")
    if qual:
        out += ["", f"## Quality after {qual[0]['steps']} steps (microscopy-2d on FMD field, batch 4 of 64^2)\n",
                f"Noisy capture: {qual[0]['noisy_psnr']:.2f} dB.\n",
                *table(["variant", "PSNR of the posterior mean (dB)", "training wall time (s)"])]
        out += [f"| {q['variant']} | {q['psnr']:.2f} | {q['train_s']:.0f} |" for q in qual]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
