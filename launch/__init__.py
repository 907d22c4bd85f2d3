"""Launching alm runs: SLURM batch jobs (multi-node, preemption with exact resume, chained
pipelines), local multi-process runs, and the `alm runs` overview. See launch/README.md.

    alm launch slurm RECIPE.yaml [key=value ...] --nodes N --gpus-per-node G ...
    alm launch slurm PIPELINE.yaml
    alm launch local RECIPE.yaml [key=value ...] --nprocs N
    alm runs [DIR ...]
"""
