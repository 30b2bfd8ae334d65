"""Result files: where they go, how a smoke run names them, how they are written.

A ``--quick`` smoke run writes ``<name>_quick.*`` beside the real results (git ignores those),
so that it never overwrites them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .paths import ROOT

RESULTS = ROOT / "benchmarks" / "results"


def stem(name: str, quick: bool) -> str:
    """``name``, or ``name_quick`` for a smoke run."""
    return name + ("_quick" if quick else "")


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` through a temporary file and a rename: a reader never sees half a file,
    and a run stopped while writing leaves the previous one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: Path, data, indent: int = 1, **dumps) -> Path:
    """``data`` as JSON (``json.dumps`` options in ``dumps``), atomically, newline-terminated."""
    return write_atomic(path, json.dumps(data, indent=indent, **dumps) + "\n")


def settings(args) -> dict:
    """A run's command-line settings, JSON-ready (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def run_meta(threads: int | None = None) -> dict:
    """The date and torch version of a run, and its torch threads when given."""
    import torch

    meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
    if threads is not None:
        meta["threads"] = threads
    return meta
