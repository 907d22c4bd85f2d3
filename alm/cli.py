"""The `alm` command line.

    alm demo                                   the embedded default: data -> tokens -> train -> export -> sample
    alm recipes [--json]                       the shipped recipes: stage, parameters, data, paper
    alm train RECIPE.yaml [key=value ...]      train a stage (resumes from run_dir automatically); --print-config
    alm export RUN_DIR|CHECKPOINT --out DIR    consolidated safetensors + config + tokenizer
    alm generate {semantic,audiolm,soundstorm} ...   generate from exports (commands declared by the stages)
    alm tokenize {semantic,codec,text} ...     write token shards / fit tokenizers
    alm embed EXPORT --texts FILE|--audio A.wav ... --out X.npy   CLAP embeddings (L2-normalised rows)
    alm convert clap SRC --out EXPORT          a transformers ClapModel (folder or hub id) -> an alm export
    alm prep DATASET --src DIR --out DIR       dataset on disk -> WebDataset shards (alm prep synthetic --out DIR: no download)
    alm launch {slurm,local} RECIPE|PIPELINE   submit to SLURM (multi-node, preemption, pipelines) or run locally
    alm runs [DIR ...]                         list run dirs: state, last step, last checkpoint, W&B id
    alm eval {text,audio,retrieval,run} ...    score outputs as the papers' libraries do (WER, BLEU, CIDEr-D, FAD, KLD, R@k)

`alm COMMAND --help` shows each command's options.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from alm.errors import UserError


# The override keys README documents as public interface (each is a field of alm.config.RunConfig).
PUBLIC_KEYS = (
    ("run_dir", "where config, checkpoints, logs, samples/ and W&B files go"),
    ("seed", "one seed for init, data order and every step's randomness"),
    ("resume", "auto (newest checkpoint in run_dir) | never | a checkpoint path"),
    ("init_from", "an alm export whose weights start a fresh run (fresh optimizer)"),
    ("trainer.max_steps", "optimizer steps"),
    ("trainer.devices, trainer.num_nodes", "processes per node, nodes"),
    ("trainer.strategy", "ddp | deepspeed"),
    ("trainer.zero_stage", "DeepSpeed ZeRO stage 1 | 2 | 3"),
    ("trainer.offload", "ZeRO optimizer (and, at stage 3, parameter) offload to CPU"),
    ("trainer.precision", "32-true | bf16-mixed | 16-mixed | bf16-true"),
    ("trainer.ckpt_every_n_steps", "periodic checkpoint interval"),
    ("trainer.val_every_n_steps", "validation interval (0: none)"),
    ("trainer.audio_samples", "audio stages: wavs generated at each validation -> RUN_DIR/samples/, W&B"),
    ("trainer.activation_checkpointing", "recompute each transformer block in the backward pass"),
    ("data.train_shards, data.val_shards", "a dir, glob, brace pattern, '::'-joined; parallel sets joined with ' + '; "
                                           "weighted mixture 'A @3 :: B @1'"),
    ("data.windows", "all: every window of a long recording per epoch | one: one random window"),
    ("data.tokenizer, data.codec", "what made the tokens / codes (taken from the shards when unset)"),
    ("data.batch_size, data.max_tokens", "examples per batch per process; > 0: dynamic batches of that many tokens"),
    ("data.num_workers", "loader processes per training process"),
    ("optim.lr, optim.groups", "learning rate; per-parameter-group lr / weight_decay / freeze"),
    ("model.*", "the stage's model (vocab_size, n_layer, d_model, ...): see --print-config"),
)


def _display_path(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _train_epilog() -> str:
    from alm.recipes_index import list_recipes, shipped_recipes_dir

    lines = ["shipped recipes (alm recipes: parameters, data, paper):"]
    try:
        recipes = [r for r in list_recipes() if r["kind"] == "recipe"]
    except FileNotFoundError:
        recipes = []
        lines.append(f"  (none found at {shipped_recipes_dir()})")
    width = max((len(_display_path(r["path"])) for r in recipes), default=0)
    lines += [f"  {_display_path(r['path']):<{width}}  {r['stage']}" for r in recipes]
    lines += ["", "override keys (key=value; public interface):"]
    width = max(len(k) for k, _ in PUBLIC_KEYS)
    lines += [f"  {k:<{width}}  {meaning}" for k, meaning in PUBLIC_KEYS]
    lines += ["", "every key of a recipe, with its value after the overrides:  alm train RECIPE [key=value ...] --print-config",
              "example:  alm train recipes/tiny/semantic.yaml run_dir=runs/my-run trainer.max_steps=500"]
    return "\n".join(lines)


def _train(argv: list[str]) -> int:
    from alm.cli_format import DefaultsFormatter

    wants_help = any(a in ("-h", "--help") for a in argv)
    p = argparse.ArgumentParser(prog="alm train", formatter_class=DefaultsFormatter,
                                description="Train a recipe; key=value pairs override it. Rerunning the same "
                                            "command resumes from the newest checkpoint in run_dir.",
                                epilog=_train_epilog() if wants_help else None)
    p.add_argument("recipe", help="a recipe YAML file (see the list below, or alm recipes)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_steps=100 run_dir=runs/x")
    p.add_argument("--print-config", action="store_true",
                   help="print the recipe with the overrides applied (every key, validated) as YAML and exit: "
                        "trains nothing, writes nothing")
    a = p.parse_intermixed_args(argv)
    from alm.config import RecipeError, load_recipe

    try:
        cfg = load_recipe(a.recipe, a.overrides)
    except RecipeError as exc:
        print(f"alm train: {exc}", file=sys.stderr)
        return 2
    if a.print_config:
        from alm.config import to_yaml

        print(to_yaml(cfg), end="")
        return 0
    from alm.data.cache import resolve_synthetic
    from alm.training.trainer import train

    resolve_synthetic(cfg)
    trainer = train(cfg)
    if trainer.is_global_zero:
        from alm.training.preemption import read_state

        state = read_state(cfg.run_dir).get("state", "?")
        print(f"[alm] {state}: {cfg.run_dir} (step {trainer.global_step})")
    return 0


def _recipes(argv: list[str]) -> int:
    from alm.cli_format import DefaultsFormatter
    from alm.recipes_index import shipped_recipes_dir

    p = argparse.ArgumentParser(prog="alm recipes", formatter_class=DefaultsFormatter,
                                description=f"List the shipped recipes ({shipped_recipes_dir()}): stage, model "
                                            "parameters (counted exactly on the meta device), data, and the first "
                                            "line of each recipe's header comment.")
    p.add_argument("--json", action="store_true", help="machine-readable: one JSON list on stdout")
    a = p.parse_args(argv)
    from alm.recipes_index import count_parameters, format_recipes, list_recipes

    try:
        entries = list_recipes()
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    for e in entries:
        e["params"] = count_parameters(e["path"]) if e["kind"] == "recipe" else None
    if a.json:
        print(json.dumps(entries, indent=1))
    else:
        print(format_recipes(entries, _display_path))
    return 0


def _export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="alm export", description="Export a run or checkpoint to safetensors.")
    p.add_argument("src", help="run dir (newest checkpoint) or checkpoint dir")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="dtype of the stored floating weights")
    p.add_argument("--max-shard-size", default="5GB", help="larger exports are sharded (model-0000i-of-0000N.safetensors + index)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export at --out")
    p.add_argument("--format", default="alm", help="alm (default), or a layout the stage offers (e.g. transformers)")
    a = p.parse_args(argv)
    from alm.export import export

    out = export(a.src, a.out, a.dtype, a.max_shard_size, a.overwrite, a.format)
    print(f"[alm] exported {a.src} -> {out}")
    return 0


def _stage_verb(verb: str):
    """`alm VERB NAME ...` for the commands the stages declare (alm/stages/: Stage.commands)."""

    def run(argv: list[str]) -> int:
        from alm.stages import all_commands

        commands = [c for c in all_commands() if c.verb == verb]
        whole = [c for c in commands if c.name is None]  # `alm VERB ...` itself (e.g. alm embed EXPORT ...)
        if whole:
            p = argparse.ArgumentParser(prog=f"alm {verb}", description=whole[0].help)
            whole[0].add_arguments(p)
            return whole[0].run(p.parse_args(argv))
        p = argparse.ArgumentParser(prog=f"alm {verb}", description=f"alm {verb}: commands of the stages")
        sub = p.add_subparsers(dest="name", required=True)
        for c in commands:
            c.add_arguments(sub.add_parser(c.name, help=c.help, description=c.help))
        a = p.parse_args(argv)
        return next(c for c in commands if c.name == a.name).run(a)

    return run


TOKENIZE_HELP = """usage: alm tokenize {semantic,codec,text,mulan} [-h] ...

Turn prepared audio shards (alm prep) into what the stages train on.

  semantic  k-means ids of self-supervised speech features (HuBERT etc. via --model; --features logmel is
            the CPU demo's stand-in). Writes OUT/<the audio shards' names>.tar with semantic.npy (frames,)
            per sample, and OUT/tokenizer/ (semantic_tokenizer.json, kmeans.safetensors): the tokenizer
            training checks data.tokenizer against (and takes from the shards when unset).
  codec     EnCodec residual-VQ codes (encodec_24khz, encodec_32khz, a hub id or a local directory).
            Writes OUT/<the audio shards' names>.tar with codes.npy (n_q, frames) per sample, and
            OUT/codec.json (the codec that made them: training checks data.codec against it, and takes
            it from the shards when unset).
  text      a sentencepiece model trained on the shards' captions / transcripts. Writes OUT/spm.model,
            OUT/spm.vocab and OUT/text_tokenizer.json (no shards).
  mulan     MusicLM's conditioning: a CLAP/MuLan export's audio embedding of each clip, residual-VQ
            quantised (12 levels x 1024 by default, fitted by k-means on the training clips). Writes
            OUT/<the audio shards' names>.tar with mulan.npy (levels,) per sample and OUT/mulan_tokenizer/.

Token shards keep the audio shards' file names, sample keys and json member, so the loader joins parallel
sets by key: data.train_shards='SEMANTIC/train-*.tar + CODES/train-*.tar'. Samples a tokenizer could not
process are left out and listed in OUT/errors/<shard>.json, merged into OUT/errors.json. A rerun skips the
shards already written. Many jobs: --num-shards N --shard-index I (or, in a SLURM array task, its
SLURM_ARRAY_TASK_COUNT / _ID) writes only input shards i with i % N == I; semantic: fit once with --fit-only first.

  alm tokenize semantic --help     (and codec, text): each one's options, with defaults
"""


def _tokenize(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(TOKENIZE_HELP, end="")
        return 0
    if not argv or argv[0] not in ("semantic", "codec", "text", "mulan"):
        what = f"unknown tokenizer {argv[0]!r}\n\n" if argv else ""
        print(what + TOKENIZE_HELP, end="", file=sys.stderr)
        return 2
    kind, rest = argv[0], argv[1:]
    if kind == "semantic":
        from alm.tokenizers.semantic import main
    elif kind == "codec":
        from alm.tokenizers.codec import main
    elif kind == "mulan":
        from alm.tokenizers.mulan import main
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


def _eval(argv: list[str]) -> int:
    from alm.eval.cli import main

    return main(argv)


def _runs(argv: list[str]) -> int:
    from alm.launch.cli import runs_main

    return runs_main(argv)


COMMANDS = {
    "demo": _demo,
    "recipes": _recipes,
    "train": _train,
    "export": _export,
    "generate": _stage_verb("generate"),
    "tokenize": _tokenize,
    "prep": _prep,
    "launch": _launch,
    "runs": _runs,
    "eval": _eval,
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
    try:
        return COMMANDS[argv[0]](argv[1:])
    except UserError as exc:  # a user's mistake: one line, no traceback
        message = str(exc)
        if "Original Traceback" in message:  # raised in a DataLoader worker: torch re-raises it with the worker's traceback
            message = message.strip().splitlines()[-1].split(": ", 1)[-1]
        print(f"alm {argv[0]}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
