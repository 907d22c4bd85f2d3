"""Codebook patterns (alm/models/codebook_patterns.py): every pattern against a plain-loop layout,
round trips of codes and logits for K in {1, 4, 8}, and the delay layout against transformers' MusicGen."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from alm.models.codebook_patterns import PATTERNS, make_pattern, num_steps

SPECIAL = 2048


def loop_steps(name: str, K: int, T: int) -> list[list[tuple[int, int]]]:
    """The layout written out step by step as (t, k) lists, the way the docstring draws it."""
    steps: list[list[tuple[int, int]]] = [[]]
    if name == "parallel":
        steps += [[(t, k) for k in range(K)] for t in range(T)]
    elif name == "delay":
        for s in range(T + K - 1):
            steps.append([(s - k, k) for k in range(K) if 0 <= s - k < T])
    elif name == "unroll":
        steps += [[(t, k)] for t in range(T) for k in range(K)]
    elif name == "coarse_first":
        steps += [[(t, 0)] for t in range(T)]
        if K > 1:
            steps += [[(t, k) for k in range(1, K)] for t in range(T)]
    return steps


def loop_build(name: str, codes: torch.Tensor) -> torch.Tensor:
    B, K, T = codes.shape
    steps = loop_steps(name, K, T)
    seq = torch.full((B, K, len(steps)), SPECIAL, dtype=codes.dtype)
    for s, cells in enumerate(steps):
        for t, k in cells:
            seq[:, k, s] = codes[:, k, t]
    return seq


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("K", [1, 4, 8])
@pytest.mark.parametrize("T", [1, 5, 37])
def test_build_matches_the_plain_loop_layout_and_reverts(name, K, T):
    g = torch.Generator().manual_seed(K * 100 + T)
    codes = torch.randint(0, SPECIAL, (3, K, T), generator=g)
    p = make_pattern(name, K, T)
    seq = p.build(codes, SPECIAL)
    assert torch.equal(seq, loop_build(name, codes))
    assert p.num_steps == seq.shape[-1] == num_steps(name, K, T)
    assert torch.equal(p.revert(seq), codes)
    # every code appears exactly once; every other cell is the special token
    assert int(p.valid.sum()) == K * T
    assert bool((seq[:, ~p.valid] == SPECIAL).all())
    assert bool((seq[..., 0] == SPECIAL).all())  # step 0 is the start column


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("K", [1, 4, 8])
def test_revert_logits_picks_the_step_before_each_code(name, K):
    T, C = 6, 11
    p = make_pattern(name, K, T)
    codes = torch.randint(0, C, (2, K, T))
    seq = p.build(codes, C)  # (B, K, S), special = C
    # a perfect LM: the logits at step s are one-hot on the token of step s + 1
    nxt = torch.cat([seq[..., 1:], torch.full_like(seq[..., :1], C)], dim=-1)
    logits = torch.nn.functional.one_hot(nxt, C + 1).float()[..., :C]  # (B, K, S, C)
    out = p.revert_logits(logits)
    assert out.shape == (2, K, T, C)
    assert torch.equal(out.argmax(-1), codes)
    targets, mask = p.step_targets(seq)
    assert torch.equal(targets[:, mask].sort(-1).values, seq[:, p.valid].sort(-1).values)
    assert torch.equal(logits[..., :-1, :].argmax(-1)[:, mask], targets[:, mask])


def test_delay_equals_transformers_musicgen_delay_pattern():
    from transformers.models.musicgen.modeling_musicgen import MusicgenForCausalLM

    for K, T in [(4, 9), (8, 20), (1, 3)]:
        codes = torch.randint(0, SPECIAL, (2, K, T))
        # transformers' start column (decoder_start_token_id = pad = codebook size), then the codes
        ids = torch.cat([torch.full((2, K, 1), SPECIAL), codes], dim=-1).reshape(2 * K, T + 1)
        fake = SimpleNamespace(num_codebooks=K, config=SimpleNamespace(audio_channels=1),
                               generation_config=SimpleNamespace(max_length=T + K))
        _, mask = MusicgenForCausalLM.build_delay_pattern_mask(fake, ids, pad_token_id=SPECIAL, max_length=T + K)
        p = make_pattern("delay", K, T)
        assert torch.equal(mask.reshape(2, K, T + K), p.build(codes, SPECIAL))
        # at generation transformers keeps its prediction exactly where the mask is -1: our `valid`
        _, empty = MusicgenForCausalLM.build_delay_pattern_mask(
            fake, torch.full((2 * K, 1), SPECIAL), pad_token_id=SPECIAL, max_length=T + K)
        assert torch.equal(empty.reshape(2, K, T + K)[0] == -1, p.valid)


def test_custom_delays_and_errors():
    p = make_pattern("delay", 3, 4, delays=[0, 2, 2])
    assert p.num_steps == 4 + 1 + 2
    codes = torch.arange(12).view(1, 3, 4)
    assert torch.equal(p.revert(p.build(codes, -1)), codes)
    with pytest.raises(ValueError, match="unknown codebook pattern 'zigzag'"):
        make_pattern("zigzag", 4, 4)
    with pytest.raises(ValueError, match="delays are a setting of the delay pattern only"):
        make_pattern("parallel", 2, 4, delays=[0, 1])
    with pytest.raises(ValueError, match="need 2 non-negative delays"):
        make_pattern("delay", 2, 4, delays=[0])
    with pytest.raises(ValueError, match=r"codes must be \(B, 4, 5\), got \(1, 4, 6\)"):
        make_pattern("delay", 4, 5).build(torch.zeros(1, 4, 6, dtype=torch.long), 0)
