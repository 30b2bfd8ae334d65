"""Training throughput of the default 2D protocol on this machine, per objective.

Measures images per second (batch size / mean step time) and the share of step time spent
waiting for data (``data_share`` in the metrics rows of ``train.py``: the time to get a batch
from the DataLoader and move it to the device, divided by the wall time of the step), on
fastMRI-format phantom files (2 files x 16 slices, 8 coils, 128x128) read through the real data
path exactly as ``ambient-med train`` reads them (``run.load_data``: whitening, ESPIRiT maps and
coil combination cached on disk before training, random patches drawn per step).

The default protocol is sized for a GPU (batch 32 of 128x128 patches, 18.2M parameters); on a CPU
the batch is lowered with ``--batch-size`` (default 4) and only a few steps are timed after a
warm-up. ``ambient+consistency`` is timed with the consistency term active from the first step
(``consistency_start = 0``), i.e. its steady-state cost in the second half of a run.

    python benchmarks/throughput.py [--steps 5] [--warmup 2] [--batch-size 4] [--device cpu] [--threads 1]

Writes ``benchmarks/results/throughput.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from common.results import RESULTS, write_json

from ambient_med.diffusion.losses import OBJECTIVES
from ambient_med.synthetic.phantoms import make_phantom_dataset
from ambient_med.tasks.train import build_model, load_data
from ambient_med.training.config import DEFAULT_PROTOCOL, load_protocol
from ambient_med.training.loop import train
from ambient_med.utils import resolve_device


class WithClean(torch.utils.data.Dataset):
    """The ``clean`` oracle needs a clean image per item; for timing, the noisy one serves."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        item = dict(self.ds[i])
        item["clean"] = item["image"]
        return item


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", default=DEFAULT_PROTOCOL)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per objective")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's choice; on a shared CPU, 1 "
                         "avoids OpenMP threads spinning against other processes)")
    ap.add_argument("--out", type=Path, default=RESULTS / "throughput.json")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    proto = load_protocol(args.protocol)
    size = max(proto.data.patch_size or [128])
    with tempfile.TemporaryDirectory() as tmp:
        make_phantom_dataset(Path(tmp) / "data", n_files=2, slices=16, size=size, coils=8,
                             sigma=0.05)
        t0 = time.perf_counter()
        # as `ambient-med train` does: preprocessing cached on disk and warmed before training
        ds, info = load_data([str(Path(tmp) / "data")], proto, "auto", cache_dir=Path(tmp) / "cache")
        t_prep = time.perf_counter() - t0
        results = {"device": f"{dev.type}: {platform.processor() or platform.machine()}, "
                             f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
                   "protocol": proto.name, "batch_size": args.batch_size,
                   "image_shape": list(info.shape), "channels": info.channels,
                   "timed_steps": args.steps, "items": len(ds),
                   "preprocessing_seconds_per_item": t_prep / len(ds), "load_average_1min": os.getloadavg()[0],
                   "images_per_sec": {}, "data_loading_share": {}}
        for objective in OBJECTIVES:
            p = replace(proto, loss=replace(proto.loss, objective=objective, consistency_start=0.0),
                        train=replace(proto.train, steps=args.warmup + args.steps,
                                      batch_size=args.batch_size, log_every=1,
                                      checkpoint_every=10**9, num_workers=0))
            torch.manual_seed(0)
            model, loss_cfg = build_model(p, info)
            data = WithClean(ds) if objective == "clean" else ds
            t0 = time.perf_counter()
            res = train(model, data, loss_cfg, p.train, device=dev)
            rows = res.history[args.warmup:]
            step_time = sum(1 / r["steps_per_sec"] for r in rows) / len(rows)
            results["images_per_sec"][objective] = args.batch_size / step_time
            results["data_loading_share"][objective] = sum(r["data_share"] for r in rows) / len(rows)
            print(f"  {objective}: {time.perf_counter() - t0:.0f} s", flush=True)
    write_json(args.out, results, indent=2)
    print(f"\n{results['protocol']} on {results['device']}, batch {args.batch_size} of "
          f"{info.channels}x{'x'.join(map(str, info.shape))}")
    print(f"{'objective':<22}{'images/s':>10}{'data share':>12}")
    for o in OBJECTIVES:
        print(f"{o:<22}{results['images_per_sec'][o]:>10.2f}{100 * results['data_loading_share'][o]:>11.2f}%")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
