"""`alm eval run EXPORT --task T --shards SPEC`: the export's stage names its tasks; a directory gives
its held-out split; parallel sets are joined by key and a sample missing from one is counted, not hidden."""

from __future__ import annotations

import dataclasses
import json

import pytest
import webdataset as wds

import alm.stages
from alm.cli import main
from alm.data.splits import resolve_eval_spec
from alm.errors import UserError
from alm.eval.heldout import held_out_samples
from alm.export import export
from alm.stages.spec import EvalTask

from test_export import fake_run


def write(path, keys, member="json"):
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as w:
        for k in keys:
            w.write({"__key__": k, member: json.dumps({"text": f"text of {k}"}).encode()})


@pytest.fixture()
def shards(tmp_path):
    prep = tmp_path / "prep"
    write(prep / "train-000000.tar", ["t0", "t1"])
    write(prep / "val-000000.tar", ["v0"])
    write(prep / "test-000000.tar", ["a", "b", "c"])
    tokens = tmp_path / "tokens"
    write(tokens / "test-000000.tar", ["a", "c"], member="semantic.npy")  # b: the token pass failed on it
    return prep, tokens


def test_a_directory_evaluates_on_its_test_split_else_validation(shards, tmp_path):
    prep, _ = shards
    assert resolve_eval_spec(str(prep)) == str(prep / "test-000000.tar")
    (prep / "test-000000.tar").unlink()
    assert resolve_eval_spec(str(prep)) == str(prep / "val-000000.tar")
    (prep / "val-000000.tar").unlink()
    with pytest.raises(UserError, match=r"has no test or validation split to evaluate on \(it has: train \(train\)\)"):
        resolve_eval_spec(str(prep))
    with pytest.raises(UserError, match="weighted mixture"):
        resolve_eval_spec(f"{prep}/train-*.tar @1 :: {prep}/train-*.tar @2")


def test_parallel_sets_join_by_key_and_a_missing_sample_is_counted(shards, capsys):
    prep, tokens = shards
    report: dict = {}
    got = list(held_out_samples(resolve_eval_spec(f"{prep} + {tokens}"), report=report))
    assert [s["__key__"] for s in got] == ["a", "c"] and all("semantic.npy" in s and "json" in s for s in got)
    assert report == {"unjoined": 1, "unjoined_keys": ["b"]}
    assert "sample 'b' is missing from a parallel set: not scored" in capsys.readouterr().err
    assert [s["__key__"] for s in held_out_samples(resolve_eval_spec(str(prep)), limit=2)] == ["a", "b"]


def test_eval_run_calls_the_stage_task_and_writes_results(shards, tmp_path, monkeypatch, capsys):
    prep, _ = shards
    run_dir, _ = fake_run(tmp_path / "run")
    exp = export(run_dir, tmp_path / "export")

    def count(export_dir, spec, args):
        samples = list(held_out_samples(spec, args.limit))
        return {"count": float(len(samples)) * args.scale}, len(samples), {"scale": args.scale}

    task = EvalTask("count", "count the held-out samples", count,
                    lambda p: p.add_argument("--scale", type=float, default=1.0))
    stage = dataclasses.replace(alm.stages.get_stage("semantic"), eval_tasks=(task,))
    monkeypatch.setattr(alm.stages, "get_stage", lambda name: stage)
    out = tmp_path / "results.json"
    assert main(["eval", "run", str(exp), "--task", "count", "--shards", str(prep), "--scale", "2",
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["task"] == "count" and res["metrics"] == {"count": 6.0} and res["n"] == 3
    assert res["config"]["stage"] == "semantic" and res["config"]["scale"] == 2.0
    assert res["config"]["resolved_shards"] == str(prep / "test-000000.tar")
    assert main(["eval", "run", str(exp), "--task", "count", "--shards", str(prep), "--limit", "1",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["n"] == 1
    assert main(["eval", "run", str(exp), "--task", "asr", "--shards", str(prep)]) == 2
    assert "--task 'asr': an export of stage semantic evaluates as: count" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # only `alm eval run` passes unknown options on (to its task)
        main(["eval", "text", "--task", "asr", "--hyps", "h", "--refs", "r", "--scale", "2"])
    assert "unrecognized arguments: --scale 2" in capsys.readouterr().err
