"""Which microscopy protocol gives the better prior on a CPU in the same time? Measured on the path
a user takes: ``run_training`` (what ``ambient-med train`` runs) on the raw FMD frames, then
``denoise_file`` (what ``ambient-med denoise`` runs) on held-out captures.

Data: FMD confocal (``../shared/data/microscopy/fmd_confocal_bpae_b``): the 200 raw captures of
fields 1-4 as frame folders (``--sigma-n auto``: the Poisson-Gaussian fit per folder); scored on
captures 0, 24 and 49 of field 5 against its 50-capture average (PSNR over the 8-bit range, as
``fmd.py``). Protocols: ``microscopy-2d`` (the GPU-sized default) and ``microscopy-2d-cpu``. Each
gets ``--budget`` CPU-minutes of training: a 20-step probe measures its step cost, then a run of
``budget / cost`` steps (so its schedule, warm-up and consistency start fit the run). Also
measured: the wall time of denoising one 512x512 capture with the Tweedie std map (the first
capture; the other two are denoised without it).

Run:  python benchmarks/microscopy_preset.py [--budget 10] [--threads 1]
Writes benchmarks/results/microscopy_preset.{json,md} (10 CPU-minutes; other budgets
``microscopy_preset_<budget>min.*``, ``--quick`` ``microscopy_preset_quick.*``); runs live in --work.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ambient_med.tasks.denoise import denoise_file
from ambient_med.tasks.train import run_training

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "microscopy" / "fmd_confocal_bpae_b"
PROTOCOLS = ("microscopy-2d", "microscopy-2d-cpu", "microscopy-2d+noise_map=false", "microscopy-2d-cpu+noise_map",
             "microscopy-2d-cpu+noise_map=false")
TOPUP_DRAWS = 4
CAPTURES = (0, 24, 49)


def psnr(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((ref.astype(np.float64) - x) ** 2)))


def protocol_file(name: str, work: Path) -> str | Path:
    """A protocol by name; ``<name>+noise_map`` or ``<name>+noise_map=false``: that protocol with
    ``data.noise_map`` set (the Poisson-Gaussian noise equalised per pixel, or not), written to
    ``work``."""
    if "+" not in name:
        return name
    import yaml

    from ambient_med.training.config import resolve_protocol_path

    base, setting = name.split("+")
    key, _, value = setting.partition("=")
    d = yaml.safe_load(resolve_protocol_path(base).read_text())
    d["name"] = f"{base}-{key.replace('_', '-')}-{value or 'true'}"
    d.setdefault("data", {})[key] = value != "false"
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{d['name']}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def uses_noise_map(proto: str) -> bool:
    """Whether ``proto`` (a name of ``PROTOCOLS``) trains with ``data.noise_map``."""
    from ambient_med.training.config import load_protocol

    if "+noise_map" in proto:
        return not proto.endswith("=false")
    return load_protocol(proto).data.noise_map


def denoise_variants(prior_path: Path, y: np.ndarray) -> dict:
    """For a prior trained with the noise map: the posterior mean (one whole-image pass) of the
    capture ``y`` stabilised without the top-up noise (the denoiser then sees less noise than
    it assumes in dark pixels), and the average over ``TOPUP_DRAWS`` top-up draws; tiled as
    ``denoise_file`` (a whole 512x512 image through a network trained on 64x64 patches normalises
    its features differently)."""
    from ambient_med.diffusion.tiling import tiled_apply
    from ambient_med.prior import AmbientPrior

    prior = AmbientPrior.load(prior_path)
    x = torch.from_numpy(y.astype(np.float32))[None, None]
    model = prior.input_noise(x, "auto")
    sm = prior.sigma_to_model(1.0)

    patch = max(prior.metadata.training["image_shape"])

    def mean_of(z):   # tiled as denoise_file does (tile = training patch, overlap a quarter)
        with torch.no_grad():
            zm = tiled_apply(lambda t: prior.denoise_model(t, sm), prior.to_model(z), patch, patch // 4)
        return prior.to_data(zm, as_complex=False)

    plain = model.invert_mean(mean_of(model.stabilise(x)))
    avg = sum(mean_of(model.stabilise_observation(x, seed=k)) for k in range(TOPUP_DRAWS)) / TOPUP_DRAWS
    return {"no_topup": plain[0, 0].numpy(), f"topup_mean{TOPUP_DRAWS}": model.invert_mean(avg)[0, 0].numpy()}


def step_cost(protocol: str | Path, folders: list[str], work: Path) -> float:
    """CPU seconds per step: two probe runs of 10 and 30 steps (the second reuses the first's
    item cache), the difference over 20 steps."""
    cpu = []
    for n in (10, 10, 30):  # the first builds the cache
        c0 = time.process_time()
        run_training(folders, work / f"probe_{Path(protocol).stem}", protocol=protocol, sigma_n="auto", steps=n,
                     device="cpu", overwrite=True, previews=0, handle_signals=False)
        cpu.append(time.process_time() - c0)
    return (cpu[2] - cpu[1]) / 20


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path), np.float64)


def score(prior: Path, work: Path, quick: bool, noise_map: bool = False) -> dict:
    ref = read_png(DATA / "gt" / "5" / "avg50.png")
    extra: dict[str, list[float]] = {}
    src = DATA / "raw" / "5"
    frames = sorted(p for p in src.iterdir() if p.suffix == ".png")
    out, times = [], []
    for k, i in enumerate(CAPTURES[:1] if quick else CAPTURES):
        t0 = time.time()   # the std map on the first capture only (its time is the one reported)
        written = denoise_file(prior, frames[i], work / f"den_{i}.png", overwrite=True,
                               uncertainty=None if k == 0 else "none")
        if k == 0:
            times.append(time.time() - t0)
        mean = read_png(written[0])
        out.append(psnr(ref, mean))
        if noise_map:
            for key, v in denoise_variants(prior, read_png(frames[i])).items():
                extra.setdefault(key, []).append(psnr(ref, np.clip(np.round(v), 0, 255)))
    noisy = [psnr(ref, read_png(frames[i])) for i in CAPTURES[:len(out)]]
    return {"psnr": float(np.mean(out)), "psnr_per_capture": out, "noisy_psnr": float(np.mean(noisy)),
            "denoise_seconds_512": float(np.mean(times)),
            **{f"psnr_{k}": float(np.mean(v)) for k, v in extra.items()}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=10.0, help="CPU-minutes of training per protocol")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    p.add_argument("--work", type=Path, default=Path("/tmp/ambient_med_microscopy_preset"))
    p.add_argument("--quick", action="store_true", help="0.3 CPU-minutes, one capture: a smoke run")
    p.add_argument("--rescore", action="store_true",
                   help="score the priors already trained in --work again (training figures kept from the results)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if a.quick:
        a.budget = 0.3
    torch.set_num_threads(a.threads)
    folders = [str(DATA / "raw" / str(f)) for f in (1, 2, 3, 4)]
    rows = {}
    stem = "microscopy_preset_quick" if a.quick else (
        "microscopy_preset" if a.budget == 10 else f"microscopy_preset_{a.budget:g}min")
    old = a.out / f"{stem}.json"
    for proto in a.protocols:
        if a.rescore:
            prev = json.loads(old.read_text())["rows"][proto]
            keep = {k: prev[k] for k in ("steps", "seconds_per_step", "train_cpu_min", "train_wall_min", "parameters")}
            rows[proto] = {**keep, "date": time.strftime("%Y-%m-%d"), "noise_map": uses_noise_map(proto),
                           **score(a.work / proto / "prior.safetensors", a.work / proto, a.quick,
                                   noise_map=uses_noise_map(proto))}
            continue
        pfile = protocol_file(proto, a.work)
        cost = step_cost(pfile, folders, a.work)
        steps = max(int(a.budget * 60 / cost), 20)
        c0, t0 = time.process_time(), time.time()
        res = run_training(folders, a.work / proto, protocol=pfile, sigma_n="auto", steps=steps, device="cpu",
                           overwrite=True, previews=0, handle_signals=False)
        cpu_min, wall_min = (time.process_time() - c0) / 60, (time.time() - t0) / 60
        rows[proto] = {"steps": steps, "seconds_per_step": cost, "train_cpu_min": cpu_min,
                       "train_wall_min": wall_min, "parameters": res.parameters,
                       "date": time.strftime("%Y-%m-%d"), "noise_map": uses_noise_map(proto),
                       **score(res.prior_path, a.work / proto, a.quick, noise_map=uses_noise_map(proto))}
        print(f"{proto}: {steps} steps in {cpu_min:.1f} CPU-min, PSNR {rows[proto]['psnr']:.2f} dB, "
              f"denoise 512x512 with std map {rows[proto]['denoise_seconds_512']:.0f} s", flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "budget_cpu_min": a.budget, "threads": a.threads,
            "captures": list(CAPTURES[:1] if a.quick else CAPTURES), "torch": torch.__version__}
    a.out.mkdir(parents=True, exist_ok=True)
    if old.exists():   # rows of protocols not run this time stay (same budget only)
        prev = json.loads(old.read_text())
        if prev["meta"]["budget_cpu_min"] == a.budget:
            rows = {**{k: {"date": prev["meta"]["date"], **v} for k, v in prev["rows"].items()}, **rows}
    old.write_text(json.dumps({"rows": rows, "meta": meta}, indent=1))
    write_md(a.out / f"{stem}.md", rows, meta, a)
    dens = {p: a.work / p / f"den_{CAPTURES[0]}.png" for p in a.protocols}
    figure(a.out / f"{stem}.png", {p: f for p, f in dens.items() if f.exists()})


def figure(path: Path, dens: dict[str, Path]) -> None:
    """Crops of capture 0 of field 5: the capture, each prior's posterior mean (``dens``: label
    -> its ``den_0.png``) and the 50-capture average; top a bright region, bottom the dim
    background on a 4x stretched grey scale (where residual grain shows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noisy = sorted(p for p in (DATA / "raw" / "5").iterdir() if p.suffix == ".png")[CAPTURES[0]]
    panels = {"noisy capture": noisy, **dens, "50-capture average": DATA / "gt" / "5" / "avg50.png"}
    fig, ax = plt.subplots(2, len(panels), figsize=(3.2 * len(panels), 6.6), squeeze=False)
    for i, (label, f) in enumerate(panels.items()):
        img = read_png(f)
        ax[0, i].imshow(img[150:350, 150:350], cmap="gray", vmin=0, vmax=120)
        ax[1, i].imshow(img[0:150, 350:500], cmap="gray", vmin=0, vmax=30)
        ax[0, i].set_title(label, fontsize=9)
        for k in (0, 1):
            ax[k, i].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_md(path: Path, rows: dict, meta: dict, a) -> None:
    lines = ["# Microscopy protocols at equal CPU time (FMD field 5)", "",
             f"{a.budget:g} CPU-minutes of training each, {a.threads} torch thread(s); `run_training` on "
             "the raw captures of fields 1-4, `denoise_file` (Tweedie std map) on captures "
             f"{', '.join(map(str, meta['captures']))} of field 5 against its 50-capture average. "
             "`+noise_map` / `+noise_map=false`: the protocol with `data.noise_map` set (Poisson-Gaussian noise "
             "equalised per pixel, or not). With the map, the last two columns denoise the same captures "
             f"without the top-up noise, and averaged over {TOPUP_DRAWS} top-up draws (tiled as `denoise_file`).", "",
             "| protocol | noise map | measured | parameters | s / step | steps | train CPU-min | PSNR (dB) | noisy (dB) | "
             f"denoise 512x512 + std map (s) | no top-up (dB) | mean of {TOPUP_DRAWS} top-ups (dB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for proto, r in rows.items():
        r = dict(r)
        more = [f"{r[k]:.2f}" if k in r else "" for k in ("psnr_no_topup", f"psnr_topup_mean{TOPUP_DRAWS}")]
        lines.append(f"| {proto} | {'yes' if r.get('noise_map') else 'no'} | {r.get('date', meta['date'])} | {r['parameters']:,} | {r['seconds_per_step']:.2f} | "
                     f"{r['steps']} | {r['train_cpu_min']:.1f} | {r['psnr']:.2f} | {r['noisy_psnr']:.2f} | "
                     f"{r['denoise_seconds_512']:.0f} | {' | '.join(more)} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
