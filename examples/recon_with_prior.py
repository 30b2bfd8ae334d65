"""Undersampled MRI reconstruction with an ambient-med prior, inside an ordinary sigpy / NumPy
workflow: simulate (or load) multi-coil k-space, estimate coil maps with sigpy's ESPIRiT, compare
sigpy's SENSE with the prior's posterior mean and std map, save NIfTI files with nibabel.

    python examples/recon_with_prior.py --prior run/prior.safetensors --out /tmp/recon
    python examples/recon_with_prior.py --tiny --out /tmp/recon     # trains a toy prior first

``--tiny`` trains a toy complex prior on noisy phantoms for a few steps (seconds on a CPU) so that
the script runs anywhere; it shows the plumbing, not the quality of a real prior. Units: k-space,
images and ``sigma`` are in the data's own units throughout; the prior handles its scale.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import sigpy as sp
import sigpy.mri as mr
import torch

from ambient_med import AmbientPrior


def simulate(size: int, coils: int, sigma: float, accel: int, centre: int, seed: int = 0):
    """Noisy multi-coil k-space of a phantom, 1-D Cartesian undersampling along the last axis."""
    from ambient_med.synthetic.phantoms import ellipse_phantom

    rng = np.random.default_rng(seed)
    x = ellipse_phantom(size, rng)
    maps = mr.birdcage_maps((coils, size, size), r=1.3, nzz=coils)
    k = sp.fft(maps * x, axes=(-2, -1))                         # centred, orthonormal
    k = k + sigma * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
    mask = np.zeros(size, np.float32)
    mask[::accel] = 1
    mask[size // 2 - centre // 2: size // 2 + (centre + 1) // 2] = 1
    return (k * mask).astype(np.complex64), mask, x


def toy_prior(size: int, sigma: float, steps: int, out: Path) -> AmbientPrior:
    """A small complex prior trained from noisy phantoms only (ambient + consistency objective)."""
    from ambient_med.diffusion.losses import LossConfig
    from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig
    from ambient_med.prior import PriorMetadata
    from ambient_med.synthetic.phantoms import ellipse_phantom
    from ambient_med.training.loop import TensorDataset, TrainConfig, train

    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    x = torch.from_numpy(np.stack([ellipse_phantom(size, rng) for _ in range(64)]))
    noisy = torch.stack([x.real, x.imag], 1).float()
    noisy = noisy + sigma * torch.randn_like(noisy)
    net = NetworkConfig(channels=2, sigma_data=0.5, features=(8, 16),
                        attention_levels=(False, False), norm_num_groups=4, num_head_channels=8)
    res = train(EDMDenoiser(net), TensorDataset(noisy, sigma),
                LossConfig(objective="ambient+consistency", sigma_data=0.5),
                TrainConfig(steps=steps, batch_size=8, lr=1e-3, log_every=max(steps, 1)),
                run_dir=out / "toy-run")
    meta = PriorMetadata(network=net.to_dict(), data_kind="complex", sigma_n_data=sigma,
                         sigma_n_model=sigma, scale=1.0,
                         training={"image_shape": [size, size], "steps": steps})
    return AmbientPrior(res.model, meta)


def main(out: Path, prior_path: Path | None = None, tiny: bool = False, samples: int = 4,
         steps: int | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    size, sigma = (16, 0.02) if tiny else (64, 0.01)
    k, mask, truth = simulate(size, coils=4, sigma=sigma, accel=2 if tiny else 3,
                              centre=6 if tiny else 16)
    prior = (AmbientPrior.load(prior_path) if prior_path is not None
             else toy_prior(size, sigma, 10 if tiny else 300, out))

    # coil maps with sigpy's ESPIRiT, from the fully sampled centre
    maps = mr.app.EspiritCalib(k, calib_width=6 if tiny else 16, crop=0.0,
                               show_pbar=False).run()
    # the classical baseline: sigpy's (lightly regularised) SENSE
    sense = mr.app.SenseRecon(k, maps, lamda=1e-3, weights=mask, max_iter=30,
                              show_pbar=False).run()
    # the prior's posterior, in the same units as k; sigma of k-space estimated from the data
    post = prior.reconstruct(k, mask, maps=maps, sigma="auto", n_samples=samples,
                             steps=steps or (4 if tiny else None),
                             generator=torch.Generator().manual_seed(0))
    mean, std = post["mean"][0].numpy(), post["std"][0].numpy()
    std = np.sqrt(std.real ** 2 + std.imag ** 2)

    def nrmse(a):                 # after the best complex scale (ESPIRiT maps fix no global phase)
        c = np.vdot(a, truth) / max(np.vdot(a, a).real, 1e-30)
        return float(np.linalg.norm(c * a - truth) / np.linalg.norm(truth))

    zero_filled = np.sum(np.conj(maps) * sp.ifft(k, axes=(-2, -1)), axis=0)
    resid = (sp.fft(maps * mean, axes=(-2, -1)) - k) * mask
    report = {"nrmse_zero_filled": nrmse(zero_filled), "nrmse_sense": nrmse(sense),
              "nrmse_prior_mean": nrmse(mean), "sigma_k_estimate": post["sigma"],
              "sigma_k_true": sigma,
              "dc_residual_rms": float(np.sqrt(np.sum(np.abs(resid) ** 2) /
                                               (2 * k.shape[0] * mask.sum() * size)))}
    for name, img in (("prior_mean", np.abs(mean)), ("prior_std", std), ("sense", np.abs(sense))):
        nib.save(nib.Nifti1Image(img.astype(np.float32)[..., None], np.eye(4)),
                 str(out / f"{name}.nii.gz"))
    print(report)
    return report


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prior", type=Path, default=None, help="prior.safetensors of complex images")
    p.add_argument("--out", type=Path, default=Path("recon-example"))
    p.add_argument("--tiny", action="store_true", help="16x16, a toy prior, 4 sampler steps")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--steps", type=int, default=None)
    a = p.parse_args()
    main(a.out, a.prior, a.tiny, a.samples, a.steps)
