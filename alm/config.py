"""Run configuration: typed dataclasses, loaded from one YAML recipe plus `key=value` overrides.

A recipe is complete and flat: one YAML file per run, no includes, no defaults lists. Loading it
validates every key against the dataclasses below (and the stage's model config), so a typo, a
wrong type or a missing required value stops the run with an error naming the key and the file.

The dotted names of these fields are public interface: `alm train RECIPE trainer.max_steps=10`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import StringNode

from alm.stages import STAGE_NAMES


from alm.errors import UserError


class RecipeError(UserError):
    """A recipe or override is invalid; the message names the key and where it came from."""


@dataclass
class TrainerConfig:
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1  # processes (GPUs) per node
    num_nodes: int = 1
    strategy: str = "ddp"  # ddp | deepspeed
    zero_stage: int = 2  # DeepSpeed ZeRO stage 1 | 2 | 3 (strategy=deepspeed only)
    offload: bool = False  # ZeRO: optimizer state (and params at stage 3) in CPU memory
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed | bf16-true
    max_steps: int = MISSING  # optimizer steps
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 1.0  # 0 disables clipping
    ckpt_every_n_steps: int = 1000
    keep_last_k: int = 3  # periodic checkpoints kept in run_dir/checkpoints
    val_every_n_steps: int = 1000  # 0 disables validation
    val_batches: int = 10  # batches per rank per validation
    log_every_n_steps: int = 1
    progress_bar: bool = True
    audio_samples: int = 0  # stages that make audio: examples generated, decoded and logged at each validation
    threads: int = 0  # torch intra-op threads per process; 0 = torch's default
    activation_checkpointing: bool = False  # recompute each transformer block in the backward pass


@dataclass
class DataConfig:
    # Shards: a directory, a glob ("dir/train-*.tar"), a brace pattern ("dir/train-{000000..000009}.tar"),
    # several of those separated by "::", or "synthetic" = the built-in generated set (made once, cached);
    # a weighted mixture "a/*.tar @3 :: b/*.tar @1" or a list of "SHARDS @W" / {shards, weight} (alm.data.shards).
    train_shards: str = MISSING
    val_shards: Optional[str] = None  # null: no validation; auto: the validation split of the train directory
    batch_size: int = 8  # examples per batch per process
    max_tokens: int = 0  # > 0: dynamic batches of at most this many padded tokens (replaces batch_size)
    max_len: int = 512  # longest example in tokens; longer sequences are randomly cropped
    num_workers: int = 2  # loader processes per training process
    shuffle_buffer: int = 500  # samples held in each worker's shuffle buffer
    tokenizer: Optional[str] = None  # directory of the tokenizer that made the tokens (exported with the model)
    codec: Optional[str] = None  # codec that made codes.npy (name, hub id or local dir); acoustic stages
    on_topology_change: str = "error"  # resuming with other devices/nodes/num_workers/shards: error | restart_epoch
    max_corrupt_fraction: float = 0.01  # stop once more than this fraction of the samples drawn were unreadable
    windows: str = "all"  # long recordings: all = every non-overlapping window per epoch; one = one random window


@dataclass
class ParamGroupConfig:
    """Parameters whose names match `params` (a glob over the model's parameter names, e.g.
    "text_encoder.*" or "blocks.0.*") train with their own lr / weight decay, or not at all."""

    params: str = MISSING
    lr: Optional[float] = None  # None: optim.lr
    weight_decay: Optional[float] = None  # None: optim.weight_decay (matrices only; never biases / norms)
    freeze: bool = False  # no gradients, not in the optimizer


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio at trainer.max_steps
    groups: list[ParamGroupConfig] = field(default_factory=list)  # first matching group wins


@dataclass
class WandbConfig:
    enabled: bool = True
    project: str = "alm"
    entity: Optional[str] = None
    mode: str = "online"  # online | offline | disabled ; the WANDB_MODE environment variable wins
    name: Optional[str] = None


@dataclass
class RunConfig:
    stage: str = MISSING  # which model family member this run trains, e.g. "semantic"
    run_dir: str = MISSING
    seed: int = 0
    resume: str = "auto"  # auto (the newest of run_dir's current branch) | never | restart | PATH of a checkpoint
    init_from: Optional[str] = None  # an alm export dir: its weights start a fresh run (fresh optimizer)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: Any = field(default_factory=DataConfig)  # DataConfig, or the stage's subclass of it
    optim: OptimConfig = field(default_factory=OptimConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    model: Any = None  # the stage's model config dataclass (Stage.model_config in alm/stages/)


_CHOICES = {
    "trainer.accelerator": ("auto", "cpu", "gpu", "cuda"),
    "trainer.strategy": ("ddp", "deepspeed"),
    "trainer.zero_stage": (1, 2, 3),
    "trainer.precision": ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true"),
    "resume": None,  # free-form, checked at run time
    "wandb.mode": ("online", "offline", "disabled"),
    "data.windows": ("all", "one"),
}
_POSITIVE = (
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.max_steps",
    "trainer.accumulate_grad_batches",
    "trainer.ckpt_every_n_steps",
    "trainer.keep_last_k",
    "trainer.log_every_n_steps",
    "data.batch_size",
    "data.max_len",
)


def schema_for(stage: str, source: str) -> DictConfig:
    """The recipe schema of `stage`: RunConfig with the stage's model (and data) config sections."""
    if stage not in STAGE_NAMES:
        raise RecipeError(f"{source}: key 'stage': unknown stage {stage!r}; expected one of {', '.join(STAGE_NAMES)}")
    from alm.stages import get_stage

    spec = get_stage(stage)
    return OmegaConf.structured(RunConfig(stage=stage, model=spec.model_config(), data=(spec.data_config or DataConfig)()))


def _error(source: str, exc: OmegaConfBaseException) -> RecipeError:
    key = getattr(exc, "full_key", None) or "?"
    msg = str(exc).splitlines()[0]
    return RecipeError(f"{source}: key '{key}': {msg}")


def load_recipe(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load and validate a recipe YAML, apply dotted `key=value` overrides, return a RunConfig."""
    path = str(path)
    if not os.path.isfile(path):
        raise RecipeError(f"{path}: recipe file not found")
    try:
        raw = OmegaConf.load(path)
    except Exception as exc:  # yaml syntax errors
        raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    return build_config(raw, path, overrides)


def build_config(raw: DictConfig, source: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    if not isinstance(raw, DictConfig):
        raise RecipeError(f"{source}: expected a mapping at the top level")
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"command line: override {item!r} is not of the form key=value")
    stage_override = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "stage"), None)
    stage = stage_override if stage_override is not None else raw.get("stage")
    if stage is None:
        raise RecipeError(f"{source}: key 'stage': missing required value")
    cfg = schema_for(str(stage), "command line" if stage_override is not None else source)
    _join_shard_lists(raw, source)
    try:
        cfg = OmegaConf.merge(cfg, raw)
    except OmegaConfBaseException as exc:
        raise _error(source, exc) from exc
    if overrides:
        try:
            cfg = OmegaConf.merge(cfg, _dotlist(cfg, overrides))
        except OmegaConfBaseException as exc:
            raise _error("command-line override", exc) from exc
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise RecipeError(f"{source}: missing required value for key(s): {', '.join(missing)}")
    try:
        run: RunConfig = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise _error(source, exc) from exc
    validate(run, source)
    return run


def _join_shard_lists(raw: DictConfig, source: str) -> None:
    """data.train_shards / data.val_shards written as a YAML list of datasets -> the one-line spec
    (alm.data.shards.mixture_parts): items 'SHARDS @WEIGHT' or {shards: SHARDS, weight: WEIGHT},
    joined by ' :: ' (items without weights: sources concatenated, as '::' always did)."""
    data = raw.get("data") if isinstance(raw, DictConfig) else None
    if not isinstance(data, DictConfig):
        return
    for key in ("train_shards", "val_shards"):
        value = data.get(key)
        if not isinstance(value, ListConfig):
            continue
        parts = []
        for i, item in enumerate(value):
            if isinstance(item, str) and item.strip():
                parts.append(item.strip())
            elif isinstance(item, DictConfig) and set(item) == {"shards", "weight"} and isinstance(item.shards, str):
                parts.append(f"{item.shards} @{item.weight}")
            else:
                raise RecipeError(f"{source}: key 'data.{key}[{i}]': expected 'SHARDS @WEIGHT' or "
                                  f"{{shards: SHARDS, weight: WEIGHT}}, got {item!r}")
        if not parts:
            raise RecipeError(f"{source}: key 'data.{key}': an empty list names no shards")
        data[key] = " :: ".join(parts)


def _dotlist(cfg: DictConfig, overrides: list[str] | tuple[str, ...]) -> DictConfig:
    """`key=value` overrides as a config. A value for a string key is kept as written when YAML would
    read it as a mapping or list (e.g. a shard mixture 'a/*.tar @3 :: b/*.tar @1', where ': ' reads as YAML)."""
    out = OmegaConf.from_dotlist(list(overrides))
    for item in overrides:
        key, value = item.split("=", 1)
        parent, _, leaf = key.rpartition(".")
        holder = OmegaConf.select(cfg, parent) if parent else cfg
        node = holder._get_node(leaf) if isinstance(holder, DictConfig) and leaf in holder else None
        if isinstance(node, StringNode) and not isinstance(OmegaConf.select(out, key), (str, type(None))):
            OmegaConf.update(out, key, value, merge=False)
    return out


def _get(run: RunConfig, dotted: str) -> Any:
    obj: Any = run
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def validate(run: RunConfig, source: str) -> None:
    """Value checks that types alone cannot express."""
    for key, choices in _CHOICES.items():
        value = _get(run, key)
        if choices is not None and value not in choices:
            raise RecipeError(f"{source}: key '{key}': expected one of {list(choices)}, got {value!r}")
    for key in _POSITIVE:
        if _get(run, key) <= 0:
            raise RecipeError(f"{source}: key '{key}': must be > 0, got {_get(run, key)!r}")
    if run.data.max_tokens < 0:
        raise RecipeError(f"{source}: key 'data.max_tokens': must be >= 0 (0 = fixed batch_size)")
    if 0 < run.data.max_tokens < run.data.max_len:
        raise RecipeError(f"{source}: key 'data.max_tokens': {run.data.max_tokens} cannot hold one example of data.max_len={run.data.max_len}")
    if run.trainer.audio_samples < 0:
        raise RecipeError(f"{source}: key 'trainer.audio_samples': must be >= 0")
    if run.data.num_workers < 0:
        raise RecipeError(f"{source}: key 'data.num_workers': must be >= 0")
    if run.trainer.offload and run.trainer.strategy != "deepspeed":
        raise RecipeError(f"{source}: key 'trainer.offload': offload needs trainer.strategy=deepspeed")
    if len(run.optim.betas) != 2:
        raise RecipeError(f"{source}: key 'optim.betas': expected two values, got {run.optim.betas}")
    check = getattr(run.model, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            raise RecipeError(f"{source}: {exc}") from exc


def to_yaml(run: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(run))


def from_yaml_text(text: str, source: str) -> RunConfig:
    """Rebuild a RunConfig from the YAML stored in a run dir, checkpoint or export."""
    return build_config(OmegaConf.create(text), source)


def save_config(run: RunConfig, path: str | os.PathLike) -> None:
    from alm.io import atomic_write_text

    atomic_write_text(Path(path), to_yaml(run))
