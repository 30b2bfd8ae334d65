"""Noise-estimation figures: synthetic SNR sweep, demo phantoms and real-data checks.

Coil-combined noise is measured over the whole field of view, with the fraction of
noise-free pixels (must be 0).

Run:  PYTHONPATH=. python benchmarks/noise.py
Prints a table and writes benchmarks/results/noise.json. Relative errors are fractions
(estimate / reference - 1). Real data is read from ../shared/data (or
$AMBIENT_MED_SHARED_DATA); those sections are skipped when it is absent.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from common.magnitude_volume import DIPY_PIESNO
from common.paths import shared_data
from common.results import RESULTS, write_json
from scipy import ndimage

from ambient_med import noise
from ambient_med.io import open_source, read_cfl
from ambient_med.mri import coil_combine, espirit_maps, ifftc, whiten, whitening_matrix
from ambient_med.synthetic.mri import multicoil_kspace
from ambient_med.tasks.noise import estimate_noise_file
from ambient_med.training.datasets import build_training_set


def synthetic(n=256, coils=8, snrs=(5, 10, 15, 20, 25, 30, 35, 40), fraction=0.125):
    out = {}
    for snr in snrs:
        k, _, nz, cov, _ = multicoil_kspace(n=n, coils=coils, snr_db=snr, seed=snr)
        est = noise.from_kspace(k, fraction=fraction)
        true = np.sqrt(np.real(np.diag(cov)))
        W = whitening_matrix(est.covariance, est.sigma)
        M = W @ cov @ W.conj().T / est.sigma**2
        kw = whiten(k, W)
        sigma_k = noise.from_kspace(kw, fraction=fraction).sigma
        maps = espirit_maps(kw, sigma=est.sigma)  # the pipeline's maps: unit-norm everywhere
        cn = coil_combine(ifftc(whiten(nz, W)), maps).ravel()  # whole field of view
        out[f"snr_{snr}dB"] = {
            "kspace_corner_mad_rel_error": est.sigma / np.sqrt(np.mean(true**2)) - 1,
            "kspace_corner_mad_max_abs_coil_rel_error": float(np.max(np.abs(est.details["sigma_per_coil"] / true - 1))),
            "kspace_corner_mad_uncertainty": est.uncertainty,
            "whitening_max_abs_std_error": float(np.max(np.abs(np.sqrt(np.real(np.diag(M))) - 1))),
            "whitening_max_abs_offdiag": float(np.max(np.abs(M - np.diag(np.diag(M))))),
            "espirit_combined_image_std_rel_error_vs_kspace_whole_fov": float(
                np.std(np.concatenate([cn.real, cn.imag])) / sigma_k - 1),
            "noise_free_pixel_fraction": float(np.mean(np.abs(cn) == 0)),
        }
    return {f"synthetic_8coil_{n}_kspace_corner_fraction_{fraction}": out}


def _pooled_std(v):
    v = v - v.mean()
    return float(np.std(np.concatenate([v.real, v.imag])))


def espirit_brain(data: Path):
    k = open_source(data / "mri" / "espirit_brain_8coil" / "full.cfl").read(0)
    est = noise.from_kspace(k)
    coil_img = ifftc(k)
    rss = np.sqrt(np.sum(np.abs(coil_img) ** 2, axis=0))
    bg = ndimage.uniform_filter(rss, 9) < 2 * est.sigma * np.sqrt(2 * k.shape[0])
    bg = ndimage.binary_erosion(bg, iterations=4)
    img_std = np.array([_pooled_std(c[bg]) for c in coil_img])
    rel = est.details["sigma_per_coil"] / img_std - 1
    kw = whiten(k, whitening_matrix(est.covariance))
    sigma_w = noise.from_kspace(kw).sigma
    # the training image users get: build_training_set (whiten, maps, combine, scale)
    ds, info = build_training_set([data / "mri" / "espirit_brain_8coil" / "full.cfl"])
    item = ds[0]
    x, s_n = item["image"].numpy(), float(item["sigma_n"])
    return {"espirit_brain_8coil_full": {
        "kspace_corner_mad_sigma": est.sigma,
        "kspace_corner_mad_sigma_per_coil": est.details["sigma_per_coil"].tolist(),
        "kspace_corner_mad_uncertainty": est.uncertainty,
        "image_background_std_per_coil": img_std.tolist(),
        "kspace_corner_mad_vs_image_background_rel_error_per_coil": rel.tolist(),
        "kspace_corner_mad_vs_image_background_max_abs_rel_error": float(np.max(np.abs(rel))),
        "training_image_background_std_rel_error_vs_sigma_n_whole_fov": float(np.std(x[:, bg]) / s_n - 1),
        "training_image_noise_free_pixel_fraction": float(np.mean((x[0] == 0) & (x[1] == 0))),
        "whitened_kspace_sigma_rel_error_vs_sigma_n": sigma_w / info.sigma_n_data - 1,
        "background_fraction": float(bg.mean()),
        "max_coil_correlation": float(np.max(est.details["correlation"] - np.eye(k.shape[0]))),
    }}


def phantoms(n_files=1, slices=16, size=32, coils=8, sigma=0.06):
    """The demo's data through build_training_set: noise of the training images outside the
    object (whole field of view) against the sigma_n the loss is given, per slice."""
    import tempfile

    from ambient_med.synthetic.phantoms import make_phantom_dataset

    with tempfile.TemporaryDirectory() as tmp:
        truth = make_phantom_dataset(tmp, n_files=n_files, slices=slices, size=size, coils=coils,
                                     sigma=sigma, seed=0)
        ds, info = build_training_set(truth["files"])
        ratios, zero, vals = [], [], []
        for i in range(len(ds)):
            item = ds[i]
            x, s_n = item["image"].numpy(), float(item["sigma_n"])
            bg = np.abs(truth["clean"][i]) < 1e-3
            ratios.append(float(np.std(x[:, bg]) / s_n))
            vals.append(x[:, bg].ravel() / s_n)
            zero.append(float(np.mean((x[0] == 0) & (x[1] == 0))))
    return {f"phantoms_{size}x{size}_{coils}coil_sigma{sigma}": {
        "training_image_background_std_rel_error_vs_sigma_n_pooled": float(np.std(np.concatenate(vals)) - 1),
        "training_image_background_std_rel_error_vs_sigma_n_max_abs_per_slice": float(np.max(np.abs(np.array(ratios) - 1))),
        "training_image_noise_free_pixel_fraction_max": float(max(zero)),
        "sigma_n_data_rel_error_vs_truth": info.sigma_n_data / sigma - 1,
        "slices": len(ratios),
    }}


def bart_noise(data: Path):
    n = np.asarray(read_cfl(data / "mri" / "bart_noise16" / "noise")).reshape(256, 16).T
    est = noise.from_noise_scan(n)
    off = ~np.eye(16, dtype=bool)
    W = whitening_matrix(est.covariance, 1.0)
    c_in = noise.from_noise_scan(whiten(n, W)).covariance
    W1 = whitening_matrix(noise.from_noise_scan(n[:, ::2]).covariance, 1.0)
    e2 = noise.from_noise_scan(whiten(n[:, 1::2], W1))
    raw = noise.from_noise_scan(n[:, 1::2]).details["correlation"]
    mad = np.array([noise.mad_sigma(np.concatenate([c.real, c.imag])) for c in n])
    return {"bart_noise16": {
        "noise_scan_sigma": est.sigma,
        "noise_scan_uncertainty": est.uncertainty,
        "max_coil_correlation": float(est.details["correlation"][off].max()),
        "mean_coil_correlation": float(est.details["correlation"][off].mean()),
        "whitened_in_sample_max_abs_error_vs_identity": float(np.max(np.abs(c_in - np.eye(16)))),
        "whitened_out_of_sample_max_correlation": float(e2.details["correlation"][off].max()),
        "whitened_out_of_sample_mean_correlation": float(e2.details["correlation"][off].mean()),
        "raw_out_of_sample_max_correlation": float(raw[off].max()),
        "white_noise_expected_mean_abs_correlation_128": float(np.sqrt(np.pi / (4 * 128))),
        "whitened_out_of_sample_mean_variance": float(np.mean(np.real(np.diag(e2.covariance)))),
        "wishart_expected_mean_variance": 128 / 112,
        "mad_vs_sample_std_max_abs_rel_error_per_coil": float(np.max(np.abs(mad / est.details["sigma_per_coil"] - 1))),
    }}


def piesno(data: Path):
    import nibabel as nib

    d = nib.load(data / "mri" / "wheel_mri_magnitude" / "test_piesno.nii.gz").get_fdata()
    k14 = noise.from_magnitude(d, n_coils=8, measurements_axis=-1)
    k1 = noise.from_magnitude(d, n_coils=8)
    cli = estimate_noise_file(data / "mri" / "wheel_mri_magnitude" / "test_piesno.nii.gz", n_coils=8)
    return {"test_piesno": {
        "dipy_reference_sigma": DIPY_PIESNO,
        "piesno_K14_sigma": k14.sigma, "piesno_K14_rel_error_vs_dipy": k14.sigma / DIPY_PIESNO - 1,
        "piesno_K14_uncertainty": k14.uncertainty,
        "piesno_K1_sigma": k1.sigma, "piesno_K1_rel_error_vs_dipy": k1.sigma / DIPY_PIESNO - 1,
        "piesno_K1_uncertainty": k1.uncertainty,
        "estimate_noise_file_n_coils_8_sigma": cli.sigma,
        "estimate_noise_file_n_coils_8_rel_error_vs_dipy": cli.sigma / DIPY_PIESNO - 1,
    }}


def bart_brain(data: Path):
    k = open_source(data / "mri" / "bart_brain_8coil" / "ksp.cfl").read(0)
    est = noise.from_kspace(k)
    scaled = noise.from_kspace(k / np.float32(1e10))
    return {"bart_brain_8coil_ksp": {
        "kspace_corner_mad_sigma": est.sigma, "kspace_corner_mad_uncertainty": est.uncertainty,
        "nonzero_corner_samples": est.details["n_samples"],
        "rescaled_1e-10_rel_error": scaled.sigma * 1e10 / est.sigma - 1,
    }}


def main():
    t0 = time.time()
    results = synthetic(n=256, fraction=0.125)  # the defaults used by the pipeline
    results.update(synthetic(n=320, fraction=0.2))  # the settings of tests/test_noise.py
    results.update(phantoms())
    data = shared_data()
    if (data / "mri").is_dir():
        for f in (espirit_brain, bart_noise, piesno, bart_brain):
            results.update(f(data))
    else:
        print(f"real data not found at {data}; real-data sections skipped")
    results["runtime_s"] = time.time() - t0
    for name, block in results.items():
        if not isinstance(block, dict):
            continue
        print(f"\n== {name}")
        for key, val in block.items():
            if isinstance(val, dict):
                print(f"  {key}: " + ", ".join(f"{k}={v:+.4f}" for k, v in val.items()))
            elif isinstance(val, list):
                print(f"  {key}: [" + ", ".join(f"{v:.4g}" for v in val) + "]")
            else:
                print(f"  {key}: {val:.6g}")
    out = write_json(RESULTS / "noise.json", results, indent=2, default=float)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
