"""Train a recipe (any strategy, any number of processes), then compute the TRAINED module's logits
on a fixed probe batch and save them (rank 0) — to compare with what `alm export` produces.

Under ZeRO-3 the trained weights are partitioned across ranks; GatheredParameters assembles them
on every rank for the probe forward.

usage: python train_and_probe.py RECIPE OUT.pt key=value ...
"""

import contextlib
import sys

import torch

from alm.config import load_recipe
from alm.data.cache import resolve_synthetic
from alm.training.trainer import train


def main() -> None:
    recipe, out, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    cfg = load_recipe(recipe, overrides)
    resolve_synthetic(cfg)
    trainer = train(cfg)
    module = trainer.lightning_module
    probe = torch.arange(24).remainder(cfg.model.vocab_size - 2)[None].repeat(2, 1)
    probe[1] = probe[1].flip(0)
    gather = contextlib.nullcontext()
    if cfg.trainer.strategy == "deepspeed" and cfg.trainer.zero_stage == 3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    with gather, torch.no_grad():
        module.model.eval()
        logits = module.model(probe.to(module.device)).float().cpu()
    if trainer.is_global_zero:
        torch.save({"probe": probe, "logits": logits, "step": trainer.global_step}, out)


if __name__ == "__main__":
    main()
