"""The `alm` command line.

    alm demo                                   the embedded default: data -> tokens -> train -> export -> sample
    alm train RECIPE.yaml [key=value ...]      train a stage (resumes from run_dir automatically)
    alm export RUN_DIR|CHECKPOINT --out DIR    consolidated safetensors + config + tokenizer
    alm generate semantic EXPORT_DIR ...       sample tokens from an exported semantic LM
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


def _generate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="alm generate", description="Generate from exported models.")
    sub = p.add_subparsers(dest="kind", required=True)
    sem = sub.add_parser("semantic", help="sample semantic tokens from an exported semantic LM")
    sem.add_argument("export_dir")
    sem.add_argument("--tokens", type=int, default=100, help="tokens to sample")
    sem.add_argument("--num", type=int, default=1, help="sequences to sample")
    sem.add_argument("--out", default=None, help="save the token ids as .npy")
    chain = sub.add_parser("audiolm", help="semantic -> coarse -> fine -> codec: write a wav")
    chain.add_argument("--semantic", required=True, help="exported semantic stage")
    chain.add_argument("--coarse", required=True, help="exported coarse stage")
    chain.add_argument("--fine", required=True, help="exported fine stage")
    chain.add_argument("--prompt", default=None, help="a recording to continue (its semantic tokens prefix the output)")
    chain.add_argument("--seconds", type=float, default=3.0, help="seconds to generate (after the prompt)")
    chain.add_argument("--out", required=True, help="output .wav")
    storm = sub.add_parser("soundstorm", help="semantic LM -> SoundStorm (parallel decoding) -> codec: write a wav")
    storm.add_argument("--semantic", required=True, help="exported semantic stage")
    storm.add_argument("--soundstorm", required=True, help="exported SoundStorm stage")
    storm.add_argument("--prompt", default=None, help="a recording to continue (its semantic tokens prefix the output)")
    storm.add_argument("--seconds", type=float, default=3.0, help="seconds to generate (after the prompt)")
    storm.add_argument("--steps", default=None, help="forward passes per RVQ level, e.g. 16,1,1,1 (default 16 then 1s)")
    storm.add_argument("--out", required=True, help="output .wav")
    for q in (sem, chain, storm):
        q.add_argument("--temperature", type=float, default=1.0)
        q.add_argument("--top-k", type=int, default=0)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--device", default="cpu")
    sem.add_argument("--top-p", type=float, default=1.0)
    a = p.parse_args(argv)
    if a.kind == "semantic":
        from alm.generate import check_out_path, sample_semantic

        if a.out:
            check_out_path(a.out)
        tokens = sample_semantic(a.export_dir, a.tokens, a.num, a.temperature, a.top_k, a.top_p, a.seed, a.device)
        for row in tokens:
            print(" ".join(str(int(t)) for t in row))
        if a.out:
            import numpy as np

            np.save(a.out, tokens)
            print(f"[alm] saved {tokens.shape} token ids to {a.out}")
        return 0
    if a.kind == "soundstorm":
        from alm.generate import generate_soundstorm

        steps = [int(x) for x in a.steps.split(",")] if a.steps else None
        r = generate_soundstorm(a.semantic, a.soundstorm, a.seconds, a.out, a.prompt, steps, a.temperature, a.top_k,
                                a.seed, a.device)
        print(f"[alm] wrote {r['wav']}: {r['seconds']:.2f} s at {r['sample_rate']} Hz "
              f"(codes {tuple(r['codes'].shape)} in {r['forward_passes']} SoundStorm forward passes)")
        return 0
    from alm.generate import generate_audiolm

    r = generate_audiolm(a.semantic, a.coarse, a.fine, a.seconds, a.out, a.prompt, a.temperature, a.top_k, a.seed, a.device)
    print(f"[alm] wrote {r['wav']}: {r['seconds']:.2f} s at {r['sample_rate']} Hz "
          f"({r['semantic_tokens']} semantic tokens, codes {tuple(r['codes'].shape)})")
    return 0


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
    from data_prep.cli import main

    return main(argv)


def _demo(argv: list[str]) -> int:
    from alm.demo import main

    return main(argv)


def _launch(argv: list[str]) -> int:
    from launch.cli import launch_main

    return launch_main(argv)


def _runs(argv: list[str]) -> int:
    from launch.cli import runs_main

    return runs_main(argv)


COMMANDS = {
    "demo": _demo,
    "train": _train,
    "export": _export,
    "generate": _generate,
    "tokenize": _tokenize,
    "prep": _prep,
    "launch": _launch,
    "runs": _runs,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
