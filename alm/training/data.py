"""Build the train/val loaders of a stage from the config (the stream itself is alm.data.stream)."""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import lightning as L
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from alm.config import RunConfig
from alm.data.splits import resolve_split_spec
from alm.data.stream import Collate, MakeExample, ShardStream, make_loader, resolve_datasets
from alm.training.data_state import DataState, resume_positions

log = logging.getLogger(__name__)


def _data_state(trainer: L.Trainer) -> DataState | None:
    return next((c for c in trainer.callbacks if isinstance(c, DataState)), None)


def _loader(trainer: L.Trainer, cfg: RunConfig, spec: str, make_example: MakeExample, collate: Collate,
            length: Callable[[dict[str, Any]], int] | None, train: bool):
    role = "train" if train else "val"
    resolved = resolve_split_spec(spec, role)
    datasets = resolve_datasets(resolved)
    primary = [u for d in datasets for u in d.shard_sets[0]]
    if resolved != spec:  # a directory: its manifest's splits for this role
        rank_zero_info(f"{role} data: {spec} -> {len(primary)} shard(s): "
                       f"{', '.join(sorted({n.rsplit('-', 1)[0] for n in map(os.path.basename, primary)}))}")
    if datasets[0].weight is not None:
        total = sum(d.weight for d in datasets)
        rank_zero_info(f"{role} data: a mixture of {len(datasets)} dataset(s), each example drawn from one: " + ", ".join(
            f"{d.name} ({d.weight / total:.1%}, {len(d.shard_sets[0])} shard(s))" for d in datasets))
    workers = cfg.data.num_workers if train else min(cfg.data.num_workers, 1)
    start_batch, positions = 0, None
    if train:
        start_batch = trainer.global_step * trainer.accumulate_grad_batches
        state = _data_state(trainer)
        topology = {"world_size": trainer.world_size, "num_workers": max(1, workers), "shards": len(primary)}
        if state is not None:
            state.topology = topology
            state.dataset_names = [d.name for d in datasets] if datasets[0].weight is not None else []
            if state.restored is not None:
                positions = resume_positions(state.restored, topology, trainer.global_rank, start_batch,
                                             cfg.data.on_topology_change)
            elif start_batch == 0:
                positions = {}
            state.positions = dict(positions or {})  # a checkpoint before every worker trained a batch keeps them
        if positions is None and start_batch:
            log.warning("the checkpoint holds no data positions (written before they were saved): replaying the "
                        "stream up to batch %d", start_batch)
    stream = ShardStream(
        datasets,
        make_example,
        collate,
        batch_size=cfg.data.batch_size,
        seed=cfg.seed,
        shuffle_buffer=cfg.data.shuffle_buffer,
        shuffle=train,
        infinite=True,
        start_batch=start_batch,
        max_tokens=cfg.data.max_tokens,
        length=length,
        rank_world=(trainer.global_rank, trainer.world_size),
        positions=positions,
    )
    return make_loader(stream, workers, pin_memory=trainer.strategy.root_device.type == "cuda")


def train_loader(
    trainer: L.Trainer,
    cfg: RunConfig,
    make_example: MakeExample,
    collate: Collate,
    length: Callable[[dict[str, Any]], int] | None = None,
):
    """Infinite seeded stream, each worker started at the position the checkpoint recorded for it."""
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
