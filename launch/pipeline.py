"""Pipelines: several SLURM jobs submitted in order, each waiting for the previous one
(`--dependency=afterok:<job id>`; a failed stage cancels the rest).

    alm launch slurm PIPELINE.yaml [--dir DIR] [--cluster C] [--partition P ...] [--dry-run]

A pipeline file (see launch/README.md and launch/pipelines/):

    name: audiolm-semantic
    dir: runs/audiolm-semantic-pipeline    # optional, default runs/pipelines/<name>; --dir overrides
    cluster: example                       # optional, a launch/clusters/ name or a path; --cluster overrides
    slurm: {time: "24:00:00"}              # optional defaults for every stage's job
    stages:
      - name: tokenize                     # a command stage: one shell command (`alm ...` uses the launcher's python)
        command: alm tokenize semantic --shards data/librilight --out data/librilight-hubert ...
        gpus_per_node: 1
      - name: semantic                     # a training stage: recipe (relative to this file) + overrides
        recipe: ../../recipes/audiolm/semantic.yaml
        overrides: [data.train_shards=data/librilight-hubert]
        nodes: 4
        gpus_per_node: 8
        export: true                       # the job ends with `alm export RUN_DIR --out RUN_DIR/export`
      - name: sample
        command: alm generate semantic {stages.semantic.export} --tokens 200 --out {pipeline.dir}/sample.npy

Job arrays: a command stage with `array: N` is ONE sbatch job array of N tasks (`#SBATCH --array=0-(N-1)`,
each task with the stage's resources, logs DIR/NAME/slurm-JOB_TASK.out); the next stage waits for all N
(afterok on the array's job id). Its command says which task it is with `{array.index}` (the task's
SLURM_ARRAY_TASK_ID) and `{array.count}` (N); an `alm tokenize` command that does neither gets
`--num-shards N --shard-index ${SLURM_ARRAY_TASK_ID}` appended. Fit a semantic tokenizer once in a stage
before the array (`alm tokenize semantic ... --fit-only`).

References, resolved when the pipeline is submitted: `{pipeline.dir}`, and for an earlier stage
`{stages.NAME.run_dir}` / `.export` / `.dir` / `.log` / `.job_id`. Other braces (e.g. brace patterns
in shard paths) are left alone. A training stage's run_dir defaults to `{pipeline.dir}/NAME`.

Paths: `recipe:` and a `cluster:` file are relative to the pipeline file (so a pipeline works from any
directory); `dir:`, run dirs and the paths inside commands and overrides are relative to the directory
`alm launch` runs in (the jobs start there: `#SBATCH --chdir`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from alm.launch.slurm import (
    LOG_NAME,
    RESOURCE_KEYS,
    LaunchError,
    check_resources,
    load_cluster,
    prepare_recipe,
    render_command,
    render_training,
    resources,
    signal_lead,
    submit_command,
    submit_training,
)

STAGE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
REFERENCE = re.compile(r"\{(pipeline\.dir|stages\.([A-Za-z0-9_-]+)\.([A-Za-z_]+))\}")
STAGE_FIELDS = ("run_dir", "export", "dir", "log", "job_id")
STAGE_KEYS = {"name", "recipe", "overrides", "command", "export", "array", *RESOURCE_KEYS}
ARRAY_REFERENCE = re.compile(r"\{array\.(index|count)\}")
TASK_ID = "${SLURM_ARRAY_TASK_ID}"
TOP_KEYS = {"name", "dir", "cluster", "slurm", "stages"}


def is_pipeline(path: str) -> bool:
    """A YAML with a top-level `stages:` list (and no `stage:` key, which recipes have)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and isinstance(data.get("stages"), list) and "stage" not in data


@dataclass
class Stage:
    name: str
    kind: str  # train | command
    spec: dict
    dir: str = ""  # run dir (train) or the stage's folder (command)
    export: Optional[str] = None
    job_id: Optional[str] = None
    log: Optional[str] = None
    script: Optional[str] = None


@dataclass
class Pipeline:
    name: str
    dir: str
    cluster: Optional[str]
    slurm: dict
    stages: list[Stage]
    source: str


def _beside(path: str, base: Path) -> Path:
    """`path` as written in the pipeline file: absolute, or relative to the file's folder (never to the cwd)."""
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else Path(os.path.normpath(base / p))


def _cluster_ref(value: str, base: Path, where: str) -> str:
    """A pipeline's `cluster:`: a file relative to the pipeline file, or the name of a bundled cluster file."""
    p = _beside(value, base)
    if p.is_file():
        return str(p)
    if "/" in value or value.endswith((".yaml", ".yml")):
        raise LaunchError(f"{where}: key 'cluster': {value}: no such file {p} (paths are relative to the pipeline file)")
    return value


def load_pipeline(path: str, dir_override: Optional[str] = None) -> Pipeline:
    src = Path(path)
    try:
        raw = yaml.safe_load(src.read_text())
    except OSError as exc:
        raise LaunchError(f"{path}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise LaunchError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), list) or not raw["stages"]:
        raise LaunchError(f"{path}: a pipeline needs a non-empty `stages:` list")
    for key in raw:
        if key not in TOP_KEYS:
            raise LaunchError(f"{path}: key '{key}': unknown; expected one of {', '.join(sorted(TOP_KEYS))}")
    base = src.resolve().parent  # recipe and cluster paths in the file are relative to it
    name = str(raw.get("name") or src.stem)
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise LaunchError(f"{path}: key 'slurm': expected a mapping of job settings")
    for key in slurm:
        if key not in RESOURCE_KEYS:
            raise LaunchError(f"{path}: key 'slurm.{key}': unknown; expected one of {', '.join(RESOURCE_KEYS)}")
    stages, seen = [], set()
    for i, spec in enumerate(raw["stages"]):
        where = f"{path}: stages[{i}]"
        if not isinstance(spec, dict):
            raise LaunchError(f"{where}: expected a mapping")
        sname = str(spec.get("name", ""))
        if not STAGE_NAME.match(sname):
            raise LaunchError(f"{where}: key 'name': required, letters/digits/_/- only, got {sname!r}")
        if sname in seen:
            raise LaunchError(f"{where}: key 'name': duplicate stage name {sname!r}")
        seen.add(sname)
        for key in spec:
            if key not in STAGE_KEYS:
                raise LaunchError(f"{where} ({sname}): key '{key}': unknown; expected one of {', '.join(sorted(STAGE_KEYS))}")
        if ("recipe" in spec) == ("command" in spec):
            raise LaunchError(f"{where} ({sname}): give exactly one of `recipe:` (training) or `command:`")
        if "recipe" in spec:
            recipe = _beside(str(spec["recipe"]), base)
            if not recipe.is_file():
                raise LaunchError(f"{where} ({sname}): key 'recipe': {spec['recipe']}: no such file {recipe} "
                                  "(recipe paths are relative to the pipeline file)")
            spec = dict(spec, recipe=str(recipe))
            ov = spec.get("overrides") or []
            if isinstance(ov, dict):
                ov = [f"{k}={v}" for k, v in ov.items()]
            if not isinstance(ov, list):
                raise LaunchError(f"{where} ({sname}): key 'overrides': expected a list of key=value (or a mapping)")
            spec["overrides"] = [str(o) for o in ov]
        elif spec.get("export") or spec.get("overrides"):
            raise LaunchError(f"{where} ({sname}): `export`/`overrides` belong to training stages (with `recipe:`)")
        if "array" in spec:
            n = spec["array"]
            if "recipe" in spec:
                raise LaunchError(f"{where} ({sname}): key 'array': only command stages can be job arrays "
                                  "(a training stage is one multi-node job)")
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise LaunchError(f"{where} ({sname}): key 'array': expected the number of tasks (an integer >= 1), got {n!r}")
        elif "command" in spec and ARRAY_REFERENCE.search(str(spec["command"])):
            raise LaunchError(f"{where} ({sname}): {ARRAY_REFERENCE.search(str(spec['command'])).group(0)} "
                              "needs `array: N` on the stage")
        stages.append(Stage(sname, "train" if "recipe" in spec else "command", spec))
    pdir = dir_override or raw.get("dir") or f"runs/pipelines/{name}"
    cluster = raw.get("cluster")
    if cluster:
        cluster = _cluster_ref(str(cluster), base, path)
    return Pipeline(name, os.path.abspath(str(pdir)), cluster, slurm, stages, str(src))


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def resolve(text: str, pipeline: Pipeline, done: dict[str, Stage], where: str) -> str:
    """Replace {pipeline.dir} and {stages.NAME.FIELD} (NAME: an earlier stage)."""

    def sub(m: re.Match) -> str:
        if m.group(1) == "pipeline.dir":
            return pipeline.dir
        name, fld = m.group(2), m.group(3)
        if name not in done:
            later = any(s.name == name for s in pipeline.stages)
            raise LaunchError(
                f"{where}: {m.group(0)}: " + (f"stage {name!r} comes later; refer only to earlier stages" if later
                                             else f"no stage named {name!r}")
            )
        if fld not in STAGE_FIELDS:
            raise LaunchError(f"{where}: {m.group(0)}: unknown field {fld!r}; expected one of {', '.join(STAGE_FIELDS)}")
        st = done[name]
        if fld == "export":
            if st.export is None:
                raise LaunchError(f"{where}: {m.group(0)}: stage {name!r} has no `export: true`")
            return st.export
        if fld == "run_dir":
            if st.kind != "train":
                raise LaunchError(f"{where}: {m.group(0)}: stage {name!r} is a command stage (use .dir)")
            return st.dir
        if fld == "dir":
            return st.dir
        if fld == "log":
            return st.log or str(Path(st.dir) / LOG_NAME)
        return st.job_id or f"<job id of {name}>"

    return REFERENCE.sub(sub, text)


def array_command(command: str, n: int, where: str) -> str:
    """The command one task of an `array: n` stage runs: {array.index} -> ${SLURM_ARRAY_TASK_ID},
    {array.count} -> n; an `alm tokenize` command naming neither its share nor these gets
    `--num-shards n --shard-index ${SLURM_ARRAY_TASK_ID}`."""
    words = command.split()
    if not ARRAY_REFERENCE.search(command):
        if words[:2] == ["alm", "tokenize"]:
            if any(w.split("=")[0] in ("--num-shards", "--shard-index") for w in words):
                raise LaunchError(f"{where}: an array stage's `alm tokenize` gets --num-shards {n} --shard-index "
                                  f"{TASK_ID} from `array: {n}`; drop them from the command (or use {{array.index}})")
            return f"{command.rstrip()} --num-shards {n} --shard-index {TASK_ID}"
        raise LaunchError(f"{where}: `array: {n}` runs the command {n} times; say which part each task does with "
                          "{array.index} (0..N-1) and {array.count}, or use an `alm tokenize` command")
    return ARRAY_REFERENCE.sub(lambda m: TASK_ID if m.group(1) == "index" else str(n), command)


def launch_pipeline(path: str, *, cli: dict, cluster_flag: Optional[str], dir_override: Optional[str],
                    dry_run: bool, out=print, check: bool = True, say=None) -> list[Stage]:
    """Submit every stage in order (each after the previous one); with dry_run print the scripts instead.
    Before submitting anything, every stage is rendered once (recipes, references, resources), so a
    mistake in a later stage leaves no earlier stage's job behind."""
    if not dry_run:
        launch_pipeline(path, cli=cli, cluster_flag=cluster_flag, dir_override=dir_override, dry_run=True,
                        out=lambda *_: None, check=check, say=lambda *_: None)
    p = load_pipeline(path, dir_override)
    cluster = load_cluster(cluster_flag or p.cluster)
    done: dict[str, Stage] = {}
    previous: Optional[str] = None
    if not dry_run:
        Path(p.dir).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(p.dir) / "pipeline.yaml")
    for st in p.stages:
        where = f"{path}: stage {st.name}"
        layer = {k: st.spec.get(k) for k in RESOURCE_KEYS}
        if st.kind == "train":
            overrides = [resolve(o, p, done, where) for o in st.spec["overrides"]]
            if not any(o.split("=", 1)[0].strip() == "run_dir" for o in overrides):
                overrides.append(f"run_dir={Path(p.dir) / st.name}")
            res = resources(cluster, p.slurm, cli, layer)
            try:
                cfg = prepare_recipe(st.spec["recipe"], overrides, res.nodes, res.tasks_per_node, res.gpus_per_node)
            except LaunchError as exc:
                raise LaunchError(f"{where}: {exc}") from exc
            if not res.job_name:
                res.job_name = f"{p.name}-{st.name}"
            if res.cpus_per_task is None:
                res.cpus_per_task = cfg.data.num_workers + 1  # the training process + its loader workers
            try:
                check_resources(res, enabled=check, say=say)
                signal_lead(res, cfg.run_dir)
            except LaunchError as exc:
                raise LaunchError(f"{where}: {exc}") from exc
            (say or _stderr)(f"[alm] stage {st.name}: --signal=USR1@{res.signal_seconds}: {res.signal_source}")
            st.dir = cfg.run_dir
            st.export = str(Path(cfg.run_dir) / "export") if st.spec.get("export") else None
            if dry_run:
                text = render_training(cfg, res, cluster, recipe_source=st.spec["recipe"], export=bool(st.spec.get("export")))
            else:
                sub = submit_training(cfg, res, cluster, recipe_source=st.spec["recipe"],
                                      export=bool(st.spec.get("export")), dependency=previous)
        else:
            command = resolve(str(st.spec["command"]), p, done, where)
            array = st.spec.get("array")
            if array:
                command = array_command(command, array, where)
            res = resources(cluster, p.slurm, cli, layer)
            if not res.job_name:
                res.job_name = f"{p.name}-{st.name}"
            try:
                check_resources(res, enabled=check, say=say)
            except LaunchError as exc:
                raise LaunchError(f"{where}: {exc}") from exc
            st.dir = str(Path(p.dir) / st.name)
            title = f"alm pipeline {p.name}: command stage {st.name}"
            if dry_run:
                text = render_command(command, res, cluster, out_dir=st.dir, title=title, job_name=res.job_name,
                                      array=array)
            else:
                sub = submit_command(command, res, cluster, out_dir=st.dir, title=title, job_name=res.job_name,
                                     dependency=previous, array=array)
        prev_array = p.stages[p.stages.index(st) - 1].spec.get("array") if done else None
        whole = f" (all {prev_array} tasks of its array)" if prev_array else ""
        if dry_run:
            dep = f" --dependency=afterok:<job of {list(done)[-1]}>{whole}" if done else ""
            tasks = f" --array=0-{st.spec['array'] - 1}" if st.spec.get("array") else ""
            out(f"# ===== stage {st.name}: sbatch{dep}{tasks} {Path(st.dir) / 'launch' / 'sbatch.sh'} =====")
            out(text)
        else:
            st.job_id, st.log, st.script = sub.job_id, sub.log, sub.script
            out(sub.line)
            out(f"[alm] stage {st.name}: log {sub.log}" + (f" (after job {previous}{whole})" if previous else ""))
            previous = sub.job_id
        done[st.name] = st
    if not dry_run:
        record = {
            "name": p.name, "source": os.path.abspath(path), "submitted": time.time(),
            "stages": [{"name": s.name, "kind": s.kind, "dir": s.dir, "export": s.export, "job_id": s.job_id,
                        "log": s.log, "script": s.script, **({"array": s.spec["array"]} if s.spec.get("array") else {})}
                       for s in p.stages],
        }
        (Path(p.dir) / "pipeline.json").write_text(json.dumps(record, indent=1))
        out(f"[alm] pipeline {p.name}: {len(p.stages)} jobs; record in {Path(p.dir) / 'pipeline.json'}")
    return p.stages
