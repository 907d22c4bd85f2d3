"""Codebook interleaving patterns: how K parallel codec codebooks become the steps of one LM.

A codec gives codes (B, K, T): K residual-VQ codebooks per frame, T frames. An LM with K summed
input embeddings and K output heads reads and writes one column of K tokens per step. A pattern
says which (frame t, codebook k) sits in which step s. The LM's sequence is (B, K, S); a cell that
holds no code (nothing yet, or nothing any more) holds the special token `special` (the LM's
extra embedding row, id = codebook size, e.g. 2048 for MusicGen). Step 0 is always empty: it is
the start token column the first real step is predicted from.

Drawings for K = 4 codebooks, T = 5 frames (`a0` = frame 0 of codebook a, `.` = special):

    parallel (all codebooks of frame t in step t + 1; S = T + 1)
        s:   0   1   2   3   4   5
        a:   .  a0  a1  a2  a3  a4
        b:   .  b0  b1  b2  b3  b4
        c:   .  c0  c1  c2  c3  c4
        d:   .  d0  d1  d2  d3  d4

    delay (MusicGen's default: codebook k is delayed by k steps; S = T + K)
        s:   0   1   2   3   4   5   6   7   8
        a:   .  a0  a1  a2  a3  a4   .   .   .
        b:   .   .  b0  b1  b2  b3  b4   .   .
        c:   .   .   .  c0  c1  c2  c3  c4   .
        d:   .   .   .   .  d0  d1  d2  d3  d4

    unroll (flattened: one codebook per step, frame by frame; S = K T + 1)
        s:   0   1   2   3   4   5   6   7   8   9 ...
        a:   .  a0   .   .   .  a1   .   .   .  a2
        b:   .   .  b0   .   .   .  b1   .   .   .
        c:   .   .   .  c0   .   .   .  c1   .   .
        d:   .   .   .   .  d0   .   .   .  d1   .

    coarse_first (VALL-E: codebook a over all frames, then the others in parallel; S = 2T + 1)
        s:   0   1   2   3   4   5   6   7   8   9  10
        a:   .  a0  a1  a2  a3  a4   .   .   .   .   .
        b:   .   .   .   .   .   .  b0  b1  b2  b3  b4
        c:   .   .   .   .   .   .  c0  c1  c2  c3  c4
        d:   .   .   .   .   .   .  d0  d1  d2  d3  d4

The delay layout equals transformers' MusicGen exactly (MusicgenForCausalLM.build_delay_pattern_mask
with pad_token_id = decoder_start_token_id = codebook size, on the codes with its start column
prepended and max_length = T + K): there a cell is "P" (the pad id) where it holds no code, both the
leading triangle (the start column included) and the trailing one. Its generation overrides exactly
the cells `valid` marks (its -1 cells, apply_delay_pattern_mask). Tested in tests/test_codebook_patterns.py.

The LM reads the whole sequence (B, K, S) and its output at step s predicts step s + 1 (teacher
forcing with a shift of one step): `revert_logits` picks, for every (k, t), the logits of the step
before the one holding it. Training loss: cross-entropy over the cells `valid[:, 1:]` of
`sequence[..., 1:]` against `logits[..., :-1, :]` (`step_targets` gives both), i.e. every code once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

PATTERNS = ("parallel", "delay", "unroll", "coarse_first")


@dataclass(frozen=True)
class Pattern:
    """One layout of (K codebooks, T frames) into S steps. `positions[k, t]` = the step holding
    (t, k); `frames[k, s]` = the frame held at (k, s), or -1 where the cell holds the special token."""

    name: str
    positions: torch.Tensor  # (K, T) long, strictly increasing along t, every value in [1, S)
    num_steps: int  # S

    @property
    def num_codebooks(self) -> int:
        return self.positions.shape[0]

    @property
    def num_frames(self) -> int:
        return self.positions.shape[1]

    @property
    def frames(self) -> torch.Tensor:
        """(K, S) long: which frame each cell holds, -1 for the special token."""
        K, T = self.positions.shape
        out = torch.full((K, self.num_steps), -1, dtype=torch.long)
        out.scatter_(1, self.positions, torch.arange(T).expand(K, T))
        return out

    @property
    def valid(self) -> torch.Tensor:
        """(K, S) bool: the cells that hold a code (what generation samples, what the loss covers)."""
        return self.frames >= 0

    def build(self, codes: torch.Tensor, special: int) -> torch.Tensor:
        """codes (B, K, T) -> sequence (B, K, S), `special` where a cell holds no code."""
        self._check(codes, "codes", self.num_frames)
        frames = self.frames.to(codes.device)  # (K, S)
        idx = frames.clamp(min=0).unsqueeze(0).expand(codes.shape[0], -1, -1)  # (B, K, S)
        seq = codes.gather(2, idx)
        return seq.masked_fill(frames.unsqueeze(0) < 0, special)

    def revert(self, sequence: torch.Tensor) -> torch.Tensor:
        """sequence (B, K, S) -> codes (B, K, T): the inverse of build."""
        self._check(sequence, "sequence", self.num_steps)
        pos = self.positions.to(sequence.device).unsqueeze(0).expand(sequence.shape[0], -1, -1)
        return sequence.gather(2, pos)

    def revert_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The LM's output logits (B, K, S, C) (step s predicts step s + 1) -> (B, K, T, C): the
        logits that predict code (t, k), i.e. those of step positions[k, t] - 1."""
        self._check(logits, "logits", self.num_steps)
        B, K, _, C = logits.shape
        pos = (self.positions.to(logits.device) - 1).view(1, K, -1, 1).expand(B, K, -1, C)
        return logits.gather(2, pos)

    def step_targets(self, sequence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sequence (B, K, S) -> (targets (B, K, S - 1), mask (K, S - 1) bool): what the outputs of
        steps 0..S-2 predict and which of them are codes (the loss's cells)."""
        self._check(sequence, "sequence", self.num_steps)
        return sequence[..., 1:], self.valid[:, 1:].to(sequence.device)

    def _check(self, x: torch.Tensor, what: str, length: int) -> None:
        if x.dim() < 3 or x.shape[1] != self.num_codebooks or x.shape[2] != length:
            raise ValueError(
                f"{self.name} pattern for K={self.num_codebooks}, T={self.num_frames}: {what} must be "
                f"(B, {self.num_codebooks}, {length}{', C' if what == 'logits' else ''}), got {tuple(x.shape)}"
            )


def make_pattern(name: str, num_codebooks: int, num_frames: int, delays: Optional[Sequence[int]] = None) -> Pattern:
    """The `name` pattern (one of PATTERNS) for K codebooks over T frames. `delays` (delay pattern
    only): one non-negative delay per codebook, default 0, 1, ..., K - 1 (MusicGen)."""
    K, T = int(num_codebooks), int(num_frames)
    if name not in PATTERNS:
        raise ValueError(f"unknown codebook pattern {name!r}; expected one of {', '.join(PATTERNS)}")
    if K < 1 or T < 0:
        raise ValueError(f"codebook pattern needs num_codebooks >= 1 and num_frames >= 0, got K={K}, T={T}")
    if delays is not None and name != "delay":
        raise ValueError(f"delays are a setting of the delay pattern only, got delays={list(delays)} for {name!r}")
    t = torch.arange(T).unsqueeze(0)  # (1, T)
    k = torch.arange(K).unsqueeze(1)  # (K, 1)
    if name == "parallel":
        positions, steps = (1 + t).expand(K, T), T + 1
    elif name == "delay":
        d = list(range(K)) if delays is None else [int(x) for x in delays]
        if len(d) != K or min(d) < 0:
            raise ValueError(f"delay pattern: need {K} non-negative delays (one per codebook), got {d}")
        positions, steps = 1 + t + torch.tensor(d).unsqueeze(1), T + 1 + max(d)
    elif name == "unroll":
        positions, steps = 1 + t * K + k, K * T + 1
    else:  # coarse_first
        positions = torch.where(k == 0, 1 + t, 1 + T + t)
        steps = T + 1 if K == 1 else 2 * T + 1
    return Pattern(name=name, positions=positions.contiguous().long(), num_steps=int(steps))


def num_steps(name: str, num_codebooks: int, num_frames: int, delays: Optional[Sequence[int]] = None) -> int:
    """S, the steps `name` takes for T frames (what generation runs for `--seconds`)."""
    return make_pattern(name, num_codebooks, num_frames, delays).num_steps
