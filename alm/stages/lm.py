"""What every next-token stage shares (AudioLM semantic, coarse, fine; later MusicGen-style LMs):
the batch layout and the loss over the positions that follow the prefix. Plain functions.

A stage's make_example returns {"tokens": (T,), "n_prefix": P}: tokens [0, P) are conditioning (no
loss), the rest are predicted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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
