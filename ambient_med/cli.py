"""``ambient-med``: the command line. Thin: parse options, call library functions, print.

Exit codes: 0 success; 2 a user error (bad file, option, protocol, out of memory), reported as
ONE line on stderr, never a traceback; 3 training was interrupted (Ctrl-C/SIGTERM) after saving
a checkpoint, so that job scripts do not mistake a stopped run for a finished one.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import List, Optional

import typer

from .errors import AmbientMedError, ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train diffusion priors of clean images from noisy MRI and microscopy data.")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 3
ESTIMATOR_HELP = ("auto | kspace-corners | wavelet-mad | piesno | effective-chi (magnitude: the effective "
                  "non-integer N and sigma of air that is wider than chi(2 n_coils) noise, e.g. parallel imaging)")


def _fail(msg: str) -> None:
    typer.echo(f"error: {' '.join(str(msg).split())}", err=True)
    raise typer.Exit(EXIT_USER_ERROR)


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@contextlib.contextmanager
def user_errors():
    """Turn every foreseeable failure into one line on stderr and exit code 2."""
    try:
        yield
    except typer.Exit:
        raise
    except AmbientMedError as e:
        _fail(str(e))
    except FileExistsError as e:
        _fail(f"{e}; pass --overwrite to replace it")
    except EOFError as e:   # click would print a bare "Aborted." for it
        _fail(f"a file ended early: it is truncated ({e or 'end of file'})")
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        _fail(f"{where}{e.strerror or e}")
    except (RuntimeError, MemoryError) as e:
        if _is_oom(e):
            _fail("out of memory: lower --batch-size or data.patch_size, or use a smaller "
                  f"network ({str(e).splitlines()[0][:120]})")
        raise
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)


# ------------------------------------------------------------------------------------- train
@app.command()
def train(
    data: List[str] = typer.Option(..., "--data", "-d", help="Files, folders or glob patterns (repeatable)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (config, checkpoints, prior)."),
    sigma_n: Optional[str] = typer.Option(None, "--sigma-n", help="'auto' or the noise std per real channel in data units (0 = clean). Default: the protocol's."),
    protocol: Optional[str] = typer.Option(None, "--protocol", "-p", help="Packaged protocol name or YAML file. Default: chosen from the data (k-space HDF5: fastmri-knee/brain-multicoil; NIfTI: nifti-3d), and printed."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps (overrides the protocol)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size per process."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing --out and start again."),
    previews: Optional[int] = typer.Option(None, "--previews", help="Number of preview samples (0 = none)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    n_coils: Optional[int] = typer.Option(None, "--n-coils", help="Receive coils N of magnitude (sum-of-squares) data; default: the protocol's, else the file's."),
    noise_model: Optional[str] = typer.Option(None, "--noise-model", help="auto | gaussian | rician | noncentral-chi (default: the protocol's)."),
    noise_estimator: Optional[str] = typer.Option(None, "--noise-estimator", help=ESTIMATOR_HELP + " (default: the protocol's)."),
):
    """Learn a clean-image prior from noisy data; writes OUT/prior.safetensors."""
    from .config import parse_sigma_n
    from .progress import TrainProgress
    from .run import run_training

    with user_errors():
        sn = None if sigma_n is None else parse_sigma_n(sigma_n)
        bar = TrainProgress(enabled=progress)
        try:
            res = run_training(data, out, protocol=protocol, sigma_n=sn, steps=steps,
                               batch_size=batch_size, device=device, resume=resume,
                               n_coils=n_coils, noise_model=noise_model, noise_estimator=noise_estimator,
                               overwrite=overwrite, previews=previews, on_start=bar.start,
                               callback=bar.update, log=lambda m: typer.echo(m, err=True))
        finally:
            bar.stop()
        import torch.distributed as dist
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if rank == 0:
            if res.interrupted:
                typer.echo(f"interrupted at step {res.step}: checkpoint saved in {out}/checkpoints; "
                           f"continue with --resume", err=True)
            else:
                typer.echo(f"prior: {res.prior_path}")
                if res.preview_path:
                    typer.echo(f"previews: {res.preview_path}")
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if res.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)


# ----------------------------------------------------------------------------- estimate-noise
@app.command("estimate-noise")
def estimate_noise(
    data: List[str] = typer.Argument(..., help="Files, folders or glob patterns."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of text."),
    n_coils: Optional[int] = typer.Option(None, "--n-coils", help="Receive coils N of magnitude (sum-of-squares) data (default: the file's, else 1: Rician)."),
    noise_model: str = typer.Option("auto", "--noise-model", help="auto (Poisson-Gaussian for TIFF stacks and frame folders, as train chooses) | gaussian | poisson-gaussian | rician | noncentral-chi"),
    noise_estimator: str = typer.Option("auto", "--noise-estimator", help=ESTIMATOR_HELP + "."),
):
    """Estimate the noise of each file with the model train will use, and say how."""
    from .io.discover import discover, open_source
    from .noise import estimate_noise_file

    with user_errors():
        for path in discover(data):
            src = open_source(path)
            if noise_model == "poisson-gaussian" or (noise_model == "auto" and _is_microscopy(src)):
                _echo_poisson_gaussian(path, src, as_json)
                continue
            est = estimate_noise_file(path, n_coils=n_coils, noise_model=noise_model, estimator=noise_estimator)
            if as_json:
                typer.echo(json.dumps({"file": str(path), "sigma": est.sigma, "method": est.method,
                                       "uncertainty": est.uncertainty,
                                       "noise_model": est.details.get("noise_model"),
                                       "n_coils": est.details.get("n_coils")}))
            else:
                typer.echo(f"{path}: sigma_n = {est.sigma:.6g} (+/- {100 * est.uncertainty:.1f}%, "
                           f"{est.method}, noise model {est.details.get('noise_model')})")


def _is_microscopy(src) -> bool:
    from .datasets import is_microscopy

    return is_microscopy(src)


def _echo_poisson_gaussian(path, src, as_json: bool) -> None:
    """The Poisson-Gaussian fit ``train`` makes (``datasets.fit_noise_model``), in a
    microscopist's units: gain in counts per photon, read noise in counts, photons at the median."""
    import numpy as np

    from .datasets import fit_noise_model

    if src.kind != "intensity":
        raise ConfigError(f"{path}: noise model poisson-gaussian is for intensity data (microscopy); "
                          f"this file holds {src.kind} data")
    m = fit_noise_model(src, path, "poisson-gaussian", None, "auto")
    idx = np.unique(np.linspace(0, len(src) - 1, min(16, len(src))).round().astype(int))
    median = float(np.median(np.concatenate([src.read(int(i)).ravel() for i in idx])))
    photons = (median - m.mu) / m.a
    d = {"file": str(path), "noise_model": "poisson-gaussian", "frames": len(src), "a": m.a, "b": m.b,
         "mu": m.mu, "read_noise_counts": float(np.sqrt(m.b)), "median_counts": median,
         "photons_at_median": photons, "method": m.details.get("method")}
    if as_json:
        typer.echo(json.dumps(d))
        return
    typer.echo(f"{path}: noise model poisson-gaussian, {len(src)} frame(s): gain a = {m.a:.4g} counts per "
               f"photon, read noise {np.sqrt(m.b):.4g} counts (offset {m.mu:.4g}); median intensity "
               f"{median:.4g} counts = {photons:.3g} photons. train stabilises it (generalised Anscombe) "
               f"to noise of std 1, the sigma_n = 1 it reports")


# ------------------------------------------------------------------------------------ sample
@app.command()
def sample(
    prior: Path = typer.Option(..., "--prior", help="A prior.safetensors file (or its run folder)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output: X.png, X.npy, or X (writes both)."),
    n: int = typer.Option(8, "--n", min=1, help="Number of samples."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1,
                                        help="Sampler steps (default: calibrated, heun 40, ancestral 128)."),
    mode: str = typer.Option("auto", "--mode", help="auto (stop at 0.5 sigma_n for a prior of noisy data, full for a clean one) | full (to 0) | truncated (stop at --stop x sigma_n, then one Tweedie step)."),
    stop: Optional[float] = typer.Option(None, "--stop", help="auto, truncated: the fraction of sigma_n to stop at (default 0.5 and 1)."),
    sampler: str = typer.Option("heun", "--sampler", help="heun | ancestral"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
):
    """Draw samples of the clean distribution; .npy holds them in data units."""
    from .prior_tools import write_samples

    with user_errors():
        for p in write_samples(prior, out, n=n, steps=steps, mode=mode, stop=stop, sampler=sampler, seed=seed,
                               device=device, overwrite=overwrite):
            typer.echo(f"wrote {p}")


# ------------------------------------------------------------------------------------- recon
@app.command()
def recon(
    prior: Path = typer.Option(..., "--prior", help="A prior.safetensors file (or its run folder) of complex images."),
    data: Path = typer.Option(..., "--data", "-d", help="Undersampled k-space: fastMRI-style .h5 (kspace + mask) or BART .cfl."),
    out: Path = typer.Option(..., "--out", "-o", help="Output: X.h5 (reconstruction_mean/_std), X.npy or X.nii.gz (plus X_std.*)."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Mask file (.npy or BART .cfl); default: the HDF5 'mask' dataset, else the acquired (non-zero) lines."),
    method: str = typer.Option("dc", "--method", help="dc (data consistency, one network call per step) | dps (guidance through the network)."),
    samples: int = typer.Option(8, "--samples", min=1, help="Posterior samples per slice (mean and std over them)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Sampler steps (default: the calibrated 128)."),
    sigma: str = typer.Option("auto", "--sigma", help="'auto' or the k-space noise std per real channel (data units)."),
    seed: int = typer.Option(0, "--seed"),
    tile: Optional[int] = typer.Option(None, "--tile", min=8, help="Run the network on overlapping tiles of this size for larger images (default: the training patch for --method dc, no tiles for dps)."),
    whiten: bool = typer.Option(False, "--whiten/--no-whiten", help="Whiten correlated coil noise with a covariance estimated from the acquired readout edges (default: the k-space is already white; the estimate takes any signal left at the edges for noise)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
):
    """Reconstruct undersampled multi-coil k-space with the prior: posterior mean and std map."""
    from .errors import AmbientMedError, ConfigError, DataError

    with user_errors():
        import numpy as np
        import torch

        from .prior import AmbientPrior
        from .prior_tools import _prior_path
        from .recon.files import output_paths, read_undersampled, write_reconstruction
        from .recon.samplers import RECON_STEPS
        from .utils import resolve_device

        if method not in ("dc", "dps"):
            raise ConfigError(f"--method must be 'dc' or 'dps', got {method!r}")
        try:
            sig = sigma if sigma == "auto" else float(sigma)
        except ValueError:
            raise ConfigError(f"--sigma must be 'auto' or a number, got {sigma!r}") from None
        if sig != "auto" and not (np.isfinite(sig) and sig > 0):
            raise ConfigError(f"--sigma must be a positive number, got {sigma}")
        for p in filter(None, output_paths(out)):
            if p.exists() and not overwrite:
                raise FileExistsError(f"{p} exists")
        dev = resolve_device(device)
        ppath = _prior_path(prior)
        pr = AmbientPrior.load(ppath, device=dev)
        m = pr.metadata
        if not pr.is_complex or m.channels != 2 or m.spatial_dims != 2:
            raise DataError(ppath, f"prior of {m.data_kind} {m.spatial_dims}-D images with "
                                   f"{m.channels} channel(s) does not match k-space data "
                                   "(needs single complex 2-D images: 2 real channels)")
        k, msk, where = read_undersampled(data, mask)
        typer.echo(f"{data}: {k.shape[0]} slice(s), {k.shape[1]} coil(s), {k.shape[2]}x{k.shape[3]}; "
                   f"mask from {where}, {100 * float(np.mean(np.broadcast_to(msk, k.shape[-msk.ndim:]) != 0)):.0f}% acquired", err=True)
        n_steps = steps or RECON_STEPS
        bar = None
        if progress:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            import sys

            bar = Progress(TextColumn("recon"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                           console=Console(stderr=True), transient=not sys.stderr.isatty())
            task = bar.add_task("recon", total=k.shape[0] * n_steps)
            bar.start()
        means, stds, sigmas = [], [], []
        g = torch.Generator(device=dev).manual_seed(seed)
        try:
            for i in range(k.shape[0]):     # one slice at a time: memory stays that of one slice
                cb = (lambda *a: bar.advance(task)) if bar is not None else None
                try:
                    r = pr.reconstruct(k[i], msk if msk.ndim < 4 else msk[min(i, msk.shape[0] - 1)],
                                       sigma=sig, method=method, n_samples=samples, steps=n_steps,
                                       generator=g, callback=cb, tile=tile, whiten=whiten)
                except AmbientMedError as e:
                    raise DataError(data, f"slice {i}: {getattr(e, 'problem', e)}") from None
                means.append(r["mean"][0].cpu().numpy())
                std = r["std"][0].cpu()
                stds.append(torch.sqrt(std.real ** 2 + std.imag ** 2).numpy())
                sigmas.append(r["sigma"])
        finally:
            if bar is not None:
                bar.stop()
        written = write_reconstruction(out, np.stack(means), np.stack(stds), overwrite=overwrite,
                                       attrs={"method": method, "samples": samples,
                                              "steps": n_steps, "sigma_k": float(np.mean(sigmas)),
                                              "prior": str(ppath)})
        for p in written:
            typer.echo(f"wrote {p}")


# ------------------------------------------------------------------------------------- audit
@app.command()
def audit(
    prior: Path = typer.Option(..., "--prior", help="A prior.safetensors file (or its run folder)."),
    data: Path = typer.Option(..., "--data", "-d", help="Training images in data units: .npy (N, [C,] *spatial), a TIFF stack, a folder of frames or a NIfTI volume."),
    heldout: Optional[Path] = typer.Option(None, "--heldout", help="Held-out images of the same kind (same formats), for the reconstruction attack."),
    n_samples: int = typer.Option(64, "--n-samples", min=1, help="Prior samples for the nearest-neighbour check."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Sampler steps (default: calibrated)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the JSON report here (default: print it)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
):
    """Memorisation audit: nearest-training-image correlation of samples, reconstruction attack."""
    from .audit import audit as run_audit, load_images
    from .prior import AmbientPrior
    from .prior_tools import _prior_path
    from .utils import resolve_device

    with user_errors():
        if out is not None and out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists")
        pr = AmbientPrior.load(_prior_path(prior), device=resolve_device(device))
        train_x = load_images(data, pr)
        held = None if heldout is None else load_images(heldout, pr)
        report = run_audit(pr, train_x, heldout=held, n_samples=n_samples, steps=steps, seed=seed)
        report.update(prior=str(_prior_path(prior)), data=str(data))
        text = json.dumps(report, indent=2)
        if out is None:
            typer.echo(text)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text + "\n")
            typer.echo(f"wrote {out}")


# ----------------------------------------------------------------------------------- denoise
@app.command()
def denoise(
    prior: Path = typer.Option(..., "--prior", help="A prior.safetensors file (or its run folder)."),
    input: Path = typer.Option(..., "--input", "-i", help="Image file: .tif/.tiff, .png, .nii/.nii.gz, .npy, .h5/.hdf5."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file, same format; the std map goes to OUT_std.EXT."),
    sigma: str = typer.Option("auto", "--sigma", help="'auto' (fit the prior's noise model on the input), 'prior' (the training data's), or the noise std in data units."),
    samples: int = typer.Option(0, "--samples", min=0, help="Posterior samples (>= 2: their std is the std map unless --uncertainty says otherwise)."),
    uncertainty: Optional[str] = typer.Option(None, "--uncertainty", help="How OUT_std is made: tweedie (default: from the network at the input's noise level, no sampling) | samples (std of --samples posterior samples) | none."),
    tile: Optional[int] = typer.Option(None, "--tile", min=8, help="Tile size for images larger than it (default: the training patch)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
):
    """Denoise an image with a prior: posterior mean (and std map) in the input's units and format."""
    from .denoise_io import denoise_file

    with user_errors():
        sig: str | float = sigma.strip().lower()
        if sig not in ("auto", "prior"):
            try:
                sig = float(sig)
            except ValueError:
                _fail(f"--sigma must be 'auto', 'prior' or a number, got {sigma!r}")
            if not sig > 0 or sig == float("inf"):
                _fail(f"--sigma must be a finite number > 0, got {sigma}")
        bar = {}

        def total(n):
            if progress:
                bar["b"] = typer.progressbar(length=n, label="denoising", file=__import__("sys").stderr)
                bar["b"].__enter__()

        try:
            paths = denoise_file(prior, input, out, sigma=sig, samples=samples,
                                 uncertainty=uncertainty, tile=tile, device=device,
                                 overwrite=overwrite, total=total, log=lambda m: typer.echo(m, err=True),
                                 progress=lambda k: bar["b"].update(k) if "b" in bar else None)
        finally:
            if "b" in bar:
                bar["b"].__exit__(None, None, None)
        for p in paths:
            typer.echo(f"wrote {p}")


# -------------------------------------------------------------------------------------- info
@app.command()
def info(prior: Path = typer.Argument(..., help="A prior.safetensors file (or its run folder)."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Describe a prior file: data kind, noise levels, scale, network, parameter count."""
    from .prior_tools import describe_prior

    with user_errors():
        d = describe_prior(prior)
        if as_json:
            typer.echo(json.dumps(d, indent=2, default=str))
            return
        for k, v in d.items():
            typer.echo(f"{k:>16}: {v}")


# -------------------------------------------------------------------------------------- demo
@app.command()
def demo(out: Path = typer.Option(Path("ambient-med-demo"), "--out", "-o", help="Demo folder."),
         steps: Optional[int] = typer.Option(None, "--steps", help="Training steps (default: the demo protocol's)."),
         device: str = typer.Option("auto", "--device"),
         overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing demo folder.")):
    """Phantoms with known noise -> estimate sigma_n -> train -> report (PNG + table)."""
    from .demo import run_demo

    with user_errors():
        t0 = time.perf_counter()
        report = run_demo(out, steps=steps, device=device, overwrite=overwrite,
                          log=lambda m: typer.echo(m, err=True))
        typer.echo(report["table"])
        typer.echo(f"report: {report['markdown']}  figure: {report['figure']}  "
                   f"({time.perf_counter() - t0:.0f} s)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
