"""A decoder-only transformer language model over discrete tokens, with a KV cache.

Pure PyTorch: no Lightning, no DeepSpeed. Used by the AudioLM semantic stage (tokens = k-means
ids of SSL features); the acoustic stages use it over flattened codec tokens.

    tokens (B, T) -> embedding (B, T, C)
      -> n_layer x [ x + Attn(RMSNorm(x)),  x + MLP(RMSNorm(x)) ]     causal, rotary positions
      -> RMSNorm -> lm_head -> logits (B, T, V)

Generation keeps each layer's keys/values in a preallocated cache, so each new token costs one
forward over a single position instead of the whole prefix.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from alm.models.sampling import sample_next


@dataclass
class TransformerConfig:
    vocab_size: int = 0  # includes special tokens (the stage decides which)
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    mlp_ratio: float = 4.0
    max_seq_len: int = 1024  # longest sequence (prompt + generated) the rotary table covers
    dropout: float = 0.0
    bias: bool = False
    rope_theta: float = 10000.0
    tie_embeddings: bool = True

    def validate(self) -> None:
        if self.vocab_size <= 0:
            raise ValueError(f"key 'model.vocab_size': must be > 0, got {self.vocab_size}")
        for name in ("n_layer", "n_head", "d_model", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"key 'model.{name}': must be > 0, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"key 'model.d_model': {self.d_model} is not divisible by model.n_head={self.n_head}")
        if (self.d_model // self.n_head) % 2:
            raise ValueError("key 'model.d_model': head size d_model/n_head must be even (rotary embeddings)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"key 'model.dropout': must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


@dataclass
class ConditionedLMConfig(TransformerConfig):
    """A TransformerLM whose sequences may start with condition tokens (MusicLM: L MuLan RVQ ids,
    alm/tokenizers/mulan.py). Their ids follow the stage's own vocabulary: level l's code c is
    own_vocab + l * condition_codebook + c, so model.vocab_size = own vocabulary + condition_vocab."""

    condition_levels: int = 0  # L condition tokens in front of each sequence (0: unconditioned)
    condition_codebook: int = 1024  # codes per condition level

    @property
    def condition_vocab(self) -> int:
        return self.condition_levels * self.condition_codebook if self.condition_levels > 0 else 0

    def validate(self) -> None:
        super().validate()
        if self.condition_levels < 0 or (self.condition_levels and self.condition_codebook < 2):
            raise ValueError("key 'model.condition_levels': must be >= 0 (and model.condition_codebook >= 2)")


def cached_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache, layer: int) -> torch.Tensor:
    """Causal attention of T new positions (q, k, v: (B, H, T, hd)) after the cache's `length` ones:
    their keys/values are written into cache.k/v[layer] (B, H, max_len, hd), then each new position
    attends to every cached one and causally within the new chunk. -> (B, H, T, hd)."""
    T, start = q.size(2), cache.length
    if start + T > cache.k.size(3):
        raise ValueError(f"{type(cache).__name__} holds {cache.k.size(3)} positions, {start + T} needed")
    cache.k[layer, :, :, start : start + T] = k
    cache.v[layer, :, :, start : start + T] = v
    k_all, v_all = cache.k[layer, :, :, : start + T], cache.v[layer, :, :, : start + T]
    if T == 1:  # one new position attends to every cached one
        return F.scaled_dot_product_attention(q, k_all, v_all)
    mask = torch.ones(T, start + T, dtype=torch.bool, device=q.device).tril(diagonal=start)
    return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(dtype)


def rope_table(head_dim: int, max_len: int, theta: float) -> torch.Tensor:
    """(max_len, head_dim/2, 2) table of cos/sin for rotary position embeddings."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (L, hd/2)
    return torch.stack([angles.cos(), angles.sin()], dim=-1).float()


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, hd), table: (T, hd/2, 2) -> rotated x, same shape."""
    x2 = x.float().reshape(*x.shape[:-1], -1, 2)  # (B, H, T, hd/2, 2)
    cos, sin = table[..., 0], table[..., 1]  # (T, hd/2)
    out = torch.stack([x2[..., 0] * cos - x2[..., 1] * sin, x2[..., 0] * sin + x2[..., 1] * cos], dim=-1)
    return out.flatten(-2).type_as(x)


class RopeCache:
    """The rotary table, kept in fp32 whatever the module's dtype (bf16-true casts buffers: a bf16
    table puts ~2e-3 error on every angle), moved to the device of the first input that needs it.
    Deliberately not a buffer: not in the state dict, not touched by `module.to(dtype)`."""

    def __init__(self, head_dim: int, max_len: int, theta: float):
        self.table = rope_table(head_dim, max_len, theta)  # (L, hd/2, 2) fp32

    def __call__(self, start: int, length: int, device: torch.device) -> torch.Tensor:
        if self.table.device != device:
            self.table = self.table.to(device)
        return self.table[start : start + length]


def no_gather(params: list[nn.Parameter]) -> ContextManager:
    return contextlib.nullcontext()


def gpt2_init(model: nn.Module, n_layer: int, gathered: Callable[[list], ContextManager] = no_gather,
              types: tuple[type, ...] = (nn.Linear,)) -> None:
    """GPT-2 initialisation: N(0, 0.02) for the weights of `types` and embeddings, zero biases, and
    the residual projections (`*proj.weight`) scaled by 1/sqrt(2 n_layer).

    `gathered(params)` is a context in which `params` are whole tensors: the trainer passes
    DeepSpeed's GatheredParameters when the model was built partitioned (ZeRO-3); on one device it
    does nothing. Draws happen in the same order either way, so a sharded build initialises exactly
    like an unsharded one.
    """

    def visit(module: nn.Module) -> Iterable[nn.Module]:  # children first, as nn.Module.apply
        for child in module.children():
            yield from visit(child)
        yield module

    for module in visit(model):
        if isinstance(module, types + (nn.Embedding,)):
            with gathered(list(module.parameters(recurse=False))):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
    for name, p in model.named_parameters():
        if name.endswith("proj.weight"):
            with gathered([p]):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))


class KVCache:
    """Keys/values of every layer for positions [0, length). k, v: (n_layer, B, H, max_len, hd)."""

    def __init__(self, cfg: TransformerConfig, batch_size: int, max_len: int, device, dtype):
        shape = (cfg.n_layer, batch_size, cfg.n_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.max_len = max_len


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, C = x.shape
        H, hd = self.cfg.n_head, self.cfg.head_dim
        q, k, v = self.qkv(x).split(C, dim=-1)
        q, k, v = (t.view(B, T, H, hd).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        dropout = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            y = cached_causal_attention(q, k, v, cache, layer)
        y = y.transpose(1, 2).reshape(B, T, C)
        return F.dropout(self.proj(y), dropout, self.training)


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        hidden = int(cfg.mlp_ratio * cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.proj = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.proj(F.gelu(self.fc(x))), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, cache, layer)
        return x + self.mlp(self.norm2(x))


class TransformerLM(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rope = RopeCache(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.init_weights()

    def init_weights(self, gathered: Callable[[list], ContextManager] = no_gather) -> None:
        gpt2_init(self, self.cfg.n_layer, gathered)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """tokens: (B, T) int64 -> logits (B, T, V). With a cache, tokens continue its positions."""
        B, T = tokens.shape
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
        rope = self.rope(start, T, tokens.device)
        x = self.drop(self.embed(tokens))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i)
        if cache is not None:
            cache.length += T
        return self.lm_head(self.norm(x))  # (B, T, V)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        p = self.embed.weight
        return KVCache(self.cfg, batch_size, max_len or self.cfg.max_seq_len, p.device, p.dtype)

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        allowed: torch.Tensor | None = None,
        on_token=None,
    ) -> torch.Tensor:
        """Continue `prompt` (B, T0) by `max_new_tokens` sampled tokens -> (B, T0 + max_new_tokens).

        `allowed` restricts sampling to part of the vocabulary: (V,) bool for every step, or
        (max_new_tokens, V) for a different set per step (e.g. the ids of the codebook level that
        a position holds). use_cache=False recomputes the whole prefix at every step (for comparison).
        `on_token(i)` is called after each new token (progress bars).
        """
        was_training = self.training
        self.eval()
        tokens = prompt
        cache = self.new_cache(prompt.size(0), prompt.size(1) + max_new_tokens) if use_cache else None
        next_input = prompt
        for i in range(max_new_tokens):
            logits = self(next_input if use_cache else tokens, cache)[:, -1]  # (B, V)
            if allowed is not None:
                logits = logits.masked_fill(~(allowed if allowed.dim() == 1 else allowed[i]), float("-inf"))
            nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            next_input = nxt[:, None]
            if on_token is not None:
                on_token(i)
        self.train(was_training)
        return tokens
