"""Periodic, atomic checkpoints in RUN_DIR/checkpoints, their lineage, and the one to resume from.

Layout: RUN_DIR/checkpoints/step-000000040/ holds either `checkpoint.ckpt` (DDP / single device,
a Lightning checkpoint) or DeepSpeed's sharded layout (`checkpoint/`, `latest`), plus
`config.yaml` (the resolved run config) and `meta.json`.

meta.json: step, strategy, zero_stage, world_size, stage, time, reason (periodic | end |
preemption | terminate), save_seconds (wall time of the save: write, barriers, fsync), and the
lineage: `id` (this checkpoint), `parent` (the id of the checkpoint its weights descend from: the
previous save of the same attempt, or the checkpoint the attempt resumed from; null at a fresh
start), `lineage` (an id shared by every checkpoint descending from one fresh start) and `seq`
(1 + the largest seq in the folder when it was written: the order of writes, not of step numbers).

Which checkpoint is current: the newest written (highest seq) is the head; the head and its
ancestors form the current branch. Resuming from an older checkpoint starts a new branch there:
its first save becomes the head, so higher-numbered checkpoints of the abandoned branch are never
chosen by resume=auto or `alm export RUN_DIR`. Retention keeps the newest `keep_last_k` of the
current branch and deletes only checkpoints written before the oldest of those.

Atomicity: every rank writes into `.step-000000040.tmp/`; after a barrier, global rank 0 fsyncs
the files and renames the directory to its final name. A directory named `step-*` is therefore
always complete: a run killed during a save leaves only a `.tmp` directory (removed at the next
start) and the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from alm.config import RunConfig, to_yaml
from alm.io import atomic_write_text, fsync_dir

STEP_DIR = re.compile(r"^step-(\d+)$")
CKPT_FILE = "checkpoint.ckpt"
# reasons a save was asked for, in the order the ranks' all-reduce (max) resolves them
NO_REQUEST, PREEMPT, TERMINATE = 0, 1, 2
REASONS = {PREEMPT: "preemption", TERMINATE: "terminate"}


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, by step number: [(step, path)]."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def read_meta(step_dir: Path) -> dict:
    path = Path(step_dir) / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint directory and its place in the run's lineage."""

    step: int
    path: Path
    meta: dict

    @property
    def id(self) -> str:  # checkpoints written before lineage was recorded are named by their folder
        return self.meta.get("id") or self.path.name

    @property
    def seq(self) -> int:
        return int(self.meta.get("seq", -1))

    @property
    def lineage(self) -> str | None:
        return self.meta.get("lineage")

    def order(self) -> tuple[int, int]:
        return (self.seq, self.step)


def checkpoints(run_dir: str | os.PathLike) -> list[Checkpoint]:
    """Complete checkpoints with their meta.json, in the order they were written (oldest first)."""
    return sorted((Checkpoint(step, path, read_meta(path)) for step, path in list_checkpoints(run_dir)),
                  key=Checkpoint.order)


def current_branch(ckpts: list[Checkpoint]) -> list[Checkpoint]:
    """The head (newest written) and its ancestors still on disk, newest first."""
    if not ckpts:
        return []
    by_id = {c.id: c for c in ckpts}
    legacy = sorted((c for c in ckpts if "parent" not in c.meta), key=lambda c: c.step)
    branch, seen = [], set()
    node: Checkpoint | None = max(ckpts, key=Checkpoint.order)
    while node is not None and node.id not in seen:
        branch.append(node)
        seen.add(node.id)
        if "parent" in node.meta:
            node = by_id.get(node.meta["parent"]) if node.meta["parent"] else None
        else:  # no lineage recorded: the previous such checkpoint by step
            older = [c for c in legacy if c.step < node.step]
            node = older[-1] if older else None
    return branch


def head_checkpoint(run_dir: str | os.PathLike) -> Checkpoint | None:
    branch = current_branch(checkpoints(run_dir))
    return branch[0] if branch else None


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint resume=auto and `alm export RUN_DIR` use: the head of the current branch."""
    head = head_checkpoint(run_dir)
    return head.path if head else None


def to_delete(ckpts: list[Checkpoint], keep: int) -> list[Checkpoint]:
    """Retention: keep the newest `keep` of the current branch; delete what was written before the
    oldest of them (older checkpoints of this branch, and abandoned branches once they are older).
    Nothing is deleted while the current branch has fewer than `keep` checkpoints."""
    kept = current_branch(ckpts)[:keep]
    if len(kept) < keep:
        return []
    oldest_kept = min(c.order() for c in kept)
    kept_ids = {c.id for c in kept}
    return [c for c in ckpts if c.id not in kept_ids and c.order() < oldest_kept]


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


class SaveAgreement:
    """Ranks agree on a requested save without stalling a step: at each optimizer-step boundary a
    rank starts a non-blocking all-reduce (max) of its own request on a CPU (gloo) group and reads
    the one it started at the previous boundary. Every rank therefore acts on the same request at
    the same step, one step after it arrived anywhere; nothing waits on the accelerator, and a
    signal that reached only some ranks cannot deadlock (every rank joins every round)."""

    def __init__(self, trainer: L.Trainer):
        self._group = None
        self._work = None
        self._buf: torch.Tensor | None = None
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            self._group = torch.distributed.new_group(backend="gloo")  # collective: every rank, same order

    def exchange(self, local: int) -> int:
        """This boundary's agreed request (a NO_REQUEST/PREEMPT/TERMINATE code)."""
        if self._group is None:
            return local
        agreed = NO_REQUEST
        if self._work is not None:
            self._work.wait()
            agreed = int(self._buf.item())  # a CPU tensor: no device synchronisation
        self._buf = torch.tensor([local], dtype=torch.int32)
        self._work = torch.distributed.all_reduce(self._buf, op=torch.distributed.ReduceOp.MAX, group=self._group,
                                                  async_op=True)
        return agreed

    def close(self) -> None:
        if self._work is not None:
            self._work.wait()
            self._work = None


class PeriodicCheckpoint(L.Callback):
    """Save every `every_n_steps` optimizer steps and at the end of training; keep the newest K of
    the current branch.

    `request_save(code)` (PREEMPT or TERMINATE) asks for a checkpoint; a signal handler may call
    it: it only sets a number. Saves happen only at optimizer-step boundaries (never in the middle
    of gradient accumulation), after all ranks agreed on the request (SaveAgreement).
    `saved_step` / `last_save_reason` describe the last checkpoint written; `stop_reason` is set
    when an agreed request was served (the Preemption callback stops the run on it).
    """

    def __init__(self, cfg: RunConfig, every_n_steps: int, keep_last_k: int):
        self.cfg = cfg
        self.every = every_n_steps
        self.keep = keep_last_k
        self.saved_step = -1
        self.last_save_reason: str | None = None
        self.stop_reason: str | None = None
        self.parent: Checkpoint | None = None  # what this attempt resumed from (set by train())
        self._lineage: str | None = None
        self._requested = NO_REQUEST
        self._last_step = -1
        self._agreement: SaveAgreement | None = None

    def resume_from(self, parent: Checkpoint | None) -> None:
        """This attempt continues `parent` (None: a fresh start, a new lineage)."""
        self.parent = parent

    def request_save(self, code: int = PREEMPT) -> None:
        self._requested = max(self._requested, code)

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Inside fit(), with the process group up: every rank must resume what global rank 0 does."""
        if trainer.world_size == 1:
            return
        mine = str(self.parent.path) if self.parent else None
        chosen = trainer.strategy.broadcast(mine, src=0)
        if chosen != mine:
            raise RuntimeError(f"rank {trainer.global_rank} would resume from {mine}, global rank 0 from {chosen}: "
                               "the ranks see different checkpoints in run_dir (a stale shared file system?)")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["alm_config"] = to_yaml(self.cfg)  # the resolved config travels in every checkpoint

    def on_train_start(self, trainer, pl_module) -> None:
        self.saved_step = trainer.global_step  # resumed from here (or 0): nothing new to save
        self._last_step = trainer.global_step
        self._agreement = SaveAgreement(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return  # inside gradient accumulation: no optimizer step since the last batch
        self._last_step = step
        agreed = self._agreement.exchange(self._requested) if self._agreement else self._requested
        if agreed != NO_REQUEST:
            reason = REASONS[agreed]
            if step != self.saved_step:
                self.save(trainer, reason)
            self.stop_reason = reason
            self._requested = NO_REQUEST
        elif step % self.every == 0 and step != self.saved_step:
            self.save(trainer, "periodic")

    def on_train_end(self, trainer, pl_module) -> None:
        if self._agreement is not None:
            self._agreement.close()
        if trainer.global_step != self.saved_step:
            self.save(trainer, "end")

    def save(self, trainer: L.Trainer, reason: str = "periodic") -> Path:
        t0 = time.perf_counter()
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
            _fsync_tree(tmp)
            existing = checkpoints(self.cfg.run_dir)
            if self._lineage is None:
                self._lineage = (self.parent.lineage if self.parent else None) or uuid.uuid4().hex[:12]
            meta = {
                "step": step,
                "strategy": "deepspeed" if deepspeed else "ddp",
                "zero_stage": self.cfg.trainer.zero_stage if deepspeed else None,
                "world_size": trainer.world_size,
                "num_workers": max(1, self.cfg.data.num_workers),  # loader workers per rank (data topology)
                "stage": self.cfg.stage,
                "time": time.time(),
                "reason": reason,
                "id": uuid.uuid4().hex[:12],
                "parent": self.parent.id if self.parent else None,
                "lineage": self._lineage,
                "seq": max((c.seq for c in existing), default=0) + 1,
                "save_seconds": round(time.perf_counter() - t0, 3),
            }
            atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=1))
            if final.exists():  # re-saving a step number (e.g. a new branch): swap, never lose both
                old = root / f".step-{step:09d}.old"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            fsync_dir(root)
            self.parent = Checkpoint(step, final, meta)
            for c in to_delete(checkpoints(self.cfg.run_dir), self.keep):
                shutil.rmtree(c.path, ignore_errors=True)
            from alm.training.preemption import write_state

            write_state(self.cfg.run_dir, "running", step=step, last_checkpoint=str(final))
        trainer.strategy.barrier("alm_ckpt_done")
        self.saved_step = step
        self.last_save_reason = reason
        return final
