"""Sampling from exported models (the `alm generate` command)."""

from __future__ import annotations

import numpy as np
import torch

from alm.export import load_config, load_pretrained
from alm.tokenizers.semantic import special_tokens


def sample_semantic(
    export_dir: str,
    num_tokens: int,
    num: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
) -> np.ndarray:
    """Sample `num` sequences of `num_tokens` semantic tokens from BOS (KV-cached) -> (num, num_tokens)."""
    cfg = load_config(export_dir)
    model = load_pretrained(export_dir, device)
    bos, eos = special_tokens(cfg.model.vocab_size)
    allowed = torch.ones(cfg.model.vocab_size, dtype=torch.bool, device=device)
    allowed[[bos, eos]] = False  # continue the stream: only cluster ids
    prompt = torch.full((num, 1), bos, dtype=torch.long, device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(prompt, num_tokens, temperature, top_k, top_p, generator=g, allowed=allowed)
    return out[:, 1:].cpu().numpy()
