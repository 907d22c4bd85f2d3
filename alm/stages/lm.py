"""The LightningModule of every next-token stage (AudioLM semantic, coarse, fine; later MusicGen-
style LMs): a token model, a loss over the positions that follow the prefix, and the shared loaders.

A stage file supplies `make_example(sample, rng) -> {"tokens": (T,), "n_prefix": P}` — tokens
[0, P) are conditioning (no loss), the rest are predicted — and builds this module with its model.
"""

from __future__ import annotations

from typing import Any, Callable

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from alm.config import RunConfig
from alm.training.data import train_loader, val_loader
from alm.training.optim import configure_optimizers

IGNORE = -100


def example_length(example: dict) -> int:
    return len(example["tokens"])


def collate(examples: list[dict]) -> dict[str, Any]:
    """Right-pad to the longest example. inputs/targets (B, T-1) int64; targets are IGNORE on the
    prefix (the model is not asked to predict conditioning) and on padding."""
    longest = max(len(e["tokens"]) for e in examples)
    tokens = np.zeros((len(examples), longest), dtype=np.int64)
    targets = np.full((len(examples), longest), IGNORE, dtype=np.int64)
    for i, e in enumerate(examples):
        n, p = len(e["tokens"]), e.get("n_prefix", 1)
        tokens[i, :n] = e["tokens"]
        targets[i, p - 1 : n - 1] = e["tokens"][p:]
    n_real = int((targets[:, :-1] != IGNORE).sum())
    return {"inputs": torch.from_numpy(tokens[:, :-1]), "targets": torch.from_numpy(targets[:, :-1]), "_tokens": n_real}


def lm_loss(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    logits = model(batch["inputs"])  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=IGNORE)


class TokenLMStage(L.LightningModule):
    def __init__(self, cfg: RunConfig, model: torch.nn.Module, make_example: Callable,
                 sample_codes: Callable | None = None):
        super().__init__()
        self.cfg = cfg
        self.model = model
        self.make_example = make_example
        self._sample_codes = sample_codes  # (model, batch, i, seed) -> (generated, reference) codes, for audio stages

    def sample_codes(self, batch: dict[str, Any], i: int):
        return self._sample_codes(self.model, batch, i, self.cfg.seed + self.global_step)

    def configure_callbacks(self):
        from alm.training.audio_samples import audio_sample_callbacks

        return audio_sample_callbacks(self.cfg) if self._sample_codes is not None else []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = lm_loss(self.model, batch)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True, batch_size=1)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss = lm_loss(self.model, batch)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=1)

    def configure_optimizers(self):
        return configure_optimizers(self.model, self.cfg)

    def train_dataloader(self):
        return train_loader(self.trainer, self.cfg, self.make_example, collate, example_length)

    def val_dataloader(self):
        return val_loader(self.trainer, self.cfg, self.make_example, collate, example_length)
