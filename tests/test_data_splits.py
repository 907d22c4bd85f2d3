"""Split roles: a directory resolves to its training or validation split, never silently to test."""

import json
import os

import pytest

from alm.data.shards import TarShard, safe_split_name
from alm.data.splits import resolve_split_spec
from alm.errors import UserError


def prepared(root, dataset, splits, manifest=True):
    """A directory as `alm prep` leaves it: {split}-NNNNNN.tar shards (+ manifest.json)."""
    root.mkdir(parents=True)
    info = {}
    for split, n in splits.items():
        names = []
        for i in range(n):
            name = f"{safe_split_name(split)}-{i:06d}.tar"
            with TarShard(root / name) as t:
                t.write({"__key__": f"k{i}", "json": b"{}"})
            names.append(name)
        info[split] = {"shards": names, "num_samples": n, "hours": 0.0}
    if manifest:
        (root / "manifest.json").write_text(json.dumps({"dataset": dataset, "splits": info, "skipped": []}))
    return str(root)


def names(spec):
    return sorted(os.path.basename(p) for p in spec.split("::"))


@pytest.mark.parametrize("dataset,splits,train,val", [
    ("audiocaps", {"train": 2, "val": 1, "test": 1}, ["train-000000.tar", "train-000001.tar"], ["val-000000.tar"]),
    ("clotho", {"development": 1, "validation": 1, "evaluation": 1}, ["development-000000.tar"], ["validation-000000.tar"]),
    ("musiccaps", {"train": 1, "eval": 1}, ["train-000000.tar"], None),
    ("librilight", {"small": 1, "medium": 2}, ["medium-000000.tar", "medium-000001.tar", "small-000000.tar"], None),
    ("librispeech_finetuning", {"1h/0/clean": 1, "9h/other": 1}, ["1h_0_clean-000000.tar", "9h_other-000000.tar"], None),
])
@pytest.mark.parametrize("manifest", [True, False])  # False: a token pass's output (same file names, no manifest)
def test_directory_resolves_by_role(tmp_path, dataset, splits, train, val, manifest):
    d = prepared(tmp_path / dataset, dataset, splits, manifest)
    assert names(resolve_split_spec(d, "train")) == train
    assert names(resolve_split_spec(d, "fit")) == train
    if val is None:
        with pytest.raises(UserError, match="no val split"):
            resolve_split_spec(d, "val")
    else:
        assert names(resolve_split_spec(d, "val")) == val


def test_test_split_needs_an_explicit_glob(tmp_path):
    d = prepared(tmp_path / "mc", "musiccaps", {"eval": 2})
    with pytest.raises(UserError, match=r"no train split \(it has: eval \(test\)\).*explicit glob"):
        resolve_split_spec(d, "train")
    glob = f"{d}/eval-*.tar"
    assert resolve_split_spec(glob, "fit") == glob  # a glob means exactly the files it matches


def test_joined_sets_and_several_sources(tmp_path):
    audio = prepared(tmp_path / "ac", "audiocaps", {"train": 1, "val": 1, "test": 1})
    tokens = prepared(tmp_path / "tok", None, {"train": 1, "val": 1, "test": 1}, manifest=False)
    spec = resolve_split_spec(f"{audio} + {tokens}", "val")
    a, b = spec.split(" + ")
    assert names(a) == names(b) == ["val-000000.tar"]
    other = prepared(tmp_path / "cl", "clotho", {"development": 1, "evaluation": 1})
    assert names(resolve_split_spec(f"{audio}::{other}", "train")) == ["development-000000.tar", "train-000000.tar"]
    assert resolve_split_spec("synthetic", "train") == "synthetic"


def test_plain_directory_trains_unknown_split_names_are_refused(tmp_path):
    plain = prepared(tmp_path / "plain", None, {"shard": 2}, manifest=False)
    assert names(resolve_split_spec(plain, "train")) == ["shard-000000.tar", "shard-000001.tar"]
    mixed = prepared(tmp_path / "mixed", "mine", {"train": 1, "holdout": 1})
    with pytest.raises(UserError, match="holdout have no known role"):
        resolve_split_spec(mixed, "train")
    with pytest.raises(ValueError, match="role"):
        resolve_split_spec(plain, "test")


def test_val_shards_auto_is_the_validation_split_of_the_train_directory(tmp_path):
    from alm.data.splits import auto_val_spec
    from alm.data.synthetic import write_synthetic

    write_synthetic(tmp_path / "mine", num_clips=4, val_clips=2, seconds=0.5, shard_size=2)
    val = auto_val_spec(str(tmp_path / "mine"))
    assert val is not None and all("/val-" in s for s in val.split("::")), val
    assert auto_val_spec(str(tmp_path / "mine" / "train-*.tar")) is None  # a glob: nothing to derive
    (tmp_path / "only-train").mkdir()
    for p in (tmp_path / "mine").glob("train-*.tar"):
        (tmp_path / "only-train" / p.name).write_bytes(p.read_bytes())
    assert auto_val_spec(str(tmp_path / "only-train")) is None  # no validation split: validation off


def test_val_shards_auto_follows_synthetic_train_data():
    from alm.config import load_recipe
    from alm.data.cache import resolve_synthetic
    from helpers import TINY

    cfg = load_recipe(TINY)
    assert cfg.data.val_shards == "auto"
    resolve_synthetic(cfg)
    assert "val-" in cfg.data.val_shards and "train-" in cfg.data.train_shards
