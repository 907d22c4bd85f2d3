"""What a stage is: one plain object that says everything the spine needs to train, check, export
and run it. Torch-free (types only), so the stage table and config validation stay light.

A stage file (alm/stages/<name>.py) builds one `Stage` from plain functions; the spine reads it:

    trainer     alm/training/module.py builds the one LightningModule from it (model built in
                configure_model, so ZeRO-3 shards it at construction), with loss / val_loss
    data        make_example(cfg) -> (sample, rng) -> example | [examples] | None, collate, example_length.
                A stage that crops returns every window of a long recording as a list when
                every_window(cfg) (data.windows=all): the stream flattens it, each window entering
                the shuffle buffer as an example, and its position covers the window index.
    config      model_config (the recipe's `model:` section) and data_config (the recipe's `data:`
                section: DataConfig or a subclass with the stage's own keys, e.g. `data.tasks`)
    preflight   check(cfg): tokenizer / codec / model agreement, before anything starts
    cli         commands: `alm generate <name>`, `alm convert <name>`, `alm embed`, ...
    validation  val_epoch_end(model, cfg) -> {name: float}: called on EVERY rank at the end of each
                validation (it may use collectives; the values must agree across ranks), logged as
                val/<name>, e.g. retrieval metrics over the whole held-out set (stage clap)
    eval        eval_tasks: what `alm eval run EXPORT --task NAME --shards SPEC` does for an export of
                this stage (generate from it on held-out samples, then score through alm.eval)
    samples     sample_codes(model, batch, i, seed) -> (generated, reference) codes (audio stages)
    pretrained  load_pretrained(model, cfg, gathered): public weights (e.g. a transformers LLM named by
                model.pretrained) copied into the freshly built — possibly ZeRO-3 partitioned — model,
                tensor by tensor (alm.training.init_from.load_weights); skipped on resume and under init_from
    export      export_files(model, cfg, dir) -> dict: extra files every `alm export` writes into the
                export (e.g. a transformers folder), merged into export.json; export_formats: other
                layouts `alm export --format NAME` writes instead of alm's (e.g. "transformers")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional


WINDOW_MODES = ("all", "one")


def every_window(cfg: Any) -> bool:
    """data.windows: `all` (every non-overlapping window of a recording per epoch) or `one` (one random window)."""
    mode = cfg.data.windows
    if mode not in WINDOW_MODES:
        from alm.errors import UserError

        raise UserError(f"key 'data.windows': expected one of {list(WINDOW_MODES)}, got {mode!r}")
    return mode == "all"


@dataclass(frozen=True)
class Command:
    """A CLI command a stage contributes: `alm VERB NAME ...` (or `alm VERB ...` when name is None)."""

    verb: str  # generate | convert | embed | ...
    name: Optional[str]
    help: str
    add_arguments: Callable[[Any], None]  # (argparse.ArgumentParser) -> None
    run: Callable[[Any], int]  # (argparse.Namespace) -> exit code


@dataclass(frozen=True)
class EvalTask:
    """`alm eval run EXPORT --task NAME --shards SPEC ...` for an export of the stage that declares it:
    run(export_dir, shard_spec, args) -> (metrics, n, config), shard_spec already resolved to the
    held-out files (alm.data.splits.resolve_eval_spec), args holding the options add_arguments added
    (and `limit`: score the first N samples only, 0 = all; `out`: the results.json path)."""

    name: str  # asr | caption | text_to_audio | retrieval | zeroshot | ...
    help: str
    run: Callable[[str, str, Any], tuple[dict, int, dict]]
    add_arguments: Callable[[Any], None] = lambda p: None


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    model_config: type  # dataclass of the recipe's `model:` section
    model: Callable[[Any], Any]  # model_config -> torch.nn.Module (pure torch). A model that initialises
    # weights after building its submodules exposes init_weights(gathered) (see alm.models.transformer.gpt2_init)
    make_example: Callable[[Any], Callable]  # RunConfig -> f(sample, rng) -> example dict | [example dicts] | None
    collate: Callable[[list], dict]  # examples -> batch (tensors; `_tokens` = real tokens, for throughput)
    example_length: Callable[[dict], int]  # padded length of an example (dynamic batching)
    loss: Callable[[Any, dict], Any]  # (model, batch) -> scalar loss tensor
    val_loss: Optional[Callable[[Any, dict, int, int], Any]] = None  # (model, batch, batch_idx, seed); default: loss
    val_epoch_end: Optional[Callable[[Any, Any], dict]] = None  # (model, cfg) -> {name: float}, logged as val/<name>
    data_config: Optional[type] = None  # DataConfig subclass with stage-specific data keys (default DataConfig)
    check: Optional[Callable[[Any], None]] = None  # RunConfig -> None, raises UserError
    synthetic_data: Optional[Callable[[Any, Any], dict]] = None  # (cfg, cache_root) -> {"train_shards", ...}
    sample_codes: Optional[Callable[[Any, dict, int, int], tuple]] = None  # audio samples at validation
    commands: tuple[Command, ...] = field(default=())
    load_pretrained: Optional[Callable[[Any, Any, Callable], None]] = None  # (model, cfg, gathered) at a fresh start
    export_files: Optional[Callable[[Any, Any, Any], dict]] = None  # (model, cfg, Path) -> export.json entries
    export_formats: dict[str, Callable[[Any, Any, Any], None]] = field(default_factory=dict)  # name -> (model, cfg, Path)
    eval_tasks: tuple[EvalTask, ...] = field(default=())  # `alm eval run EXPORT --task NAME`
