import hashlib
import os

import numpy as np
import pytest

from alm.data.shards import (ShardWriter, TarShard, expand_shards, id_from_key, json_bytes, key_from_id, map_shards,
                             npy_bytes, npy_load, read_shard)

IDS = ["06 - Nightingale.Aug.2010.wav", "121006_rain&amp;storm.wav", "Chris&#39; Elevator.wav", "-0xPgfuVTvI_30",
       "100/sea_fairies/01_baum", "José Núñez~x", "a.b", "a~2eb", "Yk_uT9K2PzQ_20"]


def test_keys_are_safe_injective_and_invertible():
    keys = [key_from_id(i) for i in IDS]
    assert len(set(keys)) == len(keys)
    for i, k in zip(IDS, keys):
        assert "." not in k and "/" not in k and " " not in k
        assert id_from_key(k) == i
    assert key_from_id("-0xPgfuVTvI_30") == "-0xPgfuVTvI_30"  # plain ids stay readable


def write(out, n=5, max_count=2, prefix="train"):
    with ShardWriter(out, prefix, max_count=max_count) as w:
        for i in range(n):
            w.write({"__key__": key_from_id(f"clip.{i}"), "json": json_bytes({"id": f"clip.{i}"}), "x.npy": npy_bytes(np.arange(i + 1))})
    return w.paths


def test_writer_is_deterministic_and_rolls(tmp_path):
    a, b = write(tmp_path / "a"), write(tmp_path / "b")
    assert [os.path.basename(p) for p in a] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    digest = lambda ps: [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in ps]  # noqa: E731
    assert digest(a) == digest(b)
    samples = [s for p in a for s in read_shard(p)]
    assert [id_from_key(s["__key__"]) for s in samples] == [f"clip.{i}" for i in range(5)]
    assert npy_load(samples[3]["x.npy"]).tolist() == [0, 1, 2, 3]


def test_aborted_shard_leaves_nothing_final(tmp_path):
    with pytest.raises(RuntimeError):
        with TarShard(tmp_path / "train-000000.tar") as s:
            s.write({"__key__": "a", "json": b"{}"})
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_keys(tmp_path):
    w = ShardWriter(tmp_path, "t")
    with pytest.raises(ValueError, match="dot"):
        w.write({"__key__": "a.b", "json": b"{}"})
    w.write({"__key__": "a", "json": b"{}"})
    with pytest.raises(ValueError, match="duplicate"):
        w.write({"__key__": "a", "json": b"{}"})
    with pytest.raises(TypeError, match="bytes"):
        w.write({"__key__": "b", "json": {"no": "bytes"}})
    w.abort()


def test_expand_shards_forms(tmp_path):
    paths = write(tmp_path / "d", n=6, max_count=2)
    d = str(tmp_path / "d")
    assert expand_shards(d) == paths
    assert expand_shards(f"{d}/train-*.tar") == paths
    assert expand_shards(f"{d}/train-{{000000..000001}}.tar") == paths[:2]
    assert expand_shards(f"{paths[0]}::{paths[2]}") == [paths[0], paths[2]]
    with pytest.raises(FileNotFoundError, match="missing"):
        expand_shards(f"{d}/train-{{000000..000009}}.tar")
    with pytest.raises(FileNotFoundError, match="no .tar"):
        expand_shards(f"{d}/val-*.tar")


def test_map_shards_parallel_set_with_failures_and_restart(tmp_path):
    paths = write(tmp_path / "in", n=5, max_count=3)
    calls = []

    def fn(batch):
        calls.append(len(batch))
        return [None if s["__key__"] == key_from_id("clip.1") else {"y.npy": npy_bytes(npy_load(s["x.npy"]) * 2)} for s in batch]

    r = map_shards(paths, tmp_path / "out", fn, batch_size=2, progress=False)
    assert [os.path.basename(p) for p in r["shards"]] == ["train-000000.tar", "train-000001.tar"]
    assert r["samples"] == 4 and r["errors"] == [{"key": key_from_id("clip.1"), "shard": "train-000000.tar", "reason": "tokenizer_failed"}]
    out = [s for p in r["shards"] for s in read_shard(p)]
    assert [s["__key__"] for s in out] == [key_from_id(f"clip.{i}") for i in (0, 2, 3, 4)]
    assert "json" in out[0] and npy_load(out[1]["y.npy"]).tolist() == [0, 2, 4]
    calls.clear()
    again = map_shards(paths, tmp_path / "out", fn, progress=False)  # finished shards are skipped
    assert calls == [] and len(again["errors"]) == 1
