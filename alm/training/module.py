"""The one LightningModule: any Stage (alm/stages/spec.py) trained by the spine.

It owns what every stage shares — building the model inside `configure_model` (so DeepSpeed ZeRO-3
partitions parameters as they are created: no rank ever materialises the whole model), weights from
`init_from`, frozen modules and per-group learning rates, activation checkpointing, logging at log
intervals, the loaders and audio samples. A stage only says what differs: its model, examples, loss.
"""

from __future__ import annotations

import contextlib
from typing import Any

import lightning as L
import torch

from alm.config import RunConfig
from alm.stages.spec import Stage
from alm.training.data import train_loader, val_loader
from alm.training.optim import apply_freeze, configure_optimizers


def is_partitioned(model: torch.nn.Module) -> bool:
    """Were the parameters created partitioned by DeepSpeed ZeRO-3 (zero.Init)?"""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def gathered_for_init(model: torch.nn.Module):
    """`gathered(params)`: a context in which partitioned params are whole and rank 0's writes are
    kept (broadcast to the other ranks' partitions on exit); a no-op for ordinary params."""
    if not is_partitioned(model):
        return lambda params: contextlib.nullcontext()
    import deepspeed

    return lambda params: deepspeed.zero.GatheredParameters(params, modifier_rank=0)


BLOCK_LIST_NAMES = ("blocks", "layer", "layers", "h")  # alm's; BERT / RoBERTa / AST encoder.layer; Llama; GPT-2


def block_lists(model: torch.nn.Module) -> list[torch.nn.ModuleList]:
    """The transformer blocks to checkpoint: `model.blocks`, else the innermost ModuleLists named like
    a list of blocks inside the model (both towers of a CLAP: audio.blocks and text.blocks; a
    transformers tower's encoder.layer; an HTS-AT stage's blocks, not the list of stages holding them)."""
    blocks = getattr(model, "blocks", None)
    if blocks is not None:
        return [blocks]
    found = [(name, m) for name, m in model.named_modules()
             if name.rsplit(".", 1)[-1] in BLOCK_LIST_NAMES and isinstance(m, torch.nn.ModuleList) and len(m)]
    return [m for name, m in found if not any(other.startswith(name + ".") for other, _ in found)]


def checkpoint_blocks(model: torch.nn.Module) -> int:
    """Activation checkpointing per transformer block (block_lists): each block's activations are
    recomputed in the backward pass instead of kept. Parameter names are unchanged. -> blocks wrapped."""
    from torch.utils.checkpoint import checkpoint

    lists = block_lists(model)
    if not lists:
        raise ValueError(f"trainer.activation_checkpointing: {type(model).__name__} has no list of blocks to checkpoint (a ModuleList named blocks / layer / layers / h)")
    for block in (b for blocks in lists for b in blocks):
        forward = block.forward

        def recomputed(*args, _forward=forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = recomputed
    return sum(len(blocks) for blocks in lists)


class StageModule(L.LightningModule):
    def __init__(self, cfg: RunConfig, stage: Stage):
        super().__init__()
        self.cfg = cfg
        self.spec = stage
        self.model: torch.nn.Module | None = None  # built in configure_model
        self.make_example = stage.make_example(cfg)

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        """Runs inside the strategy's init context (DeepSpeed ZeRO-3: zero.Init partitions every
        parameter as its module is built). Initialisation draws are identical to an unsharded build."""
        if self.model is not None:
            return
        L.seed_everything(self.cfg.seed, workers=False, verbose=False)  # identical init on every rank / strategy
        model = self.spec.model(self.cfg.model)
        gathered = gathered_for_init(model)
        if is_partitioned(model) and hasattr(model, "init_weights"):
            model.init_weights(gathered)  # the in-__init__ pass wrote into empty partitions
        if self.cfg.init_from and not self._resuming():
            from alm.training.init_from import load_export_weights

            load_export_weights(model, self.cfg, gathered)
        elif self.spec.load_pretrained is not None and not self._resuming():
            self.spec.load_pretrained(model, self.cfg, gathered)  # public weights (e.g. model.pretrained)
        apply_freeze(model, self.cfg)
        if self.cfg.trainer.activation_checkpointing:
            checkpoint_blocks(model)
        self.model = model

    def _resuming(self) -> bool:
        trainer = self._trainer
        return trainer is not None and trainer.ckpt_path is not None

    # ------------------------------------------------------------------ steps
    def _log_now(self) -> bool:
        """Log (and so synchronise across ranks) only at the trainer's log interval."""
        return self.trainer._logger_connector.should_update_logs

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.spec.loss(self.model, batch)
        if self._log_now():
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True, batch_size=1)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.spec.val_loss is not None:
            loss = self.spec.val_loss(self.model, batch, batch_idx, self.cfg.seed)
        else:
            loss = self.spec.loss(self.model, batch)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=1)

    def on_validation_epoch_end(self) -> None:
        """The stage's whole-validation metrics (Stage.val_epoch_end), equal on every rank: no sync."""
        if self.spec.val_epoch_end is None:
            return
        for name, value in self.spec.val_epoch_end(self.model, self.cfg).items():
            self.log(f"val/{name}", float(value), on_step=False, on_epoch=True, sync_dist=False, batch_size=1)

    def sample_codes(self, batch: dict[str, Any], i: int):
        """(generated, reference) codes of example i, for audio samples at validation."""
        return self.spec.sample_codes(self.model, batch, i, self.cfg.seed + self.global_step)

    # ------------------------------------------------------------------ wiring
    def configure_callbacks(self):
        if self.spec.sample_codes is None:
            return []
        from alm.training.audio_samples import audio_sample_callbacks

        return audio_sample_callbacks(self.cfg)

    def configure_optimizers(self):
        offload_on_gpu = self.cfg.trainer.offload and self.device.type == "cuda"
        return configure_optimizers(self.model, self.cfg, cpu_adam=offload_on_gpu)

    def train_dataloader(self):
        return train_loader(self.trainer, self.cfg, self.make_example, self.spec.collate, self.spec.example_length)

    def val_dataloader(self):
        return val_loader(self.trainer, self.cfg, self.make_example, self.spec.collate, self.spec.example_length)


def build_module(cfg: RunConfig) -> StageModule:
    """The LightningModule that trains cfg.stage (checks the stage's data agreement first)."""
    from alm.stages import get_stage

    stage = get_stage(cfg.stage)
    if stage.check is not None:
        stage.check(cfg)
    if cfg.init_from:
        from pathlib import Path

        from alm.training.init_from import check_compatible, weight_files

        check_compatible(cfg, Path(cfg.init_from))
        weight_files(Path(cfg.init_from))
    return StageModule(cfg, stage)
