"""On-disk cache for the slow preprocessing (coil maps + combination, about 1 s per slice).

:class:`AtomicPersistentDataset` is MONAI's ``PersistentDataset`` (which caches the result of
the transforms up to the first random one, one ``.pt`` file per item, named by a hash of the
item dict) with one change: each file is written to a temporary name *inside the cache
folder* and moved into place with ``os.replace``, an atomic rename on POSIX. MONAI writes to
the system temp folder and ``shutil.move``\\ s, which becomes a non-atomic copy when the cache
sits on another file system. So:

* data-loader workers and distributed ranks can fill one cache concurrently (two writers of
  the same item both produce a complete file; the last rename wins);
* an interrupted run leaves only complete files (plus stray ``.tmp`` files, ignored), and the
  next run computes only what is missing: resumable;
* invalidation: items carry the source file's size and modification time
  (:func:`source_signature`) and a hash of the preprocessing settings, and the cache file
  name hashes the whole item, so a changed file or setting is a cache miss. Stale files are
  not deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from copy import deepcopy
from pathlib import Path

import torch
from monai.data import PersistentDataset
from monai.utils import convert_to_tensor


def source_signature(path: str | Path) -> str:
    """``size:mtime_ns`` of a data file (and of its BART header for ``.cfl``)."""
    p = Path(path)
    parts = [p] + ([p.with_suffix(".hdr")] if p.suffix == ".cfl" else [])
    return ";".join(f"{q.stat().st_size}:{q.stat().st_mtime_ns}" for q in parts)


def settings_hash(settings: dict) -> str:
    """Short stable hash of a JSON-serialisable settings dict."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class AtomicPersistentDataset(PersistentDataset):
    """``PersistentDataset`` whose cache files appear atomically (see module docstring)."""

    def _cachecheck(self, item_transformed):
        if self.cache_dir is None:
            return self._pre_transform(deepcopy(item_transformed))
        name = self.hash_func(item_transformed).decode("utf-8") + self.transform_hash
        hashfile = self.cache_dir / f"{name}.pt"
        if hashfile.is_file():
            try:
                # always weights_only: a cache folder is data, never code
                return torch.load(hashfile, weights_only=True)
            except Exception as e:  # unreadable file: recompute and overwrite
                warnings.warn(f"cache file {hashfile} unreadable ({e}); recomputing")
        out = self._pre_transform(deepcopy(item_transformed))
        out = convert_to_tensor(out, convert_numeric=False, track_meta=self.track_meta)
        tmp = self.cache_dir / f".{name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            torch.save(out, tmp)
            os.replace(tmp, hashfile)
        finally:
            tmp.unlink(missing_ok=True)
        return out


def _discard(batch):
    return None


def warm_cache(dataset: AtomicPersistentDataset, num_workers: int = 0) -> int:
    """Compute every missing cache file, in parallel over ``num_workers`` loader processes;
    under ``torch.distributed`` each rank takes every ``world_size``-th item. Returns the
    number of items this process visited."""
    indices = list(range(len(dataset)))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
        indices = indices[r::w]
    subset = torch.utils.data.Subset(dataset, indices)
    loader = torch.utils.data.DataLoader(subset, batch_size=1, num_workers=num_workers, collate_fn=_discard)
    try:
        for _ in loader:
            pass
    except RuntimeError:
        # A worker's exception reaches this process as RuntimeError text, losing its type. Redo
        # the missing items here: a user error (a bad file) then surfaces as itself, one line.
        for i in indices:
            dataset[i]
        raise
    return len(indices)
