"""The `alm` command line.

    alm demo                                   the embedded default: data -> tokens -> train -> export -> sample
    alm train RECIPE.yaml [key=value ...]      train a stage (resumes from run_dir automatically)
    alm export RUN_DIR|CHECKPOINT --out DIR    consolidated safetensors + config + tokenizer
    alm generate {semantic,audiolm,soundstorm} ...   generate from exports (commands declared by the stages)
    alm tokenize {semantic,codec,text} ...     write token shards / fit tokenizers
    alm prep DATASET --src DIR --out DIR       dataset on disk -> WebDataset shards
    alm launch {slurm,local} RECIPE|PIPELINE   submit to SLURM (multi-node, preemption, pipelines) or run locally
    alm runs [DIR ...]                         list run dirs: state, last step, last checkpoint, W&B id
"""

from __future__ import annotations

import argparse
import logging
import sys


def _train(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="alm train", description="Train a recipe; key=value pairs override it.")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_steps=100 run_dir=runs/x")
    a = p.parse_args(argv)
    from alm.config import RecipeError, load_recipe

    try:
        cfg = load_recipe(a.recipe, a.overrides)
    except RecipeError as exc:
        print(f"alm train: {exc}", file=sys.stderr)
        return 2
    from alm.data.cache import resolve_synthetic
    from alm.training.trainer import train

    resolve_synthetic(cfg)
    from alm.data.provenance import resolve_provenance

    for line in resolve_provenance(cfg):  # tokenizer / codec agree with what made the shards
        print(f"[alm] {line}", file=sys.stderr)
    trainer = train(cfg)
    if trainer.is_global_zero:
        from alm.training.preemption import read_state

        state = read_state(cfg.run_dir).get("state", "?")
        print(f"[alm] {state}: {cfg.run_dir} (step {trainer.global_step})")
    return 0


def _export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="alm export", description="Export a run or checkpoint to safetensors.")
    p.add_argument("src", help="run dir (newest checkpoint) or checkpoint dir")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="dtype of the stored floating weights")
    p.add_argument("--max-shard-size", default="5GB", help="larger exports are sharded (model-0000i-of-0000N.safetensors + index)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export at --out")
    a = p.parse_args(argv)
    from alm.export import export

    out = export(a.src, a.out, a.dtype, a.max_shard_size, a.overwrite)
    print(f"[alm] exported {a.src} -> {out}")
    return 0


def _stage_verb(verb: str):
    """`alm VERB NAME ...` for the commands the stages declare (alm/stages/: Stage.commands)."""

    def run(argv: list[str]) -> int:
        from alm.stages import all_commands

        commands = [c for c in all_commands() if c.verb == verb]
        p = argparse.ArgumentParser(prog=f"alm {verb}", description=f"alm {verb}: commands of the stages")
        sub = p.add_subparsers(dest="name", required=True)
        for c in commands:
            c.add_arguments(sub.add_parser(c.name, help=c.help, description=c.help))
        a = p.parse_args(argv)
        return next(c for c in commands if c.name == a.name).run(a)

    return run


def _tokenize(argv: list[str]) -> int:
    if not argv or argv[0] not in ("semantic", "codec", "text"):
        print("usage: alm tokenize {semantic,codec,text} ...", file=sys.stderr)
        return 2
    kind, rest = argv[0], argv[1:]
    if kind == "semantic":
        from alm.tokenizers.semantic import main
    elif kind == "codec":
        from alm.tokenizers.codec import main
    else:
        from alm.tokenizers.text import main
    return main(rest)


def _prep(argv: list[str]) -> int:
    from alm.data_prep.cli import main

    return main(argv)


def _demo(argv: list[str]) -> int:
    from alm.demo import main

    return main(argv)


def _launch(argv: list[str]) -> int:
    from alm.launch.cli import launch_main

    return launch_main(argv)


def _runs(argv: list[str]) -> int:
    from alm.launch.cli import runs_main

    return runs_main(argv)


COMMANDS = {
    "demo": _demo,
    "train": _train,
    "export": _export,
    "generate": _stage_verb("generate"),
    "tokenize": _tokenize,
    "prep": _prep,
    "launch": _launch,
    "runs": _runs,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        from alm.stages import all_commands  # verbs only stages declare (e.g. `alm embed`, `alm convert`)

        if any(c.verb == argv[0] for c in all_commands()):
            COMMANDS[argv[0]] = _stage_verb(argv[0])
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(name)s] %(levelname)s: %(message)s"))
    logging.getLogger("alm").addHandler(handler)
    logging.getLogger("alm").setLevel(logging.INFO)
    from alm.errors import UserError

    try:
        return COMMANDS[argv[0]](argv[1:])
    except UserError as exc:  # a user's mistake: one line, no traceback
        print(f"alm {argv[0]}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
