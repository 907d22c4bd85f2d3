"""Command lines of `alm launch` and `alm runs` (wired in alm/cli.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

LAUNCH_USAGE = """usage:
  alm launch slurm RECIPE.yaml [key=value ...] --nodes N --gpus-per-node G [--tasks-per-node T] [options]
  alm launch slurm PIPELINE.yaml [--dir DIR] [options]
  alm launch local RECIPE.yaml [key=value ...] --nprocs N [--dry-run]
(see launch/README.md)"""


def _slurm_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="alm launch slurm",
        description="Submit a recipe (one multi-node job with preemption + exact resume) or a pipeline "
        "(jobs chained with --dependency=afterok) to SLURM. Settings: cluster YAML < command line.",
    )
    p.add_argument("target", help="a recipe YAML, or a pipeline YAML (top-level `stages:`)")
    p.add_argument("overrides", nargs="*", help="recipe overrides key=value (recipes only)")
    p.add_argument("--nodes", type=int, help="nodes (sets trainer.num_nodes; default 1)")
    p.add_argument("--gpus-per-node", type=int, help="GPUs per node (default: the cluster file's, else 0)")
    p.add_argument("--tasks-per-node", type=int,
                   help="processes per node (sets trainer.devices; default = GPUs per node; on CPU partitions "
                   "use --gpus-per-node 0 --tasks-per-node T with trainer.accelerator=cpu)")
    p.add_argument("--cpus-per-task", type=int, help="CPUs per process (default: cluster file, else data.num_workers + 1)")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument("--time", help="time limit, e.g. 24:00:00 or 2-00:00:00")
    p.add_argument("--mem", help="memory per node, e.g. 0 (all) or 200G")
    p.add_argument("--exclusive", action="store_true", default=None, help="whole nodes")
    p.add_argument("--job-name")
    p.add_argument("--cluster", help="cluster defaults: launch/clusters/NAME.yaml or a path")
    p.add_argument("--signal-seconds", type=int, help="SIGUSR1 this many seconds before the time limit (default 120)")
    p.add_argument("--max-requeues", type=int, help="preemption requeues at most (default 20)")
    p.add_argument("--export", action="store_true", help="recipes: end the job with `alm export RUN_DIR --out RUN_DIR/export`")
    p.add_argument("--dir", help="pipelines: folder for command stages' logs and default run dirs")
    p.add_argument("--no-resource-check", action="store_true",
                   help="submit without checking cpus/GPUs/memory per node against `sinfo` of the partition")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script(s); submit nothing, write nothing")
    return p


def _slurm(argv: list[str]) -> int:
    from alm.config import RecipeError
    from alm.launch.pipeline import is_pipeline, launch_pipeline
    from alm.launch.slurm import (
        LaunchError,
        check_resources,
        forget_sinfo,
        load_cluster,
        prepare_recipe,
        render_training,
        resources,
        signal_lead,
        submit_training,
    )

    a = _slurm_parser().parse_intermixed_args(argv)
    forget_sinfo()
    cli = {
        "nodes": a.nodes, "gpus_per_node": a.gpus_per_node, "tasks_per_node": a.tasks_per_node,
        "cpus_per_task": a.cpus_per_task, "partition": a.partition, "account": a.account, "qos": a.qos,
        "constraint": a.constraint, "time": a.time, "mem": a.mem, "exclusive": a.exclusive,
        "job_name": a.job_name, "signal_seconds": a.signal_seconds, "max_requeues": a.max_requeues,
    }
    try:
        if not os.path.isfile(a.target):
            raise LaunchError(f"{a.target}: no such file")
        if is_pipeline(a.target):
            if a.overrides:
                raise LaunchError(f"{a.target} is a pipeline: put overrides into its stages, not on the command line")
            if a.export:
                raise LaunchError("--export is for recipes; in a pipeline give the stage `export: true`")
            launch_pipeline(a.target, cli=cli, cluster_flag=a.cluster, dir_override=a.dir, dry_run=a.dry_run,
                            check=not a.no_resource_check)
            return 0
        if a.dir:
            raise LaunchError("--dir is for pipelines; for a recipe set run_dir=...")
        cluster = load_cluster(a.cluster)
        res = resources(cluster, cli)
        cfg = prepare_recipe(a.target, a.overrides, res.nodes, res.tasks_per_node, res.gpus_per_node)
        if res.cpus_per_task is None:
            res.cpus_per_task = cfg.data.num_workers + 1
        check_resources(res, enabled=not a.no_resource_check)
        signal_lead(res, cfg.run_dir)
        print(f"[alm] --signal=USR1@{res.signal_seconds}: {res.signal_source}", file=sys.stderr)
        if a.dry_run:
            print(render_training(cfg, res, cluster, recipe_source=a.target, export=a.export))
            return 0
        sub = submit_training(cfg, res, cluster, recipe_source=a.target, export=a.export)
        print(sub.line)
        print(f"[alm] {res.nodes} node(s) x {res.tasks_per_node} task(s); run dir {cfg.run_dir}")
        print(f"[alm] log: {sub.log}")
        return 0
    except (LaunchError, RecipeError) as exc:
        print(f"alm launch slurm: {exc}", file=sys.stderr)
        return 2


def _local(argv: list[str]) -> int:
    from alm.config import RecipeError
    from alm.launch.local import launch_local
    from alm.launch.slurm import LaunchError

    p = argparse.ArgumentParser(prog="alm launch local", description="N training processes on this machine.")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--nprocs", type=int, default=1, help="processes (sets trainer.devices)")
    p.add_argument("--dry-run", action="store_true", help="print the command only")
    a = p.parse_intermixed_args(argv)
    if a.nprocs < 1:
        print("alm launch local: --nprocs must be >= 1", file=sys.stderr)
        return 2
    try:
        return launch_local(a.recipe, a.overrides, a.nprocs, a.dry_run)
    except (LaunchError, RecipeError) as exc:
        print(f"alm launch local: {exc}", file=sys.stderr)
        return 2


def launch_main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(LAUNCH_USAGE)
        return 0 if argv else 2
    if argv[0] == "slurm":
        return _slurm(argv[1:])
    if argv[0] == "local":
        return _local(argv[1:])
    print(f"alm launch: unknown target {argv[0]!r}\n{LAUNCH_USAGE}", file=sys.stderr)
    return 2


def _print_quietly(text: str) -> None:
    """Print, and stay quiet if the reader went away (`alm runs --json | head`): no BrokenPipe traceback."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at /dev/null so that flush cannot fail either
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def runs_main(argv: list[str]) -> int:
    from alm.launch import runs

    p = argparse.ArgumentParser(prog="alm runs", description="List run dirs: stage, state, last step, checkpoint, W&B id, "
                                "corrupt samples, SLURM job.")
    p.add_argument("dirs", nargs="*", help="run dirs or folders holding them (default: ./runs)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--state", metavar="RUN_DIR", help="print only this run's state (one word) and exit")
    p.add_argument("--plot", metavar="RUN_DIR", help="write RUN_DIR/loss.png (train/val loss over steps from metrics.csv)")
    p.add_argument("--out", help="with --plot: the PNG's path instead of RUN_DIR/loss.png")
    a = p.parse_args(argv)
    if a.out and not a.plot:
        print("alm runs: --out is for --plot", file=sys.stderr)
        return 2
    if a.plot:
        from alm.errors import UserError
        from alm.launch.plot import plot_losses

        try:
            path = plot_losses(a.plot, a.out)
        except UserError as exc:
            print(f"alm runs --plot: {exc}", file=sys.stderr)
            return 2
        _print_quietly(str(path))
        return 0
    if a.state:
        if not Path(a.state).is_dir():
            print(f"alm runs: {a.state}: no such directory", file=sys.stderr)
            return 2
        _print_quietly(runs.state_word(Path(a.state)))
        return 0
    roots = a.dirs or ["runs"]
    missing = [d for d in roots if not Path(d).is_dir()]
    if missing:
        print(f"alm runs: no such directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    infos = [runs.run_info(d) for d in runs.find_runs(roots)]
    if a.json:
        _print_quietly(runs.as_json(infos))
    elif not infos:
        _print_quietly(f"no run dirs under {', '.join(roots)}")
    else:
        _print_quietly(runs.table(infos, Path.cwd()))
    return 0
