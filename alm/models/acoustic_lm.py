"""AudioLM's acoustic stages: a decoder-only LM over a prefix and flattened codec tokens.

    coarse (stage 2):  [BOS] s_1 .. s_S [SEP] a(1,1) .. a(1,Q') a(2,1) .. a(T,Q')
                       semantic tokens of a window, then its first Q' RVQ levels, frame by frame
    fine   (stage 3):  [BOS] a(1,1) .. a(T,Q') [SEP] a(1,Q'+1) .. a(1,Q) a(2,Q'+1) .. a(T,Q)
                       the coarse levels of a window, then its remaining levels

One vocabulary holds every kind of token; `TokenLayout` is the only place that knows the id
offsets:

    [ semantic ids: 0 .. K-1 | level 0: K .. K+C-1 | level 1: K+C .. | ... | BOS | SEP | EOS | condition ids ]

(condition ids: MusicLM's MuLan tokens, in front of a conditioned coarse stage's sequences, model.condition_levels.)

(C = codebook_size; a fine-stage vocabulary has K = 0). The network is the plain TransformerLM;
this file adds the layout, windows, and sampling that only allows, at each position, the ids of the
codebook level that position holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from alm.models.transformer import ConditionedLMConfig, TransformerLM


@dataclass
class AcousticLMConfig(ConditionedLMConfig):
    semantic_vocab: int = 0  # K semantic ids in the prefix (coarse stage); 0 for the fine stage
    codebook_size: int = 1024  # C: ids per RVQ level
    prefix_levels: int = 0  # RVQ levels in the prefix (fine stage: Q'); 0 for the coarse stage
    target_levels: int = 4  # RVQ levels predicted: coarse Q', fine Q - Q'
    semantic_rate: float = 50.0  # semantic tokens per second (coarse stage)
    frame_rate: float = 50.0  # codec frames per second
    window_s: float = 10.0  # seconds of audio per training / generation window

    @property
    def layout(self) -> "TokenLayout":
        return TokenLayout(self.semantic_vocab, self.codebook_size, self.prefix_levels + self.target_levels,
                           self.condition_vocab)

    def frames(self, seconds: float) -> int:
        return int(round(seconds * self.frame_rate))

    def semantic_len(self, seconds: float) -> int:
        return int(round(seconds * self.semantic_rate)) if self.semantic_vocab else 0

    def seq_len(self, seconds: float) -> int:
        """Tokens of one window: condition tokens + BOS + prefix + SEP + targets."""
        t = self.frames(seconds)
        return max(self.condition_levels, 0) + 2 + self.semantic_len(seconds) + t * self.prefix_levels + t * self.target_levels

    def validate(self) -> None:
        expected = self.layout.size
        if self.vocab_size != expected:
            raise ValueError(
                f"key 'model.vocab_size': must be {expected} for this layout "
                f"({self.semantic_vocab} semantic + {self.prefix_levels + self.target_levels} levels x "
                f"{self.codebook_size} codes + 3 specials"
                + (f" + {self.condition_levels} x {self.condition_codebook} condition ids" if self.condition_vocab else "")
                + f"), got {self.vocab_size}"
            )
        super().validate()
        if (self.semantic_vocab > 0) == (self.prefix_levels > 0):
            raise ValueError("key 'model.prefix_levels': coarse stage = semantic_vocab > 0 and prefix_levels 0; "
                             "fine stage = semantic_vocab 0 and prefix_levels > 0")
        if self.condition_levels and self.prefix_levels:
            raise ValueError("key 'model.condition_levels': only the coarse stage is conditioned (MusicLM); the fine stage must be 0")
        if self.target_levels < 1 or self.codebook_size < 2:
            raise ValueError("key 'model.target_levels': must be >= 1 (and model.codebook_size >= 2)")
        if self.seq_len(self.window_s) > self.max_seq_len:
            raise ValueError(f"key 'model.window_s': a {self.window_s} s window is {self.seq_len(self.window_s)} "
                             f"tokens, more than model.max_seq_len={self.max_seq_len}")


@dataclass(frozen=True)
class TokenLayout:
    semantic_vocab: int
    codebook_size: int
    levels: int  # all codec levels this vocabulary holds (prefix + target)
    condition_vocab: int = 0  # condition ids after EOS (MusicLM's MuLan tokens): condition_base ..

    @property
    def bos(self) -> int:
        return self.semantic_vocab + self.levels * self.codebook_size

    @property
    def sep(self) -> int:
        return self.bos + 1

    @property
    def eos(self) -> int:
        return self.bos + 2

    @property
    def condition_base(self) -> int:
        return self.bos + 3

    @property
    def size(self) -> int:
        return self.condition_base + self.condition_vocab

    def flatten(self, codes: np.ndarray, first_level: int) -> np.ndarray:
        """codes (q, T) of levels first_level .. first_level+q-1 -> ids (T*q,), frame by frame."""
        q = codes.shape[0]
        offsets = self.semantic_vocab + (first_level + np.arange(q))[:, None] * self.codebook_size  # (q, 1)
        return (codes.astype(np.int64) + offsets).T.reshape(-1)

    def unflatten(self, ids: np.ndarray | torch.Tensor, first_level: int, q: int):
        """ids (..., T*q) -> codes (..., q, T), the inverse of flatten."""
        shape = ids.shape[:-1]
        codes = ids.reshape(*shape, -1, q)  # (..., T, q)
        offsets = self.semantic_vocab + (first_level + np.arange(q)) * self.codebook_size  # (q,)
        if isinstance(codes, torch.Tensor):
            codes = codes - torch.as_tensor(offsets, device=codes.device)
            return codes.transpose(-1, -2)
        return np.swapaxes(codes - offsets, -1, -2)

    def level_masks(self, first_level: int, q: int, frames: int) -> torch.Tensor:
        """(frames*q, size) bool: at each flattened position, the ids of the level it holds."""
        masks = torch.zeros(q, self.size, dtype=torch.bool)
        for j in range(q):
            start = self.semantic_vocab + (first_level + j) * self.codebook_size
            masks[j, start : start + self.codebook_size] = True
        return masks.repeat(frames, 1)


class AcousticLM(TransformerLM):
    """TransformerLM + the acoustic token layout (coarse or fine stage, per the config)."""

    def __init__(self, cfg: AcousticLMConfig):
        super().__init__(cfg)
        self.layout = cfg.layout

    @property
    def first_target_level(self) -> int:
        return self.cfg.prefix_levels

    def prefix_ids(self, semantic: np.ndarray | None = None, coarse: np.ndarray | None = None,
                   condition: np.ndarray | None = None) -> np.ndarray:
        """[condition ids] [BOS] prefix [SEP]: semantic ids (S,) for the coarse stage, coarse codes (Q', T)
        for the fine; condition: the (L,) MuLan tokens of a conditioned coarse stage."""
        lay = self.layout
        if self.cfg.semantic_vocab:
            body = np.asarray(semantic, dtype=np.int64)
        else:
            body = lay.flatten(np.asarray(coarse), first_level=0)
        return np.concatenate([condition_prefix(self.cfg, condition), [lay.bos], body, [lay.sep]]).astype(np.int64)

    @torch.no_grad()
    def generate_codes(self, prefix: torch.Tensor, frames: int, temperature: float = 1.0, top_k: int = 0,
                       top_p: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """prefix (B, P) ids ([BOS] .. [SEP]) -> target codes (B, target_levels, frames)."""
        q = self.cfg.target_levels
        allowed = self.layout.level_masks(self.first_target_level, q, frames).to(prefix.device)
        out = self.generate(prefix, frames * q, temperature, top_k, top_p, generator=generator, allowed=allowed)
        return self.layout.unflatten(out[:, prefix.size(1):], self.first_target_level, q)


def condition_prefix(cfg: AcousticLMConfig, condition: np.ndarray | None) -> np.ndarray:
    """The condition ids a conditioned coarse stage's sequences start with (empty when unconditioned)."""
    from alm.tokenizers.mulan import check_condition, condition_ids

    if not cfg.condition_levels:
        return np.zeros(0, np.int64)
    tokens = check_condition(condition, cfg.condition_levels, cfg.condition_codebook)
    return condition_ids(tokens, cfg.layout.condition_base, cfg.condition_codebook)


def aligned_window(n_frames: int, n_semantic: int, frame_rate: float, semantic_rate: float, window_frames: int,
                   rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random window of at most `window_frames` codec frames and the same span of time in the
    semantic stream (n_semantic = 0: codes only) -> (frame_start, frame_count, semantic_start, semantic_count)."""
    return aligned_windows(n_frames, n_semantic, frame_rate, semantic_rate, window_frames, rng, every=False)[0]


def aligned_windows(n_frames: int, n_semantic: int, frame_rate: float, semantic_rate: float, window_frames: int,
                    rng: np.random.Generator, every: bool = True) -> list[tuple[int, int, int, int]]:
    """Non-overlapping windows of `window_frames` codec frames covering a recording, at a random
    offset, each with the same span of time in the semantic stream (n_semantic = 0: codes only)
    -> [(frame_start, frame_count, semantic_start, semantic_count)].

    A recording of n frames holds k = 1 + (n - W) // S windows (W = window_frames, S = W rounded up
    to a multiple of the semantic alignment step; S = W when both streams share a frame grid). The
    slack frames (n - W - (k - 1) S < S) are split at random: the first window starts at a random
    aligned offset in [0, slack], so every frame lies in at most one window, all but < S frames of
    the recording are covered, and the uncovered frames move from epoch to epoch. A recording
    shorter than W is one window of all its frames (a short clip). every=False: one window at a
    random offset (k = 1), the single random crop of earlier versions, drawn identically.
    """
    if n_semantic:  # keep the semantic window inside the clip too
        n_frames = min(n_frames, int(math.floor(n_semantic / semantic_rate * frame_rate + 1e-6)))
    count = min(window_frames, n_frames)
    # start on frames whose time is also a semantic frame boundary (e.g. every 3rd 75 Hz frame for 50 Hz)
    step = 1
    if n_semantic:
        ratio = frame_rate / semantic_rate
        step = next((k for k in range(1, 101) if abs(k / ratio - round(k / ratio)) < 1e-6), 1)
    stride = max(step, -(-count // step) * step)  # a window's span rounded up to whole steps
    k = 1 + max(0, n_frames - count) // stride if every else 1
    slack = max(0, n_frames - count - (k - 1) * stride)
    f0 = int(rng.integers(0, slack // step + 1)) * step
    out = []
    for i in range(k):
        fi = f0 + i * stride
        if not n_semantic:
            out.append((fi, count, 0, 0))
            continue
        s0 = int(round(fi / frame_rate * semantic_rate))
        s_count = min(int(round(count / frame_rate * semantic_rate)), n_semantic - s0)
        out.append((fi, count, s0, s_count))
    return out


def semantic_per_frame(semantic: np.ndarray, n_frames: int, frame_rate: float, semantic_rate: float) -> np.ndarray:
    """Semantic ids (S,) -> one id per codec frame (n_frames,): the semantic frame covering each codec frame."""
    idx = np.floor(np.arange(n_frames) / frame_rate * semantic_rate + 1e-6).astype(np.int64)
    return semantic[np.minimum(idx, len(semantic) - 1)]
