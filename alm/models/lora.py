"""alm's one LoRA layer (Hu et al. 2021), used by MusicGen (alm/models/musicgen.py) and AudioPaLM's
transformers body (alm/models/audiopalm.py):

    y = base(x) + (alpha / r) (drop(x) A^T) B^T      A (r, in), B (out, r); B starts at zero, so y starts as base(x)

Own layer rather than peft: the adapted module IS the base module's class with two more parameters,
so the base weights keep their names (`...q_proj.weight`, not peft's `...q_proj.base_layer.weight`)
and public weights, the checkpoint key maps, init_from and the transformers export all read an
adapted model unchanged; the adapters are `...lora_a` / `...lora_b` beside them. The layer is
built inside the model's own __init__, so ZeRO-3 (zero.Init) partitions it at construction like
any other module instead of a wrapper being applied to an already partitioned model.

Two base layouts: nn.Linear (weight (out, in)) and transformers' Conv1D of GPT-2 (c_attn, c_proj:
weight (in, out), y = x W + b); `delta_like(module)` gives (alpha / r) B A in the base weight's
layout, which is what merging adds (`merged_state_dict`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from alm.errors import UserError

ADAPTERS = ("lora_a", "lora_b")


def is_adapter(name: str) -> bool:
    """Whether a parameter name is a LoRA adapter (`...lora_a` / `...lora_b`)."""
    return name.rsplit(".", 1)[-1] in ADAPTERS


class Adapted:
    """The adapter half of a LoRA layer, mixed in before the base class (nn.Linear or Conv1D)."""

    transposed = False  # base weight stored (in, out) (Conv1D)

    def _add_adapters(self, n_in: int, n_out: int, rank: int, alpha: float, dropout: float) -> None:
        if rank < 1 or alpha <= 0 or not 0.0 <= dropout < 1.0:
            raise UserError(f"LoRA: rank {rank} (>= 1), alpha {alpha} (> 0), dropout {dropout} (in [0, 1)) expected")
        self.rank, self.scale = rank, alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, n_in))
        self.lora_b = nn.Parameter(torch.zeros(n_out, rank))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_adapters()

    def reset_adapters(self) -> None:
        """A ~ N(0, 1/r), B = 0: the adapted layer starts as the base layer."""
        with torch.no_grad():
            nn.init.normal_(self.lora_a, std=1.0 / self.rank)
            nn.init.zeros_(self.lora_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + F.linear(F.linear(self.lora_dropout(x), self.lora_a), self.lora_b) * self.scale

    def delta(self) -> torch.Tensor:
        """(alpha / r) B A, float32, (out, in)."""
        return (self.lora_b.float() @ self.lora_a.float()) * self.scale

    def delta_like(self) -> torch.Tensor:
        """delta() in the base weight's layout ((in, out) for Conv1D)."""
        d = self.delta()
        return d.T if self.transposed else d


class LoRALinear(Adapted, nn.Linear):
    """nn.Linear + a trainable low-rank update; `...weight` / `...bias` keep their names."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, bias: bool = False,
                 dropout: float = 0.0):
        super().__init__(in_features, out_features, bias=bias)
        self._add_adapters(in_features, out_features, rank, alpha, dropout)


@functools.cache
def _conv1d_classes() -> tuple[type, type]:
    """(transformers' Conv1D, LoRAConv1D) — built on first use: transformers is imported only then."""
    from transformers.pytorch_utils import Conv1D

    class LoRAConv1D(Adapted, Conv1D):
        """GPT-2's Conv1D (weight (in, out)) + a trainable low-rank update."""

        transposed = True

        def __init__(self, nf: int, nx: int, rank: int, alpha: float, dropout: float = 0.0):
            super().__init__(nf, nx)
            self._add_adapters(nx, nf, rank, alpha, dropout)

    return Conv1D, LoRAConv1D


def _is_conv1d(module: nn.Module) -> bool:
    try:
        return isinstance(module, _conv1d_classes()[0])
    except ImportError:  # pragma: no cover - no transformers: no Conv1D either
        return False


def adapted(module: nn.Module, rank: int, alpha: float, dropout: float = 0.0) -> nn.Module:
    """A LoRA layer of the same shape as `module` (nn.Linear or Conv1D) that holds module's own weight and
    bias Parameters (same objects: loaded or partitioned values carry over) and fresh adapters."""
    if isinstance(module, nn.Linear):
        new = LoRALinear(module.in_features, module.out_features, rank, alpha, bias=module.bias is not None,
                         dropout=dropout)
    elif _is_conv1d(module):
        new = _conv1d_classes()[1](module.nf, module.nx, rank, alpha, dropout)
    else:
        raise UserError(f"LoRA: a {type(module).__name__} cannot be adapted (nn.Linear and GPT-2's Conv1D can)")
    new.weight = module.weight  # the adapters are in the default dtype, as the model was built
    new.bias = module.bias
    return new


def adaptable(root: nn.Module) -> dict[str, nn.Module]:
    """name -> module for every nn.Linear / Conv1D under root (the sites LoRA can adapt)."""
    return {n: m for n, m in root.named_modules() if n and (isinstance(m, nn.Linear) or _is_conv1d(m))}


def add_lora(root: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float = 0.0,
             key: str = "model.lora_targets") -> list[str]:
    """Replace every module under root whose name ends with one of `targets` (module-name suffixes, e.g.
    q_proj or self_attn.q_proj) by its LoRA layer -> the adapted names. A target that matches nothing,
    or matches something that is not nn.Linear / Conv1D, is a UserError naming the candidates."""
    sites = adaptable(root)
    names = [n for n, _ in root.named_modules() if n]
    if not targets:
        raise UserError(f"{key} is empty: name module suffixes such as {', '.join(_candidates(sites)[:6])}")
    chosen: list[str] = []
    for t in targets:
        hits = [n for n in names if n == t or n.endswith("." + t)]
        if not hits:
            raise UserError(f"{key}: {t!r} matches no module of the {type(root).__name__}; candidates: "
                            f"{', '.join(_candidates(sites))}")
        bad = [n for n in hits if n not in sites]
        if bad:
            raise UserError(f"{key}: {t!r} matches {bad[0]} ({type(root.get_submodule(bad[0])).__name__}), which is not "
                            f"an nn.Linear or Conv1D; candidates: {', '.join(_candidates(sites))}")
        chosen += [n for n in hits if n not in chosen]
    for name in chosen:
        parent, _, child = name.rpartition(".")
        owner = root.get_submodule(parent) if parent else root
        setattr(owner, child, adapted(getattr(owner, child), rank, alpha, dropout))
    return chosen


def _candidates(sites: dict[str, nn.Module]) -> list[str]:
    """Distinct last name components of the adaptable modules, in model order (q_proj, k_proj, ...)."""
    return list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in sites))


def lora_layers(model: nn.Module) -> dict[str, Adapted]:
    return {n: m for n, m in model.named_modules() if isinstance(m, Adapted)}


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without adapters, each adapted weight replaced by W + (alpha / r) B A (computed in
    float32, stored in W's dtype): the same function as a plain model. Only the adapted weights are new
    tensors; every other entry is the model's own (tied entries stay one tensor)."""
    state = {k: v for k, v in model.state_dict().items() if not is_adapter(k)}
    with torch.no_grad():
        for name, module in lora_layers(model).items():
            w = state[f"{name}.weight"]
            state[f"{name}.weight"] = (w.float() + module.delta_like()).to(w.dtype)
    return state


def folded(module: nn.Module, weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
           scale: float) -> torch.Tensor:
    """weight (module's base layout: (out, in) for nn.Linear, (in, out) for Conv1D) + scale B A, in weight's
    dtype: adapters of another model (e.g. an export's) folded into module's base weight."""
    d = (lora_b.float() @ lora_a.float()) * scale  # (out, in)
    transposed = module.transposed if isinstance(module, Adapted) else _is_conv1d(module)
    return (weight.float() + (d.T if transposed else d)).to(weight.dtype)
