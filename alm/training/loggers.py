"""CSV + Weights & Biases loggers, and reading a run's metrics back.

CSV: every attempt of a run (first start, each resume) writes RUN_DIR/logs/attempt-N/metrics.csv
(Lightning's CSVLogger would delete an existing metrics.csv on restart). `read_metrics` merges the
attempts; for a step logged twice (after a kill between checkpoints) the later attempt wins.

W&B: the run id is created once and kept in RUN_DIR/wandb_id, so every resumed attempt logs into
the same W&B run. WANDB_MODE (environment) overrides wandb.mode in the recipe; `offline` writes to
RUN_DIR/wandb/ with no network (`wandb sync` uploads later).

`quiet_library_noise()` drops messages of the libraries underneath that a user of alm cannot act on
(each named below); everything else is shown, once.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import uuid
import warnings
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from alm.config import RunConfig
from alm.io import atomic_write_text

ATTEMPT = re.compile(r"^attempt-(\d+)$")


def _attempts(run_dir: Path) -> list[tuple[int, Path]]:
    root = run_dir / "logs"
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in root.iterdir() if (m := ATTEMPT.match(p.name)))


def wandb_mode(cfg: RunConfig) -> str:
    return os.environ.get("WANDB_MODE") or (cfg.wandb.mode if cfg.wandb.enabled else "disabled")


def wandb_run_id(run_dir: Path) -> str:
    """The run's W&B id: read from RUN_DIR/wandb_id, created there by global rank 0 if missing."""
    path = run_dir / "wandb_id"
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    if rank_zero_only.rank == 0:
        atomic_write_text(path, run_id + "\n")
    return run_id


# (category, message regex) of warnings alm silences: none of them asks anything of an alm user
NOISE_WARNINGS = (
    # Lightning, on any machine with SLURM installed: alm launches SLURM jobs with srun itself, and a
    # run outside srun (`alm train`, `alm launch local`) is deliberate
    (Warning, r"The `srun` command is available on your system but is not used"),
    # DeepSpeed's ZeRO collectives call a deprecated torch API, once per step per rank
    (FutureWarning, r"`torch\.distributed\.all_gather_into_tensor` is deprecated"),
    (FutureWarning, r"`torch\.distributed\._all_gather_base` is a private function"),
    (FutureWarning, r"`torch\.distributed\._reduce_scatter_base` is a private function"),
    (FutureWarning, r"`torch\.distributed\.reduce_scatter_tensor` is deprecated"),
    # Lightning's pytree helper on torch >= 2.13
    (Warning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)
# Lightning's info lines that are advertisements, about hardware alm never uses, or restate settings
NOISE_INFO = re.compile(r"^(💡 Tip:|TPU available:|HPU available:|IPU available:|initializing deepspeed distributed:"
                        r"|`Trainer\((limit_\w+|val_check_interval|overfit_batches)=[^)]*\)` was configured so)")
NOISE_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.strategies.deepspeed")


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not NOISE_INFO.match(str(record.getMessage()))


def quiet_library_noise() -> None:
    """Silence the messages listed in NOISE_WARNINGS / NOISE_INFO in this process (idempotent)."""
    for category, message in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in NOISE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropInfo) for f in logger.filters):
            logger.addFilter(_DropInfo())


def build_loggers(cfg: RunConfig) -> list:
    run_dir = Path(cfg.run_dir)
    attempts = _attempts(run_dir)
    attempt = attempts[-1][0] + 1 if attempts else 0
    if rank_zero_only.rank != 0 and attempts:
        attempt = attempts[-1][0]  # rank 0 may already have created this attempt's folder
    loggers: list = [CSVLogger(save_dir=str(run_dir), name="logs", version=f"attempt-{attempt}", flush_logs_every_n_steps=1)]
    mode = wandb_mode(cfg)
    if mode != "disabled":
        loggers.append(
            WandbLogger(
                project=cfg.wandb.project,
                entity=cfg.wandb.entity,
                name=cfg.wandb.name or run_dir.name,
                save_dir=str(run_dir),
                id=wandb_run_id(run_dir),
                resume="allow",
                offline=mode == "offline",
                config={"run_dir": str(run_dir), "stage": cfg.stage},
            )
        )
        # Lightning passes anonymous=None to wandb.init, which then warns that the setting has no effect
        loggers[-1]._wandb_init.pop("anonymous", None)
    return loggers


def read_metrics(run_dir: str | os.PathLike) -> dict[int, dict[str, float]]:
    """{step: {metric: value}} over all attempts of a run (later attempts win on overlap)."""
    merged: dict[int, dict[str, float]] = {}
    for _, path in _attempts(Path(run_dir)):
        f = path / "metrics.csv"
        if not f.is_file():
            continue
        per_attempt: dict[int, dict[str, float]] = {}
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                step = int(float(row["step"]))
                values = {k: float(v) for k, v in row.items() if k != "step" and v not in ("", None)}
                per_attempt.setdefault(step, {}).update(values)
        merged.update(per_attempt)  # a step logged again by a later attempt: the later one wins
    return dict(sorted(merged.items()))
