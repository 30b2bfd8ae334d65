"""Slices per second: raw lazy reading of a fastMRI-format file, and the cached pipeline.

Run:  PYTHONPATH=. python benchmarks/io_throughput.py [--slices 20] [--workers 2]
Writes a 20-slice, 15-coil, 640x368 file (the fastMRI brain/knee layout) to a temporary
folder and reports, in benchmarks/results/io_throughput.json:

* raw_h5py: ``f["kspace"][i]`` alone (one hyperslab per slice);
* reader: :class:`ambient_med.io.FastMRIFile` (adds readout-oversampling crop, checks);
* pipeline_first_pass: ``build_training_set`` items, cache empty (whitening, ESPIRiT maps,
  coil combination, one process), and pipeline_warm_cache_workers (the same filled by
  ``--workers`` data-loader processes);
* pipeline_cached_pass: the same items read back from the on-disk cache.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import h5py
from common.results import RESULTS, write_json

from ambient_med.io import FastMRIFile
from ambient_med.synthetic.mri import write_knee_like
from ambient_med.training.cache import warm_cache
from ambient_med.training.datasets import build_training_set


def rate(n, fn):
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    return {"slices": n, "seconds": dt, "slices_per_second": n / dt}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ambient_io_"))
    try:
        f = write_knee_like(tmp / "file_brain.h5", slices=args.slices, coils=15, kx=640, ky=368)
        n = args.slices
        res = {"file": {"slices": n, "coils": 15, "kx": 640, "ky": 368, "bytes": f.stat().st_size}}

        def raw():
            for i in range(n):
                with h5py.File(f, "r") as h:
                    h["kspace"][i]

        res["raw_h5py"] = rate(n, raw)
        src = FastMRIFile(f)
        res["reader"] = rate(n, lambda: [src.read(i) for i in range(n)])

        ds, info = build_training_set([f], cache_dir=tmp / "cache")  # computes 16 stat items
        shutil.rmtree(tmp / "cache")
        ds, info = build_training_set([f], cache_dir=tmp / "cache2", num_workers=0)
        for p in (tmp / "cache2").glob("*.pt"):
            p.unlink()
        res["pipeline_first_pass"] = rate(n, lambda: [ds[i] for i in range(n)])
        res["pipeline_cached_pass"] = rate(n, lambda: [ds[i] for i in range(n)])
        for p in (tmp / "cache2").glob("*.pt"):
            p.unlink()
        res[f"pipeline_warm_cache_{args.workers}_workers"] = rate(n, lambda: warm_cache(ds.data, args.workers))
        res["dataset_info"] = info.to_dict()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for k, v in res.items():
        if "slices_per_second" in v:
            print(f"{k:34s} {v['slices_per_second']:9.2f} slices/s  ({v['seconds']:.2f} s for {v['slices']})")
    out = write_json(RESULTS / "io_throughput.json", res, indent=2, default=float)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
