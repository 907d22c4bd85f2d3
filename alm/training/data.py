"""Build the train/val loaders of a stage from the config (the stream itself is alm.data.stream)."""

from __future__ import annotations

from typing import Any, Callable

import lightning as L

from alm.config import RunConfig
from alm.data.stream import Collate, MakeExample, ShardStream, make_loader, resolve_shard_sets


def _loader(trainer: L.Trainer, cfg: RunConfig, spec: str, make_example: MakeExample, collate: Collate,
            length: Callable[[dict[str, Any]], int] | None, train: bool):
    stream = ShardStream(
        resolve_shard_sets(spec),
        make_example,
        collate,
        batch_size=cfg.data.batch_size,
        seed=cfg.seed,
        shuffle_buffer=cfg.data.shuffle_buffer,
        shuffle=train,
        infinite=True,
        start_batch=trainer.global_step * trainer.accumulate_grad_batches if train else 0,
        max_tokens=cfg.data.max_tokens,
        length=length,
        rank_world=(trainer.global_rank, trainer.world_size),
    )
    workers = cfg.data.num_workers if train else min(cfg.data.num_workers, 1)
    return make_loader(stream, workers, pin_memory=trainer.strategy.root_device.type == "cuda")


def train_loader(
    trainer: L.Trainer,
    cfg: RunConfig,
    make_example: MakeExample,
    collate: Collate,
    length: Callable[[dict[str, Any]], int] | None = None,
):
    """Infinite seeded stream, positioned at the first batch the restored trainer has not consumed."""
    return _loader(trainer, cfg, cfg.data.train_shards, make_example, collate, length, train=True)


def val_loader(
    trainer: L.Trainer,
    cfg: RunConfig,
    make_example: MakeExample,
    collate: Collate,
    length: Callable[[dict[str, Any]], int] | None = None,
):
    """The same first `trainer.val_batches` batches at every validation (cyclic, unshuffled), equal
    on every rank — ZeRO-3 needs every rank to run the same number of forwards."""
    return _loader(trainer, cfg, cfg.data.val_shards, make_example, collate, length, train=False)
