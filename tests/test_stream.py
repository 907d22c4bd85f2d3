"""The resumable stream: exact positioning with workers, coverage per epoch, corrupt data counted."""

import numpy as np
import pytest

from alm.data.shards import ShardWriter, TarShard, key_from_id, npy_bytes, npy_load
from alm.data.stream import ShardStream, make_loader, resolve_shard_sets


def make_example(sample, rng):
    x = npy_load(sample["x.npy"])  # raises on corrupt bytes
    return {"key": sample["__key__"], "x": x, "r": float(rng.random())}


def collate(examples):
    return {"keys": [e["key"] for e in examples], "r": [e["r"] for e in examples]}


def shards(tmp_path, n_samples=40, per_shard=5, name="d", bad=()):
    out = tmp_path / name
    with ShardWriter(out, "train", max_count=per_shard) as w:
        for i in range(n_samples):
            data = b"not a numpy array" if i in bad else npy_bytes(np.full(3, i))
            w.write({"__key__": key_from_id(f"s{i:03d}"), "x.npy": data})
    return str(out)


def stream(spec, start=0, rank=0, world=1, infinite=True, shuffle=True, batch_size=3, **kw):
    return ShardStream(resolve_shard_sets(spec), make_example, collate, batch_size=batch_size, seed=5,
                       shuffle_buffer=8, shuffle=shuffle, infinite=infinite, start_batch=start, rank_world=(rank, world), **kw)


def take(loader, n):
    out = []
    for batch in loader:
        out.append((batch["_index"], tuple(batch["keys"]), tuple(batch["r"])))
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("workers", [0, 2, 3])
@pytest.mark.parametrize("rank_world", [(0, 1), (1, 2)])
def test_resume_at_any_batch_is_exact(tmp_path, workers, rank_world):
    spec = shards(tmp_path)
    ref = take(make_loader(stream(spec, 0, *rank_world), workers), 40)  # spans several epochs
    assert [i for i, _, _ in ref] == list(range(40))
    for start in (1, 7, 13, 26):
        got = take(make_loader(stream(spec, start, *rank_world), workers), 40 - start)
        assert got == ref[start:], f"start={start}"


def test_same_order_whatever_the_prefetch(tmp_path):
    spec = shards(tmp_path)
    a = take(make_loader(stream(spec), 2), 20)
    b = take(make_loader(stream(spec), 2), 20)
    assert a == b


@pytest.mark.parametrize("per_shard", [3, 8])
def test_one_epoch_covers_every_sample_once_2_ranks_x_2_workers(tmp_path, per_shard):
    spec = shards(tmp_path, n_samples=24, per_shard=per_shard)  # 8 shards, or 3 (< 4 readers)
    seen = []
    for rank in range(2):
        for batch in make_loader(stream(spec, rank=rank, world=2, infinite=False), 2):
            seen += batch["keys"]
    assert sorted(seen) == sorted(key_from_id(f"s{i:03d}") for i in range(24))


def test_epochs_reshuffle_and_infinite_stream_keeps_coverage(tmp_path):
    spec = shards(tmp_path, n_samples=12, per_shard=3)
    keys = [k for _, ks, _ in take(make_loader(stream(spec, batch_size=4), 0), 9) for k in ks]
    epochs = [keys[i * 12 : (i + 1) * 12] for i in range(3)]
    for e in epochs:
        assert sorted(e) == sorted(key_from_id(f"s{i:03d}") for i in range(12))
    assert epochs[0] != epochs[1]  # a new order each epoch
    unshuffled = [k for _, ks, _ in take(make_loader(stream(spec, shuffle=False, batch_size=4), 0), 3) for k in ks]
    assert unshuffled == [key_from_id(f"s{i:03d}") for i in range(12)]


def test_corrupt_samples_are_counted_not_hidden(tmp_path):
    spec = shards(tmp_path, n_samples=20, bad=(4, 11))
    total_corrupt, keys = 0, []
    for batch in make_loader(stream(spec, infinite=False, batch_size=4), 2):
        total_corrupt += batch["_corrupt"]
        keys += batch["keys"]
    assert total_corrupt == 2 and len(keys) == 18


def test_corrupt_tar_is_counted(tmp_path):
    spec = shards(tmp_path, n_samples=10, per_shard=5)
    with open(f"{spec}/train-000001.tar", "r+b") as f:  # garble the second shard's headers
        f.seek(0)
        f.write(b"\xff" * 600)
    total, keys = 0, []
    for batch in make_loader(stream(spec, infinite=False, batch_size=2), 0):
        total += batch["_corrupt"]
        keys += batch["keys"]
    assert len(keys) == 5 and total >= 1


def test_parallel_sets_join_by_key(tmp_path):
    spec = shards(tmp_path, n_samples=9, per_shard=3)
    other = tmp_path / "tok"
    for s in range(3):
        with TarShard(other / f"train-{s:06d}.tar") as t:
            for i in range(3 * s, 3 * s + 3):
                if i != 4:  # one sample the other set lacks
                    t.write({"__key__": key_from_id(f"s{i:03d}"), "y.npy": npy_bytes(np.array([i * 10]))})

    def join_example(sample, rng):
        return {"key": sample["__key__"], "x": int(npy_load(sample["x.npy"])[0]), "y": int(npy_load(sample["y.npy"])[0]), "r": 0.0}

    st = ShardStream(resolve_shard_sets(f"{spec} + {other}"), join_example, lambda ex: {"ex": ex, "keys": [e["key"] for e in ex]},
                     batch_size=100, seed=0, shuffle=False, infinite=False, rank_world=(0, 1))
    (batch,) = list(make_loader(st, 0))
    assert [(e["x"], e["y"]) for e in batch["ex"]] == [(i, i * 10) for i in range(9) if i != 4]
    assert batch["_corrupt"] == 1  # the unmatched sample is counted
    with pytest.raises(FileNotFoundError, match="no shard named"):
        resolve_shard_sets(f"{spec} + {tmp_path / 'tok'}/train-000000.tar")


def test_token_budget_batches(tmp_path):
    out = tmp_path / "v"
    with ShardWriter(out, "train", max_count=50) as w:
        for i in range(30):
            w.write({"__key__": f"k{i}", "x.npy": npy_bytes(np.zeros(1 + i % 10))})
    st = ShardStream(resolve_shard_sets(str(out)), make_example, lambda ex: {"lens": [len(e["x"]) for e in ex]},
                     batch_size=1, seed=0, shuffle=False, infinite=False, max_tokens=24, length=lambda e: len(e["x"]),
                     rank_world=(0, 1))
    batches = [b["lens"] for b in make_loader(st, 0)]
    assert sum(len(b) for b in batches) == 30
    assert all(max(b) * len(b) <= 24 for b in batches) and max(len(b) for b in batches) > 1


def test_resume_mid_epoch_2_ranks_x_2_workers_sees_every_sample_once(tmp_path):
    """Stop each rank after a few batches of its first epoch, resume its stream there: the samples
    before + after the resume point, over both ranks, are the dataset exactly once."""
    spec = shards(tmp_path, n_samples=48, per_shard=4)  # 12 shards over 2 ranks x 2 workers
    seen = []
    for rank in range(2):
        whole = [b["keys"] for b in make_loader(stream(spec, rank=rank, world=2, infinite=False), 2)]
        stop = len(whole) // 2
        before = take(make_loader(stream(spec, rank=rank, world=2, infinite=False), 2), stop)
        after = [b["keys"] for b in make_loader(stream(spec, start=stop, rank=rank, world=2, infinite=False), 2)]
        assert [list(k) for _, k, _ in before] + after == whole
        seen += [k for ks in whole for k in ks]
    assert sorted(seen) == sorted(key_from_id(f"s{i:03d}") for i in range(48))
