"""Time to an uncertainty map: ``denoise`` of one 512x512 fluorescence capture with its std map.

The user's path (``ambient_med.tasks.denoise.denoise_file``, what ``ambient-med denoise`` runs) on
capture 0 of FMD confocal field 5, with a trained microscopy prior (``--prior``; the results were
measured with the ``microscopy-2d-cpu`` prior of ``microscopy_preset.py`` at about 30 CPU-minutes,
noise map on). Variants, each timed in this process on ``--threads`` torch threads:

- ``tweedie, tiled``: the default: the posterior mean (mean of the top-up draws) and the Tweedie
  std map (coloured Jacobian probes, ``diffusion.tweedie.posterior_variance``, forward
  differences from one shared ``D(x)``), the network on tiles of the training patch (overlap a
  quarter);
- ``tweedie, tiled, central difference``: the same with central differences (two network calls
  per Jacobian product, the std map's path before the forward difference), the same probes;
- ``tweedie, tiled, probes seed 1``: the default with another draw of the probes, so that the
  change the forward difference makes to the map (relative L2 to the default's, column
  ``map change``) can be read against the probes' own Monte-Carlo spread;
- ``mean only, whole`` (only with ``--whole``): the posterior mean through the whole image
  (``--tile 512``): no overlap to pay for, but the network's middle block then attends over
  (512/4)^2 positions, quadratic in the image size (the attention runs through torch's fused
  kernel, so it fits in memory; an explicit attention matrix asked for 34 GB);
- ``mean only``: the posterior mean without a std map (``--uncertainty none``), for reference.

Each row reports the wall seconds, the PSNR of the posterior mean against the 50-capture average
(8-bit range), the mean std, and the Pearson correlation of the std map with the absolute error of
the mean (both smoothed over 8x8 pixels: the std map is a per-pixel estimate, the error one draw).

Run:  python benchmarks/denoise_time.py --prior PRIOR.safetensors [--threads 2] [--quick]
Writes benchmarks/results/denoise_time.{json,md} (``--quick``: ``denoise_time_quick.*``, a
128x128 crop).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch
from common.paths import FMD
from common.results import RESULTS, run_meta, settings, stem, write_json
from common.scoring import psnr
from common.tables import analysis, table

from ambient_med.diffusion import tweedie
from ambient_med.io.image_files import read_image, write_image
from ambient_med.prior import AmbientPrior
from ambient_med.tasks.denoise import denoise_file, std_path

VARIANTS = {"tweedie, tiled": dict(tile=None, uncertainty=None),
            "tweedie, tiled, central difference": dict(tile=None, uncertainty=None, difference="central"),
            "tweedie, tiled, probes seed 1": dict(tile=None, uncertainty=None, seed=1),
            "mean only, tiled": dict(tile=None, uncertainty="none")}
WHOLE = {"mean only, whole": dict(tile=512, uncertainty="none")}


@contextmanager
def finite_difference(kind: str | None):
    """``denoise_file``'s std map with ``posterior_variance(difference=kind)`` (None: the default)."""
    original = tweedie.posterior_variance
    if kind is not None:
        tweedie.posterior_variance = partial(original, difference=kind)
    try:
        yield
    finally:
        tweedie.posterior_variance = original


def smooth(x: np.ndarray, n: int = 8) -> np.ndarray:
    h, w = (s - s % n for s in x.shape)
    return x[:h, :w].reshape(h // n, n, w // n, n).mean((1, 3))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", type=Path, required=True)
    p.add_argument("--field", type=int, default=5)
    p.add_argument("--capture", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a 128x128 crop")
    p.add_argument("--whole", action="store_true", help="also the whole-image posterior mean (module doc)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    frames = sorted(f for f in (FMD / "raw" / str(a.field)).iterdir() if f.suffix == ".png")
    y, y_meta = read_image(frames[a.capture])
    ref = read_image(FMD / "gt" / str(a.field) / "avg50.png")[0].astype(np.float64)
    if a.quick:
        y, ref = y[:128, :128], ref[:128, :128]
    training = AmbientPrior.load(a.prior).metadata.training
    rows, default_std = [], None
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "capture.png"
        write_image(src, y, y_meta)
        for name, kw in {**VARIANTS, **(WHOLE if a.whole else {})}.items():
            kw = dict(kw)
            out = Path(tmp) / f"{name.replace(', ', '_').replace(' ', '_')}.png"
            t = time.perf_counter()
            with finite_difference(kw.pop("difference", None)):
                denoise_file(a.prior, src, out, overwrite=True, device="cpu", **kw)
            sec = time.perf_counter() - t
            mean = read_image(out)[0].astype(np.float64)
            r = {"variant": name, "seconds": sec, "psnr": psnr(ref, mean, 255.0)}
            if kw["uncertainty"] is None:
                std = read_image(std_path(out))[0].astype(np.float64)
                default_std = std if default_std is None else default_std
                r["map_change"] = float(np.linalg.norm(std - default_std) / np.linalg.norm(default_std))
                r["mean_std"] = float(std.mean())
                r["pearson_std_error"] = float(np.corrcoef(smooth(std).ravel(),
                                                           smooth(np.abs(mean - ref)).ravel())[0, 1])
            rows.append(r)
            print(f"{name}: {sec:.1f} s, PSNR {r['psnr']:.2f}", flush=True)
    meta = {"settings": settings(a), "shape": list(y.shape), "noisy_psnr": psnr(ref, y.astype(np.float64), 255.0),
            "prior_training": {k: training.get(k) for k in ("protocol", "steps", "image_shape")},
            **run_meta(a.threads)}
    name = stem("denoise_time", a.quick)
    write_json(a.out / f"{name}.json", {"rows": rows, "meta": meta})
    md = a.out / f"{name}.md"
    nan = float("nan")
    body = [[r["variant"], f"{r['seconds']:.1f}", f"{r['psnr']:.2f}", f"{r.get('mean_std', nan):.3f}",
             f"{r.get('pearson_std_error', nan):.2f}", f"{r.get('map_change', nan):.4f}"] for r in rows]
    text = "\n".join([
        "# Time to an uncertainty map (benchmarks/denoise_time.py)\n",
        f"{meta['date']}; `denoise_file` on capture {a.capture} of FMD field {a.field} ({y.shape[0]}x{y.shape[1]}), "
        f"{a.threads} torch threads, CPU; prior: {meta['prior_training']}; noisy capture "
        f"{meta['noisy_psnr']:.2f} dB. PSNR of the posterior mean against the 50-capture average; Pearson "
        "of the std map with the mean's absolute error (8x8 blocks); map change: relative L2 distance of "
        "the std map from the first row's.\n",
        *table(["variant", "seconds", "PSNR (dB)", "mean std (8-bit units)", "Pearson std vs error",
                "map change"], body)])
    md.write_text(text + "\n" + ("" if a.quick else "\n" + analysis(md)))
    print(text)


if __name__ == "__main__":
    main()
