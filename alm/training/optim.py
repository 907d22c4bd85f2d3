"""AdamW with linear warmup and cosine decay — the optimizer every stage uses."""

from __future__ import annotations

import math

import torch

from alm.config import RunConfig


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (Linear/Embedding weights); leave biases and norm gains undecayed."""
    decay, no_decay, seen = [], [], set()
    for p in module.parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def configure_optimizers(module: torch.nn.Module, cfg: RunConfig) -> dict:
    """The value for LightningModule.configure_optimizers: AdamW + per-step LambdaLR."""
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        param_groups(module, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps
    )
    total = cfg.trainer.max_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, o.warmup_steps, total, o.min_lr_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1}}
