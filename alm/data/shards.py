"""WebDataset shards: shard-safe keys, deterministic atomic writing, and shard-list expansion.

A shard is a plain tar file of samples; a sample is the tar members sharing a key
(`{key}.flac`, `{key}.json`, `{key}.semantic.npy`, ...). We write them with webdataset's
TarWriter, fixing every header field (mtime, owner, mode) so the same samples give
byte-identical shards, and each shard appears under its final name only once complete.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import webdataset as wds
from webdataset.shardlists import expand_urls

from alm.io import fsync_dir

_SAFE = re.compile(r"[A-Za-z0-9_-]")


def key_from_id(sample_id: str) -> str:
    """Injective, shard-safe key for a natural sample id.

    Letters, digits, '_' and '-' stay; every other character (including '.', '/', ' ', '~')
    becomes '~' + the hex of its UTF-8 bytes. No dots survive (webdataset splits the key at
    the first dot) and distinct ids give distinct keys.
    """
    if not sample_id:
        raise ValueError("empty sample id")
    out = []
    for ch in sample_id:
        if _SAFE.fullmatch(ch):
            out.append(ch)
        else:
            out.append("".join(f"~{b:02x}" for b in ch.encode("utf-8")))
    return "".join(out)


def id_from_key(key: str) -> str:
    """Inverse of key_from_id."""
    raw = bytearray()
    i = 0
    while i < len(key):
        if key[i] == "~":
            raw += bytes([int(key[i + 1 : i + 3], 16)])
            i += 3
        else:
            raw += key[i].encode()
            i += 1
    return raw.decode("utf-8")


def safe_split_name(split: str) -> str:
    """'1h/0/clean' -> '1h_0_clean': a split name usable in a shard file name."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", split).strip("_") or "split"


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def npy_load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, allow_nan=False).encode("utf-8")


class TarShard:
    """One shard written atomically and deterministically at `path`.

    Members of each sample are written in sorted extension order with fixed header fields;
    the file is written under a hidden temporary name and renamed into place by `close()`,
    so a killed writer never leaves a partial shard under a final name.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.parent / f".{self.path.name}.tmp"
        self._file = open(self._tmp, "wb")
        self._tar = wds.TarWriter(self._file, encoder=False, user="alm", group="alm", mode=0o444, mtime=0)
        self.count = 0
        self._keys: set[str] = set()

    def write(self, sample: dict[str, Any]) -> None:
        key = sample["__key__"]
        if "." in key:
            raise ValueError(f"shard key {key!r} contains a dot (use alm.data.shards.key_from_id)")
        if key in self._keys:
            raise ValueError(f"{self.path}: duplicate shard key {key!r}")
        self._keys.add(key)
        ordered: dict[str, Any] = {"__key__": key}
        for ext in sorted(k for k in sample if not k.startswith("__")):
            value = sample[ext]
            if not isinstance(value, (bytes, bytearray)):
                raise TypeError(f"sample {key!r} member {ext!r}: expected bytes, got {type(value).__name__}")
            ordered[ext] = bytes(value)
        self._tar.write(ordered)
        self.count += 1

    def close(self) -> str:
        self._tar.close()  # ends the tar stream; our file object stays open
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)
        return str(self.path)

    def abort(self) -> None:
        try:
            self._tar.close()  # let tarfile finish with the file before it is closed and removed
            self._file.close()
        finally:
            if self._tmp.exists():
                self._tmp.unlink()

    def __enter__(self) -> "TarShard":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ShardWriter:
    """Write samples into `{out_dir}/{prefix}-{index:06d}.tar`, at most `max_count` samples each
    (each shard a TarShard: atomic and deterministic). Keys must be unique across all shards."""

    def __init__(self, out_dir: str | os.PathLike, prefix: str, max_count: int = 1000, start_index: int = 0):
        if max_count <= 0:
            raise ValueError("max_count must be > 0")
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.max_count = max_count
        self.index = start_index
        self.paths: list[str] = []
        self._shard: TarShard | None = None
        self._keys: set[str] = set()

    def write(self, sample: dict[str, Any]) -> None:
        key = sample["__key__"]
        if key in self._keys:
            raise ValueError(f"duplicate shard key {key!r}")
        self._keys.add(key)
        if self._shard is None:
            self._shard = TarShard(self.out_dir / f"{self.prefix}-{self.index:06d}.tar")
        self._shard.write(sample)
        if self._shard.count >= self.max_count:
            self._roll()

    def _roll(self) -> None:
        if self._shard is not None:
            self.paths.append(self._shard.close())
            self._shard = None
            self.index += 1

    def close(self) -> list[str]:
        self._roll()
        return self.paths

    def abort(self) -> None:
        if self._shard is not None:
            self._shard.abort()
            self._shard = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def expand_shards(spec: str | Iterable[str]) -> list[str]:
    """Turn a shard spec into a list of shard paths/URLs.

    Accepts a directory (all `*.tar` inside, sorted), a glob, a brace pattern
    (`train-{000000..000009}.tar`), a remote URL or `pipe:` command (passed to webdataset as is),
    or several of these joined by '::' or given as a list.
    """
    parts = [spec] if isinstance(spec, str) else list(spec)
    pieces: list[str] = []
    for part in parts:
        pieces.extend(p for p in str(part).split("::") if p.strip())
    urls: list[str] = []
    for piece in pieces:
        piece = os.path.expanduser(piece.strip())
        if is_remote(piece):
            urls.extend(expand_urls(piece))
            continue
        if os.path.isdir(piece):
            found = sorted(glob.glob(os.path.join(piece, "*.tar")))
        elif any(c in piece for c in "*?["):
            found = sorted(glob.glob(piece))
        else:
            found = expand_urls(piece)  # brace expansion (or a single path)
            missing = [f for f in found if not os.path.isfile(f)]
            if missing:
                raise FileNotFoundError(f"shard spec {piece!r}: {len(missing)} shard(s) missing, e.g. {missing[0]}")
        if not found:
            raise FileNotFoundError(f"shard spec {piece!r}: no .tar shards found")
        urls.extend(found)
    if not urls:
        raise FileNotFoundError(f"shard spec {spec!r} names no shards")
    return urls


def read_shard(url: str) -> Iterable[dict[str, Any]]:
    """Iterate the samples of one shard (raw bytes members), in file order."""
    yield from wds.tarfile_samples([{"url": url}])


_WEIGHT = re.compile(r"\s@\s*([^\s:@]*)\s*(?:::|$)")  # ' @W' closing a dataset: before '::' or at the end


def mixture_parts(spec: str) -> list[tuple[str, float | None]]:
    """A shard spec as datasets with sampling weights.

    Grammar. A spec without a weight is one dataset, read as always: parallel sets joined by
    ' + ', each a list of shard sources (directory, glob, brace pattern, file, URL) joined by '::':
    'a1::a2 + b1::b2'. A spec with weights is a mixture: datasets joined by '::', each such a spec
    closed by ' @WEIGHT' (a space before '@'; WEIGHT a positive number). A dataset ends exactly
    at its weight, so its own sources may still be joined by '::':

        audiocaps/*.tar @3 :: clotho/*.tar @1 :: wavcaps/*.tar @0.5
        sem_a/*.tar + codes_a/*.tar @2 :: sem_b/*.tar + codes_b/*.tar @1
        a/train-*.tar::a/extra-*.tar @2 :: b/*.tar @1

    In a mixture every dataset needs a weight and every dataset the same number of parallel sets.
    Returns [(dataset spec, weight)], or [(spec, None)] for a spec without weights.
    """
    found = list(_WEIGHT.finditer(spec))
    if not found:
        return [(spec, None)]
    parts: list[tuple[str, float | None]] = []
    pos = 0
    for m in found:
        body = spec[pos : m.start()].strip()
        pos = m.end()
        if body.startswith("::"):
            body = body[2:].strip()
        if not body:
            raise ValueError(f"shard spec {spec!r}: a weight {'@' + m.group(1)!r} with no shards before it")
        try:
            weight = float(m.group(1))
        except ValueError:
            weight = float("nan")
        if not weight > 0 or weight == float("inf"):
            raise ValueError(f"shard spec {spec!r}: dataset {body!r}: weight {m.group(1)!r} is not a positive number")
        parts.append((body, weight))
    rest = spec[pos:].strip().removeprefix("::").strip()
    if rest:
        raise ValueError(f"shard spec {spec!r}: dataset {rest!r} has no weight: in a mixture every "
                         "dataset ends with ' @WEIGHT' (e.g. 'clotho/*.tar @1')")
    widths = {len(_split_plus(body, spec)) for body, _ in parts}
    if len(widths) > 1:
        raise ValueError(f"shard spec {spec!r}: the datasets of a mixture have different numbers of parallel "
                         f"sets ({sorted(widths)}): each needs the same ' + ' members")
    return parts


def _split_plus(spec: str, whole: str) -> list[str]:
    sets = [s.strip() for s in spec.split(" + ")]
    if any(not s for s in sets):
        raise ValueError(f"shard spec {whole!r}: empty shard set around ' + '")
    return sets


def join_sets(spec: str) -> list[str]:
    """Split a spec of parallel shard sets joined by ' + ' (see ShardStream): 'a/*.tar + b/*.tar'.

    For a mixture (see mixture_parts), set i is every dataset's set i joined by '::' (weights
    dropped): what checks of the shards' files and provenance need."""
    parts = mixture_parts(spec)
    if parts[0][1] is None:
        return _split_plus(spec, spec)
    per_dataset = [_split_plus(body, spec) for body, _ in parts]
    return ["::".join(sets[i] for sets in per_dataset) for i in range(len(per_dataset[0]))]


def map_shards(
    in_urls: list[str],
    out_dir: str | os.PathLike,
    fn,
    batch_size: int = 16,
    desc: str = "tokenize",
    progress: bool = True,
) -> dict[str, Any]:
    """Write a parallel shard set: for each input shard, `out_dir/<same file name>` holding,
    for every input sample, the members `fn` computes, under the same key, in the same order.

    `fn(samples) -> list[dict | None]` gets a list of raw samples (dicts of bytes) and returns,
    per sample, the new members ({ext: bytes}) or None when that sample cannot be processed
    (e.g. corrupt audio). Such samples are left out of the output, counted, and listed in
    `out_dir/errors.json` with their key and shard -- never dropped silently. The input's
    `json` member is copied so the set is self-describing. Shards already present in `out_dir`
    are complete (atomic writes) and are skipped, so an interrupted run continues where it died.
    Returns {"shards": [...], "samples": N, "errors": [...]}.
    """
    from tqdm import tqdm

    from alm.io import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [os.path.basename(u) for u in in_urls]
    if len(set(names)) != len(names):
        raise ValueError("input shards must have distinct file names to map them into one directory")
    errors_path = out_dir / "errors.json"
    errors: list[dict[str, str]] = json.loads(errors_path.read_text()) if errors_path.exists() else []
    total = 0
    for url, name in zip(tqdm(in_urls, desc=desc, unit="shard", disable=not progress), names):
        if (out_dir / name).exists():
            continue
        errors = [e for e in errors if e["shard"] != name]  # a shard redone from scratch
        batch: list[dict[str, Any]] = []
        with TarShard(out_dir / name) as shard:

            def flush() -> None:
                nonlocal total
                for sample, members in zip(batch, fn(batch)):
                    if members is None:
                        errors.append({"key": sample["__key__"], "shard": name, "reason": "tokenizer_failed"})
                        continue
                    out = {"__key__": sample["__key__"], **members}
                    if "json" in sample and "json" not in out:
                        out["json"] = sample["json"]
                    shard.write(out)
                    total += 1
                batch.clear()

            for sample in read_shard(url):
                batch.append(sample)
                if len(batch) >= batch_size:
                    flush()
            if batch:
                flush()
        atomic_write_text(errors_path, json.dumps(errors, indent=1, ensure_ascii=False))
    atomic_write_text(errors_path, json.dumps(errors, indent=1, ensure_ascii=False))
    return {"shards": [str(out_dir / n) for n in names], "samples": total, "errors": errors}
