"""The data of the FMD benchmarks (``fmd.py``, ``fmd_curve.py``): confocal captures, the clean
targets the oracles see, the training set, network and settings every learned method shares.

FMD (Zhang et al. CVPR 2019), Confocal_BPAE_B: 50 raw 512x512 uint8 captures of each of 5 fields
of view (``raw/<field>``) and their 50-capture averages (``gt/<field>``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ambient_med.diffusion.losses import LossConfig
from ambient_med.diffusion.networks import NetworkConfig
from ambient_med.io.discover import open_source
from ambient_med.noise import PoissonGaussian, from_dict
from ambient_med.prior import PriorMetadata
from ambient_med.training.config import load_protocol
from ambient_med.training.datasets import build_training_set
from ambient_med.training.loop import TrainConfig
from ambient_med.training.transforms import RandPatchd, patch_seed

from .overrides import loss_overrides

DATA_RANGE = 255.0   # 8-bit captures: PSNR and SSIM over the full range of the format


def read_folder(folder: Path) -> np.ndarray:
    """All frames of a folder, ``(N, H, W)`` float64, through the package's frame reader."""
    src = open_source(folder, 2)
    return np.stack([src.read(i)[0] for i in range(len(src))]).astype(np.float64)


def test_field(data: Path, field: int) -> tuple[np.ndarray, np.ndarray]:
    """A field's raw captures ``(50, H, W)`` and their 50-capture average ``(H, W)``."""
    return read_folder(data / "raw" / str(field)), read_folder(data / "gt" / str(field))[0]


def expected_z(model: PoissonGaussian, x: np.ndarray) -> np.ndarray:
    """``E[f(y) | x]`` per pixel: the ``z`` whose unbiased inverse is ``x`` (on unique values)."""
    lam = np.maximum(x - model.mu, 0.0) / model.a
    u, inv = np.unique(lam, return_inverse=True)
    return model.expected_stabilised(u)[inv].reshape(x.shape)


def crop_for_quick(x, n=128):
    """The top-left ``n`` x ``n`` corner (the smoke run's crop)."""
    return x[..., :n, :n]


def reference_fit(stack: np.ndarray) -> PoissonGaussian:
    """Gain and offset from the per-pixel variance over the repeated captures against their
    mean (the 15%-higher gain that spatially correlated noise hides from the single-image fit);
    used only in an ablation, never by a method."""
    m, v = stack.mean(0).ravel(), stack.var(0, ddof=1).ravel()
    ok = (m > m.min() + 2) & (m < 250)
    a, b_eff = np.polyfit(m[ok], v[ok], 1)
    return PoissonGaussian(a, 0.0, -b_eff / a) if b_eff < 0 else PoissonGaussian(a, b_eff, 0.0)


def unc_crops(ref: np.ndarray, n: int, size: int) -> list[tuple[int, int]]:
    """``n`` non-overlapping ``size``-crops with the most signal in the reference (cells, not
    empty background), chosen on a grid of stride ``size // 2``."""
    h, w = ref.shape
    cands = sorted(((ref[i:i + size, j:j + size].mean(), i, j)
                    for i in range(0, h - size + 1, size // 2) for j in range(0, w - size + 1, size // 2)),
                   reverse=True)
    out = []
    for _, i, j in cands:
        if all(abs(i - a) >= size or abs(j - b) >= size for a, b in out):
            out.append((i, j))
        if len(out) == n:
            break
    return out


class PairedPatches(torch.utils.data.Dataset):
    """Keyed draws (like ``ModelSpaceSet``): the raw capture's model-space patch as ``image``
    and the co-located patch of its field's clean ``z`` as ``clean``."""

    keyed_draws = True

    def __init__(self, noisy, clean_by_item, sigma_n, patch):
        self.noisy, self.clean, self.sigma_n = noisy, clean_by_item, float(sigma_n)
        self.patcher = RandPatchd(["image", "clean"], patch_size=(patch, patch))

    def __len__(self):
        return len(self.noisy)

    def __getitem__(self, key):
        index, epoch, seed = key if isinstance(key, tuple) else (int(key), 0, 0)
        item = int(index) % len(self.noisy.data)      # draws cycle over the items (ModelSpaceSet)
        d = self.noisy.post(self.noisy.data[item])
        d = self.patcher.draw({"image": d["image"], "clean": self.clean[item]},
                              patch_seed(seed, epoch, index))
        return {"image": d["image"], "clean": d["clean"], "sigma_n": self.sigma_n}


def training_setup(args, log) -> dict:
    """The training set (the package's pipeline on the raw captures of the training fields), the
    clean targets of the oracles, the network, train and loss settings shared by every method."""
    times = {}
    # ---- training set: the package's pipeline on the raw captures of the training fields
    folders = [args.data / "raw" / str(f) for f in args.train_fields]
    t = time.perf_counter()
    ds, info = build_training_set(folders, sigma_n="auto", kind="intensity", spatial_dims=2,
                                  patch_size=(args.patch, args.patch), noise_model="poisson-gaussian",
                                  noise_map=getattr(args, "noise_map", False))
    ds.data = [ds.data[i] for i in range(len(ds.data))]   # preprocess once, keep in memory
    times["load_training_set_s"] = time.perf_counter() - t
    scale, sn = info.scale, info.sigma_n_model
    fit = {Path(k).name: v for k, v in info.noise_files.items()}
    log(f"training set: {info.n_items} raw captures of fields {args.train_fields}; scale {scale:.4g}, "
        f"sigma_n (model) {sn:.4g}, sigma_data {info.sigma_data:.4g}; per-field fits {fit}")
    per_item_field = [f for f, folder in zip(args.train_fields, folders)
                      for _ in range(len(open_source(folder, 2)))]
    clean_z = {}
    for f, folder in zip(args.train_fields, folders):
        avg = read_folder(args.data / "gt" / str(f))[0]
        m = from_dict(info.noise_files[str(folder)])
        clean_z[f] = torch.from_numpy(expected_z(m, avg) / scale).float()[None]
    paired = PairedPatches(ds, [clean_z[f] for f in per_item_field], sn, args.patch)

    net_cfg = NetworkConfig(spatial_dims=2, channels=1, sigma_data=info.sigma_data,
                            features=tuple(args.features), attention_levels=(False,) * len(args.features),
                            num_res_blocks=1, norm_num_groups=8, num_head_channels=16)
    tcfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_warmup=args.warmup,
                       ema_decay=0.999, seed=args.seed, log_every=max(args.steps // 8, 1),
                       checkpoint_every=10**9, mixed_precision=False)
    base_loss = LossConfig(**{**load_protocol("microscopy-2d").loss.__dict__, **loss_overrides(args.loss),
                              "sigma_data": info.sigma_data})
    meta = lambda obj: PriorMetadata(  # noqa: E731
        network=net_cfg.to_dict(), data_kind="intensity", sigma_n_data=1.0, sigma_n_model=sn, scale=scale,
        noise_model="poisson-gaussian", noise=info.noise,
        training={"image_shape": [args.patch, args.patch], "steps": args.steps, "objective": obj,
                  "protocol": "benchmarks/fmd.py", "files": len(folders), "items": info.n_items})

    return {"ds": ds, "info": info, "paired": paired, "net_cfg": net_cfg, "tcfg": tcfg,
            "base_loss": base_loss, "meta": meta, "scale": scale, "sn": sn, "folders": folders,
            "times": times}

