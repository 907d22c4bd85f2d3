"""End-to-end training runs of the tiny semantic recipe, as subprocesses (real gloo process groups).

They check what a researcher relies on: logging, checkpoint rotation, exact resume after SIGKILL
(1 and 2 ranks, 2 loader workers each), DDP vs DeepSpeed ZeRO-2/3 agreement, and export -> load ->
the same logits as the trained module (also from a ZeRO-3 run).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import lightning as L
import pytest
import torch

import alm
from alm.training.checkpoint import list_checkpoints, read_meta
from alm.training.loggers import read_metrics

from helpers import FAST, REPO, TINY, alm as run_alm, env, losses, train, train_and_kill, train_and_signal

pytestmark = pytest.mark.slow
DROPOUT = "model.dropout=0.1"  # randomness inside the step: resume must reproduce it too


def test_train_logs_checkpoints_and_wandb(tmp_path):
    run = tmp_path / "run"
    p = train(run, "trainer.max_steps=30", "trainer.ckpt_every_n_steps=10", "trainer.keep_last_k=2",
              "trainer.val_every_n_steps=15", "trainer.val_batches=2", "trainer.progress_bar=true")
    assert_quiet(p.stdout + p.stderr)
    assert "train: 100%" in p.stdout and "val/loss=" in p.stdout  # the one bar, validation's loss on it
    rows = list(csv.DictReader(open(next(run.glob("**/metrics.csv")))))
    assert {"step", "train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "val/loss"} <= set(rows[0])
    curve = losses(run)
    assert sorted(curve) == list(range(30))
    assert sum(list(curve.values())[-5:]) / 5 < sum(list(curve.values())[:5]) / 5 - 0.3, curve  # it learns
    assert [s for s, _ in list_checkpoints(run)] == [20, 30]  # keep_last_k=2
    ckpt = list_checkpoints(run)[-1][1]
    assert (ckpt / "config.yaml").read_text() == (run / "config.yaml").read_text()
    assert read_meta(ckpt)["step"] == 30
    assert "alm_config" in torch.load(ckpt / "checkpoint.ckpt", weights_only=True)
    assert (run / "wandb_id").is_file() and list((run / "wandb").glob("offline-run-*"))
    assert not list((run / "checkpoints").glob(".*"))  # no temporary leftovers


# [robust] 11: lines a user cannot act on that Lightning, DeepSpeed, torch and W&B print by default
NOISE = ("The `srun` command is available", "💡 Tip", "litlogger", "anonymous setting", "LeafSpec", "FutureWarning",
         "Epoch 0", "Validation", "initializing deepspeed distributed", "TPU available", "was configured so",
         "shm_comm_op built")  # DeepSpeed JIT-compiling its CPU shm kernel: alm uses gloo collectives


def assert_quiet(output: str) -> None:
    found = [n for n in NOISE if n in output]
    assert not found, f"noise in the training output: {found}\n{output[-3000:]}"


def _check_exact_resume(tmp_path, *overrides):
    args = ("trainer.max_steps=24", "trainer.ckpt_every_n_steps=8", DROPOUT, *overrides)
    full, killed = tmp_path / "full", tmp_path / "killed"
    train(full, *args)
    last = train_and_kill(killed, 11, *args)
    steps = [s for s, _ in list_checkpoints(killed)]
    assert steps, "killed before the first checkpoint"
    resume_step = steps[-1]
    assert last >= resume_step, "the kill must fall between checkpoints (some steps lost)"
    wandb_id = (killed / "wandb_id").read_text()
    train(killed, *args)
    assert (killed / "wandb_id").read_text() == wandb_id  # same W&B run after the resume
    a, b = losses(full), losses(killed)
    assert sorted(b) == list(range(24))
    after = list(range(resume_step, 24))
    assert [a[s] for s in after] == [b[s] for s in after]  # bit-identical, not merely close
    assert len(list(killed.glob("logs/attempt-*"))) == 2


def test_kill_resume_exact_single_process(tmp_path):
    _check_exact_resume(tmp_path, "data.num_workers=2")


def test_kill_resume_exact_two_ranks(tmp_path):
    _check_exact_resume(tmp_path, "trainer.devices=2", "data.num_workers=2")


def test_dynamic_token_batches_train(tmp_path):
    run = tmp_path / "run"
    train(run, "trainer.max_steps=6", "data.max_tokens=300", "trainer.ckpt_every_n_steps=6")
    rows = losses(run)
    assert sorted(rows) == list(range(6)) and all(v == v for v in rows.values())


def test_strategies_agree_two_processes(tmp_path):
    common = ("trainer.max_steps=10", "trainer.devices=2", "trainer.ckpt_every_n_steps=10", "data.num_workers=1")
    curves = {}
    for name, extra in {
        "ddp": ("trainer.strategy=ddp",),
        "zero2": ("trainer.strategy=deepspeed", "trainer.zero_stage=2"),
        "zero1": ("trainer.strategy=deepspeed", "trainer.zero_stage=1"),
        "zero3": ("trainer.strategy=deepspeed", "trainer.zero_stage=3"),
        "zero3_offload": ("trainer.strategy=deepspeed", "trainer.zero_stage=3", "trainer.offload=true"),
    }.items():
        p = train(tmp_path / name, *common, *extra)
        assert_quiet(p.stdout + p.stderr)
        curves[name] = torch.tensor([v for _, v in sorted(losses(tmp_path / name).items())])
    assert len(curves["ddp"]) == 10
    for name in ("zero1", "zero2", "zero3", "zero3_offload"):
        torch.testing.assert_close(curves[name], curves["ddp"], rtol=0, atol=2e-4, msg=lambda m: f"{name}: {m}")
    assert (tmp_path / "zero3" / "checkpoints" / "step-000000010" / "checkpoint").is_dir()


@pytest.mark.parametrize("strategy", ["ddp", "zero3"])
def test_export_load_same_logits(tmp_path, strategy):
    run, out = tmp_path / "run", tmp_path / "probe.pt"
    extra = ["trainer.devices=2"]
    if strategy == "zero3":
        extra += ["trainer.strategy=deepspeed", "trainer.zero_stage=3"]
    cmd = [sys.executable, str(REPO / "tests" / "scripts" / "train_and_probe.py"), TINY, str(out),
           f"run_dir={run}", *FAST, "trainer.max_steps=6", "trainer.ckpt_every_n_steps=3", *extra]
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-5000:]
    probe = torch.load(out)
    assert probe["step"] == 6
    run_alm("export", str(run), "--out", str(tmp_path / "export"))
    export = tmp_path / "export"
    assert {"model.safetensors", "config.yaml", "export.json"} <= {p.name for p in export.iterdir()}
    assert (export / "tokenizer" / "kmeans.safetensors").is_file()
    model = alm.load_pretrained(export)
    with torch.no_grad():
        logits = model(probe["probe"])
    torch.testing.assert_close(logits, probe["logits"], rtol=1e-5, atol=1e-5)


def test_sigusr1_checkpoints_stops_and_resumes_exactly(tmp_path):
    """The preemption path without SLURM: USR1 to rank 0 only -> every rank saves at the end of the
    step (not a periodic step), the run stops as `preempted`, and the resumed run matches."""
    from alm.training.preemption import read_state

    args = ("trainer.max_steps=40", "trainer.ckpt_every_n_steps=100", "trainer.devices=2", DROPOUT, "data.num_workers=1")
    full, pre = tmp_path / "full", tmp_path / "pre"
    train(full, *args)
    assert read_state(full)["state"] == "done"
    train_and_signal(pre, 5, *args)
    state = read_state(pre)
    assert state["state"] == "preempted" and state["requeued"] is False
    (step, _), = list_checkpoints(pre)
    assert 5 <= step < 40 and step == state["step"]
    train(pre, *args)
    assert read_state(pre)["state"] == "done"
    a, b = losses(full), losses(pre)
    assert [a[s] for s in range(step, 40)] == [b[s] for s in range(step, 40)]


def test_no_device_value_is_read_between_log_steps(tmp_path, monkeypatch):
    """[spine2] 11: between log steps nothing in the training loop reads a tensor's value on the host
    (`.item()`, `float()`, `int()`, `bool()`: each a device synchronisation on a GPU), so steps queue
    up on the accelerator; the metrics of a log step are all there."""
    from alm.config import load_recipe
    from alm.data.cache import resolve_synthetic
    from alm.training.trainer import train as train_in_process

    reads: dict[int, list[str]] = {}
    state = {"step": None}

    class Where(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            state["step"] = trainer.global_step

        def on_train_batch_end(self, trainer, *args):
            state["step"] = None

    def spy(name):
        original = getattr(torch.Tensor, name)

        def read(self, *a, **k):
            caller = sys._getframe(1).f_code.co_filename
            # torch's Adam reads its CPU step counter (no device value; a bare PyTorch loop does too)
            if state["step"] is not None and f"torch{os.sep}optim{os.sep}" not in caller:
                reads.setdefault(state["step"], []).append(f"{name} in {caller}")
            return original(self, *a, **k)
        return read

    cfg = load_recipe(TINY, [*FAST, f"run_dir={tmp_path / 'run'}", "data.num_workers=0", "trainer.max_steps=10",
                             "trainer.log_every_n_steps=5", "trainer.ckpt_every_n_steps=100"])
    resolve_synthetic(cfg)
    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    train_in_process(cfg, extra_callbacks=(Where(),))
    monkeypatch.undo()
    log_steps = {4, 9}  # steps 5 and 10 (0-based step index = global_step before the step)
    assert {s: r for s, r in reads.items() if s not in log_steps} == {}
    rows = read_metrics(tmp_path / "run")
    assert sorted(s for s, m in rows.items() if "train/grad_norm" in m) == sorted(log_steps)
    assert all("train/tokens_per_s" in rows[s] and "train/loss" in rows[s] for s in log_steps)
