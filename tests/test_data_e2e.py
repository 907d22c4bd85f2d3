"""End-to-end data behaviour of real training runs (subprocesses): exact resume from saved
positions with gradient accumulation, a resume on another topology, damaged shards reported."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from alm.training.checkpoint import list_checkpoints

from helpers import alm as run_alm, losses, train
from test_train_e2e import _check_exact_resume

pytestmark = pytest.mark.slow


def test_kill_resume_exact_accumulate_4(tmp_path):
    _check_exact_resume(tmp_path, "data.num_workers=2", "trainer.accumulate_grad_batches=4")
    ckpt = list_checkpoints(tmp_path / "killed")[-1][1] / "checkpoint.ckpt"
    state = json.loads(torch.load(ckpt, weights_only=True)["callbacks"]["DataState"]["json"])
    assert state["world_size"] == 1 and state["num_workers"] == 2
    assert sum(p["local"] for p in state["positions"]["0"].values()) == 24 * 4  # positions, not a replay count


def test_topology_change_errors_or_restarts_the_epoch(tmp_path):
    run = tmp_path / "run"
    train(run, "trainer.max_steps=6", "trainer.ckpt_every_n_steps=6", "trainer.devices=2", "data.num_workers=2")
    p = run_alm("train", "recipes/tiny/semantic.yaml", f"run_dir={run}", *_fast(), "trainer.max_steps=10",
                "trainer.devices=1", "data.num_workers=2", check=False)
    assert p.returncode == 2, p.stderr[-3000:]
    line = p.stderr.strip().splitlines()[-1]
    assert "2 rank(s) x 2 worker(s)" in line and "1 rank(s) x 2 worker(s)" in line
    assert "data.on_topology_change=restart_epoch" in line and "Traceback" not in p.stderr
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["attempt-0"]  # refused before anything started
    p = run_alm("train", "recipes/tiny/semantic.yaml", f"run_dir={run}", *_fast(), "trainer.max_steps=10",
                "trainer.devices=1", "data.num_workers=2", "data.on_topology_change=restart_epoch")
    assert "restarts the data at the start of epoch 0" in p.stderr
    assert sorted(losses(run)) == list(range(10))


def _fast():
    from helpers import FAST

    return FAST


def _damaged_copy(tmp_path) -> tuple[str, str, str]:
    """A copy of the synthetic semantic token shards with train-000002.tar cut to half."""
    from alm.data.cache import cache_root
    from alm.stages.semantic import synthetic_semantic

    tokens = synthetic_semantic(cache_root(), 64)
    out = tmp_path / "tokens"
    out.mkdir()
    for name in sorted(os.listdir(tokens)):
        if name.startswith("train-"):
            shutil.copy(tokens / name, out / name)
    shutil.copytree(tokens / "tokenizer", out / "tokenizer")  # a token set carries what made it
    bad = out / "train-000002.tar"
    with open(bad, "r+b") as f:
        f.truncate(os.path.getsize(bad) // 2)
    return str(out), str(out / "tokenizer"), bad.name


def test_truncated_shard_is_reported_and_can_stop_the_run(tmp_path):
    shards, tokenizer, bad = _damaged_copy(tmp_path)
    data = (f"data.train_shards={shards}", "data.val_shards=null", f"data.tokenizer={tokenizer}",
            "data.windows=one")  # one example per sample, so 40 steps are 320 samples
    run = tmp_path / "run"
    p = train(run, "trainer.max_steps=40", "trainer.ckpt_every_n_steps=40", *data)  # 320 samples: > 1 epoch
    assert f"{bad}: truncated" in p.stderr
    report = json.loads((run / "data_errors.json").read_text())
    assert report["shards"] == {bad: report["corrupt_samples"]} and report["corrupt_samples"] >= 1
    assert report["drawn_samples"] >= 320 and report["stopped"] is False
    stop = tmp_path / "stop"
    p = run_alm("train", "recipes/tiny/semantic.yaml", f"run_dir={stop}", *_fast(), "trainer.max_steps=40", *data,
                "data.max_corrupt_fraction=0.001", check=False)
    assert p.returncode == 2, p.stderr[-3000:]
    line = p.stderr.strip().splitlines()[-1]
    assert "data.max_corrupt_fraction=0.001" in line and f"bad shards: {bad} (" in line
    assert json.loads((stop / "data_errors.json").read_text())["stopped"] is True


def test_kill_resume_exact_token_budget_batches(tmp_path):
    _check_exact_resume(tmp_path, "data.num_workers=2", "data.max_tokens=300")


def test_one_shard_trains_on_two_ranks_with_two_workers(tmp_path):
    from alm.data.cache import cache_root
    from alm.stages.semantic import synthetic_semantic

    tokens = synthetic_semantic(cache_root(), 64)
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(tokens / "train-000000.tar", one / "train-000000.tar")  # 40 samples, 4 readers
    shutil.copytree(tokens / "tokenizer", one / "tokenizer")
    run = tmp_path / "run"
    train(run, "trainer.max_steps=4", "trainer.ckpt_every_n_steps=4", "trainer.devices=2", "data.num_workers=2",
          f"data.train_shards={one}", "data.val_shards=null", f"data.tokenizer={one / 'tokenizer'}")
    assert sorted(losses(run)) == list(range(4))
    report = json.loads((run / "data_errors.json").read_text())
    assert report["corrupt_samples"] == 0 and report["drawn_samples"] <= 40 * 2  # no reader read the shard 4 times
