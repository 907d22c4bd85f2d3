"""Checkpoint lineage end to end ([robust] 1): a run dir holding another run's checkpoints is never
silently mixed with a new run, and resuming from an older checkpoint starts a branch that wins."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alm.training.checkpoint import latest_checkpoint, list_checkpoints, read_meta
from alm.training.preemption import read_state

from helpers import FAST, REPO, TINY, alm as run_alm, env, train

pytestmark = pytest.mark.slow
NEW = ("trainer.max_steps=12", "trainer.ckpt_every_n_steps=5")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A finished run with checkpoints 20 and 30 (keep_last_k=2)."""
    run = tmp_path_factory.mktemp("base") / "run"
    train(run, "trainer.max_steps=30", "trainer.ckpt_every_n_steps=10", "trainer.keep_last_k=2")
    assert [s for s, _ in list_checkpoints(run)] == [20, 30]
    return run


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_resume_never_into_a_used_run_dir_is_refused_restart_moves_the_old_run_aside(base_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(base_run, copy)
    before = snapshot(copy)
    p = run_alm("train", TINY, f"run_dir={copy}", *FAST, *NEW, "resume=never", check=False)
    assert p.returncode == 2 and "resume=never but run_dir=" in p.stderr, p.stderr[-3000:]
    assert snapshot(copy) == before  # nothing touched

    train(copy, *NEW, "resume=restart")
    assert [s for s, _ in list_checkpoints(copy)] == [10, 12]  # this run's, keep_last_k=2
    (old,) = (copy / "replaced").iterdir()
    assert [s for s, _ in list_checkpoints(old)] == [20, 30]  # the previous run, whole
    assert snapshot(old)["config.yaml"] == before["config.yaml"] and (old / "logs").is_dir()
    state = read_state(copy)
    assert state["state"] == "done" and Path(state["last_checkpoint"]).name == "step-000000012"
    assert Path(state["last_checkpoint"]).is_dir()
    assert read_meta(copy / "checkpoints" / "step-000000012")["lineage"] != read_meta(old / "checkpoints" / "step-000000030")["lineage"]
    run_alm("export", str(copy), "--out", str(tmp_path / "export"))
    assert json.loads((tmp_path / "export" / "export.json").read_text())["step"] == 12


def test_resume_from_an_older_checkpoint_starts_a_branch_whose_newest_wins(base_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(base_run, copy)
    older = copy / "checkpoints" / "step-000000020"
    parent = read_meta(older)
    train(copy, f"resume={older}", "trainer.max_steps=28", "trainer.ckpt_every_n_steps=5")
    # 25 and 28 are the new branch; the stale 30 of the abandoned one is neither kept nor chosen
    assert [s for s, _ in list_checkpoints(copy)] == [25, 28]
    assert latest_checkpoint(copy).name == "step-000000028"
    first = read_meta(copy / "checkpoints" / "step-000000025")
    assert first["parent"] == parent["id"] and first["lineage"] == parent["lineage"]
    assert read_meta(copy / "checkpoints" / "step-000000028")["parent"] == first["id"]
    train(copy, "trainer.max_steps=30", "trainer.ckpt_every_n_steps=5")  # resume=auto continues the branch
    assert read_state(copy)["resumed_from"].endswith("step-000000028/checkpoint.ckpt")
    assert read_meta(copy / "checkpoints" / "step-000000030")["parent"] == read_meta(copy / "checkpoints" / "step-000000028")["id"]


def test_every_rank_resumes_what_rank_0_chose_under_an_external_launcher(tmp_path):
    """[spine2] 5, under torchrun (ranks started by the launcher, as under SLURM): rank 1's listing
    of run_dir shows no checkpoint, rank 0's shows step 6; both resume from step 6."""
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    common = (*FAST, "trainer.ckpt_every_n_steps=3", "trainer.devices=2", "data.num_workers=0")
    train(run, "trainer.max_steps=6", *common[len(FAST):])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(REPO / "tests" / "scripts" / "stale_listing_resume.py"), TINY, str(out), f"run_dir={run}", *common,
           "trainer.max_steps=8"]
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-5000:]
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1], ranks
    assert ranks[0]["ckpt_path"].endswith("step-000000006/checkpoint.ckpt") and ranks[0]["step"] == 8
