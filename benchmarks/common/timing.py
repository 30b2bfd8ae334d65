"""Timing and memory on a CPU or a CUDA device: synchronisation, peak memory, what the machine
is, and a failed measurement (out of memory among others) kept as a result."""

from __future__ import annotations

import os
import platform
import traceback

import torch


def sync(dev: torch.device) -> None:
    """Wait for the device's queued work (CUDA)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_peak(dev: torch.device) -> None:
    """Start a new peak-memory measurement (CUDA)."""
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak_mb(dev: torch.device) -> float | None:
    """Peak memory since ``reset_peak`` in MB (CUDA; None on a CPU)."""
    return torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None


def device_info(dev: torch.device) -> dict:
    """What the measurements ran on: device, versions, cores, threads, load."""
    import monai

    info = {"device": dev.type, "torch": torch.__version__, "monai": monai.__version__,
            "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0]}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    try:
        import sigpy

        info["sigpy"] = sigpy.__version__
    except ImportError:
        pass
    return info


def oom(e: BaseException) -> bool:
    """Whether ``e`` is an out-of-memory error."""
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def guarded(fn, *a, **k) -> dict:
    """``fn(*a, **k)``, or ``{"error": ...}`` if it fails (out of memory: does not fit)."""
    try:
        return fn(*a, **k)
    except Exception as e:  # noqa: BLE001 - a failed row is a result (OOM: does not fit)
        if oom(e):
            torch.cuda.empty_cache()
            return {"error": "out of memory"}
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
