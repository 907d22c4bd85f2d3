"""AudioPaLM training step under DeepSpeed ZeRO-2 vs ZeRO-3 (and ZeRO-3 with LoRA) on 2 ranks: tokens/s,
per-rank parameter bytes, and with LoRA the trained parameter bytes and AdamW state per rank.

    python benchmarks/audiopalm_step.py [--steps 30] [--warmup 5] [--lora-rank 8] [--recipe recipes/tiny/audiopalm.yaml] [key=value ...]

Each stage trains the recipe (synthetic data and LM unless overridden) for --steps optimizer steps on 2
gloo ranks (CPU; the same command on a GPU machine with trainer.accelerator=gpu) through
tests/scripts/probe_params.py, which records per rank the parameter bytes resident right after
configure_model and as the DeepSpeed engine holds them (from DeepSpeed's own tensors). tokens/s is
the median of the logged train/tokens_per_s (real input tokens of the packed rows, all ranks) over
the steps after --warmup. Printed: one line per stage and the ZeRO-3 / ZeRO-2 ratios of one run.
--lora-rank R > 0 adds a ZeRO-3 run with model.lora_rank=R: its trained bytes are counted on the model
(parameters with requires_grad: the adapters + the whole vocabulary matrices, whose text rows get a
zero grad), the AdamW state per rank follows from them (exp_avg + exp_avg_sq, fp32, partitioned over the
ranks by ZeRO) — computed, not read from the engine — and the LoRA / full ratios are printed.
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


def run_stage(recipe: str, zero: int, steps: int, tmp: Path, overrides: list[str], tag: str = "") -> dict:
    from alm.training.loggers import read_metrics

    out, run_dir = tmp / f"zero{zero}{tag}", tmp / f"run-zero{zero}{tag}"
    cmd = [sys.executable, str(PROBE), recipe, str(out), f"run_dir={run_dir}", "trainer.devices=2",
           "trainer.strategy=deepspeed", f"trainer.zero_stage={zero}", f"trainer.max_steps={steps}",
           "trainer.val_every_n_steps=0", "trainer.progress_bar=false", "trainer.ckpt_every_n_steps=100000",
           "trainer.threads=1", "wandb.enabled=false", *overrides]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"ZeRO-{zero} run failed ({p.returncode}):\n{p.stderr[-4000:]}")
    ranks = [json.loads((tmp / f"zero{zero}{tag}.rank{r}.json").read_text()) for r in (0, 1)]
    metrics = read_metrics(run_dir)
    speeds = [m["train/tokens_per_s"] for _, m in sorted(metrics.items()) if "train/tokens_per_s" in m]
    return {"ranks": ranks, "speeds": speeds}


def trained_bytes(recipe: str, overrides: list[str]) -> tuple[int, int]:
    """(bytes of the parameters the optimizer holds, bytes of all parameters) of the recipe's model, on the meta device."""
    import torch

    from alm.config import load_recipe
    from alm.data.cache import resolve_synthetic
    from alm.models.audiopalm import AudioPalmLM
    from alm.stages.audiopalm import resolve_model_config

    cfg = load_recipe(recipe, overrides)
    resolve_synthetic(cfg)
    resolve_model_config(cfg)
    with torch.device("meta"):
        model = AudioPalmLM(cfg.model)
    params = {id(p): p for p in model.parameters()}.values()
    return (sum(p.numel() * 4 for p in params if p.requires_grad), sum(p.numel() * 4 for p in params))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5, help="first logged steps left out of the median")
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "tiny" / "audiopalm.yaml"))
    ap.add_argument("--lora-rank", type=int, default=8, help="> 0: also ZeRO-3 with model.lora_rank=R (0: skip)")
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
        if a.lora_rank > 0:
            lora = [f"model.lora_rank={a.lora_rank}"]
            r = run_stage(a.recipe, 3, a.steps, Path(tmp), a.overrides + lora, tag="-lora")
            tl = statistics.median(r["speeds"][a.warmup :])
            trained, full_bytes = trained_bytes(a.recipe, a.overrides + lora)
            trained_full, _ = trained_bytes(a.recipe, a.overrides)
            ranks = 2
            adam, adam_full = 2 * trained // ranks, 2 * trained_full // ranks  # exp_avg + exp_avg_sq, fp32, ZeRO-partitioned
            print(f"ZeRO-3 + LoRA r={a.lora_rank}: {tl:,.0f} tokens/s; parameter bytes per rank after configure_model "
                  f"{r['ranks'][0]['after_configure_model']:,}; trained bytes {trained:,} of {full_bytes:,} "
                  f"(full fine-tuning {trained_full:,}); AdamW state per rank {adam:,} (full fine-tuning {adam_full:,})")
            print(f"LoRA / full (ZeRO-3) ratio: trained bytes and AdamW state per rank {trained / trained_full:.3f}, "
                  f"tokens/s {tl / results[3][0]:.3f}")
    (t2, p2, _, _), (t3, p3, _, _) = results[2], results[3]
    print(f"ZeRO-3 / ZeRO-2 ratio: tokens/s {t3 / t2:.3f}, per-rank parameter bytes {p3[0] / p2[0]:.3f}")


if __name__ == "__main__":
    main()
