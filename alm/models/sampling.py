"""Next-token sampling shared by every autoregressive stage: temperature, top-k, top-p (nucleus)."""

from __future__ import annotations

import math

import torch

from alm.errors import UserError


def check_sampling(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> None:
    """Refuse settings that have no meaning: temperature < 0, top_k < 0, top_p > 1 (or NaN)."""
    if not temperature >= 0 or math.isinf(temperature):
        raise UserError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise UserError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not top_p <= 1.0:
        raise UserError(f"top_p must be <= 1 (1 = off, <= 0 = greedy), got {top_p}")


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token per row.  logits: (B, V) -> (B,) int64.

    temperature = 0 or top_p <= 0 means greedy (argmax). top_k = 0 and top_p = 1.0 disable those
    filters. The most likely token always survives the top-p filter, so a small top_p keeps one.
    """
    check_sampling(temperature, top_k, top_p)
    if temperature == 0 or top_p <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the mass of the tokens ranked above it already reaches top_p
        drop = probs.cumsum(dim=-1) - probs >= top_p
        drop[..., 0] = False  # the top token is always kept
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
