"""Where users train: the package's speed at real image sizes, against a bare PyTorch floor.

For the fastMRI knee protocol (320x320 complex slices, 2 channels, the network of
``protocols/fastmri-knee-multicoil.yaml``) and the 3D protocol (``nifti-3d``'s network on 128^3
patches) it measures

* training images/s, step time and peak memory for ``clean``, ``ambient`` and
  ``ambient+consistency`` (consistency active from the first step: its steady-state cost)
  through the package's loop (``ambient_med.training.loop.train``, in-memory data on the device);
* the same for a bare PyTorch loop that does the same loss math with the same MONAI network and
  no package code (AdamW, gradient clipping and a multi-tensor EMA, as the package): the floor of
  what the framework could cost. Before timing, the bare loss is checked against the package's
  on identical weights, data and random draws (``bare_vs_package_loss``);
* each speed option of ``TrainConfig`` (bf16 autocast, channels-last, torch.compile, gradient
  checkpointing, fused EMA) toggled alone on the ``ambient+consistency`` step;
* sampling time per slice (32 Heun steps, ``AmbientPrior.sample``) and reconstruction time per
  slice (data-consistency sampler, ``AmbientPrior.reconstruct(method="dc")`` at R = 8 with the
  ``recon`` command's defaults: 8 posterior samples x 128 steps);
* preprocessing of knee-size fastMRI-format phantom files (15 coils, ``phantoms.py``) on all CPU
  cores into the cache (and the projection to a 35,000-slice knee training set), and the share
  of step time spent waiting for data when training the knee protocol as shipped from that cache.

On a GPU, peak memory is ``torch.cuda.max_memory_allocated``. On a CPU it is the peak of live
tensor storages during one training step (``speed.TensorMemory``), with the 3D figure projected
linearly in voxels to 128^3 (the 3D network has no attention, so its activations scale with
the voxel count).

    python benchmarks/gpu.py --device cuda                  # the GPU figures (benchmarks/results/gpu.json/.md)
    python benchmarks/gpu.py --device cpu --quick           # CPU smoke: every path at 64x64 / 32^3

``--quick`` runs reduced sizes and few steps so that every code path is exercised on a CPU; its
figures are labelled CPU smoke figures and are not GPU figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ambient_med.diffusion.losses import LossConfig  # noqa: E402
from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig, count_parameters  # noqa: E402
from ambient_med.diffusion.objective import objective_loss  # noqa: E402
from ambient_med.training import speed  # noqa: E402
from ambient_med.training.config import load_protocol  # noqa: E402
from ambient_med.training.loop import TensorDataset, TrainConfig, train  # noqa: E402
from ambient_med.utils import resolve_device  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
KNEE, VOL = "fastmri-knee-multicoil", "nifti-3d"
OBJECTIVES = ("clean", "ambient", "ambient+consistency")
SIGMA_N, SIGMA_DATA = 0.1, 0.5
KNEE_SET_SLICES = 35_000
# (image size, batch) per protocol: full (GPU) and quick (CPU smoke)
SIZES = {"full": {KNEE: ((320, 320), 16), VOL: ((128, 128, 128), 2)},
         "quick": {KNEE: ((64, 64), 2), VOL: ((32, 32, 32), 2)}}


# ---------------------------------------------------------------------------------------------
# devices and timing
# ---------------------------------------------------------------------------------------------

def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak_mb(dev: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None


def device_info(dev: torch.device) -> dict:
    import monai

    info = {"device": dev.type, "torch": torch.__version__, "monai": monai.__version__,
            "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0]}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    try:
        import sigpy

        info["sigpy"] = sigpy.__version__
    except ImportError:
        pass
    return info


def oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


# ---------------------------------------------------------------------------------------------
# networks and data for the training figures
# ---------------------------------------------------------------------------------------------

def network_config(protocol: str, spatial_dims: int, channels: int) -> NetworkConfig:
    net = load_protocol(protocol).network.to_dict()
    net.update(spatial_dims=spatial_dims, channels=channels, sigma_data=SIGMA_DATA)
    return NetworkConfig(**net)


def loss_config(protocol: str, objective: str, variant: str | None = "pair") -> LossConfig:
    """The protocol's loss settings with the consistency term active from the first step.
    ``variant`` pins the below-``sigma_n`` term: ``"pair"`` (the one the bare loop writes out by
    hand, so that package and bare loop run the same maths) or None (the protocol's own)."""
    d = vars(load_protocol(protocol).loss).copy()
    d.update(objective=objective, sigma_data=SIGMA_DATA, consistency_start=0.0)
    if variant is not None:
        d["consistency_variant"] = variant
    return LossConfig(**d)


def train_config(protocol: str, batch: int, steps: int, **options) -> TrainConfig:
    """The protocol's train settings; ``steps`` timed after as many warm-up steps, one log row
    each (a row's ``steps_per_sec`` covers its interval, between two device syncs)."""
    t = load_protocol(protocol).train
    return replace(t, steps=2 * steps, batch_size=batch, log_every=steps, lr_warmup=1,
                   checkpoint_every=10**9, num_workers=0, **options)


def synthetic_set(shape, channels: int, n: int, dev: torch.device, seed: int = 0) -> TensorDataset:
    """Noisy images ``y = x0 + sigma_n e`` and their clean ``x0`` on the device (timing only:
    the content does not change the cost)."""
    g = torch.Generator().manual_seed(seed)
    x0 = SIGMA_DATA * torch.randn((n, channels, *shape), generator=g)
    y = x0 + SIGMA_N * torch.randn(x0.shape, generator=g)
    return TensorDataset(y.to(dev), SIGMA_N, clean=x0.to(dev))


# ---------------------------------------------------------------------------------------------
# the bare loop: the same math, the same MONAI network, no package code
# ---------------------------------------------------------------------------------------------

def bare_unet(cfg: NetworkConfig) -> torch.nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(spatial_dims=cfg.spatial_dims, in_channels=cfg.channels,
                              out_channels=cfg.channels, num_res_blocks=cfg.num_res_blocks,
                              channels=cfg.features, attention_levels=cfg.attention_levels,
                              norm_num_groups=cfg.norm_num_groups,
                              num_head_channels=cfg.num_head_channels)


def _col(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.reshape(-1, *([1] * (ndim - 1)))


def bare_D(unet, x, s, sd):
    """EDM preconditioning: ``c_skip x + c_out F(c_in x, 250 (ln(s)/4 + 2))``."""
    s = s.float().expand(x.shape[0]) if s.ndim == 0 else s.float()
    s2 = s * s + sd * sd
    f = unet(_col(1 / s2.sqrt(), x.ndim) * x, 250.0 * (s.log() / 4 + 2.0))
    return _col(sd * sd / s2, x.ndim) * x + _col(s * sd / s2.sqrt(), x.ndim) * f.to(x.dtype)


def bare_lam(s, sd):
    return (s * s + sd * sd) / (s * sd) ** 2


def bare_sigma(n, pm, ps, low, high, g, dev):
    """ln(sigma) ~ N(pm, ps^2) truncated to (low, high], by the inverse CDF in float64."""
    phi = lambda z: 0.5 * (1 + torch.erf(z / math.sqrt(2)))  # noqa: E731
    low = torch.as_tensor(low, dtype=torch.float64, device=dev).expand(n)
    f_lo = torch.where(low > 0, phi((low.clamp_min(1e-30).log() - pm) / ps), torch.zeros_like(low))
    f_hi = phi(torch.tensor((math.log(high) - pm) / ps, dtype=torch.float64, device=dev))
    u = torch.rand(n, dtype=torch.float64, generator=g, device=dev)
    e = torch.finfo(torch.float64).eps
    z = math.sqrt(2) * torch.erfinv(2 * (f_hi - u * (f_hi - f_lo)).clamp(e, 1 - e) - 1)
    s = (pm + ps * z).exp()
    return torch.where(s > low, s, low * (1 + 1e-6) + 1e-12).float()


def bare_reverse(D, x, a, b_end, steps, g, first=None):
    """Second-order (DPM-Solver++(2M) SDE) reverse chain, first step first order."""
    ratio = (b_end / a) ** (1.0 / steps)
    prev = None
    for i in range(steps):
        b = a * ratio
        d = first if (i == 0 and first is not None) else D(x, a)
        xi = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        q = b * b / (a * a)
        xb = _col(q, x.ndim) * x + _col(1 - q, x.ndim) * d + _col(b * (1 - q).clamp_min(0).sqrt(), x.ndim) * xi
        if prev is not None:
            c = (2 * torch.log(a / b) - (1 - q)) / (2 * torch.log(prev[1] / a))
            xb = xb + _col(torch.where(torch.isfinite(c), c, torch.zeros_like(c)), x.ndim) * (d - prev[0])
        prev, x, a = (d, a), xb, b
    return x


def bare_loss(unet, y, sn, clean, c: LossConfig, g):
    sd, n, dev = c.sigma_data, y.shape[0], y.device
    D = lambda x, s: bare_D(unet, x, s, sd)  # noqa: E731
    per = lambda w, sq: (_col(w, sq.ndim) * sq).flatten(1).mean(1)  # noqa: E731
    if c.objective == "clean":
        s = bare_sigma(n, c.p_mean, c.p_std, 0.0, c.sigma_max, g, dev)
        xs = clean + _col(s, y.ndim) * torch.randn(y.shape, generator=g, device=dev, dtype=y.dtype)
        return per(bare_lam(s, sd), (D(xs, s) - clean) ** 2).mean()
    s = bare_sigma(n, c.p_mean, c.p_std, sn, c.sigma_max, g, dev)
    eta = torch.randn(y.shape, generator=g, device=dev, dtype=y.dtype)
    xs = y + _col((s * s - sn * sn).clamp_min(0).sqrt(), y.ndim) * eta
    r = sn * sn / (s * s)
    w = bare_lam(s, sd) / ((1 - r) ** 2).clamp_min(c.ambient_weight_floor)
    xin, sin, k = [xs], [s], 0
    if c.objective == "ambient+consistency":
        k = max(int(round(c.consistency_fraction * n)), 1)
        yk, snk = y[:k], sn[:k]
        lo = snk * c.consistency_min_ratio
        t = (lo.log() + torch.rand(k, generator=g, device=dev) * (snk.log() - lo.log())).exp()
        with torch.no_grad():
            xt = bare_reverse(D, yk, snk, t, c.consistency_chain_steps, g)
            target = D(xt, t)
            r0, r1 = c.consistency_step_ratio
            u = t * (r0 + (r1 - r0) * torch.rand(k, generator=g, device=dev))
            two = lambda v: torch.cat([v, v])  # noqa: E731
            xu = bare_reverse(D, two(xt), two(t), two(u), c.consistency_substeps, g, two(target))
        xin.append(xu)
        sin.append(u.repeat(2))
    out = D(torch.cat(xin), torch.cat(sin))
    rr = _col(r, y.ndim)
    loss = per(w, (rr * xs + (1 - rr) * out[:n] - y) ** 2).mean()
    if k:
        p1, p2 = out[n:].chunk(2)
        loss = loss + c.consistency_weight * per(bare_lam(u, sd), (target - p1) * (target - p2)).mean()
    return loss


def bare_run(cfg: NetworkConfig, data: TensorDataset, c: LossConfig, t: TrainConfig, steps: int,
             dev: torch.device, init: dict | None = None) -> dict:
    """``steps`` warm-up and ``steps`` timed steps of the bare loop; images/s, step time, peak."""
    torch.manual_seed(0)
    unet = bare_unet(cfg).to(dev)
    if init is not None:
        unet.load_state_dict(init)
    ema = copy.deepcopy(unet).requires_grad_(False)
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    g = torch.Generator(device=dev).manual_seed(0)
    y_all, clean_all = data.images, data.clean
    sn = torch.full((t.batch_size,), SIGMA_N, device=dev)
    amp = dev.type == "cuda" and t.mixed_precision
    reset_peak(dev)

    def step():
        idx = torch.randint(len(y_all), (t.batch_size,), device=dev, generator=g)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = bare_loss(unet, y_all[idx], sn, clean_all[idx], c, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), params, 1 - t.ema_decay)
        return loss

    for _ in range(steps):
        step()
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(loss)
    dt = (time.perf_counter() - t0) / steps
    return {"images_per_sec": t.batch_size / dt, "step_ms": 1e3 * dt, "peak_memory_mb": peak_mb(dev)}


def bare_matches_package(cfg: NetworkConfig, shape, channels: int, protocol: str,
                         dev: torch.device) -> dict:
    """Relative difference of the bare and the package loss on identical weights, data and
    random draws (float32, no autocast): the floor does the same work."""
    torch.manual_seed(1)
    model = EDMDenoiser(cfg).to(dev)
    unet = bare_unet(cfg).to(dev)
    unet.load_state_dict(model.unet.state_dict())
    g = torch.Generator().manual_seed(2)
    x0 = SIGMA_DATA * torch.randn((4, channels, *shape), generator=g)
    y = (x0 + SIGMA_N * torch.randn(x0.shape, generator=g)).to(dev)
    x0 = x0.to(dev)
    sn = torch.full((4,), SIGMA_N, device=dev)
    out = {}
    for obj in OBJECTIVES:
        c = loss_config(protocol, obj)
        a = objective_loss(model, y, sn, c, clean=x0,
                           generator=torch.Generator(device=dev).manual_seed(3)).loss
        b = bare_loss(unet, y, sn, x0, c, torch.Generator(device=dev).manual_seed(3))
        out[obj] = abs(float(a.detach()) - float(b.detach())) / abs(float(a.detach()))
    return out


# ---------------------------------------------------------------------------------------------
# the package's loop
# ---------------------------------------------------------------------------------------------

def package_run(cfg: NetworkConfig, data, c: LossConfig, t: TrainConfig, dev: torch.device) -> dict:
    torch.manual_seed(0)
    model = EDMDenoiser(cfg)
    reset_peak(dev)
    t0 = time.perf_counter()
    res = train(model, data, c, t, device=dev)
    row = res.history[-1]
    return {"images_per_sec": t.batch_size * row["steps_per_sec"],
            "step_ms": 1e3 / row["steps_per_sec"], "peak_memory_mb": peak_mb(dev),
            "data_share": row["data_share"], "wall_s": time.perf_counter() - t0}


def guarded(fn, *a, **k) -> dict:
    try:
        return fn(*a, **k)
    except Exception as e:  # noqa: BLE001 - a failed row is a result (OOM: does not fit)
        if oom(e):
            torch.cuda.empty_cache()
            return {"error": "out of memory"}
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}


def activation_peak_mb(cfg: NetworkConfig, shape, channels: int, batch: int, protocol: str,
                       checkpointing: bool) -> float:
    """CPU: peak MB of tensors created during one ``ambient+consistency`` forward and backward
    (the memory a step needs beyond weights, gradients, optimizer state and EMA)."""
    torch.manual_seed(0)
    model = EDMDenoiser(cfg)
    data = synthetic_set(shape, channels, batch, torch.device("cpu"))
    c = loss_config(protocol, "ambient+consistency", variant=None)
    with speed.gradient_checkpointing(model, checkpointing), speed.TensorMemory() as mem:
        objective_loss(model, data.images, data.sigma_n, c,
                       generator=torch.Generator().manual_seed(0)).loss.backward()
    return mem.peak / 2**20


def training_section(protocol: str, shape, batch: int, steps: int, dev: torch.device,
                     log) -> dict:
    channels = 2 if protocol == KNEE else 1
    cfg = network_config(protocol, len(shape), channels)
    data = synthetic_set(shape, channels, max(4 * batch, 8), dev)
    out = {"image": [channels, *shape], "batch": batch, "parameters": count_parameters(EDMDenoiser(cfg)),
           "bare_vs_package_loss": bare_matches_package(cfg, shape, channels, protocol, dev),
           "package": {}, "bare": {}}
    log(f"  bare vs package loss (relative): {out['bare_vs_package_loss']}")
    for obj in OBJECTIVES:
        c, t = loss_config(protocol, obj), train_config(protocol, batch, steps)
        out["package"][obj] = guarded(package_run, cfg, data, c, t, dev)
        out["bare"][obj] = guarded(bare_run, cfg, data, c, t, steps, dev)
        log(f"  {obj:<20} package {_fmt(out['package'][obj])} | bare {_fmt(out['bare'][obj])}")
    # the protocol's own below-sigma_n term (distill by default), package only
    own = loss_config(protocol, "ambient+consistency", variant=None)
    out["package"]["protocol"] = guarded(package_run, cfg, data, own,
                                         train_config(protocol, batch, steps), dev)
    out["protocol_variant"] = own.consistency_variant
    log(f"  ambient+consistency ({own.consistency_variant}) package {_fmt(out['package']['protocol'])}")
    p, b = out["package"], out["bare"]
    if all("step_ms" in r for r in (p["clean"], b["clean"], p["protocol"])):
        out["clean_vs_bare"] = p["clean"]["step_ms"] / b["clean"]["step_ms"]
        out["consistency_vs_clean"] = p["protocol"]["step_ms"] / p["clean"]["step_ms"]
    if all("step_ms" in r for r in (p["clean"], p["ambient+consistency"])):
        out["pair_vs_clean"] = p["ambient+consistency"]["step_ms"] / p["clean"]["step_ms"]
    return out


OPTIONS = {  # name: (TrainConfig changes, CUDA only)
    "base": ({}, False),
    "fused_ema=false": ({"fused_ema": False}, False),
    "channels_last": ({"channels_last": True}, False),
    "grad_checkpointing": ({"grad_checkpointing": True}, False),
    "mixed_precision=false": ({"mixed_precision": False}, True),
    "compile=default": ({"compile": "default"}, True),
    "compile=reduce-overhead": ({"compile": "reduce-overhead"}, True),
    "channels_last+compile": ({"channels_last": True, "compile": "default"}, True),
}


def options_section(protocol: str, shape, batch: int, steps: int, dev: torch.device, log,
                    compile_on_cpu: bool) -> dict:
    """Each speed option alone on the ``ambient+consistency`` step (base: the package defaults;
    the protocol's own speed keys are reset to the defaults first)."""
    channels = 2 if protocol == KNEE else 1
    cfg = network_config(protocol, len(shape), channels)
    data = synthetic_set(shape, channels, max(4 * batch, 8), dev)
    c = loss_config(protocol, "ambient+consistency", variant=None)
    defaults = {k: getattr(TrainConfig(), k) for k in
                ("channels_last", "compile", "grad_checkpointing", "fused_ema", "mixed_precision")}
    out = {}
    for name, (changes, cuda_only) in OPTIONS.items():
        if (cuda_only and dev.type != "cuda") and not (compile_on_cpu and "compile" in name
                                                        and "reduce" not in name):
            out[name] = {"skipped": "CUDA only" if "compile" not in name else
                         "CPU: inductor compiles for minutes on a shared CPU (--compile-on-cpu)"}
            continue
        t = train_config(protocol, batch, steps, **{**defaults, **changes})
        out[name] = guarded(package_run, cfg, data, c, t, dev)
        log(f"  {name:<24} {_fmt(out[name])}")
    if dev.type == "cpu":
        for ck in (False, True):
            key = "grad_checkpointing" if ck else "base"
            if "error" not in out.get(key, {}):
                out[key]["activation_peak_mb"] = activation_peak_mb(cfg, shape, channels, batch,
                                                                    protocol, ck)
    return out


# ---------------------------------------------------------------------------------------------
# sampling and reconstruction
# ---------------------------------------------------------------------------------------------

def knee_prior(shape, dev):
    from ambient_med.prior import AmbientPrior, PriorMetadata

    torch.manual_seed(0)
    cfg = network_config(KNEE, 2, 2)
    meta = PriorMetadata(network=cfg.to_dict(), data_kind="complex", sigma_n_data=SIGMA_N,
                         sigma_n_model=SIGMA_N, training={"image_shape": list(shape)})
    return AmbientPrior(EDMDenoiser(cfg).eval(), meta).to(dev)


def sampling_section(shape, batch: int, dev: torch.device, steps: int = 32) -> dict:
    prior = knee_prior(shape, dev)
    out = {"image": [2, *shape], "batch": batch, "steps": steps, "sampler": "heun",
           "network_calls": 2 * steps - 1}
    modes = {"fp32": False, "bf16_autocast": True} if dev.type == "cuda" else {"fp32": False}
    for name, amp in modes.items():
        def run():
            g = torch.Generator(device=dev).manual_seed(0)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                return prior.sample(batch, steps=steps, sampler="heun", generator=g, space="model")
        run()  # warm-up (cuDNN autotuning, allocator)
        reset_peak(dev)
        sync(dev)
        t0 = time.perf_counter()
        x = run()
        sync(dev)
        dt = time.perf_counter() - t0
        out[name] = {"seconds_per_slice": dt / batch, "peak_memory_mb": peak_mb(dev),
                     "finite": bool(torch.isfinite(x).all())}
    return out


def equispaced_mask(ny: int, r: int = 8, centre: float = 0.04) -> np.ndarray:
    """fastMRI-style equispaced 1-D mask: every ``r``-th phase line plus ``centre`` of the lines
    around k = 0 fully sampled (acceleration slightly below ``r``)."""
    m = np.zeros(ny, np.float32)
    m[::r] = 1
    c = max(int(round(centre * ny)), 2)
    m[ny // 2 - c // 2: ny // 2 + (c + 1) // 2] = 1
    return m


def recon_section(shape, coils: int, batch: int, dev: torch.device, n_samples: int,
                  steps: int) -> dict:
    from ambient_med.mri.fft import fftc
    from ambient_med.synthetic.phantoms import birdcage_maps, ellipse_phantom

    prior = knee_prior(shape, dev)
    rng = np.random.default_rng(0)
    maps = birdcage_maps(shape[0], coils)
    x = np.stack([ellipse_phantom(shape[0], rng) for _ in range(batch)])
    k = fftc(maps[None] * x[:, None]) + 0.01 * (rng.standard_normal((batch, coils, *shape))
                                                + 1j * rng.standard_normal((batch, coils, *shape)))
    mask = equispaced_mask(shape[1])
    args = dict(maps=maps[None], sigma=0.01, method="dc", n_samples=n_samples)
    prior.reconstruct(k.astype(np.complex64), mask, steps=2, **args)  # warm-up
    reset_peak(dev)
    sync(dev)
    t0 = time.perf_counter()
    out = prior.reconstruct(k.astype(np.complex64), mask, steps=steps,
                            generator=torch.Generator(device=dev).manual_seed(0), **args)
    sync(dev)
    dt = time.perf_counter() - t0
    return {"image": [2, *shape], "coils": coils, "slices": batch,
            "acceleration": float(len(mask) / mask.sum()), "method": "dc",
            "n_samples": n_samples, "steps": steps, "network_calls": out["calls"],
            "seconds_per_slice": dt / batch, "peak_memory_mb": peak_mb(dev)}


# ---------------------------------------------------------------------------------------------
# data: preprocessing into the cache, and waiting for it while training
# ---------------------------------------------------------------------------------------------

def data_section(size: int, coils: int, files: int, slices: int, batch: int, steps: int,
                 prep_workers: int, loader_workers: int | None, dev: torch.device, log) -> dict:
    from ambient_med.synthetic.phantoms import make_phantom_dataset
    from ambient_med.tasks.train import build_model, load_data
    from ambient_med.training.cache import warm_cache
    from ambient_med.training.config import apply_overrides

    out = {"files": files, "slices": files * slices, "image": [size, size], "coils": coils}
    with tempfile.TemporaryDirectory(prefix="ambient_gpu_bench_") as tmp:
        tmp = Path(tmp)
        make_phantom_dataset(tmp / "data", n_files=files, slices=slices, size=size, coils=coils,
                             sigma=0.02)
        proto = load_protocol(KNEE)
        patch = min(proto.data.patch_size[0], size // 2)
        proto = apply_overrides(proto, {"data": {"patch_size": [patch, patch],
                                                 "num_workers": prep_workers}})
        # preprocessing (noise estimate, whitening, coil compression, ESPIRiT maps, combination)
        # of every slice, in prep_workers processes, into an empty cache: what a first run pays
        t0 = time.perf_counter()
        ds, info = load_data([str(tmp / "data")], proto, "auto", cache_dir=tmp / "cache")
        base = ds.data
        for p in (tmp / "cache").glob("*.pt"):
            p.unlink()
        t1 = time.perf_counter()
        warm_cache(base, prep_workers)
        fill = time.perf_counter() - t1
        rate = out["slices"] / fill
        out["preprocessing"] = {"workers": prep_workers, "slices_per_second": rate,
                                "seconds_per_slice_per_worker": prep_workers / rate,
                                "first_build_seconds": t1 - t0,
                                "projected_hours_35000_slices": KNEE_SET_SLICES / rate / 3600}
        log(f"  preprocessing: {rate:.2f} slices/s on {prep_workers} workers -> "
            f"{KNEE_SET_SLICES / rate / 3600:.1f} h for {KNEE_SET_SLICES} slices")
        # training the protocol as shipped (random patches from the cache, its loader workers)
        workers = proto.train.num_workers if loader_workers is None else loader_workers
        workers = min(workers, os.cpu_count() or 1)
        p = replace(proto, loss=replace(proto.loss, consistency_start=0.0),
                    train=replace(proto.train, steps=2 * steps, batch_size=batch, log_every=steps,
                                  lr_warmup=1, checkpoint_every=10**9, num_workers=workers))
        torch.manual_seed(0)
        model, loss_cfg = build_model(p, info)
        res = train(model, ds, loss_cfg, p.train, device=dev)
        row = res.history[-1]
        out["training"] = {"patch": [patch, patch], "batch": batch, "loader_workers": workers,
                           "objective": loss_cfg.objective, "data_share": row["data_share"],
                           "images_per_sec": batch * row["steps_per_sec"],
                           "step_ms": 1e3 / row["steps_per_sec"]}
        log(f"  training from the cache: data share {100 * row['data_share']:.1f}% "
            f"({workers} loader workers)")
    return out


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

def _fmt(r: dict) -> str:
    if "error" in r or "skipped" in r:
        return r.get("error") or r["skipped"]
    mem = f", {r['peak_memory_mb']:.0f} MB" if r.get("peak_memory_mb") else ""
    return f"{r['images_per_sec']:.2f} img/s, {r['step_ms']:.0f} ms{mem}"


def targets(res: dict, full: bool) -> dict:
    """The benchmark's targets; only meaningful for a full-size GPU run."""
    t = {}
    knee, vol = res.get("training", {}).get("knee", {}), res.get("training", {}).get("3d", {})
    if "clean_vs_bare" in knee:
        t["knee clean step within 10% of bare"] = knee["clean_vs_bare"] <= 1.10
        t["knee ambient+consistency <= 1.6x clean"] = knee["consistency_vs_clean"] <= 1.6
    if vol:
        t["3d 128^3 step fits at batch >= 2"] = all(
            "error" not in r for r in vol["package"].values()) and vol["batch"] >= 2
    s = res.get("sampling", {}).get("fp32", {})
    if s:
        t["sampling 320x320, 32 steps < 2 s per slice"] = s["seconds_per_slice"] < 2.0
    d = res.get("data", {})
    if d:
        t["data waiting < 5% of step time"] = d["training"]["data_share"] < 0.05
        t["35,000-slice preprocessing < 1 h"] = d["preprocessing"]["projected_hours_35000_slices"] < 1
    if not full:
        t = {k: None for k in t}  # reduced sizes: no verdict
    return t


def markdown(res: dict) -> str:
    dev = res["device"]
    head = (f"# {res['label']}\n\n"
            f"Device: {dev.get('gpu', dev['cpu'])} ({dev['device']}), torch {dev['torch']}, "
            f"MONAI {dev['monai']}, {dev['torch_threads']} torch threads, "
            f"load average {dev['load_average_1min']:.1f} at the start. "
            f"Command: `{res['command']}`.\n")
    lines = [head]
    if dev["device"] == "cpu":
        lines.append(f"Each time is {res['timed_steps']} step(s) after as many warm-up steps on a "
                     "shared CPU: identical runs differ by 20% or more here, so these figures show "
                     "that every path runs and how the pieces compare, not speeds to quote. Peak "
                     "memory on a CPU is the peak of tensors created during one step "
                     "(`speed.TensorMemory`).\n")
    for key, tr in res.get("training", {}).items():
        lines += [f"\n## Training, {key}: {tr['image']} images, batch {tr['batch']}, "
                  f"{tr['parameters'] / 1e6:.1f} M parameters\n",
                  "Bare vs package loss on identical draws (relative difference): "
                  + ", ".join(f"{k} {v:.1e}" for k, v in tr["bare_vs_package_loss"].items()) + "\n",
                  "| objective | package img/s | package step ms | bare img/s | bare step ms | "
                  "package / bare | peak MB (package / bare) |",
                  "|---|---|---|---|---|---|---|"]
        for o in OBJECTIVES:
            p, b = tr["package"][o], tr["bare"][o]
            if "step_ms" in p and "step_ms" in b:
                mem = (f"{p['peak_memory_mb']:.0f} / {b['peak_memory_mb']:.0f}"
                       if p.get("peak_memory_mb") else "n/a (CPU)")
                lines.append(f"| {o} | {p['images_per_sec']:.2f} | {p['step_ms']:.0f} | "
                             f"{b['images_per_sec']:.2f} | {b['step_ms']:.0f} | "
                             f"{p['step_ms'] / b['step_ms']:.2f} | {mem} |")
            else:
                lines.append(f"| {o} | {_fmt(p)} | | {_fmt(b)} | | | |")
        if "consistency_vs_clean" in tr:
            lines.append(f"\n`ambient+consistency` ({tr['protocol_variant']}, the protocol's) / "
                         f"`clean` step: {tr['consistency_vs_clean']:.2f}; with the pair term: "
                         f"{tr.get('pair_vs_clean', float('nan')):.2f}; "
                         f"`clean` package / bare: {tr['clean_vs_bare']:.2f}.")
    for key, opts in res.get("options", {}).items():
        lines += [f"\n## Speed options, {key} (`ambient+consistency` step, each option alone)\n",
                  "| option | img/s | step ms | vs base | peak MB |", "|---|---|---|---|---|"]
        base = opts.get("base", {}).get("step_ms")
        for name, r in opts.items():
            if "step_ms" not in r:
                lines.append(f"| {name} | {_fmt(r)} | | | |")
                continue
            mem = r.get("peak_memory_mb") or r.get("activation_peak_mb")
            mem = f"{mem:.0f}" + ("" if r.get("peak_memory_mb") else " (tensors of one step, CPU)") \
                if mem else ""
            lines.append(f"| {name} | {r['images_per_sec']:.2f} | {r['step_ms']:.0f} | "
                         f"{base / r['step_ms']:.2f}x | {mem} |")
    m = res.get("memory_projection")
    if m:
        lines += ["\n## 3D memory at 128^3, batch 2 (projected from the CPU run)\n",
                  f"{m['note']}\n", "| | GB |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in m.items() if k != "note"]
    s = res.get("sampling")
    if s:
        lines += [f"\n## Sampling: {s['image']} slices, {s['steps']} Heun steps "
                  f"({s['network_calls']} network calls), batch {s['batch']}\n",
                  "| precision | s per slice | peak MB |", "|---|---|---|"]
        for k in ("fp32", "bf16_autocast"):
            if k in s:
                pm = s[k]["peak_memory_mb"]
                lines.append(f"| {k} | {s[k]['seconds_per_slice']:.3f} | "
                             f"{f'{pm:.0f}' if pm else 'n/a (CPU)'} |")
    r = res.get("recon")
    if r:
        lines += [f"\n## Reconstruction: data-consistency sampler, R = {r['acceleration']:.1f}, "
                  f"{r['coils']} coils, {r['n_samples']} samples x {r['steps']} steps "
                  f"({r['network_calls']} network calls for {r['slices']} slices)\n",
                  f"{r['seconds_per_slice']:.2f} s per slice."]
    d = res.get("data")
    if d:
        p, t = d["preprocessing"], d["training"]
        lines += [f"\n## Data: {d['slices']} fastMRI-format phantom slices, {d['coils']} coils, "
                  f"{d['image'][0]}x{d['image'][1]}\n",
                  f"Preprocessing into the cache: {p['slices_per_second']:.2f} slices/s on "
                  f"{p['workers']} workers ({p['seconds_per_slice_per_worker']:.2f} s per slice per "
                  f"worker); {KNEE_SET_SLICES} slices "
                  + (f"projected at {p['projected_hours_35000_slices']:.2f} h.\n" if not res["quick"]
                     else f"of this reduced size would take {p['projected_hours_35000_slices']:.2f} h "
                          "(not a projection for knee-size slices).\n"),
                  f"Training the knee protocol from the cache ({t['patch'][0]}x{t['patch'][1]} "
                  f"patches, batch {t['batch']}, {t['loader_workers']} loader workers): waiting for "
                  f"data {100 * t['data_share']:.1f}% of step time ({t['step_ms']:.0f} ms steps)."]
    tg = res.get("targets")
    if tg:
        lines += ["\n## Targets\n", "| target | met |", "|---|---|"]
        lines += [f"| {k} | {'n/a (reduced sizes)' if v is None else ('yes' if v else 'NO')} |"
                  for k, v in tg.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--quick", action="store_true",
                    help="reduced sizes (64x64, 32^3) and few steps: a CPU smoke run")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (as many warm-up)")
    ap.add_argument("--knee-batch", type=int, default=None)
    ap.add_argument("--vol-batch", type=int, default=None)
    ap.add_argument("--sections", default="training,options,sampling,recon,data",
                    help="comma-separated subset of training,options,sampling,recon,data")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--prep-workers", type=int, default=None,
                    help="processes that fill the preprocessing cache (default: all cores)")
    ap.add_argument("--compile-on-cpu", action="store_true",
                    help="also time torch.compile on a CPU (minutes of compiling)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default: results/gpu.json on CUDA, gpu_cpu_smoke.json on CPU)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other sections of an existing result file at --out (same "
                         "device kind and size): run the sections one command at a time")
    ap.add_argument("--render", type=Path, default=None,
                    help="only write the Markdown table of an existing JSON result")
    args = ap.parse_args()

    if args.render is not None:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    full = not args.quick
    sizes = SIZES["full" if full else "quick"]
    steps = args.steps or (20 if full else 2)
    sections = set(args.sections.split(","))
    (kshape, kbatch), (vshape, vbatch) = sizes[KNEE], sizes[VOL]
    kbatch, vbatch = args.knee_batch or kbatch, args.vol_batch or vbatch
    out = args.out or RESULTS / ("gpu.json" if dev.type == "cuda" and full else
                                 "gpu_cpu_smoke.json" if dev.type == "cpu" else "gpu_quick.json")
    label = ("GPU figures" if dev.type == "cuda" and full else
             "CPU smoke figures (reduced sizes, few steps; NOT GPU figures)" if dev.type == "cpu"
             else "GPU smoke figures (reduced sizes; not the target sizes)")
    command = "python benchmarks/gpu.py " + " ".join(sys.argv[1:])
    res = {"label": label, "command": command,
           "device": device_info(dev), "quick": args.quick, "timed_steps": steps,
           "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.merge and out.is_file():
        old = json.loads(out.read_text())
        if old.get("quick") == args.quick and old["device"]["device"] == dev.type:
            old.update({k: v for k, v in res.items() if k not in ("command",)})
            old["command"] = (old.get("command", "") + "; " + command).lstrip("; ")
            res = old
    log = lambda s: print(s, flush=True)  # noqa: E731
    log(f"{label} on {res['device'].get('gpu', res['device']['cpu'])}")
    t_start = time.perf_counter()

    if "training" in sections:
        res["training"] = {}
        for key, proto, shape, batch in (("knee", KNEE, kshape, kbatch), ("3d", VOL, vshape, vbatch)):
            log(f"training {key} {shape} batch {batch}")
            res["training"][key] = training_section(proto, shape, batch, steps, dev, log)
    if "options" in sections:
        res["options"] = {}
        for key, proto, shape, batch in (("knee", KNEE, kshape, kbatch), ("3d", VOL, vshape, vbatch)):
            log(f"speed options {key}")
            res["options"][key] = options_section(proto, shape, batch, steps, dev, log,
                                                  args.compile_on_cpu)
        o = res["options"]["3d"]
        if dev.type == "cpu" and "activation_peak_mb" in o.get("base", {}):
            scale = math.prod((128, 128, 128)) / math.prod(vshape) * 2 / vbatch
            cfg = network_config(VOL, 3, 1)
            state = 4 * count_parameters(EDMDenoiser(cfg)) * 4 / 2**30  # weights, grads, 2 Adam moments
            ema = count_parameters(EDMDenoiser(cfg)) * 4 / 2**30
            res["memory_projection"] = {
                "note": ("fp32 tensors of one ambient+consistency step at 32^3, scaled by the voxel "
                         "count (x64) and to batch 2, plus weights, gradients, Adam moments and EMA; "
                         "bf16 autocast on a GPU roughly halves the activations; the GPU run "
                         "measures it (torch.cuda.max_memory_allocated)"),
                "without checkpointing": o["base"]["activation_peak_mb"] * scale / 1024 + state + ema,
                "with grad_checkpointing": o["grad_checkpointing"]["activation_peak_mb"] * scale / 1024
                + state + ema}
    if "sampling" in sections:
        log("sampling")
        res["sampling"] = guarded(sampling_section, kshape, 8 if full else 1, dev)
        log(f"  {res['sampling']}")
    if "recon" in sections:
        log("recon")
        res["recon"] = guarded(recon_section, kshape, 15 if full else 4, 2 if full else 1, dev,
                               8 if full else 2, 128 if full else 4)
        log(f"  {res['recon']}")
    if "data" in sections:
        log("data")
        prep = args.prep_workers or (os.cpu_count() or 1)
        res["data"] = guarded(data_section, 320 if full else 64, 15 if full else 4,
                              2 if full else 2, 16 if full else 4, 32 if full else 2, steps,
                              prep, None, dev, log)
    res["targets"] = targets(res, full and dev.type == "cuda")
    res["wall_seconds"] = res.get("wall_seconds", 0.0) * bool(args.merge) + time.perf_counter() - t_start
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=float) + "\n")
    md = out.with_suffix(".md")
    md.write_text(markdown(res))
    log(f"wrote {out} and {md} ({res['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
