"""Train a recipe with a probe: record, per rank, the parameter bytes resident right after
configure_model and as the DeepSpeed engine holds them, and (rank 0) the whole initial weights.

usage: python probe_params.py RECIPE OUT_PREFIX key=value ...
writes OUT_PREFIX.rank{R}.json ({"after_configure_model": bytes, "engine_partition": bytes,
"full_model": bytes}) and OUT_PREFIX.init.pt (rank 0: the weights at the start of fit, gathered).
"""

import contextlib
import json
import sys

import lightning as L
import torch

from alm.config import load_recipe
from alm.data.cache import resolve_synthetic
from alm.training.module import build_module
from alm.training.trainer import build_trainer


def resident_bytes(params) -> tuple[int, int]:
    """(bytes this rank holds, bytes of the whole tensors) over distinct parameters."""
    local = full = 0
    for p in {id(p): p for p in params}.values():
        if hasattr(p, "ds_tensor"):  # ZeRO-3: this rank's partition
            local += p.ds_tensor.numel() * p.ds_tensor.element_size()
            full += p.ds_numel * p.ds_tensor.element_size()
        else:
            local += p.numel() * p.element_size()
            full += p.numel() * p.element_size()
    return local, full


class Probe(L.Callback):
    def __init__(self, out: str, record: dict):
        self.out, self.record = out, record

    def on_fit_start(self, trainer, module) -> None:
        engine = getattr(trainer.strategy, "deepspeed_engine", None)
        params = list((engine.module if engine is not None else module).parameters())
        self.record["engine_partition"], self.record["full_model"] = resident_bytes(params)
        with open(f"{self.out}.rank{trainer.global_rank}.json", "w") as f:
            json.dump(self.record, f)
        gather = contextlib.nullcontext()
        if any(hasattr(p, "ds_id") for p in module.model.parameters()):
            import deepspeed

            gather = deepspeed.zero.GatheredParameters(list(module.model.parameters()), modifier_rank=None)
        with gather:
            state = {k: v.detach().clone().float() for k, v in module.model.state_dict().items()}
        if trainer.is_global_zero:
            torch.save(state, f"{self.out}.init.pt")


def main() -> None:
    recipe, out, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    cfg = load_recipe(recipe, overrides)
    resolve_synthetic(cfg)
    module = build_module(cfg)
    record: dict = {}
    configure = module.configure_model

    def measured_configure_model():
        configure()
        record["after_configure_model"] = resident_bytes(module.model.parameters())[0]

    module.configure_model = measured_configure_model
    trainer, _ = build_trainer(cfg, extra_callbacks=(Probe(out, record),))
    trainer.fit(module)


if __name__ == "__main__":
    main()
