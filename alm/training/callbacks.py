"""Callbacks every run uses: per-batch RNG seeding, step metrics, and a progress bar with a total."""

from __future__ import annotations

import random
import sys
import time
import zlib

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


def batch_seed(seed: int, rank: int, index: int) -> int:
    return zlib.crc32(f"{seed}/{rank}/{index}".encode())


class StepSeed(L.Callback):
    """Reseed torch / numpy / random before every training batch from (seed, rank, batch index).

    The random draws of a step (dropout masks, sampled noise) are then a function of where the
    step is in the run, not of the history of the process, so a resumed run draws exactly what the
    uninterrupted run drew — no generator state has to travel in the checkpoint, and it stays
    exact whatever the loader workers or Lightning's prefetching consumed before.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        s = batch_seed(self.seed, trainer.global_rank, int(batch["_index"]))
        torch.manual_seed(s)  # also seeds every CUDA device
        np.random.seed(s)
        random.seed(s)


class StepMetrics(L.Callback):
    """Log learning rate, gradient norm (before clipping), tokens/s and corrupt samples at every
    log step (trainer.log_every_n_steps, counted in optimizer steps).

    Without DeepSpeed this callback also does the gradient clipping (the Trainer is built with
    gradient_clip_val=None), so the norm it logs is the one clipping computed, in one pass.
    DeepSpeed clips inside its engine and reports the global norm of its partitioned gradients.
    Nothing here reads a device value between log steps: the norm stays a tensor until it is logged,
    and tokens/s is averaged over the steps since the previous log step.
    """

    def __init__(self, clip_val: float = 0.0) -> None:
        self.clip_val = clip_val
        self._t0: float | None = None
        self._tokens = 0
        self._grad_norm: torch.Tensor | None = None
        self._corrupt = 0
        self._lr = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()
        self._tokens += int(batch.get("_tokens", 0))
        self._corrupt += int(batch.get("_corrupt", 0))
        if batch_idx % trainer.accumulate_grad_batches == 0:  # the lr this optimizer step uses
            self._lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if getattr(trainer.strategy, "deepspeed_engine", None) is not None:
            return
        params = [p for p in pl_module.parameters() if p.grad is not None]
        if not params:
            return
        if self.clip_val > 0:
            self._grad_norm = torch.nn.utils.clip_grad_norm_(params, self.clip_val, foreach=True)
        else:
            self._grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # inside gradient accumulation
        if trainer.global_step % trainer.log_every_n_steps:
            return  # not a log step (Lightning sends logged values to the loggers at the same steps)
        now = time.perf_counter()
        metrics = {"train/lr": self._lr}
        engine = getattr(trainer.strategy, "deepspeed_engine", None)
        if engine is not None:
            norm = engine.get_global_grad_norm()
            if norm is not None:
                metrics["train/grad_norm"] = float(norm)
        elif self._grad_norm is not None:
            metrics["train/grad_norm"] = float(self._grad_norm)
        if self._t0 is not None and now > self._t0:
            # tokens this rank consumed since the last log step, times the number of ranks
            metrics["train/tokens_per_s"] = self._tokens * trainer.world_size / (now - self._t0)
        metrics["data/corrupt_samples"] = float(self._corrupt)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=False, sync_dist=False, batch_size=1)
        self._t0, self._tokens = now, 0


class StepProgressBar(TQDMProgressBar):
    """One tqdm bar for the run, over optimizer steps up to trainer.max_steps (the stream has no
    epoch length). Validation has no bar of its own: its loss appears on this one. The bar reads
    the logged values (a device synchronisation) only every `refresh_rate` steps."""

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics

    def on_train_start(self, trainer, pl_module) -> None:
        self.train_progress_bar = Tqdm(
            desc="train",
            total=trainer.max_steps,
            initial=trainer.global_step,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer, *args) -> None:
        pass  # one bar for the whole run, not one per pass over the data

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = trainer.global_step
        if n != self.train_progress_bar.n and (n % self.refresh_rate == 0 or n >= trainer.max_steps):
            self.train_progress_bar.n = n
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            self.train_progress_bar.refresh()

    def on_validation_start(self, trainer, pl_module) -> None:
        pass

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        pass

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        pass

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._train_progress_bar is not None:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
