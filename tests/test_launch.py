"""`alm launch` / `alm runs` without a cluster: rendering, validation, pipeline references, the runs
table on fabricated run dirs, and one real `alm launch local --nprocs 2` run."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import FAST, REPO, TINY, env, losses
from alm.launch import runs
from alm.launch.cli import launch_main, runs_main
from alm.launch.fit import DoesNotFit, check_fit, gres_gpus, mem_mb, parse_sinfo
from alm.launch.pipeline import is_pipeline, load_pipeline, resolve
from alm.launch.slurm import (
    LaunchError,
    SbatchTemplate,
    load_cluster,
    prepare_recipe,
    render_training,
    resources,
    signal_lead,
    time_seconds,
)

AUDIOLM = str(REPO / "recipes" / "audiolm" / "semantic.yaml")
CPU = ["--gpus-per-node", "0", "--tasks-per-node", "1"]


@pytest.fixture(autouse=True)
def _no_cluster(monkeypatch, tmp_path):
    """No SLURM here: sinfo (if installed) is pointed at a missing slurm.conf, so the resource check is
    skipped the same way on every machine (tests/test_slurm.py runs it against a real cluster)."""
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "no-cluster" / "slurm.conf"))


def _launch(capsys, *argv):
    rc = launch_main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_render_two_node_cpu_job(capsys, tmp_path):
    rc, script, err = _launch(capsys, "slurm", TINY, f"run_dir={tmp_path}/r", "trainer.accelerator=cpu", "--nodes", "2",
                              *CPU, "--cluster", "local", "--signal-seconds", "90", "--max-requeues", "3", "--dry-run")
    assert rc == 0, err
    d = re.findall(r"^#SBATCH (\S+)", script, re.M)
    assert {"--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--partition=debug", "--time=01:00:00",
            "--signal=USR1@90", "--requeue", "--open-mode=append", f"--output={tmp_path}/r/slurm-%j.out",
            f"--chdir={os.getcwd()}"} <= set(d), d
    assert not any(x.startswith(("--gpus", "--gres")) for x in d)  # CPU partition: no GPU request
    assert "export ALM_MAX_REQUEUES=3" in script
    srun = [line for line in script.splitlines() if line.startswith("srun")]
    assert srun == ["srun --nodes=2 --ntasks-per-node=1 --ntasks=2 --cpus-per-task=1 --kill-on-bad-exit=1 --label \\"]
    assert not re.search(r"\{\{\s*\w+\s*\}\}", script)  # every placeholder filled
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert not (tmp_path / "r").exists()


def test_cluster_file_defaults_and_flags_override(capsys, tmp_path):
    rc, script, err = _launch(capsys, "slurm", AUDIOLM, f"run_dir={tmp_path}/r", "--cluster", "example", "--nodes", "2",
                              "--partition", "other", "--dry-run")
    assert rc == 0, err
    d = re.findall(r"^#SBATCH (\S+)", script, re.M)
    # gpus (8) and the rest come from launch/clusters/example.yaml; --partition from the command line
    assert {"--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=12", "--partition=other",
            "--account=my-project", "--qos=normal", "--constraint=a100_80g", "--time=24:00:00", "--mem=0",
            "--exclusive", "--mail-type=FAIL"} <= set(d), d
    assert "module load cuda/12.4" in script and "source /shared/envs/alm/bin/activate" in script
    assert 'export ALM_CACHE="/scratch/$USER/alm-cache"' in script  # $VARS expand on the node
    assert "PYTHON=python" in script  # the cluster file's python
    assert "--ntasks=16" in script


def test_contradicting_overrides_and_bad_requests_fail_with_the_key(capsys, tmp_path):
    base = ("slurm", AUDIOLM, f"run_dir={tmp_path}/r", "--nodes", "2", "--gpus-per-node", "8", "--dry-run")
    rc, _, err = _launch(capsys, *base, "trainer.num_nodes=4")
    assert rc == 2 and "trainer.num_nodes=4" in err and "--nodes 2" in err
    rc, _, err = _launch(capsys, *base, "trainer.devices=4")
    assert rc == 2 and "trainer.devices=4" in err and "--tasks-per-node 8" in err
    rc, out, err = _launch(capsys, *base, "trainer.devices=8", "trainer.num_nodes=2")  # agreeing is fine
    assert rc == 0 and "--ntasks=16" in out, err
    rc, _, err = _launch(capsys, *base, "trainer.max_stepz=3")
    assert rc == 2 and "max_stepz" in err
    rc, _, err = _launch(capsys, "slurm", AUDIOLM, "--gpus-per-node", "0", "--dry-run")
    assert rc == 2 and "--tasks-per-node" in err
    rc, _, err = _launch(capsys, "slurm", AUDIOLM, "--gpus-per-node", "0", "--tasks-per-node", "2", "--dry-run")
    assert rc == 2 and "trainer.accelerator=gpu" in err  # the recipe wants GPUs
    rc, _, err = _launch(capsys, *base, "--time", "00:01:00")
    assert rc == 2 and "--signal-seconds" in err
    rc, _, err = _launch(capsys, *base, "--cluster", "nosuchcluster")
    assert rc == 2 and "nosuchcluster" in err
    bad = tmp_path / "c.yaml"
    bad.write_text("partition: x\npartitions: y\n")
    with pytest.raises(LaunchError, match="partitions"):
        load_cluster(str(bad))
    bad.write_text("cpus_per_task: many\n")
    with pytest.raises(LaunchError, match="cpus_per_task"):
        load_cluster(str(bad))


def test_prepare_recipe_forces_topology_and_absolute_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = prepare_recipe(TINY, ["run_dir=rel/run", "trainer.accelerator=cpu"], num_nodes=3, devices=2, gpus_per_node=0)
    assert cfg.trainer.num_nodes == 3 and cfg.trainer.devices == 2
    assert cfg.run_dir == str(tmp_path / "rel" / "run")


def test_time_formats_and_template_placeholders():
    assert time_seconds("30") == 1800 and time_seconds("1:30") == 90 and time_seconds("2:00:00") == 7200
    assert time_seconds("1-00") == 86400 and time_seconds("1-2:03:04") == 93784 and time_seconds("x") is None
    t = SbatchTemplate('echo "${A:-$B}" {{ x }} {{y}}')
    assert t.substitute(x=1, y=2) == 'echo "${A:-$B}" 1 2'


def test_render_training_with_export_step(tmp_path):
    cluster = load_cluster("local")
    res = resources(cluster, {"nodes": 1, "tasks_per_node": 1})
    cfg = prepare_recipe(TINY, [f"run_dir={tmp_path}/r", "trainer.accelerator=cpu"], 1, 1, 0)
    script = render_training(cfg, res, cluster, recipe_source=TINY, export=True)
    tail = script.split('state=$("${PYTHON}" -m alm runs --state "${RUN_DIR}")', 1)[1]
    assert '-m alm export "${RUN_DIR}" --out "${RUN_DIR}/export"' in tail  # only after training reports done
    assert tail.index("done) ;;") < tail.index("alm export")


# ----------------------------------------------------------------------------------------------
# pipelines


def _pipeline(tmp_path, text: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


def test_pipeline_references_resolve_to_earlier_stages(tmp_path):
    path = _pipeline(tmp_path, f"""
name: demo
dir: {tmp_path}/pd
stages:
  - {{name: a, recipe: {TINY}, export: true, tasks_per_node: 1}}
  - name: b
    command: alm generate semantic {{stages.a.export}} --out {{pipeline.dir}}/x.npy data/{{000000..000009}}.tar
""")
    assert is_pipeline(str(path)) and not is_pipeline(TINY)
    p = load_pipeline(str(path))
    assert p.dir == f"{tmp_path}/pd" and [s.kind for s in p.stages] == ["train", "command"]
    a = p.stages[0]
    a.dir, a.export, a.job_id, a.log = "/runs/a", "/runs/a/export", "17", "/runs/a/slurm-17.out"
    done = {"a": a}
    text = resolve(p.stages[1].spec["command"], p, done, "here")
    assert text == f"alm generate semantic /runs/a/export --out {tmp_path}/pd/x.npy data/{{000000..000009}}.tar"
    assert resolve("{stages.a.run_dir} {stages.a.job_id} {stages.a.log}", p, done, "x") == "/runs/a 17 /runs/a/slurm-17.out"
    with pytest.raises(LaunchError, match="comes later"):
        resolve("{stages.b.dir}", p, done, "x")
    with pytest.raises(LaunchError, match="no stage named 'zz'"):
        resolve("{stages.zz.export}", p, done, "x")
    with pytest.raises(LaunchError, match="unknown field"):
        resolve("{stages.a.weights}", p, done, "x")
    a.export = None
    with pytest.raises(LaunchError, match="export: true"):
        resolve("{stages.a.export}", p, done, "x")


def test_pipeline_validation_errors(tmp_path):
    cases = {
        "stages: []\n": "non-empty",
        "stages:\n  - {name: a}\n": "exactly one of",
        "stages:\n  - {name: a, command: x, recipe: y}\n": "exactly one of",
        "stages:\n  - {name: a, command: x}\n  - {name: a, command: y}\n": "duplicate",
        "stages:\n  - {name: 'a b', command: x}\n": "letters",
        "stages:\n  - {name: a, command: x, nodez: 2}\n": "nodez",
        "stages:\n  - {name: a, command: x, export: true}\n": "training stages",
        "stagez: 1\nstages:\n  - {name: a, command: x}\n": "stagez",
        "slurm: {partitio: x}\nstages:\n  - {name: a, command: x}\n": "partitio",
    }
    for text, message in cases.items():
        with pytest.raises(LaunchError, match=message):
            load_pipeline(str(_pipeline(tmp_path, text)))


def test_pipeline_dry_run_prints_every_stage_resolved(capsys, tmp_path):
    example = str(REPO / "launch" / "pipelines" / "audiolm_example.yaml")
    rc, out, err = _launch(capsys, "slurm", example, "--dir", str(tmp_path / "pd"), "--dry-run")
    assert rc == 0, err
    scripts = out.split("# ===== stage ")[1:]
    assert [s.split(":")[0] for s in scripts] == ["fit", "tokenize", "semantic", "sample"]
    heads = [s.splitlines()[0] for s in scripts]
    assert "afterok" not in heads[0] and "afterok:<job of fit>" in heads[1] and "afterok:<job of semantic>" in heads[3]
    assert "afterok:<job of tokenize> (all 16 tasks of its array)" in heads[2]  # the whole array, one job id
    assert "#SBATCH --array=0-15" in scripts[1] and "--num-shards 16 --shard-index ${SLURM_ARRAY_TASK_ID}" in scripts[1]
    assert "--array" not in scripts[0] and "--fit-only" in scripts[0]
    assert f"RUN_DIR={tmp_path}/pd/semantic" in scripts[2] and "--ntasks=32" in scripts[2]
    assert '-m alm export "${RUN_DIR}" --out "${RUN_DIR}/export"' in scripts[2]
    assert f"-m alm generate semantic {tmp_path}/pd/semantic/export" in scripts[3]
    assert "#SBATCH --time=12:00:00" in scripts[0] and "#SBATCH --time=24:00:00" not in scripts[0]
    assert "--signal=USR1" not in scripts[0] and "--signal=USR1@120" in scripts[2]
    assert not (tmp_path / "pd").exists()
    rc, _, err = _launch(capsys, "slurm", example, "x=1", "--dry-run")
    assert rc == 2 and "pipeline" in err


# ----------------------------------------------------------------------------------------------
# alm runs


def _fake_run(root: Path, name: str, state: dict | None, steps: list[int] = (), logged: int | None = None,
              stage: str = "semantic") -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"stage: {stage}\nrun_dir: {run}\n")
    if state is not None:
        (run / "state.json").write_text(json.dumps(state))
    for s in steps:
        (run / "checkpoints" / f"step-{s:09d}").mkdir(parents=True)
    if logged is not None:
        (run / "logs" / "attempt-0").mkdir(parents=True)
        rows = "".join(f"{i},{3.0 - i / 100},0.001\n" for i in range(logged))
        (run / "logs" / "attempt-0" / "metrics.csv").write_text("step,train/loss,train/lr\n" + rows)
    (run / "wandb_id").write_text(f"id-{name}\n")
    return run


def test_runs_table_on_fabricated_run_dirs(tmp_path, capsys):
    here = socket.gethostname()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    root = tmp_path / "runs"
    _fake_run(root, "done", {"state": "done", "step": 30, "max_steps": 30}, [20, 30], logged=30)
    _fake_run(root, "alive", {"state": "running", "step": 10, "max_steps": 50, "host": here, "pid": os.getpid()},
              [10], logged=17)
    _fake_run(root, "crashed", {"state": "running", "step": 5, "host": here, "pid": gone.pid}, [5], logged=7)
    _fake_run(root, "elsewhere", {"state": "running", "step": 5, "host": "some-other-host", "pid": gone.pid}, [])
    _fake_run(root / "nested", "pre", {"state": "preempted", "step": 12, "requeued": True}, [12], stage="coarse")
    _fake_run(root, "failed", {"state": "failed", "step": 3}, [])
    (root / "failed" / "data_errors.json").write_text(json.dumps({"shards": {"/d/a.tar": 2, "/d/b.tar": 1}, "total": 3}))
    (root / "nested" / "pre" / "data_errors.json").write_text("{broken")  # unreadable: `?`, never 0
    (root / "not-a-run").mkdir()
    (root / "done" / "checkpoints" / "step-000000030" / "config.yaml").write_text("stage: semantic\n")
    infos = {Path(i.run_dir).name: i for i in map(runs.run_info, runs.find_runs([str(root)]))}
    assert sorted(infos) == ["alive", "crashed", "done", "elsewhere", "failed", "pre"]
    assert (infos["done"].state, infos["done"].step, Path(infos["done"].last_checkpoint).name) == ("done", 30, "step-000000030")
    assert (infos["alive"].state, infos["alive"].step) == ("running", 17)  # metrics are fresher than state.json
    assert infos["crashed"].state == "dead"
    assert infos["elsewhere"].state == "running"  # another host's pid cannot be checked from here
    assert (infos["pre"].state, infos["pre"].stage, infos["pre"].requeued) == ("preempted", "coarse", True)
    assert infos["failed"].state == "failed" and infos["done"].wandb_id == "id-done"

    assert runs_main([str(root)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["RUN", "DIR", "STAGE", "STATE", "STEP", "CHECKPOINT", "W&B", "ID", "CORRUPT", "SLURM", "JOB"]
    rows = {Path(line.split()[0]).name: line.split() for line in table[1:]}
    assert rows["done"][1:] == ["semantic", "done", "30/30", "step-000000030", "id-done", "-", "-"]
    assert rows["crashed"][2] == "dead" and rows["alive"][3] == "17/50"
    assert rows["failed"][6] == "3" and rows["pre"][6] == "?"  # RUN_DIR/data_errors.json, tolerated when absent

    assert runs_main(["--state", str(root / "nested" / "pre")]) == 0
    assert capsys.readouterr().out.strip() == "requeued"
    assert runs_main(["--json", str(root)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {r["state"] for r in listed} == {"done", "running", "dead", "preempted", "failed"}
    assert {Path(r["run_dir"]).name: r["corrupt_samples"] for r in listed if r["corrupt_samples"] is not None} == {
        "failed": 3, "pre": -1}
    assert runs_main([str(tmp_path / "missing")]) == 2


def test_runs_output_into_a_closed_pipe_is_quiet(tmp_path):
    """`alm runs --json | head -c 20`: the reader leaves early; no BrokenPipeError traceback."""
    for i in range(400):  # well over a pipe buffer of JSON
        _fake_run(tmp_path / "many", f"run-{i:03d}", {"state": "done", "step": 1})
    for flag in ("--json", None):
        cmd = [sys.executable, "-m", "alm", "runs", *([flag] if flag else []), str(tmp_path / "many")]
        p = subprocess.run(f"{' '.join(cmd)} | head -c 20", shell=True, cwd=REPO, env=env(), capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0 and len(p.stdout) == 20, p.stderr
        assert p.stderr == "", p.stderr


def test_runs_plot_writes_a_loss_png(tmp_path, capsys):
    run = _fake_run(tmp_path, "r", {"state": "done", "step": 30}, logged=20)
    (run / "logs" / "attempt-1").mkdir()  # a resumed attempt adds steps and validation losses
    (run / "logs" / "attempt-1" / "metrics.csv").write_text(
        "step,train/loss,val/loss\n" + "".join(f"{i},{2.5 - i / 100},\n" for i in range(15, 30)) + "29,,2.4\n")
    from alm.launch.plot import loss_curves
    from alm.training.loggers import read_metrics

    curves = loss_curves(read_metrics(run))
    assert curves["train/loss"][0] == list(range(30)) and curves["val/loss"] == ([29], [2.4])
    assert curves["train/loss"][1][15] == 2.35  # the later attempt wins on overlapping steps
    assert runs_main(["--plot", str(run)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(run / "loss.png")
    from PIL import Image

    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (800, 450)
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 10  # drawn, not blank
    assert runs_main(["--plot", str(run), "--out", str(tmp_path / "x" / "l.png")]) == 0
    assert (tmp_path / "x" / "l.png").is_file()
    empty = _fake_run(tmp_path, "empty", {"state": "running"})
    assert runs_main(["--plot", str(empty)]) == 2
    assert "no logs/attempt-*/metrics.csv" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# alm launch local


@pytest.mark.slow
def test_launch_local_two_processes(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "alm", "launch", "local", TINY, f"run_dir={run}", *FAST, "trainer.max_steps=6",
           "trainer.ckpt_every_n_steps=3", "data.num_workers=1", "--nprocs", "2"]
    dry = subprocess.run([*cmd, "--dry-run"], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and dry.stdout.strip().endswith(f"-m alm train {run}/launch/recipe.yaml"), dry.stderr
    bad = subprocess.run([*cmd, "trainer.devices=3"], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "trainer.devices=3" in bad.stderr and "--nprocs 2" in bad.stderr
    t = time.time()
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in p.stderr + p.stdout
    assert json.loads((run / "state.json").read_text())["state"] == "done"
    assert sorted(losses(run)) == list(range(6))
    assert "devices: 2" in (run / "launch" / "recipe.yaml").read_text()
    print(f"[test] alm launch local --nprocs 2: {time.time() - t:.1f} s")


@pytest.mark.parametrize("pipeline", sorted((REPO / "recipes").rglob("pipeline*.yaml")) + sorted((REPO / "launch" / "pipelines").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_pipelines_render(pipeline, tmp_path):
    """Every shipped pipeline renders (its recipes validate, its references resolve) in a dry run, from
    a directory other than the repository."""
    p = subprocess.run([sys.executable, "-m", "alm", "launch", "slurm", str(pipeline), "--cluster", "example",
                        "--dir", str(tmp_path / "p"), "--dry-run"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("# ===== stage") == len(OmegaConf.load(pipeline).stages)
    assert "{stages." not in p.stdout and "{pipeline." not in p.stdout


# ----------------------------------------------------------------------------------------------
# resource check against sinfo

SINFO = """\
gpu01|gpu*|64|512000|gpu:a100:8(S:0-1)
gpu02|gpu*|64|512000|gpu:a100:8(S:0-1)
gpu03|gpu*|64|256000|gpu:4,shard:16
cpu01|cpu|2|21694|(null)
cpu02|cpu|2|21694|(null)
"""


def test_sinfo_parsing():
    nodes = parse_sinfo(SINFO)
    assert [(n.name, n.partition, n.default, n.cpus, n.mem_mb, n.gpus) for n in nodes] == [
        ("gpu01", "gpu", True, 64, 512000, 8), ("gpu02", "gpu", True, 64, 512000, 8),
        ("gpu03", "gpu", True, 64, 256000, 4), ("cpu01", "cpu", False, 2, 21694, 0), ("cpu02", "cpu", False, 2, 21694, 0)]
    assert gres_gpus("(null)") == 0 and gres_gpus("gpu:2,gpu:h100:1") == 3 and gres_gpus("gpu") == 1
    assert mem_mb("0") is None and mem_mb("200G") == 204800 and mem_mb("64000") == 64000 and mem_mb("1.5T") == 1572864
    with pytest.raises(ValueError, match="--mem"):
        mem_mb("lots")
    with pytest.raises(ValueError, match="unexpected line"):
        parse_sinfo("n1|debug|2\n")


def test_fit_says_what_the_nodes_have():
    nodes = parse_sinfo(SINFO)
    ask = dict(nodes_wanted=2, tasks_per_node=8, cpus_per_task=8, gpus_per_node=8, mem="0")
    assert check_fit(nodes, partition=None, **ask) == "gpu"  # the default partition; two 8-GPU nodes
    with pytest.raises(DoesNotFit, match=r"3 node\(s\) needed .* 2 of its 3 node\(s\) can hold that") as e:
        check_fit(nodes, partition="gpu", **dict(ask, nodes_wanted=3))
    assert "gpu03: 64 CPUs, 4 GPUs, 256000 MB" in str(e.value) and "--nodes" not in str(e.value).split("lower")[0]
    with pytest.raises(DoesNotFit, match=r"--mem") as e:
        check_fit(nodes, partition="gpu", **dict(ask, mem="600G"))
    # the failure this check exists for: cpus-per-task = num_workers + 1 on 2-core nodes
    with pytest.raises(DoesNotFit) as e:
        check_fit(nodes, partition="cpu", nodes_wanted=2, tasks_per_node=1, cpus_per_task=3, gpus_per_node=0, mem=None)
    msg = str(e.value)
    assert "1 task(s) x 3 CPU(s) = 3 CPUs" in msg and "cpu01, cpu02: 2 CPUs, 0 GPUs, 21694 MB" in msg
    assert "--cpus-per-task" in msg and "PartitionConfig" in msg
    assert check_fit(nodes, partition="cpu", nodes_wanted=2, tasks_per_node=2, cpus_per_task=1, gpus_per_node=0,
                     mem="20G") == "cpu"
    with pytest.raises(DoesNotFit, match=r"--partition big: no such partition \(sinfo lists: cpu, gpu\)"):
        check_fit(nodes, partition="big", **ask)
    with pytest.raises(DoesNotFit, match="no default partition"):
        check_fit([n for n in nodes if not n.default], partition=None, **ask)


def test_resource_check_skipped_without_sinfo_says_so(capsys, tmp_path, monkeypatch):
    argv = ("slurm", TINY, f"run_dir={tmp_path}/r", "trainer.accelerator=cpu", *CPU, "--dry-run")
    rc, _, err = _launch(capsys, *argv)
    assert rc == 0 and "[alm] resource check skipped: SLURM_CONF=" in err and "does not exist" in err, err
    monkeypatch.delenv("SLURM_CONF")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no sinfo on PATH
    rc, _, err = _launch(capsys, *argv)
    assert rc == 0 and "[alm] resource check skipped: sinfo not found" in err, err
    rc, _, err = _launch(capsys, *argv, "--no-resource-check")
    assert rc == 0 and "resource check skipped (--no-resource-check)" in err, err


def test_resource_check_refuses_before_writing_anything(capsys, tmp_path, monkeypatch):
    """A fake sinfo on PATH answering for 2-core nodes: the default cpus-per-task (num_workers + 1) is refused."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sinfo").write_text("#!/bin/sh\nprintf 'n1|debug*|2|21694|(null)\\nn2|debug*|2|21694|(null)\\n'\n")
    (bin_dir / "sinfo").chmod(0o755)
    monkeypatch.delenv("SLURM_CONF")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    base = ("slurm", TINY, f"run_dir={tmp_path}/r", "trainer.accelerator=cpu", "--nodes", "2", *CPU)
    rc, _, err = _launch(capsys, *base, "data.num_workers=2")  # a real submission, stopped before sbatch
    assert rc == 2 and "partition debug" in err and "n1, n2: 2 CPUs" in err and "3 CPUs" in err, err
    assert not (tmp_path / "r").exists()
    rc, out, err = _launch(capsys, *base, "data.num_workers=1", "--dry-run")
    assert rc == 0 and "[alm] resource check (sinfo): partition debug has 2 node(s)" in err, err


# ----------------------------------------------------------------------------------------------
# preemption signal lead time


def _checkpoint(run: Path, step: int, meta: dict) -> None:
    d = run / "checkpoints" / f"step-{step:09d}"
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps(meta))


def test_signal_lead_from_measured_save_time(capsys, tmp_path):
    run = tmp_path / "r"
    argv = ("slurm", TINY, f"run_dir={run}", "trainer.accelerator=cpu", *CPU, "--dry-run")
    rc, script, err = _launch(capsys, *argv)  # no checkpoint yet: the default
    assert rc == 0 and "#SBATCH --signal=USR1@120" in script.splitlines(), err
    assert "--signal=USR1@120: default: no checkpoint" in err
    _checkpoint(run, 10, {"step": 10, "save_seconds": 99.0})
    _checkpoint(run, 20, {"step": 20, "save_seconds": 12.3})  # the newest one counts
    rc, script, err = _launch(capsys, *argv)
    assert rc == 0 and "#SBATCH --signal=USR1@90" in script.splitlines(), err  # 2 x 12.3 + 60 -> 90
    assert "--signal=USR1@90: measured: step-000000020 saved in 12.3 s" in err
    echo = [line for line in script.splitlines() if line.startswith("echo '[alm] preemption signal")]
    assert len(echo) == 1 and "USR1 90 s before the time limit (measured: step-000000020" in echo[0]  # in the job's log
    rc, script, err = _launch(capsys, *argv, "--signal-seconds", "45")  # the flag wins
    assert rc == 0 and "#SBATCH --signal=USR1@45" in script.splitlines() and "given (--signal-seconds" in err
    rc, _, err = _launch(capsys, *argv, "--time", "00:01:30")
    assert rc == 2 and "--signal=USR1@90 (measured" in err and "--time 00:01:30" in err
    _checkpoint(run, 30, {"step": 30})  # a checkpoint of an older alm: no save_seconds
    res = signal_lead(resources(load_cluster("local"), {"tasks_per_node": 1}), str(run))
    assert res.signal_seconds == 120 and res.signal_source.startswith("default")


# ----------------------------------------------------------------------------------------------
# pipelines from another directory


def test_pipeline_paths_are_relative_to_the_pipeline_file(tmp_path):
    example = REPO / "launch" / "pipelines" / "audiolm_example.yaml"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    p = subprocess.run([sys.executable, "-m", "alm", "launch", "slurm", str(example), "--dry-run"], cwd=elsewhere,
                       env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("# ===== stage") == 4 and f"RUN_DIR={elsewhere}/runs/audiolm-semantic-pipeline/semantic" in p.stdout
    own = tmp_path / "pipes" / "mine.yaml"  # a recipe and a cluster file beside the pipeline
    own.parent.mkdir()
    (own.parent / "r.yaml").write_text(Path(TINY).read_text())
    (own.parent / "c.yaml").write_text("partition: mine\n")
    own.write_text("cluster: c.yaml\nstages:\n  - {name: a, recipe: r.yaml, tasks_per_node: 1, overrides: [trainer.accelerator=cpu]}\n")
    pl = load_pipeline(str(own))
    assert pl.stages[0].spec["recipe"] == str(own.parent / "r.yaml") and pl.cluster == str(own.parent / "c.yaml")
    (tmp_path / "r.yaml").write_text(Path(TINY).read_text())  # in the cwd only: not found beside the pipeline
    own.write_text("stages:\n  - {name: a, recipe: ../r.yaml}\n  - {name: b, recipe: r2.yaml}\n")
    with pytest.raises(LaunchError, match=r"stages\[1\] \(b\): key 'recipe': r2.yaml: no such file .*pipes/r2.yaml"):
        load_pipeline(str(own))
    own.write_text("cluster: clusters/none.yaml\nstages:\n  - {name: a, command: x}\n")
    with pytest.raises(LaunchError, match="key 'cluster': clusters/none.yaml: no such file"):
        load_pipeline(str(own))


def test_runs_shows_the_lineage_head_not_the_highest_step(tmp_path):
    """[robust] 1: after resuming from step 20, the new step 25 is the run's checkpoint, not a stale 30."""
    import json as _json

    from alm.launch.runs import run_info

    run = tmp_path / "run"
    for step, seq in ((20, 1), (30, 2), (25, 3)):
        d = run / "checkpoints" / f"step-{step:09d}"
        d.mkdir(parents=True)
        (d / "meta.json").write_text(_json.dumps({"step": step, "seq": seq}))
    (run / "config.yaml").write_text("stage: semantic\n")
    info = run_info(run)
    assert info.last_checkpoint.endswith("step-000000025")
