"""O(1) resume: a stream started at saved positions continues exactly, reading only what it must."""

import itertools

import numpy as np
import pytest

from alm.data import index
from alm.data.shards import ShardWriter, key_from_id, npy_bytes
from alm.data.stream import ShardStream, make_loader, resolve_shard_sets

from test_stream import collate, make_example, shards


def stream(spec, rank=0, world=1, positions=None, batch_size=3, infinite=True, **kw):
    return ShardStream(resolve_shard_sets(spec), make_example, collate, batch_size=batch_size, seed=5,
                       shuffle_buffer=8, infinite=infinite, rank_world=(rank, world), positions=positions, **kw)


def run(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def seen(batches):
    return [(b["_index"], tuple(b["keys"]), tuple(b["r"])) for b in batches]


def positions_before(batches, b):
    """What the data-state callback keeps after training batches 0..b-1: the newest state per worker."""
    pos = {}
    for batch in batches[:b]:
        pos[batch["_state"].state["worker"]] = batch["_state"].state
    return pos


@pytest.mark.parametrize("workers", [0, 2, 3])
@pytest.mark.parametrize("per_shard,rank_world", [(5, (0, 1)), (5, (1, 2)), (16, (1, 2))])  # 8 shards, or 3 < readers
def test_resume_from_positions_is_exact(tmp_path, workers, per_shard, rank_world):
    spec = shards(tmp_path, n_samples=40, per_shard=per_shard)
    ref = run(make_loader(stream(spec, *rank_world), workers), 40)  # several epochs
    assert [b["_index"] for b in ref] == list(range(40))
    for b in (1, 2, 7, 13, 26):
        got = run(make_loader(stream(spec, *rank_world, positions=positions_before(ref, b)), workers), 40 - b)
        assert seen(got) == seen(ref[b:]), f"resume at batch {b}"


def test_resume_with_token_budget_redraws_the_held_over_example(tmp_path):
    out = tmp_path / "v"
    with ShardWriter(out, "train", max_count=7) as w:
        for i in range(40):
            w.write({"__key__": f"k{i:02d}", "x.npy": npy_bytes(np.zeros(1 + (i * 7) % 10))})
    kw = dict(max_tokens=24, length=lambda e: len(e["x"]))
    ref = run(make_loader(stream(str(out), **kw), 2), 30)
    assert max(len(b["keys"]) for b in ref) > 1
    for b in (1, 5, 12, 21):
        got = run(make_loader(stream(str(out), positions=positions_before(ref, b), **kw), 2), 30 - b)
        assert seen(got) == seen(ref[b:]), f"resume at batch {b}"


def test_resume_reads_only_the_buffered_samples(tmp_path):
    """Resuming deep into a run reads the shuffle buffer's samples, not the stream up to there."""
    spec = shards(tmp_path, n_samples=200, per_shard=50)
    ref = run(make_loader(stream(spec), 0), 60)  # 180 samples: 1 epoch minus a few
    pos = positions_before(ref, 55)
    index.Reads.samples = 0
    got = run(make_loader(stream(spec, positions=pos), 0), 1)
    assert seen(got) == seen(ref[55:56])
    assert index.Reads.samples <= 8 + 3  # the buffer (8) + what one batch draws, not 165 samples


def test_one_shard_two_ranks_two_workers_reads_each_sample_once(tmp_path):
    spec = shards(tmp_path, n_samples=30, per_shard=30)  # one shard, four readers
    keys, reads, nbytes = [], 0, 0
    for rank in range(2):
        st = stream(spec, rank=rank, world=2, infinite=False)
        for worker in range(2):  # each worker of the rank, in-process, counting what it reads
            index.Reads.samples = index.Reads.bytes = 0
            st_worker = _as_worker(st, worker, 2)
            for batch in st_worker:
                keys += batch["keys"]
            reads += index.Reads.samples
            nbytes += index.Reads.bytes
    assert sorted(keys) == sorted(key_from_id(f"s{i:03d}") for i in range(30))
    ix = index.shard_index(resolve_shard_sets(spec)[0][0])
    assert reads == 30 and nbytes == sum(n for m in ix.members for _, _, n in m)


def _as_worker(st, worker, n_workers):
    """Iterate a ShardStream as DataLoader worker `worker` of `n_workers` would (in this process)."""
    import torch.utils.data._utils.worker as w

    class Info:
        id, num_workers, seed, dataset = worker, n_workers, 0, st

    saved = w._worker_info
    w._worker_info = Info()
    try:
        yield from iter(st)
    finally:
        w._worker_info = saved


def _reference_order(spec, slot, n_slots, epoch, seed=5, buf=8):
    """The sample order of an epoch as defined before the index existed: read every shard of the
    epoch's permutation in turn, keep every n_slots-th sample (or every n_slots-th shard when there
    are enough), pass them through the seeded shuffle buffer. The golden losses rest on it."""
    import webdataset as wds

    urls = resolve_shard_sets(spec)[0]
    order = np.arange(len(urls))
    np.random.default_rng([seed, epoch, 7]).shuffle(order)
    groups, stride, offset = ([urls[i] for i in order[slot::n_slots]], 1, 0) if len(urls) >= n_slots else \
        ([urls[i] for i in order], n_slots, slot)
    rng = np.random.default_rng([seed, epoch, slot, 11])
    buffer, out, i = [], [], 0
    for url in groups:
        for s in wds.tarfile_samples([{"url": url}]):
            i += 1
            if (i - 1) % stride != offset:
                continue
            if len(buffer) < buf:
                buffer.append(s["__key__"])
                continue
            j = int(rng.integers(len(buffer)))
            buffer[j], key = s["__key__"], buffer[j]
            out.append(key)
    while buffer:
        out.append(buffer.pop(int(rng.integers(len(buffer)))))
    return out


@pytest.mark.parametrize("per_shard", [4, 10, 40])  # 10 shards, 4 shards, 1 shard for up to 4 readers
def test_order_is_the_reference_order(tmp_path, per_shard):
    spec = shards(tmp_path, n_samples=40, per_shard=per_shard)
    for rank, world in ((0, 1), (1, 2), (3, 4)):
        ref = _reference_order(spec, rank, world, 0) + _reference_order(spec, rank, world, 1)  # 2 epochs
        keys = [b["keys"][0] for b in itertools.islice(stream(spec, rank, world, batch_size=1), len(ref))]
        assert keys == ref and len(ref) > 0


def test_topology_change_is_an_error_or_an_epoch_restart():
    from alm.training.data_state import DataError, resume_positions

    state = {"world_size": 2, "num_workers": 2, "shards": 6,
             "positions": {"0": {"0": {"epoch": 3, "local": 5}}, "1": {"0": {"epoch": 2, "local": 5}}}}
    same = {"world_size": 2, "num_workers": 2, "shards": 6}
    assert resume_positions(state, same, 1, 10, "error") == {0: {"epoch": 2, "local": 5}}
    for now in ({**same, "num_workers": 1}, {**same, "world_size": 1}, {**same, "shards": 7}):
        with pytest.raises(DataError, match=r"2 rank\(s\) x 2 worker\(s\) over 6 shard\(s\).*on_topology_change=restart_epoch"):
            resume_positions(state, now, 0, 10, "error")
    pos = resume_positions(state, {**same, "num_workers": 3}, 0, 10, "restart_epoch")
    assert {p["epoch"] for p in pos.values()} == {2} and [pos[w]["local"] for w in range(3)] == [4, 3, 3]


def test_epoch_restart_positions_continue_the_batch_numbers(tmp_path):
    from alm.training.data_state import resume_positions

    spec = shards(tmp_path, n_samples=24, per_shard=4)
    state = {"world_size": 1, "num_workers": 2, "shards": 6, "positions": {"0": {"0": {"epoch": 1, "local": 9}}}}
    pos = resume_positions(state, {"world_size": 1, "num_workers": 3, "shards": 6}, 0, 10, "restart_epoch")
    got = run(make_loader(stream(spec, positions=pos, batch_size=2), 3), 12)
    assert [b["_index"] for b in got] == list(range(10, 22))
    fresh = run(make_loader(stream(spec, batch_size=2), 3), 24)  # the same topology from the start: epochs 0, 1
    epoch1 = sorted(k for b in fresh[12:] for k in b["keys"])
    assert sorted(k for b in got for k in b["keys"]) == epoch1  # epoch 1 again, whole


def test_remote_shards_stream_in_the_same_order(tmp_path):
    spec = shards(tmp_path, n_samples=20, per_shard=5)
    remote = "::".join(f"pipe:cat {u}" for u in resolve_shard_sets(spec)[0])
    ref = run(make_loader(stream(spec), 2), 12)
    got = run(make_loader(stream(remote), 2), 12)
    assert seen(got) == seen(ref)
    back = run(make_loader(stream(remote, positions=positions_before(got, 5)), 2), 7)
    assert seen(back) == seen(ref[5:])


def test_an_epoch_of_only_damaged_shards_is_one_user_error_naming_them(tmp_path):
    import os

    from alm.errors import UserError

    spec = shards(tmp_path, n_samples=5, per_shard=5)
    shard = os.path.join(spec, "train-000000.tar")
    with open(shard, "r+b") as f:
        f.truncate(1500)  # inside the second member: no complete sample left
    with pytest.raises(UserError, match=r"gave no examples .*damaged shards: train-000000.tar"):
        run(stream(spec), 1)


def _several(sample, rng):
    """0 to 3 examples per sample (windows of a recording, or none), each with its own randomness."""
    base = make_example(sample, rng)
    n = int(base["x"][0]) % 4
    return [{**base, "key": f"{base['key']}/{w}", "r": float(rng.random())} for w in range(n)]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("per_shard,rank_world", [(5, (0, 1)), (16, (1, 2))])
def test_resume_from_positions_is_exact_with_several_examples_per_sample(tmp_path, workers, per_shard, rank_world):
    spec = shards(tmp_path, n_samples=40, per_shard=per_shard)

    def mk(positions=None):
        return ShardStream(resolve_shard_sets(spec), _several, collate, batch_size=3, seed=5, shuffle_buffer=8,
                           rank_world=rank_world, positions=positions)

    ref = run(make_loader(mk(), workers), 40)
    assert [b["_index"] for b in ref] == list(range(40))
    assert any(b["_state"].state["window"] for b in ref)  # some batches end inside a sample's examples
    for b in (1, 2, 7, 13, 26):
        got = run(make_loader(mk(positions_before(ref, b)), workers), 40 - b)
        assert seen(got) == seen(ref[b:]), f"resume at batch {b}"
