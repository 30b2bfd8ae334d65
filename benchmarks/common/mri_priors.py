"""The priors of the MRI benchmarks: patches, network, training at equal budget (cached in a
work folder by a key of the settings) and the reconstruction sampler as the benchmarks run it."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ambient_med.diffusion.losses import LossConfig
from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig
from ambient_med.mri.complex import complex_to_channels
from ambient_med.prior import AmbientPrior, PriorMetadata
from ambient_med.training.loop import TrainConfig, train
from ambient_med.training.transforms import patch_seed

from .work import settings_key


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
    """The benchmarks' CPU network: no attention, one res block (the package's quick-start CPU
    network)."""
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
        h = settings_key({"net": net.to_dict(), "loss": asdict(loss), "train": tcfg.to_dict(),
                          "patch": args.patch, "tag": tag, "sigma": sigma, "scale": scale,
                          "data": hashlib.sha1(np.ascontiguousarray(noisy if obj != "clean" else clean)
                                               .tobytes()).hexdigest()}, 12)
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


def run_sampler(prior: AmbientPrior, ku, mask, maps, sigma, method, args, seed) -> tuple[dict, float, int]:
    """One slice reconstructed by ``prior.reconstruct`` as the benchmarks run it: ``(output,
    seconds, single-image network calls)``."""
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
