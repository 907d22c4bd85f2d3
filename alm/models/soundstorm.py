"""SoundStorm (Borsos et al. 2023): a bidirectional model over all RVQ levels of a neural codec,
conditioned on semantic tokens, decoded in a few parallel MaskGIT-style steps per level.

Pure PyTorch: no Lightning, no DeepSpeed.

    codes (B, Q, T)  [MASK = codebook_size where masked]    semantic (B, T)  [aligned to codec frames]
      -> x_t = sum_q E_q(codes[q, t]) + E_sem(semantic[t])                       (B, T, C)
      -> n_layer x block  (bidirectional attention with a key padding mask, rotary positions)
           conv_kernel = 0:  x + Attn(RMSNorm(x)),  x + MLP(RMSNorm(x))
           conv_kernel > 0:  Conformer: x + FFN/2, x + MHSA, x + Conv, x + FFN/2, RMSNorm
      -> one output head per level -> logits (B, Q, T, codebook_size)

Training (`training_loss`), per example: a prompt length P ~ U{0, .., max(L//2, 1) - 1} (L = its
length), a level q ~ U{0, .., Q-1}. Levels < q are left as they are; at level q, n = ceil(p * (L - P))
of the non-prompt frames (at least one) are masked, chosen uniformly, with p = cos(u * pi/2),
u ~ U(0, 1); levels > q are masked on every non-prompt frame. The loss is the cross-entropy on the
masked frames of level q only.

Generation (`generate`), level by level, coarse first: level q starts fully masked (outside the
prompt); each of its steps_per_level[q] steps is one forward pass that predicts every masked token of
level q, samples them, keeps the most confident and re-masks the rest, so that after step s of S
floor(N * cos(pi/2 * s/S)) are still masked (N = frames to generate; 0 after the last step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
import torch.nn as nn
import torch.nn.functional as F

from alm.models.sampling import sample_next
from alm.models.transformer import RMSNorm, RopeCache, apply_rope, gpt2_init, no_gather


@dataclass
class SoundStormConfig:
    n_q: int = 8  # RVQ levels modelled (all of the codec's, or its first n_q)
    codebook_size: int = 1024  # ids per level; the model adds MASK = codebook_size to each level
    semantic_vocab: int = 0  # semantic ids; the model adds its own padding id = semantic_vocab
    d_model: int = 256
    n_layer: int = 4
    n_head: int = 4
    mlp_ratio: float = 4.0  # hidden size of each feed-forward (a conformer block has two, half-weighted)
    dropout: float = 0.0
    max_frames: int = 1024  # longest sequence of codec frames the rotary table covers
    rope_theta: float = 10000.0
    conv_kernel: int = 0  # 0: plain transformer blocks; > 0 (odd): conformer blocks, depthwise conv kernel
    # the streams the model was trained on (used to align semantic tokens to codec frames, not by the network)
    semantic_rate: float = 50.0  # semantic tokens per second
    frame_rate: float = 50.0  # codec frames per second
    window_s: float = 10.0  # seconds per training example / generation window

    def validate(self) -> None:
        for name in ("n_q", "semantic_vocab", "n_layer", "n_head", "d_model", "max_frames"):
            if getattr(self, name) <= 0:
                raise ValueError(f"key 'model.{name}': must be > 0, got {getattr(self, name)}")
        if self.codebook_size < 2:
            raise ValueError(f"key 'model.codebook_size': must be >= 2, got {self.codebook_size}")
        if self.d_model % self.n_head:
            raise ValueError(f"key 'model.d_model': {self.d_model} is not divisible by model.n_head={self.n_head}")
        if (self.d_model // self.n_head) % 2:
            raise ValueError("key 'model.d_model': head size d_model/n_head must be even (rotary embeddings)")
        if self.mlp_ratio <= 0:
            raise ValueError(f"key 'model.mlp_ratio': must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"key 'model.dropout': must be in [0, 1), got {self.dropout}")
        if self.conv_kernel < 0 or (self.conv_kernel > 0 and self.conv_kernel % 2 == 0):
            raise ValueError(f"key 'model.conv_kernel': must be 0 (no conv) or an odd size > 0, got {self.conv_kernel}")
        if round(self.window_s * self.frame_rate) > self.max_frames:
            raise ValueError(f"key 'model.window_s': {self.window_s} s at {self.frame_rate} frames/s is more than "
                             f"model.max_frames={self.max_frames}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    @property
    def semantic_pad_id(self) -> int:
        return self.semantic_vocab


@dataclass
class TrainingMask:
    """One draw of the training masking scheme (see the module docstring)."""

    inputs: torch.Tensor  # (B, Q, T) codes with MASK where masked
    targets: torch.Tensor  # (B, T) bool: the masked frames of level[b], where the loss is taken
    level: torch.Tensor  # (B,) the level q being trained
    prompt_len: torch.Tensor  # (B,) frames [0, P) unmasked at every level


class FeedForward(nn.Module):
    def __init__(self, d_model: int, mlp_ratio: float, dropout: float, act):
        super().__init__()
        hidden = int(mlp_ratio * d_model)
        self.fc = nn.Linear(d_model, hidden, bias=False)
        self.proj = nn.Linear(hidden, d_model, bias=False)
        self.act = act
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.proj(self.act(self.fc(x))), self.dropout, self.training)


class Attention(nn.Module):
    """Bidirectional multi-head self-attention; padded frames are never attended to."""

    def __init__(self, cfg: SoundStormConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, rope: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, C), rope (T, hd/2, 2), key_mask (B, 1, 1, T) bool, True = attend."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(B, T, C)
        return F.dropout(self.proj(y), dropout, self.training)


class ConvModule(nn.Module):
    """Conformer convolution module: RMSNorm -> pointwise (C -> 2C) + GLU -> depthwise conv over time
    -> RMSNorm -> SiLU -> pointwise. (The Conformer paper uses BatchNorm after the depthwise conv; a
    per-frame norm does not mix padded frames into the statistics.)"""

    def __init__(self, cfg: SoundStormConfig):
        super().__init__()
        d = cfg.d_model
        self.norm = RMSNorm(d)
        self.pw_in = nn.Linear(d, 2 * d, bias=False)
        self.depthwise = nn.Conv1d(d, d, cfg.conv_kernel, padding=cfg.conv_kernel // 2, groups=d, bias=False)
        self.mid_norm = RMSNorm(d)
        self.proj = nn.Linear(d, d, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x (B, T, C), valid (B, T) bool."""
        y = F.glu(self.pw_in(self.norm(x)), dim=-1)  # (B, T, C)
        y = y * valid[..., None].to(y.dtype)  # padded frames must not leak into their neighbours
        y = self.depthwise(y.transpose(1, 2)).transpose(1, 2)  # (B, T, C)
        y = self.proj(F.silu(self.mid_norm(y)))
        return F.dropout(y, self.dropout, self.training)


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(RMSNorm(x)), x + MLP(RMSNorm(x))."""

    def __init__(self, cfg: SoundStormConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.d_model)
        self.mlp = FeedForward(cfg.d_model, cfg.mlp_ratio, cfg.dropout, F.gelu)

    def forward(self, x, rope, key_mask, valid):
        x = x + self.attn(self.norm1(x), rope, key_mask)
        return x + self.mlp(self.norm2(x))


class ConformerBlock(nn.Module):
    """x + FFN(x)/2 -> x + MHSA(x) -> x + Conv(x) -> x + FFN(x)/2 -> RMSNorm (each sub-module pre-normed)."""

    def __init__(self, cfg: SoundStormConfig):
        super().__init__()
        d = cfg.d_model
        self.norm_ff1, self.ff1 = RMSNorm(d), FeedForward(d, cfg.mlp_ratio, cfg.dropout, F.silu)
        self.norm_attn, self.attn = RMSNorm(d), Attention(cfg)
        self.conv = ConvModule(cfg)
        self.norm_ff2, self.ff2 = RMSNorm(d), FeedForward(d, cfg.mlp_ratio, cfg.dropout, F.silu)
        self.norm_out = RMSNorm(d)

    def forward(self, x, rope, key_mask, valid):
        x = x + 0.5 * self.ff1(self.norm_ff1(x))
        x = x + self.attn(self.norm_attn(x), rope, key_mask)
        x = x + self.conv(x, valid)
        x = x + 0.5 * self.ff2(self.norm_ff2(x))
        return self.norm_out(x)


class LevelHeads(nn.Module):
    """One linear head per RVQ level: weight (Q, V, C), bias (Q, V)."""

    def __init__(self, n_q: int, d_model: int, codebook_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_q, codebook_size, d_model))
        self.bias = nn.Parameter(torch.zeros(n_q, codebook_size))
        nn.init.normal_(self.weight, mean=0.0, std=0.02)

    def forward(self, h: torch.Tensor, level: int | torch.Tensor | None = None) -> torch.Tensor:
        """h (B, T, C) -> logits of every level (B, Q, T, V); of one level (int) (B, T, V); or of one
        level per example (level: (B,) int64) (B, T, V)."""
        if level is None:
            return torch.einsum("btc,qvc->bqtv", h, self.weight) + self.bias[None, :, None]
        if isinstance(level, int):
            return F.linear(h, self.weight[level], self.bias[level])
        w, b = self.weight[level], self.bias[level]  # (B, V, C), (B, V)
        return torch.einsum("btc,bvc->btv", h, w) + b[:, None]


class SoundStorm(nn.Module):
    def __init__(self, cfg: SoundStormConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        Q, V, C = cfg.n_q, cfg.codebook_size, cfg.d_model
        # all levels' tables in one: level q, id c (MASK included) -> row q * (V + 1) + c
        self.code_embed = nn.Embedding(Q * (V + 1), C)
        self.semantic_embed = nn.Embedding(cfg.semantic_vocab + 1, C)
        self.drop = nn.Dropout(cfg.dropout)
        block = ConformerBlock if cfg.conv_kernel > 0 else Block
        self.blocks = nn.ModuleList(block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(C) if cfg.conv_kernel == 0 else nn.Identity()  # conformer blocks end normed
        self.heads = LevelHeads(Q, C, V)
        self.rope = RopeCache(cfg.head_dim, cfg.max_frames, cfg.rope_theta)
        self.register_buffer("level_offsets", torch.arange(Q) * (V + 1), persistent=False)
        self.init_weights()
        self.last_forward_passes = 0  # forward passes of the last `generate`

    def init_weights(self, gathered: Callable[[list], ContextManager] = no_gather) -> None:
        gpt2_init(self, self.cfg.n_layer, gathered, types=(nn.Linear, nn.Conv1d))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---------------------------------------------------------------- network

    def _lengths(self, lengths: torch.Tensor | None, B: int, T: int, device) -> torch.Tensor:
        if lengths is None:
            return torch.full((B,), T, dtype=torch.long, device=device)
        lengths = torch.as_tensor(lengths, device=device).long()
        if lengths.shape != (B,):
            raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
        return lengths

    def hidden(self, codes: torch.Tensor, semantic: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """codes (B, Q, T), semantic (B, T), lengths (B,) -> hidden states (B, T, C) after the last block."""
        B, Q, T = codes.shape
        if Q != self.cfg.n_q or semantic.shape != (B, T):
            raise ValueError(f"codes must be (B, {self.cfg.n_q}, T) and semantic (B, T); "
                             f"got {tuple(codes.shape)} and {tuple(semantic.shape)}")
        if T > self.cfg.max_frames:
            raise ValueError(f"sequence of {T} frames exceeds model.max_frames={self.cfg.max_frames}")
        valid = torch.arange(T, device=codes.device) < lengths[:, None]  # (B, T)
        # whatever the caller put in padded frames, they read as MASK / semantic padding
        codes = codes.masked_fill(~valid[:, None], self.cfg.mask_id)
        semantic = semantic.masked_fill(~valid, self.cfg.semantic_pad_id)
        x = self.code_embed(codes + self.level_offsets[:, None]).sum(dim=1)  # (B, T, C)
        x = self.drop(x + self.semantic_embed(semantic))
        rope = self.rope(0, T, codes.device)
        # (B, 1, 1, T); an example of length 0 attends to everything rather than to nothing (NaN)
        key_mask = (valid | ~valid.any(-1, keepdim=True))[:, None, None, :]
        for block in self.blocks:
            x = block(x, rope, key_mask, valid)
        return self.norm(x)

    def forward(self, codes: torch.Tensor, semantic: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """codes (B, Q, T) int64 (MASK where masked), semantic (B, T), lengths (B,) -> logits (B, Q, T, V).

        Frames t >= lengths[b] are padding: never attended to; their logits are meaningless."""
        B, _, T = codes.shape
        return self.heads(self.hidden(codes, semantic, self._lengths(lengths, B, T, codes.device)))

    # ---------------------------------------------------------------- training

    def training_mask(self, codes: torch.Tensor, lengths: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> TrainingMask:
        """Draw the masking of one batch (see the module docstring). codes (B, Q, T)."""
        B, Q, T = codes.shape
        dev = codes.device
        lengths = self._lengths(lengths, B, T, dev)
        t = torch.arange(T, device=dev)
        valid = t < lengths[:, None]  # (B, T)
        prompt_len = (torch.rand(B, generator=generator, device=dev) * (lengths // 2).clamp(min=1)).long()
        level = torch.randint(0, Q, (B,), generator=generator, device=dev)
        todo = valid & (t >= prompt_len[:, None])  # (B, T) non-prompt frames, L - P >= 1 of them if L >= 1
        n_todo = todo.sum(-1)
        p = torch.cos(torch.rand(B, generator=generator, device=dev) * math.pi / 2)  # (0, 1]
        n_mask = torch.minimum((p * n_todo).ceil().long().clamp(min=1), n_todo)  # (B,)
        # a uniform random subset of n_mask non-prompt frames: the n_mask lowest random scores
        scores = torch.rand(B, T, generator=generator, device=dev).masked_fill(~todo, 2.0)
        rank = scores.argsort(dim=-1).argsort(dim=-1)
        targets = rank < n_mask[:, None]  # (B, T)
        levels = torch.arange(Q, device=dev)[None, :, None]  # (1, Q, 1)
        masked = ((levels == level[:, None, None]) & targets[:, None]) | (
            (levels > level[:, None, None]) & todo[:, None])  # (B, Q, T)
        inputs = codes.masked_fill(masked, self.cfg.mask_id)
        return TrainingMask(inputs, targets, level, prompt_len)

    def training_loss(self, codes: torch.Tensor, semantic: torch.Tensor, lengths: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mean cross-entropy over the masked tokens of each example's level, number of them (0-dim))."""
        B, _, T = codes.shape
        lengths = self._lengths(lengths, B, T, codes.device)
        m = self.training_mask(codes, lengths, generator)
        logits = self.heads(self.hidden(m.inputs, semantic, lengths), m.level)  # (B, T, V)
        target = codes.gather(1, m.level[:, None, None].expand(B, 1, T)).squeeze(1)  # (B, T)
        target = target.masked_fill(~m.targets, -100)  # only the masked frames of level q count
        n = m.targets.sum()
        loss = F.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=-100, reduction="sum")
        return loss / n.clamp(min=1), n

    # ---------------------------------------------------------------- generation

    @torch.no_grad()
    def generate(
        self,
        semantic: torch.Tensor,
        lengths: torch.Tensor | None = None,
        steps_per_level: list[int] | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        prompt_codes: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        greedy_after_first: bool = True,
        choice_temperature: float = 0.0,
        top_p: float = 1.0,
    ) -> torch.Tensor:
        """semantic (B, T) aligned to codec frames -> codes (B, Q, T), every entry in [0, codebook_size).

        steps_per_level: forward passes per level (default [16, 1, 1, ...], the paper's setting);
        exactly sum(steps_per_level) passes are run (see `last_forward_passes`).
        prompt_codes (B, Q, P): codes of frames [0, P), kept as they are.
        greedy_after_first: levels after the first take the argmax instead of sampling.
        choice_temperature: scale of Gumbel noise added to the confidences that rank the tokens to
        keep, annealed linearly to 0 over a level's steps (MaskGIT); 0 ranks by confidence alone.
        Padded frames (t >= lengths[b]) come back as 0.
        """
        cfg = self.cfg
        B, T = semantic.shape
        dev = semantic.device
        lengths = self._lengths(lengths, B, T, dev)
        steps = list(steps_per_level) if steps_per_level is not None else [16] + [1] * (cfg.n_q - 1)
        if len(steps) != cfg.n_q or min(steps) < 1:
            raise ValueError(f"steps_per_level must hold {cfg.n_q} counts >= 1, got {steps}")
        was_training = self.training
        self.eval()

        t = torch.arange(T, device=dev)
        valid = t < lengths[:, None]  # (B, T)
        codes = torch.full((B, cfg.n_q, T), cfg.mask_id, dtype=torch.long, device=dev)
        P = 0
        if prompt_codes is not None:
            P = prompt_codes.size(-1)
            if prompt_codes.shape != (B, cfg.n_q, P) or P > T:
                raise ValueError(f"prompt_codes must be (B, {cfg.n_q}, P <= {T}), got {tuple(prompt_codes.shape)}")
            codes[:, :, :P] = prompt_codes
        codes.masked_fill_(~valid[:, None], 0)
        todo = valid & (t >= P)  # (B, T) frames to generate, at every level
        n_todo = todo.sum(-1)  # (B,)

        passes = 0
        for q, n_steps in enumerate(steps):
            temp = 0.0 if greedy_after_first and q > 0 else temperature
            masked = todo.clone()  # (B, T)
            for s in range(1, n_steps + 1):
                logits = self.heads(self.hidden(codes, semantic, lengths), q).float()  # (B, T, V)
                passes += 1
                sampled = sample_next(logits.flatten(0, 1), temp, top_k, top_p, generator).view(B, T)
                conf = logits.log_softmax(-1).gather(-1, sampled[..., None]).squeeze(-1)  # (B, T)
                if choice_temperature > 0:
                    u = torch.rand(B, T, generator=generator, device=dev).clamp(1e-10, 1 - 1e-10)
                    conf = conf - choice_temperature * (1 - s / n_steps) * torch.log(-torch.log(u))
                # how many stay masked after this step: the cosine schedule, at least one fewer than now
                if s == n_steps:
                    n_left = torch.zeros_like(n_todo)
                else:
                    n_left = (n_todo * math.cos(math.pi / 2 * s / n_steps)).floor().long()
                    n_left = torch.minimum(n_left, (masked.sum(-1) - 1).clamp(min=0))
                # the least confident of the masked frames stay masked; decided frames are never revisited
                rank = conf.masked_fill(~masked, float("inf")).argsort(dim=-1).argsort(dim=-1)
                still = rank < n_left[:, None]
                codes[:, q] = torch.where(masked & ~still, sampled, codes[:, q])
                masked = still
        self.last_forward_passes = passes
        self.train(was_training)
        return codes
