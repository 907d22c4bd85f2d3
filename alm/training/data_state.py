"""The data stream's position in the checkpoint, and the run's bad-data accounting.

`DataState` records, for every training batch actually trained (on_train_batch_start: Lightning
prefetches one batch ahead, so the loader's own progress is not it), the position its logical
worker reached (`batch["_state"]`, see alm.data.stream). Saving a checkpoint all-gathers every
rank's positions (every rank calls save_checkpoint in PeriodicCheckpoint.save, so the collective
is safe) together with the topology (world size, workers per rank, number of shards); on resume
each rank's train loader starts each of its workers exactly there (alm.training.data).

A resume with another topology cannot continue the same stream: per `data.on_topology_change`
it stops with an error naming both (`error`, the default) or restarts the data at the start of
the epoch the run was in (`restart_epoch`, announced in the log).

Mixtures: each batch of a weighted mixture says how many of its examples each dataset gave
(`_datasets`); the totals over all ranks since step 0 are logged at log intervals as
`train/data/<dataset>_examples` (riding on the bad-data all-reduce) and written to
RUN_DIR/data_errors.json (`dataset_examples`) at every checkpoint.

Bad data: each batch says how many samples its worker dropped and from which shard files. The
totals over all ranks go to RUN_DIR/data_errors.json at every checkpoint; once more than
`data.max_corrupt_fraction` of the samples drawn (after at least MIN_DRAWN) were bad, the run
stops with the list of bad shards.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from alm.config import RunConfig
from alm.errors import UserError
from alm.io import atomic_write_text

log = logging.getLogger(__name__)

ERRORS_FILE = "data_errors.json"
MIN_DRAWN = 100  # samples drawn (all ranks) before the corrupt fraction is judged
TOPOLOGY_CHOICES = ("error", "restart_epoch")


class DataError(UserError):
    """The training data is damaged beyond data.max_corrupt_fraction, or cannot be resumed as asked."""


def _gather(obj: Any) -> list[Any]:
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        out: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


def _merge_counts(dicts) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + int(v)
    return dict(sorted(total.items()))


class DataState(L.Callback):
    def __init__(self, cfg: RunConfig):
        if cfg.data.on_topology_change not in TOPOLOGY_CHOICES:
            raise UserError(f"key 'data.on_topology_change': expected one of {list(TOPOLOGY_CHOICES)}, "
                            f"got {cfg.data.on_topology_change!r}")
        if not 0.0 <= cfg.data.max_corrupt_fraction <= 1.0:
            raise UserError(f"key 'data.max_corrupt_fraction': expected a fraction in [0, 1], got {cfg.data.max_corrupt_fraction!r}")
        self.cfg = cfg
        self.positions: dict[int, dict[str, Any]] = {}  # this rank: logical worker -> position after its last trained batch
        self.topology: dict[str, int] | None = None  # set by the train loader
        self.restored: dict[str, Any] | None = None  # the checkpoint's data state
        self.corrupt = 0  # this rank, this attempt
        self.drawn = 0
        self.by_shard: dict[str, int] = {}
        self.dataset_names: list[str] = []  # a weighted mixture's datasets (set by the train loader); [] otherwise
        self.by_dataset: dict[str, int] = {}  # this rank, this attempt: examples trained per dataset
        self._trainer: L.Trainer | None = None

    # -- recording -----------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        position = batch.get("_state")
        if position is not None:
            self.positions[int(position.state["worker"])] = position.state
        self.corrupt += int(batch.get("_corrupt", 0))
        self.drawn += int(batch.get("_drawn", 0))
        for name, n in (batch.get("_corrupt_shards") or {}).items():
            if name not in self.by_shard:
                log.warning("data: shard %s has unreadable or corrupt samples (rank %d; see %s)", name,
                            trainer.global_rank, ERRORS_FILE)
            self.by_shard[name] = self.by_shard.get(name, 0) + int(n)
        for name, n in (batch.get("_datasets") or {}).items():
            self.by_dataset[name] = self.by_dataset.get(name, 0) + int(n)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches or trainer.global_step % trainer.log_every_n_steps:
            return  # judged at log intervals only: the all-reduce and its host read are a device sync on GPUs
        names = self.dataset_names
        counts = torch.tensor([float(self.corrupt), float(self.drawn)] + [float(self.by_dataset.get(n, 0)) for n in names],
                              dtype=torch.float64)
        if trainer.world_size > 1:  # every rank must take the same decision (one all-reduce, datasets included)
            counts = trainer.strategy.reduce(counts.to(pl_module.device), reduce_op="sum").cpu()
        base = self.restored.get("errors", {}) if self.restored else {}
        before = base.get("dataset_examples", {})
        for i, name in enumerate(names):  # a mixture: examples trained per dataset, all ranks, since step 0
            pl_module.log(f"train/data/{name}_examples", float(counts[2 + i]) + float(before.get(name, 0)),
                          on_step=True, on_epoch=False, batch_size=1)
        corrupt = int(counts[0]) + int(base.get("corrupt_samples", 0))
        drawn = int(counts[1]) + int(base.get("drawn_samples", 0))
        limit = self.cfg.data.max_corrupt_fraction
        if drawn >= MIN_DRAWN and corrupt > limit * drawn:
            report = self.errors_report(trainer, stopped=True)
            shards = ", ".join(f"{k} ({v})" for k, v in sorted(report["shards"].items(), key=lambda kv: -kv[1])[:10])
            raise DataError(f"{corrupt} of {drawn} samples drawn were unreadable or corrupt ({corrupt / drawn:.1%} > "
                            f"data.max_corrupt_fraction={limit}); bad shards: {shards or '?'}; "
                            f"see {Path(self.cfg.run_dir) / ERRORS_FILE}")

    def errors_report(self, trainer, stopped: bool = False) -> dict[str, Any]:
        """Totals of all ranks (a collective: every rank calls it), written by global rank 0."""
        mine = {"corrupt": self.corrupt, "drawn": self.drawn, "shards": self.by_shard, "datasets": self.by_dataset}
        every = _gather(mine)
        base = self.restored.get("errors", {}) if self.restored else {}
        report = {
            "step": trainer.global_step,
            "corrupt_samples": sum(e["corrupt"] for e in every) + int(base.get("corrupt_samples", 0)),
            "drawn_samples": sum(e["drawn"] for e in every) + int(base.get("drawn_samples", 0)),
            "shards": _merge_counts([base.get("shards", {})] + [e["shards"] for e in every]),
            "max_corrupt_fraction": self.cfg.data.max_corrupt_fraction,
            "stopped": stopped,
        }
        if self.dataset_names:  # a weighted mixture: examples trained per dataset, all ranks, since step 0
            report["dataset_examples"] = _merge_counts([base.get("dataset_examples", {})] + [e["datasets"] for e in every])
        if trainer.is_global_zero:
            atomic_write_text(Path(self.cfg.run_dir) / ERRORS_FILE, json.dumps(report, indent=1))
        return report

    # -- checkpoint ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        if trainer is None or self.topology is None:
            return {}
        every = _gather({"rank": trainer.global_rank, "positions": self.positions})
        errors = self.errors_report(trainer)
        state = {
            "version": 1,
            **self.topology,
            "positions": {str(e["rank"]): {str(k): v for k, v in e["positions"].items()} for e in every},
            "errors": {k: errors[k] for k in ("corrupt_samples", "drawn_samples", "shards", "dataset_examples") if k in errors},
        }
        return {"json": json.dumps(state)}  # a string: loads with torch.load(weights_only=True)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "json" in state_dict:
            self.restored = json.loads(state_dict["json"])


def resume_positions(state: dict[str, Any], now: dict[str, int], rank: int, batches: int,
                     on_change: str) -> dict[int, dict[str, Any]]:
    """This rank's worker positions to start from, given the checkpoint's data `state` and the
    topology `now` ({world_size, num_workers, shards}); `batches` = batches this rank consumed."""
    old = {k: int(state[k]) for k in ("world_size", "num_workers", "shards")}
    if old == now:
        return {int(k): v for k, v in state["positions"].get(str(rank), {}).items()}
    def show(t: dict[str, int]) -> str:
        return f"{t['world_size']} rank(s) x {t['num_workers']} worker(s) over {t['shards']} shard(s)"
    if on_change != "restart_epoch":
        raise DataError(f"the checkpoint's data stream was read by {show(old)}, this run has {show(now)}: it cannot "
                        "continue exactly; resume with the old topology, or set data.on_topology_change=restart_epoch "
                        "to restart the data at the start of the epoch the run was in")
    epochs = [int(p["epoch"]) for r in state["positions"].values() for p in r.values()]
    epoch = min(epochs, default=0)
    if rank == 0:
        log.warning("data topology changed (%s -> %s): data.on_topology_change=restart_epoch restarts the data "
                    "at the start of epoch %d", show(old), show(now), epoch)
    w = now["num_workers"]
    mixed = [p["mix"] for r in state["positions"].values() for p in r.values() if "mix" in p]
    fresh = {"unit": 0, "offset": 0, "window": 0, "buffer": [], "rng": None}
    if mixed:  # a weighted mixture: each dataset restarts at the start of its own epoch, the chooser afresh
        starts = [min(int(m[d]["epoch"]) for m in mixed) for d in range(len(mixed[0]))]
        return {l: {"epoch": epoch, "mix": [{"epoch": e, **fresh} for e in starts], "chooser": None,
                    "local": max(0, (batches - l + w - 1) // w)} for l in range(w)}
    return {l: {"epoch": epoch, **fresh, "local": max(0, (batches - l + w - 1) // w)} for l in range(w)}
