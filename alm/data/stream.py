"""The one training stream every stage uses: WebDataset shards -> examples -> batches, resumable.

Design (why exact resume works without saving any loader state):

* The stream is infinite: epoch 0, 1, 2, ... follow each other inside every worker, so no rank
  ever runs out of data (no DDP hang on uneven shards) and training length is `max_steps`.
* Every decision is a pure function of (seed, epoch, slot, key): which shards a slot reads in an
  epoch (a seeded permutation of all shards, dealt round-robin to the world_size x num_workers
  slots), the shuffle-buffer order (a generator seeded by (seed, epoch, slot)), and per-example
  randomness such as crops (seeded by (seed, epoch, key)).
* A rank's batch number g comes from logical worker g % W as that worker's batch g // W — the
  order in which torch's DataLoader interleaves its workers. To resume at batch B, physical
  worker p plays logical worker (B + p) % W and skips its first (B + p) // W batches, so the
  DataLoader's first batch is exactly batch B of the uninterrupted stream.
* B itself is derived from the restored trainer (global_step x accumulate_grad_batches): the
  checkpoint needs no loader state, and every rank knows its own position.

Each batch carries `_index` (its number g in the rank's stream) and `_corrupt` (samples this
worker dropped as undecodable since its previous batch) so training can reseed per batch and
report corrupt data instead of hiding it.
"""

from __future__ import annotations

import logging
import os
import zlib
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from alm.data.shards import expand_shards, join_sets

log = logging.getLogger(__name__)

MakeExample = Callable[[dict[str, Any], np.random.Generator], Optional[dict[str, Any]]]
Collate = Callable[[list[dict[str, Any]]], dict[str, Any]]


def dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def resolve_shard_sets(spec: str) -> list[list[str]]:
    """'a/*.tar + b/*.tar' -> [[a shards], [b shards]]: parallel sets joined by file name and key."""
    specs = join_sets(spec)
    sets = [expand_shards(s) for s in specs]
    names = [os.path.basename(u) for u in sets[0]]
    for other, s in zip(sets[1:], specs[1:]):
        by_name = {os.path.basename(u): u for u in other}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise FileNotFoundError(f"shard set {s!r} has no shard named {missing[0]} (parallel sets must match)")
    return sets


class _Counter:
    def __init__(self) -> None:
        self.corrupt = 0
        self.reported = 0

    def handler(self, exn: Exception) -> bool:
        """webdataset exception handler: count, warn (first few), continue with the next item."""
        self.corrupt += 1
        if self.reported < 5:
            log.warning("skipping unreadable shard data: %s", exn)
            self.reported += 1
        return True


def _read_joined(urls: list[str], counter: _Counter) -> Iterator[dict[str, Any]]:
    """Samples of shard urls[0], each merged with the same-key sample of the parallel shards urls[1:]."""
    primary = wds.tarfile_samples([{"url": urls[0]}], handler=counter.handler)
    if len(urls) == 1:
        yield from primary
        return
    others = []
    for url in urls[1:]:
        others.append({s["__key__"]: s for s in wds.tarfile_samples([{"url": url}], handler=counter.handler)})
    for sample in primary:
        merged = dict(sample)
        for other in others:
            extra = other.get(sample["__key__"])
            if extra is None:  # e.g. a sample the tokenizer could not process (listed in its errors.json)
                merged = None
                break
            merged.update({k: v for k, v in extra.items() if not k.startswith("__")})
        if merged is None:
            counter.corrupt += 1
            continue
        yield merged


class ShardStream(IterableDataset):
    """Infinite (or single-pass), seeded, resumable stream of batches from WebDataset shards.

    shard_sets: parallel shard lists (see resolve_shard_sets); make_example(sample, rng) turns a
    raw sample (dict of bytes) into an example dict or raises on corrupt data; collate(examples)
    makes a batch. Batches hold `batch_size` examples, or, with `max_tokens`, as many as fit in
    max_tokens padded tokens (`length(example)` tokens each).
    """

    def __init__(
        self,
        shard_sets: list[list[str]],
        make_example: MakeExample,
        collate: Collate,
        batch_size: int,
        seed: int,
        shuffle_buffer: int = 500,
        shuffle: bool = True,
        infinite: bool = True,
        start_batch: int = 0,
        max_tokens: int = 0,
        length: Callable[[dict[str, Any]], int] | None = None,
        rank_world: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.shard_sets = shard_sets
        self.make_example = make_example
        self.collate = collate
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = max(1, shuffle_buffer) if shuffle else 1
        self.shuffle = shuffle
        self.infinite = infinite
        self.start_batch = start_batch
        self.max_tokens = max_tokens
        self.length = length
        self.rank_world = rank_world

    # -- which shards / samples belong to a slot in an epoch -------------------------------
    def _epoch_shards(self, epoch: int, slot: int, n_slots: int) -> tuple[list[list[str]], int, int]:
        """-> (shard url groups to read, sample stride, sample offset) for this slot and epoch."""
        n = len(self.shard_sets[0])
        order = np.arange(n)
        if self.shuffle:
            np.random.default_rng([self.seed, epoch, 7]).shuffle(order)
        by_name = [{os.path.basename(u): u for u in s} for s in self.shard_sets[1:]]
        groups = []
        for i in order:
            url = self.shard_sets[0][i]
            groups.append([url] + [m[os.path.basename(url)] for m in by_name])
        if n >= n_slots:
            return groups[slot::n_slots], 1, 0
        # fewer shards than readers: every slot reads all shards and keeps every n_slots-th sample
        return groups, n_slots, slot

    def _samples(self, epoch: int, slot: int, n_slots: int, counter: _Counter) -> Iterator[dict[str, Any]]:
        groups, stride, offset = self._epoch_shards(epoch, slot, n_slots)
        rng = np.random.default_rng([self.seed, epoch, slot, 11])
        buffer: list[dict[str, Any]] = []
        i = 0
        for group in groups:
            for sample in _read_joined(group, counter):
                i += 1
                if (i - 1) % stride != offset:
                    continue
                if self.shuffle_buffer <= 1:
                    yield sample
                    continue
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(sample)
                    continue
                j = int(rng.integers(len(buffer)))
                buffer[j], sample = sample, buffer[j]
                yield sample
        while buffer:  # drain at epoch end: each sample exactly once per epoch
            yield buffer.pop(int(rng.integers(len(buffer))))

    def _examples(self, slot: int, n_slots: int, counter: _Counter) -> Iterator[dict[str, Any]]:
        epoch = 0
        while True:
            produced = False
            for sample in self._samples(epoch, slot, n_slots, counter):
                key = sample["__key__"]
                rng = np.random.default_rng([self.seed, epoch, zlib.crc32(key.encode())])
                try:
                    example = self.make_example(sample, rng)
                except Exception as exc:  # a corrupt sample: counted and reported, not hidden
                    counter.corrupt += 1
                    if counter.reported < 5:
                        log.warning("skipping corrupt sample %s in %s: %s", key, sample.get("__url__"), exc)
                        counter.reported += 1
                    continue
                if example is None:
                    continue
                produced = True
                yield example
            if not self.infinite:
                return
            if not produced:
                raise RuntimeError(f"slot {slot}/{n_slots}: an epoch over {len(self.shard_sets[0])} shard(s) gave no examples")
            epoch += 1

    def _batches(self, examples: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        batch: list[dict[str, Any]] = []
        longest = 0
        for ex in examples:
            if self.max_tokens and self.length is not None:
                n = self.length(ex)
                if batch and max(longest, n) * (len(batch) + 1) > self.max_tokens:
                    yield batch
                    batch, longest = [], 0
                batch.append(ex)
                longest = max(longest, n)
            else:
                batch.append(ex)
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = self.rank_world or dist_rank_world()
        info = get_worker_info()
        n_workers, physical = (info.num_workers, info.id) if info is not None else (1, 0)
        logical = (self.start_batch + physical) % n_workers
        skip = (self.start_batch + physical) // n_workers
        slot, n_slots = rank * n_workers + logical, world * n_workers
        counter = _Counter()
        reported = 0
        for local, examples in enumerate(self._batches(self._examples(slot, n_slots, counter))):
            if local < skip:
                continue
            batch = self.collate(examples)
            batch["_index"] = local * n_workers + logical
            batch["_corrupt"] = counter.corrupt - reported
            reported = counter.corrupt
            yield batch


def make_loader(stream: ShardStream, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """DataLoader over a ShardStream: batching happens in the stream (batch_size=None)."""
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )
