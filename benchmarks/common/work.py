"""Work folders of long runs: what lets a stopped run resume, and what keys cached results.

Work folders hold state, not results (keep them out of git): a progress file per run, torch
checkpoints, results cached under a key of the settings that decide them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .results import write_json


def quick_folder(path: Path) -> Path:
    """The work folder of a ``--quick`` smoke run, beside the real one: ``<path>_quick``."""
    return path.with_name(path.name + "_quick")


class Progress:
    """A run's state file: steps done, CPU seconds spent, marks scored (``d``), rewritten
    atomically by ``save``."""

    def __init__(self, path: Path):
        self.path = path
        self.d = json.loads(path.read_text()) if path.exists() else {"steps": 0, "cpu_s": 0.0, "marks": {}}

    def save(self):
        write_json(self.path, self.d)


def save_torch(path: Path, obj) -> None:
    """``torch.save`` through a temporary file and a rename."""
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def settings_key(spec: dict, length: int) -> str:
    """A short key for everything that decides a cached result (SHA-1 of the sorted JSON)."""
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:length]


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file ([] if there is none)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def append_jsonl(path: Path, row: dict) -> None:
    """Append one row to a JSON-lines file (rows written so far survive a stopped run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
