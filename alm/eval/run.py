"""`alm eval run EXPORT --task TASK --shards SPEC [--limit N] [--out results.json] [--run RUN_DIR] [task options]`:
generate from an export on held-out samples, then score them through the harness, one results.json a run.

What a task does belongs to the stage the export was trained as (alm/stages/spec.py: Stage.eval_tasks):
e.g. asr for an AudioPaLM export (transcribe the shards' audio, score WER/CER against their
transcripts), retrieval for a CLAP export. This module owns what every task shares:

    --shards SPEC  any shard spec; a directory gives its held-out split (test, else validation:
                   alm.data.splits.resolve_eval_spec); parallel sets (`prep + tokens`) are joined by key
    --limit N      score the first N samples only (in file order; 0 = every sample)
    results.json   {"task", "metrics", "n", "config": {"export", "stage", "shards", ...}} (alm.eval.results),
                   a table on stdout, W&B with --run

A recipe's validation can call `evaluate(export_dir, task, shards, out)` directly.
"""

from __future__ import annotations

import argparse
import os

from alm.errors import UserError

NAME = "run"
HELP = "generate from an export on held-out shards, then score (the tasks come from the export's stage)"
TAKES_TASK_OPTIONS = True  # alm/eval/cli.py passes the options it does not know on to the task


def add_arguments(p) -> None:
    from alm.eval.results import add_report_arguments

    p.add_argument("export", help="an alm export (alm export RUN --out DIR, or alm convert ...)")
    p.add_argument("--task", required=True, help="a task of the export's stage (alm eval run EXPORT --task help lists them)")
    p.add_argument("--shards", required=True, metavar="SPEC",
                   help="held-out shards: a directory (its test split, else validation), a glob, or 'prep + tokens'")
    p.add_argument("--limit", type=int, default=0, help="score the first N samples only (0: all)")
    add_report_arguments(p)


def tasks_of(export_dir: str) -> tuple[str, dict]:
    """(stage name, {task name: EvalTask}) of an export."""
    from alm.export import load_config
    from alm.stages import get_stage

    stage = get_stage(load_config(export_dir).stage)
    return stage.name, {t.name: t for t in stage.eval_tasks}


def evaluate(export_dir: str, task: str, shards: str, args: argparse.Namespace | None = None,
             limit: int = 0) -> dict:
    """Run `task` of the export's stage on the held-out samples of `shards` -> results dict."""
    from alm.data.splits import resolve_eval_spec
    from alm.eval.results import results

    if not os.path.isdir(export_dir):
        raise UserError(f"{export_dir}: no such export directory")
    stage, tasks = tasks_of(export_dir)
    if task not in tasks:
        known = ", ".join(sorted(tasks)) or "none"
        raise UserError(f"--task {task!r}: an export of stage {stage} evaluates as: {known}")
    args = args if args is not None else argparse.Namespace()
    args.limit = limit
    spec = resolve_eval_spec(shards)
    metrics, n, config = tasks[task].run(export_dir, spec, args)
    config = {"export": os.path.abspath(export_dir), "stage": stage, "shards": shards, "resolved_shards": spec,
              "limit": limit, **config}
    return results(task, metrics, n, config)


def run(a, extra: list[str] | None = None) -> int:
    from alm.eval.results import report

    stage, tasks = tasks_of(a.export)
    if a.task == "help" or a.task not in tasks:
        lines = [f"  {t.name:<14} {t.help}" for t in tasks.values()] or ["  (none yet)"]
        if a.task == "help":
            print(f"tasks of stage {stage}:\n" + "\n".join(lines))
            return 0
        raise UserError(f"--task {a.task!r}: an export of stage {stage} evaluates as: {', '.join(sorted(tasks)) or 'none'}")
    p = argparse.ArgumentParser(prog=f"alm eval run EXPORT --task {a.task}", description=tasks[a.task].help)
    tasks[a.task].add_arguments(p)
    args = p.parse_args(extra or [])
    args.out = a.out  # where results.json goes (a task may put its files beside it)
    res = evaluate(a.export, a.task, a.shards, args, a.limit)
    report(res, a.out, a.run)
    return 0
