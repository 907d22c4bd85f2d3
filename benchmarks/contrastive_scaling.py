"""The CLAP loss across 2 gloo ranks: global-batch loss vs local loss, step time and peak memory, and
the all-gather's share of the step.

    python benchmarks/contrastive_scaling.py [--batch 1024] [--dim 512] [--steps 10] [--ranks 2]

Each rank holds `--batch` rows: features (batch, dim) -> a Linear tower -> unit-norm embeddings ->
alm.stages.contrastive_loss.contrastive_loss over the global batch of ranks x batch rows -> backward.
Two variants, each in fresh processes (peak RSS is a per-process high-water mark):

    global   every rank computes the whole (N x N) similarity matrix (model.local_loss: false)
    local    each rank its own rows against all columns, O(batch x N) (model.local_loss: true)

The gather's share: inside the global variant's steps, the forward all-gathers are timed (after a
barrier, so waiting for the other rank is not counted); after the steps, the step's two gathers
(audio and text rows) are timed alone, forward + backward (the backward sums every rank's
gradient for this rank's rows), and divided by the median step time.

Printed: per variant the median step time and rank 0's peak RSS above its RSS before the first
step, then the ratios measured in this run. Nothing here is a test threshold.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    """This process's current resident set, MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB


def worker(rank: int, world: int, rendezvous: str, variant: str, a: argparse.Namespace, out: str) -> None:
    import torch.distributed as dist

    from alm.stages import contrastive_loss as cl

    torch.set_num_threads(1)
    # a file rendezvous: no TCP port to race other jobs for
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    gather_s = [0.0]
    real = cl.gather_rows
    if variant == "global":  # time the forward gathers (after a barrier: no waiting for the other rank)
        def timed(x):
            dist.barrier()
            t0 = time.perf_counter()
            out = real(x)
            gather_s[0] += time.perf_counter() - t0
            return out

        cl.gather_rows = timed
    g = torch.Generator().manual_seed(rank)
    torch.manual_seed(0)  # the same tower on every rank (as DDP would broadcast it)
    tower = torch.nn.Linear(a.dim, a.dim)
    scale = torch.tensor(1 / 0.07)
    audio_x = torch.randn(a.batch, a.dim, generator=g)
    text_x = audio_x + 0.5 * torch.randn(a.batch, a.dim, generator=g)
    base = rss_mb()
    times = []
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            gather_s[0] = 0.0
        dist.barrier()
        t0 = time.perf_counter()
        audio = torch.nn.functional.normalize(tower(audio_x), dim=-1)
        text = torch.nn.functional.normalize(tower(text_x), dim=-1)
        loss = cl.contrastive_loss(audio, text, scale, local_loss=variant == "local")
        loss.backward()
        tower.zero_grad(set_to_none=True)
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    alone = []
    for i in range(a.warmup + a.steps if variant == "global" else 0):  # the step's two gathers alone, fwd + bwd
        x = torch.nn.functional.normalize(audio_x, dim=-1).requires_grad_()
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(2):
            rows, _ = real(x)
            rows.backward(torch.ones_like(rows))
        if i >= a.warmup:
            alone.append(time.perf_counter() - t0)
    if rank == 0:
        share = statistics.median(alone) / statistics.median(times) if alone else 0.0
        Path(out).write_text(f"{statistics.median(times)} {peak_rss_mb() - base} {gather_s[0] / sum(times)} {share} "
                             f"{loss.item()}")
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # gloo can abort at interpreter teardown even after destroy_process_group (seen in CI)


def run_variant(variant: str, a: argparse.Namespace) -> tuple[float, ...]:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r.txt")
        mp.spawn(worker, args=(a.ranks, os.path.join(d, "rendezvous"), variant, a, out), nprocs=a.ranks, join=True)
        return tuple(map(float, Path(out).read_text().split()))  # step, memory, gather fwd share, fwd+bwd share, loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1024, help="rows per rank")
    p.add_argument("--dim", type=int, default=512, help="embedding width")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--ranks", type=int, default=2)
    a = p.parse_args()
    n = a.batch * a.ranks
    print(f"{a.ranks} gloo ranks x {a.batch} rows (global batch {n}), dim {a.dim}, {a.steps} timed steps, 1 thread each")
    res = {v: run_variant(v, a) for v in ("global", "local")}
    for v, (step, mem, _, _, loss) in res.items():
        print(f"  {v:<7} step {1e3 * step:9.1f} ms   peak RSS +{mem:8.1f} MB (rank 0)   loss {loss:.4f}")
    (g_step, g_mem, g_fwd, g_both, g_loss), (l_step, l_mem, _, _, l_loss) = res["global"], res["local"]
    print(f"ratio (local / global): step time {l_step / g_step:.2f}, peak memory {l_mem / max(g_mem, 1e-9):.2f} "
          f"(rank 0 losses {g_loss:.6f} / {l_loss:.6f}: local is its share, whose rank mean is the loss)")
    print(f"gather share of the global-loss step: {g_both:.3f} (its two gathers alone, forward + backward), "
          f"{g_fwd:.3f} (forward gathers timed inside the steps)")
    print(f"similarity matrices: global {n}x{n} per rank, local 2 x {a.batch}x{n} per rank "
          f"(expected memory ratio of the logits ~{a.batch / n:.2f})")


if __name__ == "__main__":
    main()
