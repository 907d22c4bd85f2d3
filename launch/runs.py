"""`alm runs [DIR ...]`: a table of run directories and where each stands.

A run dir is a directory with config.yaml and state.json and/or checkpoints/ (what `alm train`
writes), or one that `alm launch slurm` submitted a job for (launch/submissions.jsonl) that has not
started yet. Columns: run dir, stage, state, last step, last checkpoint, W&B id, corrupt samples the
loader skipped (RUN_DIR/data_errors.json; `-` without that file), SLURM job.

State is what RUN_DIR/state.json records (running / done / failed / preempted / interrupted), except
that a `running` run whose job or process is gone shows as `dead`: for a SLURM job `squeue` decides
(when it answers), otherwise the recorded pid on this host. A submitted job that has not started
shows its queue state (`pending`).

`alm runs --state RUN_DIR` prints only the state (or `requeued` for a preempted run whose job
requeued itself); the sbatch scripts use it to decide what to do after training.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

STEP_DIR = re.compile(r"^step-(\d+)$")  # as alm.training.checkpoint (not imported: it pulls in torch + Lightning)
SKIP = {"checkpoints", "logs", "wandb", "launch", "export", ".git", "__pycache__"}
LIVE_SLURM = {"RUNNING", "COMPLETING", "CONFIGURING", "PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
              "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}


def _written_order(ckpt: tuple[int, Path]) -> tuple[int, int]:
    """(seq, step): the checkpoint written last is the run's head (alm.training.checkpoint's rule:
    a stale higher step of an abandoned branch is not the newest); no meta.json seq: step order."""
    try:
        seq = int(json.loads((ckpt[1] / "meta.json").read_text()).get("seq", 0))
    except (OSError, ValueError):
        seq = 0
    return seq, ckpt[0]


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first (same rule as alm.training.checkpoint.list_checkpoints)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir())


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def is_run_dir(path: Path) -> bool:
    if (path / "config.yaml").is_file() and ((path / "state.json").is_file() or (path / "checkpoints").is_dir()):
        return True
    return (path / "launch" / "submissions.jsonl").is_file() and (path / "launch" / "recipe.yaml").is_file()


def find_runs(roots: list[str], max_depth: int = 4) -> list[Path]:
    """Run dirs at or below each root (not below a run dir itself), sorted by path."""
    found: list[Path] = []

    def walk(p: Path, depth: int) -> None:
        if is_run_dir(p):
            found.append(p)
            return
        if depth >= max_depth:
            return
        try:
            children = sorted(c for c in p.iterdir() if c.is_dir() and not c.is_symlink() and c.name not in SKIP
                              and not c.name.startswith("."))
        except OSError:
            return
        for c in children:
            walk(c, depth + 1)

    for root in roots:
        walk(Path(root), 0)
    return sorted(dict.fromkeys(found))


# ----------------------------------------------------------------------------------------------
# liveness

_squeue_cache: dict[str, str] = {}


def slurm_job_state(job_id: str) -> str:
    """The job's queue state (RUNNING, PENDING, ...), `gone` if SLURM no longer knows it or it has ended,
    `unknown` if squeue is not available or does not answer."""
    if job_id in _squeue_cache:
        return _squeue_cache[job_id]
    try:
        p = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if p.returncode != 0:
        result = "gone" if "Invalid job id" in p.stderr else "unknown"
    else:
        states = [s.strip() for s in p.stdout.splitlines() if s.strip()]
        if not states:
            result = "gone"
        else:
            result = states[0] if states[0] in LIVE_SLURM else "gone"
    _squeue_cache[job_id] = result
    return result


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (not reaped yet) is dead too
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1] not in ("Z", "X")
    except OSError:
        pass
    return True


def last_submission(run_dir: Path) -> dict:
    path = run_dir / "launch" / "submissions.jsonl"
    try:
        lines = [x for x in path.read_text().splitlines() if x.strip()]
        return json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------------------------
# one row


@dataclass
class RunInfo:
    run_dir: str
    stage: str
    state: str
    step: Optional[int]
    max_steps: Optional[int]
    last_checkpoint: Optional[str]
    wandb_id: Optional[str]
    slurm_job: Optional[str]
    job_state: Optional[str]  # squeue's state, `gone` or `unknown` (SLURM runs only)
    recorded_state: Optional[str]
    requeued: bool = False
    corrupt_samples: Optional[int] = None  # RUN_DIR/data_errors.json total (None: no such file)


def _stage(run_dir: Path) -> str:
    import yaml

    for path in (run_dir / "config.yaml", run_dir / "launch" / "recipe.yaml"):
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and data.get("stage"):
            return str(data["stage"])
    return "?"


def last_logged_step(run_dir: Path) -> Optional[int]:
    """Steps done per the newest attempt's metrics.csv (its last logged step + 1); cheap: reads the tail."""
    attempts = sorted(run_dir.glob("logs/attempt-*/metrics.csv"), key=lambda p: int(p.parent.name.split("-")[1]))
    for path in reversed(attempts):
        try:
            with open(path, "rb") as f:
                header = f.readline().decode().strip().split(",")
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 65536))
                tail = f.read().decode(errors="replace").splitlines()
        except OSError:
            continue
        if "step" not in header:
            continue
        col = header.index("step")
        for line in reversed(tail):
            cells = line.split(",")
            if len(cells) == len(header) and cells[col] not in ("", "step"):
                try:
                    return int(float(cells[col])) + 1
                except ValueError:
                    continue
    return None


DATA_ERRORS = "data_errors.json"  # {"shards": {path: corrupt samples}, "total": n}, written by the data loader


def corrupt_samples(run_dir: Path) -> Optional[int]:
    """Corrupt samples the loader skipped, per RUN_DIR/data_errors.json; None if the file is absent.
    A file that cannot be read as that layout counts as -1 (shown as `?`), never as 0."""
    path = Path(run_dir) / DATA_ERRORS
    if not path.is_file():
        return None
    data = read_json(path)
    total = data.get("total")
    if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
        return total
    shards = data.get("shards")
    if isinstance(shards, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in shards.values()):
        return sum(shards.values())
    return -1


def run_info(run_dir: Path) -> RunInfo:
    run_dir = Path(run_dir)
    st = read_json(run_dir / "state.json")
    sub = last_submission(run_dir)
    recorded = st.get("state")
    job = st.get("slurm_job_id") or sub.get("job_id")
    if sub.get("job_id") and st.get("slurm_job_id") and float(sub.get("time", 0)) > float(st.get("updated", 0)):
        job = sub["job_id"]  # submitted again after the last recorded state
    job = str(job) if job else None
    job_state = slurm_job_state(job) if job else None

    state = recorded or ("submitted" if sub else "unknown")
    if state in ("running", "submitted"):
        if job and job_state not in (None, "unknown"):  # squeue answered
            if job_state == "gone":
                state = "dead"
            elif job_state in ("PENDING", "REQUEUED", "REQUEUE_HOLD"):
                state = "pending"
            elif state == "submitted":
                state = "starting"  # the job runs, training has not written its state yet
        elif st.get("pid") and st.get("host") == socket.gethostname():  # no SLURM answer: the recorded process
            if not pid_alive(int(st["pid"])):
                state = "dead"

    ckpts = list_checkpoints(run_dir)
    head = max(ckpts, key=_written_order) if ckpts else None  # the lineage's head, as resume=auto takes it
    logged = last_logged_step(run_dir)
    steps = [s for s in (st.get("step"), logged, head[0] if head else None) if s is not None]
    wandb_id = None
    try:
        wandb_id = (run_dir / "wandb_id").read_text().strip() or None
    except OSError:
        pass
    return RunInfo(
        run_dir=str(run_dir),
        stage=_stage(run_dir),
        state=state,
        step=max(steps) if steps else None,
        max_steps=st.get("max_steps"),
        last_checkpoint=str(head[1]) if head else None,
        wandb_id=wandb_id,
        slurm_job=job,
        job_state=job_state,
        recorded_state=recorded,
        requeued=bool(st.get("requeued")) and recorded == "preempted",
        corrupt_samples=corrupt_samples(run_dir),
    )


def state_word(run_dir: Path) -> str:
    """The one word `alm runs --state` prints: the state, or `requeued` (preempted, job requeued itself)."""
    info = run_info(Path(run_dir))
    return "requeued" if info.requeued else info.state


# ----------------------------------------------------------------------------------------------
# table

COLUMNS = ("RUN DIR", "STAGE", "STATE", "STEP", "CHECKPOINT", "W&B ID", "CORRUPT", "SLURM JOB")


def _row(info: RunInfo, base: Optional[Path]) -> list[str]:
    run = info.run_dir
    if base is not None:  # shorter paths for runs below the current directory
        try:
            rel = os.path.relpath(run, base)
        except ValueError:
            rel = run
        if not rel.startswith(".."):
            run = rel
    step = "-" if info.step is None else str(info.step) + (f"/{info.max_steps}" if info.max_steps else "")
    ckpt = Path(info.last_checkpoint).name if info.last_checkpoint else "-"
    job = "-"
    if info.slurm_job:
        live = info.job_state not in (None, "unknown", "gone")
        job = info.slurm_job + (f" ({info.job_state.lower()})" if live else "")
    corrupt = {None: "-", -1: "?"}.get(info.corrupt_samples, str(info.corrupt_samples))
    return [run, info.stage, info.state, step, ckpt, info.wandb_id or "-", corrupt, job]


def table(infos: list[RunInfo], base: Optional[Path] = None) -> str:
    rows = [list(COLUMNS)] + [_row(i, base) for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


def as_json(infos: list[RunInfo]) -> str:
    return json.dumps([asdict(i) for i in infos], indent=1)
