"""A shard's index: where each sample's members lie in the tar file, from its headers alone.

`shard_index(path)` walks the 512-byte tar headers of a local shard, seeking over member data,
so it reads ~512 bytes per member whatever the shard's size, and groups members into samples the
way webdataset does (key = the name up to the first dot of its last path part; consecutive members
with one key form a sample; extensions lower-cased; `__*__` meta files and non-regular members
skipped). The newest indexes are cached per process (keyed by path, size and mtime).

`read_sample(index, i)` then reads only sample i's member bytes (one positioned read per member):
a reader seeks straight to any sample, and a resumed shuffle buffer reads only what it holds.

Damage is found by the scan, not hidden: a shard cut short (a header or a member's data past the
end of the file, or no end-of-archive blocks) or with a corrupt header keeps the complete samples
before the damage and says what happened in `index.problem`; a sample whose data was cut off
counts in `index.lost`.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

BLOCK = 512
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META = re.compile(r"__[^/]*__($|/)")


@dataclass
class ShardIndex:
    """Samples of one shard: keys[i] and members[i] = [(ext, data offset, size)] in file order."""

    path: str
    keys: list[str] = field(default_factory=list)
    members: list[list[tuple[str, int, int]]] = field(default_factory=list)
    problem: str | None = None  # None = a complete, readable tar
    lost: int = 0  # samples (partly) past the damage: dropped, counted as corrupt
    stamp: tuple[int, int] = (0, 0)  # the file's (size, mtime_ns) when scanned

    def __len__(self) -> int:
        return len(self.keys)


class Reads:
    """Per-process count of sample bytes read (the I/O invariant the tests check)."""

    samples = 0
    bytes = 0


_CACHE: "OrderedDict[tuple[str, int, int], ShardIndex]" = OrderedDict()  # the newest scanned indexes
CACHED_INDEXES = 64
_FILES: "OrderedDict[tuple[str, tuple[int, int]], int]" = OrderedDict()  # open shard files of this process (pread: no shared offset)
OPEN_FILES = 16


def _fd(index: ShardIndex) -> int:
    """An open descriptor of the indexed file (a shard replaced since is opened anew)."""
    key = (index.path, index.stamp)
    fd = _FILES.get(key)
    if fd is None:
        fd = _FILES[key] = os.open(index.path, os.O_RDONLY)
        while len(_FILES) > OPEN_FILES:
            os.close(_FILES.popitem(last=False)[1])
    else:
        _FILES.move_to_end(key)
    return fd


def _octal(field_bytes: bytes) -> int:
    if field_bytes and field_bytes[0] & 0x80:  # GNU base-256 for large sizes
        value = field_bytes[0] & 0x3F
        for b in field_bytes[1:]:
            value = (value << 8) | b
        return value
    text = field_bytes.split(b"\0", 1)[0].strip(b" \0")
    return int(text, 8) if text else 0


def _checksum_ok(header: bytes) -> bool:
    stored = _octal(header[148:156])
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    return stored == unsigned


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_path(data: bytes) -> str | None:
    """The `path` record of a pax extended header ("%d path=...\\n" records)."""
    pos = 0
    found = None
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        record = data[space + 1 : pos + length - 1]
        k, _, v = record.partition(b"=")
        if k == b"path":
            found = v.decode("utf-8", "surrogateescape")
        pos += length
    return found


def scan_tar(path: str) -> ShardIndex:
    """Index a local tar shard by reading its headers only (see the module docstring)."""
    st = os.stat(path)
    size = st.st_size
    index = ShardIndex(path, stamp=(st.st_size, st.st_mtime_ns))
    current_key: str | None = None
    current: dict[str, tuple[int, int]] = {}
    order: list[str] = []

    def close_sample() -> None:
        if current_key is not None and current:
            index.keys.append(current_key)
            index.members.append([(ext, *current[ext]) for ext in order])

    with open(path, "rb", buffering=0) as f:
        offset = 0
        long_name: str | None = None
        ended = False
        while True:
            header = os.pread(f.fileno(), BLOCK, offset)
            if len(header) < BLOCK:
                index.problem = f"truncated: the file ends inside the tar header at byte {offset} (size {size})"
                break
            if header == b"\0" * BLOCK:
                ended = True
                break
            if not _checksum_ok(header):
                index.problem = f"corrupt tar header at byte {offset}"
                break
            n = _octal(header[124:136])
            kind = header[156:157]
            data_at = offset + BLOCK
            offset = data_at + (n + BLOCK - 1) // BLOCK * BLOCK
            if data_at + n > size:
                index.problem = f"truncated: member data runs past the end of the file ({size} bytes)"
                index.lost += 1
                break
            if kind in (b"x", b"L"):  # pax extended header / GNU long name: names the next member
                data = os.pread(f.fileno(), n, data_at)
                long_name = _pax_path(data) if kind == b"x" else _cstr(data)
                continue
            if kind == b"g" or kind not in (b"0", b"\0", b"7"):  # only regular files are members
                long_name = None
                continue
            name = long_name
            long_name = None
            if name is None:
                name = _cstr(header[0:100])
                if header[257:262] == b"ustar":
                    prefix = _cstr(header[345:500])
                    if prefix:
                        name = prefix + "/" + name
            if "/" not in name and name.startswith("__") and name.endswith("__") or _META.match(name):
                continue
            m = _KEY_EXT.match(name)
            if m is None:
                continue
            key, ext = m.group(1), m.group(2).lower()
            if key != current_key:
                close_sample()
                current_key, current, order = key, {}, []
            if ext in current:
                index.problem = f"sample {key!r} has two {ext!r} members"
                break
            current[ext] = (data_at, n)
            order.append(ext)
        if index.problem is None:
            close_sample()
        elif current_key is not None and current:
            index.lost += 1  # the sample the damage cut into
        if index.problem is None and not ended:
            index.problem = "truncated: no end-of-archive marker"
    return index


def shard_index(path: str) -> ShardIndex:
    """The cached index of a local shard (rescanned if its size or mtime changed)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    found = _CACHE.get(key)
    if found is None:
        found = _CACHE[key] = scan_tar(path)
        while len(_CACHE) > CACHED_INDEXES:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return found


def read_sample(index: ShardIndex, i: int, url: str | None = None) -> dict[str, Any]:
    """Sample i of the indexed shard as webdataset gives it: {"__key__", "__url__", ext: bytes}."""
    sample: dict[str, Any] = {"__key__": index.keys[i], "__url__": url or index.path}
    fd = _fd(index)
    for ext, at, n in index.members[i]:
        data = os.pread(fd, n, at)
        if len(data) != n:
            raise OSError(f"{index.path}: member {index.keys[i]}.{ext} is short ({len(data)} of {n} bytes)")
        sample[ext] = data
        Reads.bytes += n
    Reads.samples += 1
    return sample
