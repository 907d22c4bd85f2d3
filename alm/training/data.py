"""Build the train/val loaders of a stage from the config (the stream itself is alm.data.stream)."""

from __future__ import annotations

from typing import Any, Callable

import lightning as L

from alm.config import RunConfig
from alm.data.stream import Collate, MakeExample, ShardStream, make_loader, resolve_shard_sets


def train_loader(
    trainer: L.Trainer,
    cfg: RunConfig,
    make_example: MakeExample,
    collate: Collate,
    length: Callable[[dict[str, Any]], int] | None = None,
):
    """Infinite seeded stream, positioned at the first batch the restored trainer has not consumed."""
    start = trainer.global_step * trainer.accumulate_grad_batches
    stream = ShardStream(
        resolve_shard_sets(cfg.data.train_shards),
        make_example,
        collate,
        batch_size=cfg.data.batch_size,
        seed=cfg.seed,
        shuffle_buffer=cfg.data.shuffle_buffer,
        shuffle=True,
        infinite=True,
        start_batch=start,
        max_tokens=cfg.data.max_tokens,
        length=length,
        rank_world=(trainer.global_rank, trainer.world_size),
    )
    return make_loader(stream, cfg.data.num_workers, pin_memory=trainer.strategy.root_device.type == "cuda")


def val_loader(
    trainer: L.Trainer,
    cfg: RunConfig,
    make_example: MakeExample,
    collate: Collate,
    length: Callable[[dict[str, Any]], int] | None = None,
):
    """The same first `trainer.val_batches` batches at every validation (cyclic, unshuffled), equal
    on every rank — ZeRO-3 needs every rank to run the same number of forwards."""
    stream = ShardStream(
        resolve_shard_sets(cfg.data.val_shards),
        make_example,
        collate,
        batch_size=cfg.data.batch_size,
        seed=cfg.seed,
        shuffle=False,
        infinite=True,
        max_tokens=cfg.data.max_tokens,
        length=length,
        rank_world=(trainer.global_rank, trainer.world_size),
    )
    return make_loader(stream, min(cfg.data.num_workers, 1), pin_memory=trainer.strategy.root_device.type == "cuda")
