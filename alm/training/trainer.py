"""The one place a config becomes a Lightning Trainer, and the `alm train` entry point.

Same code on a laptop CPU and on a multi-node GPU cluster: `trainer.accelerator=auto` picks
CUDA when present; `trainer.strategy` picks DDP or DeepSpeed ZeRO (stage 1/2/3, optional CPU
offload); on CPU, DDP uses gloo and DeepSpeed runs through alm.training.deepspeed_cpu.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn

from alm.config import RunConfig, from_yaml_text, to_yaml
from alm.io import atomic_write_text
from alm.stages import stage_builder
from alm.training.callbacks import StepMetrics, StepProgressBar, StepSeed
from alm.training.checkpoint import PeriodicCheckpoint, fit_path, latest_checkpoint, read_meta, remove_partial
from alm.training.data_state import DataState
from alm.training.loggers import build_loggers
from alm.training.preemption import Preemption, write_state

log = logging.getLogger(__name__)


def resolve_accelerator(cfg: RunConfig) -> str:
    acc = cfg.trainer.accelerator
    if acc == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise RuntimeError("trainer.accelerator=gpu but no CUDA device is visible (use trainer.accelerator=cpu)")
    return "gpu" if acc in ("gpu", "cuda") else "cpu"


def deepspeed_config(cfg: RunConfig, accelerator: str) -> dict:
    """The DeepSpeed config dict (Lightning adds precision, accumulation and clipping from the Trainer)."""
    t = cfg.trainer
    zero: dict = {"stage": t.zero_stage, "contiguous_gradients": True, "overlap_comm": accelerator == "gpu"}
    if t.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": accelerator == "gpu"}
        if t.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": accelerator == "gpu"}
    return {
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,  # keep our torch AdamW also when offloading
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_clipping": t.gradient_clip_val,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def build_strategy(cfg: RunConfig, accelerator: str):
    if cfg.trainer.strategy == "ddp":
        if cfg.trainer.devices * cfg.trainer.num_nodes == 1:  # one process: no DDP wrapper, no gradient all-reduce
            return SingleDeviceStrategy(device=torch.device("cuda", 0) if accelerator == "gpu" else torch.device("cpu"))
        return DDPStrategy(process_group_backend="nccl" if accelerator == "gpu" else "gloo")
    if accelerator == "cpu":
        from alm.training.deepspeed_cpu import CPUDeepSpeedStrategy

        return CPUDeepSpeedStrategy(config=deepspeed_config(cfg, accelerator), process_group_backend="gloo")
    return DeepSpeedStrategy(config=deepspeed_config(cfg, accelerator))


def build_trainer(cfg: RunConfig, extra_callbacks: tuple = ()) -> tuple[L.Trainer, PeriodicCheckpoint]:
    t = cfg.trainer
    accelerator = resolve_accelerator(cfg)
    deepspeed = t.strategy == "deepspeed"
    ckpt = PeriodicCheckpoint(cfg, t.ckpt_every_n_steps, t.keep_last_k)
    callbacks = [
        StepSeed(cfg.seed),
        StepMetrics(0.0 if deepspeed else t.gradient_clip_val),
        DataState(cfg),  # before ckpt: the data positions of the batches trained go into each checkpoint
        ckpt,
        Preemption(ckpt, cfg.run_dir),  # after ckpt: acts on the checkpoint a signal asked for
        *extra_callbacks,
    ]
    if t.progress_bar:
        callbacks.append(StepProgressBar())
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None
    validate = cfg.data.val_shards is not None and t.val_every_n_steps > 0
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(cfg, accelerator),
        precision=t.precision,
        max_steps=t.max_steps,
        max_epochs=-1,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=None,  # StepMetrics clips (DDP); DeepSpeed clips from its config
        val_check_interval=t.val_every_n_steps * t.accumulate_grad_batches if validate else None,
        check_val_every_n_epoch=None,
        limit_val_batches=t.val_batches if validate else 0,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.progress_bar,
        enable_checkpointing=False,  # PeriodicCheckpoint writes atomic checkpoints itself
        enable_model_summary=t.progress_bar,
        callbacks=callbacks,
        logger=build_loggers(cfg),
        use_distributed_sampler=False,  # the stream splits data by rank itself
        default_root_dir=cfg.run_dir,
        plugins=plugins,
    )
    return trainer, ckpt


def resume_from(cfg: RunConfig) -> str | None:
    """The checkpoint to resume from per `resume` (auto | never | PATH), validated against the run."""
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        step_dir = latest_checkpoint(cfg.run_dir)
        if step_dir is None:
            return None
    else:
        step_dir = Path(cfg.resume)
        if not step_dir.exists():
            raise FileNotFoundError(f"resume={cfg.resume}: no such checkpoint")
        if step_dir.is_file():
            step_dir = step_dir.parent
    meta = read_meta(step_dir)
    if meta.get("strategy") and meta["strategy"] != cfg.trainer.strategy:
        raise ValueError(
            f"checkpoint {step_dir} was written with trainer.strategy={meta['strategy']}, this run uses "
            f"{cfg.trainer.strategy}; resume with the same strategy (or export it and start a new run)"
        )
    if meta.get("world_size") and meta["world_size"] != cfg.trainer.devices * cfg.trainer.num_nodes:
        rank_zero_warn(
            f"resuming {step_dir} (written by {meta['world_size']} processes) with "
            f"{cfg.trainer.devices * cfg.trainer.num_nodes}: training continues, but the data order from here on "
            "differs from an uninterrupted run"
        )
    return fit_path(step_dir)


@rank_zero_only
def prepare_run_dir(cfg: RunConfig) -> None:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    removed = remove_partial(run_dir)
    if removed:
        rank_zero_info(f"removed unfinished checkpoint writes: {', '.join(removed)}")
    path = run_dir / "config.yaml"
    text = to_yaml(cfg)
    if path.is_file() and path.read_text() != text:
        diff = difflib.unified_diff(path.read_text().splitlines(), text.splitlines(), "previous", "now", lineterm="", n=0)
        rank_zero_warn("the run's config changed since its last start:\n" + "\n".join(diff))
        atomic_write_text(run_dir / "config.previous.yaml", path.read_text())
    atomic_write_text(path, text)


def train(cfg: RunConfig) -> L.Trainer:
    """Train `cfg` (resuming from run_dir per cfg.resume). Returns the finished Trainer."""
    if cfg.trainer.threads > 0:
        torch.set_num_threads(cfg.trainer.threads)
    prepare_run_dir(cfg)
    ckpt_path = resume_from(cfg)
    L.seed_everything(cfg.seed, workers=False, verbose=False)  # identical init on every rank / strategy
    module = stage_builder(cfg.stage)(cfg)
    trainer, _ = build_trainer(cfg)
    if ckpt_path:
        rank_zero_info(f"resuming from {ckpt_path}")
    write_state(cfg.run_dir, "running", stage=cfg.stage, max_steps=cfg.trainer.max_steps, resumed_from=ckpt_path)
    try:
        trainer.fit(module, ckpt_path=ckpt_path)
    except BaseException as exc:
        write_state(cfg.run_dir, "failed", step=trainer.global_step, error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    if trainer.global_step >= cfg.trainer.max_steps:
        write_state(cfg.run_dir, "done", step=trainer.global_step)
    elif trainer.interrupted:
        write_state(cfg.run_dir, "interrupted", step=trainer.global_step)
    finish_wandb(trainer)
    for callback in trainer.callbacks:  # after fit() returned: metrics, state and W&B are written
        if isinstance(callback, Preemption):
            callback.requeue_if_pending()
    return trainer


def finish_wandb(trainer: L.Trainer) -> None:
    """Close this process's W&B run (several trainings in one process each get their own run)."""
    from lightning.pytorch.loggers import WandbLogger

    if trainer.is_global_zero and any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()


def config_from_checkpoint(step_dir: str | os.PathLike) -> RunConfig:
    path = Path(step_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{step_dir}: no config.yaml (not an alm checkpoint directory)")
    return from_yaml_text(path.read_text(), str(path))
