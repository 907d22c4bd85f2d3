"""A tokenize stage as a REAL SLURM job array (the local two-node cluster of launch/local_slurm.py,
as in test_slurm.py): fit k-means once -> `array: 2` tokenize tasks -> a stage that starts only after
both tasks; the array's shards equal one run's, byte for byte."""

from __future__ import annotations

import json

import pytest

from test_slurm import _alm, _job, _submitted, _wait_job, cluster  # noqa: F401  (cluster: the module's fixture)
from test_tokenize_shards import tars, write_audio

pytestmark = pytest.mark.slow


def test_tokenize_array_stage_then_a_stage_after_all_its_tasks(cluster, tmp_path):  # noqa: F811
    audio, out, pdir = tmp_path / "audio", tmp_path / "sem", tmp_path / "pipe"
    write_audio(audio, shards=5, corrupt=(2,))
    tok = f"alm tokenize semantic --shards {audio} --out {out}"
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "name: arr\ncluster: local\nstages:\n"
        f"  - {{name: fit, command: '{tok} --features logmel --clusters 4 --fit-frames 200 --kmeans-backend sklearn "
        "--fit-only', tasks_per_node: 1}\n"
        f"  - {{name: tokenize, command: '{tok}', array: 2, tasks_per_node: 1}}\n"
        f"  - {{name: after, command: 'ls {out} > {{pipeline.dir}}/after.txt', tasks_per_node: 1}}\n")
    p = _alm(cluster, "launch", "slurm", str(pipeline), "--dir", str(pdir))
    fit_job, array_job, after_job = _submitted(p.stdout)
    assert _job(cluster, after_job)["Dependency"].startswith(f"afterok:{array_job}")
    assert _wait_job(cluster, fit_job, log=pdir / "fit" / f"slurm-{fit_job}.out")["JobState"] == "COMPLETED"
    tasks = [_wait_job(cluster, f"{array_job}_{i}", log=pdir / "tokenize" / f"slurm-{array_job}_{i}.out") for i in (0, 1)]
    assert [t["JobState"] for t in tasks] == ["COMPLETED", "COMPLETED"], tasks
    after = _wait_job(cluster, after_job, log=pdir / "after" / f"slurm-{after_job}.out")
    assert after["JobState"] == "COMPLETED" and all(after["StartTime"] >= t["EndTime"] for t in tasks), (after, tasks)
    logs = [(pdir / "tokenize" / f"slurm-{array_job}_{i}.out").read_text() for i in (0, 1)]
    assert "shard index 0 of 2: wrote 3 token shard(s), 5 samples, 1 failed sample(s)" in logs[0]
    assert "shard index 1 of 2: wrote 2 token shard(s), 4 samples, 0 failed sample(s)" in logs[1]
    listed = (pdir / "after.txt").read_text().split()
    assert [n for n in listed if n.endswith(".tar")] == [f"train-{i:06d}.tar" for i in range(5)]
    record = json.loads((pdir / "pipeline.json").read_text())
    assert record["stages"][1]["array"] == 2 and record["stages"][1]["log"].endswith(f"slurm-{array_job}_%a.out")

    one = tmp_path / "one"  # one run with the same tokenizer, outside SLURM
    _alm(cluster, "tokenize", "semantic", "--shards", str(audio), "--out", str(one), "--tokenizer", str(out / "tokenizer"))
    assert tars(out) == tars(one) and len(tars(one)) == 5
    assert json.loads((out / "errors.json").read_text()) == json.loads((one / "errors.json").read_text()) != []
