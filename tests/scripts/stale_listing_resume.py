"""Under torchrun (every rank started by the launcher, as under SLURM): rank 1 sees no checkpoint
in run_dir, as after a stale shared-file-system listing, rank 0 sees the real newest one. Both must
resume from rank 0's choice. Each rank writes OUT_DIR/rank-N.json: the checkpoint Lightning loaded
and the final step.

usage: torchrun --standalone --nproc-per-node 2 stale_listing_resume.py RECIPE OUT_DIR key=value ...
"""

import json
import os
import sys
from pathlib import Path

import alm.training.trainer as trainer_module
from alm.config import load_recipe
from alm.data.cache import resolve_synthetic
from alm.training.preflight import ResumePlan, preflight


def stale_on_rank_1(cfg):
    plan = preflight(cfg)
    return ResumePlan(None) if os.environ["RANK"] == "1" else plan


def main() -> None:
    recipe, out, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    cfg = load_recipe(recipe, overrides)
    resolve_synthetic(cfg)
    trainer_module.preflight = stale_on_rank_1
    trainer = trainer_module.train(cfg)
    record = {"ckpt_path": trainer.ckpt_path, "step": trainer.global_step}
    (out / f"rank-{os.environ['RANK']}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
