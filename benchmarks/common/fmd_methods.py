"""The learned methods of the FMD benchmarks (``fmd.py``, ``fmd_curve.py``) beyond the package's
objectives: Noise2Void and the supervised oracle (their losses and training loop), and the
tiled posterior mean every method denoises a capture with.

Noise2Void (Krull et al., CVPR 2019) is written here because CAREamics would replace the
package's torch: blind-spot masking of one random pixel per ``box``^2 cell of every patch, each
replaced by a random other pixel of its 5x5 neighbourhood, MSE on the masked pixels only; the
same U-Net without the diffusion preconditioning (``Plain``).
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from ambient_med.diffusion.losses import LossConfig
from ambient_med.diffusion.networks import EDMDenoiser, count_parameters
from ambient_med.diffusion.rotations import ensemble_mean
from ambient_med.diffusion.tiling import tiled_apply
from ambient_med.noise import TOPUP_DRAWS, PoissonGaussian
from ambient_med.prior import AmbientPrior
from ambient_med.training.ema import ema_update
from ambient_med.training.loop import ResumableSampler, TrainConfig, _batches, _lr, train

PRIORS = ("naive", "ambient+consistency", "clean")
LEARNED = ("n2v", "naive", "ambient+consistency", "clean", "supervised")
LABEL = {"noisy": "noisy input", "bm3d": "BM3D (GAT, sigma 1, unbiased inverse)",
         "n2v": "Noise2Void", "naive": "naive prior, posterior mean",
         "ambient+consistency": "ambient+consistency, posterior mean",
         "clean": "oracle: clean prior, posterior mean", "supervised": "oracle: supervised denoiser"}
SHORT = {"noisy": "noisy", "bm3d": "BM3D", "n2v": "Noise2Void", "naive": "naive prior",
         "ambient+consistency": "ambient+consistency", "clean": "oracle: clean prior",
         "supervised": "oracle: supervised"}


class Plain(torch.nn.Module):
    """The same U-Net as a plain map ``z -> z`` (model space), for Noise2Void: input and output
    scaled by ``sigma_data``, a fixed timestep embedding, no skip path (the EDM skip path would
    hand the masked pixel's replacement to the output)."""

    def __init__(self, net: EDMDenoiser):
        super().__init__()
        self.net = net

    def forward(self, x):
        sd = self.net.sigma_data
        t = torch.full((x.shape[0],), 500.0, device=x.device)
        return self.net.unet(x / sd, t) * sd


def n2v_mask(x: torch.Tensor, box: int, g: torch.Generator):
    """One pixel per ``box x box`` cell (stratified, as N2V) replaced by a random *other* pixel
    of its 5x5 neighbourhood (clamped at the border). Returns ``(masked input, mask)``."""
    n, c, h, w = x.shape
    gy, gx = torch.meshgrid(torch.arange(0, h, box), torch.arange(0, w, box), indexing="ij")
    k = gy.numel()
    ys = (gy.reshape(1, -1) + torch.randint(0, box, (n, k), generator=g)).clamp_max(h - 1)
    xs = (gx.reshape(1, -1) + torch.randint(0, box, (n, k), generator=g)).clamp_max(w - 1)
    off = torch.tensor([(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if (dy, dx) != (0, 0)])
    o = off[torch.randint(0, len(off), (n, k), generator=g)]
    ry, rx = (ys + o[..., 0]).clamp(0, h - 1), (xs + o[..., 1]).clamp(0, w - 1)
    b = torch.arange(n).reshape(-1, 1).expand(n, k)
    xm = x.clone()
    xm[b, :, ys, xs] = x[b, :, ry, rx]
    mask = torch.zeros(n, 1, h, w, dtype=torch.bool)
    mask[b, 0, ys, xs] = True
    return xm, mask


def n2v_loss(box):
    """Noise2Void's loss: MSE on the masked pixels of ``box`` x ``box`` cells."""
    def fn(model, batch, g):
        x = batch["image"]
        xm, mask = n2v_mask(x, box, g)
        return (model(xm) - x)[mask].square().mean()
    return fn


def supervised_loss(sigma_n):
    """The supervised oracle's loss: MSE of ``D(y, sigma_n)`` against the co-located clean patch."""
    def fn(model, batch, g):
        y, c = batch["image"], batch["clean"]
        return (model(y, torch.full((y.shape[0],), sigma_n)) - c).square().mean()
    return fn


def prior_loss(base_loss: LossConfig, method: str) -> LossConfig:
    """The protocol's loss for a prior's objective (the SURE term only for the ambient ones)."""
    return LossConfig(**{**base_loss.__dict__, "objective": method,
                         **({} if method.startswith("ambient") else {"sure_fraction": 0.0})})


def custom_optimiser(model, cfg: TrainConfig):
    """EMA copy, AdamW and the mask generator of ``train_custom``'s loop."""
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return ema, opt, torch.Generator().manual_seed(cfg.seed * 7919)


def custom_batches(dataset, cfg: TrainConfig, start: int = 0):
    """The keyed patch draws of the package's loop, from draw ``start`` on."""
    return iter(_batches(dataset, ResumableSampler(len(dataset), cfg.seed, start=start, keyed=True), cfg,
                         torch.device("cpu")))


def train_custom(name, model, dataset, cfg: TrainConfig, loss_fn, log):
    """The loop of :func:`ambient_med.training.loop.train` (AdamW, warm-up, clipping, EMA, keyed patch
    draws) with a loss the objectives do not offer (Noise2Void, supervised)."""
    ema, opt, g = custom_optimiser(model, cfg)
    it = custom_batches(dataset, cfg)
    t0, acc, n = time.perf_counter(), 0.0, 0
    for step in range(cfg.steps):
        loss = custom_step(model, ema, opt, next(it), step, cfg, loss_fn, g)
        acc, n = acc + loss, n + 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            log(f"  {name} step {step + 1}/{cfg.steps} loss {acc / n:.5f} "
                f"({time.perf_counter() - t0:.0f} s)")
            acc, n = 0.0, 0
    return ema


def custom_step(model, ema, opt, batch, step: int, cfg: TrainConfig, loss_fn, g) -> float:
    """One step of ``train_custom``'s loop: learning rate of ``step``, loss, clipped AdamW, EMA."""
    for pg in opt.param_groups:
        pg["lr"] = _lr(cfg, step)
    loss = loss_fn(model, batch, g)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    ema_update(ema, model, min(cfg.ema_decay, (2 + step) / (11 + step)))
    return float(loss.detach())


def train_methods(args, setup, log) -> tuple[dict, dict]:
    """Every learned method on the same data, network, steps and seed (or loaded with --reuse)."""
    nets, train_s = {}, {}
    for method in args.methods:
        path = args.work_dir / f"{method.replace('+', '_')}.safetensors"
        torch.manual_seed(args.seed)
        fresh = EDMDenoiser(setup["net_cfg"])
        if args.reuse and path.exists():
            nets[method] = AmbientPrior.load(path).model
            log(f"loaded {method} from {path}")
            continue
        t = time.perf_counter()
        if method in PRIORS:
            data = setup["paired"] if method == "clean" else setup["ds"]
            r = train(fresh, data, prior_loss(setup["base_loss"], method), setup["tcfg"], device=torch.device(args.device),
                      callback=lambda s, row, m=method: log(
                          f"  {m} step {s}/{args.steps} " + " ".join(
                              f"{k} {row[k]:.4g}" for k in ("loss", "ambient", "sure", "consistency", "dsm", "steps_per_sec")
                              if k in row)))
            model = r.model
        elif method == "n2v":
            model = train_custom(method, Plain(fresh), setup["ds"], setup["tcfg"], n2v_loss(args.n2v_box), log).net
        else:
            model = train_custom(method, fresh, setup["paired"], setup["tcfg"], supervised_loss(setup["sn"]), log)
        train_s[method] = time.perf_counter() - t
        AmbientPrior(model, setup["meta"](method)).save(path, overwrite=True)
        nets[method] = model.eval()
        log(f"trained {method}: {train_s[method]:.0f} s ({count_parameters(model)} parameters) -> {path}")
    return nets, train_s


# ----------------------------------------------------------------------------------- inference
@torch.no_grad()
def tiled(fn, zm: torch.Tensor, patch: int) -> torch.Tensor:
    """``fn`` over a whole capture in tiles of the training patch, overlapping by a quarter."""
    return tiled_apply(fn, zm, patch, patch // 4)


def denoiser_fn(method: str, net, sigma: float):
    """The map ``z -> D`` of a trained network: ``D(z, sigma)``, or the plain map for Noise2Void."""
    if method == "n2v":
        return Plain(net).eval()
    return lambda t: net(t, torch.full((t.shape[0],), sigma))


def posterior_mean(fn, y: np.ndarray, model: PoissonGaussian, scale: float, patch: int,
                   rotations: bool = False) -> np.ndarray:
    """A capture denoised by ``fn`` (tiled) in the stabilised domain, back in data units by the
    unbiased inverse. An equalising model tops the input up as ``denoise`` does: the mean of
    ``TOPUP_DRAWS`` draws of the top-up noise; with ``rotations``, draw k in quarter turn k, as
    ``denoise`` does for a rotation-invariant prior (``ambient_med.diffusion.rotations``)."""
    draws = TOPUP_DRAWS if model.equalise else 1
    zs = [torch.from_numpy(model.stabilise_observation(y, seed=k) / scale).float()[None, None]
          for k in range(draws)]
    d = ensemble_mean(lambda t: tiled(fn, t, patch).double(), zs, rotations)[0, 0].numpy()
    return model.invert_mean(d * scale)
