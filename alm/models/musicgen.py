"""MusicGen's language model (Copet et al. 2023): one transformer over K parallel codec codebooks.

Pure PyTorch: no Lightning, no transformers. The math is MusicGen's as transformers' and
audiocraft's implementations define it, so public weights load unchanged (alm/convert_musicgen.py):

    codes in step layout (B, K, S)     ids in [0, card]: `card` is the special token (an empty cell,
                                       and the start column s = 0); a codebook pattern
                                       (alm/models/codebook_patterns.py) makes this layout from codes
      -> sum_k embed_k(codes[:, k])  +  sinusoidal positions                          (B, S, D)
      -> n_layer x [ x + SelfAttn(LN(x))            causal
                     x + CrossAttn(LN(x), cond)     mode "cross" only
                     x + FFN(LN(x)) ]               Linear -> GELU -> Linear, no biases
      -> LN -> K heads (no bias) -> logits (B, K, S, card)       step s predicts step s + 1

The condition: cond (B, L, cond_dim) (e.g. T5 encoder states) with cond_mask (B, L), 1 = a real
token. It goes through `cond_in` (Linear with bias: transformers' enc_to_dec_proj; absent when
cond_proj is false, then cond_dim must equal dim) and is zeroed at padding, then

    mode "cross"   (MusicGen, AudioGen): the keys/values of every block's cross-attention, padding
                   masked out;
    mode "prefix"  (MusicGen-Melody): prepended to the token embeddings as extra positions, after
                   the melody (B, Lm, melody_dim) chroma through `melody_in` (repeated / truncated
                   to melody_len frames): [melody | text | codes], all causal, no cross-attention.
                   The logits of the prefix positions are dropped.

Classifier-free guidance exactly as MusicGen defines it: the unconditional branch is the nulled
condition (cond zeroed, cond_mask all 0; for melody also the null chroma, bin 0 set), run in the
same batch as the conditional one (B cond rows, then B null rows), and the next-step logits are
`uncond + scale * (cond - uncond)` (raw logits, before temperature / top-k / top-p). At training
the stage nulls the condition of a fraction of the examples (cond_dropout) with `drop_condition`.
In cross mode a nulled condition adds exactly nothing: every key is masked, so attention is
uniform over values that are all zero (the states are zeroed and the projections have no bias).

Generation keeps each block's self-attention keys/values in a preallocated cache and the
cross-attention keys/values of the condition, computed once (MusicGenCache): each step costs one
position per block instead of the whole prefix and the whole condition. The cache holds
2 x n_layer x rows x (prefix + steps) x dim values (rows = 2B with guidance): musicgen-large
(48 x 2048), 30 s (1504 steps), 4 prompts with CFG in bf16 is 2 x 48 x 8 x 1504 x 2048 x 2 B = 4.7 GB.

Fine-tuning with LoRA (model.lora_rank > 0): alm's own LoRALinear (alm/models/lora.py, not peft) on
the sites named by model.lora_targets, every other weight frozen. Own layer because the base weights
keep their names (`blocks.3.self_attn.q.weight`), so public weights, init_from and the key map load
into an adapted model unchanged, and the model is built in one piece inside configure_model (ZeRO-3
partitions it at construction) instead of being wrapped afterwards. merge_lora folds the adapters
into plain weights (what `alm export --format transformers` writes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from alm.models.lora import LoRALinear, is_adapter, merged_state_dict  # noqa: F401 (is_adapter: re-exported)
from alm.models.sampling import check_sampling, sample_next
from alm.models.transformer import cached_causal_attention, gpt2_init, no_gather

COND_MODES = ("cross", "prefix")
LORA_SITES = tuple(f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in ("q", "k", "v", "proj")) + ("ffn.fc", "ffn.proj")


@dataclass
class MusicGenConfig:
    dim: int = 1024  # D: decoder width (musicgen-small 1024, medium 1536, large 2048)
    n_layer: int = 24
    n_head: int = 16
    ffn_dim: int = 4096
    codebooks: int = 4  # K: codec codebooks, one embedding table and one head each
    card: int = 2048  # codes per codebook; id `card` is the special token (each table has card + 1 rows)
    cond_dim: int = 768  # width of the condition (T5-base: 768)
    cond_proj: bool = True  # Linear(cond_dim, dim) on the condition (transformers' enc_to_dec_proj)
    cond_mode: str = "cross"  # cross (MusicGen, AudioGen) | prefix (MusicGen-Melody)
    melody_dim: int = 0  # prefix mode: chroma bins of the melody (12); 0 = no melody input
    melody_len: int = 0  # prefix mode: melody frames the chroma is repeated / truncated to (235)
    max_seq_len: int = 2048  # longest sequence (prefix + steps) a cache is made for by default
    dropout: float = 0.1  # residual and embedding dropout (training only)
    attn_dropout: float = 0.0
    cond_dropout: float = 0.3  # fraction of training examples whose condition the stage nulls (paper: 0.3)
    norm_eps: float = 1e-5
    lora_rank: int = 0  # > 0: low-rank adapters on lora_targets; every other weight is frozen
    lora_alpha: float = 16.0  # adapter scale = lora_alpha / lora_rank
    lora_targets: str = "self_attn.q,self_attn.v,cross_attn.q,cross_attn.v"  # comma-separated LORA_SITES

    def validate(self) -> None:
        for name in ("dim", "n_layer", "n_head", "ffn_dim", "codebooks", "card", "cond_dim", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"key 'model.{name}': must be > 0, got {getattr(self, name)}")
        if self.dim % self.n_head:
            raise ValueError(f"key 'model.dim': {self.dim} is not divisible by model.n_head={self.n_head}")
        if self.dim % 2:
            raise ValueError(f"key 'model.dim': must be even (sinusoidal positions), got {self.dim}")
        if self.cond_mode not in COND_MODES:
            raise ValueError(f"key 'model.cond_mode': expected one of {list(COND_MODES)}, got {self.cond_mode!r}")
        if not self.cond_proj and self.cond_dim != self.dim:
            raise ValueError(f"key 'model.cond_proj': false needs model.cond_dim == model.dim, "
                             f"got {self.cond_dim} and {self.dim}")
        if self.melody_dim and self.cond_mode != "prefix":
            raise ValueError("key 'model.melody_dim': a melody input needs model.cond_mode: prefix")
        if (self.melody_dim > 0) != (self.melody_len > 0):
            raise ValueError(f"key 'model.melody_len': set both model.melody_dim and model.melody_len "
                             f"(or neither), got {self.melody_dim} and {self.melody_len}")
        for name in ("dropout", "attn_dropout", "cond_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"key 'model.{name}': must be in [0, 1), got {getattr(self, name)}")
        if self.lora_rank < 0 or self.lora_alpha <= 0:
            raise ValueError(f"key 'model.lora_rank': must be >= 0 (0 = no adapters) with model.lora_alpha > 0, "
                             f"got {self.lora_rank} and {self.lora_alpha}")
        unknown = [t for t in self.lora_target_list if t not in LORA_SITES]
        if self.lora_rank and (unknown or not self.lora_target_list):
            raise ValueError(f"key 'model.lora_targets': {unknown or 'empty'}; expected a comma-separated subset "
                             f"of {', '.join(LORA_SITES)}")

    @property
    def lora_target_list(self) -> list[str]:
        return [t.strip() for t in self.lora_targets.split(",") if t.strip()]

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def special(self) -> int:
        """The id of the special (empty cell / start) token: one past the last code."""
        return self.card


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm computed in fp32 whatever the module's dtype (bf16 runs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


def linear(cfg: MusicGenConfig, site: str, n_in: int, n_out: int) -> nn.Linear:
    """A bias-free projection; a LoRALinear where `site` (e.g. "self_attn.q") is a LoRA target."""
    if cfg.lora_rank and site in cfg.lora_target_list:
        return LoRALinear(n_in, n_out, cfg.lora_rank, cfg.lora_alpha)
    return nn.Linear(n_in, n_out, bias=False)


class SinusoidalPositions:
    """MusicGen's positions: [cos(p w_j), sin(p w_j)], w_j = 10000^(-j / (D/2 - 1)), j < D/2. Kept in
    fp32, grown on demand, moved to the device of the input; not a buffer (not in the state dict)."""

    def __init__(self, dim: int):
        self.dim = dim
        self.table = torch.zeros(0, dim, device="cpu")  # never on the meta device

    def __call__(self, start: int, length: int, device: torch.device) -> torch.Tensor:
        if start + length > self.table.shape[0]:
            half = self.dim // 2
            freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
            angles = torch.arange(max(start + length, 2 * self.table.shape[0]), dtype=torch.float32)[:, None] * freq
            self.table = torch.cat([angles.cos(), angles.sin()], dim=1)  # (N, D)
        if self.table.device != device:
            self.table = self.table.to(device)
        return self.table[start : start + length]


class MusicGenCache:
    """What generation keeps between steps: self-attention keys/values for positions [0, length)
    (k, v: (n_layer, B, H, max_len, hd)) and, per block, the cross-attention keys/values of the
    condition (computed by the first forward) with its additive mask."""

    def __init__(self, cfg: MusicGenConfig, batch_size: int, max_len: int, device, dtype):
        shape = (cfg.n_layer, batch_size, cfg.n_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.max_len = max_len
        self.cross: list[Optional[tuple[torch.Tensor, torch.Tensor]]] = [None] * cfg.n_layer
        self.cross_mask: Optional[torch.Tensor] = None  # (B, 1, 1, L) additive


def heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, D) -> (B, H, T, D/H)."""
    B, T, D = x.shape
    return x.view(B, T, n_head, D // n_head).transpose(1, 2)


class SelfAttention(nn.Module):
    def __init__(self, cfg: MusicGenConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.attn_dropout
        self.q, self.k, self.v, self.proj = (linear(cfg, f"self_attn.{p}", cfg.dim, cfg.dim) for p in ("q", "k", "v", "proj"))

    def forward(self, x: torch.Tensor, cache: MusicGenCache | None, layer: int) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = heads(self.q(x), self.n_head), heads(self.k(x), self.n_head), heads(self.v(x), self.n_head)
        dropout = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            y = cached_causal_attention(q, k, v, cache, layer)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class CrossAttention(nn.Module):
    def __init__(self, cfg: MusicGenConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.attn_dropout
        self.q, self.k, self.v, self.proj = (linear(cfg, f"cross_attn.{p}", cfg.dim, cfg.dim) for p in ("q", "k", "v", "proj"))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None, mask: torch.Tensor,
                cache: MusicGenCache | None, layer: int) -> torch.Tensor:
        """x (B, T, D) attends to ctx (B, L, D) (None: the cache's, computed before); mask (B, 1, 1, L) additive."""
        B, T, D = x.shape
        if cache is not None and cache.cross[layer] is not None:
            k, v = cache.cross[layer]
        else:
            k, v = heads(self.k(ctx), self.n_head), heads(self.v(ctx), self.n_head)
            if cache is not None:
                cache.cross[layer] = (k, v)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(heads(self.q(x), self.n_head), k, v, attn_mask=mask, dropout_p=dropout)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class FFN(nn.Module):
    def __init__(self, cfg: MusicGenConfig):
        super().__init__()
        self.fc = linear(cfg, "ffn.fc", cfg.dim, cfg.ffn_dim)
        self.proj = linear(cfg, "ffn.proj", cfg.ffn_dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: MusicGenConfig):
        super().__init__()
        self.cross = cfg.cond_mode == "cross"
        self.dropout = cfg.dropout
        self.norm_self = LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.self_attn = SelfAttention(cfg)
        if self.cross:
            self.norm_cross = LayerNorm(cfg.dim, eps=cfg.norm_eps)
            self.cross_attn = CrossAttention(cfg)
        self.norm_ffn = LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.ffn = FFN(cfg)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None, ctx_mask: torch.Tensor | None,
                cache: MusicGenCache | None, layer: int) -> torch.Tensor:
        drop = lambda y: F.dropout(y, self.dropout, self.training)  # noqa: E731
        x = x + drop(self.self_attn(self.norm_self(x), cache, layer))
        if self.cross and ctx_mask is not None:  # no condition at all: the nulled one adds nothing either
            x = x + drop(self.cross_attn(self.norm_cross(x), ctx, ctx_mask, cache, layer))
        return x + drop(self.ffn(self.norm_ffn(x)))


class MusicGenLM(nn.Module):
    def __init__(self, cfg: MusicGenConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed = nn.ModuleList(nn.Embedding(cfg.card + 1, cfg.dim) for _ in range(cfg.codebooks))
        self.cond_in = nn.Linear(cfg.cond_dim, cfg.dim) if cfg.cond_proj else None
        self.melody_in = nn.Linear(cfg.melody_dim, cfg.dim) if cfg.melody_dim else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.heads = nn.ModuleList(nn.Linear(cfg.dim, cfg.card, bias=False) for _ in range(cfg.codebooks))
        self.positions = SinusoidalPositions(cfg.dim)
        self.init_weights()
        if cfg.lora_rank:  # only the adapters train: everything else is frozen (never in the optimizer)
            for name, p in self.named_parameters():
                p.requires_grad_(is_adapter(name))

    def init_weights(self, gathered: Callable[[list], ContextManager] = no_gather) -> None:
        """N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2 n_layer) (GPT-2);
        adapters: A ~ N(0, 1/r), B = 0 (the adapted model starts as the base)."""
        gpt2_init(self, self.cfg.n_layer, gathered)
        for module in self.modules():
            if isinstance(module, LoRALinear):
                with gathered([module.lora_a, module.lora_b]):
                    nn.init.normal_(module.lora_a, std=1.0 / self.cfg.lora_rank)
                    nn.init.zeros_(module.lora_b)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ----------------------------------------------------------------------------------- condition
    def condition(self, cond: torch.Tensor, cond_mask: torch.Tensor) -> torch.Tensor:
        """cond (B, L, cond_dim), cond_mask (B, L) -> (B, L, D): projected, zeroed at padding."""
        if cond.dim() != 3 or cond.shape[-1] != self.cfg.cond_dim:
            raise ValueError(f"cond must be (B, L, {self.cfg.cond_dim}) (model.cond_dim), got {tuple(cond.shape)}")
        if cond_mask.shape != cond.shape[:2]:
            raise ValueError(f"cond_mask must be (B, L) = {tuple(cond.shape[:2])}, got {tuple(cond_mask.shape)}")
        x = self.cond_in(cond) if self.cond_in is not None else cond
        return x * cond_mask[..., None].to(x.dtype)

    def melody_prefix(self, melody: torch.Tensor) -> torch.Tensor:
        """melody (B, Lm, melody_dim) chroma -> (B, melody_len, D): projected, repeated / truncated."""
        if melody.dim() != 3 or melody.shape[-1] != self.cfg.melody_dim:
            raise ValueError(f"melody must be (B, Lm, {self.cfg.melody_dim}) (model.melody_dim), got {tuple(melody.shape)}")
        x = self.melody_in(melody)
        n = self.cfg.melody_len
        if x.shape[1] < n:
            x = x.repeat(1, -(-n // x.shape[1]), 1)
        return x[:, :n]

    def null_melody(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """The null chroma (MusicGen-Melody's unconditional melody): one frame with bin 0 set."""
        m = torch.zeros(batch_size, 1, self.cfg.melody_dim, device=device, dtype=dtype)
        m[:, :, 0] = 1
        return m

    def prefix_len(self, cond: torch.Tensor | None) -> int:
        """Positions the condition takes before the codes (prefix mode), 0 in cross mode."""
        if self.cfg.cond_mode != "prefix":
            return 0
        return self.cfg.melody_len + (cond.shape[1] if cond is not None else 0)

    # ------------------------------------------------------------------------------------- forward
    def forward(self, codes: torch.Tensor, cond: torch.Tensor | None = None, cond_mask: torch.Tensor | None = None,
                cache: MusicGenCache | None = None, melody: torch.Tensor | None = None) -> torch.Tensor:
        """codes (B, K, S) ids in [0, card] (step layout) -> logits (B, K, S, card); step s predicts s + 1.

        cond (B, L, cond_dim) + cond_mask (B, L): the condition (None: none at all, which in cross
        mode equals the nulled condition). melody (B, Lm, melody_dim): prefix mode with melody_dim
        (None: the null chroma). With a cache, codes continue its positions; the condition (cross
        keys/values, or the prefix) is read by the first call only and kept in the cache.
        """
        cfg = self.cfg
        if codes.dim() != 3 or codes.shape[1] != cfg.codebooks:
            raise ValueError(f"codes must be (B, {cfg.codebooks}, S) (model.codebooks), got {tuple(codes.shape)}")
        B, K, S = codes.shape
        if cond is not None and cond_mask is None:
            cond_mask = torch.ones(cond.shape[:2], dtype=torch.long, device=cond.device)
        first = cache is None or cache.length == 0
        x = sum(self.embed[k](codes[:, k]) for k in range(K))  # (B, S, D)
        ctx, ctx_mask, n_prefix = None, None, 0
        if cfg.cond_mode == "prefix" and first:
            parts = []
            if cfg.melody_dim:
                parts.append(self.melody_prefix(melody if melody is not None else
                                                self.null_melody(B, x.device, x.dtype)))
            if cond is not None:
                parts.append(self.condition(cond, cond_mask))
            if parts:
                x = torch.cat([*(p.to(x.dtype) for p in parts), x], dim=1)  # (B, P + S, D)
                n_prefix = x.shape[1] - S
        elif cfg.cond_mode == "cross":
            if cache is not None and not first:
                ctx_mask = cache.cross_mask
            elif cond is not None:
                ctx = self.condition(cond, cond_mask).to(x.dtype)  # (B, L, D)
                keep = cond_mask[:, None, None, :].bool()  # (B, 1, 1, L)
                # additive mask: a row with every key masked (the nulled condition) attends uniformly
                ctx_mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(
                    ~keep, torch.finfo(x.dtype).min)
                if cache is not None:
                    cache.cross_mask = ctx_mask
        start = cache.length if cache is not None else 0
        T = x.shape[1]
        x = x + self.positions(start, T, x.device).to(x.dtype)
        x = F.dropout(x, cfg.dropout, self.training)
        for i, block in enumerate(self.blocks):
            x = block(x, ctx, ctx_mask, cache, i)
        if cache is not None:
            cache.length += T
        x = self.norm(x[:, n_prefix:])  # (B, S, D)
        return torch.stack([head(x) for head in self.heads], dim=1)  # (B, K, S, card)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> MusicGenCache:
        p = self.heads[0].weight
        return MusicGenCache(self.cfg, batch_size, max_len or self.cfg.max_seq_len, p.device, p.dtype)

    # --------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, valid: torch.Tensor, cond: torch.Tensor | None = None, cond_mask: torch.Tensor | None = None,
                 melody: torch.Tensor | None = None, prompt: torch.Tensor | None = None, cfg_scale: float = 1.0,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | None = None, batch_size: int | None = None, use_cache: bool = True,
                 cfg_batched: bool = True, on_step=None) -> torch.Tensor:
        """Sample a whole step layout -> (B, K, S): `special` wherever valid is false.

        valid (K, S) bool: the cells of the pattern that hold codes (Pattern.valid; column 0 is the
        start column). prompt (B, K, S0): steps already known (an audio prompt in step layout,
        column 0 included); generation starts at step S0 (default 1). cfg_scale != 1: classifier-free
        guidance against the nulled condition, batched with the conditional rows (cfg_batched=False:
        two forwards per step, for comparison); transformers guides only for scale > 1, audiocraft's
        formula (used here) holds at every scale, and at scale 1 it is the conditional logits. temperature 0 = greedy. use_cache=False recomputes
        the whole prefix and the condition every step (for comparison). `on_step(s)` after each step.
        """
        check_sampling(temperature, top_k, top_p)
        cfg = self.cfg
        K, S = valid.shape
        if K != cfg.codebooks:
            raise ValueError(f"valid must be ({cfg.codebooks}, S) (model.codebooks), got {tuple(valid.shape)}")
        sized = [t.shape[0] for t in (cond, melody, prompt) if t is not None]
        if batch_size is None and not sized:
            raise ValueError("generate: give cond, melody, prompt or batch_size (how many to sample)")
        B = sized[0] if batch_size is None else batch_size
        device = self.heads[0].weight.device
        valid = valid.to(device)
        seq = torch.full((B, K, S), cfg.special, dtype=torch.long, device=device)
        s0 = 1
        if prompt is not None:
            s0 = prompt.shape[2]
            if prompt.shape[:2] != (B, K) or not 1 <= s0 <= S:
                raise ValueError(f"prompt must be ({B}, {K}, S0) with 1 <= S0 <= {S}, got {tuple(prompt.shape)}")
            seq[:, :, :s0] = prompt.to(device).masked_fill(~valid[:, :s0], cfg.special)
        guided = cfg_scale != 1.0
        if cond is not None and cond_mask is None:
            cond_mask = torch.ones(cond.shape[:2], dtype=torch.long, device=cond.device)
        # one branch per forward: [conditional] or, with guidance, [conditional, null] (batched: one)
        branches = [(cond, cond_mask, melody)]
        if guided:
            branches.append(self.null_condition(cond, cond_mask, melody, B))
        if guided and cfg_batched:
            branches = [tuple(None if a is None else torch.cat([a, b]) for a, b in zip(*branches))]
        rows = [B * (2 if guided and cfg_batched else 1)] * len(branches)
        P = self.prefix_len(cond)
        caches = [self.new_cache(r, P + S) if use_cache else None for r in rows]
        was_training = self.training
        self.eval()
        for s in range(s0, S):
            logits = []
            for (c, m, mel), cache, r in zip(branches, caches, rows):
                x = seq[:, :, : s] if cache is None or cache.length == 0 else seq[:, :, s - 1 : s]
                x = x.repeat(r // B, 1, 1)
                logits.append(self(x, c, m, cache, mel)[:, :, -1].float())  # (r, K, card)
            logits = torch.cat(logits)  # (B or 2B, K, card)
            if guided:
                cond_l, uncond_l = logits[:B], logits[B:]
                logits = uncond_l + cfg_scale * (cond_l - uncond_l)
            nxt = sample_next(logits.reshape(B * K, -1), temperature, top_k, top_p, generator).view(B, K)
            seq[:, :, s] = torch.where(valid[:, s], nxt, cfg.special)
            if on_step is not None:
                on_step(s)
        self.train(was_training)
        return seq

    def null_condition(self, cond: torch.Tensor | None, cond_mask: torch.Tensor | None,
                       melody: torch.Tensor | None, batch_size: int) -> tuple:
        """The unconditional branch: cond zeroed with an all-zero mask, the null chroma."""
        null_cond = None if cond is None else torch.zeros_like(cond)
        null_mask = None if cond_mask is None else torch.zeros_like(cond_mask)
        null_mel = None
        if self.cfg.melody_dim:
            p = self.melody_in.weight
            null_mel = self.null_melody(batch_size, p.device, melody.dtype if melody is not None else p.dtype)
            if melody is not None:  # same length as the melody, bin 0 set (transformers' null_audio_hidden_states)
                null_mel = torch.zeros_like(melody)
                null_mel[:, :, 0] = 1
        return null_cond, null_mask, null_mel


def merge_lora(model: MusicGenLM) -> MusicGenLM:
    """A plain MusicGenLM (lora_rank 0) whose weights are W + (alpha / r) B A at every adapter:
    the same function, no adapters (what an adapted model exports as)."""
    import dataclasses

    if not model.cfg.lora_rank:
        return model
    plain = MusicGenLM(dataclasses.replace(model.cfg, lora_rank=0))
    plain.load_state_dict(merged_state_dict(model), strict=True)
    return plain.to(model.heads[0].weight.dtype).train(model.training)


def drop_condition(cond_mask: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Condition dropout at training: each row's mask zeroed (its condition nulled) with probability p."""
    if p <= 0:
        return cond_mask
    keep = torch.rand(cond_mask.shape[0], generator=generator, device=cond_mask.device) >= p  # (B,)
    return cond_mask * keep[:, None].to(cond_mask.dtype)


def guided_logits(model: MusicGenLM, codes: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor,
                  scale: float, melody: torch.Tensor | None = None) -> torch.Tensor:
    """Classifier-free guided logits of a whole step layout (B, K, S, card), batched cond + null."""
    B = codes.shape[0]
    null = model.null_condition(cond, cond_mask, melody, B)
    both = [None if a is None else torch.cat([a, b]) for a, b in zip((cond, cond_mask, melody), null)]
    logits = model(codes.repeat(2, 1, 1), both[0], both[1], melody=both[2])
    cond_l, uncond_l = logits[:B], logits[B:]
    return uncond_l + scale * (cond_l - uncond_l)
