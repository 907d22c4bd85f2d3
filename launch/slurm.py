"""Render and submit SLURM batch scripts for alm runs.

One training job = one sbatch script (launch/sbatch.tmpl) with ONE `srun` that starts one task per
GPU (or per CPU slot with `--tasks-per-node` on CPU partitions) on every node, each running
`python -m alm train RUN_DIR/launch/recipe.yaml`. Lightning reads ranks and world size from
SLURM's environment; MASTER_ADDR/MASTER_PORT are set by the script.

Preemption: `#SBATCH --signal=USR1@S` makes SLURM send SIGUSR1 to every srun task S seconds
before the time limit (`scancel -s USR1 JOBID` does the same by hand). The trainer finishes the
step, checkpoints, runs `scontrol requeue` and stops; `--requeue` lets SLURM run the same script
again, and `resume=auto` in the recipe continues exactly from that checkpoint. `--open-mode=append`
keeps every attempt's output in RUN_DIR/slurm-JOBID.out.

Settings come, lowest first, from: built-in defaults, the cluster YAML (launch/clusters/*.yaml),
a pipeline's `slurm:` section, command-line flags, a pipeline stage's own keys.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional

import yaml

from alm.config import RecipeError, RunConfig, load_recipe, save_config
from alm.errors import UserError
from alm.launch.fit import DoesNotFit, check_fit, read_sinfo

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "sbatch.tmpl"
CLUSTERS = HERE / "clusters"
LOG_NAME = "slurm-%j.out"
ARRAY_LOG_NAME = "slurm-%A_%a.out"  # a job array: one log per task (array job id _ task index)
SCRIPT_NAME = "sbatch.sh"
RECIPE_NAME = "recipe.yaml"
SUBMISSIONS = "submissions.jsonl"


class LaunchError(UserError):
    """A launch request is invalid (the message says which flag, key or file)."""


class SbatchTemplate(string.Template):
    """string.Template with `{{ name }}` placeholders, so the bash `$VAR`s of the template stay as they are."""

    delimiter = "{{"
    pattern = r"""
    \{\{(?:
      \s*(?P<named>[a-z_][a-z0-9_]*)\s*\}\} |
      (?P<escaped>(?!)) |
      (?P<braced>(?!)) |
      (?P<invalid>)
    )"""


# ----------------------------------------------------------------------------------------------
# cluster YAML


@dataclass
class Cluster:
    """Site defaults (launch/clusters/NAME.yaml); command-line flags override them."""

    name: str = "default"
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    time: Optional[str] = None  # SLURM time limit, e.g. "24:00:00" or "2-00:00:00"
    cpus_per_task: Optional[int] = None  # default: data.num_workers + 1
    gpus_per_node: Optional[int] = None
    mem: Optional[str] = None  # e.g. "0" (all of the node's memory) or "200G"
    exclusive: bool = False
    gpu_directive: str = "gpus-per-node"  # gpus-per-node | gres  (--gpus-per-node=G or --gres=gpu:G)
    modules: list = field(default_factory=list)  # `module load X` for each
    setup: list = field(default_factory=list)  # shell lines run before the job's work (conda, containers, ...)
    env: dict = field(default_factory=dict)  # exported variables
    python: Optional[str] = None  # python on the compute nodes; default: the one running `alm launch`
    sbatch: list = field(default_factory=list)  # extra `#SBATCH` options, e.g. "--mail-type=FAIL"
    srun: list = field(default_factory=list)  # extra srun options, e.g. "--cpu-bind=none"
    source: Optional[str] = None  # the file it came from


_CLUSTER_TYPES = {
    "name": str, "partition": str, "account": str, "qos": str, "constraint": str, "time": str,
    "cpus_per_task": int, "gpus_per_node": int, "mem": str, "exclusive": bool, "gpu_directive": str,
    "modules": list, "setup": list, "env": dict, "python": str, "sbatch": list, "srun": list,
}


def find_cluster_file(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    bundled = CLUSTERS / (name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml")
    if bundled.is_file():
        return bundled
    known = ", ".join(sorted(x.stem for x in CLUSTERS.glob("*.yaml")))
    raise LaunchError(f"--cluster {name_or_path}: no such file, and no launch/clusters/{bundled.name} (bundled: {known})")


def load_cluster(name_or_path: Optional[str]) -> Cluster:
    if not name_or_path:
        return Cluster()
    path = find_cluster_file(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise LaunchError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise LaunchError(f"{path}: expected a mapping at the top level")
    values: dict[str, Any] = {"name": path.stem, "source": str(path)}
    for key, value in raw.items():
        if key not in _CLUSTER_TYPES:
            raise LaunchError(f"{path}: key '{key}': unknown; expected one of {', '.join(sorted(_CLUSTER_TYPES))}")
        if value is None:
            continue
        want = _CLUSTER_TYPES[key]
        if want is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise LaunchError(f"{path}: key '{key}': expected {want.__name__}, got {value!r}")
        values[key] = value
    if values.get("gpu_directive", "gpus-per-node") not in ("gpus-per-node", "gres"):
        raise LaunchError(f"{path}: key 'gpu_directive': expected gpus-per-node or gres")
    return Cluster(**values)


# ----------------------------------------------------------------------------------------------
# resources of one job


@dataclass
class Resources:
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: Optional[int] = None  # default: gpus_per_node
    cpus_per_task: Optional[int] = None
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    time: Optional[str] = None
    mem: Optional[str] = None
    exclusive: bool = False
    signal_seconds: Optional[int] = None  # None: derived from the run's measured checkpoint save time
    max_requeues: int = 20
    job_name: Optional[str] = None
    signal_source: str = ""  # where signal_seconds came from (said in the script and its log)

    @property
    def tasks(self) -> int:
        return self.nodes * (self.tasks_per_node or 0)


RESOURCE_KEYS = tuple(f.name for f in fields(Resources) if f.name != "signal_source")


def resources(cluster: Cluster, *layers: dict) -> Resources:
    """Cluster defaults, then each layer of {key: value} (None = not given) on top."""
    res = Resources(
        partition=cluster.partition, account=cluster.account, qos=cluster.qos, constraint=cluster.constraint,
        time=cluster.time, mem=cluster.mem, exclusive=cluster.exclusive, cpus_per_task=cluster.cpus_per_task,
        gpus_per_node=cluster.gpus_per_node or 0,
    )
    for layer in layers:
        given = {k: v for k, v in layer.items() if v is not None and k in RESOURCE_KEYS}
        res = replace(res, **given)
    if res.tasks_per_node is None:
        res.tasks_per_node = res.gpus_per_node
    for key in ("nodes", "tasks_per_node", "cpus_per_task", "signal_seconds", "max_requeues", "gpus_per_node"):
        value = getattr(res, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise LaunchError(f"--{key.replace('_', '-')}: expected a non-negative integer, got {value!r}")
    if res.nodes < 1:
        raise LaunchError("--nodes: must be >= 1")
    if res.tasks_per_node < 1:
        raise LaunchError(
            "--tasks-per-node: no tasks per node (--gpus-per-node is 0); on a CPU-only partition pass "
            "--tasks-per-node T with trainer.accelerator=cpu"
        )
    limit = time_seconds(res.time) if res.time else None
    if limit is not None and res.signal_seconds is not None and res.signal_seconds >= limit:
        raise LaunchError(f"--signal-seconds {res.signal_seconds} is not shorter than --time {res.time}")
    return res


# ----------------------------------------------------------------------------------------------
# how long before the time limit the preemption signal comes

DEFAULT_SIGNAL_SECONDS = 120
SIGNAL_MARGIN_SECONDS = 60  # finishing the current step, stopping, flushing W&B
SIGNAL_SAVE_FACTOR = 2  # a save may take longer than the one measured (bigger file system load, ...)


def measured_save(run_dir: str) -> Optional[tuple[float, Path]]:
    """(save_seconds, checkpoint dir) from meta.json of the run dir's newest checkpoint, if it has one."""
    from alm.launch.runs import list_checkpoints, read_json

    ckpts = list_checkpoints(Path(run_dir))
    if not ckpts:
        return None
    newest = ckpts[-1][1]
    value = read_json(newest / "meta.json").get("save_seconds")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return float(value), newest


def signal_lead(res: Resources, run_dir: str) -> Resources:
    """Fill res.signal_seconds (and res.signal_source): a --signal-seconds / cluster / pipeline value as given,
    else SIGNAL_SAVE_FACTOR x the measured save time of the run's newest checkpoint + SIGNAL_MARGIN_SECONDS,
    rounded up to 10 s, else DEFAULT_SIGNAL_SECONDS."""
    if res.signal_seconds is not None:
        source = res.signal_source or "given (--signal-seconds, or signal_seconds in the pipeline)"
    else:
        found = measured_save(run_dir)
        if found is None:
            res.signal_seconds = DEFAULT_SIGNAL_SECONDS
            source = f"default: no checkpoint in {run_dir} records its save time yet"
        else:
            save, ckpt = found
            lead = SIGNAL_SAVE_FACTOR * save + SIGNAL_MARGIN_SECONDS
            res.signal_seconds = int(-(-lead // 10) * 10)
            source = (f"measured: {ckpt.name} saved in {save:.1f} s (meta.json save_seconds); "
                      f"{SIGNAL_SAVE_FACTOR} x {save:.1f} + {SIGNAL_MARGIN_SECONDS} s, rounded up to 10 s")
    res.signal_source = source
    limit = time_seconds(res.time) if res.time else None
    if limit is not None and res.signal_seconds >= limit:
        raise LaunchError(f"--signal=USR1@{res.signal_seconds} ({source}) is not shorter than --time {res.time}; "
                          "give a longer --time or --signal-seconds")
    return res


def time_seconds(limit: str) -> Optional[int]:
    """SLURM's time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) -> seconds; None if not recognised."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(limit).strip())
    if not m:
        return None
    days, a, b, c = m.groups()
    if days is not None:  # D-H[:M[:S]]
        h, mi, s = int(a), int(b or 0), int(c or 0)
        return int(days) * 86400 + h * 3600 + mi * 60 + s
    if c is not None:  # H:M:S
        return int(a) * 3600 + int(b) * 60 + int(c)
    if b is not None:  # M:S
        return int(a) * 60 + int(b)
    return int(a) * 60  # M


_sinfo_cache: list = []  # one sinfo answer per launch (a pipeline checks every stage); see forget_sinfo


def forget_sinfo() -> None:
    """Ask sinfo again at the next check (called at the start of every `alm launch slurm`)."""
    _sinfo_cache.clear()


def check_resources(res: Resources, *, enabled: bool = True, say=None) -> str:
    """Refuse a request no node of the target partition can hold (per `sinfo`); returns what was checked,
    or why the check was skipped, as one line (also passed to `say`)."""
    say = say or (lambda line: print(line, file=sys.stderr))
    if not enabled:
        line = "[alm] resource check skipped (--no-resource-check)"
    else:
        if not _sinfo_cache:
            _sinfo_cache.append(read_sinfo())
        nodes, why = _sinfo_cache[0]
        if nodes is None:
            line = f"[alm] resource check skipped: {why}"
        else:
            try:
                part = check_fit(nodes, partition=res.partition, nodes_wanted=res.nodes, tasks_per_node=res.tasks_per_node,
                                 cpus_per_task=res.cpus_per_task, gpus_per_node=res.gpus_per_node, mem=res.mem)
            except (DoesNotFit, ValueError) as exc:
                raise LaunchError(str(exc)) from None
            line = (f"[alm] resource check (sinfo): partition {part} has {res.nodes} node(s) that can each hold "
                    f"{res.tasks_per_node} task(s) x {res.cpus_per_task or 1} CPU(s), {res.gpus_per_node} GPU(s)"
                    + (f", --mem={res.mem}" if res.mem else ""))
    say(line)
    return line


# ----------------------------------------------------------------------------------------------
# the recipe of a training job


def override_map(overrides: list[str] | tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"command line: override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def prepare_recipe(recipe: str, overrides: list[str] | tuple[str, ...], num_nodes: int, devices: int,
                   gpus_per_node: Optional[int] = None, flag: str = "--tasks-per-node") -> RunConfig:
    """Load + validate the recipe with `overrides`, forcing trainer.num_nodes / trainer.devices to what
    the job will run (an override that says otherwise is an error); run_dir becomes absolute."""
    given = override_map(overrides)
    for key, forced, name in (("trainer.num_nodes", num_nodes, "--nodes"), ("trainer.devices", devices, flag)):
        if key in given:
            try:
                ok = int(given[key]) == forced
            except ValueError:
                ok = False
            if not ok:
                raise LaunchError(
                    f"override {key}={given[key]} contradicts {name} {forced} (the launcher sets {key} from {name}; "
                    f"drop the override or change {name})"
                )
    rest = [o for o in overrides if o.split("=", 1)[0].strip() not in ("trainer.num_nodes", "trainer.devices")]
    cfg = load_recipe(recipe, [*rest, f"trainer.num_nodes={num_nodes}", f"trainer.devices={devices}"])
    cfg.run_dir = os.path.abspath(cfg.run_dir)
    if gpus_per_node == 0 and cfg.trainer.accelerator in ("gpu", "cuda"):
        raise LaunchError(
            f"{recipe}: trainer.accelerator={cfg.trainer.accelerator} but --gpus-per-node is 0 "
            "(on a CPU partition add trainer.accelerator=cpu)"
        )
    if gpus_per_node and devices != gpus_per_node:
        print(f"[alm] note: {devices} tasks per node with {gpus_per_node} GPUs per node", file=sys.stderr)
    return cfg


def default_job_name(cfg: RunConfig) -> str:
    return f"alm-{cfg.stage}-{Path(cfg.run_dir).name}"


# ----------------------------------------------------------------------------------------------
# rendering


def python_of(cluster: Cluster) -> str:
    return cluster.python or sys.executable


def _directives(res: Resources, job_name: str, log: str, workdir: str, cluster: Cluster, training: bool) -> list[str]:
    d = [f"--job-name={job_name}", f"--nodes={res.nodes}", f"--ntasks-per-node={res.tasks_per_node}"]
    if res.gpus_per_node:
        d.append(f"--gres=gpu:{res.gpus_per_node}" if cluster.gpu_directive == "gres" else f"--gpus-per-node={res.gpus_per_node}")
    if res.cpus_per_task:
        d.append(f"--cpus-per-task={res.cpus_per_task}")
    for key in ("mem", "time", "partition", "account", "qos", "constraint"):
        value = getattr(res, key)
        if value not in (None, ""):
            d.append(f"--{key}={value}")
    if res.exclusive:
        d.append("--exclusive")
    lines = [f"#SBATCH {x}" for x in d]
    if training:
        lines += [
            f"# SIGUSR1 to every srun task {res.signal_seconds} s before the time limit -> checkpoint, requeue, resume",
            f"# ({res.signal_source or 'given'})",
            f"#SBATCH --signal=USR1@{res.signal_seconds}",
            "#SBATCH --requeue",
        ]
    lines += [
        "# every attempt (first run and each requeue) appends to the same log",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={log}",
        f"#SBATCH --chdir={workdir}",
        "#SBATCH --export=ALL",
    ]
    lines += [f"#SBATCH {x}" for x in cluster.sbatch]
    return lines


def _dq(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")


def _setup_lines(cluster: Cluster) -> str:
    lines = [f"module load {m}" for m in cluster.modules]
    lines += [f'export {k}="{_dq(str(v))}"' for k, v in cluster.env.items()]  # double quotes: $VARS expand
    lines += [str(x) for x in cluster.setup]
    return "\n".join(lines) if lines else "# (nothing to set up)"


def _srun(res: Resources, cluster: Cluster) -> str:
    parts = ["srun", f"--nodes={res.nodes}", f"--ntasks-per-node={res.tasks_per_node}", f"--ntasks={res.tasks}"]
    if res.cpus_per_task:  # since SLURM 22.05 srun no longer inherits --cpus-per-task from sbatch
        parts.append(f"--cpus-per-task={res.cpus_per_task}")
    parts += ["--kill-on-bad-exit=1", "--label", *cluster.srun]
    return " ".join(parts)


def render(*, title: str, res: Resources, cluster: Cluster, job_name: str, log: str, workdir: str,
           script: str, run_title: str, run: str, training: bool, array: Optional[int] = None) -> str:
    directives = _directives(res, job_name, log, workdir, cluster, training)
    if array:  # N tasks with SLURM_ARRAY_TASK_ID 0..N-1, each with the resources above; one job id for all
        directives += [f"# a job array of {array} tasks; a job after it (afterok) waits for all of them",
                       f"#SBATCH --array=0-{array - 1}"]
    text = SbatchTemplate(TEMPLATE.read_text()).substitute(
        title=title,
        created=time.strftime("%Y-%m-%d %H:%M:%S"),
        script=script,
        directives="\n".join(directives),
        cluster=cluster.source or "no cluster file",
        setup=_setup_lines(cluster),
        max_requeues=res.max_requeues,
        run_title=run_title,
        run=run,
    )
    return text


def render_training(cfg: RunConfig, res: Resources, cluster: Cluster, *, recipe_source: str, export: bool = False,
                    workdir: Optional[str] = None) -> str:
    run_dir = cfg.run_dir
    q = shlex.quote
    lines = [
        f"export PYTHON={q(python_of(cluster))}",
        f"RUN_DIR={q(run_dir)}",
        "echo " + q(f"[alm] preemption signal: USR1 {res.signal_seconds} s before the time limit "
                    f"({res.signal_source or 'given'})"),
        f"# {res.tasks} tasks = {res.nodes} nodes x {res.tasks_per_node}; rank/world size come from SLURM",
        "# SIGTERM (scancel; preemption with PreemptMode=REQUEUE/CANCEL) reaches this shell and every task; SLURM",
        "# waits KillWait / GraceTime for the tasks before SIGKILL, so the trainer's checkpoint on SIGTERM completes.",
        f'{_srun(res, cluster)} \\\n    "${{PYTHON}}" -m alm train "${{RUN_DIR}}/launch/{RECIPE_NAME}"',
        "",
        "# A preempted attempt has checkpointed and requeued itself: SLURM ends it and runs this script again.",
        'state=$("${PYTHON}" -m alm runs --state "${RUN_DIR}")',
        'echo "[alm] training stopped: ${state}"',
        'case ${state} in',
        "    done) ;;",
        "    requeued) exit 0 ;;",
        "    *) exit 1 ;;",
        "esac",
    ]
    if export:
        lines += ['"${PYTHON}" -m alm export "${RUN_DIR}" --out "${RUN_DIR}/export" --overwrite']  # the run's own export, refreshed by a rerun
    return render(
        title=f"alm training: stage {cfg.stage} from {recipe_source}",
        res=res,
        cluster=cluster,
        job_name=res.job_name or default_job_name(cfg),
        log=str(Path(run_dir) / LOG_NAME),
        workdir=workdir or os.getcwd(),
        script=str(Path(run_dir) / "launch" / SCRIPT_NAME),
        run_title="training: one task per GPU (or CPU slot) on every node",
        run="\n".join(lines),
        training=True,
    )


def command_line(command: str) -> str:
    """`alm ...` runs with the launcher's python (`PYTHON -m alm ...`); anything else as written."""
    stripped = command.strip()
    if stripped == "alm" or stripped.startswith("alm "):
        return '"${PYTHON}" -m ' + stripped
    return stripped


def render_command(command: str, res: Resources, cluster: Cluster, *, out_dir: str, title: str,
                   job_name: str, workdir: Optional[str] = None, array: Optional[int] = None) -> str:
    cmd = command_line(command)
    lines = [f"export PYTHON={shlex.quote(python_of(cluster))}"]
    if array:
        lines.append(f'echo "[alm] array task ${{SLURM_ARRAY_TASK_ID}} of {array} (job ${{SLURM_ARRAY_JOB_ID}})"')
    if res.tasks > 1:  # several tasks: each runs the command
        lines.append(f"{_srun(res, cluster)} \\\n    bash -c {shlex.quote(cmd)}")
    else:
        lines.append(cmd)
    return render(
        title=title,
        res=res,
        cluster=cluster,
        job_name=job_name,
        log=str(Path(out_dir) / (ARRAY_LOG_NAME if array else LOG_NAME)),
        workdir=workdir or os.getcwd(),
        script=str(Path(out_dir) / "launch" / SCRIPT_NAME),
        run_title="command",
        run="\n".join(lines),
        training=False,
        array=array,
    )


# ----------------------------------------------------------------------------------------------
# submitting


@dataclass
class Submitted:
    job_id: str
    line: str  # sbatch's own "Submitted batch job N" line
    script: str
    log: str  # with %j filled in


def sbatch(script: Path, dependency: Optional[str] = None, extra: tuple[str, ...] = ()) -> tuple[str, str]:
    """Submit `script`; returns (job id, sbatch's output line). With `dependency`, the job starts only
    after that job completed successfully (and is cancelled if it failed)."""
    cmd = ["sbatch", *extra]
    if dependency:
        cmd += [f"--dependency=afterok:{dependency}", "--kill-on-invalid-dep=yes"]
    cmd.append(str(script))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError as exc:
        raise LaunchError("sbatch not found: run this on a SLURM login node (or with SLURM's client tools on PATH)") from exc
    if p.returncode != 0:
        raise LaunchError(f"{' '.join(cmd)} failed ({p.returncode}): {(p.stderr or p.stdout).strip()}")
    m = re.search(r"Submitted batch job (\d+)", p.stdout)
    if not m:
        raise LaunchError(f"sbatch printed no job id: {p.stdout.strip()!r}")
    line = next(x for x in p.stdout.splitlines() if "Submitted batch job" in x).strip()
    return m.group(1), line


def _record(launch_dir: Path, **entry) -> None:
    with open(launch_dir / SUBMISSIONS, "a") as f:
        f.write(json.dumps({"time": time.time(), **entry}) + "\n")


def write_script(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def check_not_running(run_dir: str) -> None:
    """Refuse to submit a second job into a run dir whose job is still queued or running."""
    from alm.launch.runs import read_json, slurm_job_state

    state = read_json(Path(run_dir) / "state.json")
    jobs = [state.get("slurm_job_id")]
    subs = Path(run_dir) / "launch" / SUBMISSIONS
    if subs.is_file():
        lines = [x for x in subs.read_text().splitlines() if x.strip()]
        if lines:
            jobs.append(json.loads(lines[-1]).get("job_id"))
    for job in dict.fromkeys(j for j in jobs if j):
        live = slurm_job_state(str(job))
        if live and live not in ("gone", "unknown"):
            raise LaunchError(f"{run_dir}: job {job} is still {live}; scancel it first (or use another run_dir)")


def submit_training(cfg: RunConfig, res: Resources, cluster: Cluster, *, recipe_source: str, export: bool = False,
                    dependency: Optional[str] = None) -> Submitted:
    """Write RUN_DIR/launch/{recipe.yaml,sbatch.sh} and submit."""
    run_dir = Path(cfg.run_dir)
    check_not_running(str(run_dir))
    launch_dir = run_dir / "launch"
    launch_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, launch_dir / RECIPE_NAME)
    script = launch_dir / SCRIPT_NAME
    write_script(script, render_training(cfg, res, cluster, recipe_source=recipe_source, export=export))
    job, line = sbatch(script, dependency)
    log = str(run_dir / LOG_NAME).replace("%j", job)
    _record(launch_dir, job_id=job, script=str(script), log=log, dependency=dependency, recipe=recipe_source,
            nodes=res.nodes, tasks_per_node=res.tasks_per_node, gpus_per_node=res.gpus_per_node)
    return Submitted(job, line, str(script), log)


def submit_command(command: str, res: Resources, cluster: Cluster, *, out_dir: str, title: str, job_name: str,
                   dependency: Optional[str] = None, array: Optional[int] = None) -> Submitted:
    """Write OUT_DIR/launch/sbatch.sh and submit; `array`: a job array of that many tasks (the log
    recorded is then a pattern, `slurm-JOB_%a.out`, %a = the task index)."""
    out = Path(out_dir)
    launch_dir = out / "launch"
    launch_dir.mkdir(parents=True, exist_ok=True)
    script = launch_dir / SCRIPT_NAME
    write_script(script, render_command(command, res, cluster, out_dir=str(out), title=title, job_name=job_name,
                                        array=array))
    job, line = sbatch(script, dependency)
    log = str(out / (ARRAY_LOG_NAME if array else LOG_NAME)).replace("%j", job).replace("%A", job)
    _record(launch_dir, job_id=job, script=str(script), log=log, dependency=dependency, command=command,
            **({"array": array} if array else {}))
    return Submitted(job, line, str(script), log)
