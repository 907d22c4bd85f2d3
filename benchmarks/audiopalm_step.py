"""AudioPaLM training step under DeepSpeed ZeRO-2 vs ZeRO-3 on 2 ranks: tokens/s and per-rank parameter bytes.

    python benchmarks/audiopalm_step.py [--steps 30] [--warmup 5] [--recipe recipes/tiny/audiopalm.yaml] [key=value ...]

Each stage trains the recipe (synthetic data and LM unless overridden) for --steps optimizer steps on 2
gloo ranks (CPU; the same command on a GPU machine with trainer.accelerator=gpu) through
tests/scripts/probe_params.py, which records per rank the parameter bytes resident right after
configure_model and as the DeepSpeed engine holds them (from DeepSpeed's own tensors). tokens/s is
the median of the logged train/tokens_per_s (real input tokens of the packed rows, all ranks) over
the steps after --warmup. Printed: one line per stage and the ZeRO-3 / ZeRO-2 ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROBE = REPO / "tests" / "scripts" / "probe_params.py"


def run_stage(recipe: str, zero: int, steps: int, tmp: Path, overrides: list[str]) -> dict:
    from alm.training.loggers import read_metrics

    out, run_dir = tmp / f"zero{zero}", tmp / f"run-zero{zero}"
    cmd = [sys.executable, str(PROBE), recipe, str(out), f"run_dir={run_dir}", "trainer.devices=2",
           "trainer.strategy=deepspeed", f"trainer.zero_stage={zero}", f"trainer.max_steps={steps}",
           "trainer.val_every_n_steps=0", "trainer.progress_bar=false", "trainer.ckpt_every_n_steps=100000",
           "trainer.threads=1", "wandb.enabled=false", *overrides]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"ZeRO-{zero} run failed ({p.returncode}):\n{p.stderr[-4000:]}")
    ranks = [json.loads((tmp / f"zero{zero}.rank{r}.json").read_text()) for r in (0, 1)]
    metrics = read_metrics(run_dir)
    speeds = [m["train/tokens_per_s"] for _, m in sorted(metrics.items()) if "train/tokens_per_s" in m]
    return {"ranks": ranks, "speeds": speeds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5, help="first logged steps left out of the median")
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "tiny" / "audiopalm.yaml"))
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. model.synthetic.hidden_size=256")
    a = ap.parse_args()
    if a.steps <= a.warmup:
        raise SystemExit(f"--steps {a.steps} must exceed --warmup {a.warmup}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for zero in (2, 3):
            r = run_stage(a.recipe, zero, a.steps, Path(tmp), a.overrides)
            tps = statistics.median(r["speeds"][a.warmup :])
            full = r["ranks"][0]["full_model"]
            per_rank = [x["after_configure_model"] for x in r["ranks"]]
            engine = [x["engine_partition"] for x in r["ranks"]]
            results[zero] = (tps, per_rank, engine, full)
            print(f"ZeRO-{zero}: {tps:,.0f} tokens/s (median of {len(r['speeds']) - a.warmup} steps); parameter bytes "
                  f"per rank after configure_model {per_rank[0]:,} / {per_rank[1]:,}, in the engine {engine[0]:,} / "
                  f"{engine[1]:,}, of {full:,} ({per_rank[0] / full:.3f} of the model)")
    (t2, p2, _, _), (t3, p3, _, _) = results[2], results[3]
    print(f"ZeRO-3 / ZeRO-2 ratio: tokens/s {t3 / t2:.3f}, per-rank parameter bytes {p3[0] / p2[0]:.3f}")


if __name__ == "__main__":
    main()
