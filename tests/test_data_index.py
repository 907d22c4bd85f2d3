"""The shard index: headers only, the same samples as webdataset, seeks, and damage found by name."""

import logging
import os

import numpy as np
import pytest

from alm.data import index
from alm.data.shards import ShardWriter, TarShard, key_from_id, npy_bytes, read_shard
from alm.data.stream import ShardStream, make_loader, resolve_shard_sets

from test_stream import collate, make_example, shards


def test_index_matches_webdataset_and_seeks(tmp_path):
    spec = shards(tmp_path, n_samples=12, per_shard=12)
    url = resolve_shard_sets(spec)[0][0]
    ix = index.scan_tar(url)
    ref = list(read_shard(url))
    assert ix.problem is None and ix.keys == [s["__key__"] for s in ref]
    for i in (7, 0, 11, 3):  # any order: straight to the sample
        assert index.read_sample(ix, i) == ref[i]


def test_long_names_and_several_members(tmp_path):
    key = key_from_id("x" * 150 + ".wav")  # > 100 characters: a pax header carries the name
    with TarShard(tmp_path / "t.tar") as t:
        t.write({"__key__": key, "json": b"{}", "x.npy": npy_bytes(np.arange(3)), "TXT": b"hi"})
        t.write({"__key__": "short", "json": b"[]"})
    ix = index.scan_tar(str(tmp_path / "t.tar"))
    ref = list(read_shard(str(tmp_path / "t.tar")))
    assert ix.problem is None and ix.keys == [key, "short"]
    assert [index.read_sample(ix, i) for i in range(2)] == ref


def test_scan_reads_headers_only(tmp_path):
    with TarShard(tmp_path / "big.tar") as t:
        for i in range(4):
            t.write({"__key__": f"k{i}", "bin": os.urandom(1 << 20)})
    index.Reads.bytes = 0
    ix = index.scan_tar(str(tmp_path / "big.tar"))
    assert len(ix) == 4 and index.Reads.bytes == 0  # no member data read
    assert index.shard_index(str(tmp_path / "big.tar")) is index.shard_index(str(tmp_path / "big.tar"))  # cached


@pytest.mark.parametrize("cut", ["half", 1500])
def test_truncated_shard_keeps_complete_samples_and_says_so(tmp_path, cut):
    spec = shards(tmp_path, n_samples=40, per_shard=40)
    url = resolve_shard_sets(spec)[0][0]
    full = len(index.scan_tar(url))
    size = os.path.getsize(url)
    with open(url, "r+b") as f:
        f.truncate(size // 2 if cut == "half" else cut)
    ix = index.scan_tar(url)
    assert ix.problem is not None and ix.problem.startswith("truncated") and ix.lost >= 1
    assert len(ix) < full and ix.keys == [s["__key__"] for s in read_shard(url)][: len(ix)]


def test_corrupt_header(tmp_path):
    spec = shards(tmp_path, n_samples=10, per_shard=10)
    url = resolve_shard_sets(spec)[0][0]
    ix = index.scan_tar(url)
    at = ix.members[4][0][1] - 512  # the header of sample 4
    with open(url, "r+b") as f:
        f.seek(at + 10)
        f.write(b"garbage")
    ix = index.scan_tar(url)
    # samples 0-2 kept; sample 3 may lack members that followed the damage: dropped and counted
    assert ix.problem == f"corrupt tar header at byte {at}" and len(ix) == 3 and ix.lost == 1


def test_stream_reports_a_truncated_shard_by_name(tmp_path, caplog):
    spec = shards(tmp_path, n_samples=40, per_shard=10)
    url = resolve_shard_sets(spec)[0][2]
    with open(url, "r+b") as f:
        f.truncate(os.path.getsize(url) // 2)
    st = ShardStream(resolve_shard_sets(spec), make_example, collate, batch_size=4, seed=0, shuffle_buffer=4,
                     infinite=False, rank_world=(0, 1))
    with caplog.at_level(logging.WARNING):
        batches = list(make_loader(st, 0))
    keys = [k for b in batches for k in b["keys"]]
    per_shard = {}
    for b in batches:
        for name, n in b["_corrupt_shards"].items():
            per_shard[name] = per_shard.get(name, 0) + n
    assert per_shard == {"train-000002.tar": 1} and sum(b["_corrupt"] for b in batches) == 1
    assert len(keys) == 30 + len(index.shard_index(url)) and len(keys) < 40
    assert sum(b["_drawn"] for b in batches) == len(keys) + 1
    assert "train-000002.tar: truncated" in caplog.text


def test_missing_join_partner_names_the_shard(tmp_path):
    spec = shards(tmp_path, n_samples=6, per_shard=6)
    other = tmp_path / "tok"
    with ShardWriter(other, "train", max_count=6) as w:
        for i in range(6):
            if i != 2:
                w.write({"__key__": key_from_id(f"s{i:03d}"), "y.npy": npy_bytes(np.array([i]))})
    st = ShardStream(resolve_shard_sets(f"{spec} + {other}"), make_example, collate, batch_size=10, seed=0,
                     shuffle=False, infinite=False, rank_world=(0, 1))
    (batch,) = list(make_loader(st, 0))
    assert len(batch["keys"]) == 5 and batch["_corrupt_shards"] == {"train-000000.tar": 1}
