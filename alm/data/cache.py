"""The local cache of generated data (`data.train_shards: synthetic`), built once and shared.

Root: $ALM_CACHE, else ~/.cache/alm. Each entry is built in a temporary directory and renamed into
place when complete, under a file lock, so concurrent ranks or runs build it once and never see
half of it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from alm.io import fsync_dir


def cache_root() -> Path:
    return Path(os.environ.get("ALM_CACHE") or "~/.cache/alm").expanduser()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cached(path: Path, build: Callable[[Path], None], what: str) -> Path:
    """Return `path`, first building it with build(tmp_dir) if it does not exist yet."""
    if path.is_dir():
        return path
    with _locked(path):
        if path.is_dir():
            return path
        print(f"[alm] making {what} (once) in {path}", file=sys.stderr, flush=True)
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    return path


def resolve_synthetic(cfg) -> None:
    """Replace `synthetic` in data.train_shards / data.val_shards by the stage's cached dataset."""
    if "synthetic" not in (cfg.data.train_shards, cfg.data.val_shards):
        return
    train_was_synthetic = cfg.data.train_shards == "synthetic"
    from alm.errors import UserError
    from alm.stages import get_stage

    make = get_stage(cfg.stage).synthetic_data
    if make is None:
        raise UserError(f"stage {cfg.stage} has no built-in synthetic data: set data.train_shards to your shards")
    made = make(cfg, cache_root())
    if cfg.data.train_shards == "synthetic":
        cfg.data.train_shards = made["train_shards"]
    if cfg.data.val_shards == "synthetic" or (cfg.data.val_shards == "auto" and train_was_synthetic):
        cfg.data.val_shards = made["val_shards"]
    if cfg.data.tokenizer in (None, "synthetic"):
        cfg.data.tokenizer = made.get("tokenizer")
    if cfg.data.codec == "synthetic":
        cfg.data.codec = made.get("codec")
    if "condition_tokenizer" in made and getattr(cfg.data, "condition_tokenizer", None) in (None, "synthetic"):
        cfg.data.condition_tokenizer = made["condition_tokenizer"]
