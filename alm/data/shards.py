"""WebDataset shards: shard-safe keys, deterministic atomic writing, and shard-list expansion.

A shard is a plain tar file of samples; a sample is the tar members sharing a key
(`{key}.flac`, `{key}.json`, `{key}.semantic.npy`, ...). We write them with webdataset's
TarWriter, fixing every header field (mtime, owner, mode) so the same samples give
byte-identical shards, and each shard appears under its final name only once complete.
"""

from __future__ import annotations

import contextlib
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


ERRORS_FILE = "errors.json"  # OUT/errors.json: every finished shard's failed samples, merged
ERRORS_DIR = "errors"  # OUT/errors/<shard name>.json: one shard's failed samples (only shards that have some)


def shard_share(names: list[str], num_shards: int = 1, shard_index: int = 0) -> list[int]:
    """Positions in `names` that job `shard_index` of `num_shards` owns: input shard i goes to job i % N.

    Round-robin (not contiguous blocks), so each job gets a similar mix of splits and shard sizes."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard index {shard_index} of {num_shards}: expected num_shards >= 1 and 0 <= index < num_shards")
    return list(range(shard_index, len(names), num_shards))


def _read_errors(path: Path) -> list[dict[str, str]]:
    try:
        errors = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable error list ({exc}); delete it and the shard it names to redo that shard") from exc
    if not isinstance(errors, list):
        raise ValueError(f"{path}: expected a JSON list of errors")
    return errors


def merge_errors(out_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Rewrite OUT/errors.json as the errors of every FINISHED shard in OUT (from OUT/errors/*.json),
    under a lock, so concurrent jobs of one array never lose each other's entries. Returns the list.

    A pre-per-shard errors.json (no OUT/errors/ yet) is first split into per-shard files."""
    import fcntl

    from alm.io import atomic_write_text

    out_dir = Path(out_dir)
    per_shard = out_dir / ERRORS_DIR
    with open(out_dir / ".errors.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not per_shard.is_dir() and (out_dir / ERRORS_FILE).exists():  # a set written before errors/ existed
            by_shard: dict[str, list] = {}
            for e in _read_errors(out_dir / ERRORS_FILE):
                by_shard.setdefault(e["shard"], []).append(e)
            for name, errs in by_shard.items():
                atomic_write_text(per_shard / f"{name}.json", json.dumps(errs, indent=1, ensure_ascii=False))
        merged: list[dict[str, str]] = []
        files = sorted(per_shard.glob("*.json")) if per_shard.is_dir() else []
        for f in files:
            if (out_dir / f.name[: -len(".json")]).exists():  # a shard killed before its rename: redone later
                merged.extend(_read_errors(f))
        atomic_write_text(out_dir / ERRORS_FILE, json.dumps(merged, indent=1, ensure_ascii=False))
    return merged


@contextlib.contextmanager
def _shard_lock(out_dir: Path, name: str):
    """Hold `out_dir/.NAME.lock` (flock, non-blocking) while writing shard NAME: True if held, False if
    another process holds it. Removed after the shard is renamed into place."""
    import fcntl

    lock_path = out_dir / f".{name}.lock"
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            lock_path.unlink(missing_ok=True)


def _map_one(url: str, path: Path, errors_path: Path, fn, batch_size: int) -> tuple[int, list[dict[str, str]]]:
    """Write one output shard at `path` from input shard `url` (see map_shards) -> (samples written, errors).
    The shard's error list (if any) is written before the shard gets its final name."""
    from alm.io import atomic_write_text

    if errors_path.exists():  # left by a run killed between the list and the shard: redone from scratch
        errors_path.unlink()
    name = path.name
    shard_errors: list[dict[str, str]] = []
    written = 0
    batch: list[dict[str, Any]] = []
    shard = TarShard(path)
    try:

        def flush() -> None:
            nonlocal written
            for sample, members in zip(batch, fn(batch)):
                if members is None:
                    shard_errors.append({"key": sample["__key__"], "shard": name, "reason": "tokenizer_failed"})
                    continue
                out = {"__key__": sample["__key__"], **members}
                if "json" in sample and "json" not in out:
                    out["json"] = sample["json"]
                shard.write(out)
                written += 1
            batch.clear()

        for sample in read_shard(url):
            batch.append(sample)
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
        if shard_errors:  # the list first: a shard under its final name always has its errors listed
            atomic_write_text(errors_path, json.dumps(shard_errors, indent=1, ensure_ascii=False))
        shard.close()
    except BaseException:
        shard.abort()
        raise
    return written, shard_errors


def map_shards(
    in_urls: list[str],
    out_dir: str | os.PathLike,
    fn,
    batch_size: int = 16,
    desc: str = "tokenize",
    progress: bool = True,
    num_shards: int = 1,
    shard_index: int = 0,
) -> dict[str, Any]:
    """Write a parallel shard set: for each input shard, `out_dir/<same file name>` holding,
    for every input sample, the members `fn` computes, under the same key, in the same order.

    `fn(samples) -> list[dict | None]` gets a list of raw samples (dicts of bytes) and returns,
    per sample, the new members ({ext: bytes}) or None when that sample cannot be processed
    (e.g. corrupt audio). Such samples are left out of the output, counted, and listed with their
    key and shard -- never dropped silently -- in `out_dir/errors/<shard name>.json` (written before
    the shard is renamed into place, so a finished shard always has its list; shards without errors
    have none) and merged into `out_dir/errors.json` (errors of every finished shard in out_dir).
    The input's `json` member is copied so the set is self-describing. Shards already present in
    `out_dir` are complete (atomic writes) and are skipped, so an interrupted run continues where it died.

    `num_shards`/`shard_index`: this call does only input shards i with i % num_shards == shard_index
    (see shard_share); N such calls, in any order or at once, write exactly what one call does.
    A shard another process is writing at the same moment (its `.NAME.lock` is held) is left to it and
    listed in "busy" (this call's share is then unfinished: rerun it).
    Returns {"shards": this call's output paths, "existing": names already there, "busy": names left to
    another writer, "samples": N written now,
    "errors": errors of this call's shards, "errors_total": len(out_dir/errors.json),
    "done_total": finished shards of the whole input list in out_dir, "total": input shards}.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [os.path.basename(u) for u in in_urls]
    if len(set(names)) != len(names):
        raise ValueError("input shards must have distinct file names to map them into one directory")
    mine = shard_share(names, num_shards, shard_index)
    merge_errors(out_dir)  # splits an old errors.json into errors/ before any shard is redone
    per_shard = out_dir / ERRORS_DIR  # made when a shard first has an error
    errors: list[dict[str, str]] = []
    existing: list[str] = []
    busy: list[str] = []
    total = 0
    for i in tqdm(mine, desc=desc, unit="shard", disable=not progress):
        url, name = in_urls[i], names[i]
        errors_path = per_shard / f"{name}.json"
        if (out_dir / name).exists():
            existing.append(name)
            if errors_path.exists():
                errors.extend(_read_errors(errors_path))
            continue
        with _shard_lock(out_dir, name) as held:
            if not held:  # another job writes this shard right now (e.g. a straggler of an earlier array)
                busy.append(name)
                continue
            if (out_dir / name).exists():  # finished by another job since the check above
                existing.append(name)
                errors.extend(_read_errors(errors_path) if errors_path.exists() else [])
                continue
            written, shard_errors = _map_one(url, out_dir / name, errors_path, fn, batch_size)
        total += written
        errors.extend(shard_errors)
    merged = merge_errors(out_dir)
    present = set(os.listdir(out_dir))  # one listing, not a stat per shard of the whole set
    return {"shards": [str(out_dir / names[i]) for i in mine], "existing": existing, "busy": busy, "samples": total,
            "errors": errors, "errors_total": len(merged), "done_total": sum(n in present for n in names),
            "total": len(names)}
