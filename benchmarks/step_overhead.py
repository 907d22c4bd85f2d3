"""alm's training step vs a bare PyTorch loop: same model, same batch, same optimizer math.

    python benchmarks/step_overhead.py [--steps 60] [--rounds 3] [--recipe recipes/tiny/semantic.yaml]

alm side: the Trainer exactly as `alm train` builds it (StepSeed, StepMetrics with clipping and
logging of lr / grad-norm / tokens/s, periodic checkpoint callback, CSV + W&B(offline) loggers,
progress bar off), fed one fixed batch. Bare side: forward, cross-entropy, backward,
clip_grad_norm_, AdamW step, LambdaLR step, zero_grad. Both run in this process with the same
thread count, alternating rounds; the ratio of median step times is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alm.config import load_recipe  # noqa: E402
from alm.models.transformer import TransformerLM  # noqa: E402
from alm.stages.lm import IGNORE  # noqa: E402
from alm.training.module import build_module  # noqa: E402
from alm.training.optim import configure_optimizers  # noqa: E402
from alm.training.trainer import build_trainer, finish_wandb  # noqa: E402


def fixed_batch(cfg, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    b, t = cfg.data.batch_size, cfg.data.max_len - 1
    tokens = torch.randint(0, cfg.model.vocab_size - 2, (b, t + 1), generator=g)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "_tokens": b * t}


class FixedBatches(torch.utils.data.IterableDataset):
    def __init__(self, batch: dict):
        self.batch = batch

    def __iter__(self):
        i = 0
        while True:
            yield {**self.batch, "_index": i, "_corrupt": 0}
            i += 1


class Timer(L.Callback):
    """Wall time between consecutive batch starts: the whole loop (data, hooks, logging, step)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t: float | None = None

    def on_train_batch_start(self, *args) -> None:
        now = time.perf_counter()
        if self._t is not None:
            self.times.append(now - self._t)
        self._t = now


def alm_steps(cfg, batch: dict, steps: int) -> list[float]:
    with tempfile.TemporaryDirectory() as run_dir:
        cfg.run_dir = run_dir
        cfg.trainer.max_steps = steps
        cfg.trainer.ckpt_every_n_steps = 10**9  # measure steps, not checkpoint writes
        L.seed_everything(cfg.seed, verbose=False)
        module = build_module(cfg)
        module.train_dataloader = lambda: torch.utils.data.DataLoader(FixedBatches(batch), batch_size=None)
        timer = Timer()
        trainer, _ = build_trainer(cfg, extra_callbacks=(timer,))
        trainer.fit(module)
        finish_wandb(trainer)  # each round its own (offline) W&B run, as each `alm train` has
    return timer.times


def bare_steps(cfg, batch: dict, steps: int) -> list[float]:
    torch.manual_seed(cfg.seed)
    model = TransformerLM(cfg.model)
    opt = configure_optimizers(model, cfg)
    optimizer, schedule = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    model.train()
    times = []
    last = time.perf_counter()
    for _ in range(steps):
        logits = model(batch["inputs"])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=IGNORE)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val, foreach=True)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default=str(REPO / "recipes" / "tiny" / "semantic.yaml"))
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    torch.set_num_threads(a.threads)
    overrides = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.progress_bar=false",
                 "trainer.val_every_n_steps=0", f"trainer.threads={a.threads}", "data.train_shards=unused",
                 "data.tokenizer=null"]
    cfg = load_recipe(a.recipe, overrides)
    batch = fixed_batch(cfg)
    ours, bare, ratios, fastest = [], [], [], []
    for r in range(a.rounds):  # alternate, so slow drifts of the machine hit both sides alike
        b = bare_steps(cfg, batch, a.steps + a.warmup)[a.warmup :]
        o = alm_steps(load_recipe(a.recipe, overrides), batch, a.steps + a.warmup)[a.warmup :]
        bare, ours = bare + b, ours + o
        ratios.append(statistics.median(o) / statistics.median(b))
        fastest.append(min(o) / min(b))
        print(f"round {r + 1}/{a.rounds}: bare {statistics.median(b) * 1e3:.2f} ms, "
              f"alm {statistics.median(o) * 1e3:.2f} ms, ratio {ratios[-1]:.3f} (fastest steps: {fastest[-1]:.3f})",
              flush=True)
    ratio = statistics.median(ratios)
    n_params = sum(p.numel() for p in TransformerLM(cfg.model).parameters())
    print(f"\nmodel {n_params / 1e6:.2f} M params, batch {cfg.data.batch_size} x {cfg.data.max_len - 1} tokens, "
          f"{a.threads} threads, {a.rounds} x {a.steps} timed steps each")
    print(f"bare PyTorch step: median {statistics.median(bare) * 1e3:.2f} ms")
    print(f"alm step:          median {statistics.median(ours) * 1e3:.2f} ms")
    print(f"overhead ratio (alm / bare), median over rounds: {ratio:.3f}   "
          f"(rounds: {min(ratios):.3f} .. {max(ratios):.3f}; target <= 1.05)")
    # on a shared machine other processes slow some steps of either side; the fastest step of each
    # side is the least disturbed estimate
    print(f"ratio of the fastest steps (alm / bare), median over rounds: {statistics.median(fastest):.3f}")


if __name__ == "__main__":
    main()
