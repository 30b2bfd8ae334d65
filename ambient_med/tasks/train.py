"""A training run as a folder: what ``ambient-med train`` does, as a library function.

    run_dir/
      config.yaml          the resolved protocol (after command-line overrides) + what the data decided
      checkpoints/         atomic, rotated training state (train.py)
      metrics.jsonl        one row per log interval
      prior.safetensors    the EMA prior with metadata, written atomically at the end
      samples.png          preview samples from the prior
      cache/               preprocessed items (unless data.cache_dir points elsewhere)

Never lose a run: an existing non-empty folder is refused unless ``resume`` (continue from the
newest checkpoint, with the configuration saved in the folder) or ``overwrite`` (delete and
start again; the preprocessing cache in ``cache/`` is kept, its entries are keyed by file and
settings). Under ``torchrun`` every rank trains; only rank 0 writes.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import yaml

from ..diffusion.losses import LossConfig, sure_noise_check
from ..diffusion.networks import EDMDenoiser, NetworkConfig, count_parameters
from ..errors import AmbientMedError, ConfigError, DataError
from ..io.discover import discover
from ..prior import AmbientPrior, PriorMetadata
from ..training.autoprotocol import check_reader, choose_protocol
from ..training.checkpoint import list_checkpoints
from ..training.config import Protocol, apply_overrides, load_protocol, load_resolved, save_resolved
from ..training.loop import TrainResult, train
from ..utils import resolve_device

# protocols with a CPU-sized twin, chosen when the protocol comes from the data and the device is a CPU
CPU_PRESETS = {"microscopy-2d": "microscopy-2d-cpu"}


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE, RANK,
    MASTER_ADDR, ...): NCCL on CUDA, gloo on CPU. Returns ``(rank, world_size)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not torch.distributed.is_available():
        return 0, 1
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend=backend)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def _barrier():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber a run. Read-only, so that every rank can call it and agree."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pass one")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    # a folder holding only the preprocessing cache (a run that failed early) counts as empty
    nonempty = out.is_dir() and any(p.name != "cache" for p in out.iterdir())
    if resume:
        if not (out / "config.yaml").is_file():
            raise ConfigError(f"--resume: {out} holds no run to resume (no config.yaml)")
    elif nonempty and not overwrite:
        raise ConfigError(f"--out {out} exists and is not empty; pass --resume to continue that "
                          "run or --overwrite to replace it")


def load_data(paths: list[str], protocol: Protocol, sigma_n: str | float,
              cache_dir: str | Path | None = None):
    """Files -> (dataset, info) through ``training.datasets.build_training_set``.

    Preprocessing (whitening, ESPIRiT maps, coil combination) costs about a second per slice,
    far more than a training step, so it is cached on disk (``data.cache_dir``, else
    ``cache_dir``, by default the run folder's ``cache/``) and the cache is filled *before*
    training: the loop then only reads small tensors (data-loading share well under 10%)."""
    from ..training.cache import AtomicPersistentDataset, warm_cache
    from ..training.datasets import build_training_set

    d = protocol.data
    cache = d.cache_dir or cache_dir
    try:
        dataset, info = build_training_set(
            paths, sigma_n=sigma_n, kind=d.kind, spatial_dims=d.spatial_dims,
            patch_size=tuple(d.patch_size) if d.patch_size else None, cache_dir=cache,
            coil_maps=d.coil_maps, num_workers=min(d.num_workers, os.cpu_count() or 1),
            noise_model=d.noise_model, noise_estimator=d.noise_estimator, n_coils=d.n_coils,
            noise_map=d.noise_map, reorient=d.reorient)
    except ValueError as e:
        if isinstance(e, AmbientMedError):
            raise
        raise ConfigError(f"{protocol.source}: {e}") from None
    base = getattr(dataset, "data", None)   # the cached stage under the random-patch stage
    if cache is not None and d.num_workers == 0 and isinstance(base, AtomicPersistentDataset):
        warm_cache(base, 0)                 # build_training_set warms only with workers
    _barrier()
    return dataset, info


def check_fit(protocol: Protocol, info) -> None:
    """Refuse a protocol that cannot train on these data, before any compute is spent."""
    src = protocol.source
    if info.spatial_dims != protocol.data.spatial_dims or len(info.shape) != protocol.data.spatial_dims:
        raise ConfigError(f"protocol {protocol.name} is for {protocol.data.spatial_dims}D data but "
                          f"the data are {len(info.shape)}D (shape {list(info.shape)}); "
                          f"choose a {len(info.shape)}D protocol")
    m = 2 ** (len(protocol.network.features) - 1)
    bad = [n for n in info.shape if n % m]
    if bad:
        raise ConfigError(f"image size {list(info.shape)} is not divisible by {m}, the size multiple "
                          f"of the network in {src} ({len(protocol.network.features)} levels); "
                          "set data.patch_size or use fewer network.features")
    if protocol.train.batch_size < 1 or protocol.train.steps < 1:
        raise ConfigError("--steps and --batch-size must be at least 1")


def probe_first_item(dataset, info) -> None:
    """Run the whole preprocessing on one item before training, so that a protocol that does
    not fit the data fails here with one line instead of inside a DataLoader worker."""
    try:
        item = dataset[0]
    except AmbientMedError:
        raise
    except (RuntimeError, ValueError, IndexError) as e:
        root = e
        while root.__cause__ is not None:
            root = root.__cause__
        raise DataError(None, f"preprocessing the first item failed ({str(root).splitlines()[0]}); "
                              "check data.patch_size and the protocol against the data") from None
    got = tuple(item["image"].shape)
    if got != (info.channels, *info.shape):
        raise DataError(None, f"items have shape {list(got)}, expected "
                              f"{[info.channels, *info.shape]}; check data.patch_size")


def build_model(protocol: Protocol, info) -> tuple[EDMDenoiser, LossConfig]:
    net = asdict(protocol.network)
    net.update(spatial_dims=info.spatial_dims, channels=info.channels, sigma_data=info.sigma_data)
    loss = asdict(protocol.loss)
    loss["sigma_data"] = info.sigma_data
    try:
        return EDMDenoiser(NetworkConfig(**net)), LossConfig(**loss)
    except ValueError as e:
        raise ConfigError(f"{protocol.source}: {e}") from None


def describe_noise(info) -> str:
    """One line: the noise model the training images were stabilised with and its parameters
    (or the Gaussian ``sigma_n``), as ``--sigma-n auto`` chose them."""
    d = getattr(info, "noise", None)
    if not d:
        return (f"noise model: gaussian, sigma_n = {info.sigma_n_data:.6g} per real channel "
                f"(data units; {info.noise_method})")
    params = ", ".join(f"{k} = {v:.6g}" if isinstance(v, float) else f"{k} = {v}"
                       for k, v in d.items() if k != "name")
    more = len(getattr(info, "noise_files", {}) or {})
    return (f"noise model: {d['name']} ({params}; {info.noise_method}"
            + (f"; first of {more} files, each fitted on its own" if more > 1 else "")
            + "); training on variance-stabilised images, sigma_n = 1")


def write_prior(model: EDMDenoiser, info, protocol: Protocol, result: TrainResult,
                path: Path) -> Path:
    kind = info.kind
    if kind == "kspace":  # k-space is combined into complex images (or RSS magnitude without maps)
        kind = "complex" if protocol.data.coil_maps and info.channels % 2 == 0 else "magnitude"
    meta = PriorMetadata(
        network=model.config.to_dict(), data_kind=kind, sigma_n_data=float(info.sigma_n_data),
        sigma_n_model=float(info.sigma_n_model), scale=float(info.scale),
        noise_model=getattr(info, "noise_model", protocol.data.noise_model),
        noise=getattr(info, "noise", None),
        training={"image_shape": list(info.shape), "steps": result.step, "protocol": protocol.name,
                  "objective": protocol.loss.objective, "noise_method": info.noise_method,
                  "noise_uncertainty": float(info.noise_uncertainty), "files": len(info.files),
                  "items": getattr(info, "n_items", None), "n_coils": getattr(info, "n_coils", None),
                  "rotation_invariant": bool(protocol.data.rotation_invariant),
                  "final_loss": result.history[-1]["loss"] if result.history else None})
    return AmbientPrior(model, meta).save(path, overwrite=True)


def write_previews(prior: AmbientPrior, protocol: Protocol, path: Path, n: int) -> Path | None:
    from ..io.images import save_grid, to_display

    if n <= 0:
        return None
    s = protocol.sampler
    g = torch.Generator(device=prior.device).manual_seed(0)
    x = prior.sample(n, steps=s.steps, mode=s.mode, stop=s.stop, sampler=s.sampler, generator=g,
                     space="model", **({"churn": s.churn} if s.sampler == "heun" else {}))
    return save_grid([("samples", to_display(x, prior.metadata.data_kind == "complex"))], path)


@dataclass
class RunResult:
    out: Path
    step: int
    interrupted: bool
    info: object
    prior_path: Path | None = None
    preview_path: Path | None = None
    parameters: int = 0
    history: list = field(default_factory=list)
    model: EDMDenoiser | None = None
    dataset: object = None


def run_training(data: list[str], out: str | Path, *, protocol: str | Path | None = None,
                 sigma_n: str | float | None = None, steps: int | None = None,
                 batch_size: int | None = None, device: str = "auto", resume: bool = False,
                 n_coils: int | None = None, noise_model: str | None = None,
                 noise_estimator: str | None = None, overwrite: bool = False, previews: int | None = None,
                 on_start: Callable[[Protocol, object, int], None] | None = None,
                 callback: Callable[[int, dict], None] | None = None,
                 handle_signals: bool = True, stop_after: int | None = None,
                 log: Callable[[str], None] | None = None) -> RunResult:
    """Everything ``ambient-med train`` does. ``on_start(protocol, info, start_step)`` and
    ``callback(step, metrics_row)`` let the CLI show progress (called on rank 0 only).

    ``protocol=None`` chooses one from the data (:func:`ambient_med.training.autoprotocol.choose_protocol`)
    and says so through ``log``; the protocol's ``data.reader`` refuses files of another format."""
    out = Path(out)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    check_out_dir(out, resume, overwrite)
    rank, world = init_distributed(dev)

    if resume:
        proto = load_resolved(out / "config.yaml")
        saved = (yaml.safe_load((out / "config.yaml").read_text()) or {}).get(
            "resolved_from_data", {})
        if sigma_n is None and "sigma_n_data" in saved:  # the same sigma_n as the first run
            sigma_n = saved["sigma_n_data"]
    else:
        if protocol is None:
            name, why = choose_protocol(discover(list(data)))
            if dev.type == "cpu" and name in CPU_PRESETS:
                name, why = CPU_PRESETS[name], f"{why}; on a CPU its smaller preset"
            if log is not None and rank == 0:
                log(f"protocol: {name} (chosen from the data: {why}; pass --protocol to choose)")
            protocol = name
        proto = load_protocol(protocol)
    check_reader(proto.data.reader, proto.name, discover(list(data)))
    proto = apply_overrides(proto, {"train": {"steps": steps, "batch_size": batch_size,
                                              "num_workers": min(proto.train.num_workers,
                                                                 os.cpu_count() or 1)},
                                    "data": {"sigma_n": sigma_n, "n_coils": n_coils,
                                             "noise_model": noise_model,
                                             "noise_estimator": noise_estimator}})
    dataset, info = load_data(list(data), proto, proto.data.sigma_n, cache_dir=out / "cache")
    if len(dataset) == 0:
        raise DataError(None, "the dataset is empty")
    check_fit(proto, info)
    if log is not None and rank == 0:
        log(describe_noise(info))
    probe_first_item(dataset, info)
    short = max(proto.train.steps // 10, 1)
    if not resume and proto.train.lr_warmup > short:
        if log is not None and rank == 0:
            log(f"learning-rate warm-up: {short} steps (a tenth of the run; the protocol says "
                f"{proto.train.lr_warmup})")
        proto = apply_overrides(proto, {"train": {"lr_warmup": short}})
    if len(dataset) < proto.train.batch_size * world:
        raise ConfigError(f"the dataset has {len(dataset)} images, fewer than one batch "
                          f"({proto.train.batch_size} x {world} processes), and the protocol trains on "
                          "whole images (data.patch_size: null); lower --batch-size, or set "
                          "data.patch_size to train on random patches of them")
    # Identical initial weights on every rank: DDP broadcasts rank 0's parameters, but train()
    # copies the EMA before wrapping the model, so the ranks must start equal already.
    torch.manual_seed(proto.train.seed)
    model, loss_cfg = build_model(proto, info)

    start = 0
    if resume:
        ck = list_checkpoints(out / "checkpoints")
        start = ck[-1][0] if ck else 0
    if rank == 0:
        if overwrite and out.exists():  # replace the run, keep the (validated) cache
            for p in out.iterdir():
                if p.name != "cache":
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        out.mkdir(parents=True, exist_ok=True)
        save_resolved(proto, out / "config.yaml", extra=info.to_dict())
        if on_start is not None:
            on_start(proto, info, start)
    _barrier()

    result = train(model, dataset, loss_cfg, proto.train, run_dir=out, resume=resume, device=dev,
                   handle_signals=handle_signals, callback=callback if rank == 0 else None,
                   stop_after=stop_after)
    res = RunResult(out=out, step=result.step, interrupted=result.interrupted, info=info,
                    parameters=count_parameters(model), history=result.history, model=result.model,
                    dataset=dataset)
    if rank == 0 and log is not None:
        sure = [row["sure"] for row in result.history if "sure" in row]
        warning = sure_noise_check(sure, loss_cfg.sigma_data, float(info.sigma_n_model))
        if warning:
            log(warning)
    if rank == 0 and not result.interrupted and result.step >= proto.train.steps:
        res.prior_path = write_prior(result.model, info, proto, result, out / "prior.safetensors")
        n = proto.sampler.previews if previews is None else previews
        prior = AmbientPrior.load(res.prior_path, device=dev)
        res.preview_path = write_previews(prior, proto, out / "samples.png", n)
    _barrier()
    return res
