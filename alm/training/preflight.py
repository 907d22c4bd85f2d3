"""Checks a run passes before anything starts: no file written, no W&B run, no process launched.

`preflight(cfg)` is the first thing `train()` does. Every user mistake it finds is one UserError
line naming the key or path and the fix:

* run_dir: not a file; creatable.
* data.train_shards (and data.val_shards when validation is on): every spec names shards, and
  every local shard exists and is not empty.
* data.tokenizer: a local path that exists, when set.
* resume: which checkpoint this rank would resume from (resume_plan), and that the run's config is
  compatible with it (same stage, model and strategy: a changed key is reported as
  "model.d_model changed 128 -> 64").

`resume` values: auto (the head of run_dir's current branch, see alm.training.checkpoint), never
(a fresh start; refused when run_dir already holds checkpoints), restart (a fresh start; a previous
run's checkpoints, logs, state and W&B id are moved to RUN_DIR/replaced/<time>/ — nothing is
deleted), or the path of a checkpoint (a new branch from it). In a requeued SLURM job
(SLURM_RESTART_COUNT > 0) whose run_dir has checkpoints, every value acts as auto, so a requeue
continues the attempt it replaces instead of starting it over.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from alm.config import RunConfig, to_yaml
from alm.data.shards import is_remote
from alm.data.stream import resolve_shard_sets
from alm.errors import UserError
from alm.training.checkpoint import (CKPT_FILE, STEP_DIR, Checkpoint, checkpoints, current_branch,
                                     is_deepspeed_checkpoint, read_meta)

# keys that must equal the checkpoint's for a resume: they shape the weights or their sharding
# (model.dropout may change: it shapes nothing)
FIXED_KEYS = ("stage", "model.", "trainer.strategy")
FREE_KEYS = ("model.dropout",)


@dataclass(frozen=True)
class ResumePlan:
    checkpoint: Checkpoint | None  # None: start from step 0
    restart: bool = False  # move a previous run's files aside first (resume=restart)


def preflight(cfg: RunConfig) -> ResumePlan:
    if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError("trainer.accelerator=gpu but no CUDA device is visible: use trainer.accelerator=cpu or auto")
    check_run_dir(cfg.run_dir)
    check_shards("data.train_shards", cfg.data.train_shards)
    if cfg.data.val_shards is not None and cfg.trainer.val_every_n_steps > 0:
        check_shards("data.val_shards", cfg.data.val_shards)
    # `synthetic` left over while the shards are the user's is resolved (or refused) by alm.data.provenance next
    if cfg.data.tokenizer and cfg.data.tokenizer != "synthetic" and not is_remote(cfg.data.tokenizer) \
            and not os.path.exists(cfg.data.tokenizer):
        raise UserError(f"data.tokenizer={cfg.data.tokenizer}: no such file or directory")
    plan = resume_plan(cfg)
    if plan.checkpoint is not None:
        check_compatible(cfg, plan.checkpoint)
    return plan


def check_run_dir(run_dir: str) -> None:
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"run_dir={run_dir} is a file, not a directory: choose another run_dir")
    parent = next((p for p in [path, *path.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"run_dir={run_dir}: {parent} is a file, so the directory cannot be created")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"run_dir={run_dir}: {parent} is not writable")


def check_shards(key: str, spec: str) -> None:
    try:
        sets = resolve_shard_sets(spec)
    except FileNotFoundError as exc:
        detail = str(exc).removeprefix(f"shard spec {spec!r}: ")
        raise UserError(f"{key}={spec}: {detail}") from None
    for shards in sets:
        for shard in shards:
            if is_remote(shard):
                continue
            if not os.path.isfile(shard):
                raise UserError(f"{key}={spec}: {shard} is not a file")
            if os.path.getsize(shard) == 0:
                raise UserError(f"{key}={spec}: shard {shard} is empty (0 bytes): rewrite it or leave it out")


def _requeued() -> bool:
    return int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0) > 0


def resume_plan(cfg: RunConfig) -> ResumePlan:
    """The checkpoint this run resumes from, per `resume` and what run_dir holds (read only)."""
    here = checkpoints(cfg.run_dir)
    head = current_branch(here)[0] if here else None
    resume = cfg.resume
    if head is not None and _requeued() and resume != "auto":
        resume = "auto"
    if resume == "auto":
        return ResumePlan(head)
    if resume == "restart":
        return ResumePlan(None, restart=True)
    if resume == "never":
        if head is not None:
            raise UserError(
                f"resume=never but run_dir={cfg.run_dir} already holds checkpoints (newest: {head.path.name}): "
                "resume=auto continues them, resume=restart starts over (moves them to run_dir/replaced/), "
                "or use a new run_dir"
            )
        return ResumePlan(None)
    return ResumePlan(_explicit_checkpoint(cfg, here, head))


def _explicit_checkpoint(cfg: RunConfig, here: list[Checkpoint], head: Checkpoint | None) -> Checkpoint:
    path = Path(cfg.resume)
    if not path.exists():
        raise UserError(f"resume={cfg.resume}: no such checkpoint (expected auto, never, restart or the path of "
                        "a checkpoint, e.g. RUN_DIR/checkpoints/step-000001000)")
    if path.is_file():
        path = path.parent
    if not ((path / CKPT_FILE).is_file() or is_deepspeed_checkpoint(path)):
        raise UserError(f"resume={cfg.resume}: not a checkpoint directory (expected {CKPT_FILE} or a DeepSpeed "
                        "checkpoint inside, e.g. RUN_DIR/checkpoints/step-000001000)")
    meta = read_meta(path)
    named = STEP_DIR.match(path.name)
    chosen = Checkpoint(int(meta.get("step", named.group(1) if named else -1)), path, meta)
    if head is not None and chosen.path.resolve() not in {c.path.resolve() for c in here} \
            and chosen.lineage != head.lineage:
        raise UserError(
            f"resume={cfg.resume} is not a checkpoint of run_dir={cfg.run_dir}, which already holds another "
            f"run's checkpoints (newest: {head.path.name}): use a new run_dir, or move run_dir/checkpoints away"
        )
    return chosen


def _flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _fixed(key: str) -> bool:
    return any(key == f or (f.endswith(".") and key.startswith(f)) for f in FIXED_KEYS) and key not in FREE_KEYS


def config_changes(old_yaml: str, new_yaml: str) -> list[str]:
    """'key changed OLD -> NEW' for every key that must stay fixed across a resume."""
    old, new = _flat(yaml.safe_load(old_yaml) or {}), _flat(yaml.safe_load(new_yaml) or {})
    if old.get("trainer.strategy") == new.get("trainer.strategy") == "deepspeed":
        fixed = lambda k: _fixed(k) or k == "trainer.zero_stage"  # noqa: E731  (ZeRO shards differ per stage)
    else:
        fixed = _fixed
    keys = sorted(k for k in set(old) & set(new) if fixed(k))  # a key added to alm since is no change
    return [f"{k} changed {old.get(k)} -> {new.get(k)}" for k in keys if old.get(k) != new.get(k)]


def check_compatible(cfg: RunConfig, ckpt: Checkpoint) -> None:
    config = ckpt.path / "config.yaml"
    if not config.is_file():
        raise UserError(f"{ckpt.path}: no config.yaml (not an alm checkpoint directory)")
    changes = config_changes(config.read_text(), to_yaml(cfg))
    if changes:
        raise UserError(f"cannot resume {ckpt.path}: {'; '.join(changes)}: use a new run_dir "
                        "(or resume=restart to start over in this one)")
