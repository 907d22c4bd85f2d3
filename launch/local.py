"""`alm launch local RECIPE [key=value ...] --nprocs N`: N training processes on this machine.

The same path as a SLURM job minus SLURM: the recipe is resolved with trainer.devices=N and
trainer.num_nodes=1, written to RUN_DIR/launch/recipe.yaml, and `python -m alm train` runs it (this
process becomes it, so signals such as `kill -USR1 PID` reach rank 0 directly; Lightning starts the
other N-1 ranks). SLURM_* variables are dropped, so a local launch inside an allocation stays local.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from alm.config import save_config
from alm.launch.slurm import RECIPE_NAME, prepare_recipe


def local_command(recipe: str, overrides: list[str], nprocs: int) -> tuple[list[str], object]:
    cfg = prepare_recipe(recipe, overrides, num_nodes=1, devices=nprocs, flag="--nprocs")
    path = Path(cfg.run_dir) / "launch" / RECIPE_NAME
    return [sys.executable, "-m", "alm", "train", str(path)], cfg


def launch_local(recipe: str, overrides: list[str], nprocs: int, dry_run: bool = False) -> int:
    cmd, cfg = local_command(recipe, overrides, nprocs)
    if dry_run:
        print(shlex.join(cmd))
        return 0
    path = Path(cmd[-1])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_config(cfg, path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    print(f"[alm] {nprocs} process(es) on this machine: {shlex.join(cmd)}", flush=True)
    sys.stderr.flush()
    os.execve(cmd[0], cmd, env)
    return 1  # not reached
