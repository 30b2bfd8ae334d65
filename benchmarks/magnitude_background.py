"""Why the denoised air of test_piesno.nii.gz stays above 0: the noise, and the inverse.

For denoised volumes written by ``magnitude_mri.py`` (``--work`` folders), on the background voxels
of ``magnitude_mri.regions``:

1. the input's noise in the stabilised domain ``z = f(m / sigma)`` (8-coil VST): its std and its
   lag-1 correlation between neighbours per axis (white noise: std 1, correlation 0);
2. each denoised volume taken back to ``z`` by ``E[f(m) | nu]`` (exact where ``nu > 0``): the share
   of voxels the unbiased inverse set to 0 (posterior mean at or below ``E(0)``) and the excess
   ``z_hat - E(0)`` of the others;
3. what the unbiased inverse makes of a posterior mean that is ``E(0)`` plus a Gaussian residual
   of std ``s``: near ``nu = 0``, ``E(nu) - E(0)`` grows like ``nu^2``, so the inverse is a square
   root that rectifies the residual into a positive mean.

Run:  PYTHONPATH=. python benchmarks/magnitude_background.py [--effective] [--out FILE.md] NAME=denoised.nii.gz [...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from common.magnitude_volume import N_COILS, data_file, regions

from ambient_med.noise.magnitude import vst_tables
from ambient_med.noise.piesno import (
    background_correlation,
    chi_noise_mean,
    effective_chi,
    magnitude_volume_estimate,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("volumes", nargs="*", metavar="NAME=PATH", help="denoised volumes to analyse")
    ap.add_argument("--effective", action="store_true",
                    help="analyse in the stabilised domain of the effective chi model (effective_chi)")
    ap.add_argument("--out", type=Path, default=None,
                    help="also write the tables to this markdown file (e.g. benchmarks/results/...)")
    a = ap.parse_args()
    vol = np.asarray(nib.load(data_file()).get_fdata(), dtype=np.float64)
    sigma = magnitude_volume_estimate(vol, N_COILS).sigma
    floor = chi_noise_mean(sigma, N_COILS)
    bg, _ = regions(vol, sigma)          # regions and floor: the nominal PIESNO fit, as magnitude_mri.py
    n_model = N_COILS
    lines = [f"`PYTHONPATH=. python benchmarks/magnitude_background.py {' '.join(sys.argv[1:])}`", ""]
    if a.effective:
        eff = effective_chi(vol, N_COILS)
        sigma, n_model = eff.sigma, eff.details["n_coils"]
        lines.append(f"effective chi: N_eff {n_model:.3f}, sigma {sigma:.6f}")
    t = vst_tables(n_model)
    e0 = float(np.interp(0.0, t.nu, t.ef))
    z = t.forward(vol / sigma)
    corr = background_correlation(z[..., None], bg)
    lines += [f"sigma {sigma:.6f}; {int(bg.sum())} background voxels", "",
              "| input noise in z | std | lag-1 correlation per axis |", "|---|---|---|",
              f"| background | {z[bg].std():.3f} | " + ", ".join(f"{c:.3f}" for c in corr) + " |", "",
              "| denoised | mean / chi floor | share at 0 | mean z_hat - E(0) of the rest | median |",
              "|---|---|---|---|---|"]
    for arg in a.volumes:
        name, _, path = arg.rpartition("=")
        d = np.asarray(nib.load(path).get_fdata(), dtype=np.float64)[bg] / sigma
        zero = d <= 1e-9
        excess = np.interp(d[~zero], t.nu, t.ef) - e0
        lines.append(f"| {name or path} | {d.mean() * sigma / floor:.3f} | {zero.mean():.3f} | "
                     f"{excess.mean():.3f} | {np.median(excess):.3f} |")
    lines += ["", "| residual std s of the posterior mean in z | background mean / chi floor after the inverse |",
              "|---|---|"]
    rng = np.random.default_rng(0)
    for s in (0.05, 0.1, 0.2, 0.3, 0.6):
        nu = t.unbiased_inverse(e0 + s * rng.standard_normal(200_000))
        lines.append(f"| {s} | {nu.mean() * sigma / floor:.3f} |")
    print("\n".join(lines))
    if a.out is not None:
        model = "effective chi" if a.effective else f"chi({2 * N_COILS}), PIESNO sigma"
        a.out.write_text(f"# Why the denoised air of test_piesno.nii.gz stays above 0 ({model} model)\n\n"
                         + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
