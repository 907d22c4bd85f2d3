"""Preemption ([spine2] 6): SIGUSR1 and SIGTERM both finish the optimizer step (never save in the
middle of gradient accumulation), skip validation, save (with save_seconds), stop cleanly, and the
resumed run logs bit-identical losses to an uninterrupted one.

The signal is sent by the training process to itself from a callback at a chosen micro-batch, so
where it lands is exact; it then takes the real path (the installed handler, the checkpoint
callback, the stop)."""

from __future__ import annotations

import os
import signal

import lightning as L
import pytest

from alm.config import load_recipe
from alm.data.cache import resolve_synthetic
from alm.training.checkpoint import list_checkpoints, read_meta
from alm.training.loggers import read_metrics
from alm.training.preemption import read_state
from alm.training.trainer import train

from helpers import FAST, TINY, losses, train as train_cli, train_and_signal

pytestmark = pytest.mark.slow
DROPOUT = "model.dropout=0.1"


class SignalAt(L.Callback):
    """Send `sig` to this process at the end of micro-batch `micro` of the optimizer step that
    follows step `after_step`."""

    def __init__(self, sig: int, after_step: int, micro: int):
        self.sig, self.after_step, self.micro = sig, after_step, micro
        self.sent_at: tuple[int, int] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        micro = batch_idx % trainer.accumulate_grad_batches
        if self.sent_at is None and trainer.global_step == self.after_step and micro == self.micro:
            self.sent_at = (trainer.global_step, micro)
            os.kill(os.getpid(), self.sig)


def cfg(run_dir, *overrides):
    c = load_recipe(TINY, [*FAST, f"run_dir={run_dir}", "data.num_workers=0", DROPOUT, *overrides])
    resolve_synthetic(c)  # as `alm train` does
    return c


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_mid_accumulation_saves_at_the_step_boundary_and_resumes_exactly(tmp_path, sig):
    args = ("trainer.max_steps=12", "trainer.ckpt_every_n_steps=100", "trainer.accumulate_grad_batches=4",
            "trainer.val_every_n_steps=6", "trainer.val_batches=1")
    train(cfg(tmp_path / "full", *args))
    sender = SignalAt(sig, after_step=5, micro=1)  # during step 6, after its 2nd of 4 micro-batches
    trainer = train(cfg(tmp_path / "pre", *args), extra_callbacks=(sender,))
    assert sender.sent_at == (5, 1)
    assert trainer.global_step == 6  # finished the optimizer step, then stopped
    (step, path), = list_checkpoints(tmp_path / "pre")
    meta = read_meta(path)
    assert step == 6 and meta["reason"] == ("preemption" if sig == signal.SIGUSR1 else "terminate")
    assert isinstance(meta["save_seconds"], float) and 0 <= meta["save_seconds"] < 60
    state = read_state(tmp_path / "pre")
    assert state["state"] == "preempted" and state["step"] == 6 and state["requeued"] is False
    assert state["signal"] == signal.Signals(sig).name
    first_attempt = read_metrics(tmp_path / "pre")
    assert "val/loss" not in first_attempt.get(5, {}) and "val/loss" in read_metrics(tmp_path / "full")[5]  # skipped

    train(cfg(tmp_path / "pre", *args))
    assert read_state(tmp_path / "pre")["state"] == "done"
    a, b = losses(tmp_path / "full"), losses(tmp_path / "pre")
    assert sorted(b) == list(range(12))
    assert [a[s] for s in range(12)] == [b[s] for s in range(12)]  # bit-identical, not merely close


def test_sigterm_two_ranks_saves_exits_cleanly_and_resumes_exactly(tmp_path):
    """SIGTERM to rank 0 only of a 2-rank run with accumulation: both ranks agree, save at a step
    boundary, exit 0; the resumed run matches the uninterrupted one."""
    args = ("trainer.max_steps=30", "trainer.ckpt_every_n_steps=100", "trainer.devices=2",
            "trainer.accumulate_grad_batches=2", DROPOUT, "data.num_workers=1")
    full, pre = tmp_path / "full", tmp_path / "pre"
    train_cli(full, *args)
    assert train_and_signal(pre, 4, *args, sig=signal.SIGTERM) == 0
    state = read_state(pre)
    assert state["state"] == "preempted" and state["signal"] == "SIGTERM" and state["requeued"] is False
    (step, path), = list_checkpoints(pre)
    assert 4 <= step < 30 and step == state["step"] and read_meta(path)["reason"] == "terminate"
    train_cli(pre, *args)
    assert read_state(pre)["state"] == "done"
    a, b = losses(full), losses(pre)
    assert [a[s] for s in range(step, 30)] == [b[s] for s in range(step, 30)]
