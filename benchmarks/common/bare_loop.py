"""The bare PyTorch floor of the speed benchmark (``gpu.py``): the same loss maths as the
package's objectives with the same MONAI network and no package code (AdamW, gradient clipping
and a multi-tensor EMA, as the package), and the check that it computes the package's loss."""

from __future__ import annotations

import copy
import math
import time

import torch

from ambient_med.diffusion.losses import LossConfig
from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig
from ambient_med.diffusion.objective import objective_loss
from ambient_med.training.loop import TensorDataset, TrainConfig

from .gpu_setup import OBJECTIVES, SIGMA_DATA, SIGMA_N, loss_config
from .timing import peak_mb, reset_peak, sync


def bare_unet(cfg: NetworkConfig) -> torch.nn.Module:
    """The package's MONAI U-Net, built directly."""
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(spatial_dims=cfg.spatial_dims, in_channels=cfg.channels,
                              out_channels=cfg.channels, num_res_blocks=cfg.num_res_blocks,
                              channels=cfg.features, attention_levels=cfg.attention_levels,
                              norm_num_groups=cfg.norm_num_groups,
                              num_head_channels=cfg.num_head_channels)


def _col(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``t`` as a column broadcasting over a batch of ``ndim``-dimensional images."""
    return t.reshape(-1, *([1] * (ndim - 1)))


def bare_D(unet, x, s, sd):
    """EDM preconditioning: ``c_skip x + c_out F(c_in x, 250 (ln(s)/4 + 2))``."""
    s = s.float().expand(x.shape[0]) if s.ndim == 0 else s.float()
    s2 = s * s + sd * sd
    f = unet(_col(1 / s2.sqrt(), x.ndim) * x, 250.0 * (s.log() / 4 + 2.0))
    return _col(sd * sd / s2, x.ndim) * x + _col(s * sd / s2.sqrt(), x.ndim) * f.to(x.dtype)


def bare_lam(s, sd):
    """EDM's loss weight ``(s^2 + sd^2) / (s sd)^2``."""
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
    """The objective's loss written out by hand (``clean``, ``ambient``,
    ``ambient+consistency`` with the pair term)."""
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
