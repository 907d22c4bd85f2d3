"""Checkpoint lineage: which checkpoint is current, what retention deletes (unit tests on folders
laid out like a run's; no training)."""

from __future__ import annotations

import json
from pathlib import Path

from alm.training.checkpoint import CKPT_FILE, checkpoints, current_branch, latest_checkpoint, to_delete


def make(run: Path, step: int, seq: int | None, id_: str | None = None, parent: str | None = None,
         lineage: str = "L1") -> Path:
    d = run / "checkpoints" / f"step-{step:09d}"
    d.mkdir(parents=True)
    (d / CKPT_FILE).write_bytes(b"x")
    meta = {"step": step}
    if seq is not None:  # seq None: a checkpoint written before lineage was recorded
        meta.update(id=id_ or f"c{step}", parent=parent, lineage=lineage, seq=seq)
    (d / "meta.json").write_text(json.dumps(meta))
    return d


def steps(ckpts) -> list[int]:
    return [c.step for c in ckpts]


def test_a_new_branch_wins_over_higher_steps_of_the_abandoned_one(tmp_path):
    make(tmp_path, 10, 1, parent=None)
    make(tmp_path, 20, 2, parent="c10")
    make(tmp_path, 30, 3, parent="c20")
    make(tmp_path, 25, 4, parent="c20")  # resumed from step 20: a new branch
    ckpts = checkpoints(tmp_path)
    assert steps(current_branch(ckpts)) == [25, 20, 10]
    assert latest_checkpoint(tmp_path).name == "step-000000025"
    # keep 2: the branch's newest two stay; step 10 was written before them; the abandoned step 30
    # was written after step 20, so it stays until the new branch has two newer checkpoints
    assert steps(to_delete(ckpts, 2)) == [10]
    make(tmp_path, 28, 5, parent="c25")
    assert sorted(steps(to_delete(checkpoints(tmp_path), 2))) == [10, 20, 30]


def test_retention_never_deletes_the_current_branch_for_older_lineages(tmp_path):
    """The repro of [robust] 1: a copied run dir with 20 and 30 of another run, then 5/10/12 of a
    new lineage (had it been allowed to start): 5/10/12 are current, 20 and 30 go."""
    make(tmp_path, 20, 1, id_="old20", parent=None, lineage="OLD")
    make(tmp_path, 30, 2, id_="old30", parent="old20", lineage="OLD")
    make(tmp_path, 5, 3, parent=None, lineage="NEW")
    make(tmp_path, 10, 4, parent="c5", lineage="NEW")
    make(tmp_path, 12, 5, parent="c10", lineage="NEW")
    ckpts = checkpoints(tmp_path)
    assert latest_checkpoint(tmp_path).name == "step-000000012"
    assert sorted(steps(to_delete(ckpts, 2))) == [5, 20, 30]


def test_nothing_is_deleted_while_the_branch_is_shorter_than_keep(tmp_path):
    make(tmp_path, 20, 1)
    make(tmp_path, 30, 2, parent="c20")
    make(tmp_path, 5, 3, parent=None, lineage="NEW")
    assert to_delete(checkpoints(tmp_path), 2) == []


def test_checkpoints_without_lineage_are_ordered_by_step(tmp_path):
    for s in (10, 20, 30):
        make(tmp_path, s, None)
    ckpts = checkpoints(tmp_path)
    assert steps(current_branch(ckpts)) == [30, 20, 10]
    assert steps(to_delete(ckpts, 2)) == [10]
    make(tmp_path, 40, 1, parent="step-000000030")  # a new save resumed from an old-format one
    assert steps(current_branch(checkpoints(tmp_path))) == [40, 30, 20, 10]


def test_incomplete_and_foreign_folders_are_ignored(tmp_path):
    make(tmp_path, 10, 1)
    (tmp_path / "checkpoints" / ".step-000000020.tmp").mkdir()
    (tmp_path / "checkpoints" / "notes").mkdir()
    assert steps(checkpoints(tmp_path)) == [10]
    assert latest_checkpoint(tmp_path / "missing") is None
