"""FMD confocal benchmark: denoise real fluorescence captures with a prior learned from
noisy captures alone, against BM3D, Noise2Void and a supervised oracle, in one run and one table.

Data: ``../shared/data/microscopy/fmd_confocal_bpae_b`` (FMD, Zhang et al. CVPR 2019,
Confocal_BPAE_B): 50 raw 512x512 uint8 captures of each of 5 fields of view and their 50-capture
averages. Every learned method trains on random patches of the *single raw captures* of fields
1-4 (the oracle also sees their averages, nothing else does); all are scored on raw captures of
field 5 against its 50-capture average, which no method ever sees.

Noise model (docs/design.md section 6). ``y = a Poisson(x/a) + N(mu, b)`` with ``(a, b, mu)`` fitted by
:meth:`ambient_med.noise.PoissonGaussian.estimate` from the noisy data alone (per training
folder while building the training set, per test capture at test time, as ``denoise --sigma
auto`` does); everything works in the generalised-Anscombe domain ``z = f(y)`` (noise ~N(0, 1))
and goes back to data units by the exact unbiased inverse ``invert_mean``; posterior samples by
the algebraic inverse ``invert_sample``. BM3D (the ``bm3d`` package) gets the same ``z`` and
``sigma = 1`` and the same unbiased inverse.

Methods (same U-Net, ``--features``, same patches, batch, steps, optimiser and EMA for all
learned rows; ``ambient_med.training.loop.train`` for the three diffusion objectives):

* ``noisy``: the raw capture;
* ``bm3d``: BM3D on ``z`` (profile ``np``, both stages), unbiased inverse;
* ``n2v``: Noise2Void (Krull et al., CVPR 2019), written here because CAREamics would replace
  the package's torch: blind-spot masking of one random pixel per ``--n2v-box``^2 cell of every
  patch, each replaced by a random other pixel of its 5x5 neighbourhood, MSE on the masked
  pixels only; the same U-Net without the diffusion preconditioning (a plain ``z -> z`` map:
  the EDM skip path would hand the masked pixel's replacement to the output), trained on ``z``;
* ``naive``: the ``naive`` prior (score matching on the noisy captures as if clean), posterior
  mean ``D(z, 1)``;
* ``ambient+consistency``: the package's objective, posterior mean ``D(z, 1)``;
* ``oracle (clean prior)``: the ``clean`` objective on the averages of fields 1-4 mapped to
  ``z`` by ``E[f(y) | x]`` (so that ``invert_mean`` is its exact inverse), posterior mean
  ``D(z, 1)``: the same engine with clean data (docs/design.md section 4);
* ``oracle (supervised)``: the same network at ``sigma = 1`` trained by MSE from raw-capture
  patches to the co-located average patches (in ``z``): the best this network learns with clean
  targets and the real, spatially correlated noise at this budget.

Posterior means are computed by :func:`ambient_med.diffusion.tiling.tiled_apply` over the 512x512 captures
(tile = training patch, overlap a quarter). Uncertainty (``ambient+consistency``):
``--samples`` posterior samples by the package's stochastic posterior sampler on
``--unc-crops`` crops of ``--unc-size`` pixels, whole crops at a time (a convolutional network
without attention; per-tile sampling would blend independent samples in the tile overlaps and
shrink their variance there); coverage of ``mean +- 2 std`` and the Pearson correlation of std
with the absolute error over pixels, against the average and, second, with the average's own
noise (variance over the 50 captures / 50, plus rounding) added to the interval.

    PYTHONPATH=. python benchmarks/fmd.py --quick           # CPU smoke run (minutes), /tmp
    PYTHONPATH=. python benchmarks/fmd.py --threads 1       # the real run (see fmd.md)

Writes ``benchmarks/results/fmd.json`` (``cells``: one per table cell, keys method, metric,
value), ``fmd.md`` and ``fmd.png``. Trained networks are kept in ``--work-dir`` (priors as
``.safetensors``); ``--reuse`` evaluates those instead of training again.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from common.overrides import loss_overrides

from ambient_med.diffusion.losses import LossConfig
from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig, count_parameters
from ambient_med.diffusion.sampling import POSTERIOR_STEPS, denoise_posterior
from ambient_med.diffusion.tiling import tiled_apply
from ambient_med.io.discover import open_source
from ambient_med.noise import PoissonGaussian, from_dict
from ambient_med.prior import AmbientPrior, PriorMetadata
from ambient_med.training.config import load_protocol
from ambient_med.training.datasets import build_training_set
from ambient_med.training.ema import ema_update
from ambient_med.training.loop import ResumableSampler, TrainConfig, _batches, _lr, train
from ambient_med.training.transforms import RandPatchd, patch_seed

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "microscopy" / "fmd_confocal_bpae_b"
PRIORS = ("naive", "ambient+consistency", "clean")
LEARNED = ("n2v", "naive", "ambient+consistency", "clean", "supervised")
LABEL = {"noisy": "noisy input", "bm3d": "BM3D (GAT, sigma 1, unbiased inverse)",
         "n2v": "Noise2Void", "naive": "naive prior, posterior mean",
         "ambient+consistency": "ambient+consistency, posterior mean",
         "clean": "oracle: clean prior, posterior mean", "supervised": "oracle: supervised denoiser"}
SHORT = {"noisy": "noisy", "bm3d": "BM3D", "n2v": "Noise2Void", "naive": "naive prior",
         "ambient+consistency": "ambient+consistency", "clean": "oracle: clean prior",
         "supervised": "oracle: supervised"}
DATA_RANGE = 255.0   # 8-bit captures: PSNR and SSIM over the full range of the format


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--train-fields", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--test-field", type=int, default=5)
    p.add_argument("--test-captures", type=int, nargs="+", default=[0, 24, 49],
                   help="indices (sorted file order) of the field's raw captures to score")
    p.add_argument("--methods", nargs="+", default=list(LEARNED), choices=LEARNED)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--features", type=int, nargs="+", default=[16, 32, 32])
    p.add_argument("--n2v-box", type=int, default=6, help="one masked pixel per box x box cell")
    p.add_argument("--samples", type=int, default=8, help="posterior samples for the std map")
    p.add_argument("--posterior-steps", type=int, default=POSTERIOR_STEPS)
    p.add_argument("--unc-crops", type=int, default=3)
    p.add_argument("--unc-size", type=int, default=128)
    p.add_argument("--no-ablations", action="store_true",
                   help="skip the noise-parameter ablations (BM3D with the 50-capture gain fit; "
                        "the ambient posterior mean at sigma 0.9 and 1.1)")
    p.add_argument("--loss", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override the microscopy-2d protocol's loss settings for the priors "
                        "(e.g. sure_fraction=0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/ambient_med_fmd"))
    p.add_argument("--reuse", action="store_true", help="load trained networks from --work-dir")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (writes to /tmp unless --out)")
    p.add_argument("--diagnose", action="store_true",
                   help="after a run: with the networks in --work-dir, on the first test capture, the "
                        "ambient posterior mean D(z, c) for c around 1, the error of each learned method "
                        "by reference intensity, and the posterior-sample average on the first "
                        "uncertainty crop; writes fmd_diagnostics.json")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    if a.quick:
        a.steps, a.batch_size, a.patch, a.warmup = 6, 2, 32, 2
        a.test_captures, a.samples, a.posterior_steps = [0], 2, 4
        a.unc_crops, a.unc_size, a.n2v_box = 1, 32, 4
        a.work_dir = a.work_dir.with_name(a.work_dir.name + "_quick")
    if a.out is None:
        a.out = Path("/tmp/ambient_med_fmd_quick_results") if a.quick else RESULTS
    return a


# ----------------------------------------------------------------------------------- data
def read_folder(folder: Path) -> np.ndarray:
    """All frames of a folder, ``(N, H, W)`` float64, through the package's frame reader."""
    src = open_source(folder, 2)
    return np.stack([src.read(i)[0] for i in range(len(src))]).astype(np.float64)


def expected_z(model: PoissonGaussian, x: np.ndarray) -> np.ndarray:
    """``E[f(y) | x]`` per pixel: the ``z`` whose unbiased inverse is ``x`` (on unique values)."""
    lam = np.maximum(x - model.mu, 0.0) / model.a
    u, inv = np.unique(lam, return_inverse=True)
    return model.expected_stabilised(u)[inv].reshape(x.shape)


def crop_for_quick(x, n=128):
    return x[..., :n, :n]


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


# ----------------------------------------------------------------------------------- training
class Plain(torch.nn.Module):
    """The same U-Net as a plain map ``z -> z`` (model space), for Noise2Void: input and output
    scaled by ``sigma_data``, a fixed timestep embedding, no skip path."""

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


def train_custom(name, model, dataset, cfg: TrainConfig, loss_fn, log):
    """The loop of :func:`ambient_med.training.loop.train` (AdamW, warm-up, clipping, EMA, keyed patch
    draws) with a loss the objectives do not offer (Noise2Void, supervised)."""
    import copy

    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed * 7919)
    it = iter(_batches(dataset, ResumableSampler(len(dataset), cfg.seed, keyed=True), cfg, torch.device("cpu")))
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


def n2v_loss(box):
    def fn(model, batch, g):
        x = batch["image"]
        xm, mask = n2v_mask(x, box, g)
        return (model(xm) - x)[mask].square().mean()
    return fn


def supervised_loss(sigma_n):
    def fn(model, batch, g):
        y, c = batch["image"], batch["clean"]
        return (model(y, torch.full((y.shape[0],), sigma_n)) - c).square().mean()
    return fn


# ----------------------------------------------------------------------------------- inference
@torch.no_grad()
def tiled(fn, zm: torch.Tensor, patch: int) -> torch.Tensor:
    return tiled_apply(fn, zm, patch, patch // 4)


def psnr(ref, x):
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(ref, x, data_range=DATA_RANGE))


def ssim(ref, x):
    from skimage.metrics import structural_similarity

    return float(structural_similarity(ref, x, data_range=DATA_RANGE))


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


def reference_fit(stack: np.ndarray) -> PoissonGaussian:
    """Gain and offset from the per-pixel variance over the repeated captures against their
    mean (the 15%-higher gain that spatially correlated noise hides from the single-image fit);
    used only in an ablation, never by a method."""
    m, v = stack.mean(0).ravel(), stack.var(0, ddof=1).ravel()
    ok = (m > m.min() + 2) & (m < 250)
    a, b_eff = np.polyfit(m[ok], v[ok], 1)
    return PoissonGaussian(a, 0.0, -b_eff / a) if b_eff < 0 else PoissonGaussian(a, b_eff, 0.0)


# ----------------------------------------------------------------------------------- main
def training_setup(args, log) -> dict:
    """The training set (the package's pipeline on the raw captures of the training fields), the
    clean targets of the oracles, the network, train and loss settings shared by every method."""
    times = {}
    # ---- training set: the package's pipeline on the raw captures of the training fields
    folders = [args.data / "raw" / str(f) for f in args.train_fields]
    t = time.perf_counter()
    ds, info = build_training_set(folders, sigma_n="auto", kind="intensity", spatial_dims=2,
                                  patch_size=(args.patch, args.patch), noise_model="poisson-gaussian")
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


def main():
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.diagnose:
        return diagnose(args)
    t_start = time.perf_counter()
    log = lambda s: print(s, flush=True)  # noqa: E731
    args.work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    times = {}

    setup = training_setup(args, log)
    times.update(setup.pop("times"))
    ds, info, paired, net_cfg, tcfg, base_loss, meta, scale, sn, folders = (setup[k] for k in (
        "ds", "info", "paired", "net_cfg", "tcfg", "base_loss", "meta", "scale", "sn", "folders"))

    nets, train_s = {}, {}
    for method in args.methods:
        path = args.work_dir / f"{method.replace('+', '_')}.safetensors"
        torch.manual_seed(args.seed)
        fresh = EDMDenoiser(net_cfg)
        if args.reuse and path.exists():
            nets[method] = AmbientPrior.load(path).model
            log(f"loaded {method} from {path}")
            continue
        t = time.perf_counter()
        if method in PRIORS:
            data = paired if method == "clean" else ds
            cfg = LossConfig(**{**base_loss.__dict__, "objective": method,
                                **({} if method.startswith("ambient") else {"sure_fraction": 0.0})})
            r = train(fresh, data, cfg, tcfg, device=torch.device(args.device),
                      callback=lambda s, row, m=method: log(
                          f"  {m} step {s}/{args.steps} " + " ".join(
                              f"{k} {row[k]:.4g}" for k in ("loss", "ambient", "sure", "consistency", "dsm", "steps_per_sec")
                              if k in row)))
            model = r.model
        elif method == "n2v":
            model = train_custom(method, Plain(fresh), ds, tcfg, n2v_loss(args.n2v_box), log).net
        else:
            model = train_custom(method, fresh, paired, tcfg, supervised_loss(sn), log)
        train_s[method] = time.perf_counter() - t
        AmbientPrior(model, meta(method)).save(path, overwrite=True)
        nets[method] = model.eval()
        log(f"trained {method}: {train_s[method]:.0f} s ({count_parameters(model)} parameters) -> {path}")
    times["train_s"] = train_s

    # ---- test captures of the held-out field
    import bm3d

    t_eval = time.perf_counter()
    stack = read_folder(args.data / "raw" / str(args.test_field))
    ref = read_folder(args.data / "gt" / str(args.test_field))[0]
    ref_var = stack.var(0, ddof=1) / stack.shape[0] + 1.0 / 12     # the average's own noise
    caps = [stack[i] for i in args.test_captures]
    if args.quick:
        caps, ref, ref_var, stack = ([crop_for_quick(c) for c in caps], crop_for_quick(ref),
                                     crop_for_quick(ref_var), crop_for_quick(stack))
    models = [PoissonGaussian.estimate(c) for c in caps]
    log(f"test field {args.test_field}: captures {args.test_captures}; fits {[repr(m) for m in models]}")

    def fwd(method):
        net = nets[method]
        if method == "n2v":
            plain = Plain(net).eval()
            return lambda t: plain(t)
        return lambda t: net(t, torch.full((t.shape[0],), sn))

    outputs = {m: [] for m in ["noisy", "bm3d", *args.methods]}
    bm3d_s = 0.0
    for y, model in zip(caps, models):
        z = model.stabilise(y)
        zm = torch.from_numpy(z / scale).float()[None, None]
        outputs["noisy"].append(y)
        t = time.perf_counter()
        outputs["bm3d"].append(model.invert_mean(bm3d.bm3d(z, 1.0)))
        bm3d_s += time.perf_counter() - t
        for method in args.methods:
            zh = tiled(fwd(method), zm, args.patch)[0, 0].double().numpy() * scale
            outputs[method].append(model.invert_mean(zh))
    times["bm3d_s_per_capture"] = bm3d_s / len(caps)
    scores = {m: {"psnr": [psnr(ref, x) for x in xs], "ssim": [ssim(ref, x) for x in xs]}
              for m, xs in outputs.items()}
    for m, s in scores.items():
        log(f"  {m:<22s} PSNR {np.mean(s['psnr']):.2f}  SSIM {np.mean(s['ssim']):.4f}")

    # ---- ablations: the noise parameters
    ablations = {}
    if not args.no_ablations:
        refm = reference_fit(stack)
        ablations["reference_fit"] = refm.params
        xs = [refm.invert_mean(bm3d.bm3d(refm.stabilise(y), 1.0)) for y in caps]
        ablations["bm3d_reference_fit_psnr"] = [psnr(ref, x) for x in xs]
        ablations["bm3d_reference_fit_ssim"] = [ssim(ref, x) for x in xs]
        if "ambient+consistency" in nets:
            net = nets["ambient+consistency"]
            for c in (0.9, 1.1):
                vals = []
                for y, model in zip(caps, models):
                    zm = torch.from_numpy(model.stabilise(y) / scale).float()[None, None]
                    zh = tiled(lambda t: net(t, torch.full((t.shape[0],), c * sn)), zm, args.patch)
                    vals.append(psnr(ref, model.invert_mean(zh[0, 0].double().numpy() * scale)))
                ablations[f"ambient_mean_at_sigma_{c}_psnr"] = vals
        # how far the single-image fit's z noise is from N(0, 1), by intensity, over the 50 captures
        zs = models[0].stabilise(stack)
        zv, mean = zs.var(0, ddof=1), stack.mean(0)
        bins = [(0, 5), (5, 10), (10, 20), (20, 50), (50, 256)]
        ablations["z_noise_variance_by_mean"] = {
            f"{lo}-{hi}": {"share": float(((mean >= lo) & (mean < hi)).mean()),
                           "var": float(zv[(mean >= lo) & (mean < hi)].mean()) if ((mean >= lo) & (mean < hi)).any() else None}
            for lo, hi in bins}
        zc = zs - zs.mean(0)
        ablations["z_noise_neighbour_correlation"] = {
            "x": float((zc[:, :, 1:] * zc[:, :, :-1]).mean() / zc.var()),
            "y": float((zc[:, 1:] * zc[:, :-1]).mean() / zc.var())}
        log(f"ablations: {json.dumps(ablations)}")

    # ---- uncertainty of the ambient posterior on crops
    unc = {}
    figure_post = None
    if "ambient+consistency" in nets:
        net = nets["ambient+consistency"]
        g = torch.Generator().manual_seed(args.seed + 1)
        where = unc_crops(ref, args.unc_crops, args.unc_size)
        cov, cov_ref, corr, errs, stds, z_cov = [], [], [], [], [], []
        t = time.perf_counter()
        for k, (i, j) in enumerate(where):
            ci = k % len(caps)
            y, model = caps[ci], models[ci]
            sl = (slice(i, i + args.unc_size), slice(j, j + args.unc_size))
            zm = torch.from_numpy(model.stabilise(y[sl]) / scale).float()[None, None]
            with torch.no_grad():
                post = denoise_posterior(net, zm, sn, n_samples=args.samples, steps=args.posterior_steps,
                                         generator=g)
            samples = model.invert_sample(post["samples"][:, 0, 0].double().numpy() * scale)
            mean = model.invert_mean(post["mean"][0, 0].double().numpy() * scale)
            std = samples.std(0, ddof=1)
            err = np.abs(mean - ref[sl])
            cov.append(float((err <= 2 * std).mean()))
            cov_ref.append(float((err <= 2 * np.sqrt(std**2 + ref_var[sl])).mean()))
            corr.append(float(np.corrcoef(std.ravel(), err.ravel())[0, 1]))
            zstd = post["samples"][:, 0, 0].std(0).numpy() * scale
            z_cov.append(float((np.abs(post["mean"][0, 0].numpy() * scale - expected_z(model, ref[sl]))
                                <= 2 * zstd).mean()))
            errs.append(err.ravel())
            stds.append(std.ravel())
            if k == 0:
                figure_post = {"sl": sl, "cap": ci, "samples": samples[:2], "std": std, "err": err, "mean": mean}
        e, s = np.concatenate(errs), np.concatenate(stds)
        unc = {"coverage_2std": float((e <= 2 * s).mean()), "coverage_2std_per_crop": cov,
               "coverage_2std_with_reference_noise": float(np.mean(cov_ref)),
               "coverage_2std_z_domain": float(np.mean(z_cov)),
               "pearson_std_abs_error": float(np.corrcoef(s, e)[0, 1]), "pearson_per_crop": corr,
               "mean_std": float(s.mean()), "rmse": float(np.sqrt((e**2).mean())),
               "crops": [[int(i), int(j), args.unc_size, int(args.test_captures[k % len(caps)])]
                         for k, (i, j) in enumerate(where)],
               "samples": args.samples, "posterior_steps": args.posterior_steps}
        times["uncertainty_s"] = time.perf_counter() - t
        log(f"uncertainty: {json.dumps(unc)}")
    times["eval_s"] = time.perf_counter() - t_eval
    times["total_s"] = time.perf_counter() - t_start

    write(args, scores, unc, ablations, info, models, times, outputs, ref, figure_post,
          {m: count_parameters(n) for m, n in nets.items()})


def diagnose(args):
    """``--diagnose`` (see ``parse``): where the learned methods lose, without training again."""
    nets = {m: AmbientPrior.load(args.work_dir / f"{m.replace('+', '_')}.safetensors") for m in args.methods}
    meta = nets[args.methods[0]].metadata
    scale, sn = meta.scale, meta.sigma_n_model
    stack = read_folder(args.data / "raw" / str(args.test_field))
    ref = read_folder(args.data / "gt" / str(args.test_field))[0]
    y = stack[args.test_captures[0]]
    model = PoissonGaussian.estimate(y)
    zm = torch.from_numpy(model.stabilise(y) / scale).float()[None, None]

    def mean(method, c=1.0, z=zm):
        net = nets[method].model
        fn = Plain(net).eval() if method == "n2v" else (lambda t: net(t, torch.full((t.shape[0],), c * sn)))
        return model.invert_mean(tiled(fn, z, args.patch)[0, 0].double().numpy() * scale)

    out = {"capture": args.test_captures[0], "noise_fit": model.params}
    if "ambient+consistency" in nets:
        out["ambient_psnr_at_sigma_c_times_1"] = {
            str(c): psnr(ref, mean("ambient+consistency", c)) for c in (0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5)}
        print(out["ambient_psnr_at_sigma_c_times_1"], flush=True)
    bins = [(0, 5), (5, 10), (10, 20), (20, 50), (50, 256)]
    out["error_by_reference_intensity"] = {}
    for m in nets:
        e = mean(m) - ref
        row = {f"{lo}-{hi}": {"share": float(sel.mean()), "mse": float((e[sel] ** 2).mean()),
                              "bias": float(e[sel].mean())}
               for lo, hi in bins for sel in [(ref >= lo) & (ref < hi)]}
        row["total_mse"] = float((e**2).mean())
        out["error_by_reference_intensity"][m] = row
        print(m, json.dumps(row), flush=True)
    if "ambient+consistency" in nets:
        (i, j), = unc_crops(ref, 1, args.unc_size)
        sl = (slice(i, i + args.unc_size), slice(j, j + args.unc_size))
        g = torch.Generator().manual_seed(args.seed + 1)
        with torch.no_grad():
            post = denoise_posterior(nets["ambient+consistency"].model, zm[..., sl[0], sl[1]], sn,
                                     n_samples=args.samples, steps=args.posterior_steps, generator=g)
        samples = model.invert_sample(post["samples"][:, 0, 0].double().numpy() * scale)
        out["crop"] = {"rows_cols": [int(i), int(j), args.unc_size],
                       "psnr_posterior_mean_D": psnr(ref[sl], model.invert_mean(post["mean"][0, 0].double().numpy() * scale)),
                       "psnr_average_of_samples": psnr(ref[sl], samples.mean(0)),
                       **{f"psnr_{m}_tiled": psnr(ref[sl], mean(m)[sl]) for m in nets if m != "ambient+consistency"}}
        print(out["crop"], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fmd_diagnostics.json").write_text(json.dumps(out, indent=2) + "\n")


# ----------------------------------------------------------------------------------- report
def write(args, scores, unc, ablations, info, models, times, outputs, ref, post, params):
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cells = []
    for m, s in scores.items():
        for metric in ("psnr", "ssim"):
            cells.append({"method": m, "metric": metric, "value": float(np.mean(s[metric])),
                          "per_capture": s[metric]})
    if unc:
        cells.append({"method": "ambient+consistency", "metric": "coverage_2std", "value": unc["coverage_2std"]})
        cells.append({"method": "ambient+consistency", "metric": "pearson_std_abs_error",
                      "value": unc["pearson_std_abs_error"]})
    val = {(c["method"], c["metric"]): c["value"] for c in cells}
    targets = {}
    a = val.get(("ambient+consistency", "psnr"))
    if a is not None:
        for other in ("bm3d", "n2v"):
            if (other, "psnr") in val:
                targets[f"ambient_minus_{other}_db"] = a - val[(other, "psnr")]
        for o in ("clean", "supervised"):
            if (o, "psnr") in val:
                targets[f"oracle_{o}_minus_ambient_db"] = val[(o, "psnr")] - a
    meta = {"data": str(args.data), "train_fields": args.train_fields, "test_field": args.test_field,
            "test_captures": args.test_captures, "quick": args.quick,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "noise_fits_training": {Path(k).name: v for k, v in info.noise_files.items()},
            "noise_fits_test_captures": [m.params for m in models],
            "scale": info.scale, "sigma_n_model": info.sigma_n_model, "sigma_data": info.sigma_data,
            "parameters": params, "times_s": times, "torch": torch.__version__,
            "machine": f"{platform.machine()} cpu, torch threads {torch.get_num_threads()}",
            "data_range": DATA_RANGE}
    name = "fmd"
    (out / f"{name}.json").write_text(json.dumps({"cells": cells, "targets": targets, "uncertainty": unc,
                                                  "ablations": ablations, "meta": meta}, indent=2) + "\n")
    lines = ["| method | PSNR (dB) | SSIM |", "|---|---|---|"]
    for m, s in scores.items():
        lines.append(f"| {LABEL[m]} | {np.mean(s['psnr']):.2f} | {np.mean(s['ssim']):.4f} |")
    table = "\n".join(lines)
    ulines = []
    if unc:
        ulines = ["| ambient+consistency posterior | value |", "|---|---|",
                  f"| coverage of mean +- 2 std (vs the average) | {100 * unc['coverage_2std']:.1f}% |",
                  f"| same, the average's own noise added to the interval | {100 * unc['coverage_2std_with_reference_noise']:.1f}% |",
                  f"| same in the stabilised domain z (vs E[f(y) given the average]) | {100 * unc['coverage_2std_z_domain']:.1f}% |",
                  f"| Pearson correlation of std with absolute error | {unc['pearson_std_abs_error']:.3f} |",
                  f"| mean std / RMSE on the crops (data units) | {unc['mean_std']:.2f} / {unc['rmse']:.2f} |"]
    text = (f"## FMD Confocal_BPAE_B, field {args.test_field}, captures {args.test_captures}"
            f"{' (QUICK smoke run: 128x128 crop, a few steps)' if args.quick else ''}\n\n"
            f"{args.steps} steps x batch {args.batch_size} of {args.patch}x{args.patch} patches per learned "
            f"method, U-Net features {args.features} (no attention, {max(params.values()) if params else 0} "
            f"parameters), CPU, {torch.get_num_threads()} thread(s); total wall time "
            f"{times['total_s'] / 60:.1f} min. Priors' loss: protocol microscopy-2d"
            f"{', with ' + ', '.join(args.loss) if args.loss else ''}.\n\n{table}\n\n" + "\n".join(ulines) + "\n")
    print(text, flush=True)
    print(json.dumps(targets, indent=2))
    md = out / f"{name}.md"
    if args.quick or not md.exists():
        md.write_text("# FMD confocal benchmark (benchmarks/fmd.py)\n\n" + text)
    else:  # keep the analysis written below the generated part
        old = md.read_text()
        cut = old.find("<!-- analysis -->")
        md.write_text("# FMD confocal benchmark (benchmarks/fmd.py)\n\n" + text
                      + ("\n" + old[cut:] if cut >= 0 else ""))
    try:
        figure(out / f"{name}.png", outputs, ref, post, args)
    except Exception as e:  # noqa: BLE001 - the figure is optional, the numbers are not
        print(f"(figure skipped: {e})")


def figure(path, outputs, ref, post, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if post is not None:
        sl, ci = post["sl"], post["cap"]
    else:
        n = min(128, ref.shape[0])
        sl, ci = (slice(0, n), slice(0, n)), 0
    panels = [(SHORT[m], xs[ci][sl]) for m, xs in outputs.items()] + [("50-capture average", ref[sl])]
    extra = []
    if post is not None:
        extra = [("posterior sample 1", post["samples"][0], "gray"), ("posterior sample 2", post["samples"][1], "gray"),
                 ("posterior std", post["std"], "magma"), ("|mean - average|", post["err"], "magma")]
    cols = max(len(panels), len(extra))
    fig, axes = plt.subplots(2, cols, figsize=(2.1 * cols, 4.6))
    vmax = float(np.percentile(ref[sl], 99.5))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, img) in zip(axes[0], panels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(title, fontsize=7)
    emax = float(np.percentile(np.concatenate([post["std"].ravel(), post["err"].ravel()]), 99)) if post else 1
    for ax, (title, img, cmap) in zip(axes[1], extra):
        ax.imshow(img, cmap=cmap, vmin=0, vmax=vmax if cmap == "gray" else emax)
        ax.set_title(title, fontsize=7)
    fig.suptitle(f"FMD confocal field {args.test_field}, capture {args.test_captures[ci]}, crop "
                 f"rows {sl[0].start}-{sl[0].stop} cols {sl[1].start}-{sl[1].stop}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
