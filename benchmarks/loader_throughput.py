"""Data throughput, measured in one run:

  1. loader headroom: samples/s the training stream delivers (2 workers) vs samples/s a tiny
     semantic-LM training step consumes — for token shards and for raw flac audio shards;
  2. prep throughput: audio-hours per minute of `alm prep librilight` on a generated LibriLight layout.

    python benchmarks/loader_throughput.py [--workers 2] [--batches 60]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alm.config import load_recipe  # noqa: E402
from alm.data.audio import encode_flac, load_mono  # noqa: E402
from alm.data.stream import ShardStream, make_loader, resolve_shard_sets  # noqa: E402
from alm.data.synthetic import make_clip, write_synthetic  # noqa: E402
from alm.stages.lm import collate, lm_loss  # noqa: E402
from alm.stages.semantic import make_example  # noqa: E402
from alm.models.transformer import TransformerLM  # noqa: E402
from alm.tokenizers.semantic import SemanticTokenizerConfig, run as tokenize  # noqa: E402
from alm.training.optim import configure_optimizers  # noqa: E402


def loader_rate(stream: ShardStream, workers: int, batches: int) -> float:
    loader = make_loader(stream, workers)
    it = iter(loader)
    next(it)  # workers started
    t, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(it)["_n"])
    return n / (time.perf_counter() - t)


def audio_example(sample, rng, seconds=4.0, sr=16000):
    audio, _ = load_mono(sample["flac"], sr)
    n = int(seconds * sr)
    start = int(rng.integers(0, max(1, len(audio) - n + 1)))
    return {"audio": audio[start : start + n]}


def audio_collate(examples):
    longest = max(len(e["audio"]) for e in examples)
    x = np.zeros((len(examples), longest), np.float32)
    for i, e in enumerate(examples):
        x[i, : len(e["audio"])] = e["audio"]
    return {"audio": torch.from_numpy(x), "_n": [0] * len(examples)}


def tokens_collate(examples):
    b = collate(examples)
    b["_n"] = [0] * len(examples)
    return b


def step_rate(cfg, batch, steps: int = 20) -> float:
    torch.manual_seed(0)
    model = TransformerLM(cfg.model)
    opt = configure_optimizers(model, cfg)["optimizer"]
    for i in range(steps + 3):
        if i == 3:
            t = time.perf_counter()
        loss = lm_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * batch["inputs"].shape[0] / (time.perf_counter() - t)


def librilight_layout(root: Path, files: int, seconds: float) -> float:
    """A LibriLight-like tree of flac chapters + json sidecars; returns its hours of audio."""
    sr = 16000
    for i in range(files):
        d = root / "small" / str(100 + i % 5) / f"book_{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        audio = np.concatenate([make_clip(1, i * 10 + k, sr, 4.0)[0] for k in range(int(seconds / 4))])
        (d / f"chapter_{i:04d}.flac").write_bytes(encode_flac(audio, sr))
        (d / f"chapter_{i:04d}.json").write_text(json.dumps({"speaker": str(100 + i % 5), "snr": float("nan")}))
    return files * seconds / 3600


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_recipe(REPO / "recipes" / "tiny" / "semantic.yaml", ["data.train_shards=unused", "data.tokenizer=null"])
    bs = cfg.data.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        audio_dir, tok_dir = tmp / "audio", tmp / "tokens"
        write_synthetic(audio_dir, num_clips=240, val_clips=8, shard_size=30)
        tokenize(str(audio_dir), str(tok_dir), SemanticTokenizerConfig(features="logmel", n_clusters=64),
                 fit_shards=str(audio_dir / "train-*.tar"), progress=False)
        import functools

        ex = functools.partial(make_example, max_len=cfg.data.max_len, vocab_size=cfg.model.vocab_size)
        tok_stream = ShardStream(resolve_shard_sets(str(tok_dir / "train-*.tar")), ex, tokens_collate, bs, seed=0,
                                 shuffle_buffer=200, rank_world=(0, 1))
        aud_stream = ShardStream(resolve_shard_sets(str(audio_dir / "train-*.tar")), audio_example, audio_collate, bs,
                                 seed=0, shuffle_buffer=200, rank_world=(0, 1))
        tok_rate = loader_rate(tok_stream, a.workers, a.batches)
        aud_rate = loader_rate(aud_stream, a.workers, a.batches)
        batch = next(iter(make_loader(tok_stream, 0)))
        consume = step_rate(cfg, batch)
        print(f"tiny semantic-LM training step consumes   {consume:9.1f} samples/s  (batch {bs} x {cfg.data.max_len} tokens, {a.threads} threads)")
        print(f"loader, token shards, {a.workers} workers:        {tok_rate:9.1f} samples/s  -> headroom {tok_rate / consume:6.1f}x")
        print(f"loader, flac audio shards (decode + 4 s crop): {aud_rate:9.1f} samples/s  -> headroom {aud_rate / consume:6.1f}x")

        from alm.data_prep.cli import run as prep

        src = tmp / "librilight"
        hours = librilight_layout(src, files=24, seconds=60.0)
        t = time.perf_counter()
        prep("librilight", src, tmp / "prepped", workers=a.workers, quiet=True)
        minutes = (time.perf_counter() - t) / 60
        print(f"alm prep librilight ({hours * 60:.0f} min of 16 kHz flac, {a.workers} workers): {hours / minutes:.2f} audio-hours/minute")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
