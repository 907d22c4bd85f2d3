"""`alm launch slurm` on a REAL SLURM cluster: slurmctld + two slurmd nodes (n1, n2) on this machine,
started by the project's own launch/local_slurm.py for this module (which installs SLURM with apt-get
if it is missing) and stopped at its end. Nothing is mocked.

  a. a 2-node x 1-task CPU training job finishes, with one rank on each node;
  b. `scancel -s USR1` mid-training: checkpoint -> requeue -> the same job runs again
     (SLURM_RESTART_COUNT=1) -> exact resume: per-step losses equal the uninterrupted run of (a);
  c. a 2-stage pipeline (train + export -> sample from the export) runs in order via afterok, and a
     failing stage cancels the stage after it;
  d. --dry-run of an 8-node x 8-GPU recipe (no cluster needed);
  e. a request no node can hold (cpus-per-task = num_workers + 1 > the nodes' cores) is refused
     before sbatch, with what the nodes have;
  f. `scancel` (SIGTERM, as preemption sends it) leaves the tasks time to checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import FAST, REPO, TINY, env as base_env, losses

pytestmark = pytest.mark.slow

STEPS = 40
# FAST (tiny net, pinned threads, CPU) + one loader worker per rank; checkpoints only at the end
# (and when preempted), so the resume point is exactly where the signal landed.
TRAIN = [*FAST, f"trainer.max_steps={STEPS}", "trainer.ckpt_every_n_steps=100", "data.num_workers=1"]
CPU_JOB = ["--cluster", "local", "--nodes", "2", "--gpus-per-node", "0", "--tasks-per-node", "1"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def _free_port_base() -> int:
    """Three consecutive free TCP ports (the test cluster must not collide with another one here)."""
    for base in range(40000 + (os.getpid() % 500) * 3, 45000, 3):
        socks = []
        try:
            for port in range(base, base + 3):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports for the test cluster")


def _local_slurm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alm.launch.local_slurm", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("slurm")
    assert not re.search(r"\s", str(prefix)), prefix
    t = time.time()
    p = _local_slurm("start", str(prefix), "--port-base", str(_free_port_base()))
    if p.returncode != 0:  # a failure, not a skip: SLURM support is tested for real
        pytest.fail(f"could not start the local SLURM cluster ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-6000:]}")
    conf = str(prefix / "slurm.conf")
    assert p.stdout.strip().splitlines()[-1] == f"export SLURM_CONF={conf}"
    print(f"[test] local SLURM cluster up in {time.time() - t:.1f} s ({prefix})")
    try:
        yield {"SLURM_CONF": conf, "prefix": prefix}
    finally:
        _local_slurm("stop", str(prefix))


def _env(cluster) -> dict:
    e = base_env()
    e["SLURM_CONF"] = cluster["SLURM_CONF"]
    return e


def _run(cluster, *cmd, check=True, timeout=300) -> subprocess.CompletedProcess:
    p = subprocess.run(list(cmd), cwd=REPO, env=_env(cluster), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return p


def _alm(cluster, *args, **kw) -> subprocess.CompletedProcess:
    return _run(cluster, sys.executable, "-m", "alm", *args, **kw)


def _submitted(out: str) -> list[str]:
    return re.findall(r"^Submitted batch job (\d+)", out, re.M)


def _job(cluster, job: str) -> dict[str, str]:
    out = _run(cluster, "scontrol", "show", "job", "-o", job).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def _wait_job(cluster, job: str, timeout: float = 400, log: Path | None = None) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = _job(cluster, job)
        if info.get("JobState") in TERMINAL:
            return info
        time.sleep(0.5)
    tail = log.read_text()[-4000:] if log and log.is_file() else ""
    raise AssertionError(f"job {job} did not finish in {timeout} s: {_job(cluster, job)}\n{tail}")


def _submit_training(cluster, run_dir: Path, *extra: str) -> str:
    p = _alm(cluster, "launch", "slurm", TINY, f"run_dir={run_dir}", *TRAIN, *CPU_JOB, *extra)
    (job,) = _submitted(p.stdout)
    assert f"{run_dir}/slurm-{job}.out" in p.stdout  # the launcher prints where the log goes
    return job


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory):
    """An uninterrupted 2-node x 1-task run (test a; the baseline of test b)."""
    run = tmp_path_factory.mktemp("ref") / "run"
    t = time.time()
    job = _submit_training(cluster, run)
    info = _wait_job(cluster, job, log=run / f"slurm-{job}.out")
    print(f"[test] 2-node tiny training job {job}: {time.time() - t:.1f} s")
    return run, job, info


def _state(run: Path) -> dict:
    try:
        return json.loads((run / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def test_two_node_cpu_job_completes_one_rank_per_node(cluster, reference):
    run, job, info = reference
    log = (run / f"slurm-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED", log[-4000:]
    assert info["NodeList"] == "n[1-2]" and info["NumNodes"] == "2" and info["NumTasks"] == "2"
    state = _state(run)
    assert state["state"] == "done" and state["step"] == STEPS and state["slurm_job_id"] == job
    # one srun, two tasks (srun --label prefixes "TASK: "): each initialised its own global rank
    assert re.search(r"^0: Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2$", log, re.M), log[-4000:]
    assert re.search(r"^1: Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2$", log, re.M), log[-4000:]
    assert "MASTER_ADDR=127.0.0.1" in log  # NodeAddr of n1 (its node name is not resolvable)
    # the lead time of the preemption signal and where it came from (a fresh run: nothing measured yet)
    assert "[alm] preemption signal: USR1 120 s before the time limit (default: no checkpoint" in log
    assert sorted(losses(run)) == list(range(STEPS))
    assert (run / "launch" / "recipe.yaml").is_file() and (run / "launch" / "sbatch.sh").is_file()
    # the resolved recipe says what ran
    recipe = (run / "launch" / "recipe.yaml").read_text()
    assert "num_nodes: 2" in recipe and "devices: 1" in recipe and f"run_dir: {run}" in recipe

    # alm runs: this run is done; a copy that claims `running` for the ended job is dead
    fake = run.parent / "claims-running"
    fake.mkdir()
    (fake / "config.yaml").write_text((run / "config.yaml").read_text())
    (fake / "state.json").write_text(json.dumps(dict(state, state="running")))
    table = _alm(cluster, "runs", str(run.parent)).stdout
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert rows[str(run)][1:5] == ["semantic", "done", f"{STEPS}/{STEPS}", f"step-{STEPS:09d}"], table
    assert rows[str(run)][-1] == job
    assert rows[str(fake)][2] == "dead", table


def test_usr1_checkpoints_requeues_and_resumes_exactly(cluster, reference, tmp_path):
    ref_run = reference[0]
    run = tmp_path / "run"
    job = _submit_training(cluster, run)
    log = run / f"slurm-{job}.out"

    deadline = time.time() + 300
    while max(losses(run), default=-1) < 5:  # mid-training
        assert time.time() < deadline and _job(cluster, job)["JobState"] not in TERMINAL, log.read_text()[-4000:]
        time.sleep(0.1)
    sent = time.time()
    _run(cluster, "scancel", "-s", "USR1", job)  # at once: 35 more tiny steps take only seconds
    live = _alm(cluster, "runs", str(run)).stdout  # a live job is listed with its queue state
    assert re.search(rf"\b{job} \((running|completing|pending|requeued)\)", live), live

    seen, turnaround = [], None
    while turnaround is None:
        assert time.time() - sent < 300, f"no resume after the signal; states {seen}\n{log.read_text()[-4000:]}"
        st = _state(run)
        key = (st.get("state"), st.get("slurm_restart_count"))
        if key not in [k for k, _ in seen]:
            seen.append((key, st))
        first = run / "logs" / "attempt-1" / "metrics.csv"
        if first.is_file() and len(first.read_text().splitlines()) > 1:  # the requeued job logged a step
            turnaround = time.time() - sent
        time.sleep(0.05)
    print(f"\n[test] preempt -> resume turnaround (scancel -s USR1 -> first step of the requeued job): {turnaround:.1f} s")

    info = _wait_job(cluster, job, log=log)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text[-4000:]
    states = [k for k, _ in seen]
    assert ("preempted", 0) in states and ("running", 1) in states, seen
    assert states.index(("preempted", 0)) < states.index(("running", 1)), seen
    pre = next(st for k, st in seen if k == ("preempted", 0))
    assert pre["requeued"] is True and pre["slurm_job_id"] == job
    resumed_at = pre["step"]
    assert 5 <= resumed_at < STEPS
    final = _state(run)
    assert final["state"] == "done" and final["step"] == STEPS and final["slurm_restart_count"] == 1
    assert final["slurm_job_id"] == job  # the same job ran again
    # one log, appended by both attempts; the second resumed from the preemption checkpoint
    assert "(restart 0)" in text and "(restart 1)" in text
    assert f"step-{resumed_at:09d}" in text.split("(restart 1)", 1)[1]
    assert len(list(run.glob("logs/attempt-*"))) == 2

    a, b = losses(ref_run), losses(run)
    assert sorted(b) == list(range(STEPS))
    assert [b[s] for s in range(STEPS)] == [a[s] for s in range(STEPS)]  # bit-identical

    # launching this run dir again reads the save time its newest checkpoint recorded (if it records one)
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    meta = json.loads((newest / "meta.json").read_text())
    again = _alm(cluster, "launch", "slurm", TINY, f"run_dir={run}", *TRAIN, *CPU_JOB, "--dry-run")
    if "save_seconds" in meta:
        lead = -(-(2 * meta["save_seconds"] + 60) // 10) * 10
        assert f"#SBATCH --signal=USR1@{int(lead)}" in again.stdout and f"measured: {newest.name}" in again.stderr
    else:
        assert "#SBATCH --signal=USR1@120" in again.stdout and "default" in again.stderr


def test_pipeline_runs_in_order_and_failures_cancel_later_stages(cluster, tmp_path):
    pdir = tmp_path / "pipe"
    p = _alm(cluster, "launch", "slurm", str(REPO / "launch" / "pipelines" / "tiny_cpu.yaml"), "--dir", str(pdir))
    train_job, sample_job = _submitted(p.stdout)
    pending = _job(cluster, sample_job)
    assert pending["Dependency"].startswith(f"afterok:{train_job}"), pending
    export = pdir / "semantic" / "export"
    sample_script = (pdir / "sample" / "launch" / "sbatch.sh").read_text()
    assert f"-m alm generate semantic {export} --tokens 16 --out {pdir}/sample.npy" in sample_script

    first = _wait_job(cluster, train_job, log=pdir / "semantic" / f"slurm-{train_job}.out")
    second = _wait_job(cluster, sample_job, log=pdir / "sample" / f"slurm-{sample_job}.out")
    assert first["JobState"] == "COMPLETED" and second["JobState"] == "COMPLETED", (first, second)
    assert second["StartTime"] >= first["EndTime"]  # ISO timestamps
    assert (export / "model.safetensors").is_file() and _state(pdir / "semantic")["state"] == "done"
    tokens = np.load(pdir / "sample.npy")
    assert tokens.shape[-1] == 16
    record = json.loads((pdir / "pipeline.json").read_text())
    assert [s["job_id"] for s in record["stages"]] == [train_job, sample_job]

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ncluster: local\nstages:\n"
                   "  - {name: fails, command: 'false', tasks_per_node: 1}\n"
                   "  - {name: never, command: 'touch {pipeline.dir}/ran', tasks_per_node: 1}\n")
    p = _alm(cluster, "launch", "slurm", str(bad), "--dir", str(tmp_path / "bad"))
    a, b = _submitted(p.stdout)
    assert _wait_job(cluster, a)["JobState"] == "FAILED"
    later = _wait_job(cluster, b, timeout=60)
    assert later["JobState"] == "CANCELLED" and later["Reason"] == "DependencyNeverSatisfied", later
    assert not (tmp_path / "bad" / "ran").exists()


def test_dry_run_eight_nodes_eight_gpus(tmp_path):
    recipe = str(REPO / "recipes" / "audiolm" / "semantic.yaml")
    p = subprocess.run(
        [sys.executable, "-m", "alm", "launch", "slurm", recipe, f"run_dir={tmp_path}/big", "--nodes", "8",
         "--gpus-per-node", "8", "--partition", "gpu", "--account", "acct", "--time", "48:00:00", "--qos", "high",
         "--constraint", "h100", "--exclusive", "--dry-run"],
        cwd=REPO, env=base_env(), capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    script = p.stdout
    directives = re.findall(r"^#SBATCH (\S+)", script, re.M)
    for d in ("--nodes=8", "--ntasks-per-node=8", "--gpus-per-node=8", "--time=48:00:00", "--partition=gpu",
              "--account=acct", "--qos=high", "--constraint=h100", "--exclusive", "--signal=USR1@120", "--requeue",
              "--open-mode=append", f"--output={tmp_path}/big/slurm-%j.out", "--export=ALL"):
        assert d in directives, (d, directives)
    assert any(d.startswith("--cpus-per-task=") for d in directives)
    sruns = [line for line in script.splitlines() if line.lstrip().startswith("srun")]
    assert len(sruns) == 1 and "--ntasks=64" in sruns[0] and "--ntasks-per-node=8" in sruns[0] and "--nodes=8" in sruns[0]
    assert '-m alm train "${RUN_DIR}/launch/recipe.yaml"' in script and f"RUN_DIR={tmp_path}/big" in script
    assert 'scontrol show hostnames "${SLURM_JOB_NODELIST}"' in script and "NodeAddr=" in script
    assert "export MASTER_ADDR=${node_addr:-${first_node}}" in script
    assert re.search(r"^export MASTER_PORT=.*SLURM_JOB_ID", script, re.M)
    assert "export ALM_MAX_REQUEUES=20" in script
    assert sys.executable in script  # the launcher's python runs the tasks
    assert not (tmp_path / "big").exists()  # a dry run writes nothing
    check = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def _node_cpus(cluster) -> int:
    out = _run(cluster, "sinfo", "-h", "-N", "-o", "%c").stdout.split()
    assert len(out) == 2, out
    return int(out[0])


def test_request_no_node_can_hold_is_refused_before_sbatch(cluster, tmp_path):
    cpus = _node_cpus(cluster)
    run = tmp_path / "run"
    # without --cluster local: cpus-per-task defaults to data.num_workers + 1 = cpus + 1 > the nodes' cores
    job = ["--nodes", "2", "--gpus-per-node", "0", "--tasks-per-node", "1"]
    p = _alm(cluster, "launch", "slurm", TINY, f"run_dir={run}", *FAST, f"data.num_workers={cpus}", *job, check=False)
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("alm launch slurm: partition debug:"), err
    assert f"1 task(s) x {cpus + 1} CPU(s)" in err and f"n1, n2: {cpus} CPUs, 0 GPUs" in err, err
    assert not run.exists()  # nothing written, nothing submitted
    # one worker less fits (the submissions of tests a-c passed the same check)
    p = _alm(cluster, "launch", "slurm", TINY, f"run_dir={run}", *FAST, f"data.num_workers={cpus - 1}", *job, "--dry-run")
    assert "[alm] resource check (sinfo): partition debug has 2 node(s) that can each hold 1 task(s) x " \
           f"{cpus} CPU(s)" in p.stderr, p.stderr


FAKE_PYTHON = """#!/bin/bash
# stands in for python on the nodes: `-m alm train` takes 3 s to "checkpoint" when SIGTERM comes;
# `-m alm runs --state` answers done
if [ "$2" = alm ] && [ "$3" = train ]; then
    trap 'echo "task: SIGTERM"; sleep 3; echo checkpointed > "$MARKER"; exit 0' TERM
    echo started > "$MARKER.started"
    for i in $(seq 600); do sleep 0.1; done
    exit 3
fi
echo done
"""


def test_sigterm_leaves_the_tasks_time_to_checkpoint(cluster, tmp_path):
    """`scancel` (like preemption with PreemptMode=REQUEUE/CANCEL) sends SIGTERM to the batch shell and
    every task of the script `alm launch slurm` wrote, SIGKILL only KillWait later: a task that needs
    3 s to checkpoint after SIGTERM finishes it, although the batch shell ends at once."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    (tmp_path / "c.yaml").write_text(f"partition: debug\ncpus_per_task: 1\npython: {fake}\n"
                                     f"env:\n  MARKER: {tmp_path}/marker\n")
    run = tmp_path / "run"
    p = _alm(cluster, "launch", "slurm", TINY, f"run_dir={run}", *TRAIN, "--cluster", str(tmp_path / "c.yaml"),
             "--nodes", "1", "--gpus-per-node", "0", "--tasks-per-node", "1")
    (job,) = _submitted(p.stdout)
    deadline = time.time() + 60
    while not (tmp_path / "marker.started").exists():
        assert time.time() < deadline and _job(cluster, job)["JobState"] not in TERMINAL, _job(cluster, job)
        time.sleep(0.2)
    sent = time.time()
    _run(cluster, "scancel", job)
    info = _wait_job(cluster, job, timeout=60)
    log = (run / f"slurm-{job}.out").read_text()
    assert info["JobState"] == "CANCELLED", (info, log)
    assert "0: task: SIGTERM" in log and (tmp_path / "marker").read_text().strip() == "checkpointed", log
    assert (tmp_path / "marker").stat().st_mtime - sent >= 2.5  # it got its 3 s
