"""Fixed points of the below-``sigma_n`` objectives on closed-form laws.

For each variant (``distill``, the package default; ``anchored``; ``pair``) and each law (the air
mixture, a Gaussian mixture of fields, an i.i.d. pixel mixture, a Gaussian field, +-1 pixels) this
measures, with :func:`ambient_med.diffusion.fixed_points.expected_update`, the expected update of the term
along three directions (toward the exact denoiser, a constant offset, a scale) and its z-score:

- at the exact denoisers (stationarity: every |z| should stay below 3);
- at the identity below ``sigma_n`` (exact above): the update toward the exact denoiser should be
  strongly negative (descent leaves the identity).

Writes ``results/below_noise_fixed_points.{json,md}``::

    python benchmarks/below_noise_fixed_points.py                 # 20,000 draws per cell
    python benchmarks/below_noise_fixed_points.py --quick         # 2,000 draws -> *_quick
"""

from __future__ import annotations

import argparse
import time

import torch
from common.results import RESULTS, stem, write_json
from common.tables import table

from ambient_med.diffusion.fixed_points import expected_update, identity_below
from ambient_med.diffusion.losses import LossConfig
from ambient_med.synthetic.mixtures import GaussianField, GaussianMixtureField, PixelMixture, air_mixture

VARIANTS = ("distill", "anchored", "pair")


def laws() -> dict:
    air, fieldmix, field = air_mixture(), GaussianMixtureField((8, 8)), GaussianField((8, 8))
    pixmix = PixelMixture(weights=(0.5, 0.3, 0.2), means=(-1.2, 0.4, 1.8), stds=(0.3, 0.5, 0.2))
    pm1 = PixelMixture()
    return {"air": (air, air.denoise), "fieldmix": (fieldmix, fieldmix.denoise),
            "pixmix": (pixmix, pixmix.denoise), "gaussian": (field, field.wiener),
            "pm1": (pm1, pm1.denoise)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=20000)
    ap.add_argument("--sigma-n", type=float, default=0.5)
    ap.add_argument("--quick", action="store_true", help="2,000 draws, written to *_quick")
    args = ap.parse_args()
    draws = 2000 if args.quick else args.draws
    torch.set_num_threads(1)
    rows = []
    for law, (dist, den) in laws().items():
        exact = lambda x, s, den=den: den(x.double(), s)       # noqa: E731
        draw = lambda n, g, dist=dist: dist.sample(n, g)       # noqa: E731
        for variant in VARIANTS:
            cfg = LossConfig(sigma_data=1.0, consistency_variant=variant)
            t = time.process_time()
            at_exact = expected_update(exact, exact, draw, args.sigma_n, cfg, draws=draws)
            at_identity = expected_update(identity_below(exact, args.sigma_n), exact, draw,
                                          args.sigma_n, cfg, draws=draws)
            rows.append({"law": law, "variant": variant, "draws": at_exact.draws,
                         "exact_z": at_exact.z, "identity_z": at_identity.z,
                         "cpu_s": time.process_time() - t})
            print(f"{law:9s} {variant:9s} exact z " + " ".join(f"{k} {v:+6.1f}" for k, v in
                  at_exact.z.items()) + f" | identity z toward_exact {at_identity.z['toward_exact']:+7.1f}",
                  flush=True)
    out = RESULTS / stem("below_noise_fixed_points", args.quick)
    write_json(out.with_suffix(".json"),
               {"sigma_n": args.sigma_n, "draws": draws, "date": time.strftime("%Y-%m-%d"), "rows": rows})
    lines = ["# Fixed points of the below-sigma_n objectives (`benchmarks/below_noise_fixed_points.py`)",
             "", f"Measured {time.strftime('%Y-%m-%d')}, sigma_n = {args.sigma_n}, {draws} draws per "
             "cell, each variant at the package's default settings for it. z: the mean per-sample "
             "derivative of the term along a direction over its standard error. At the exact "
             "denoisers every |z| should be below 3 (stationary); at the identity below sigma_n "
             "the derivative toward the exact denoiser should be far below 0.", "",
             *table(["law", "variant", "exact: toward exact", "exact: offset", "exact: scale", "stationary",
                     "identity: toward exact"])]
    for r in rows:
        z = r["exact_z"]
        ok = "yes" if max(abs(v) for v in z.values()) < 3 else "no"
        lines.append(f"| {r['law']} | {r['variant']} | {z['toward_exact']:+.1f} | {z['offset']:+.1f} | "
                     f"{z['scale']:+.1f} | {ok} | {r['identity_z']['toward_exact']:+.1f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}.json and .md")


if __name__ == "__main__":
    main()
