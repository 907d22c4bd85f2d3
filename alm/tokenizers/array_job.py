"""Which share of a shard set one `alm tokenize` process writes: `--num-shards N --shard-index I`.

Input shard i (in the order the spec expands to: a directory's or a glob's files sorted by name) goes
to job i % N (alm.data.shards.shard_share), so N jobs, run at once or one after another, together
write exactly the shards one run writes, byte for byte. Without the flags, a SLURM array task's
SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT (and _MIN, _STEP for arrays not written 0-(N-1))
give N and I; outside an array it is one job: N = 1, I = 0.
"""

from __future__ import annotations

import argparse
import os

from alm.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-shards", type=int, default=None,
                        help="split the input shards over N jobs (input shard i goes to job i %% N); "
                             "default: SLURM_ARRAY_TASK_COUNT in a SLURM array task, else 1")
    parser.add_argument("--shard-index", type=int, default=None,
                        help="this job's index 0..N-1 (default: from SLURM_ARRAY_TASK_ID in a SLURM array task, else 0)")


def resolve(num_shards: int | None, shard_index: int | None, environ=os.environ) -> tuple[int, int, str]:
    """(N, I, where they came from). Both flags or neither; neither -> a SLURM array task's, else (1, 0)."""
    if (num_shards is None) != (shard_index is None):
        raise UserError("--num-shards and --shard-index go together: give both (or neither, to take them "
                        "from a SLURM array task)")
    if num_shards is not None:
        source = "--num-shards/--shard-index"
    elif "SLURM_ARRAY_TASK_ID" in environ:
        if "SLURM_ARRAY_TASK_COUNT" not in environ:
            raise UserError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not: pass --num-shards N "
                            "--shard-index I")
        try:
            task, count = int(environ["SLURM_ARRAY_TASK_ID"]), int(environ["SLURM_ARRAY_TASK_COUNT"])
            first, step = int(environ.get("SLURM_ARRAY_TASK_MIN", 0)), int(environ.get("SLURM_ARRAY_TASK_STEP", 1))
        except ValueError as exc:
            raise UserError(f"SLURM array variables are not integers ({exc}): pass --num-shards N --shard-index I") from None
        if step < 1 or (task - first) % step:
            raise UserError(f"SLURM array task {task} (min {first}, step {step}): cannot number it 0..N-1; "
                            "pass --num-shards N --shard-index I")
        num_shards, shard_index = count, (task - first) // step
        source = (f"SLURM array task {task} of {count} (SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT; "
                  "--num-shards/--shard-index override)")
    else:
        return 1, 0, "one job"
    if num_shards < 1:
        raise UserError(f"--num-shards must be >= 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise UserError(f"--shard-index must be in 0..{num_shards - 1} (--num-shards {num_shards}), got {shard_index}")
    return num_shards, shard_index, source


def summary_line(r: dict, num_shards: int, shard_index: int, out: str) -> str:
    """One line about a (share of a) tokenize run, from map_shards' summary."""
    new = len(r["shards"]) - len(r["existing"])
    kept = f" ({len(r['existing'])} already there, kept)" if r["existing"] else ""
    share = f"shard index {shard_index} of {num_shards}: " if num_shards > 1 else ""
    line = (f"{share}wrote {new} token shard(s){kept}, {r['samples']} samples, {len(r['errors'])} failed sample(s) "
            f"in these shards")
    if num_shards > 1:
        line += (f"; {out} now holds {r['done_total']} of {r['total']} shard(s), "
                 f"{r['errors_total']} failed sample(s) in all (errors.json)")
    else:
        line += " (errors.json)"
    line = f"{line} -> {out}"
    if r.get("busy"):
        line += (f"\nNOT DONE: {len(r['busy'])} shard(s) of this share were being written by another process "
                 f"(e.g. {r['busy'][0]}): rerun this command once it has ended")
    return line
