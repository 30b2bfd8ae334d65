"""Is the consistency pair centred at the exact denoisers? Measured with closed-form denoisers.

At the exact denoisers the pair ``(T - D(x_u1, u)) . (T - D(x_u2, u))`` has conditional mean
``|| T - E_kernel[D(x_u, u) | x_s] ||^2``: zero if the kernel ``x_s -> x_u`` is the true reverse
transition, positive where it is not. Gaussian data cannot show a kernel's variance error (its
exact denoiser is linear, so only the kernel's mean matters); this script uses non-Gaussian data
with closed-form denoisers:

- ``pm1``      i.i.d. +-1 pixels (``E[x0|x] = tanh(x/sigma^2)``), the most non-linear case;
- ``pixmix``   i.i.d. pixels from a three-mode 1-D Gaussian mixture;
- ``fieldmix`` the mixture of stationary Gaussian fields of ``benchmarks/exactness_mixture.py``;
- ``field``    the Gaussian field of ``benchmarks/exactness.py`` (control: every variant is centred).

For each variant of the loss settings it prints the mean of the package's ``consistency_loss``
in standard errors (|z| < 3 is "centred at this sample size"), the mean relative to the mean
absolute pair (the bias as a share of the signal), and the no-grad network calls per
consistency sample (the cost beyond the two gradient calls).

    python benchmarks/consistency_kernels.py [--draws 40000]
Writes benchmarks/results/consistency_kernels.{json,md}. The recorded results also hold rows of
the withdrawn ``anchored`` variant, measured with an earlier version of this script, before
``LossConfig`` stopped offering it.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from common.results import RESULTS, write_json
from common.tables import row, rule

from ambient_med.diffusion.losses import LossConfig
from ambient_med.diffusion.objective import consistency_loss
from ambient_med.synthetic.mixtures import GaussianField, GaussianMixtureField, PixelMixture

VARIANTS = {
    "pair r(0.5,0.9) order1 (0.1.0 default)": dict(consistency_order=1, consistency_step_ratio=(0.5, 0.9)),
    "pair r(0.5,0.9) sub2": dict(consistency_step_ratio=(0.5, 0.9), consistency_substeps=2),
    "pair r(0.8,0.95) sub1": dict(consistency_step_ratio=(0.8, 0.95)),
    "pair r(0.8,0.95) sub2": dict(consistency_step_ratio=(0.8, 0.95), consistency_substeps=2),
    "pair r(0.8,0.95) sub4": dict(consistency_step_ratio=(0.8, 0.95), consistency_substeps=4),
    "pair r(0.9,0.98) sub1": dict(consistency_step_ratio=(0.9, 0.98)),
    "pair r(0.9,0.98) sub2": dict(consistency_step_ratio=(0.9, 0.98), consistency_substeps=2),
}


def no_grad_calls(cfg: LossConfig) -> int:
    """No-grad denoiser calls per consistency sample (each of the two chains counts)."""
    if cfg.consistency_variant == "pair":
        return cfg.consistency_chain_steps + 1 + 2 * (cfg.consistency_substeps - 1)
    return 1 + 2 * (cfg.consistency_chain_steps - 1)


def distributions():
    pm1 = PixelMixture()
    pix = PixelMixture(weights=(0.5, 0.3, 0.2), means=(-1.2, 0.4, 1.8), stds=(0.3, 0.5, 0.2))
    fm = GaussianMixtureField()
    gf = GaussianField((16, 16))
    return {"pm1": (pm1, pm1.denoise, (0.5,)), "pixmix": (pix, pix.denoise, (0.5,)),
            "fieldmix": (fm, fm.denoise, (0.5, 1.0)), "field": (gf, gf.wiener, (1.0,))}


def measure(dist, denoiser, sigma_n, cfg, draws, seed=0, chunk=4000):
    g = torch.Generator().manual_seed(seed)
    vals = []
    for start in range(0, draws, chunk):
        n = min(chunk, draws - start)
        x0 = dist.sample(n, g).double()
        y = x0 + sigma_n * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        vals.append(consistency_loss(denoiser, y, torch.full((n,), sigma_n, dtype=y.dtype), cfg,
                                     generator=g))
    v = torch.cat(vals)
    se = v.std() / math.sqrt(v.numel())
    return {"z": float(v.mean() / se), "mean": float(v.mean()), "se": float(se),
            "rel_bias": float(v.mean() / v.abs().mean())}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draws", type=int, default=40000)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--dists", nargs="*", default=["pm1", "pixmix", "fieldmix", "field"])
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    base = LossConfig(sigma_data=1.0)
    dists = distributions()
    out, t0 = {}, time.perf_counter()
    for name in a.variants:
        cfg = replace(base, **VARIANTS[name])
        cells = {"no_grad_calls": no_grad_calls(cfg)}
        for dn in a.dists:
            dist, den, sns = dists[dn]
            for sn in sns:
                cells[f"{dn}@{sn}"] = measure(dist, den, sn, cfg, a.draws)
        out[name] = cells
        print(name, {k: (round(v["z"], 2) if isinstance(v, dict) else v) for k, v in cells.items()},
              f"{time.perf_counter() - t0:.0f}s", flush=True)
    cols = [k for k in next(iter(out.values())) if k != "no_grad_calls"]
    lines = ["# Consistency pair centring at the exact denoisers (benchmarks/consistency_kernels.py)\n",
             f"{a.draws} draws per cell, package `consistency_loss` at the default `LossConfig` "
             "except the named settings. Each cell: mean in standard errors (z; |z| < 3 is centred "
             "at this sample size) / bias as a share of the mean |pair|.\n",
             row(["variant", "no-grad calls", *cols]), rule(len(cols) + 2)]
    for name, r in out.items():
        lines.append(row([name, r["no_grad_calls"], *(f"{r[c]['z']:+.1f} / {r[c]['rel_bias']:+.3f}" for c in cols)]))
    write_json(a.out / "consistency_kernels.json", {"draws": a.draws, "results": out}, indent=2)
    (a.out / "consistency_kernels.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
