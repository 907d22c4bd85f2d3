"""Output contract of `alm prep`: determinism across --workers, refusing a non-empty OUT,
--overwrite, shard splitting, the CLI entry points, and a worker crash not killing the run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alm.data_prep.cli import main, run
from alm.data_prep.common import PrepError
from alm.data_prep.pool import ordered_map

REPO = Path(__file__).resolve().parents[1]


def tree_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def read_shard(path: str):
    from alm.data.shards import read_shard  # imported here: spawned workers import this module

    return read_shard(path)


def ids_in(out: Path, prefix: str) -> list[str]:
    return [json.loads(s["json"])["id"] for p in sorted(out.glob(f"{prefix}-*.tar")) for s in read_shard(str(p))]


@pytest.mark.parametrize("name", ["clotho", "librispeech_finetuning"])
def test_byte_identical_for_any_worker_count(tmp_path, name, dataset_fixtures):
    sub = {"clotho": "clotho", "librispeech_finetuning": "librilight/librispeech_finetuning"}[name]
    one = run(name, dataset_fixtures / sub, tmp_path / "w1", shard_size=2, workers=1, quiet=True)
    two = run(name, dataset_fixtures / sub, tmp_path / "w3", shard_size=2, workers=3, quiet=True)
    assert one == two
    a, b = tree_bytes(tmp_path / "w1"), tree_bytes(tmp_path / "w3")
    assert list(a) == list(b) and a == b
    assert len(a) > 3  # several shards per split + manifest


def test_small_shard_size_gives_several_shards(tmp_path, dataset_fixtures):
    manifest = run("audiocaps", dataset_fixtures / "audiocaps", tmp_path, shard_size=2, quiet=True)
    train = manifest["splits"]["train"]
    assert train["shards"] == ["train-000000.tar", "train-000001.tar"]
    ids = ids_in(tmp_path, "train")
    assert sorted(ids) == ids and len(ids) == len(set(ids)) == train["num_samples"] == 3
    assert [len(list(read_shard(str(tmp_path / s)))) for s in train["shards"]] == [2, 1]


def test_refuses_non_empty_out_unless_overwrite(tmp_path, capsys, dataset_fixtures):
    src = dataset_fixtures / "musiccaps"
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "eval-000007.tar").write_bytes(b"stale")
    with pytest.raises(PrepError, match="not empty.*--overwrite"):
        run("musiccaps", src, out, quiet=True)
    assert main(["musiccaps", "--src", str(src), "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()
    assert main(["musiccaps", "--src", str(src), "--out", str(out), "--overwrite", "--workers", "1"]) == 0
    table = capsys.readouterr().out
    assert "missing_audio" in table and "eval" in table and "train" in table
    assert not (out / "eval-000007.tar").exists()  # stale shard of the previous run removed
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.glob("*.tar")) == ["eval-000000.tar", "train-000000.tar"]


def test_out_inside_src_is_refused(tmp_path, dataset_fixtures):
    src = tmp_path / "audiocaps"
    shutil.copytree(dataset_fixtures / "audiocaps", src)
    with pytest.raises(PrepError, match="inside the source"):
        run("audiocaps", src, src / "shards", quiet=True)


def test_cli_usage_errors(tmp_path, capsys):
    assert main(["nosuchdataset", "--src", "a", "--out", "b"]) == 2
    assert main(["clotho", "--src", "a", "--out", "b", "--shard-size", "0"]) == 2
    assert main(["clotho", "--src", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_module_entry_point(tmp_path, dataset_fixtures):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "alm.data_prep.musiccaps", "--src", str(dataset_fixtures / "musiccaps"),
         "--out", str(tmp_path / "o"), "--workers", "1", "--sample-rate", "8000"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "total" in proc.stdout
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["sample_rate"] == 8000 and manifest["splits"]["train"]["num_samples"] == 2


def crash_on_three(x: int) -> int:
    if x == 3:
        os._exit(1)  # what a segfaulting decoder looks like to the pool
    return x * 10


def test_worker_crash_is_isolated_and_order_kept():
    got = list(ordered_map(crash_on_three, range(7), workers=2, on_crash=lambda t: ("crashed", t)))
    assert got == [0, 10, 20, ("crashed", 3), 40, 50, 60]
