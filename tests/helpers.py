"""Helpers for end-to-end tests: run `python -m alm ...` as a subprocess, read a run's losses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from alm.training.loggers import read_metrics

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "recipes" / "tiny" / "semantic.yaml")
TINY_COARSE = str(REPO / "recipes" / "tiny" / "coarse.yaml")
TINY_FINE = str(REPO / "recipes" / "tiny" / "fine.yaml")

# a smaller net and shorter sequences than the tiny recipe: seconds per run on 2 cores
FAST = [
    "model.n_layer=2",
    "model.d_model=64",
    "model.n_head=2",
    "data.batch_size=8",
    "data.max_len=64",
    "data.shuffle_buffer=32",
    "trainer.val_every_n_steps=0",
    "trainer.progress_bar=false",
    "trainer.threads=1",
    "trainer.accelerator=cpu",
]


def env() -> dict[str, str]:
    e = dict(os.environ)
    # a test that trained in the pytest process itself left its W&B service's address here: a
    # subprocess would join that long-lived service, where a SIGKILLed client's run stays "in use"
    e.pop("WANDB_SERVICE", None)
    e.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return e


def alm(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "alm", *args], cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"alm {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def train(run_dir: Path, *overrides: str, timeout: float = 600, recipe: str = TINY) -> subprocess.CompletedProcess:
    return alm("train", recipe, f"run_dir={run_dir}", *FAST, *overrides, timeout=timeout)


def losses(run_dir: Path) -> dict[int, float]:
    return {s: m["train/loss"] for s, m in read_metrics(run_dir).items() if "train/loss" in m}


def train_and_kill(run_dir: Path, kill_after_step: int, *overrides: str, timeout: float = 300) -> int:
    """Start training, SIGKILL the whole process group once step `kill_after_step` is logged.
    Returns the last logged step at kill time."""
    cmd = [sys.executable, "-m", "alm", "train", TINY, f"run_dir={run_dir}", *FAST, *overrides]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + timeout
    last = -1
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"training ended before the kill (rc={proc.returncode}):\n{proc.stderr.read()[-4000:]}")
            try:
                steps = losses(run_dir)
            except (OSError, ValueError, KeyError):
                steps = {}
            last = max(steps, default=-1)
            if last >= kill_after_step:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("timed out waiting for training progress")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return last



def train_and_signal(run_dir: Path, after_step: int, *overrides: str, sig: int = signal.SIGUSR1, timeout: float = 300) -> int:
    """Start training, send `sig` to the main process once step `after_step` is logged, wait for it
    to exit; returns its exit code."""
    cmd = [sys.executable, "-m", "alm", "train", TINY, f"run_dir={run_dir}", *FAST, *overrides]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"training ended before the signal (rc={proc.returncode}):\n{proc.stderr.read()[-4000:]}")
            try:
                last = max(losses(run_dir), default=-1)
            except (OSError, ValueError, KeyError):
                last = -1
            if last >= after_step:
                os.kill(proc.pid, sig)
                break
            time.sleep(0.05)
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 0:
        raise AssertionError(f"signalled run exited with {proc.returncode}:\n{err[-4000:]}")
    return proc.returncode
