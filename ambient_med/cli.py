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

from .errors import AmbientMedError

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
            _fail("out of memory: lower --batch-size or data.patch_size, or use a smaller network "
                  "(denoise, recon: a smaller --tile; a whole frame through a network with attention "
                  f"needs memory quadratic in its pixels) ({str(e).splitlines()[0][:120]})")
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
    from .tasks.progress import TrainProgress
    from .tasks.train import run_training
    from .training.config import parse_sigma_n

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
    from .io.discover import discover
    from .tasks.noise import describe, estimate_noise

    with user_errors():
        for path in discover(data):
            d = estimate_noise(path, noise_model=noise_model, n_coils=n_coils, estimator=noise_estimator)
            typer.echo(json.dumps(d) if as_json else describe(d))


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
    from .tasks.sample import write_samples

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
    from .tasks.recon import reconstruct_file

    with user_errors():
        written = reconstruct_file(prior, data, out, mask=mask, method=method, samples=samples, steps=steps,
                                   sigma=sigma, seed=seed, tile=tile, whiten=whiten, device=device,
                                   overwrite=overwrite, progress=progress, log=lambda m: typer.echo(m, err=True))
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
    from .prior import AmbientPrior, prior_file
    from .tasks.audit import audit as run_audit
    from .tasks.audit import load_images
    from .utils import resolve_device

    with user_errors():
        if out is not None and out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists")
        pr = AmbientPrior.load(prior, device=resolve_device(device))
        train_x = load_images(data, pr)
        held = None if heldout is None else load_images(heldout, pr)
        report = run_audit(pr, train_x, heldout=held, n_samples=n_samples, steps=steps, seed=seed)
        report.update(prior=str(prior_file(prior)), data=str(data))
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
    input: Path = typer.Option(..., "--input", "-i", help="Image file (.tif/.tiff stack or frame, .png, .nii/.nii.gz, .npy, .h5/.hdf5) or a folder of them."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file, same format and dtype (a folder for a folder); the std map goes to OUT_std.EXT."),
    sigma: str = typer.Option("auto", "--sigma", help="'auto' (fit the prior's noise model on the input), 'prior' (the training data's), or the noise std in data units."),
    samples: int = typer.Option(0, "--samples", min=0, help="Posterior samples (>= 2: their std is the std map unless --uncertainty says otherwise)."),
    uncertainty: Optional[str] = typer.Option(None, "--uncertainty", help="How OUT_std is made: tweedie (default: from the network at the input's noise level, no sampling) | samples (std of --samples posterior samples) | none."),
    tile: Optional[int] = typer.Option(None, "--tile", min=8, help="Tile size for images larger than it (default: the training patch)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    save_samples: bool = typer.Option(False, "--save-samples", help="Also write each posterior sample as OUT_sample1.EXT, ... (needs --samples)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
):
    """Denoise an image with a prior: posterior mean (and std map) in the input's units and format."""
    from .tasks.denoise import denoise_file
    from .tasks.progress import Bar
    from .utils import parse_sigma

    with user_errors():
        with Bar("denoise", progress) as bar:
            paths = denoise_file(prior, input, out, sigma=parse_sigma(sigma, "--sigma", ("auto", "prior")),
                                 samples=samples, uncertainty=uncertainty, tile=tile, device=device,
                                 overwrite=overwrite, total=bar.total, log=lambda m: typer.echo(m, err=True),
                                 progress=bar.advance, save_samples=save_samples)
        for p in paths:
            typer.echo(f"wrote {p}")


# -------------------------------------------------------------------------------------- info
@app.command()
def info(prior: Path = typer.Argument(..., help="A prior.safetensors file (or its run folder)."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Describe a prior file: data kind, noise levels, scale, network, parameter count."""
    from .tasks.sample import describe_prior

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
    from .tasks.demo import run_demo

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
