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
* A sample becomes examples right after it is read: make_example may return one example, none, or
  a list (every window of a long recording, at a per-epoch random offset seeded by (seed, epoch,
  key)). The examples enter the shuffle buffer one by one, so the windows of one recording spread
  over the batches that follow (a recording of K windows through a buffer of B examples spreads
  over ~B examples; keep data.shuffle_buffer well above the windows of one recording). A reader
  holds one decoded recording at a time (its windows) plus the buffer.
* The shuffle buffer's order comes from a generator seeded by (seed, epoch, slot); per-example
  randomness such as crops from (seed, epoch, key).
* Mixtures (data.train_shards 'A @3 :: B @1', alm.data.shards.mixture_parts): each dataset is its
  own infinite sub-stream (its own shard order, epochs, buffer; seeds prefixed by the dataset's
  number), and each example comes from dataset d with probability w_d / sum(w), chosen by a
  generator seeded by (seed, slot). Without weights the stream is exactly the single-dataset one.
* A rank's batch g comes from logical worker g % W as that worker's batch g // W, the order in
  which torch's DataLoader interleaves its workers. Each batch carries `_state`: its logical
  worker's stream position *after* the batch (epoch, unit, sample offset in the unit, the next
  window of that sample, the shuffle buffer as (shard, sample, window) ids, the buffer generator's
  state, the worker's batch count; for a mixture each dataset's such position under `mix` and the
  chooser's state). With `max_tokens`, a batch closed by an example that did not fit records the
  position from before that example was drawn, so the example is drawn again on resume.
* Resume: given the positions of the batches last trained (alm.training.data_state keeps them
  in the checkpoint), physical worker p of a rank resumed at batch B plays logical worker
  (B + p) % W and starts exactly at that worker's position: it reads the buffered examples'
  samples (each once) and the recording it was inside (once, skipping to the saved window) and
  continues, so resuming costs the same at step 10 and at step 1,000,000, and in the middle of an
  hour-long recording the same as at its start. Without positions
  (a checkpoint from before this scheme), `start_batch` replays the stream up to batch B.

Each batch also carries `_index` (its number g in the rank's stream), `_corrupt` (samples this
worker dropped since its previous batch), `_corrupt_shards` ({shard file: count} of those) and
`_drawn` (samples it drew, good or bad) so training can reseed per batch and report bad data, and,
in a mixture, `_datasets` ({dataset name: examples of this batch from it}).
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
from alm.data.shards import expand_shards, is_remote, join_sets, mixture_parts

log = logging.getLogger(__name__)

MakeExample = Callable[[dict[str, Any], np.random.Generator], Optional[dict[str, Any] | list[dict[str, Any]]]]
Collate = Callable[[list[dict[str, Any]]], dict[str, Any]]
INDEX_CACHE = 64  # shard plans each reader keeps in memory


def dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _resolve_sets(spec: str) -> list[list[str]]:
    specs = join_sets(spec)
    sets = [expand_shards(s) for s in specs]
    names = [os.path.basename(u) for u in sets[0]]
    for other, s in zip(sets[1:], specs[1:]):
        by_name = {os.path.basename(u): u for u in other}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise FileNotFoundError(f"shard set {s!r} has no shard named {missing[0]} (parallel sets must match)")
    return sets


def resolve_shard_sets(spec: str) -> list[list[str]]:
    """'a/*.tar + b/*.tar' -> [[a shards], [b shards]]: parallel sets joined by file name and key.
    For a weighted mixture: set i of every dataset (each joined within its dataset), one after the other."""
    datasets = resolve_datasets(spec)
    if len(datasets) == 1:
        return datasets[0].shard_sets
    return [[u for d in datasets for u in d.shard_sets[i]] for i in range(len(datasets[0].shard_sets))]


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


@dataclass
class Dataset:
    """One dataset of a shard spec: its parallel shard sets and its sampling weight (None: not a mixture)."""

    name: str
    shard_sets: list[list[str]]
    weight: float | None = None


def _dataset_name(url: str, taken: set[str]) -> str:
    """The folder of a dataset's first shard ('data/clotho/train-000000.tar' -> 'clotho'), made unique."""
    base = os.path.basename(os.path.dirname(url.split("://", 1)[-1].rstrip("/"))) or "data"
    base = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in base).strip("_") or "data"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def resolve_datasets(spec: str) -> list[Dataset]:
    """The datasets of a shard spec (alm.data.shards.mixture_parts): one without a weight, or a
    weighted mixture, each with its parallel sets joined by file name and key."""
    try:
        parts = mixture_parts(spec)
    except ValueError as exc:
        from alm.errors import UserError

        raise UserError(str(exc)) from None
    taken: set[str] = set()
    out = []
    for body, weight in parts:
        sets = _resolve_sets(body)
        out.append(Dataset(_dataset_name(sets[0][0], taken), sets, weight))
    return out


class _Source:
    """The shards of one dataset: shard plans, each epoch's units per reader, reading samples."""

    def __init__(self, shard_sets: list[list[str]], seed: list[int], shuffle: bool) -> None:
        self.shard_sets = shard_sets
        self.seed = seed  # the prefix of every seed sequence: [seed] alone, or [seed, 101, dataset] in a mixture
        self.shuffle = shuffle
        self.n_slots = 1
        self._plans: OrderedDict[int, _Plan] = OrderedDict()
        self._by_name: list[dict[str, str]] | None = None

    def plan(self, shard: int) -> _Plan:
        """The (cached) plan of shard group `shard` (its number in shard_sets[0])."""
        found = self._plans.get(shard)
        if found is None:
            if self._by_name is None:
                self._by_name = [{os.path.basename(u): u for u in s} for s in self.shard_sets[1:]]
            url = self.shard_sets[0][shard]
            group = [url] + [m[os.path.basename(url)] for m in self._by_name]
            found = self._plans[shard] = _make_plan(group)
            few = len(self.shard_sets[0]) < self.n_slots
            while len(self._plans) > max(INDEX_CACHE, len(self.shard_sets[0]) if few else 0):
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(shard)
        return found

    def epoch_units(self, epoch: int, slot: int, n_slots: int) -> list[tuple[int, int, int]]:
        """[(shard, first position, stride)] this slot reads in `epoch`, in reading order."""
        n = len(self.shard_sets[0])
        order = np.arange(n)
        if self.shuffle:
            np.random.default_rng([*self.seed, epoch, 7]).shuffle(order)
        if n >= n_slots:
            return [(int(i), 0, 1) for i in order[slot::n_slots]]
        units, before = [], 0  # fewer shards than readers: sample number (over the epoch) mod readers
        for i in order:
            units.append((int(i), (slot - before) % n_slots, n_slots))
            before += self.plan(int(i)).size
        return units

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

    def report(self, shard: int, counter: _Counter) -> None:
        """Problems of a shard group, counted once per epoch by the reader of its position 0."""
        plan = self.plan(shard)
        for url, problem, lost in plan.problems:
            counter.bad(url, max(1, lost), f"{problem}; kept its {plan.size} complete sample(s) before the damage")
        if plan.unmatched:
            counter.bad(plan.urls[0], len(plan.unmatched),
                        f"{len(plan.unmatched)} sample(s) missing from a parallel set, e.g. {plan.unmatched[0]!r}")


def _as_list(out: Any) -> list[dict[str, Any]]:
    """make_example's result as a list of examples: None -> [], one example -> [it], a list as is."""
    if out is None:
        return []
    if isinstance(out, dict):
        return [out]
    return [e for e in out if e is not None]


class ShardStream(IterableDataset):
    """Infinite (or single-pass), seeded, resumable stream of batches from WebDataset shards.

    shard_sets: parallel shard lists (see resolve_shard_sets), or the datasets of a spec
    (resolve_datasets: one, or a weighted mixture). make_example(sample, rng) turns a raw sample
    (dict of bytes) into an example dict, a list of examples (every window of a long recording),
    or None, and raises on corrupt data; collate(examples) makes a batch. Batches hold
    `batch_size` examples, or, with `max_tokens`, as many as fit in max_tokens padded tokens
    (`length(example)` tokens each). `positions` ({logical worker: state}, as batches' `_state`)
    starts each worker exactly there; else `start_batch` replays.
    """

    def __init__(
        self,
        shard_sets: list[list[str]] | list[Dataset],
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
        datasets = list(shard_sets) if shard_sets and isinstance(shard_sets[0], Dataset) else [Dataset("data", shard_sets)]
        self.datasets = datasets
        self.mixture = datasets[0].weight is not None
        if self.mixture and not infinite:
            raise ValueError("a weighted mixture is an infinite stream (each dataset its own epochs)")
        if self.mixture:
            self.sources = [_Source(d.shard_sets, [seed, 101, i], shuffle) for i, d in enumerate(datasets)]
            w = np.array([d.weight for d in datasets], dtype=np.float64)
            self._cumulative = np.cumsum(w / w.sum())
        else:
            self.sources = [_Source(datasets[0].shard_sets, [seed], shuffle)]
        self.shard_sets = datasets[0].shard_sets
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

    # -- compatibility: the single dataset's shard plans ----------------------------------------
    def plan(self, shard: int) -> _Plan:
        return self.sources[0].plan(shard)

    def epoch_units(self, epoch: int, slot: int, n_slots: int) -> list[tuple[int, int, int]]:
        return self.sources[0].epoch_units(epoch, slot, n_slots)

    # -- the example stream of one dataset in one slot, with its position -----------------------
    def _windows(self, src: _Source, sample: dict[str, Any], epoch: int, counter: _Counter) -> list[dict[str, Any]]:
        """The examples of one sample (every window of a recording), its randomness seeded by (seed, epoch, key)."""
        key = sample["__key__"]
        rng = np.random.default_rng([*src.seed, epoch, zlib.crc32(key.encode())])
        try:
            return _as_list(self.make_example(sample, rng))
        except Exception as exc:  # a corrupt sample: counted and reported, not hidden
            counter.bad(sample.get("__url__", "?"), 1, f"skipping corrupt sample {key}: {exc}")
            counter.drawn -= 1  # already counted as drawn when read
            return []

    def _source_examples(self, d: int, slot: int, n_slots: int, counter: _Counter, c: "_Cursor"):
        """(example, d) forever (or one epoch) from dataset d. Each sample's examples (its windows)
        enter the shuffle buffer one by one, so a recording's windows spread over many batches.
        While suspended at a yield, `c` holds the exact position after that example: epoch, unit,
        offset (the sample) and window (the next window of that sample to enter the buffer)."""
        src = self.sources[d]
        produced = c.restored  # an epoch resumed midway may hold no more examples
        while True:
            units = src.epoch_units(c.epoch, slot, n_slots)
            if c.rng is None:
                c.rng = np.random.default_rng([*src.seed, c.epoch, slot, 11])
            if c.pending:  # resuming: rebuild the examples the buffer held
                c.buffer, c.ids = self._refill(src, c.pending, c.epoch, counter), list(c.pending)
                c.pending = []
            while c.unit < len(units):
                shard, start, stride = units[c.unit]
                if c.offset == 0 and c.window == 0 and start == 0:
                    src.report(shard, counter)
                todo = list(range(start + c.offset * stride, src.plan(shard).size, stride))
                for p, sample in src.read(shard, todo, counter):
                    k = (p - start) // stride
                    first = c.window if k == c.offset else 0  # > 0: resuming inside this recording
                    if first:
                        counter.drawn -= 1  # drawn before the checkpoint already
                    examples = self._windows(src, sample, c.epoch, counter)
                    c.offset, c.window = k + 1, 0
                    for w in range(first, len(examples)):
                        produced = True
                        c.offset, c.window = (k + 1, 0) if w + 1 == len(examples) else (k, w + 1)
                        if self.shuffle_buffer <= 1:
                            yield examples[w], d
                            continue
                        if len(c.buffer) < self.shuffle_buffer:
                            c.buffer.append(examples[w])
                            c.ids.append((shard, p, w))
                            continue
                        j = int(c.rng.integers(len(c.buffer)))
                        c.buffer[j], out = examples[w], c.buffer[j]
                        c.ids[j] = (shard, p, w)
                        yield out, d
                    del examples
                c.unit, c.offset, c.window = c.unit + 1, 0, 0
            while c.buffer:  # drain at epoch end: each example exactly once per epoch
                j = int(c.rng.integers(len(c.buffer)))
                c.ids.pop(j)
                yield c.buffer.pop(j), d
            if not produced and self.infinite:
                from alm.errors import UserError

                bad = ", ".join(f"{name} ({n})" for name, n in sorted(counter.by_shard.items())) or "none"
                raise UserError(f"reader {slot}/{n_slots}: epoch {c.epoch} over {len(src.shard_sets[0])} shard(s) gave "
                                f"no examples ({counter.corrupt} unreadable or corrupt; damaged shards: {bad}): "
                                "check the shards (or give more shards than loader readers)")
            if not self.infinite:
                return
            c.epoch, c.unit, c.offset, c.window, c.rng = c.epoch + 1, 0, 0, 0, None
            produced = False

    def _refill(self, src: _Source, ids: list[tuple[int, int, int]], epoch: int, counter: _Counter) -> list:
        """The buffered examples of a saved position: each of their samples read and made once."""
        by_shard: dict[int, dict[int, set[int]]] = {}
        for shard, p, w in ids:
            by_shard.setdefault(shard, {}).setdefault(p, set()).add(w)
        got, drawn = {}, counter.drawn
        for shard, wanted in by_shard.items():
            for p, sample in src.read(shard, sorted(wanted), counter):
                examples = self._windows(src, sample, epoch, counter)
                for w in wanted[p]:
                    if w < len(examples):
                        got[(shard, p, w)] = examples[w]
        counter.drawn = drawn  # drawn before the checkpoint already
        missing = [i for i in ids if i not in got]
        if missing:
            raise RuntimeError(f"resume: {len(missing)} buffered example(s) no longer readable, e.g. shard "
                               f"{src.shard_sets[0][missing[0][0]]} position {missing[0][1]} window {missing[0][2]} "
                               "(did the shards change?)")
        return [got[i] for i in ids]

    def _mixed(self, slot: int, n_slots: int, counter: _Counter, mc: "_MixCursor"):
        """(example, d) forever: each example from dataset d, chosen with probability weight_d / sum
        by a generator seeded by (seed, slot), from d's own infinite sub-stream."""
        streams = [self._source_examples(d, slot, n_slots, counter, sub) for d, sub in enumerate(mc.subs)]
        if mc.rng is None:
            mc.rng = np.random.default_rng([self.seed, slot, 13])
        last = len(streams) - 1
        while True:
            d = min(int(np.searchsorted(self._cumulative, mc.rng.random(), side="right")), last)
            yield next(streams[d])

    def _batches(self, examples, cursor) -> Iterator[tuple[list[dict[str, Any]], list[int], dict[str, Any]]]:
        """(examples, their datasets, position after the batch)."""
        batch: list[dict[str, Any]] = []
        sources: list[int] = []
        longest = 0
        budget = bool(self.max_tokens and self.length is not None)
        it = iter(examples)
        while True:
            before = cursor.state() if budget else None  # the position before the next example is drawn
            try:
                ex, d = next(it)
            except StopIteration:
                break
            if budget:
                n = self.length(ex)
                if batch and max(longest, n) * (len(batch) + 1) > self.max_tokens:
                    yield batch, sources, before  # `ex` is drawn again after a resume
                    batch, sources, longest = [], [], 0
                batch.append(ex)
                sources.append(d)
                longest = max(longest, n)
            else:
                batch.append(ex)
                sources.append(d)
                if len(batch) == self.batch_size:
                    yield batch, sources, cursor.state()
                    batch, sources = [], []
        if batch:
            yield batch, sources, cursor.state()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = self.rank_world or dist_rank_world()
        info = get_worker_info()
        n_workers, physical = (info.num_workers, info.id) if info is not None else (1, 0)
        start = self.start_batch
        if self.positions is not None:
            start = sum(int(p["local"]) for p in self.positions.values())
        logical = (start + physical) % n_workers
        slot, n_slots = rank * n_workers + logical, world * n_workers
        for src in self.sources:
            src.n_slots = n_slots
        cursor: _Cursor | _MixCursor = _MixCursor(len(self.sources)) if self.mixture else _Cursor()
        skip = 0
        if self.positions is not None and logical in self.positions:
            cursor.restore(self.positions[logical])
        elif self.positions is None:
            skip = (start + physical) // n_workers  # replay (no saved positions)
        counter = _Counter()
        if self.mixture:
            examples = self._mixed(slot, n_slots, counter, cursor)
        else:
            examples = self._source_examples(0, slot, n_slots, counter, cursor)
        reported = (0, 0, {})
        for batch_examples, sources, state in self._batches(examples, cursor):
            local = cursor.local
            cursor.local += 1
            if local < skip:
                continue
            batch = self.collate(batch_examples)
            batch["_index"] = local * n_workers + logical
            batch["_corrupt"] = counter.corrupt - reported[0]
            batch["_drawn"] = counter.drawn - reported[1]
            batch["_corrupt_shards"] = {k: v - reported[2].get(k, 0) for k, v in counter.by_shard.items()
                                        if v != reported[2].get(k, 0)}
            if self.mixture:
                counts = np.bincount(np.asarray(sources, dtype=np.int64), minlength=len(self.datasets))
                batch["_datasets"] = {d.name: int(n) for d, n in zip(self.datasets, counts)}
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
    """A slot's position in one dataset: epoch, unit, offset (sample) in the unit, window inside
    that sample, the shuffle buffer (as (shard, position, window) ids) and its generator."""

    def __init__(self) -> None:
        self.epoch, self.unit, self.offset, self.window = 0, 0, 0, 0
        self.rng: np.random.Generator | None = None
        self.buffer: list[dict[str, Any]] = []  # buffered examples
        self.ids: list[tuple[int, int, int]] = []  # their (shard, position, window), in buffer order
        self.pending: list[tuple[int, int, int]] = []  # buffered ids still to be made (resume)
        self.local = 0
        self.restored = False

    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "unit": self.unit,
            "offset": self.offset,
            "window": self.window,
            "buffer": self.ids + self.pending,  # (shard, position, window) triples
            "rng": None if self.rng is None else self.rng.bit_generator.state,
        }

    def restore(self, s: dict[str, Any]) -> None:
        self.epoch, self.unit, self.offset = int(s["epoch"]), int(s["unit"]), int(s["offset"])
        self.window = int(s.get("window", 0))  # absent in checkpoints from before windows
        self.local = int(s.get("local", 0))
        self.restored = True
        self.pending = [(int(i[0]), int(i[1]), int(i[2]) if len(i) > 2 else 0) for i in s["buffer"]]
        if s["rng"] is not None:
            self.rng = np.random.Generator(np.random.PCG64())
            self.rng.bit_generator.state = s["rng"]


class _MixCursor:
    """A slot's position in a weighted mixture: each dataset's _Cursor and the chooser's generator."""

    def __init__(self, n: int) -> None:
        self.subs = [_Cursor() for _ in range(n)]
        self.rng: np.random.Generator | None = None
        self.local = 0

    def state(self) -> dict[str, Any]:
        subs = [s.state() for s in self.subs]
        return {"epoch": min(s["epoch"] for s in subs), "mix": subs,
                "chooser": None if self.rng is None else self.rng.bit_generator.state}

    def restore(self, s: dict[str, Any]) -> None:
        self.local = int(s.get("local", 0))
        subs = s.get("mix")
        if subs is None or len(subs) != len(self.subs):
            from alm.errors import UserError

            raise UserError(f"resume: the saved data position holds {len(subs or [])} dataset(s), the mixture "
                            f"has {len(self.subs)}: resume with the same data.train_shards")
        for cur, sub in zip(self.subs, subs):
            cur.restore(sub)
        if s.get("chooser") is not None:
            self.rng = np.random.Generator(np.random.PCG64())
            self.rng.bit_generator.state = s["chooser"]


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
