"""``ambient-med demo``: the whole method on a laptop, with known answers.

1. Write a small multi-coil fastMRI-format dataset of random ellipse phantoms with complex
   Gaussian k-space noise of a known ``sigma`` (``phantoms.py``).
2. Estimate ``sigma_n`` from each file with the package's estimator and compare with the truth.
3. Train two small priors on the noisy files alone, exactly as ``ambient-med train`` does,
   with the same network, data and step budget: ``ambient+consistency`` (protocol ``demo``) and
   ``naive`` (the same protocol, pretending the noisy data is clean).
4. Report: clean phantoms, noisy inputs, posterior means (denoised) and posterior std of the
   ambient prior, and the samples of both priors side by side. The number that tells them
   apart is the residual noise of their samples: the std per real channel in the background
   (pixels outside every phantom, where the clean image is below 0.1% of its peak), against ``sigma_n``.
   A prior of the *clean* images puts ~0 there; the naive prior learned the noisy images and
   reproduces ~``sigma_n``.

PSNR is computed on magnitude images (as fastMRI does), both sides in model units
(``|clean| / scale``), with the peak of the clean magnitudes as the signal: the coil-combined
complex image carries the estimated maps' phase, which magnitude is blind to.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError

TRUE_SIGMA = 0.06
N_FILES, SLICES, SIZE, COILS = 4, 16, 32, 8


def psnr(x: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((x - ref) ** 2))
    return 10 * math.log10(float(ref.max()) ** 2 / mse)


def _table(rows: list[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    lines = [f"| {'quantity':<{w}} | value |", f"|{'-' * (w + 2)}|-------|"]
    lines += [f"| {k:<{w}} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _variant(out: Path, objective: str, cache: Path) -> Path:
    """The demo protocol with ``objective``, sharing one preprocessing cache between runs."""
    import yaml

    from ..diffusion.losses import LossConfig, inactive_keys
    from ..training.config import load_protocol

    d = load_protocol("demo").to_dict()
    d["name"] = f"demo-{objective.replace('+', '-')}"
    d["loss"]["objective"] = objective
    # keys of the terms the naive objective lacks (below sigma_n, SURE) would be refused
    inactive = inactive_keys(LossConfig(**d["loss"]))
    d["loss"] = {k: v for k, v in d["loss"].items() if k not in inactive}
    d["data"]["cache_dir"] = str(cache.resolve())
    path = out / "protocols" / f"{d['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


OBJECTIVES = ("ambient+consistency", "naive")


def _draw_samples(prior, n: int) -> torch.Tensor:
    """``n`` samples of ``prior`` with the demo protocol's sampler, from a fixed seed (the same
    noise for both priors, so their samples differ only by what each prior learned)."""
    sampler = load_protocol_sampler()
    dev = next(prior.model.parameters()).device
    g = torch.Generator(device=dev).manual_seed(2)
    return prior.sample(n, steps=sampler.steps, mode=sampler.mode, stop=sampler.stop, sampler=sampler.sampler,
                        generator=g, space="model")


def _train_run(data: str, run_dir: str, protocol: str, steps: int | None, device: str,
               threads: int, on_start=None, callback=None, keep_result: bool = False,
               n_samples: int = 0) -> dict:
    """One ``run_training`` (also the body of the second process, which returns only picklable
    facts; ``keep_result`` adds the whole ``RunResult`` for the caller's own process).
    ``n_samples > 0`` also draws the report's prior samples (:func:`_draw_samples`), so that
    the second process does it while the slower ambient run still trains."""
    from ..prior import AmbientPrior
    from .train import run_training

    torch.set_num_threads(threads)
    res = run_training([data], run_dir, protocol=protocol, sigma_n="auto", steps=steps,
                       device=device, previews=0, on_start=on_start, callback=callback)
    samples = None
    if n_samples and not res.interrupted:
        prior = AmbientPrior.load(res.prior_path, device=next(res.model.parameters()).device)
        with torch.no_grad():
            samples = _draw_samples(prior, n_samples).cpu()
    return {"result": res if keep_result else None, "prior_path": res.prior_path,
            "step": res.step, "interrupted": res.interrupted, "samples": samples}


def _import_training() -> None:
    from . import train  # noqa: F401


def _sample_file(prior_path: str, n: int, device: str, threads: int) -> torch.Tensor:
    """Body of the second process for the report: :func:`_draw_samples` of a saved prior."""
    from ..prior import AmbientPrior
    from ..utils import resolve_device

    torch.set_num_threads(threads)
    prior = AmbientPrior.load(prior_path, device=resolve_device(device))
    with torch.no_grad():
        return _draw_samples(prior, n).cpu()


def _second_process(device: str):
    """A one-worker spawn pool on a CPU with two or more cores, else None.

    Each run is a 0.3M-parameter network on 32x32 images, which one thread serves as well as
    several (more threads spin on synchronisation, measured 3x slower on 2 cores): two
    single-threaded processes use two cores fully and halve the demo's wall time. On a GPU or a
    one-core machine everything runs one after the other in this process."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from ..utils import resolve_device

    if resolve_device(device).type != "cpu" or (os.cpu_count() or 1) < 2:
        return None
    return ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"))


def _train_both(out: Path, protocols: dict, *, steps: int | None, device: str,
                log: Callable[[str], None], pool=None, n_samples: int = 0) -> dict:
    """Train the two priors: the naive one in ``pool`` (the second process) while this process
    trains the ambient one, or one after the other when ``pool`` is None. The second process
    also draws its prior's ``n_samples`` report samples (it finishes first: no consistency
    term); once it is done, this process takes every core. Returns
    ``{objective: (RunResult-like, samples or None)}``."""
    from types import SimpleNamespace

    from .progress import TrainProgress

    cores = os.cpu_count() or 1
    main, other = OBJECTIVES
    args = {o: (str(out / "data"), str(out / f"run-{o.replace('+', '-')}"), str(protocols[o]), steps,
                device, 1 if pool else max(1, min(torch.get_num_threads(), cores // 2)))
            for o in OBJECTIVES}
    future, threads = None, torch.get_num_threads()
    if pool is not None:
        log(f"3/5 training the {main} and {other} priors on the noisy files alone, at the same "
            "time (same network, data and steps; one core each)")
        future = pool.submit(_train_run, *args[other], n_samples=n_samples)
    else:
        log(f"3/5 training the {main} prior on the noisy files alone")
    bar = TrainProgress()

    def update(*a, **k):
        # the naive run (no consistency term) ends first: its core then serves this run
        if future is not None and future.done() and torch.get_num_threads() < cores:
            torch.set_num_threads(cores)
        return bar.update(*a, **k)

    try:
        try:
            done = _train_run(*args[main], on_start=bar.start, callback=update, keep_result=True)
        finally:
            bar.stop()
        if pool is None:
            log(f"4/5 training the {other} prior (same network, data and steps)")
        rest = future.result() if future is not None else _train_run(*args[other])
    finally:
        torch.set_num_threads(threads)
    runs = {}
    for name, d in ((main, done), (other, rest)):
        if d["interrupted"]:
            raise KeyboardInterrupt
        runs[name] = (d["result"] or SimpleNamespace(prior_path=d["prior_path"], step=d["step"]),
                      d["samples"])
    return runs


def background_noise(samples: torch.Tensor, mask: np.ndarray) -> float:
    """Std per real channel of ``samples`` (N, C, H, W) over the pixels of ``mask`` (H, W)."""
    x = samples.detach().float().cpu().numpy()[..., mask]            # (N, C, pixels)
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def run_demo(out: str | Path = "ambient-med-demo", *, steps: int | None = None, device: str = "auto",
             overwrite: bool = False, log: Callable[[str], None] = print,
             n_files: int = N_FILES, slices: int = SLICES, previews: int = 8,
             noise_samples: int = 32) -> dict:
    from ..synthetic.phantoms import make_phantom_dataset
    from ..training.config import load_protocol
    from .noise import estimate_noise_file
    from .train import load_data

    # A 0.3M-parameter net on 32x32 images gains nothing from many threads, and OpenMP threads
    # spin against other processes: half the cores (1 on a 2-core machine) ran 3x faster here.
    torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) // 2)))
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
        shutil.rmtree(out)
    t0 = time.perf_counter()
    log(f"1/5 writing {n_files} fastMRI files of {slices} noisy {COILS}-coil phantoms "
        f"({SIZE}x{SIZE}, sigma = {TRUE_SIGMA}) to {out / 'data'}")
    truth = make_phantom_dataset(out / "data", n_files=n_files, slices=slices, size=SIZE,
                                 coils=COILS, sigma=TRUE_SIGMA)

    log("2/5 estimating sigma_n from the k-space corners")
    ests = [estimate_noise_file(f) for f in truth["files"]]
    sigma_files = float(np.sqrt(np.mean([e.sigma**2 for e in ests])))

    protocols = {o: _variant(out, o, out / "cache") for o in OBJECTIVES}
    n_draw = max(min(previews, len(truth["files"]) * slices), noise_samples)
    pool = _second_process(device)
    try:
        if pool is not None:  # the second process imports the training code meanwhile
            pool.submit(_import_training)
        # fill the shared preprocessing cache once, so that the two runs only read it
        load_data([str(out / "data")], load_protocol(protocols[OBJECTIVES[0]]), "auto")
        return _train_and_report(out, truth, protocols, sigma_files, t0, pool=pool, steps=steps,
                                 device=device, log=log, n_draw=n_draw, previews=previews)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _train_and_report(out: Path, truth: dict, protocols: dict, sigma_files: float, t0: float, *,
                      pool, steps: int | None, device: str, log: Callable[[str], None],
                      n_draw: int, previews: int) -> dict:
    from ..io.images import save_grid, to_display
    from ..prior import AmbientPrior

    both = _train_both(out, protocols, steps=steps, device=device, log=log, pool=pool,
                       n_samples=n_draw)
    runs = {name: run for name, (run, _) in both.items()}
    t_train = time.perf_counter() - t0
    cores = os.cpu_count() or 1
    drawing = None
    if pool is not None:  # the ambient prior's samples in the second process, beside the rest
        drawing = pool.submit(_sample_file, str(runs["ambient+consistency"].prior_path), n_draw,
                              device, 1)
    # the report's no-grad batches gain from every free core (~25% with 2 of 2)
    torch.set_num_threads(max(1, cores - (1 if drawing is not None else 0)))

    log("5/5 denoising, posterior uncertainty, samples of both priors")
    res = runs["ambient+consistency"]
    info = res.info
    dev = next(res.model.parameters()).device
    priors = {k: AmbientPrior.load(r.prior_path, device=dev) for k, r in runs.items()}
    prior = priors["ambient+consistency"]
    # the training images, in model space as the dataset holds them
    y = torch.stack([res.dataset[i]["image"] for i in range(len(res.dataset))]).to(dev)
    sn = prior.metadata.sigma_n_model
    with torch.no_grad():
        den = torch.cat([prior.denoise(b, sn, space="model") for b in y.split(32)])
    ref = np.abs(truth["clean"]) / info.scale
    noisy_mag, den_mag = to_display(y, True), to_display(den, True)
    if noisy_mag.shape != ref.shape:
        raise RuntimeError(f"dataset shape {noisy_mag.shape} does not match phantoms {ref.shape}")
    p_noisy = float(np.mean([psnr(a, r) for a, r in zip(noisy_mag, ref)]))
    p_den = float(np.mean([psnr(a, r) for a, r in zip(den_mag, ref)]))

    k = min(previews, y.shape[0])
    g = torch.Generator(device=dev).manual_seed(1)
    # the std map from Tweedie's second moment at sigma_n (no samples needed); it is judged by
    # how well it predicts where the posterior mean is wrong, over every training image
    post = prior.posterior(y, sn, n_samples=0, generator=g, space="model")
    std_mag = np.sqrt(np.mean(post["std"].float().cpu().numpy() ** 2, axis=1))    # RMS per channel
    err_mag = np.abs(den_mag - ref)
    pearson = float(np.corrcoef(std_mag.ravel(), err_mag.ravel())[0, 1])
    drawn = {name: d for name, (_, d) in both.items()}
    if drawing is not None:
        drawn["ambient+consistency"] = drawing.result()
    samples = {name: (d.to(dev) if d is not None else _draw_samples(priors[name], n_draw))
               for name, d in drawn.items()}
    # background: outside every phantom, where the clean image is 0 (below 0.1% of its peak:
    # the phantoms' band-limited edges leave tiny ripples)
    clean_mag = np.abs(truth["clean"])
    background = np.all(clean_mag < 1e-3 * clean_mag.max(), axis=0)
    sigma_n_model_true = TRUE_SIGMA / info.scale  # noise std per real channel, model space
    residual = {name: background_noise(x, background) / sigma_n_model_true
                for name, x in samples.items()}
    residual["noisy data"] = background_noise(y, background) / sigma_n_model_true
    residual["denoised"] = background_noise(den, background) / sigma_n_model_true
    if not background.any():
        raise RuntimeError("the phantoms leave no background pixel to measure residual noise in")
    fig = save_grid([("clean |x|", ref[:k]), ("noisy input", noisy_mag[:k]),
                     ("denoised", den_mag[:k]),
                     ("posterior std", std_mag[:k]),
                     ("naive samples", to_display(samples["naive"][:k], True)),
                     ("ambient+cons.\nsamples", to_display(samples["ambient+consistency"][:k], True))],
                    out / "report.png", vmax=float(ref.max()),
                    cmaps={"posterior std": "magma"})

    wall = time.perf_counter() - t0
    figures = {
        "true_sigma_n": TRUE_SIGMA,
        "estimated_sigma_n_files": sigma_files,
        "estimated_sigma_n_training_set": float(info.sigma_n_data),
        "sigma_n_relative_error": float(info.sigma_n_data / TRUE_SIGMA - 1),
        "noise_method": info.noise_method,
        "noise_uncertainty": float(info.noise_uncertainty),
        "psnr_noisy_db": p_noisy, "psnr_denoised_db": p_den,
        "posterior_std_error_pearson": pearson,
        "background_noise_over_sigma_n": residual,
        "background_pixels": int(background.sum()),
        "images": int(y.shape[0]), "steps": res.step, "parameters": res.parameters,
        "train_seconds": t_train, "wall_seconds": wall,
    }
    table = _table([
        ("true sigma_n (k-space, per real channel)", f"{TRUE_SIGMA:.4f}"),
        ("estimated sigma_n, per file (RMS of 4)", f"{sigma_files:.4f}"),
        ("estimated sigma_n, training set", f"{info.sigma_n_data:.4f} ({info.noise_method}, "
                                            f"+/- {100 * info.noise_uncertainty:.1f}%)"),
        ("background noise / sigma_n: noisy data", f"{residual['noisy data']:.2f}"),
        ("background noise / sigma_n: naive samples", f"{residual['naive']:.2f}"),
        ("background noise / sigma_n: ambient+consistency samples",
         f"{residual['ambient+consistency']:.2f}"),
        ("background noise / sigma_n: denoised (posterior mean)", f"{residual['denoised']:.2f}"),
        ("Pearson: posterior std vs |error| of the posterior mean", f"{pearson:.2f}"),
        ("PSNR noisy vs clean (magnitude)", f"{p_noisy:.2f} dB"),
        ("PSNR denoised vs clean (magnitude)", f"{p_den:.2f} dB"),
        ("images / steps per prior / parameters", f"{y.shape[0]} / {res.step} / {res.parameters}"),
        ("wall time", f"{wall:.0f} s"),
    ])
    md = out / "report.md"
    md.write_text(
        "# ambient-med demo\n\nTwo priors trained on the same noisy multi-coil phantoms with the "
        "same network and step budget: `naive` (treats the noisy images as clean) and "
        "`ambient+consistency` (ambient-Tweedie + consistency, Daras et al. 2024). "
        "Denoised = posterior mean D(y, sigma_n) of the ambient prior.\n\n"
        "**Residual noise of the samples**: the std per real channel of each prior's samples in "
        f"the background ({int(background.sum())} pixels outside every phantom, where the clean "
        "image is below 0.1% of its peak), divided by the true sigma_n. A prior of the clean images gives "
        "about 0; a prior of the noisy images about the value of the noisy data, which should "
        "itself be about 1 (more means the preprocessing changed the noise the loss assumes).\n\n" + table +
        "\n\n![report](report.png)\n")
    (out / "report.json").write_text(json.dumps(figures, indent=2))
    return {"table": table, "markdown": md, "figure": fig, "figures": figures}


def load_protocol_sampler():
    from ..training.config import load_protocol

    return load_protocol("demo").sampler
