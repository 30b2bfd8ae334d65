"""MRI benchmark of the priors at work: posterior denoising and undersampled multi-coil
reconstruction on real anatomy, then on real k-space that nobody here simulated.

Simulated part. Axial slices of the MNI152 2009a T1 template (../shared/data; an average of many
subjects, nearly noise-free, skull-stripped) are the clean reference: a 192 x 192 mm box around
the brain, area-averaged to ``--size`` (default 64 x 64, 3 mm pixels), intensities / 255, times a
smooth random phase (a random quadratic, a few radians across the field of view). Each slice is
simulated as 8-coil Cartesian k-space with sigpy birdcage maps (normalised to
``sum_c |S_c|^2 = 1``), centred orthonormal FFT, and white complex noise of std ``sigma`` per real
channel and coil, ``sigma`` set for ``--snr-db`` (20 dB) image SNR:
``10 log10(mean_object |x0|^2 / (2 sigma^2))`` over pixels above 10% of the peak, pooled over the
training slices. With normalised maps the fully sampled coil-combined image ``S^H F^H k`` is
``x0 + sigma e``: these noisy images are the training data of ``naive`` and
``ambient+consistency``; ``clean`` (the oracle) trains on ``x0``.

Split: ``--n-test`` held-out slices evenly spaced through the brain; training uses every
slice with brain more than ``--gap`` slices (mm) from any test slice. One template, so held-out
slices are new anatomy levels of the same average brain, not new subjects.

Priors: the three objectives at equal budget (same network, initial weights, steps, batch of
random ``--patch`` x ``--patch`` patches, learning rate, seed), through the package's training
loop (``ambient_med.training.loop.train``, ``LossConfig`` defaults), one shared intensity scale ``s``
(``sqrt(p99(|y|^2) - 2 sigma^2)`` as ``datasets.build_training_set``), ``sigma_data`` as a user's
run estimates it (``sqrt(var(y) - sigma_n^2)`` for ambient, ``std(y)`` for naive, ``std(x0)``
for clean). Inference on the whole held-out images (the network is convolutional).

Tasks on the held-out slices (metrics below):

1. denoising the fully sampled coil-combined image: posterior mean ``D(y, sigma)`` (one network
   call); the std map from ``--post-samples`` posterior samples (``AmbientPrior.posterior``,
   ``--post-steps`` steps each);
2. reconstruction at R = 4 and 8: 1D Cartesian along the last (phase-encode) axis, a fully
   sampled centre of 1/8 (R = 4) or 1/16 (R = 8) of the lines, the other lines one per equal
   bin of the outer k-space at a random position (seeded, the same mask for every slice); true
   coil maps. Baselines: zero-filled ``A^H y``; SENSE by CG (``ambient_med.recon.cg`` on
   ``(A^H A + beta sigma^2/q^2 I) x = A^H y``, 30 iterations); L1-wavelet
   (``sigpy.mri.app.L1WaveletRecon``, db4, 100 iterations, ``lamda = alpha sigma``). ``alpha``
   and ``beta`` are tuned per R on ``--n-tune`` *training* slices. Priors:
   ``AmbientPrior.reconstruct`` with ``method="dc"`` (CG data consistency) and ``"dps"``
   (Tweedie-covariance guidance, ``--dps-mode``), ``--recon-samples`` chains of
   ``--recon-steps`` steps from ``--sigma-max``.

Real k-space (``--no-real`` skips): ``espirit_brain_8coil/full`` (fully sampled, 230 x 180 x 8)
retrospectively undersampled at R = 4 and 8 (same mask rule) and scored against its fully
sampled SENSE reconstruction; ``bart_brain_8coil/ksp`` (Poisson-disc) scored against BART's
``img`` (the two ESPIRiT-map images, root-sum-of-squares) after a least-squares scale fit of the
magnitude. Coil noise is whitened (``noise.from_kspace`` corner covariance). The priors know
3 mm pixels: the k-space centre is cropped to the same pixel size (about 1 mm native pixels:
230 x 180 -> 76 x 60 at ``--size 64``), which is the acquisition a scanner makes at that
resolution; references are cropped the same way. Coil maps: ESPIRiT (sigpy) on the fully sampled
cropped k-space for ``espirit`` (a separate calibration; the same maps for every method and the
reference), on the fully sampled calibration square for ``bart``. Intensities are brought to the
prior's scale by the 99th percentile of the SENSE image of the undersampled data. The priors
were trained on skull-stripped template brains: the real heads (scalp, skull, fat, finer detail,
other contrast) are out of their distribution. L1-wavelet appears twice: ``alpha`` transferred
from the simulation, and ``l1_wavelet_oracle`` with ``lamda`` tuned on this image against its
reference (the baseline's best case).

Metrics: PSNR in dB (simulation: of the complex image, peak ``max |x0|`` per slice; real data:
of the magnitude, peak ``max |ref|``), SSIM of the magnitude (Wang et al. IEEE TIP 2004: Gaussian
window sigma 1.5 truncated at 3.5 sigma, K1 = 0.01, K2 = 0.03, data range the peak, population
covariances, the 5-pixel border excluded: skimage's ``structural_similarity(gaussian_weights=True,
use_sample_covariance=False)``, reimplemented because skimage is not installed); coverage: the
share of pixels and real channels with ``|mean - x0| <= 2 std`` (``cov2``), and of the K-sample
prediction interval ``|mean - x0| <= t_{K-1}(0.97725) sqrt(1 + 1/K) std`` (``covK``, 95.45% for a
calibrated Gaussian posterior whatever K; with K samples even a perfect sampler gives
``cov2 = P(|t_{K-1}| <= 2 / sqrt(1 + 1/K))``, printed in the table header); network calls per
slice counted in single-image evaluations (forward passes and Jacobian products through the
network, each chain counted: K chains x steps for DC); seconds per slice on this CPU
(``--threads`` torch threads; wall time, so it includes whatever else the machine runs).

    python benchmarks/mri_recon.py --quick            # smoke run, minutes
    python benchmarks/mri_recon.py                     # the CPU run of benchmarks/results
Writes ``mri_recon.json`` (cells ``{task, method, prior, metric, value}``, means over slices;
per-slice values, settings, tuning and timings beside them), ``mri_recon.md`` (the table; text
after the ``<!-- analysis -->`` line of an existing file is kept), ``mri_recon.png`` (simulation)
and ``mri_recon_real.png``. Trained priors go to ``--work`` and are reused when their settings
match (``--retrain`` to force).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ambient_med.diffusion.losses import LossConfig
from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig
from ambient_med.diffusion.sampling import POSTERIOR_STEPS
from ambient_med.mri.complex import complex_to_channels
from ambient_med.mri.fft import fftc, ifftc
from ambient_med.mri.operators import SenseOp
from ambient_med.prior import AmbientPrior, PriorMetadata
from ambient_med.recon.cg import cg
from ambient_med.training.datasets import intensity_scale as package_intensity_scale
from ambient_med.training.loop import TrainConfig, train
from ambient_med.training.transforms import patch_seed

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mri"
MNI = DATA / "wheel_mri_magnitude" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
ESPIRIT = DATA / "espirit_brain_8coil" / "full"
BART_KSP = DATA / "bart_brain_8coil" / "ksp"
BART_IMG = DATA / "bart_brain_8coil" / "img"
OBJECTIVES = ("ambient+consistency", "naive", "clean")
CENTRE = {4: 1 / 8, 8: 1 / 16}          # fully sampled centre, share of the lines
BOX_MM = 192                            # the MNI field of view that is resampled to --size
MARKER = "<!-- analysis -->"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64, help="image size (pixels) of the MNI slices")
    p.add_argument("--patch", type=int, default=32, help="training patch size")
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--snr-db", type=float, default=20.0)
    p.add_argument("--n-test", type=int, default=4, help="held-out slices")
    p.add_argument("--gap", type=int, default=3, help="slices (mm) kept free around test slices")
    p.add_argument("--n-tune", type=int, default=4, help="training slices for baseline tuning")
    p.add_argument("--features", type=int, nargs="+", default=[16, 32, 32])
    p.add_argument("--steps", type=int, default=500, help="training steps per prior")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--post-samples", type=int, default=8, help="posterior samples (denoising)")
    p.add_argument("--post-steps", type=int, default=None, help="steps per denoising sample "
                   "(default: the package's POSTERIOR_STEPS)")
    p.add_argument("--recon-samples", type=int, default=4, help="chains per slice (recon)")
    p.add_argument("--recon-steps", type=int, default=24, help="sampler steps per chain (recon)")
    p.add_argument("--sigma-max", type=float, default=10.0, help="recon chains start here "
                   "(model space; the data's sigma_data is about 0.3-0.5)")
    p.add_argument("--dps-mode", default="pigdm", choices=("exact", "pigdm", "dps"))
    p.add_argument("--dps-cg-iters", type=int, default=4, help="inner CG steps for --dps-mode exact")
    p.add_argument("--no-real", action="store_true", help="skip the real k-space part")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto: where the priors train and sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    p.add_argument("--retrain", action="store_true", help="ignore priors cached in --work")
    p.add_argument("--work", type=Path, default=Path("/tmp/ambient-med-bench/mri_recon"))
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if a.quick:
        a.size, a.patch, a.n_test, a.n_tune, a.steps, a.batch_size = 32, 16, 2, 2, 12, 8
        a.post_samples, a.post_steps, a.recon_samples, a.recon_steps = 2, 4, 2, 4
        a.work = a.work.with_name(a.work.name + "_quick")
    return a


# ------------------------------------------------------------------------------------ metrics

def psnr(est: np.ndarray, ref: np.ndarray, peak: float | None = None) -> float:
    """``10 log10(peak^2 / mean |est - ref|^2)``, complex or real; ``peak`` defaults to max |ref|."""
    peak = float(np.abs(ref).max()) if peak is None else peak
    mse = float(np.mean(np.abs(est - ref) ** 2))
    return 10 * math.log10(peak**2 / max(mse, 1e-30))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """SSIM of two real images (module docstring: skimage's Gaussian-window definition)."""
    from scipy.ndimage import gaussian_filter

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    f = lambda z: gaussian_filter(z, 1.5, truncate=3.5, mode="reflect")  # noqa: E731
    ua, ub = f(a), f(b)
    va, vb, vab = f(a * a) - ua**2, f(b * b) - ub**2, f(a * b) - ua * ub
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua**2 + ub**2 + c1) * (va + vb + c2))
    return float(s[5:-5, 5:-5].mean())


def t_quantile(k: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + 0.9545 / 2, k - 1))


def ideal_cov2(k: int) -> float:
    """``cov2`` of a perfectly calibrated Gaussian posterior estimated from ``k`` samples."""
    from scipy.stats import t

    return float(2 * t.cdf(2 / math.sqrt(1 + 1 / k), k - 1) - 1) if k > 1 else float("nan")


def coverage(mean: np.ndarray, std: np.ndarray, truth: np.ndarray, k: int,
             extra_var: float = 0.0) -> tuple[float, float]:
    """(cov2, covK) per real channel of complex images; ``std`` complex as the package returns it
    (real part: std of the real parts). ``extra_var`` widens the interval for a noisy reference."""
    err = np.concatenate([np.abs(mean.real - truth.real).ravel(), np.abs(mean.imag - truth.imag).ravel()])
    sd = np.concatenate([std.real.ravel(), std.imag.ravel()])
    sd = np.sqrt(sd**2 + extra_var)
    cov2 = float(np.mean(err <= 2 * sd))
    covk = float(np.mean(err <= t_quantile(k) * math.sqrt(1 + 1 / k) * sd)) if k > 1 else float("nan")
    return cov2, covk


# ------------------------------------------------------------------------------------ data

def mni_slices(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Axial MNI slices (Z, size, size) float64 in [0, 1] (rows anterior-posterior) and each
    slice's brain area in mm^2."""
    import nibabel as nib

    vol = np.asarray(nib.load(str(MNI)).dataobj, dtype=np.float32) / 255.0     # (x, y, z) 1 mm
    obj = vol > 0.1
    cx = int(round(np.mean(np.nonzero(obj.any((1, 2)))[0][[0, -1]])))
    cy = int(round(np.mean(np.nonzero(obj.any((0, 2)))[0][[0, -1]])))
    h = BOX_MM // 2
    padded = np.pad(vol, ((h, h), (h, h), (0, 0)))
    box = padded[cx:cx + 2 * h, cy:cy + 2 * h]                       # (192, 192, z)
    t = torch.from_numpy(np.ascontiguousarray(box.transpose(2, 1, 0)))[:, None]   # (z, 1, y, x)
    small = torch.nn.functional.interpolate(t, size=(size, size), mode="area")[:, 0]
    small = small.flip(1)                                            # anterior at the top
    return small.double().numpy(), obj.sum((0, 1)).astype(float)


def smooth_phase(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random quadratic phase over [-1, 1]^2: offset uniform, slopes and curvatures of about a
    radian each."""
    u = np.linspace(-1, 1, size)
    yy, xx = np.meshgrid(u, u, indexing="ij")
    c = rng.normal(0, 1.0, 5)
    return rng.uniform(-np.pi, np.pi) + c[0] * xx + c[1] * yy + 0.7 * (c[2] * xx**2 + c[3] * yy**2 + c[4] * xx * yy)


def coil_maps(coils: int, size: int) -> np.ndarray:
    import sigpy.mri as mr

    s = mr.birdcage_maps((coils, size, size), r=1.5, nzz=coils)
    return (s / np.sqrt(np.sum(np.abs(s) ** 2, 0, keepdims=True))).astype(np.complex64)


def split(area: np.ndarray, n_test: int, gap: int) -> tuple[list[int], list[int]]:
    """Test slices evenly spaced through the slices whose brain area is >= 25% of the largest;
    training slices: every such slice more than ``gap`` from any test slice."""
    usable = np.nonzero(area >= 0.25 * area.max())[0]
    lo, hi = usable.min(), usable.max()
    test = [int(round(v)) for v in np.linspace(lo, hi, n_test + 2)[1:-1]]
    train_idx = [int(z) for z in usable if min(abs(z - t) for t in test) > gap]
    return train_idx, test


def line_mask(n: int, accel: int, rng: np.random.Generator) -> np.ndarray:
    """1D Cartesian mask of ``round(n / accel)`` lines: a fully sampled centre of
    ``round(n * CENTRE[accel])`` lines (at least 2), the others one per equal bin of the
    outer lines, at a random position in each bin."""
    total = max(int(round(n / accel)), 2)
    centre = max(int(round(n * CENTRE[accel])), 2)
    m = np.zeros(n, np.float32)
    c0 = n // 2 - centre // 2
    m[c0:c0 + centre] = 1
    outer = np.nonzero(m == 0)[0]
    for b in np.array_split(outer, total - centre):
        if len(b):
            m[rng.choice(b)] = 1
    return m


def simulate(x0: np.ndarray, maps: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Noisy fully sampled multi-coil k-space (N, C, H, W) of complex images x0 (N, H, W)."""
    k = fftc(maps[None] * x0[:, None])
    noise = rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)
    return (k + sigma * noise).astype(np.complex64)


def combine(k: np.ndarray, maps: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``A^H k`` = ``sum_c conj(S_c) F^H (M k_c)`` (zero-filled SENSE combination), numpy;
    k-space (N, C, H, W) -> (N, H, W) or (C, H, W) -> (H, W)."""
    k = np.asarray(k)
    op = SenseOp(torch.from_numpy(np.asarray(maps))[None] if maps.ndim == 3 else torch.from_numpy(maps),
                 None if mask is None else torch.from_numpy(np.asarray(mask, np.float32)))
    out = op.H(torch.from_numpy(k if k.ndim == 4 else k[None])).numpy()
    return out if k.ndim == 4 else out[0]


# ------------------------------------------------------------------------------------ training

class PatchSet(torch.utils.data.Dataset):
    """In-memory model-space images (N, C, H, W) with random ``patch`` x ``patch`` crops that are a
    pure function of ``(seed, epoch, index)`` (``transforms.patch_seed``, as the package's
    ``ModelSpaceSet``), so the three objectives see the same patches in the same order."""

    keyed_draws = True

    def __init__(self, images: torch.Tensor, sigma_n: float, patch: int,
                 clean: torch.Tensor | None = None):
        self.images, self.clean, self.patch = images, clean, patch
        self.sigma_n = torch.tensor(float(sigma_n))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, key):
        index, epoch, seed = key if isinstance(key, tuple) else (int(key), 0, 0)
        h, w = self.images.shape[-2:]
        p = min(self.patch, h, w)
        rng = np.random.default_rng(patch_seed(seed, epoch, index))
        i, j = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
        item = {"image": self.images[index, :, i:i + p, j:j + p], "sigma_n": self.sigma_n}
        if self.clean is not None:
            item["clean"] = self.clean[index, :, i:i + p, j:j + p]
        return item

    def get_batch(self, keys) -> dict:
        items = [self[k] for k in keys]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def network(args, sigma_data: float, channels: int = 2) -> NetworkConfig:
    # no attention, one res block: what fits a CPU (the quick-start CPU network of the package)
    return NetworkConfig(spatial_dims=2, channels=channels, sigma_data=sigma_data,
                         features=tuple(args.features), attention_levels=(False,) * len(args.features),
                         num_res_blocks=1, norm_num_groups=8, num_head_channels=16)


def bench_device(args) -> torch.device:
    """``--device`` of a benchmark (``cpu`` when the parser has none)."""
    from ambient_med.utils import resolve_device

    return resolve_device(getattr(args, "device", "cpu"))


def train_priors(objectives, clean: np.ndarray, noisy: np.ndarray, sigma: float, scale: float,
                 args, work: Path, tag: str, kind: str = "complex") -> tuple[dict, dict]:
    """Train one prior per objective at equal budget; returns ``({objective: AmbientPrior},
    {objective: info})``. ``clean`` / ``noisy`` complex (N, H, W) (or real (N, H, W) for
    ``kind="intensity"``) in data units. Cached in ``work`` by a hash of the settings."""
    to_ch = (lambda a: complex_to_channels(torch.from_numpy(a).to(torch.complex64)[:, None], dim=1)) \
        if kind == "complex" else (lambda a: torch.from_numpy(a).float()[:, None])
    x0m, ym = to_ch(clean) / scale, to_ch(noisy) / scale
    sn = sigma / scale
    sd = {"ambient+consistency": math.sqrt(max(float(ym.var()) - sn**2, 1e-8)),
          "ambient": math.sqrt(max(float(ym.var()) - sn**2, 1e-8)),
          "naive": float(ym.std()), "clean": float(x0m.std())}
    tcfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       lr_warmup=min(100, max(args.steps // 5, 1)),
                       log_every=max(args.steps // 10, 1), checkpoint_every=10**9, seed=args.seed)
    priors, info = {}, {}
    work.mkdir(parents=True, exist_ok=True)
    for obj in objectives:
        net = network(args, sd[obj], channels=x0m.shape[1])
        loss = LossConfig(objective=obj, sigma_data=sd[obj])
        key = json.dumps({"net": net.to_dict(), "loss": asdict(loss), "train": tcfg.to_dict(),
                          "patch": args.patch, "tag": tag, "sigma": sigma, "scale": scale,
                          "data": hashlib.sha1(np.ascontiguousarray(noisy if obj != "clean" else clean)
                                               .tobytes()).hexdigest()}, sort_keys=True)
        h = hashlib.sha1(key.encode()).hexdigest()[:12]
        path = work / f"{tag}_{obj}.safetensors"
        if path.is_file() and not args.retrain:
            p = AmbientPrior.load(path, device=bench_device(args))
            if p.metadata.training.get("settings_hash") == h:
                priors[obj], info[obj] = p, p.metadata.training
                print(f"  reusing {path.name} (trained in {info[obj]['train_seconds']:.0f} s)", flush=True)
                continue
        data = (PatchSet(ym, sn, args.patch, clean=x0m) if obj == "clean"
                else PatchSet(ym, sn, args.patch))
        torch.manual_seed(args.seed)
        t = time.perf_counter()
        res = train(EDMDenoiser(net), data, loss, tcfg, device=bench_device(args))
        sec = time.perf_counter() - t
        meta = PriorMetadata(network=net.to_dict(), data_kind=kind,
                             sigma_n_data=0.0 if obj == "clean" else sigma,
                             sigma_n_model=0.0 if obj == "clean" else sn, scale=scale,
                             training={"image_shape": [args.patch, args.patch], "steps": res.step,
                                       "objective": obj, "batch_size": args.batch_size,
                                       "lr": args.lr, "train_seconds": sec,
                                       "final_loss": res.history[-1]["loss"],
                                       "n_images": int(ym.shape[0]), "settings_hash": h})
        priors[obj] = AmbientPrior(res.model, meta)
        priors[obj].save(path, overwrite=True)
        info[obj] = meta.training
        print(f"  trained {obj:<20s} {sec:7.1f} s  {res.step} steps  final loss "
              f"{res.history[-1]['loss']:.4f}", flush=True)
    return priors, info


def intensity_scale(noisy: np.ndarray, sigma: float) -> float:
    """The package's intensity scale (``datasets.intensity_scale``) of complex images."""
    return package_intensity_scale(np.abs(noisy) ** 2, 2 * sigma**2)


def sigma_at_snr(images: np.ndarray, snr_db: float) -> float:
    """Complex noise std per real channel giving ``snr_db`` image SNR: RMS magnitude of the
    object (pixels above 10% of each image's peak) over ``sqrt(2) 10^(snr/20)``."""
    obj = np.concatenate([np.abs(x[np.abs(x) > 0.1 * np.abs(x).max()]) for x in images])
    return math.sqrt(float(np.mean(obj**2))) / (math.sqrt(2) * 10 ** (snr_db / 20))


# ------------------------------------------------------------------------------------ baselines

def sense_cg(ku: np.ndarray, maps: np.ndarray, mask: np.ndarray, lam: float,
             iters: int = 30) -> np.ndarray:
    """SENSE: ``(A^H A + lam I) x = A^H y`` by the package's CG (``recon.cg``), complex (H, W)."""
    op = SenseOp(torch.from_numpy(maps)[None], torch.from_numpy(mask.astype(np.float32)))
    b = op.H(torch.from_numpy(ku)[None])
    x, _ = cg(lambda v: op.normal(v) + lam * v, b, iters=iters, tol=1e-8)
    return x[0].numpy()


def l1_wavelet(ku: np.ndarray, maps: np.ndarray, mask: np.ndarray, lam: float,
               iters: int = 100) -> np.ndarray:
    import sigpy.mri.app as app

    w = np.broadcast_to(mask, ku.shape[-2:]).astype(np.float32)
    return np.asarray(app.L1WaveletRecon(ku, maps, lam, weights=w, max_iter=iters,
                                         show_pbar=False).run())


ALPHAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)        # L1-wavelet lamda = alpha * sigma
BETAS = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0)             # SENSE lam = beta * sigma^2 / q^2


def tune(ks: np.ndarray, x0s: np.ndarray, maps: np.ndarray, mask: np.ndarray, sigma: float,
         q: float) -> dict:
    """Pick ``alpha`` and ``beta`` by mean PSNR on training slices."""
    out = {}
    for name, grid, fn in (("alpha", ALPHAS, lambda k, a: l1_wavelet(k, maps, mask, a * sigma)),
                           ("beta", BETAS, lambda k, b: sense_cg(k, maps, mask, b * sigma**2 / q**2))):
        scores = {g: float(np.mean([psnr(fn(k * mask, g), x) for k, x in zip(ks, x0s)])) for g in grid}
        out[name] = max(scores, key=scores.get)
        out[name + "_scores"] = {str(g): s for g, s in scores.items()}
    return out


# ------------------------------------------------------------------------------------ evaluation

class Table:
    def __init__(self):
        self.cells, self.per_slice = [], {}

    def add(self, task, method, prior, metric, values):
        values = [float(v) for v in np.atleast_1d(values)]
        self.cells.append({"task": task, "method": method, "prior": prior, "metric": metric,
                           "value": float(np.mean(values))})
        self.per_slice[f"{task}|{method}|{prior}|{metric}"] = values

    def get(self, task, method, prior, metric):
        for c in self.cells:
            if (c["task"], c["method"], c["prior"], c["metric"]) == (task, method, prior, metric):
                return c["value"]
        return None


def record(tab: Table, task: str, method: str, prior, rows: list[dict]) -> None:
    for metric in rows[0]:
        tab.add(task, method, prior, metric, [r[metric] for r in rows])


def score(est: np.ndarray, ref: np.ndarray, *, magnitude: bool = False) -> dict:
    """PSNR (complex, or magnitude) and SSIM of the magnitude, peak max |ref|."""
    peak = float(np.abs(ref).max())
    e, r = (np.abs(est), np.abs(ref)) if magnitude else (est, ref)
    return {"psnr": psnr(e, r, peak), "ssim": ssim(np.abs(est), np.abs(ref), peak)}


def run_sampler(prior: AmbientPrior, ku, mask, maps, sigma, method, args, seed) -> tuple[dict, float, int]:
    g = torch.Generator(device=prior.device).manual_seed(seed)
    extra = {"mode": args.dps_mode, "cg_iters": args.dps_cg_iters} if method == "dps" else {}
    t = time.perf_counter()
    out = prior.reconstruct(ku, mask, maps=maps, sigma=sigma, method=method,
                            n_samples=args.recon_samples, steps=args.recon_steps,
                            sigma_max=args.sigma_max, chunk=args.recon_samples, generator=g, **extra)
    if prior.device.type == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - t
    # one slice per call, the K chains batched: the counter's batched calls x K single-image ones
    return out, sec, int(out["calls"]) * args.recon_samples


def evaluate_simulation(priors, x0_test, k_test, maps, sigma, masks, tuning, args, tab):
    k_post = args.post_samples
    figs = {"truth": np.abs(x0_test[0])}
    # 1. denoising
    y_test = combine(k_test, maps)
    record(tab, "denoise", "noisy_input", "-", [score(y, x) for y, x in zip(y_test, x0_test)])
    figs["noisy"] = np.abs(y_test[0])
    for obj, prior in priors.items():
        rows = []
        for j, (y, x) in enumerate(zip(y_test, x0_test)):
            yt = torch.from_numpy(y)[None, None].to(prior.device)
            t = time.perf_counter()
            mean = prior.denoise(yt, sigma)[0, 0].cpu().numpy()
            t_mean = time.perf_counter() - t
            g = torch.Generator(device=prior.device).manual_seed(args.seed + 100 + j)
            t = time.perf_counter()
            post = prior.posterior(yt, sigma, n_samples=k_post, steps=args.post_steps, generator=g)
            if prior.device.type == "cuda":
                torch.cuda.synchronize()
            t_post = time.perf_counter() - t
            steps = args.post_steps or POSTERIOR_STEPS
            cov2, covk = coverage(mean, post["std"][0, 0].cpu().numpy(), x, k_post)
            rows.append({**score(mean, x), "cov2": cov2, "covK": covk, "calls": 1,
                         "calls_std": k_post * steps, "sec": t_mean, "sec_std": t_post})
            if j == 0:
                figs[f"denoise {obj}"] = np.abs(mean)
                if obj == OBJECTIVES[0]:
                    figs[f"denoise std {obj}"] = post["std"][0, 0].abs().cpu().numpy()
        record(tab, "denoise", "posterior_mean", obj, rows)
        print(f"  denoise {obj:<20s} PSNR {tab.get('denoise', 'posterior_mean', obj, 'psnr'):.2f}", flush=True)
    # 2. reconstruction
    for accel, mask in masks.items():
        task = f"recon_R{accel}"
        tn = tuning[accel]
        base = {"zero_filled": lambda ku: combine(ku, maps),
                "sense_cg": lambda ku: sense_cg(ku, maps, mask, tn["beta"] * sigma**2 / tn["q"] ** 2),
                "l1_wavelet": lambda ku: l1_wavelet(ku, maps, mask, tn["alpha"] * sigma)}
        for name, fn in base.items():
            rows = []
            for j, (k, x) in enumerate(zip(k_test, x0_test)):
                t = time.perf_counter()
                est = fn(k * mask)
                rows.append({**score(est, x), "calls": 0, "sec": time.perf_counter() - t})
                if j == 0:
                    figs[f"R{accel} {name}"] = np.abs(est)
            record(tab, task, name, "-", rows)
        for obj, prior in priors.items():
            for method in ("dc", "dps"):
                rows = []
                for j, (k, x) in enumerate(zip(k_test, x0_test)):
                    out, sec, calls = run_sampler(prior, k * mask, mask, maps, sigma, method, args,
                                                  args.seed + 1000 * accel + j)
                    mean, std = out["mean"][0].cpu().numpy(), out["std"][0].cpu().numpy()
                    cov2, covk = coverage(mean, std, x, args.recon_samples)
                    rows.append({**score(mean, x), "cov2": cov2, "covK": covk, "calls": calls, "sec": sec})
                    if j == 0:
                        figs[f"R{accel} {method} {obj}"] = np.abs(mean)
                        if obj == OBJECTIVES[0]:
                            figs[f"R{accel} {method} std {obj}"] = np.hypot(std.real, std.imag)
                record(tab, task, method, obj, rows)
                print(f"  {task} {method:<3s} {obj:<20s} PSNR {tab.get(task, method, obj, 'psnr'):.2f}  "
                      f"{np.mean([r['sec'] for r in rows]):.1f} s/slice", flush=True)
    return figs


# ------------------------------------------------------------------------------------ real data

def real_size(size: int) -> tuple[int, int]:
    """The crop of the ~1 mm 230 x 180 k-space that gives the priors' pixel size
    (``BOX_MM / size`` mm), rounded to multiples of 4 (the network's size multiple)."""
    px = BOX_MM / size
    return tuple(max(4 * int(round(n / px / 4)), 8) for n in (230, 180))


def crop_centre(k: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = k.shape[-2:]
    i, j = h // 2 - shape[0] // 2, w // 2 - shape[1] // 2
    return k[..., i:i + shape[0], j:j + shape[1]]


def whitened(k: np.ndarray) -> tuple[np.ndarray, float, dict]:
    """Coil-whitened k-space (C, H, W) and its sigma per real channel (noise.from_kspace)."""
    from ambient_med.mri.coils import whiten, whitening_matrix
    from ambient_med.noise.estimate import from_kspace

    est = from_kspace(k)
    w = whitening_matrix(est.covariance, est.sigma)
    info = {"sigma": est.sigma, "n_noise_samples": int(est.details["n_samples"]),
            "max_coil_correlation": float(np.max(est.details["correlation"] - np.eye(k.shape[0])))}
    return whiten(k, w).astype(np.complex64), est.sigma, info


def real_problems(args, rng) -> dict:
    """{name: dict(ku, mask, maps, ref, sigma, magnitude_fit)} in whitened k-space units."""
    from ambient_med.io.volumes import read_cfl
    from ambient_med.mri.coils import espirit_maps

    shape = real_size(args.size)
    probs = {}
    full = np.moveaxis(np.asarray(read_cfl(ESPIRIT, mmap=False))[0], -1, 0)    # (8, 230, 180)
    kw, sig, info = whitened(full)
    kc = crop_centre(kw, shape)
    maps = espirit_maps(kc, calib_width=min(24, shape[1]), fill=False)
    ref = combine(kc, maps)
    for accel in (4, 8):
        mask = line_mask(shape[1], accel, rng)
        probs[f"real_espirit_R{accel}"] = dict(ku=kc * mask, mask=mask, maps=maps, ref=ref, sigma=sig,
                                               fit=False, info={**info, "shape": list(shape),
                                                                "sampled": float(mask.mean())})
    ksp = np.moveaxis(np.asarray(read_cfl(BART_KSP, mmap=False))[0], -1, 0)     # (8, 180, 230)
    kw, sig, info = whitened(ksp)
    bshape = (shape[1], shape[0])
    kc = crop_centre(kw, bshape)
    mask = (np.abs(kc) > 0).any(0).astype(np.float32)
    cw = calib_square(mask)
    maps = espirit_maps(kc, calib_width=cw, fill=False)
    img = np.asarray(read_cfl(BART_IMG, mmap=False))[0, :, :, 0, :]              # (180, 230, 2)
    low = ifftc(crop_centre(fftc(np.moveaxis(img, -1, 0)), bshape))              # (2, h, w)
    ref = np.sqrt(np.sum(np.abs(low) ** 2, 0)).astype(np.float32)
    probs["real_bart_poisson"] = dict(ku=kc * mask, mask=mask, maps=maps, ref=ref, sigma=sig, fit=True,
                                      info={**info, "shape": list(bshape), "sampled": float(mask.mean()),
                                            "calib_width": cw,
                                            "sampled_uncropped": float((np.abs(ksp) > 0).any(0).mean())})
    return probs


def calib_square(mask: np.ndarray) -> int:
    """Width of the largest fully sampled square at the k-space centre."""
    h, w = mask.shape
    best = 0
    for c in range(2, min(h, w) + 1):
        i, j = h // 2 - c // 2, w // 2 - c // 2
        if mask[i:i + c, j:j + c].all():
            best = c
        else:
            break
    return best


def real_score(est: np.ndarray, ref: np.ndarray, fit: bool) -> dict:
    a, r = np.abs(est), np.abs(ref)
    if fit:          # least-squares scale of the magnitude
        a = a * float(np.sum(a * r) / max(np.sum(a * a), 1e-30))
    peak = float(r.max())
    return {"psnr": psnr(a, r, peak), "ssim": ssim(a, r, peak)}


def evaluate_real(priors, tuning, scale, args, tab, rng):
    probs = real_problems(args, rng)
    figs, infos = {}, {}
    for task, pr in probs.items():
        accel = 8 if task.endswith("R8") else 4
        ku0, mask, maps = pr["ku"], pr["mask"], pr["maps"]
        # bring the data to the priors' intensity scale: p99 magnitude of the SENSE image
        sense0 = sense_cg(ku0, maps, mask, 0.0)
        c = scale / float(np.percentile(np.abs(sense0), 99))
        ku, sigma, ref = ku0 * c, pr["sigma"] * c, pr["ref"] * c
        q = float(np.percentile(np.abs(sense0 * c), 99))
        infos[task] = {**pr["info"], "intensity_factor": c, "sigma_after_scaling": sigma}
        if not pr["fit"]:   # the reference is in the units of the k-space (bart's is not)
            obj = np.abs(ref)[np.abs(ref) > 0.1 * np.abs(ref).max()]
            infos[task]["snr_db_reference"] = 10 * math.log10(float(np.mean(obj**2)) / (2 * sigma**2))
        tn = tuning[accel]
        figs[f"{task} reference"] = np.abs(ref)
        base = {"zero_filled": lambda: combine(ku, maps),
                "sense_cg": lambda: sense_cg(ku, maps, mask, tn["beta"] * sigma**2 / q**2),
                "l1_wavelet": lambda: l1_wavelet(ku, maps, mask, tn["alpha"] * sigma)}
        for name, fn in base.items():
            t = time.perf_counter()
            est = fn()
            record(tab, task, name, "-", [{**real_score(est, ref, pr["fit"]), "calls": 0,
                                           "sec": time.perf_counter() - t}])
            figs[f"{task} {name}"] = np.abs(est)
        # the baseline's best case: lamda tuned on this image against its own reference
        best = max(((a, real_score(l1_wavelet(ku, maps, mask, a * sigma), ref, pr["fit"])["psnr"])
                    for a in ALPHAS + (16.0, 32.0)), key=lambda v: v[1])
        t = time.perf_counter()
        est = l1_wavelet(ku, maps, mask, best[0] * sigma)
        record(tab, task, "l1_wavelet_oracle", "-", [{**real_score(est, ref, pr["fit"]), "calls": 0,
                                                       "sec": time.perf_counter() - t}])
        infos[task]["l1_oracle_alpha"] = best[0]
        for obj, prior in priors.items():
            for method in ("dc", "dps"):
                out, sec, calls = run_sampler(prior, ku[None], mask, maps[None], sigma, method, args,
                                              args.seed + 7)
                mean, std = out["mean"][0, 0].cpu().numpy(), out["std"][0, 0].cpu().numpy()
                row = {**real_score(mean, ref, pr["fit"]), "calls": calls, "sec": sec}
                if not pr["fit"]:   # same maps as the reference: coverage of ref = x0 + noise
                    row["cov2"], row["covK"] = coverage(mean, std, ref, args.recon_samples, sigma**2)
                record(tab, task, method, obj, [row])
                figs[f"{task} {method} {obj}"] = np.abs(mean)
                print(f"  {task} {method:<3s} {obj:<20s} PSNR {row['psnr']:.2f}  {sec:.1f} s", flush=True)
    return figs, infos


# ------------------------------------------------------------------------------------ output

METRICS = (("psnr", "PSNR dB", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"), ("cov2", "cov2", "{:.1%}"),
           ("covK", "covK", "{:.1%}"), ("calls", "net calls/slice", "{:.0f}"),
           ("sec", "s/slice", "{:.2f}"))


def markdown(tab: Table, meta: dict) -> str:
    rows, seen = [], []
    for c in tab.cells:
        key = (c["task"], c["method"], c["prior"])
        if key not in seen:
            seen.append(key)
    head = "| task | method | prior | " + " | ".join(m[1] for m in METRICS) + " |"
    rows.append(head)
    rows.append("|" + "---|" * (3 + len(METRICS)))
    for task, method, prior in seen:
        vals = []
        for m, _, fmt in METRICS:
            v = tab.get(task, method, prior, m)
            if m == "calls" and task == "denoise" and method == "posterior_mean":
                vals.append(f"1 (+{tab.get(task, method, prior, 'calls_std'):.0f} for std)")
            elif m == "sec" and task == "denoise" and method == "posterior_mean":
                vals.append(f"{v:.2f} (+{tab.get(task, method, prior, 'sec_std'):.1f} for std)")
            else:
                vals.append("" if v is None else fmt.format(v))
        rows.append(f"| {task} | {method} | {prior} | " + " | ".join(vals) + " |")
    return "\n".join(rows)


def targets(tab: Table, args) -> list[str]:
    """The benchmark's targets, checked on the measured means."""
    g = tab.get
    a, n, c = "ambient+consistency", "naive", "clean"
    out = []

    def line(ok, text):
        out.append(f"- [{'x' if ok else ' '}] {text}")

    for task, method in (("denoise", "posterior_mean"), ("recon_R4", "dc"), ("recon_R4", "dps")):
        pa, pn, pc = (g(task, method, p, "psnr") for p in (a, n, c))
        if None in (pa, pn, pc):
            continue
        line(pc - pa <= 0.5, f"{task} {method}: ambient+consistency within 0.5 dB of clean "
                             f"({pa:.2f} vs {pc:.2f} dB, gap {pc - pa:+.2f})")
        line(pa - pn >= 1.0, f"{task} {method}: ambient+consistency >= 1 dB above naive "
                             f"({pa:.2f} vs {pn:.2f} dB, {pa - pn:+.2f})")
    pa, pl = g("recon_R8", "dc", a, "psnr"), g("recon_R8", "l1_wavelet", "-", "psnr")
    calls = g("recon_R8", "dc", a, "calls")
    if pa is not None and pl is not None:
        line(pa - pl >= 2 and calls <= 100, f"recon_R8 dc: >= 2 dB above L1-wavelet with <= 100 calls/slice "
                                            f"({pa:.2f} vs {pl:.2f} dB, {pa - pl:+.2f}; {calls:.0f} calls)")
    for task, method in (("denoise", "posterior_mean"), ("recon_R4", "dc"), ("recon_R8", "dc"),
                         ("recon_R4", "dps"), ("recon_R8", "dps")):
        v = g(task, method, a, "cov2")
        k = args.post_samples if task == "denoise" else args.recon_samples
        vk = g(task, method, a, "covK")
        if v is not None:
            line(0.90 <= v <= 0.98, f"{task} {method} ambient+consistency: 2-std coverage {v:.1%} in 90-98% "
                                    f"(K = {k}: a calibrated posterior gives {ideal_cov2(k):.1%}; "
                                    f"K-corrected interval {vk:.1%}, nominal 95.4%)")
    for task in ("real_espirit_R4", "real_espirit_R8", "real_bart_poisson"):
        pl = g(task, "l1_wavelet", "-", "psnr")
        po = g(task, "l1_wavelet_oracle", "-", "psnr")
        for method in ("dc", "dps"):
            pa = g(task, method, a, "psnr")
            if pa is not None and pl is not None:
                line(pa > pl, f"{task} {method}: ambient+consistency better than L1-wavelet "
                              f"({pa:.2f} vs {pl:.2f} dB transferred lamda, {po:.2f} dB oracle lamda)")
    return out


def save_figure(figs: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(figs)
    ncol = 6
    nrow = math.ceil(len(names) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.2 * ncol, 2.4 * nrow), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names):
        img = figs[name]
        std = " std " in f" {name} "
        ax.imshow(img, cmap="magma" if std else "gray", vmin=0,
                  vmax=float(np.percentile(img, 99.5)) if std else None)
        ax.set_title(name, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    mag, area = mni_slices(args.size)
    train_idx, test_idx = split(area, args.n_test, args.gap)
    phases = np.stack([smooth_phase(rng, args.size) for _ in range(mag.shape[0])])
    x0 = (mag * np.exp(1j * phases)).astype(np.complex64)
    maps = coil_maps(args.coils, args.size)
    sigma = sigma_at_snr(x0[train_idx], args.snr_db)
    k_all = simulate(x0, maps, sigma, rng)
    y_all = combine(k_all, maps)
    x_tr, y_tr = x0[train_idx], y_all[train_idx]
    scale = intensity_scale(y_tr, sigma)
    print(f"MNI {args.size}x{args.size}: {len(train_idx)} training slices, test slices {test_idx}; "
          f"sigma {sigma:.4f} ({args.snr_db} dB), scale {scale:.4f}", flush=True)

    # priors at equal budget
    t = time.perf_counter()
    priors, train_info = train_priors(OBJECTIVES, x_tr, y_tr, sigma, scale, args, args.work, "mni")
    t_train = time.perf_counter() - t

    # baselines tuned on training slices
    masks = {accel: line_mask(args.size, accel, rng) for accel in (4, 8)}
    tune_idx = np.linspace(0, len(train_idx) - 1, args.n_tune).round().astype(int)
    q = float(np.percentile(np.abs(y_tr), 99))
    tuning = {accel: {**tune(k_all[train_idx][tune_idx], x_tr[tune_idx], maps, m, sigma, q), "q": q}
              for accel, m in masks.items()}
    print("  tuned " + ", ".join(f"R{a}: alpha {v['alpha']}, beta {v['beta']}" for a, v in tuning.items()),
          flush=True)

    tab = Table()
    t = time.perf_counter()
    figs = evaluate_simulation(priors, x0[test_idx], k_all[test_idx], maps, sigma, masks, tuning,
                               args, tab)
    t_sim = time.perf_counter() - t
    t = time.perf_counter()
    real_info = {}
    if not args.no_real:
        real_figs, real_info = evaluate_real(priors, tuning, scale, args, tab, rng)
    t_real = time.perf_counter() - t

    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    meta = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": {"mni": str(MNI.name), "size": args.size, "pixel_mm": BOX_MM / args.size,
                 "train_slices": train_idx, "test_slices": test_idx, "sigma": sigma, "scale": scale,
                 "snr_db": args.snr_db, "coils": args.coils,
                 "masks": {str(a): m.astype(int).tolist() for a, m in masks.items()}},
        "training": train_info, "tuning": {str(a): v for a, v in tuning.items()}, "real": real_info,
        "ideal_cov2": {"denoise": ideal_cov2(args.post_samples), "recon": ideal_cov2(args.recon_samples)},
        "wall_seconds": {"train": t_train, "simulation_eval": t_sim, "real_eval": t_real,
                         "total": time.perf_counter() - t_start},
        "torch": torch.__version__, "threads": args.threads,
    }
    result = {"cells": tab.cells, "per_slice": tab.per_slice, "meta": meta}
    (args.out / f"mri_recon{suffix}.json").write_text(json.dumps(result, indent=1))
    save_figure(figs, args.out / f"mri_recon{suffix}.png",
                f"held-out MNI slice {test_idx[0]}, magnitudes (std: posterior std maps)")
    if not args.no_real:
        save_figure(real_figs, args.out / f"mri_recon_real{suffix}.png",
                    "real k-space, magnitudes (priors trained on MNI template slices)")
    table = markdown(tab, meta)
    md_path = args.out / f"mri_recon{suffix}.md"
    kept = ""
    if md_path.is_file() and MARKER in md_path.read_text():
        kept = md_path.read_text().split(MARKER, 1)[1]
    tr = ", ".join(f"{o} {v['train_seconds']:.0f} s" for o, v in train_info.items())
    md = f"""# MRI benchmark: denoising and reconstruction with the priors

Generated by `python benchmarks/mri_recon.py{' --quick' if args.quick else ''}` (settings in
`mri_recon{suffix}.json`). MNI152 template slices at {args.size}x{args.size} ({BOX_MM / args.size:.0f} mm
pixels), {args.coils} birdcage coils, complex noise sigma = {sigma:.4f} ({args.snr_db:g} dB image SNR);
{len(train_idx)} training slices, {len(test_idx)} held-out test slices {test_idx}. Priors: network
features {tuple(args.features)}, {args.steps} steps x batch {args.batch_size} of {args.patch}x{args.patch}
patches, lr {args.lr}, equal for all three (training wall time: {tr}). Denoising std from
K = {args.post_samples} posterior samples; recon samplers K = {args.recon_samples} chains x
{args.recon_steps} steps from sigma_max = {args.sigma_max} (DPS mode `{args.dps_mode}`). Values are means
over the test slices (real data: one image). CPU, {args.threads} torch thread(s); wall time of this
invocation {meta['wall_seconds']['total'] / 60:.1f} min (training {t_train / 60:.1f}, simulation
{t_sim / 60:.1f}, real data {t_real / 60:.1f}; priors whose settings match are reused from `--work`).

cov2: share of pixels x real channels with |mean - truth| <= 2 std (a calibrated posterior
estimated from K samples gives {ideal_cov2(args.post_samples):.1%} at K = {args.post_samples},
{ideal_cov2(args.recon_samples):.1%} at K = {args.recon_samples}); covK: the K-sample prediction interval,
nominal 95.4% for any K. Real data: PSNR/SSIM of magnitudes; `espirit` coverage is of the noisy
fully sampled reference, the interval widened by its noise; `bart` after a least-squares scale fit.

{table}

## Targets

{chr(10).join(targets(tab, args))}

{MARKER}{kept}"""
    md_path.write_text(md)
    print(table)
    print("\n".join(targets(tab, args)))
    print(f"wall time {meta['wall_seconds']['total']:.0f} s")
    return result


if __name__ == "__main__":
    main()
