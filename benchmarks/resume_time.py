"""Resume cost: time to the first batch after resuming at step 100 vs step 10,000.

The loader starts each worker at the position the checkpoint recorded (alm.data.stream): it reads
the shuffle buffer's samples and goes on, so the cost should not grow with the step. The
positions of step N are synthesised from a real position (its epoch and batch counters set to
what step N means), which is what a checkpoint of a long run holds. For comparison, the old way
(`positions=None`: replay every batch up to the step) is timed too.

    python benchmarks/resume_time.py [--steps 100 10000] [--workers 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alm.data.shards import ShardWriter, npy_bytes, npy_load  # noqa: E402
from alm.data.stream import ShardStream, make_loader, resolve_shard_sets  # noqa: E402


def make_example(sample, rng):
    tokens = npy_load(sample["tokens.npy"])
    start = int(rng.integers(0, max(1, len(tokens) - 64)))
    return {"tokens": tokens[start : start + 64]}


def collate(examples):
    return {"n": len(examples)}


def write_tokens(out: Path, samples: int, per_shard: int) -> str:
    rng = np.random.default_rng(0)
    with ShardWriter(out, "train", max_count=per_shard) as w:
        for i in range(samples):
            w.write({"__key__": f"clip{i:07d}", "tokens.npy": npy_bytes(rng.integers(0, 1024, 500).astype(np.int16))})
    return str(out)


def stream(spec: str, args, positions=None, start_batch: int = 0) -> ShardStream:
    return ShardStream(resolve_shard_sets(spec), make_example, collate, batch_size=args.batch_size, seed=0,
                       shuffle_buffer=args.buffer, positions=positions, start_batch=start_batch, rank_world=(0, 1))


def first_batch_s(st: ShardStream, workers: int) -> float:
    t = time.perf_counter()
    batch = next(iter(make_loader(st, workers)))
    assert batch["n"] > 0
    return time.perf_counter() - t


def positions_at(spec: str, args, step: int) -> dict[int, dict]:
    """Each worker's position after `step` batches of a rank, synthesised from a real one."""
    workers = max(1, args.workers)
    real: dict[int, dict] = {}
    for b in make_loader(stream(spec, args), args.workers):  # a real mid-epoch position per worker
        real[b["_state"].state["worker"]] = b["_state"].state
        if len(real) == workers and b["_index"] >= 2 * workers:
            break
    per_epoch = args.samples // args.batch_size
    return {w: {**p, "epoch": step // per_epoch, "local": (step - w + workers - 1) // workers} for w, p in real.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, nargs=2, default=[100, 10_000], metavar=("EARLY", "LATE"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--per-shard", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--buffer", type=int, default=500)
    p.add_argument("--no-replay", action="store_true", help="skip timing the old replay")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        spec = write_tokens(Path(tmp) / "tokens", args.samples, args.per_shard)
        first_batch_s(stream(spec, args), args.workers)  # warm the page cache
        positions = {step: positions_at(spec, args, step) for step in args.steps}
        times: dict[int, list[float]] = {step: [] for step in args.steps}
        for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits both alike
            for step in args.steps:
                times[step].append(first_batch_s(stream(spec, args, positions=positions[step]), args.workers))
        seek = {step: statistics.median(t) for step, t in times.items()}
        replay = {}
        for step in args.steps:
            if not args.no_replay:
                replay[step] = first_batch_s(stream(spec, args, start_batch=step), args.workers)
            old = f" (old replay: {replay[step]:.3f} s)" if step in replay else ""
            print(f"time to first batch after resume at step {step}: {seek[step]:.3f} s{old}")
    early, late = args.steps
    ratio = seek[late] / seek[early]
    print(f"resume time ratio (step {late} / step {early}): {ratio:.2f} (target <= 1.2)")
    if replay:
        print(f"replay ratio (step {late} / step {early}): {replay[late] / replay[early]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
