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

Run:  PYTHONPATH=. python benchmarks/magnitude_background.py [--effective] NAME=denoised.nii.gz [...]
"""

from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np

from ambient_med.noise.estimate import chi_noise_mean
from ambient_med.noise.magnitude import vst_tables
from magnitude_mri import N_COILS, data_file, regions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("volumes", nargs="*", metavar="NAME=PATH", help="denoised volumes to analyse")
    ap.add_argument("--effective", action="store_true",
                    help="analyse in the stabilised domain of the effective chi model (effective_chi)")
    a = ap.parse_args()
    vol = np.asarray(nib.load(data_file()).get_fdata(), dtype=np.float64)
    from ambient_med.noise.estimate import effective_chi, magnitude_volume_estimate

    sigma = magnitude_volume_estimate(vol, N_COILS).sigma
    floor = chi_noise_mean(sigma, N_COILS)
    bg, _ = regions(vol, sigma)          # regions and floor: the nominal PIESNO fit, as magnitude_mri.py
    n_model = N_COILS
    if a.effective:
        eff = effective_chi(vol, N_COILS)
        sigma, n_model = eff.sigma, eff.details["n_coils"]
        print(f"effective chi: N_eff {n_model:.3f}, sigma {sigma:.6f}")
    t = vst_tables(n_model)
    e0 = float(np.interp(0.0, t.nu, t.ef))
    z = t.forward(vol / sigma)
    print(f"sigma {sigma:.6f}; {int(bg.sum())} background voxels")
    print(f"| input noise in z | std {z[bg].std():.3f} | lag-1 correlation per axis "
          + ", ".join(f"{_lag1(z, bg, ax):.3f}" for ax in range(3)) + " |")
    print("\n| denoised | mean / chi floor | share at 0 | mean z_hat - E(0) of the rest | median |")
    print("|---|---|---|---|---|")
    for arg in a.volumes:
        name, _, path = arg.rpartition("=")
        d = np.asarray(nib.load(path).get_fdata(), dtype=np.float64)[bg] / sigma
        zero = d <= 1e-9
        excess = np.interp(d[~zero], t.nu, t.ef) - e0
        print(f"| {name or path} | {d.mean() * sigma / floor:.3f} | {zero.mean():.3f} | "
              f"{excess.mean():.3f} | {np.median(excess):.3f} |")
    print("\n| residual std s of the posterior mean in z | background mean / chi floor after the inverse |")
    print("|---|---|")
    rng = np.random.default_rng(0)
    for s in (0.05, 0.1, 0.2, 0.3, 0.6):
        nu = t.unbiased_inverse(e0 + s * rng.standard_normal(200_000))
        print(f"| {s} | {nu.mean() * sigma / floor:.3f} |")


def _lag1(z, mask, axis):
    a_idx = [slice(None)] * z.ndim
    b_idx = list(a_idx)
    a_idx[axis], b_idx[axis] = slice(1, None), slice(None, -1)
    both = mask[tuple(a_idx)] & mask[tuple(b_idx)]
    a, b = z[tuple(a_idx)][both], z[tuple(b_idx)][both]
    return float(np.corrcoef(a, b)[0, 1])


if __name__ == "__main__":
    main()
