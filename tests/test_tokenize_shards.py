"""`alm tokenize ... --num-shards N --shard-index I`: N jobs together write exactly the shards one run
writes (byte-identical tars, the same errors.json), a killed job leaves no partial shard counted as
finished, per-shard error lists never overwrite each other, SLURM array variables stand in for the flags."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from alm.data.shards import (ERRORS_DIR, ShardWriter, json_bytes, key_from_id, map_shards, merge_errors, npy_bytes,
                             npy_load, shard_share)
from alm.errors import UserError
from alm.tokenizers import array_job

sys.path.insert(0, str(Path(__file__).parent))
from helpers import env  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _flac(seconds: float, freq: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t) * np.linspace(0.2, 1, len(t))).astype(np.float32), rate, format="FLAC")
    return buf.getvalue()


def write_audio(root: Path, shards: int = 5, per_shard: int = 2, corrupt: tuple[int, ...] = (3,)) -> list[str]:
    """`shards` shards of short tones; sample 1 of each shard in `corrupt` is not audio."""
    with ShardWriter(root, "train", max_count=per_shard) as w:
        for i in range(shards * per_shard):
            bad = i // per_shard in corrupt and i % per_shard == 1
            w.write({"__key__": key_from_id(f"clip {i}"), "json": json_bytes({"id": f"clip {i}"}),
                     "flac": b"not audio" if bad else _flac(0.2 + 0.05 * i, 200 + 40 * i)})
    return w.paths


def write_numbers(root: Path, shards: int = 7) -> list[str]:
    with ShardWriter(root, "train", max_count=2) as w:
        for i in range(2 * shards):
            w.write({"__key__": key_from_id(f"n.{i}"), "json": json_bytes({"id": i}), "x.npy": npy_bytes(np.arange(i + 1))})
    return w.paths


def double_or_fail(batch):
    """A toy tokenizer: x * 2, and every sample whose number is divisible by 5 fails."""
    return [None if len(npy_load(s["x.npy"])) % 5 == 0 else {"y.npy": npy_bytes(npy_load(s["x.npy"]) * 2)} for s in batch]


def tars(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.tar"))}


# ----------------------------------------------------------------------------------------------
# the share of each job


def test_shard_share_is_round_robin_and_covers_every_shard_once():
    names = [f"s{i}" for i in range(10)]
    shares = [shard_share(names, 3, i) for i in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(i for s in shares for i in s) == list(range(10))
    assert shard_share(names) == list(range(10)) and shard_share(names[:2], 4, 3) == []
    with pytest.raises(ValueError, match="shard index 3 of 3"):
        shard_share(names, 3, 3)


def test_resolve_flags_slurm_array_and_errors():
    assert array_job.resolve(None, None, {}) == (1, 0, "one job")
    assert array_job.resolve(4, 2, {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "8"})[:2] == (4, 2)  # flags win
    n, i, source = array_job.resolve(None, None, {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8"})
    assert (n, i) == (8, 5) and "SLURM_ARRAY_TASK_ID" in source
    # --array=1-8 and --array=0-14:2 number their tasks 0..N-1 too
    assert array_job.resolve(None, None, {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "8",
                                          "SLURM_ARRAY_TASK_MIN": "1"})[:2] == (8, 0)
    assert array_job.resolve(None, None, {"SLURM_ARRAY_TASK_ID": "14", "SLURM_ARRAY_TASK_COUNT": "8",
                                          "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "2"})[:2] == (8, 7)
    for args, environ, message in [
        ((4, None), {}, "go together"),
        ((4, 4), {}, r"--shard-index must be in 0\.\.3"),
        ((0, 0), {}, "--num-shards must be >= 1"),
        ((None, None), {"SLURM_ARRAY_TASK_ID": "3"}, "SLURM_ARRAY_TASK_COUNT is not"),
        ((None, None), {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "x"}, "not integers"),
        ((None, None), {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_STEP": "2"},
         "cannot number it"),
    ]:
        with pytest.raises(UserError, match=message):
            array_job.resolve(*args, environ)


# ----------------------------------------------------------------------------------------------
# map_shards: N calls == one call


def test_three_jobs_write_exactly_what_one_run_writes(tmp_path):
    paths = write_numbers(tmp_path / "in")
    one = map_shards(paths, tmp_path / "one", double_or_fail, batch_size=3, progress=False)
    assert one["samples"] == 12 and len(one["errors"]) == 2 and one["done_total"] == one["total"] == 7
    results = [map_shards(paths, tmp_path / "three", double_or_fail, batch_size=3, progress=False,
                          num_shards=3, shard_index=i) for i in (2, 0, 1)]  # any order
    assert [len(r["shards"]) for r in results] == [2, 3, 2] and sum(r["samples"] for r in results) == 12
    assert [r["done_total"] for r in results] == [2, 5, 7]  # what the directory holds after each job
    assert tars(tmp_path / "three") == tars(tmp_path / "one") and len(tars(tmp_path / "one")) == 7
    assert json.loads((tmp_path / "three" / "errors.json").read_text()) == one["errors"]
    assert results[-1]["errors_total"] == 2 and sum(len(r["errors"]) for r in results) == 2
    # only shards with failed samples get a list; each names its own shard's failures
    lists = sorted(os.listdir(tmp_path / "three" / ERRORS_DIR))
    assert lists == sorted({f"{e['shard']}.json" for e in one["errors"]})
    # a rerun of one job skips its finished shards and still reports their errors
    again = map_shards(paths, tmp_path / "three", double_or_fail, progress=False, num_shards=3, shard_index=0)
    assert again["samples"] == 0 and again["existing"] == [os.path.basename(p) for p in paths[0::3]]
    assert again["errors"] == [e for e in one["errors"] if e["shard"] in again["existing"]]


def test_a_shard_another_process_is_writing_is_left_to_it_and_reported(tmp_path):
    import fcntl

    paths = write_numbers(tmp_path / "in", shards=3)
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".train-000001.tar.lock", "a") as held:  # as a straggler job writing shard 1 holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        r = map_shards(paths, out, double_or_fail, progress=False)
    assert r["busy"] == ["train-000001.tar"] and sorted(tars(out)) == ["train-000000.tar", "train-000002.tar"]
    line = array_job.summary_line(r, 1, 0, str(out))
    assert "NOT DONE: 1 shard(s) of this share were being written by another process (e.g. train-000001.tar)" in line
    again = map_shards(paths, out, double_or_fail, progress=False)  # the lock is free: the rerun finishes it
    assert again["busy"] == [] and again["existing"] == ["train-000000.tar", "train-000002.tar"] and len(tars(out)) == 3
    assert [p.name for p in out.glob(".*.lock")] == [".errors.lock"]  # shard locks go once their shard is done


def test_errors_of_an_old_single_file_set_are_kept(tmp_path):
    paths = write_numbers(tmp_path / "in", shards=3)
    out = tmp_path / "out"
    map_shards(paths, out, double_or_fail, progress=False)
    want = json.loads((out / "errors.json").read_text())
    # the layout before per-shard lists: one errors.json, no errors/
    for f in (out / ERRORS_DIR).iterdir():
        f.unlink()
    (out / ERRORS_DIR).rmdir()
    os.remove(out / os.path.basename(paths[0]))  # a shard to redo; the errors are all in shard 2, not redone
    r = map_shards(paths, out, double_or_fail, progress=False)
    assert r["samples"] == 2 and len(want) == 1 and json.loads((out / "errors.json").read_text()) == want
    # a list whose shard never got its final name (a killed job) is not counted
    (out / ERRORS_DIR / "train-000099.tar.json").write_text(json.dumps([{"key": "k", "shard": "train-000099.tar",
                                                                          "reason": "tokenizer_failed"}]))
    assert merge_errors(out) == want


KILLED_JOB = """
import time
from pathlib import Path
from alm.data.shards import map_shards, npy_bytes, npy_load

def fn(batch):  # double_or_fail, hanging at shard 2's second sample until killed
    if any(s["__key__"] == "n~2e5" for s in batch):
        Path({marker!r}).write_text("in shard 2")
        time.sleep(600)
    return [None if len(npy_load(s["x.npy"])) % 5 == 0 else {{"y.npy": npy_bytes(npy_load(s["x.npy"]) * 2)}} for s in batch]

map_shards({paths!r}, {out!r}, fn, batch_size=1, progress=False)
"""


def test_a_killed_job_leaves_no_partial_shard_counted_as_finished(tmp_path):
    paths = write_numbers(tmp_path / "in", shards=4)
    out, marker = tmp_path / "out", tmp_path / "marker"
    code = KILLED_JOB.format(marker=str(marker), paths=paths, out=str(out))
    job = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env())
    deadline = time.time() + 120
    while not marker.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "the job never reached shard 2"
    job.send_signal(signal.SIGKILL)
    job.wait(30)
    names = [os.path.basename(p) for p in paths]
    assert sorted(p.name for p in out.glob("*.tar")) == names[:2]  # shard 2 is not under its final name
    assert (out / f".{names[2]}.tmp").exists()  # its partial bytes are only in the hidden temp file
    assert not (out / ERRORS_DIR / f"{names[2]}.json").exists()
    # the rerun redoes shard 2 (and 3) and ends with exactly what an uninterrupted run writes
    r = map_shards(paths, out, double_or_fail, batch_size=1, progress=False)
    assert r["existing"] == names[:2]
    clean = map_shards(paths, tmp_path / "clean", double_or_fail, batch_size=1, progress=False)
    assert tars(out) == tars(tmp_path / "clean")
    assert json.loads((out / "errors.json").read_text()) == clean["errors"]


# ----------------------------------------------------------------------------------------------
# the CLIs


def _alm(*args: str, extra_env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "alm", *args], cwd=REPO, env={**env(), **(extra_env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_codec_array_jobs_equal_one_run(tmp_path, capsys, monkeypatch):
    from alm.tokenizers.codec import main, make_tiny_codec

    write_audio(tmp_path / "audio")
    codec = make_tiny_codec(tmp_path / "codec")
    common = ["--shards", str(tmp_path / "audio"), "--codec", codec, "--batch-size", "2", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--out", str(tmp_path / "two"), "--num-shards", "2", "--shard-index", "0"]) == 0
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")  # the index from a SLURM array task's variables
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert main([*common, "--out", str(tmp_path / "two")]) == 0
    out, err = capsys.readouterr()
    assert "shard index 1 of 2 (SLURM array task 1 of 2" in err
    assert "shard index 0 of 2: wrote 3 token shard(s), 6 samples" in out
    assert "shard index 1 of 2: wrote 2 token shard(s), 3 samples, 1 failed sample(s) in these shards; " \
           f"{tmp_path / 'two'} now holds 5 of 5 shard(s), 1 failed sample(s) in all (errors.json)" in out
    assert tars(tmp_path / "two") == tars(tmp_path / "one") and len(tars(tmp_path / "one")) == 5
    errors = json.loads((tmp_path / "one" / "errors.json").read_text())
    assert errors == [{"key": key_from_id("clip 7"), "shard": "train-000003.tar", "reason": "tokenizer_failed"}]
    assert json.loads((tmp_path / "two" / "errors.json").read_text()) == errors
    assert (tmp_path / "two" / "codec.json").read_bytes() == (tmp_path / "one" / "codec.json").read_bytes()


def test_semantic_fit_once_then_two_concurrent_jobs_equal_one_run(tmp_path, capsys):
    from alm.tokenizers.semantic import main

    write_audio(tmp_path / "audio", shards=6, corrupt=(4,))
    common = ["--shards", str(tmp_path / "audio"), "--features", "logmel", "--clusters", "4", "--fit-frames", "300",
              "--kmeans-backend", "sklearn"]
    with pytest.raises(UserError, match="fit the tokenizer once first"):  # an array job never fits its own
        main([*common, "--out", str(tmp_path / "two"), "--num-shards", "2", "--shard-index", "1"])
    assert not (tmp_path / "two").exists()
    assert main([*common, "--out", str(tmp_path / "two"), "--fit-only"]) == 0
    assert not list((tmp_path / "two").glob("*.tar"))
    assert main([*common, "--out", str(tmp_path / "fitted"), "--fit-only"]) == 0  # fitting is deterministic
    for name in ("semantic_tokenizer.json", "kmeans.safetensors"):
        assert (tmp_path / "two" / "tokenizer" / name).read_bytes() == (tmp_path / "fitted" / "tokenizer" / name).read_bytes()
    # a second --fit-only keeps the tokenizer; a job asking for other settings is refused
    assert main([*common, "--out", str(tmp_path / "two"), "--fit-only"]) == 0
    assert "(already there, kept)" in capsys.readouterr().out
    with pytest.raises(UserError, match="n_clusters=4"):
        main([*common[:4], "--clusters", "5", "--out", str(tmp_path / "two"), "--num-shards", "2", "--shard-index", "0"])
    with pytest.raises(SystemExit):
        main([*common, "--out", str(tmp_path / "x"), "--fit-only", "--num-shards", "2", "--shard-index", "0"])
    with pytest.MonkeyPatch.context() as mp:  # --fit-only inside an array: every task would fit its own
        mp.setenv("SLURM_ARRAY_TASK_ID", "0")
        mp.setenv("SLURM_ARRAY_TASK_COUNT", "4")
        with pytest.raises(UserError, match="fit once in a job"):
            main([*common, "--out", str(tmp_path / "x"), "--fit-only"])

    # one run and the two jobs of an array, all at once, as real processes
    tok = ["tokenize", "semantic", "--shards", str(tmp_path / "audio")]
    procs = {
        "one": _alm(*tok, "--out", str(tmp_path / "one"), "--tokenizer", str(tmp_path / "fitted" / "tokenizer")),
        "job0": _alm(*tok, "--out", str(tmp_path / "two"), "--num-shards", "2", "--shard-index", "0"),
        "job1": _alm(*tok, "--out", str(tmp_path / "two"), extra_env={"SLURM_ARRAY_TASK_ID": "1",
                                                                     "SLURM_ARRAY_TASK_COUNT": "2"}),
    }
    done = {name: (p.wait(300), *p.communicate()) for name, p in procs.items()}
    for name, (rc, out, err) in done.items():
        assert rc == 0, f"{name}: {out}\n{err[-3000:]}"
    assert "shard index 0 of 2: wrote 3 token shard(s), 5 samples, 1 failed sample(s) in these shards" in done["job0"][1]
    assert "shard index 1 of 2: wrote 3 token shard(s), 6 samples, 0 failed sample(s) in these shards" in done["job1"][1]
    assert "(SLURM array task 1 of 2" in done["job1"][2]
    assert tars(tmp_path / "two") == tars(tmp_path / "one") and len(tars(tmp_path / "one")) == 6
    errors = json.loads((tmp_path / "one" / "errors.json").read_text())
    assert errors == [{"key": key_from_id("clip 9"), "shard": "train-000004.tar", "reason": "tokenizer_failed"}]
    assert json.loads((tmp_path / "two" / "errors.json").read_text()) == errors
