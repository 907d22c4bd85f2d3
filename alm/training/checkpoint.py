"""Periodic, atomic checkpoints in RUN_DIR/checkpoints, and finding the one to resume from.

Layout: RUN_DIR/checkpoints/step-000000040/ holds either `checkpoint.ckpt` (DDP / single device,
a Lightning checkpoint) or DeepSpeed's sharded layout (`checkpoint/`, `latest`), plus
`config.yaml` (the resolved run config) and `meta.json` (step, strategy, world size).

Atomicity: every rank writes into `.step-000000040.tmp/`; after a barrier, global rank 0 fsyncs
the files and renames the directory to its final name. A directory named `step-*` is therefore
always complete: a run killed during a save leaves only a `.tmp` directory (removed at the next
start) and the previous checkpoint intact. Only the newest `keep_last_k` are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import lightning as L
import torch

from alm.config import RunConfig, to_yaml
from alm.io import atomic_write_text, fsync_dir

STEP_DIR = re.compile(r"^step-(\d+)$")
CKPT_FILE = "checkpoint.ckpt"


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first: [(step, path)]."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def is_deepspeed_checkpoint(path: Path) -> bool:
    return (Path(path) / "checkpoint").is_dir()


def fit_path(step_dir: Path) -> str:
    """What Trainer.fit(ckpt_path=...) takes for a checkpoint directory."""
    step_dir = Path(step_dir)
    if (step_dir / CKPT_FILE).is_file():
        return str(step_dir / CKPT_FILE)
    if is_deepspeed_checkpoint(step_dir):
        return str(step_dir)
    raise FileNotFoundError(f"{step_dir}: neither {CKPT_FILE} nor a DeepSpeed checkpoint inside")


def read_meta(step_dir: Path) -> dict:
    path = Path(step_dir) / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def remove_partial(run_dir: str | os.PathLike) -> list[str]:
    """Delete leftovers of saves that were killed midway (global rank 0, before training)."""
    root = checkpoint_dir(run_dir)
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".step-") and p.name.endswith((".tmp", ".old")):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return removed


def _fsync_tree(path: Path) -> None:
    for dirpath, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


class PeriodicCheckpoint(L.Callback):
    """Save every `every_n_steps` optimizer steps and at the end of training; keep the newest K.

    `request_save(reason)` asks for a checkpoint at the end of the current step (a signal handler
    may call it: it only sets a flag). All ranks agree on it with one all-reduce, so a signal that
    reached only some ranks still saves everywhere. `saved_step` / `last_save_reason` describe the
    last checkpoint written.
    """

    def __init__(self, cfg: RunConfig, every_n_steps: int, keep_last_k: int):
        self.cfg = cfg
        self.every = every_n_steps
        self.keep = keep_last_k
        self.saved_step = -1
        self.last_save_reason: str | None = None
        self._requested: str | None = None

    def request_save(self, reason: str = "requested") -> None:
        self._requested = reason

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["alm_config"] = to_yaml(self.cfg)  # the resolved config travels in every checkpoint

    def on_train_start(self, trainer, pl_module) -> None:
        self.saved_step = trainer.global_step  # resumed from here (or 0): nothing new to save

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.saved_step:
            return
        requested = self._requested is not None
        if trainer.world_size > 1:  # every rank must agree, or the save would deadlock
            flag = torch.tensor([float(requested)], device=pl_module.device)
            requested = bool(trainer.strategy.reduce(flag, reduce_op="max").item())
        if step % self.every == 0 or requested:
            self.save(trainer)
            self.last_save_reason = (self._requested or "preemption") if requested else "periodic"
            self._requested = None

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self.saved_step:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> Path:
        step = trainer.global_step
        root = checkpoint_dir(self.cfg.run_dir)
        final = root / f"step-{step:09d}"
        tmp = root / f".step-{step:09d}.tmp"
        if trainer.is_global_zero:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        trainer.strategy.barrier("alm_ckpt_prepare")
        deepspeed = getattr(trainer.strategy, "deepspeed_engine", None) is not None
        trainer.save_checkpoint(str(tmp) if deepspeed else str(tmp / CKPT_FILE), weights_only=False)
        trainer.strategy.barrier("alm_ckpt_written")
        if trainer.is_global_zero:
            atomic_write_text(tmp / "config.yaml", to_yaml(self.cfg))
            meta = {
                "step": step,
                "strategy": "deepspeed" if deepspeed else "ddp",
                "zero_stage": self.cfg.trainer.zero_stage if deepspeed else None,
                "world_size": trainer.world_size,
                "stage": self.cfg.stage,
                "time": time.time(),
            }
            atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=1))
            _fsync_tree(tmp)
            if final.exists():  # re-saving a step (e.g. after a resume): swap, never lose both
                old = root / f".step-{step:09d}.old"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            fsync_dir(root)
            for _, path in list_checkpoints(self.cfg.run_dir)[: -self.keep]:
                shutil.rmtree(path, ignore_errors=True)
            from alm.training.preemption import write_state

            write_state(self.cfg.run_dir, "running", step=step, last_checkpoint=str(final))
        trainer.strategy.barrier("alm_ckpt_done")
        self.saved_step = step
        return final
