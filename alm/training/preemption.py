"""Preemption: SIGUSR1 or SIGTERM -> finish the optimizer step -> checkpoint -> requeue or exit.

SLURM sends SIGUSR1 ahead of the time limit when the job asks for it (`#SBATCH --signal=USR1@90`),
`scancel -s USR1 JOBID` sends it by hand, and SIGTERM comes from `scancel`, `kill` or a cluster
manager. Every rank's handler only records the request; at the next optimizer-step boundary (never
in the middle of gradient accumulation) the ranks agree on it (alm.training.checkpoint.SaveAgreement,
one step later across ranks), every rank saves, validation and audio samples are skipped, and
training stops:

* SIGUSR1 under SLURM: once `fit()` has returned (metrics and state written, W&B flushed) global
  rank 0 runs `scontrol requeue $SLURM_JOB_ID` as the run's last act; the requeued job resumes
  exactly from that checkpoint (resume=auto) into the same W&B run. `ALM_MAX_REQUEUES` (set by the
  sbatch template, default 20) bounds the requeues: past it the job ends as `preempted`.
* SIGUSR1 outside SLURM, or SIGTERM anywhere: the run exits cleanly (status 0) as `preempted`,
  with `signal` recorded in state.json; rerunning the command resumes exactly.

The checkpoint's meta.json records `save_seconds`, how long the save took, from which a launcher
can size the signal's lead time. Lightning's own SIGTERM handling (which stops without saving) is
replaced while training runs.

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
from alm.training.checkpoint import PREEMPT, TERMINATE

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


SIGNALS = {signal.SIGUSR1: PREEMPT, signal.SIGTERM: TERMINATE}


class Preemption(L.Callback):
    """SIGUSR1 / SIGTERM handlers; after the checkpoint they trigger: stop, then requeue (SLURM, USR1).

    SIGUSR1's handler is installed at setup (nothing else handles it; its default would kill the
    process), SIGTERM's at the start of training, after Lightning installed its own, which it
    replaces until training ends.
    """

    def __init__(self, ckpt, run_dir: str):
        self.ckpt = ckpt
        self.run_dir = run_dir
        self._previous: dict[int, object] = {}
        self.requeue_pending: str | None = None

    def _handler(self, signum, frame) -> None:
        self.ckpt.request_save(SIGNALS[signum])

    def _install(self, signum: int) -> None:
        try:
            self._previous[signum] = signal.signal(signum, self._handler)
        except ValueError:  # not the main thread (e.g. an interactive notebook): no signal handling
            pass

    def _restore(self, signum: int) -> None:
        if signum in self._previous:
            signal.signal(signum, self._previous.pop(signum))

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._install(signal.SIGUSR1)

    def on_train_start(self, trainer, pl_module) -> None:
        self._install(signal.SIGTERM)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore(signal.SIGTERM)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore(signal.SIGTERM)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        # a SIGUSR1 after training (SLURM sends it ahead of the time limit, maybe as a run ends) must
        # not kill the process with its default action: ours stays, and does nothing any more
        if self._previous.get(signal.SIGUSR1) in (signal.SIG_DFL, None):
            self._previous.pop(signal.SIGUSR1, None)
        self._restore(signal.SIGUSR1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        reason = self.ckpt.stop_reason
        if reason is None:
            return
        self.ckpt.stop_reason = None
        trainer.should_stop = True
        trainer.limit_val_batches = 0  # no validation (nor audio samples) on the way out
        job = os.environ.get("SLURM_JOB_ID")
        if reason == "preemption" and trainer.is_global_zero and job and trainer.global_step < trainer.max_steps:
            if requeue_allowed():
                self.requeue_pending = job  # requeue_if_pending(), after fit() returns
            else:
                rank_zero_warn(f"not requeueing job {job}: SLURM_RESTART_COUNT reached ALM_MAX_REQUEUES")
        name = "SIGUSR1" if reason == "preemption" else "SIGTERM"
        rank_zero_info(f"{name}: stopped at step {trainer.global_step}, checkpoint saved"
                       + (f", requeueing job {job}" if self.requeue_pending else ""))
        write_state(self.run_dir, "preempted", step=trainer.global_step, requeued=self.requeue_pending is not None,
                    signal=name)

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
