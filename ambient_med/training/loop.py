"""The training loop as a library function: AdamW, EMA, gradient clipping, mixed precision on
CUDA, atomic checkpoints with exact resume, ``metrics.jsonl``, optional DDP, and the speed options
of :mod:`ambient_med.training.speed` (channels-last, guarded ``torch.compile``, gradient checkpointing,
fused EMA), each a ``TrainConfig`` key.

Exact resume: every source of randomness is either the loop's own ``torch.Generator`` (noise
levels and noise, saved in the checkpoint) or the data order, which is a pure function of
``(seed, epoch)`` (``ResumableSampler``). A run stopped after step ``k`` and resumed therefore
continues bit-for-bit like an uninterrupted one (on the same device and library versions).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..diffusion.distill import CleanCache
from ..diffusion.losses import LossConfig
from ..diffusion.networks import EDMDenoiser
from ..diffusion.objective import objective_loss
from .ema import ema_update
from .speed import GuardedCompile, channels_last, gradient_checkpointing, spatial_dims_of
from .state import NonFiniteLossError, RunState  # noqa: F401 (NonFiniteLossError: re-exported)


@dataclass
class TrainConfig:
    steps: int = 10_000
    batch_size: int = 32
    lr: float = 2e-4
    lr_warmup: int = 200
    # after the warm-up: "constant", or "cosine" down to lr_final * lr at the last step (short
    # runs end sharper: the last steps average less gradient noise into the weights)
    lr_schedule: str = "constant"
    lr_final: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    mixed_precision: bool = True      # bf16 autocast, CUDA only
    num_workers: int = 0
    # speed options (ambient_med/speed.py); each acts on the step, none changes the math beyond
    # float round-off; the defaults follow benchmarks/gpu.py (benchmarks/results/gpu*)
    channels_last: bool = False       # NHWC / NDHWC weights and activations
    compile: str = "off"              # torch.compile of the denoiser: off | default | reduce-overhead | max-autotune
    grad_checkpointing: bool = False  # recompute each UNet block in backward: less memory, more compute
    fused_ema: bool = True            # one multi-tensor EMA update instead of one per parameter

    def __post_init__(self):
        from .speed import COMPILE_MODES

        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 0 <= self.lr_final <= 1:
            raise ValueError(f"lr_final is a fraction of lr in [0, 1], got {self.lr_final}")

    def to_dict(self) -> dict:
        return asdict(self)


class TensorDataset(Dataset):
    """In-memory images ``(N, C, *spatial)`` with per-sample ``sigma_n`` (and optional clean
    images, for the ``clean`` oracle in benchmarks)."""

    def __init__(self, images: torch.Tensor, sigma_n: float | torch.Tensor,
                 clean: torch.Tensor | None = None):
        self.images = images
        self.sigma_n = torch.as_tensor(sigma_n, dtype=torch.float32).expand(images.shape[0]).clone()
        self.clean = clean

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        item = {"image": self.images[i], "sigma_n": self.sigma_n[i]}
        if self.clean is not None:
            item["clean"] = self.clean[i]
        return item

    def get_batch(self, idx: list[int]) -> dict:
        """A whole batch by one fancy index: per-item fetching and collating costs more than a
        small network's GPU step."""
        return self[torch.as_tensor(idx)]


class ResumableSampler(Sampler[int]):
    """An endless stream of indices, a fresh permutation per epoch drawn from ``(seed, epoch)``,
    split across ``world_size`` ranks, starting at ``start`` (the number already consumed by
    this rank), so that resuming needs only the step count.

    With ``keyed`` it yields ``DrawKey(index, epoch, seed)`` instead of ``index``: datasets with
    random per-draw stages (patches, see ``ModelSpaceSet``) then draw them as a pure function
    of the key, never from a generator's history, so workers, ranks and resumed runs agree."""

    def __init__(self, n: int, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1,
                 keyed: bool = False):
        if n == 0:
            raise ValueError("the dataset is empty")
        self.n, self.seed, self.start, self.rank, self.world = n, seed, start, rank, world_size
        self.per_rank = max(n // world_size, 1)
        self.keyed = keyed

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g)
            if self.n >= self.world:
                perm = perm[self.rank: self.per_rank * self.world: self.world]
            if self.keyed:
                from .datasets import DrawKey

                yield from (DrawKey(i, epoch, self.seed) for i in perm[offset:].tolist())
            else:
                yield from perm[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs this for len(loader)
        return 2**62


@dataclass
class TrainResult:
    model: EDMDenoiser          # the EMA weights
    step: int
    history: list[dict] = field(default_factory=list)
    interrupted: bool = False


def _batches(dataset: Dataset, sampler: ResumableSampler, cfg: TrainConfig, device):
    """Batches in ``sampler`` order: in-memory datasets with ``get_batch`` are indexed directly,
    anything else goes through a DataLoader (workers, pinned memory)."""
    if hasattr(dataset, "get_batch") and cfg.num_workers == 0:
        def gen():
            it = iter(sampler)
            while True:
                yield dataset.get_batch([next(it) for _ in range(cfg.batch_size)])
        return gen()
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                      num_workers=cfg.num_workers, drop_last=True,
                      pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0)


def _dist():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _lr(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``lr_warmup`` steps, then constant or cosine to ``lr_final * lr``."""
    warm = min(1.0, (step + 1) / max(cfg.lr_warmup, 1))
    if cfg.lr_schedule == "constant" or step < cfg.lr_warmup:
        return cfg.lr * warm
    t = (step - cfg.lr_warmup) / max(cfg.steps - 1 - cfg.lr_warmup, 1)
    return cfg.lr * (cfg.lr_final + (1 - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to save and stop after the current step."""

    def __init__(self, enabled: bool):
        self.stop = False
        self._old = {}
        if enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._old[sig] = signal.signal(sig, self._handle)
                except ValueError:  # not in the main thread
                    pass

    def _handle(self, signum, frame):
        if self.stop:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.stop = True

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(model: EDMDenoiser, dataset: Dataset, loss_cfg: LossConfig, cfg: TrainConfig, *,
          run_dir: str | Path | None = None, resume: bool = False,
          device: str | torch.device | None = None, handle_signals: bool = False,
          callback: Callable[[int, dict], None] | None = None,
          stop_after: int | None = None) -> TrainResult:
    """Train ``model`` on ``dataset`` items ``{"image", "sigma_n"[, "clean"]}`` (model space).

    ``run_dir`` gets ``checkpoints/`` and ``metrics.jsonl``; with ``resume`` the newest
    checkpoint there is restored (model, EMA, optimizer, RNG, step). ``stop_after`` ends the
    run early at that step with a checkpoint (used by tests of resume). ``callback(step, row)``
    receives each logged metrics row (for progress bars). Returns the EMA model.

    A NaN or infinite loss or gradient raises :class:`NonFiniteLossError` at the next log,
    checkpoint or final step, before anything computed from it is written: the checkpoints on
    disk (and hence ``--resume``) stay those of the last good state, and no prior is made.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    rank, world = _dist()
    model = model.to(device)
    if world > 1:  # rank 0's initial weights everywhere before the EMA copy is taken
        for t in model.state_dict().values():
            torch.distributed.broadcast(t, 0)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    cache = (CleanCache(loss_cfg.distill_cache * cfg.batch_size)
             if loss_cfg.objective == "ambient+consistency" and "distill" in loss_cfg.consistency_variant
             else None)
    run_dir = Path(run_dir) if run_dir is not None else None
    run = RunState(model, ema, opt, torch.Generator(device=device).manual_seed(cfg.seed * 7919 + rank), cache,
                   cfg, loss_cfg, run_dir, rank, world, device)
    if resume:
        run.restore()
    teacher = ema if loss_cfg.teacher == "ema" else None

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    compiled = GuardedCompile(net, cfg.compile) if cfg.compile != "off" else None
    if compiled is not None:
        net = compiled
    sampler = ResumableSampler(len(dataset), cfg.seed, start=run.step * cfg.batch_size, rank=rank,
                               world_size=world, keyed=getattr(dataset, "keyed_draws", False))
    loader = _batches(dataset, sampler, cfg, device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if cfg.mixed_precision and device.type == "cuda" else torch.autocast("cpu", enabled=False))

    def loss_of(y, sigma_n, clean, progress, generator, cache):
        with autocast:
            return objective_loss(net, y, sigma_n, loss_cfg, progress=progress, clean=clean,
                                  generator=generator, teacher=teacher, cache=cache)

    def warm_up(y, sigma_n, clean):
        """Forward and backward on the first batch's shapes, in both phases of the objective,
        with a throwaway generator and no optimizer step: compiles every graph the steps use."""
        g = torch.Generator(device=device).manual_seed(0)
        phases = [1.0] + ([0.0] if loss_cfg.objective == "ambient+consistency"
                          and loss_cfg.consistency_start > 0 else [])
        for progress in phases:
            loss_of(y, sigma_n, clean, progress, g, CleanCache(cache.capacity) if cache is not None else None
                    ).loss.backward()
        opt.zero_grad(set_to_none=True)

    if run_dir is not None and rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    log = _MetricsLog(run_dir / "metrics.jsonl" if (run_dir is not None and rank == 0) else None, callback)
    stop = _StopFlag(handle_signals)
    stopping, warmed = False, False
    last = min(stop_after if stop_after is not None else cfg.steps, cfg.steps)
    speed = contextlib.ExitStack()
    try:
        speed.enter_context(channels_last([model, ema], cfg.channels_last, spatial_dims_of(model)))
        speed.enter_context(gradient_checkpointing(model, cfg.grad_checkpointing))
        it = iter(loader)
        while run.step < last:
            t0 = time.perf_counter()
            batch = next(it)
            y = batch["image"].to(device, non_blocking=True)
            sigma_n = batch["sigma_n"].to(device, dtype=y.dtype)
            clean = batch["clean"].to(device) if "clean" in batch else None
            log.t_data += time.perf_counter() - t0
            if compiled is not None and not warmed:
                compiled.warm_up(lambda: warm_up(y, sigma_n, clean))
                warmed, log.t_log = True, time.perf_counter()  # compile time is not step time
            for g in opt.param_groups:
                g["lr"] = _lr(cfg, run.step)
            out = loss_of(y, sigma_n, clean, run.step / cfg.steps, run.gen, cache)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            run.step += 1
            ema_update(ema, model, min(cfg.ema_decay, (1 + run.step) / (10 + run.step)), fused=cfg.fused_ema)
            run.watch(out.loss, gnorm)
            log.add(out, gnorm)
            if run.step % cfg.log_every == 0 or run.step == cfg.steps:
                run.check_finite()
                log.write(run.step, _lr(cfg, run.step - 1))
            stopping = _agree(stop.stop, world, device)
            if run.step % cfg.checkpoint_every == 0 or stopping:
                run.checkpoint()
            if stopping:
                break
        if not stopping and (run.step == cfg.steps or run.step == stop_after):
            run.checkpoint()
        run.check_finite()  # also without a run folder: never return NaN weights as a result
    finally:
        speed.close()  # contiguous weights again (safetensors), blocks unwrapped
        stop.restore()
        log.close()
    return TrainResult(model=ema, step=run.step, history=log.history, interrupted=stopping)


def _agree(stop: bool, world: int, device) -> bool:
    """One snapshot of the stop flag, agreed by all ranks: a signal may reach one rank only, or
    the ranks at different steps, and a rank that stops alone leaves the others waiting forever
    in the next collective."""
    if world > 1:
        flag = torch.tensor([float(stop)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())
    return stop


class _MetricsLog:
    """Loss parts summed on the device (a float() per step would sync the GPU every step) and
    written as one ``metrics.jsonl`` row per ``log_every`` steps; ``callback(step, row)`` sees it."""

    def __init__(self, path: Path | None, callback):
        self.file = open(path, "a") if path is not None else None
        self.callback, self.history = callback, []
        self.acc, self.n, self.t_log, self.t_data = {}, 0, time.perf_counter(), 0.0

    def add(self, out, grad_norm: torch.Tensor) -> None:
        self.acc["loss"] = self.acc.get("loss", 0.0) + out.loss.detach().double()
        self.acc["grad_norm"] = self.acc.get("grad_norm", 0.0) + grad_norm.detach().double()
        for k, v in out.parts.items():
            self.acc[k] = self.acc.get(k, 0.0) + v.double()
        self.n += 1

    def write(self, step: int, lr: float) -> None:
        dt = time.perf_counter() - self.t_log
        row = {"step": step, **{k: float(v) / self.n for k, v in self.acc.items()}, "lr": lr,
               "steps_per_sec": self.n / dt, "data_share": self.t_data / dt, "time": time.time()}
        self.history.append(row)
        if self.file is not None:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        if self.callback is not None:
            self.callback(step, row)
        self.acc, self.n, self.t_log, self.t_data = {}, 0, time.perf_counter(), 0.0

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
