"""The one place a config becomes a Lightning Trainer, and the `alm train` entry point.

Same code on a laptop CPU and on a multi-node GPU cluster: `trainer.accelerator=auto` picks
CUDA when present; `trainer.strategy` picks DDP or DeepSpeed ZeRO (stage 1/2/3, optional CPU
offload); on CPU, DDP uses gloo and DeepSpeed runs through alm.training.deepspeed_cpu.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

from alm.config import RunConfig, from_yaml_text, to_yaml
from alm.errors import UserError
from alm.io import atomic_write_text, fsync_dir
from alm.training.callbacks import StepMetrics, StepProgressBar, StepSeed
from alm.training.checkpoint import Checkpoint, PeriodicCheckpoint, fit_path, read_meta, remove_partial
from alm.training.data_state import DataState
from alm.training.loggers import build_loggers, quiet_library_noise
from alm.training.preemption import Preemption, write_state
from alm.training.preflight import ResumePlan, preflight

log = logging.getLogger(__name__)


@rank_zero_only
def say(message: str) -> None:
    """One line for the user, from global rank 0 only (the `alm` logger prints INFO)."""
    log.info(message)


def resolve_accelerator(cfg: RunConfig) -> str:
    acc = cfg.trainer.accelerator
    if acc == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError("trainer.accelerator=gpu but no CUDA device is visible: use trainer.accelerator=cpu or auto")
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
        # offload on GPUs trains with DeepSpeedCPUAdam (alm.training.optim); on CPU torch's AdamW is kept
        "zero_force_ds_cpu_optimizer": accelerator == "gpu",
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
    quiet_library_noise()
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
        callbacks.append(StepProgressBar(refresh_rate=t.log_every_n_steps))
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
    skip_lightning_sigterm_broadcast(trainer)
    return trainer, ckpt


def skip_lightning_sigterm_broadcast(trainer: L.Trainer) -> None:
    """Lightning 2.6 broadcasts a SIGTERM flag from rank 0 and reads it on the host (`.item()`)
    before every training batch when world_size > 1: a device synchronisation per micro-batch.
    While training runs alm's Preemption callback handles SIGTERM (agreed across ranks without a
    sync, and with a checkpoint) in place of Lightning's handler, so that flag stays 0: skip it."""
    loop = trainer.fit_loop.epoch_loop
    if callable(getattr(loop, "_broadcast_sigterm_tensor", None)):
        loop._broadcast_sigterm_tensor = lambda: None


RESUME_ENV = "ALM_RESUME_CHOICE"  # rank 0's choice, inherited by the ranks Lightning starts from fit()


def agree_on_resume(trainer: L.Trainer, plan: ResumePlan) -> ResumePlan:
    """Global rank 0's resume plan on every rank (a stale listing of run_dir, e.g. on NFS after a
    requeue, must not make ranks resume from different checkpoints).

    Lightning creates the process group inside fit() (strategy.setup_environment) but reads
    ckpt_path, passed to fit(), later in that same call, with no hook to change it in between. So
    the ranks agree before fit():
    * launchers that start every rank themselves (SLURM, torchrun): the strategy's environment is
      set up here, as fit() would (fit() then finds the process group and reuses it), and rank 0's
      plan is broadcast;
    * `alm train trainer.devices=N` on one machine, where Lightning starts ranks 1..N-1 from inside
      fit(): rank 0 decides before they exist and they inherit its plan in ALM_RESUME_CHOICE.
    PeriodicCheckpoint.setup then verifies inside fit() that every rank resumes the same checkpoint.
    """
    if trainer.world_size == 1:
        return plan
    mine = {"checkpoint": str(plan.checkpoint.path) if plan.checkpoint else None, "restart": plan.restart}
    inherited = os.environ.get(RESUME_ENV)
    if inherited and json.loads(inherited).get("pid") == os.getppid():
        chosen = json.loads(inherited)
    elif not trainer.strategy.cluster_environment.creates_processes_externally:
        os.environ[RESUME_ENV] = json.dumps({**mine, "pid": os.getpid()})
        return plan
    else:
        trainer.strategy.setup_environment()
        chosen = trainer.strategy.broadcast(mine, src=0)
    if chosen["checkpoint"] == mine["checkpoint"]:
        return plan
    path = chosen["checkpoint"]
    ckpt = Checkpoint(int(read_meta(Path(path)).get("step", -1)), Path(path), read_meta(Path(path))) if path else None
    return ResumePlan(ckpt, restart=chosen["restart"])


@rank_zero_only
def prepare_run_dir(cfg: RunConfig, plan: ResumePlan) -> None:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if plan.restart:
        moved = move_previous_run(run_dir)
        if moved:
            rank_zero_info(f"resume=restart: the previous run's files are in {moved}")
    removed = remove_partial(run_dir)
    if removed:
        rank_zero_info(f"removed unfinished checkpoint writes: {', '.join(removed)}")
    path = run_dir / "config.yaml"
    text = to_yaml(cfg)
    if path.is_file() and path.read_text() != text:
        diff = difflib.unified_diff(path.read_text().splitlines(), text.splitlines(), "previous", "now", lineterm="", n=0)
        rank_zero_info("the run's config changed since its last start:\n" + "\n".join(diff))
        atomic_write_text(run_dir / "config.previous.yaml", path.read_text())
    atomic_write_text(path, text)


PREVIOUS_RUN = ("checkpoints", "logs", "samples", "wandb", "wandb_id", "state.json", "config.yaml", "config.previous.yaml")


def move_previous_run(run_dir: Path) -> Path | None:
    """resume=restart: move what a previous run left in run_dir to run_dir/replaced/<UTC time>/."""
    present = [name for name in PREVIOUS_RUN if (run_dir / name).exists()]
    if not present:
        return None
    dest = run_dir / "replaced" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    n = 1
    while dest.exists():
        dest = dest.with_name(f"{dest.name.split('.')[0]}.{n}")
        n += 1
    dest.mkdir(parents=True)
    for name in present:
        os.replace(run_dir / name, dest / name)
    fsync_dir(run_dir)
    return dest


def train(cfg: RunConfig, extra_callbacks: tuple = ()) -> L.Trainer:
    """Train `cfg` (resuming from run_dir per cfg.resume). Returns the finished Trainer.

    User errors (bad paths, shards, an incompatible checkpoint) are raised by preflight() before
    anything is written; the run dir of a run that never started is left as it was."""
    if cfg.trainer.threads > 0:
        torch.set_num_threads(cfg.trainer.threads)
    if cfg.data.val_shards == "auto":
        from alm.data.splits import auto_val_spec

        cfg.data.val_shards = auto_val_spec(cfg.data.train_shards)
    plan = preflight(cfg)
    from alm.data.provenance import resolve_provenance
    from alm.training.module import build_module

    for line in resolve_provenance(cfg):  # tokenizer / codec agree with what made the shards
        say(line)

    # the stage's checks (tokenizer / codec / model agreement, init_from) run here, before anything
    # is written; the model itself is built in configure_model (sharded under ZeRO-3)
    module = build_module(cfg)
    check_topology(cfg, plan.checkpoint)
    prepare_run_dir(cfg, plan)
    L.seed_everything(cfg.seed, workers=False, verbose=False)  # identical init on every rank / strategy
    trainer, ckpt = build_trainer(cfg, extra_callbacks)
    plan = agree_on_resume(trainer, plan)
    ckpt.resume_from(plan.checkpoint)
    ckpt_path = fit_path(plan.checkpoint.path) if plan.checkpoint else None
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


def check_topology(cfg: RunConfig, ckpt: Checkpoint | None) -> None:
    """A resume with another number of ranks or loader workers cannot continue the same data stream:
    an error before anything starts, unless data.on_topology_change=restart_epoch (the train loader
    then restarts the data at the start of the epoch; alm.training.data_state.resume_positions)."""
    if ckpt is None:
        return
    world, workers = cfg.trainer.devices * cfg.trainer.num_nodes, max(1, cfg.data.num_workers)
    old = (ckpt.meta.get("world_size", world), ckpt.meta.get("num_workers", workers))
    if old == (world, workers) or cfg.data.on_topology_change == "restart_epoch":
        return
    raise UserError(f"{ckpt.path.name}'s data stream was read by {old[0]} rank(s) x {old[1]} worker(s), this run has "
                    f"{world} rank(s) x {workers} worker(s): it cannot continue exactly; resume with the old topology, "
                    "or set data.on_topology_change=restart_epoch to restart the data at the start of the epoch")


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
