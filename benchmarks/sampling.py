"""Sampling speed: KV cache vs recompute, and SoundStorm's parallel decoding vs autoregressive.

    python benchmarks/sampling.py [--threads 1] [--tokens 500] [--frames 150] [--levels 12]

1. TransformerLM.generate with use_cache=True vs False: the same model, prompt and seed (the two
   outputs must be identical), `--tokens` new tokens; tokens/s of each and the speedup.
2. The same number of RVQ tokens (frames x levels) from semantic tokens, two ways:
   - autoregressive, as AudioLM's acoustic stages flatten them: a TransformerLM over
     [semantic prefix | level-offset codec ids], one forward pass per token with the KV cache;
   - SoundStorm: sum(steps_per_level) forward passes over all frames (default 16 + 1 per other level).
   Both trunks have the same depth and width; parameter counts are printed. Reports the ratio of
   forward passes and of wall time.

Untrained (random) weights: the cost of a pass does not depend on what the model has learnt.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alm.models.soundstorm import SoundStorm, SoundStormConfig  # noqa: E402
from alm.models.transformer import TransformerConfig, TransformerLM  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def params(model: torch.nn.Module, skip: tuple[str, ...] = ()) -> str:
    total = sum(p.numel() for p in model.parameters())
    trunk = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(skip))
    return f"{total / 1e6:.2f}M params ({trunk / 1e6:.2f}M without embeddings/heads)"


def kv_cache(args) -> None:
    cfg = TransformerConfig(vocab_size=args.vocab, n_layer=args.layers, n_head=args.heads, d_model=args.width,
                            max_seq_len=args.prompt + args.tokens)
    torch.manual_seed(0)
    model = TransformerLM(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    print(f"\n[1] KV cache vs recompute: TransformerLM {args.layers} layers x {args.width} wide, {args.heads} heads, "
          f"vocab {args.vocab}, {params(model, ('embed', 'lm_head'))}; batch 1, prompt {args.prompt}, "
          f"{args.tokens} new tokens, temperature 1.0")
    warm = min(16, args.tokens)
    model.generate(prompt, warm, use_cache=True)  # warm-up
    model.generate(prompt, warm, use_cache=False)
    runs = {}
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(1)
        runs[use_cache] = timed(lambda: model.generate(prompt, args.tokens, generator=g, use_cache=use_cache))
    same = torch.equal(runs[True][0], runs[False][0])
    t_cache, t_full = runs[True][1], runs[False][1]
    print(f"  with cache : {t_cache:7.2f} s  {args.tokens / t_cache:8.1f} tokens/s")
    print(f"  recompute  : {t_full:7.2f} s  {args.tokens / t_full:8.1f} tokens/s")
    print(f"  speedup    : {t_full / t_cache:.1f}x   (identical outputs: {same})")


def soundstorm_vs_ar(args) -> None:
    T, Q, C, K = args.frames, args.levels, args.codebook, args.semantic_vocab
    steps = [args.first_steps] + [1] * (Q - 1)
    # autoregressive: [BOS] semantic (T) [SEP] then T*Q codec ids, frame by frame (level-offset vocabulary)
    ar_cfg = TransformerConfig(vocab_size=K + Q * C + 3, n_layer=args.layers, n_head=args.heads, d_model=args.width,
                               max_seq_len=T + 2 + T * Q)
    torch.manual_seed(0)
    ar = TransformerLM(ar_cfg).eval()
    semantic = torch.randint(0, K, (1, T), generator=torch.Generator().manual_seed(0))
    prefix = torch.cat([torch.tensor([[K + Q * C]]), semantic, torch.tensor([[K + Q * C + 1]])], dim=1)
    print(f"\n[2] SoundStorm vs autoregressive: {T} frames x {Q} levels = {T * Q} RVQ tokens, codebook {C}, "
          f"semantic vocab {K}, batch 1, temperature 1.0; SoundStorm steps_per_level {args.first_steps} + "
          f"{Q - 1} x 1 (greedy after the first level)")
    ar.generate(prefix, 16)  # warm-up
    _, t_ar = timed(lambda: ar.generate(prefix, T * Q, generator=torch.Generator().manual_seed(1)))
    n_ar = T * Q
    print(f"  AR TransformerLM {args.layers}x{args.width}, {params(ar, ('embed', 'lm_head'))}, prefix {prefix.size(1)} "
          f"tokens, KV cache")
    print(f"      {n_ar:6d} forward passes  {t_ar:7.2f} s  {T * Q / t_ar:8.1f} tokens/s")
    # the transformer variant has exactly the AR trunk; the conformer variant is the paper's block
    for kernel, ratio in ((0, 4.0), (args.conv_kernel, args.ss_mlp_ratio)):
        cfg = SoundStormConfig(n_q=Q, codebook_size=C, semantic_vocab=K, d_model=args.width, n_layer=args.layers,
                               n_head=args.heads, mlp_ratio=ratio, conv_kernel=kernel, max_frames=T,
                               window_s=T / 50.0)
        torch.manual_seed(0)
        ss = SoundStorm(cfg).eval()
        kind = f"conformer (kernel {kernel}, 2 x FFN/2 ratio {ratio})" if kernel else f"transformer (MLP ratio {ratio})"
        ss.generate(semantic, steps_per_level=[1] * Q)  # warm-up
        codes, t_ss = timed(lambda: ss.generate(semantic, steps_per_level=steps,
                                                generator=torch.Generator().manual_seed(1)))
        n_ss = ss.last_forward_passes
        assert codes.shape == (1, Q, T) and n_ss == sum(steps)
        print(f"  SoundStorm {args.layers}x{args.width} {kind}, "
              f"{params(ss, ('code_embed', 'semantic_embed', 'heads'))}")
        print(f"      {n_ss:6d} forward passes  {t_ss:7.2f} s  {T * Q / t_ss:8.1f} tokens/s   "
              f"-> AR/SS: {n_ar / n_ss:.1f}x fewer passes, {t_ar / t_ss:.1f}x less wall time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=1024, help="[1] vocabulary")
    ap.add_argument("--prompt", type=int, default=8, help="[1] prompt tokens")
    ap.add_argument("--tokens", type=int, default=500, help="[1] new tokens")
    ap.add_argument("--frames", type=int, default=150, help="[2] codec frames (3 s at 50 Hz)")
    ap.add_argument("--levels", type=int, default=12, help="[2] RVQ levels")
    ap.add_argument("--codebook", type=int, default=1024)
    ap.add_argument("--semantic-vocab", type=int, default=500)
    ap.add_argument("--first-steps", type=int, default=16, help="[2] SoundStorm steps on the first level")
    ap.add_argument("--conv-kernel", type=int, default=5, help="[2] SoundStorm conformer kernel")
    ap.add_argument("--ss-mlp-ratio", type=float, default=2.0,
                    help="[2] conformer FFN ratio (a conformer block has two FFNs)")
    ap.add_argument("--skip-kv", action="store_true", help="skip [1]")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device cpu, torch.set_num_threads({args.threads}) "
          f"-> {torch.get_num_threads()} threads, float32, no grad")
    if not args.skip_kv:
        kv_cache(args)
    soundstorm_vs_ar(args)


if __name__ == "__main__":
    main()
