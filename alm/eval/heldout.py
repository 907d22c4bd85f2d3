"""The clips of a held-out shard set, in one global order, read a rank's share at a time.

    heldout_shards(spec, evaluation=False)    -> [shard paths]: a directory resolves by its split roles
                                              (training's validation: its validation split; evaluation
                                              (`alm eval`): its test split, else validation,
                                              alm.data.splits.resolve_eval_spec), a glob = every shard it
                                              matches (e.g. data/audiocaps/test-*.tar)
    clips(urls, rank=0, world=1) -> Clip ...  this rank's clips: global positions rank, rank + world, ...
    held_out_samples(spec, limit, report)     every sample of a resolved spec in file order, parallel sets
                                              (`prep + tokens`) joined by key (`alm eval run`'s tasks)
    embed_clips(encoder, urls, ...)           alm/embed.py audio embeddings of the clips, one batch decoded
                                              at a time

The global position of a clip is its place in (shard order, sample order): the same on any number of
ranks, so metrics gathered from W ranks equal one rank's. Local shards are read through their header
index (alm/data/index.py): a rank reads the headers (512 bytes per member) and only its own samples'
bytes. A sample without an audio member or with unreadable json is an error naming the shard and key
(nothing is dropped silently); a sample without captions is yielded with `texts == []` and the caller
counts it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from alm.errors import UserError

if TYPE_CHECKING:
    import numpy as np


@dataclass
class Clip:
    index: int  # global position over all shards (shard order, then sample order)
    key: str
    url: str
    audio: bytes  # the sample's audio member, encoded (flac / wav / ...)
    meta: dict[str, Any]  # its json
    texts: list[str]  # every caption (alm.tokenizers.text.sample_texts), in the json's order


def heldout_shards(spec: str, evaluation: bool = False) -> list[str]:
    """The shards of a held-out spec: directories by their validation split (evaluation: test, else
    validation), globs / files as written. Parallel sets (' + ') are refused: the clips and captions
    live in prep shards."""
    from alm.data.splits import resolve_eval_spec, resolve_split_spec
    from alm.data.stream import resolve_datasets

    try:
        datasets = resolve_datasets(resolve_eval_spec(spec) if evaluation else resolve_split_spec(spec, "val"))
    except FileNotFoundError as exc:
        raise UserError(f"shards {spec}: {exc}") from None
    if any(len(d.shard_sets) > 1 for d in datasets):
        raise UserError(f"shards {spec}: name one set of prep shards (audio + json captions), not parallel sets joined by ' + '")
    return [u for d in datasets for u in d.shard_sets[0]]


def _samples(url: str) -> Iterator[tuple[int, Any]]:
    """(position in the shard, a callable reading the sample) for every sample of one shard."""
    from alm.data.shards import is_remote, read_shard

    if is_remote(url):
        for i, sample in enumerate(read_shard(url)):
            yield i, (lambda s=sample: s)
        return
    from alm.data.index import read_sample, shard_index

    index = shard_index(url)
    if index.problem:
        raise UserError(f"{url}: {index.problem} (held-out evaluation reads every sample: re-prepare the shard)")
    for i in range(len(index)):
        yield i, (lambda i=i: read_sample(index, i, url))


def _clip(index: int, url: str, sample: dict[str, Any]) -> Clip:
    from alm.data.audio import SHARD_AUDIO, shard_audio_ext
    from alm.tokenizers.text import sample_texts

    key = sample["__key__"]
    ext = shard_audio_ext(sample)
    if ext is None:
        raise UserError(f"{url}: sample {key!r} has no audio member ({'/'.join(SHARD_AUDIO)})")
    try:
        meta = json.loads(sample["json"])
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{url}: sample {key!r} has no readable json member ({exc})") from None
    return Clip(index, key, url, sample[ext], meta, sample_texts(meta))


def clips(urls: list[str], rank: int = 0, world: int = 1) -> Iterator[Clip]:
    """This rank's clips of `urls` (global positions p with p % world == rank), in global order."""
    offset = 0
    for url in urls:
        n = 0
        for i, read in _samples(url):
            n = i + 1
            if (offset + i) % world == rank:
                yield _clip(offset + i, url, read())
        offset += n


def held_out_samples(spec: str, limit: int = 0, report: dict | None = None) -> Iterator[dict[str, Any]]:
    """The samples of a resolved shard spec in file order, parallel sets joined by key (the members
    of every set in one sample). A key missing from a parallel set (e.g. a clip the token pass could
    not decode, listed in its errors.json) is counted in report["unjoined"] and named on stderr —
    never dropped silently. The first set is read through its header index (a `limit` reads only
    the samples it needs); each parallel shard is held in memory one shard at a time."""
    import sys

    from alm.data.shards import read_shard
    from alm.data.stream import resolve_shard_sets

    sets = resolve_shard_sets(spec)
    n = 0
    for i, url in enumerate(sets[0]):
        extras = [{s["__key__"]: s for s in read_shard(other[i])} for other in sets[1:]]
        for _, read in _samples(url):
            sample = read()
            parts = [e.get(sample["__key__"]) for e in extras]
            if any(p is None for p in parts):
                if report is not None:
                    report["unjoined"] = report.get("unjoined", 0) + 1
                    report.setdefault("unjoined_keys", []).append(sample["__key__"])
                print(f"[alm eval] {url}: sample {sample['__key__']!r} is missing from a parallel set: not scored",
                      file=sys.stderr)
                continue
            for p in parts:
                sample = {**p, **sample}
            yield sample
            n += 1
            if limit and n >= limit:
                return


def embed_clips(encoder, urls: list[str], keep=lambda clip: True, batch_size: int = 16,
                limit: int = 0) -> tuple["np.ndarray", list[Clip], int]:
    """The clips of `urls` that `keep` accepts (the first `limit`, 0 = all), embedded by an
    alm.embed.Encoder (resampled to its rate; longer clips: its mean of windows) -> (audio (n, D),
    the kept clips (their audio bytes dropped), clips not kept). One batch is decoded at a time."""
    import numpy as np

    from alm.data.audio import load_mono

    rows, kept, pending, left_out = [], [], [], 0
    for clip in clips(urls):
        if not keep(clip):
            left_out += 1
            continue
        audio, _ = load_mono(clip.audio, encoder.sample_rate)
        if audio.size == 0:
            raise UserError(f"{clip.url}: sample {clip.key!r} has no audio frames")
        pending.append(audio)
        clip.audio = b""
        kept.append(clip)
        if len(pending) == batch_size:
            rows.append(encoder.audio(pending, batch_size=batch_size))
            pending = []
        if limit and len(kept) >= limit:
            break
    if pending:
        rows.append(encoder.audio(pending, batch_size=batch_size))
    audio = np.concatenate(rows) if rows else np.zeros((0, encoder.dim), np.float32)
    return audio, kept, left_out
