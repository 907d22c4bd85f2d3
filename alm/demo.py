"""`alm demo`: the whole path on a CPU in a few minutes, on data it makes itself.

  1. a synthetic captioned audio set (melodies, chords, speech-like babble, noise events) -> shards
  2. semantic tokens: k-means on log-mel frames (the demo's stand-in for HuBERT features)
  3. a tiny AudioLM semantic LM trained with the same Trainer, checkpoints and loggers as any run
  4. export to safetensors, 5. reload the export and sample tokens with the KV cache
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from alm.config import build_config

# The embedded default recipe (complete, like every recipe); paths are filled in at run time.
DEMO_RECIPE = """
stage: semantic
run_dir: ???
seed: 0
resume: auto
trainer:
  accelerator: cpu
  devices: 1
  num_nodes: 1
  strategy: ddp
  zero_stage: 2
  offload: false
  precision: 32-true
  max_steps: 600
  accumulate_grad_batches: 1
  gradient_clip_val: 1.0
  ckpt_every_n_steps: 100
  keep_last_k: 2
  val_every_n_steps: 100
  val_batches: 4
  log_every_n_steps: 1
  progress_bar: true
  threads: 0
data:
  train_shards: ???
  val_shards: ???
  batch_size: 16
  max_tokens: 0
  max_len: 128
  num_workers: 2
  shuffle_buffer: 200
  tokenizer: ???
  codec: null
optim:
  lr: 0.002
  weight_decay: 0.1
  betas: [0.9, 0.95]
  eps: 1.0e-08
  warmup_steps: 20
  min_lr_ratio: 0.1
wandb:
  enabled: true
  project: alm-demo
  entity: null
  mode: offline
  name: null
model:
  vocab_size: 66
  n_layer: 4
  n_head: 4
  d_model: 128
  mlp_ratio: 4.0
  max_seq_len: 256
  dropout: 0.1
  bias: false
  rope_theta: 10000.0
  tie_embeddings: true
"""

CLUSTERS = 64


def say(msg: str) -> None:
    print(f"\n[alm demo] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="alm demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="alm-demo", help="where data, run, export and samples go")
    p.add_argument("--steps", type=int, default=600, help="training steps")
    p.add_argument("--clips", type=int, default=240, help="synthetic training clips (4 s each)")
    a = p.parse_args(argv)
    t0 = time.time()
    out = Path(a.out).resolve()

    from alm.data.synthetic import write_synthetic
    from alm.tokenizers.semantic import SemanticTokenizerConfig, run as tokenize

    audio, tokens = out / "data" / "audio", out / "data" / "semantic"
    if not (audio / "manifest.json").is_file():
        say(f"1/5 making a synthetic captioned audio dataset ({a.clips} clips of 4 s) -> {audio}")
        manifest = write_synthetic(audio, num_clips=a.clips)
        print(f"  {sum(s['num_samples'] for s in manifest['splits'].values())} clips in "
              f"{sum(len(s['shards']) for s in manifest['splits'].values())} shards")
    else:
        say(f"1/5 synthetic dataset already in {audio}")
    if not (tokens / "tokenizer").is_dir() or not list(tokens.glob("val-*.tar")):
        say(f"2/5 learning semantic tokens: k-means (K={CLUSTERS}) on log-mel frames "
            f"(demo stand-in for HuBERT features) -> {tokens}")
        cfg_tok = SemanticTokenizerConfig(features="logmel", n_clusters=CLUSTERS)
        tokenize(str(audio), str(tokens), cfg_tok, fit_shards=str(audio / "train-*.tar"))
    else:
        say(f"2/5 semantic tokens already in {tokens}")

    run_dir = out / "run"
    overrides = [
        f"run_dir={run_dir}",
        f"data.train_shards={tokens}/train-*.tar",
        f"data.val_shards={tokens}/val-*.tar",
        f"data.tokenizer={tokens}/tokenizer",
        f"trainer.max_steps={a.steps}",
    ]
    cfg = build_config(OmegaConf.create(DEMO_RECIPE), "alm demo (embedded recipe)", overrides)
    say(f"3/5 training a tiny semantic LM ({a.steps} steps on CPU) -> {run_dir}")
    from alm.training.loggers import read_metrics
    from alm.training.trainer import train

    train(cfg)
    metrics = read_metrics(run_dir)
    train_loss = [m["train/loss"] for m in metrics.values() if "train/loss" in m]
    val_loss = [(s, m["val/loss"]) for s, m in metrics.items() if "val/loss" in m]

    say(f"4/5 exporting -> {out / 'export'}")
    from alm.export import export

    export(run_dir, out / "export")

    say("5/5 sampling 150 semantic tokens from the export (KV cache, temperature 0.8, top-k 20)")
    from alm.generate import sample_semantic

    sample = sample_semantic(str(out / "export"), 150, num=1, temperature=0.8, top_k=20, seed=0)
    np.save(out / "sample_tokens.npy", sample)
    print("  " + " ".join(str(int(t)) for t in sample[0]))

    first = float(np.mean(train_loss[:10])) if train_loss else float("nan")
    last = float(np.mean(train_loss[-10:])) if train_loss else float("nan")
    print(
        f"\n[alm demo] done in {time.time() - t0:.0f} s\n"
        f"  train loss      {first:.3f} (first 10 steps) -> {last:.3f} (last 10 steps)\n"
        + (f"  val loss        {val_loss[-1][1]:.3f} at step {val_loss[-1][0]}\n" if val_loss else "")
        + f"  audio shards    {audio}\n"
        f"  token shards    {tokens}  (tokenizer: {tokens / 'tokenizer'})\n"
        f"  run             {run_dir}  (config.yaml, checkpoints/, logs/attempt-*/metrics.csv, wandb/)\n"
        f"  export          {out / 'export'}  (model.safetensors, config.yaml, tokenizer/)\n"
        f"  sampled tokens  {out / 'sample_tokens.npy'}\n"
        f"  load it:        python -c \"import alm; print(alm.load_pretrained('{out / 'export'}'))\"\n"
    )
    return 0
