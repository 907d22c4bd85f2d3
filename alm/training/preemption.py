"""Preemption: SIGUSR1 -> finish the step -> checkpoint -> requeue the SLURM job -> stop.

SLURM sends SIGUSR1 ahead of the time limit when the job asks for it (`#SBATCH --signal=USR1@90`),
and `scancel -s USR1 JOBID` sends it by hand. Every rank's handler only sets a flag; at the end of
the current step the checkpoint callback agrees across ranks (an all-reduce) and saves; training
stops, and once `fit()` has returned (metrics and state written, W&B flushed) global rank 0 runs
`scontrol requeue $SLURM_JOB_ID` as the run's last act — SLURM kills the job's processes at once.
The requeued job starts the same command, which resumes exactly from that checkpoint
(resume=auto) into the same W&B run.

`ALM_MAX_REQUEUES` (set by the sbatch template, default 20) bounds the number of requeues: past it
the job checkpoints and ends as `preempted` instead of looping forever. Outside SLURM the signal
still checkpoints and stops (state `preempted`), so `kill -USR1` works for local runs too.

The run's state (running / done / failed / preempted) goes to RUN_DIR/state.json for `alm runs`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn

from alm.io import atomic_write_text

STATE_FILE = "state.json"


@rank_zero_only
def write_state(run_dir: str | os.PathLike, state: str, **fields) -> None:
    """Record the run's state for `alm runs` (global rank 0 only; merged into what is there)."""
    path = Path(run_dir) / STATE_FILE
    record = json.loads(path.read_text()) if path.is_file() else {}
    record.update(fields)
    record.update(
        state=state,
        updated=time.time(),
        host=socket.gethostname(),
        pid=os.getpid(),
        slurm_job_id=os.environ.get("SLURM_JOB_ID"),
        slurm_restart_count=int(os.environ.get("SLURM_RESTART_COUNT", 0)),
    )
    atomic_write_text(path, json.dumps(record, indent=1))


def read_state(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def requeue_allowed() -> bool:
    limit = int(os.environ.get("ALM_MAX_REQUEUES", 20))
    return int(os.environ.get("SLURM_RESTART_COUNT", 0)) < limit


def requeue_job(job_id: str) -> bool:
    try:
        subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = getattr(exc, "stderr", "") or exc
        rank_zero_warn(f"scontrol requeue {job_id} failed: {detail}")
        return False
    return True


class Preemption(L.Callback):
    """Install the SIGUSR1 handler; after the checkpoint it triggers, requeue (SLURM) and stop."""

    def __init__(self, ckpt, run_dir: str, signum: int = signal.SIGUSR1):
        self.ckpt = ckpt
        self.run_dir = run_dir
        self.signum = signum
        self._previous = None
        self.requeue_pending: str | None = None

    def _handler(self, signum, frame) -> None:
        self.ckpt.request_save(reason="preemption")

    def setup(self, trainer, pl_module, stage: str) -> None:
        try:
            self._previous = signal.signal(self.signum, self._handler)
        except ValueError:  # not the main thread (e.g. an interactive notebook): no signal handling
            self._previous = None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.ckpt.last_save_reason != "preemption" or self.ckpt.saved_step != trainer.global_step:
            return
        self.ckpt.last_save_reason = None
        trainer.should_stop = True
        job = os.environ.get("SLURM_JOB_ID")
        if trainer.is_global_zero and job:
            if requeue_allowed():
                self.requeue_pending = job  # requeue_if_pending(), after fit() returns
            else:
                rank_zero_warn(f"not requeueing job {job}: SLURM_RESTART_COUNT reached ALM_MAX_REQUEUES")
        rank_zero_info(f"preempted at step {trainer.global_step}: checkpoint saved"
                       + (f", requeueing job {job}" if self.requeue_pending else ""))
        write_state(self.run_dir, "preempted", step=trainer.global_step, requeued=self.requeue_pending is not None)

    def requeue_if_pending(self) -> bool:
        """`scontrol requeue` as the last thing the run does (after fit): SLURM kills the job at once."""
        job, self.requeue_pending = self.requeue_pending, None
        if not job:
            return False
        try:  # flush W&B before SLURM's SIGTERM arrives
            import wandb

            if wandb.run is not None:
                wandb.finish()
        except Exception as exc:  # never let logging stop the requeue
            rank_zero_warn(f"wandb.finish before requeue failed: {exc}")
        if not requeue_job(job):
            write_state(self.run_dir, "preempted", requeued=False)
            return False
        return True
