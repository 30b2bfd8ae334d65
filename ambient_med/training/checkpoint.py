"""Resumable training state on disk: atomic writes, rotation, safe loading.

A checkpoint is a ``torch.save`` of plain tensors, numbers and strings only, so it is loaded with
``weights_only=True`` (no unpickling of code). It is written to a temporary file in the same
folder, flushed to disk and renamed over the target, so a kill at any moment leaves either the
old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

_NAME = re.compile(r"^step_(\d{9})\.pt$")


def atomic_save(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save_checkpoint(state: dict, folder: Path, step: int, keep: int = 2) -> Path:
    """Write ``step_000000123.pt`` atomically, then delete all but the newest ``keep``."""
    path = Path(folder) / f"step_{step:09d}.pt"
    atomic_save(state, path)
    for _, old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_latest(folder: Path, map_location="cpu") -> dict | None:
    """The newest readable checkpoint in ``folder`` (a corrupt newest one falls back to older)."""
    for _, path in reversed(list_checkpoints(folder)):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception:  # noqa: BLE001 - a torn or foreign file: try the previous one
            continue
    return None
