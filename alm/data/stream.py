"""The one training stream every stage uses: WebDataset shards -> examples -> batches, resumable in O(1).

Design:

* The stream is infinite: epoch 0, 1, 2, ... follow each other inside every worker, so no rank
  ever runs out of data (no DDP hang on uneven shards) and training length is `max_steps`.
* Every decision is a pure function of (seed, epoch, slot, key). An epoch's shard order is a
  seeded permutation of all shards. Each of the world_size x num_workers slots (readers) gets a
  list of *units* (shard, first sample, stride): with at least as many shards as readers, every
  slot-th shard whole (start 0, stride 1); with fewer, every shard with stride = the number of
  readers, so reader r takes the samples whose running number over the epoch's shards is r mod
  readers. A reader reads only its own samples' bytes (alm.data.index seeks to them): the data
  is read once per epoch in total, not once per reader.
* The shuffle buffer's order comes from a generator seeded by (seed, epoch, slot); per-example
  randomness such as crops from (seed, epoch, key).
* A rank's batch g comes from logical worker g % W as that worker's batch g // W, the order in
  which torch's DataLoader interleaves its workers. Each batch carries `_state`: its logical
  worker's stream position *after* the batch (epoch, unit, sample offset in the unit, the shuffle
  buffer as (shard, sample) ids, the buffer generator's state, the worker's batch count). With
  `max_tokens`, a batch closed by an example that did not fit records the position from before
  that example's sample was drawn, so the example is drawn again on resume.
* Resume: given the positions of the batches last trained (alm.training.data_state keeps them
  in the checkpoint), physical worker p of a rank resumed at batch B plays logical worker
  (B + p) % W and starts exactly at that worker's position: it reads the buffered samples and
  continues, so resuming costs the same at step 10 and at step 1,000,000. Without positions
  (a checkpoint from before this scheme), `start_batch` replays the stream up to batch B.

Each batch also carries `_index` (its number g in the rank's stream), `_corrupt` (samples this
worker dropped since its previous batch), `_corrupt_shards` ({shard file: count} of those) and
`_drawn` (samples it drew, good or bad) so training can reseed per batch and report bad data.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from alm.data.index import ShardIndex, read_sample, shard_index
from alm.data.shards import expand_shards, is_remote, join_sets

log = logging.getLogger(__name__)

MakeExample = Callable[[dict[str, Any], np.random.Generator], Optional[dict[str, Any]]]
Collate = Callable[[list[dict[str, Any]]], dict[str, Any]]
INDEX_CACHE = 64  # shard plans each reader keeps in memory


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
    """Bad samples of one worker: total, per shard file, and the first few reported in the log."""

    def __init__(self) -> None:
        self.corrupt = 0
        self.drawn = 0
        self.by_shard: dict[str, int] = {}
        self.reported = 0

    def bad(self, shard: str, n: int = 1, why: str | None = None) -> None:
        self.corrupt += n
        self.drawn += n
        name = os.path.basename(shard)
        self.by_shard[name] = self.by_shard.get(name, 0) + n
        if why is not None and self.reported < 5:
            log.warning("%s: %s", shard, why)
            self.reported += 1

    def handler(self, exn: Exception) -> bool:
        """webdataset exception handler (remote shards): count, warn (first few), continue."""
        self.bad(str(exn.args[-1]) if len(exn.args) > 1 and exn.args[-1] else "?", 1, f"unreadable shard data: {exn}")
        return True


@dataclass
class _Plan:
    """The joinable samples of one shard group: position p -> member sample index per parallel set."""

    urls: list[str]
    indexes: list[ShardIndex | None]  # None: a remote shard (streamed, not indexed)
    picks: list[tuple[int, ...]] | None  # None: one set, position p is sample p
    size: int
    unmatched: list[str]  # primary keys some parallel set lacks
    problems: list[tuple[str, str, int]]  # (url, what is wrong, samples lost)

    def members(self, p: int) -> tuple[int, ...]:
        return (p,) if self.picks is None else self.picks[p]


def _remote_index(url: str) -> ShardIndex:
    """The keys of a remote shard, streamed once (no random access over `pipe:`/http)."""
    index = ShardIndex(url)
    counter = _Counter()
    for s in wds.tarfile_samples([{"url": url}], handler=counter.handler):
        index.keys.append(s["__key__"])
        index.members.append([])
    if counter.corrupt:
        index.problem, index.lost = "unreadable tar data", counter.corrupt
    return index


def _make_plan(urls: list[str]) -> _Plan:
    indexes = [None if is_remote(u) else shard_index(u) for u in urls]
    keyed = [ix if ix is not None else _remote_index(u) for ix, u in zip(indexes, urls)]
    problems = [(u, ix.problem, ix.lost) for u, ix in zip(urls, keyed) if ix.problem is not None]
    if len(urls) == 1:
        return _Plan(urls, indexes, None, len(keyed[0]), [], problems)
    where = [{k: i for i, k in enumerate(ix.keys)} for ix in keyed[1:]]
    picks, unmatched = [], []
    for i, key in enumerate(keyed[0].keys):
        found = [w.get(key) for w in where]
        if any(f is None for f in found):
            unmatched.append(key)  # e.g. a sample the tokenizer could not process (its errors.json)
        else:
            picks.append((i, *found))
    return _Plan(urls, indexes, picks, len(picks), unmatched, problems)


class ShardStream(IterableDataset):
    """Infinite (or single-pass), seeded, resumable stream of batches from WebDataset shards.

    shard_sets: parallel shard lists (see resolve_shard_sets); make_example(sample, rng) turns a
    raw sample (dict of bytes) into an example dict or raises on corrupt data; collate(examples)
    makes a batch. Batches hold `batch_size` examples, or, with `max_tokens`, as many as fit in
    max_tokens padded tokens (`length(example)` tokens each). `positions` ({logical worker:
    state}, as batches' `_state`) starts each worker exactly there; else `start_batch` replays.
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
        positions: dict[int, dict[str, Any]] | None = None,
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
        self.positions = positions
        self._plans: OrderedDict[int, _Plan] = OrderedDict()
        self._by_name: list[dict[str, str]] | None = None

    # -- which samples belong to a slot in an epoch -----------------------------------------
    def plan(self, shard: int) -> _Plan:
        """The (cached) plan of shard group `shard` (its number in shard_sets[0])."""
        found = self._plans.get(shard)
        if found is None:
            if self._by_name is None:
                self._by_name = [{os.path.basename(u): u for u in s} for s in self.shard_sets[1:]]
            url = self.shard_sets[0][shard]
            group = [url] + [m[os.path.basename(url)] for m in self._by_name]
            found = self._plans[shard] = _make_plan(group)
            while len(self._plans) > max(INDEX_CACHE, len(self.shard_sets[0]) if self._few else 0):
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(shard)
        return found

    def epoch_units(self, epoch: int, slot: int, n_slots: int) -> list[tuple[int, int, int]]:
        """[(shard, first position, stride)] this slot reads in `epoch`, in reading order."""
        n = len(self.shard_sets[0])
        order = np.arange(n)
        if self.shuffle:
            np.random.default_rng([self.seed, epoch, 7]).shuffle(order)
        if n >= n_slots:
            return [(int(i), 0, 1) for i in order[slot::n_slots]]
        units, before = [], 0  # fewer shards than readers: sample number (over the epoch) mod readers
        for i in order:
            units.append((int(i), (slot - before) % n_slots, n_slots))
            before += self.plan(int(i)).size
        return units

    @property
    def _few(self) -> bool:
        return len(self.shard_sets[0]) < getattr(self, "_n_slots", 1)

    def read(self, shard: int, positions: list[int], counter: _Counter) -> Iterator[tuple[int, dict[str, Any]]]:
        """(position, sample) for the given ascending positions of a shard group; bad ones counted."""
        plan = self.plan(shard)
        if any(ix is None for ix in plan.indexes):  # remote: stream the shards, pick the positions
            yield from self._read_streamed(plan, positions, counter)
            return
        for p in positions:
            picks = plan.members(p)
            try:
                sample = read_sample(plan.indexes[0], picks[0])
                for ix, i in zip(plan.indexes[1:], picks[1:]):
                    extra = read_sample(ix, i)
                    sample.update({k: v for k, v in extra.items() if not k.startswith("__")})
            except OSError as exc:
                counter.bad(plan.urls[0], 1, f"unreadable sample at position {p}: {exc}")
                continue
            counter.drawn += 1
            yield p, sample

    def _read_streamed(self, plan: _Plan, positions: list[int], counter: _Counter):
        wanted = set(positions)
        streams = [wds.tarfile_samples([{"url": u}], handler=counter.handler) for u in plan.urls]
        by_key = [{s["__key__"]: s for s in st} for st in streams[1:]]  # parallel sets: whole shard in memory
        p = -1
        for sample in streams[0]:
            extras = [b.get(sample["__key__"]) for b in by_key]
            if any(e is None for e in extras):
                continue
            p += 1
            if p not in wanted:
                continue
            merged = dict(sample)
            for e in extras:
                merged.update({k: v for k, v in e.items() if not k.startswith("__")})
            counter.drawn += 1
            yield p, merged

    def _report(self, shard: int, counter: _Counter) -> None:
        """Problems of a shard group, counted once per epoch by the reader of its position 0."""
        plan = self.plan(shard)
        for url, problem, lost in plan.problems:
            counter.bad(url, max(1, lost), f"{problem}; kept its {plan.size} complete sample(s) before the damage")
        if plan.unmatched:
            counter.bad(plan.urls[0], len(plan.unmatched),
                        f"{len(plan.unmatched)} sample(s) missing from a parallel set, e.g. {plan.unmatched[0]!r}")

    # -- the sample stream of one slot, with its position --------------------------------------
    def _samples(self, slot: int, n_slots: int, counter: _Counter, cursor: "_Cursor") -> Iterator[tuple[int, dict[str, Any]]]:
        """(epoch, sample) forever (or one epoch), (epoch, None) at each epoch's end; `cursor` always
        holds the position after the last sample."""
        c = cursor
        while True:
            units = self.epoch_units(c.epoch, slot, n_slots)
            if c.rng is None:
                c.rng = np.random.default_rng([self.seed, c.epoch, slot, 11])
            if c.pending:  # resuming: read the samples the buffer held
                c.buffer, c.ids = self._refill(c.pending, counter), list(c.pending)
                c.pending = []
            while c.unit < len(units):
                shard, start, stride = units[c.unit]
                if c.offset == 0 and start == 0:
                    self._report(shard, counter)
                todo = list(range(start + c.offset * stride, self.plan(shard).size, stride))
                for p, sample in self.read(shard, todo, counter):
                    if c.track:
                        c.mark()
                    c.offset = (p - start) // stride + 1
                    if self.shuffle_buffer <= 1:
                        yield c.epoch, sample
                        continue
                    if len(c.buffer) < self.shuffle_buffer:
                        c.buffer.append(sample)
                        c.ids.append((shard, p))
                        continue
                    j = int(c.rng.integers(len(c.buffer)))
                    c.buffer[j], out = sample, c.buffer[j]
                    c.ids[j] = (shard, p)
                    yield c.epoch, out
                c.unit, c.offset = c.unit + 1, 0
            while c.buffer:  # drain at epoch end: each sample exactly once per epoch
                if c.track:
                    c.mark()
                j = int(c.rng.integers(len(c.buffer)))
                c.ids.pop(j)
                yield c.epoch, c.buffer.pop(j)
            yield c.epoch, None  # the epoch is complete
            if not self.infinite:
                return
            c.epoch, c.unit, c.offset, c.rng = c.epoch + 1, 0, 0, None

    def _refill(self, ids: list[tuple[int, int]], counter: _Counter) -> list:
        by_shard: dict[int, list[int]] = {}
        for shard, p in ids:
            by_shard.setdefault(shard, []).append(p)
        got, drawn = {}, counter.drawn
        for shard, ps in by_shard.items():
            for p, sample in self.read(shard, sorted(set(ps)), counter):
                got[(shard, p)] = sample
        counter.drawn = drawn  # drawn before the checkpoint already
        missing = [i for i in ids if i not in got]
        if missing:
            raise RuntimeError(f"resume: {len(missing)} buffered sample(s) no longer readable, e.g. shard "
                               f"{self.shard_sets[0][missing[0][0]]} position {missing[0][1]} (did the shards change?)")
        return [got[i] for i in ids]

    def _examples(self, slot: int, n_slots: int, counter: _Counter, cursor: "_Cursor"):
        """(example, position before its sample was drawn or None) forever (or one epoch)."""
        produced = cursor.restored  # an epoch resumed midway may hold no more examples
        for epoch, sample in self._samples(slot, n_slots, counter, cursor):
            if sample is None:
                if not produced and self.infinite:
                    from alm.errors import UserError

                    bad = ", ".join(f"{name} ({n})" for name, n in sorted(counter.by_shard.items())) or "none"
                    raise UserError(f"reader {slot}/{n_slots}: epoch {epoch} over {len(self.shard_sets[0])} shard(s) gave "
                                    f"no examples ({counter.corrupt} unreadable or corrupt; damaged shards: {bad}): "
                                    "check the shards (or give more shards than loader readers)")
                produced = False
                continue
            before = cursor.marked
            key = sample["__key__"]
            rng = np.random.default_rng([self.seed, epoch, zlib.crc32(key.encode())])
            try:
                example = self.make_example(sample, rng)
            except Exception as exc:  # a corrupt sample: counted and reported, not hidden
                counter.bad(sample.get("__url__", "?"), 1, f"skipping corrupt sample {key}: {exc}")
                counter.drawn -= 1  # already counted as drawn when read
                continue
            if example is None:
                continue
            produced = True
            yield example, before

    def _batches(self, examples, cursor: "_Cursor") -> Iterator[tuple[list[dict[str, Any]], dict[str, Any]]]:
        """(examples, position after the batch)."""
        batch: list[dict[str, Any]] = []
        longest = 0
        for ex, before in examples:
            if self.max_tokens and self.length is not None:
                n = self.length(ex)
                if batch and max(longest, n) * (len(batch) + 1) > self.max_tokens:
                    yield batch, before  # `ex` is drawn again after a resume
                    batch, longest = [], 0
                batch.append(ex)
                longest = max(longest, n)
            else:
                batch.append(ex)
                if len(batch) == self.batch_size:
                    yield batch, cursor.state()
                    batch = []
        if batch:
            yield batch, cursor.state()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = self.rank_world or dist_rank_world()
        info = get_worker_info()
        n_workers, physical = (info.num_workers, info.id) if info is not None else (1, 0)
        start = self.start_batch
        if self.positions is not None:
            start = sum(int(p["local"]) for p in self.positions.values())
        logical = (start + physical) % n_workers
        slot, n_slots = rank * n_workers + logical, world * n_workers
        self._n_slots = n_slots
        cursor = _Cursor(track=bool(self.max_tokens and self.length is not None))
        skip = 0
        if self.positions is not None and logical in self.positions:
            cursor.restore(self.positions[logical])
        elif self.positions is None:
            skip = (start + physical) // n_workers  # replay (no saved positions)
        counter = _Counter()
        reported = (0, 0, {})
        for examples, state in self._batches(self._examples(slot, n_slots, counter, cursor), cursor):
            local = cursor.local
            cursor.local += 1
            if local < skip:
                continue
            batch = self.collate(examples)
            batch["_index"] = local * n_workers + logical
            batch["_corrupt"] = counter.corrupt - reported[0]
            batch["_drawn"] = counter.drawn - reported[1]
            batch["_corrupt_shards"] = {k: v - reported[2].get(k, 0) for k, v in counter.by_shard.items()
                                        if v != reported[2].get(k, 0)}
            reported = (counter.corrupt, counter.drawn, dict(counter.by_shard))
            batch["_state"] = Position({**state, "local": local + 1, "worker": logical, "workers": n_workers})
            yield batch


class Position:
    """A worker's stream position, carried by its batch. A plain object, not a dict, so the
    DataLoader and Lightning pass it through instead of walking the buffer ids."""

    __slots__ = ("state",)

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def __getstate__(self):
        return self.state

    def __setstate__(self, state) -> None:
        self.state = state


class _Cursor:
    """A slot's stream position: epoch, unit, offset in the unit, shuffle buffer, its generator."""

    def __init__(self, track: bool = False) -> None:
        self.epoch, self.unit, self.offset = 0, 0, 0
        self.rng: np.random.Generator | None = None
        self.buffer: list[dict[str, Any]] = []  # buffered samples
        self.ids: list[tuple[int, int]] = []  # their (shard, position), in buffer order
        self.pending: list[tuple[int, int]] = []  # buffered ids still to be read (resume)
        self.local = 0
        self.track = track
        self.marked: dict[str, Any] | None = None
        self.restored = False

    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "unit": self.unit,
            "offset": self.offset,
            "buffer": self.ids + self.pending,  # (shard, position) pairs
            "rng": None if self.rng is None else self.rng.bit_generator.state,
        }

    def mark(self) -> None:
        """Remember the position before the next sample is drawn (max_tokens hold-over)."""
        self.marked = self.state()

    def restore(self, s: dict[str, Any]) -> None:
        self.epoch, self.unit, self.offset = int(s["epoch"]), int(s["unit"]), int(s["offset"])
        self.local = int(s["local"])
        self.restored = True
        self.pending = [(int(a), int(b)) for a, b in s["buffer"]]
        if s["rng"] is not None:
            self.rng = np.random.Generator(np.random.PCG64())
            self.rng.bit_generator.state = s["rng"]


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
