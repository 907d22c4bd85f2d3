"""AdamW with linear warmup and cosine decay, over parameter groups from the recipe.

`optim.groups` (a list, first match wins) gives parameters matched by a glob over their names
their own lr / weight decay, or freezes them (e.g. a pretrained text encoder):

    optim:
      groups:
        - {params: "text_encoder.*", freeze: true}
        - {params: "embed.*", lr: 1.0e-4}

Inside each group, matrices (Linear / Embedding weights) decay and biases / norm gains do not.
"""

from __future__ import annotations

import fnmatch
import math

import torch

from alm.config import RunConfig
from alm.errors import UserError


def _group_of(name: str, cfg: RunConfig) -> int | None:
    for i, g in enumerate(cfg.optim.groups):
        if fnmatch.fnmatchcase(name, g.params):
            return i
    return None


def check_groups(model: torch.nn.Module, cfg: RunConfig) -> None:
    """Every optim.groups pattern must match some parameter (a typo would silently train everything)."""
    names = [n for n, _ in model.named_parameters()]
    for i, g in enumerate(cfg.optim.groups):
        if not any(fnmatch.fnmatchcase(n, g.params) for n in names):
            raise UserError(f"optim.groups[{i}].params={g.params!r} matches no parameter of the "
                            f"{type(model).__name__} (names look like {', '.join(names[:3])})")


def apply_freeze(model: torch.nn.Module, cfg: RunConfig) -> int:
    """requires_grad=False for the parameters of frozen groups -> number of frozen tensors."""
    check_groups(model, cfg)
    frozen = 0
    for name, p in model.named_parameters():
        i = _group_of(name, cfg)
        if i is not None and cfg.optim.groups[i].freeze:
            p.requires_grad_(False)
            frozen += 1
    return frozen


def param_groups(module: torch.nn.Module, cfg: RunConfig) -> list[dict]:
    """Optimizer groups: per recipe group (and the default), matrices with decay, the rest without."""
    o = cfg.optim
    buckets: dict[tuple, list] = {}
    seen = set()
    for name, p in module.named_parameters():
        if not p.requires_grad or id(p) in seen:  # frozen, or a tied weight seen already
            continue
        seen.add(id(p))
        i = _group_of(name, cfg)
        g = o.groups[i] if i is not None else None
        lr = g.lr if g is not None and g.lr is not None else o.lr
        wd = g.weight_decay if g is not None and g.weight_decay is not None else o.weight_decay
        decays = len(getattr(p, "ds_shape", p.shape)) >= 2  # a ZeRO-3 partition is flat: use its real shape
        decays = decays and not getattr(p, "no_weight_decay", False)  # a model's own mark (audiopalm's LoRA rows)
        buckets.setdefault((-1 if i is None else i, decays), []).append((p, lr, wd if decays else 0.0))
    groups = []
    for key in sorted(buckets, key=lambda k: (k[0] != -1, k[0], not k[1])):  # default group first, decay first
        params = buckets[key]
        groups.append({"params": [p for p, _, _ in params], "lr": params[0][1], "weight_decay": params[0][2]})
    return groups


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def configure_optimizers(module: torch.nn.Module, cfg: RunConfig, cpu_adam: bool = False) -> dict:
    """The value for LightningModule.configure_optimizers: AdamW + per-step LambdaLR (each group
    follows the schedule from its own peak lr). cpu_adam: DeepSpeed's vectorised CPU AdamW, for
    ZeRO offload on GPUs (its one-time JIT build is worth it there; on CPU-only runs torch's AdamW
    avoids an ~85 s build)."""
    o = cfg.optim
    groups = param_groups(module, cfg)
    if not groups:
        raise UserError("optim.groups freeze every parameter: nothing to train")
    if cpu_adam:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, adamw_mode=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    total = cfg.trainer.max_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, o.warmup_steps, total, o.min_lr_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1}}
