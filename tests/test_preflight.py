"""Errors before the start ([robust] 7): every user mistake is one line naming the thing and the
fix, raised before anything is written, W&B started or a process launched."""

from __future__ import annotations

import json
import tarfile

import pytest

from alm.config import load_recipe, to_yaml
from alm.errors import UserError
from alm.training.checkpoint import CKPT_FILE
from alm.training.preflight import preflight, resume_plan

from helpers import FAST, TINY, alm as run_alm


def shard(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    src = path.parent / "a.txt"
    src.write_text("x")
    with tarfile.open(path, "w") as tar:
        tar.add(src, arcname="000.txt")
    return path


def config(tmp_path, *overrides):
    shards = tmp_path / "shards"
    if not shards.is_dir():
        shard(shards / "train-000000.tar")
    return load_recipe(TINY, [*FAST, f"run_dir={tmp_path / 'run'}", f"data.train_shards={shards}",
                              "data.val_shards=null", "data.tokenizer=null", *overrides])


def checkpoint(run, step, cfg, lineage="L1", seq=1):
    d = run / "checkpoints" / f"step-{step:09d}"
    d.mkdir(parents=True)
    (d / CKPT_FILE).write_bytes(b"x")
    (d / "config.yaml").write_text(to_yaml(cfg))
    (d / "meta.json").write_text(json.dumps({"step": step, "id": f"c{step}", "parent": None, "lineage": lineage,
                                             "seq": seq, "world_size": 1}))
    return d


@pytest.mark.parametrize("spec, expected", [
    ("{tmp}/nowhere", r"data\.train_shards=.*nowhere.*missing"),
    ("{tmp}/shards/*.tgz", r"data\.train_shards=.*no \.tar shards found"),
    ("{tmp}/empty", r"data\.train_shards=.*empty.*no \.tar shards found"),
    ("{tmp}/shards::{tmp}/zero", r"shard .*zero.*000\.tar is empty \(0 bytes\)"),
])
def test_bad_shards_are_one_line_naming_the_key(tmp_path, spec, expected):
    (tmp_path / "empty").mkdir()
    (tmp_path / "zero").mkdir()
    (tmp_path / "zero" / "000.tar").write_bytes(b"")
    cfg = config(tmp_path, f"data.train_shards={spec.format(tmp=tmp_path)}")
    with pytest.raises(UserError, match=expected) as err:
        preflight(cfg)
    assert "\n" not in str(err.value)


def test_val_shards_checked_only_when_validating(tmp_path):
    cfg = config(tmp_path, f"data.val_shards={tmp_path}/none", "trainer.val_every_n_steps=0")
    preflight(cfg)
    cfg = config(tmp_path, f"data.val_shards={tmp_path}/none", "trainer.val_every_n_steps=5")
    with pytest.raises(UserError, match=r"data\.val_shards="):
        preflight(cfg)


def test_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "run").write_text("not a dir")
    with pytest.raises(UserError, match=r"run_dir=.*run is a file"):
        preflight(config(tmp_path))
    with pytest.raises(UserError, match=r"is a file, so the directory cannot be created"):
        preflight(config(tmp_path, f"run_dir={tmp_path}/run/sub"))


def test_resume_with_a_changed_model_is_a_config_diff(tmp_path):
    old = config(tmp_path, "model.d_model=128")
    checkpoint(tmp_path / "run", 10, old)
    with pytest.raises(UserError, match=r"model\.d_model changed 128 -> 64: use a new run_dir") as err:
        preflight(config(tmp_path, "model.d_model=64"))
    assert "\n" not in str(err.value)
    # keys that shape nothing may change
    plan = preflight(config(tmp_path, "model.d_model=128", "model.dropout=0.3", "trainer.max_steps=99"))
    assert plan.checkpoint.step == 10


def test_resume_never_into_a_run_dir_with_checkpoints_is_refused(tmp_path):
    cfg = config(tmp_path, "resume=never")
    checkpoint(tmp_path / "run", 30, cfg)
    with pytest.raises(UserError, match=r"resume=never but run_dir=.* already holds checkpoints.*resume=restart"):
        preflight(cfg)
    plan = preflight(config(tmp_path, "resume=restart"))
    assert plan.checkpoint is None and plan.restart


def test_resume_path_of_another_run_into_a_used_run_dir_is_refused(tmp_path):
    cfg = config(tmp_path)
    checkpoint(tmp_path / "run", 30, cfg, lineage="MINE")
    other = checkpoint(tmp_path / "other", 20, cfg, lineage="THEIRS")
    with pytest.raises(UserError, match=r"not a checkpoint of run_dir=.*another run"):
        preflight(config(tmp_path, f"resume={other}"))
    own = tmp_path / "run" / "checkpoints" / "step-000000030"
    assert preflight(config(tmp_path, f"resume={own}/{CKPT_FILE}")).checkpoint.path == own
    with pytest.raises(UserError, match=r"resume=restat: no such checkpoint \(expected auto, never, restart"):
        preflight(config(tmp_path, "resume=restat"))


def test_a_requeued_job_continues_instead_of_starting_over(tmp_path, monkeypatch):
    cfg = config(tmp_path, "resume=restart")
    checkpoint(tmp_path / "run", 30, cfg)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    plan = resume_plan(cfg)
    assert plan.checkpoint.step == 30 and not plan.restart


@pytest.mark.slow
def test_cli_errors_before_anything_is_written(tmp_path):
    """`alm train` with a glob matching nothing: exit 2, one line, the run dir never created; with a
    changed model on resume: exit 2, one line, config.yaml untouched; a stage typo on the command
    line is reported against the command line."""
    run = tmp_path / "run"
    p = run_alm("train", TINY, f"run_dir={run}", *FAST, f"data.train_shards={tmp_path}/x-*.tar", "data.val_shards=null",
                "data.tokenizer=null", check=False)
    assert p.returncode == 2, p.stderr[-3000:]
    assert p.stderr.strip().count("\n") == 0 and "data.train_shards=" in p.stderr, p.stderr
    assert not run.exists()
    cfg = config(tmp_path)
    checkpoint(run, 10, cfg)
    (run / "config.yaml").write_text(to_yaml(cfg))
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    p = run_alm("train", TINY, f"run_dir={run}", *FAST, f"data.train_shards={tmp_path / 'shards'}",
                "data.val_shards=null", "data.tokenizer=null", "model.d_model=32", check=False)
    assert p.returncode == 2 and "model.d_model changed 64 -> 32" in p.stderr, p.stderr[-3000:]
    assert p.stderr.strip().count("\n") == 0, p.stderr
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
    assert (run / "config.yaml").read_text() == to_yaml(cfg)
    p = run_alm("train", TINY, "stage=semantc", check=False)
    assert p.returncode == 2 and p.stderr.startswith("alm train: command line: key 'stage': unknown stage"), p.stderr
