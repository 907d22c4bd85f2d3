"""Weighted dataset mixtures: the spec grammar, observed proportions, independent sub-epochs, exact resume."""

import numpy as np
import pytest

from alm.data.shards import ShardWriter, TarShard, join_sets, key_from_id, mixture_parts, npy_bytes, npy_load
from alm.data.stream import ShardStream, make_loader, resolve_datasets, resolve_shard_sets
from alm.errors import UserError

from test_data_resume import positions_before, run


def make_example(sample, rng):
    return {"key": sample["__key__"], "x": npy_load(sample["x.npy"]), "r": float(rng.random())}


def collate(examples):
    return {"keys": [e["key"] for e in examples], "r": [e["r"] for e in examples]}


def dataset(tmp_path, name, n, per_shard=5, prefix="train"):
    out = tmp_path / name
    with ShardWriter(out, prefix, max_count=per_shard) as w:
        for i in range(n):
            w.write({"__key__": key_from_id(f"{name}{i:03d}"), "x.npy": npy_bytes(np.full(1 + i % 4, i))})
    return str(out)


def stream(spec, rank=0, world=1, positions=None, batch_size=4, **kw):
    return ShardStream(resolve_datasets(spec), make_example, collate, batch_size=batch_size, seed=5, shuffle_buffer=8,
                       rank_world=(rank, world), positions=positions, **kw)


def seen(batches):
    return [(b["_index"], tuple(b["keys"]), tuple(b["r"]), tuple(sorted(b["_datasets"].items()))) for b in batches]




def test_grammar():
    assert mixture_parts("audiocaps/*.tar @3 :: clotho/*.tar @1 :: wavcaps/*.tar @0.5") == [
        ("audiocaps/*.tar", 3.0), ("clotho/*.tar", 1.0), ("wavcaps/*.tar", 0.5)]
    assert mixture_parts("sem_a/*.tar + codes_a/*.tar @2 :: sem_b/*.tar + codes_b/*.tar @1") == [
        ("sem_a/*.tar + codes_a/*.tar", 2.0), ("sem_b/*.tar + codes_b/*.tar", 1.0)]
    assert mixture_parts("a1::a2 + c1::c2 @2::b + d @1e-1") == [("a1::a2 + c1::c2", 2.0), ("b + d", 0.1)]
    assert join_sets("a1::a2 + c1::c2 @2::b + d @1") == ["a1::a2::b", "c1::c2::d"]
    for plain in ("a/*.tar", "a::b + c::d", "pipe:curl -s http://x@y/a.tar", "dir@2"):
        assert mixture_parts(plain) == [(plain, None)]  # no weight: the spec as before
    assert join_sets("a::b + c::d") == ["a::b", "c::d"]
    for bad, why in (("a @3 :: b", "has no weight"), ("a @0 :: b @1", "not a positive number"),
                     ("a @x", "not a positive number"), ("a @inf", "not a positive number"),
                     ("a + b @1 :: c @1", "different numbers of parallel sets"), (" @3", "no shards before it")):
        with pytest.raises(ValueError, match=why):
            mixture_parts(bad)


def test_datasets_are_named_by_folder_and_spec_errors_are_user_errors(tmp_path):
    a, b = dataset(tmp_path, "speech", 10), dataset(tmp_path, "music", 10)
    ds = resolve_datasets(f"{a} @3 :: {b}/train-*.tar @1 :: {a}/train-000000.tar @1")
    assert [(d.name, d.weight, len(d.shard_sets[0])) for d in ds] == [("speech", 3.0, 2), ("music", 1.0, 2),
                                                                      ("speech_2", 1.0, 1)]
    assert len(resolve_shard_sets(f"{a} @3 :: {b} @1")[0]) == 4  # every shard of both, for the shard checks
    with pytest.raises(UserError, match="has no weight"):
        resolve_datasets(f"{a} @3 :: {b}")


def test_proportions_follow_the_weights_and_each_dataset_has_its_own_epochs(tmp_path):
    """3:1 over 4000 draws: within 3 sigma of 3000; the smaller dataset cycles through its own
    epochs (each 10 consecutive draws from it are its 10 samples once)."""
    a, b = dataset(tmp_path, "a", 30), dataset(tmp_path, "b", 10)
    batches = run(make_loader(stream(f"{a} @3 :: {b} @1", batch_size=100), 0), 40)
    n_a = sum(x["_datasets"]["a"] for x in batches)
    n_b = sum(x["_datasets"]["b"] for x in batches)
    assert n_a + n_b == 4000
    sigma = (4000 * 0.75 * 0.25) ** 0.5  # ~27
    assert abs(n_a - 3000) < 3 * sigma, n_a
    from_b = [k for x in batches for k in x["keys"] if k.startswith("b")]
    assert len(from_b) == n_b
    for e in range(len(from_b) // 10):
        assert sorted(from_b[e * 10 : (e + 1) * 10]) == sorted(key_from_id(f"b{i:03d}") for i in range(10))
    assert from_b[:10] != from_b[10:20]  # a new order each of its epochs


def test_one_weighted_dataset_is_all_examples_from_it(tmp_path):
    a = dataset(tmp_path, "a", 12)
    keys = [k for x in run(make_loader(stream(f"{a} @1"), 0), 6) for k in x["keys"]]
    assert sorted(keys[:12]) == sorted(key_from_id(f"a{i:03d}") for i in range(12))


def test_no_weight_is_the_plain_stream(tmp_path):
    a = dataset(tmp_path, "a", 20)
    plain = ShardStream(resolve_shard_sets(a), make_example, collate, batch_size=4, seed=5, shuffle_buffer=8,
                        rank_world=(0, 1))
    got, ref = run(make_loader(stream(a), 0), 12), run(make_loader(plain, 0), 12)
    assert [(b["keys"], b["r"]) for b in got] == [(b["keys"], b["r"]) for b in ref]
    assert "_datasets" not in got[0] and "mix" not in got[0]["_state"].state


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("rank_world", [(0, 1), (1, 2)])
def test_mixture_resume_is_exact(tmp_path, workers, rank_world):
    a, b, c = dataset(tmp_path, "a", 30), dataset(tmp_path, "b", 9, per_shard=3), dataset(tmp_path, "c", 6, per_shard=6)
    spec = f"{a} @3 :: {b} @1 :: {c} @0.5"  # c: one shard for up to 4 readers
    ref = run(make_loader(stream(spec, *rank_world), workers), 36)
    assert [x["_index"] for x in ref] == list(range(36))
    assert {k for x in ref for k, n in x["_datasets"].items() if n} == {"a", "b", "c"}
    for at in (1, 5, 14, 29):
        got = run(make_loader(stream(spec, *rank_world, positions=positions_before(ref, at)), workers), 36 - at)
        assert seen(got) == seen(ref[at:]), f"resume at batch {at}"


def test_mixture_resume_with_token_budget(tmp_path):
    a, b = dataset(tmp_path, "a", 30), dataset(tmp_path, "b", 10)
    kw = dict(max_tokens=9, length=lambda e: len(e["x"]))
    spec = f"{a} @2 :: {b} @1"
    ref = run(make_loader(stream(spec, **kw), 2), 30)
    assert max(len(x["keys"]) for x in ref) > 1
    for at in (1, 7, 18):
        got = run(make_loader(stream(spec, positions=positions_before(ref, at), **kw), 2), 30 - at)
        assert seen(got) == seen(ref[at:]), f"resume at batch {at}"


def test_mixture_of_parallel_sets(tmp_path):
    """'sem_a + codes_a @2 :: sem_b + codes_b @1': each dataset joined by key within itself (both have
    a train-000000.tar)."""
    specs = []
    for name in ("a", "b"):
        sem = dataset(tmp_path, f"sem_{name}", 6, per_shard=6)
        codes = tmp_path / f"codes_{name}"
        with TarShard(codes / "train-000000.tar") as t:
            for i in range(6):
                t.write({"__key__": key_from_id(f"sem_{name}{i:03d}"), "y.npy": npy_bytes(np.array([100 + i]))})
        specs.append(f"{sem} + {codes}")

    def joined(sample, rng):
        return {"key": sample["__key__"], "xy": (int(npy_load(sample["x.npy"])[0]), int(npy_load(sample["y.npy"])[0])),
                "r": 0.0}

    st = ShardStream(resolve_datasets(f"{specs[0]} @2 :: {specs[1]} @1"), joined, lambda ex: {"ex": ex}, batch_size=30,
                     seed=0, shuffle_buffer=4, rank_world=(0, 1))
    (batch,) = run(make_loader(st, 0), 1)
    assert all(xy[1] == 100 + xy[0] for xy in (e["xy"] for e in batch["ex"]))
    assert {e["key"][:5] for e in batch["ex"]} == {"sem_a", "sem_b"}


def test_split_resolution_keeps_the_weights(tmp_path):
    from alm.data.splits import auto_val_spec, resolve_split_spec

    a, b = dataset(tmp_path, "a", 10), dataset(tmp_path, "b", 10)
    dataset(tmp_path, "a", 4, prefix="val"), dataset(tmp_path, "b", 4, prefix="val")
    train = resolve_split_spec(f"{a} @3 :: {b} @1", "train")
    assert [(len(resolve_shard_sets(body)[0]), w) for body, w in mixture_parts(train)] == [(2, 3.0), (2, 1.0)]
    assert all("train-" in body and "val-" not in body for body, _ in mixture_parts(train))
    val = auto_val_spec(f"{a} @3 :: {b} @1")
    assert [w for _, w in mixture_parts(val)] == [3.0, 1.0] and all("val-" in body for body, _ in mixture_parts(val))


def test_restart_epoch_positions_of_a_mixture(tmp_path):
    from alm.training.data_state import resume_positions

    a, b = dataset(tmp_path, "a", 20), dataset(tmp_path, "b", 10)
    spec = f"{a} @1 :: {b} @1"
    ref = run(make_loader(stream(spec), 2), 12)
    state = {"world_size": 1, "num_workers": 2, "shards": 6,
             "positions": {"0": {str(w): s for w, s in positions_before(ref, 12).items()}}}
    pos = resume_positions(state, {"world_size": 1, "num_workers": 3, "shards": 6}, 0, 12, "restart_epoch")
    got = run(make_loader(stream(spec, positions=pos), 3), 6)
    assert [x["_index"] for x in got] == list(range(12, 18))
    assert all(len(p["mix"]) == 2 and p["mix"][0]["unit"] == 0 for p in pos.values())


def test_two_ranks_weighted_mixture_killed_and_resumed_equals_uninterrupted(tmp_path):
    """A tiny semantic run on 2 gloo ranks x 2 workers over 'speech @3 :: music @1', SIGKILLed after
    step 6 and resumed from its step-4 checkpoint, logs the losses of an uninterrupted run exactly;
    per-dataset example counts are logged and written to data_errors.json."""
    import json
    import shutil

    from alm.data.cache import cache_root
    from alm.stages.semantic import synthetic_semantic
    from alm.training.loggers import read_metrics
    from helpers import losses, train, train_and_kill

    tokens = synthetic_semantic(cache_root(), 64)
    shards = sorted(p.name for p in tokens.glob("train-*.tar"))
    for name, part in (("speech", shards[::2]), ("music", shards[1::2])):
        (tmp_path / name).mkdir()
        for s in part:
            shutil.copy(tokens / s, tmp_path / name / s)
        shutil.copytree(tokens / "tokenizer", tmp_path / name / "tokenizer")
    args = ("trainer.max_steps=12", "trainer.ckpt_every_n_steps=4", "trainer.devices=2", "data.num_workers=2",
            "model.dropout=0.1", f"data.train_shards={tmp_path / 'speech'} @3 :: {tmp_path / 'music'} @1",
            "data.val_shards=null", f"data.tokenizer={tmp_path / 'speech' / 'tokenizer'}")
    full, killed = tmp_path / "full", tmp_path / "killed"
    train(full, *args)
    train_and_kill(killed, 6, *args)
    assert (killed / "checkpoints" / "step-000000004").is_dir()
    train(killed, *args)
    a, b = losses(full), losses(killed)
    assert sorted(a) == sorted(b) == list(range(12))
    assert [a[s] for s in range(4, 12)] == [b[s] for s in range(4, 12)]  # bit-identical after the resume
    report = json.loads((killed / "data_errors.json").read_text())
    counts = report["dataset_examples"]
    assert set(counts) == {"speech", "music"} and sum(counts.values()) == report["step"] * 8 * 2
    assert counts == json.loads((full / "data_errors.json").read_text())["dataset_examples"]
    assert 0.6 < counts["speech"] / sum(counts.values()) < 0.9  # 3:1 (192 draws: sigma ~0.03)
    logged = read_metrics(killed)[11]
    assert logged["train/data/speech_examples"] + logged["train/data/music_examples"] == 12 * 8 * 2


def test_recipe_list_and_override_forms(tmp_path):
    """A recipe may list the datasets; a command-line override keeps ' :: ' (YAML would read ': ' as a mapping)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from alm.config import RecipeError, load_recipe

    tiny = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "semantic.yaml"
    raw = OmegaConf.load(tiny)
    raw.data.train_shards = ["audiocaps/*.tar @3", {"shards": "sem_b/*.tar + codes_b/*.tar", "weight": 0.5}]
    OmegaConf.save(raw, tmp_path / "r.yaml")
    assert load_recipe(tmp_path / "r.yaml").data.train_shards == "audiocaps/*.tar @3 :: sem_b/*.tar + codes_b/*.tar @0.5"
    raw.data.train_shards = [{"shards": "a/*.tar"}]
    OmegaConf.save(raw, tmp_path / "bad.yaml")
    with pytest.raises(RecipeError, match=r"data.train_shards\[0\]"):
        load_recipe(tmp_path / "bad.yaml")
    cfg = load_recipe(tiny, ["data.train_shards=a/*.tar @3 :: b/*.tar @1"])
    assert cfg.data.train_shards == "a/*.tar @3 :: b/*.tar @1"
