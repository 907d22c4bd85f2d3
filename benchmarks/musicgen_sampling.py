"""MusicGen sampling speed: the KV cache (self + cross) and the cost of classifier-free guidance.

    python benchmarks/musicgen_sampling.py [--threads 1] [--frames 100] [--batch 2] [--text-len 32]
                                           [--dim 256] [--layers 6] [--heads 8] [--device cpu]

All on one MusicGenLM (alm/models/musicgen.py) with random weights (the cost of a pass does not
depend on what it has learnt), the delay pattern over K = 4 codebooks, a random T5-like condition
of --text-len tokens per prompt, greedy decoding so that every variant must give the same codes:

1. KV cache: generate with use_cache=True (self-attention keys/values kept, the condition's
   cross-attention keys/values computed once) vs use_cache=False (the whole prefix and the whole
   condition recomputed every step). Steps/s and tokens/s (K tokens per step per prompt), speedup.
2. CFG: guidance batched (cond + null rows in one forward of 2B rows, as MusicGen) vs two forwards
   per step (B rows each), vs no guidance; the time ratios.

Ratios are measured in one run, on this machine; nothing here is a threshold.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alm.models.codebook_patterns import make_pattern  # noqa: E402
from alm.models.musicgen import MusicGenConfig, MusicGenLM  # noqa: E402


def timed(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--frames", type=int, default=100, help="codec frames to generate (50 Hz: 2 s)")
    p.add_argument("--batch", type=int, default=2, help="prompts per batch")
    p.add_argument("--text-len", type=int, default=32, help="condition tokens per prompt")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3, help="best of N timings")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    K = 4
    cfg = MusicGenConfig(dim=args.dim, n_layer=args.layers, n_head=args.heads, ffn_dim=4 * args.dim, codebooks=K,
                         card=2048, cond_dim=768, dropout=0.0, max_seq_len=args.frames + K + 1)
    model = MusicGenLM(cfg).eval().to(args.device)
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(args.batch, args.text_len, 768, generator=g).to(args.device)
    mask = torch.ones(args.batch, args.text_len, dtype=torch.long, device=args.device)
    mask[-1, args.text_len // 2:] = 0  # prompts of different lengths
    pat = make_pattern("delay", K, args.frames)
    steps = pat.num_steps - 1
    tokens = steps * K * args.batch
    print(f"MusicGenLM {model.num_params() / 1e6:.1f} M parameters (dim {args.dim}, {args.layers} layers), "
          f"batch {args.batch}, {args.frames} frames = {steps} steps x {K} codebooks, condition {args.text_len} "
          f"tokens, cfg {args.cfg}, {args.threads} thread(s), {args.device}")

    def gen(**kw):
        return model.generate(pat.valid, cond, mask, temperature=0.0, **kw)

    gen(cfg_scale=args.cfg)  # warm-up
    cached, t_cache = timed(lambda: gen(cfg_scale=args.cfg), args.repeats)
    full, t_full = timed(lambda: gen(cfg_scale=args.cfg, use_cache=False), args.repeats)
    assert torch.equal(cached, full), "the KV cache changed the greedy codes"
    print("\n1. KV cache (self + cross), with CFG")
    print(f"   cache on : {t_cache:7.2f} s  {steps / t_cache:8.1f} steps/s  {tokens / t_cache:9.1f} tokens/s")
    print(f"   cache off: {t_full:7.2f} s  {steps / t_full:8.1f} steps/s  {tokens / t_full:9.1f} tokens/s")
    print(f"   speedup  : {t_full / t_cache:.2f}x (same codes)")

    two, t_two = timed(lambda: gen(cfg_scale=args.cfg, cfg_batched=False), args.repeats)
    assert torch.equal(two, cached), "two-pass CFG changed the greedy codes"
    _, t_none = timed(lambda: gen(cfg_scale=1.0), args.repeats)
    print("\n2. classifier-free guidance, KV cache on")
    print(f"   no guidance          : {t_none:7.2f} s")
    print(f"   batched (2B rows)    : {t_cache:7.2f} s  = {t_cache / t_none:.2f}x no guidance")
    print(f"   two passes (B + B)   : {t_two:7.2f} s  = {t_two / t_none:.2f}x no guidance")
    print(f"   batched / two passes : {t_cache / t_two:.2f} (same codes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
