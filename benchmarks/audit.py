"""Memorisation audit on a deliberately small training set: does a prior trained on
``--n-train`` (64) images reproduce them, and does training on noisy versions of the same images
(``ambient+consistency``) keep it from doing so?

Data: axial MNI152 template slices (as ``benchmarks/mri_recon.py``) area-averaged to ``--size``
(32 x 32, 6 mm pixels) as whole images (no patches, so that a network can learn each image as a
whole), each times its own smooth random phase (a random quadratic). The random phase makes every
training image unique, as every real acquisition is: neighbouring template slices 2 mm apart
have nearly the same magnitude, so without it any realistic brain sample would correlate above
0.95 with some training slice and the near-copy count could not tell memorisation from
generalisation. Training set: ``--n-train`` slices, every other slice through the brain.
Held-out control: ``--n-control`` other slices between them (new phases, neighbouring anatomy).
Noise: white complex Gaussian, ``--snr-db`` image SNR as in ``mri_recon.py``.

Priors (``train_priors`` of ``common.mri_priors``, as in ``mri_recon.py``: the package's training
loop, equal budget): ``clean`` on the clean images, ``ambient+consistency`` on one noisy version
of each. ``--steps`` x ``--batch-size`` is many epochs of 64 images (250 at the defaults), as long
as the CPU budget allows.

The audit is ``ambient_med.tasks.audit.audit`` (the code behind ``ambient-med audit``):

1. ``--n-samples`` samples (Heun, the package's default steps); for each, the largest normalised
   correlation ``rho`` (over real and imaginary channels) with any *clean* training image; the
   share with ``rho > 0.95`` and ``> 0.9`` and quantiles. Controls: the same statistic for the
   held-out clean images (what real, unmemorised images of this kind score against the training
   set) and, for the ambient prior, against the noisy images it saw;
2. the reconstruction attack: ``x + sigma_a e`` for ``sigma_a`` = ``--attack-sigma`` x
   ``sigma_data`` (each level), denoised by the posterior mean; mean ``||D - x|| / ||x||`` on
   ``--n-attack`` training images against as many held-out ones (ratio near 1: no sign of
   memorisation; well below 1: the prior brings its training images back). The training images
   attacked are the neighbours (one slice below) of the control slices, so both sides cover the
   same anatomy.

    python benchmarks/audit.py --quick        # smoke run
    python benchmarks/audit.py                # the CPU run of benchmarks/results
Writes ``audit.json`` and ``audit.md`` (text after ``<!-- analysis -->`` in an existing file is
kept) and ``audit.png`` (samples beside their nearest training images).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common.figures import pyplot, save
from common.mni import MNI, intensity_scale, mni_slices, sigma_at_snr, smooth_phase
from common.mri_priors import train_priors
from common.results import RESULTS, settings, write_json
from common.tables import MARKER, analysis, rule, table
from common.work import quick_folder

from ambient_med.tasks.audit import attack_error, audit, audit_space, nearest_correlation

OBJECTIVES = ("clean", "ambient+consistency")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-control", type=int, default=16)
    p.add_argument("--snr-db", type=float, default=20.0)
    p.add_argument("--features", type=int, nargs="+", default=[16, 32, 32])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-samples", type=int, default=64)
    p.add_argument("--sample-steps", type=int, default=None, help="Heun steps (default: the package's)")
    p.add_argument("--attack-sigma", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                   help="attack noise levels in units of the prior's sigma_data")
    p.add_argument("--n-attack", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto: where the priors train and sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--work", type=Path, default=Path("/tmp/ambient-med-bench/audit"))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--name", default="audit", help="output file stem in --out (audit.json, ...)")
    p.add_argument("--only", choices=OBJECTIVES, default=None,
                   help="train (or reuse) this prior in --work and stop: two such runs train the "
                        "priors side by side on two cores, a third run without --only audits them")
    a = p.parse_args(argv)
    a.patch = a.size                       # whole images (train_priors reads args.patch)
    if a.quick:
        a.size = a.patch = 16
        a.n_train, a.n_control, a.steps, a.batch_size, a.n_samples, a.n_attack = 16, 4, 10, 8, 8, 4
        a.sample_steps = 4
        a.work = quick_folder(a.work)
    return a


def pick(area: np.ndarray, n_train: int, n_control: int) -> tuple[list[int], list[int]]:
    """Training: ``n_train`` slices two apart through the middle of the brain; control: evenly
    spaced among the slices in between (each one mm from two training slices)."""
    usable = np.nonzero(area >= 0.25 * area.max())[0]
    mid = (usable.min() + usable.max()) // 2
    start = max(usable.min(), mid - n_train)
    train = [int(z) for z in range(start, start + 2 * n_train, 2)]
    between = [z + 1 for z in train[:-1]]
    control = [between[int(i)] for i in np.linspace(0, len(between) - 1, n_control).round()]
    return train, control


def to_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).to(torch.complex64)[:, None]


def main(argv=None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed + 1)
    mag, area = mni_slices(args.size)
    train_idx, control_idx = pick(area, args.n_train, args.n_control)
    phases = np.stack([smooth_phase(rng, args.size) for _ in range(mag.shape[0])])
    x0 = (mag * np.exp(1j * phases)).astype(np.complex64)
    x_tr, x_ct = x0[train_idx], x0[control_idx]
    sigma = sigma_at_snr(x_tr, args.snr_db)
    y_tr = (x_tr + sigma * (rng.standard_normal(x_tr.shape) + 1j * rng.standard_normal(x_tr.shape))
            ).astype(np.complex64)
    scale = intensity_scale(y_tr, sigma)
    print(f"audit: {len(train_idx)} training slices {train_idx[0]}..{train_idx[-1]}, "
          f"{len(control_idx)} control; {args.size}x{args.size}, sigma {sigma:.4f}", flush=True)
    t = time.perf_counter()
    objectives = (args.only,) if args.only else OBJECTIVES
    priors, info = train_priors(objectives, x_tr, y_tr, sigma, scale, args, args.work, "audit")
    t_train = time.perf_counter() - t
    if args.only:
        return {"trained": args.only, "seconds": t_train}

    # the attack uses the first --n-attack training images: put first the training neighbour
    # (one slice below) of each control slice, so that both sides of the attack cover the same
    # anatomy (the lowest slices alone are the harder inferior brain); training used the
    # original order
    first = [train_idx.index(z - 1) for z in control_idx[:args.n_attack]]
    order = first + [i for i in range(len(train_idx)) if i not in first]
    train_t, noisy_t, control_t = to_tensor(x_tr[order]), to_tensor(y_tr[order]), to_tensor(x_ct)
    any_prior = next(iter(priors.values()))
    control_rho = nearest_correlation(audit_space(any_prior, control_t), audit_space(any_prior, train_t))
    q = [0.5, 0.9, 0.99, 1.0]
    report = {"control_heldout_images": {
        "share_rho_gt_0.95": float((control_rho > 0.95).double().mean()),
        "share_rho_gt_0.9": float((control_rho > 0.9).double().mean()),
        "nearest_rho_quantiles": dict(zip(map(str, q), torch.quantile(control_rho, torch.tensor(
            q, dtype=control_rho.dtype)).tolist())),
        "nearest_rho_mean": float(control_rho.mean())}}
    figs, t_audit = {}, {}
    for obj, prior in priors.items():
        t = time.perf_counter()
        rep = audit(prior, train_t, heldout=control_t, n_samples=args.n_samples,
                    steps=args.sample_steps, attack_sigma=args.attack_sigma[0],
                    n_attack=args.n_attack, seed=args.seed)
        attacks = {}
        for level in args.attack_sigma:
            g = torch.Generator(device=prior.device).manual_seed(args.seed + 17)
            s_a = level * prior.metadata.sigma_data                     # model space
            tr = attack_error(prior, audit_space(prior, train_t[:args.n_attack]), s_a, g)
            ho = attack_error(prior, audit_space(prior, control_t[:args.n_attack]), s_a, g)
            attacks[str(level)] = {"sigma_data_units": s_a * prior.metadata.scale,
                                   "train_error": float(tr.mean()),
                                   "heldout_error": float(ho.mean()),
                                   "train_over_heldout": float(tr.mean() / ho.mean())}
        rep["attack_levels"] = attacks
        # samples again (same seed as audit()) for the figure and the noisy-set statistic
        g = torch.Generator(device=prior.device).manual_seed(args.seed)
        samples = prior.sample(args.n_samples, steps=args.sample_steps, shape=(args.size, args.size),
                               generator=g).cpu()
        rho_c = nearest_correlation(prior.to_model(samples), audit_space(prior, train_t))
        if obj != "clean":
            rho_n = nearest_correlation(prior.to_model(samples), audit_space(prior, noisy_t))
            rep["vs_noisy_training_images"] = {"share_rho_gt_0.95": float((rho_n > 0.95).double().mean()),
                                               "share_rho_gt_0.9": float((rho_n > 0.9).double().mean()),
                                               "nearest_rho_mean": float(rho_n.mean())}
        order = torch.argsort(rho_c, descending=True)[:8]
        a = prior.to_model(samples[order]).reshape(len(order), -1).double()
        b = prior.to_model(train_t).reshape(train_t.shape[0], -1).double()
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        nn = ((a / a.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).T).argmax(1)
        figs[obj] = (samples[order, 0].abs().numpy(), train_t[nn, 0].abs().numpy(), rho_c[order].numpy())
        t_audit[obj] = time.perf_counter() - t
        report[obj] = rep
        print(f"  {obj:<20s} near copies >0.95: {rep['share_rho_gt_0.95']:.1%}, >0.9: "
              f"{rep['share_rho_gt_0.9']:.1%}; attack train/held-out "
              f"{rep['reconstruction_attack']['train_over_heldout']:.3f}", flush=True)

    suffix = (f"_{args.name}" if args.name != "audit" else "") + ("_quick" if args.quick else "")
    meta = {"settings": settings(args),
            "data": {"mni": MNI.name, "train_slices": train_idx, "control_slices": control_idx,
                     "attacked_training_slices": [train_idx[i] for i in first],
                     "sigma": sigma, "scale": scale, "pixel_mm": 192 / args.size},
            "training": info, "wall_seconds": {"train": t_train, "audit": t_audit,
                                               "total": time.perf_counter() - t0},
            "torch": torch.__version__, "threads": args.threads}
    out = {"report": report, "meta": meta}
    write_json(args.out / f"audit{suffix}.json", out)
    save_figure(figs, args.out / f"audit{suffix}.png")
    md_path = args.out / f"audit{suffix}.md"
    md_path.write_text(markdown(report, meta, args) + "\n\n" + (analysis(md_path) or MARKER))
    print(markdown(report, meta, args))
    return out


def markdown(report: dict, meta: dict, args) -> str:
    rows = ["| | share rho > 0.95 | share rho > 0.9 | rho median | rho 90% | rho 99% | rho max |", rule(7)]

    def row(name, r):
        qs = r["nearest_rho_quantiles"]
        rows.append(f"| {name} | {r['share_rho_gt_0.95']:.1%} | {r['share_rho_gt_0.9']:.1%} | "
                    f"{qs['0.5']:.3f} | {qs['0.9']:.3f} | {qs['0.99']:.3f} | {qs['1.0']:.3f} |")

    for obj in OBJECTIVES:
        row(f"samples of `{obj}` vs clean training images", report[obj])
    row("held-out real images vs training images (control)", report["control_heldout_images"])
    a = report["ambient+consistency"].get("vs_noisy_training_images")
    att = table(["prior", "sigma_a / sigma_data", "error on training images", "on held-out", "train / held-out"])
    for obj in OBJECTIVES:
        for level, r in report[obj]["attack_levels"].items():
            att.append(f"| `{obj}` | {level} | {r['train_error']:.4f} | {r['heldout_error']:.4f} | "
                       f"{r['train_over_heldout']:.3f} |")
    tr = ", ".join(f"{o} {v['train_seconds']:.0f} s" for o, v in meta["training"].items())
    return f"""# Memorisation audit

Generated by `python benchmarks/audit.py{' --quick' if args.quick else ''}` (settings in
`audit{'_quick' if args.quick else ''}.json`). {len(meta['data']['train_slices'])} MNI152 template slices
({args.size}x{args.size}, {meta['data']['pixel_mm']:.0f} mm pixels, each with its own random smooth phase) as
the training set, {len(meta['data']['control_slices'])} held-out slices as the control; noise sigma =
{meta['data']['sigma']:.4f} ({args.snr_db:g} dB). Both priors: network features {tuple(args.features)},
{args.steps} steps x batch {args.batch_size} of whole images ({args.steps * args.batch_size / len(meta['data']['train_slices']):.0f}
epochs), lr {args.lr} (training wall time: {tr}). {args.n_samples} samples per prior. CPU,
{args.threads} torch thread(s); wall time of this invocation {meta['wall_seconds']['total'] / 60:.1f} min
(training {meta['wall_seconds']['train'] / 60:.1f} min of it; priors whose settings match are reused from `--work`).

## Nearest training image of each sample (normalised correlation over real and imaginary parts)

{chr(10).join(rows)}
{'' if a is None else f'''
Samples of `ambient+consistency` against the *noisy* images it was trained on: share rho > 0.95
{a['share_rho_gt_0.95']:.1%}, > 0.9 {a['share_rho_gt_0.9']:.1%}, mean nearest rho {a['nearest_rho_mean']:.3f}.'''}

## Reconstruction attack (noise a clean image, denoise it with the prior's posterior mean)

{chr(10).join(att)}"""


def save_figure(figs: dict, path: Path) -> None:
    plt = pyplot()
    n = max(len(v[2]) for v in figs.values())
    fig, axes = plt.subplots(2 * len(figs), n, figsize=(1.3 * n, 2.8 * len(figs)), squeeze=False)
    for i, (obj, (samples, nearest, rho)) in enumerate(figs.items()):
        for j in range(n):
            for r, img in ((2 * i, samples), (2 * i + 1, nearest)):
                ax = axes[r, j]
                ax.set_xticks([]), ax.set_yticks([])
                if j < len(img):
                    ax.imshow(img[j], cmap="gray", vmin=0)
            if j < len(rho):
                axes[2 * i, j].set_title(f"rho {rho[j]:.3f}", fontsize=7)
        axes[2 * i, 0].set_ylabel(f"{obj}\nsample", fontsize=7)
        axes[2 * i + 1, 0].set_ylabel("nearest\ntraining", fontsize=7)
    fig.suptitle("the most training-like samples of each prior (magnitude) above their nearest "
                 "training image", fontsize=8)
    save(fig, path, 90)


if __name__ == "__main__":
    main()
