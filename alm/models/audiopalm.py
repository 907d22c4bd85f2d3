"""AudioPaLM's joint model: a transformers causal LM whose vocabulary is extended by audio tokens.

Vocabulary (ids), for a pretrained LM with V text rows, K audio tokens and G task tags:

    [0, V)                  the pretrained text vocabulary: rows copied from the checkpoint, untouched
    [V, V + K)              audio tokens <a_0> .. <a_{K-1}> (semantic k-means ids)
    [V + K, V + K + G)      task tags, e.g. [ASR English], [TTS English] (one token each)
    [V + K + G, N)          unused rows: N is V + K + G rounded up to model.pad_vocab_multiple

The model is built FROM ITS CONFIG with vocab_size = N (inside configure_model, so ZeRO-3 partitions
it at construction: nothing is ever resized), then the checkpoint is copied in tensor by tensor
(rows [0, V) of the embedding and output matrices from the file) and rows [V, N) are drawn by
`fill_new_rows`. `AudioPalmLM` holds the transformers model's own submodules under their own
names, so its state dict IS the transformers state dict (an export's weights load with
AutoModelForCausalLM as they are).

LoRA (model.lora_rank > 0): alm's LoRA layer (alm/models/lora.py; base names kept, so the checkpoint key
map, init_from and the export read an adapted model unchanged) replaces the body's modules named by
model.lora_targets (module-name suffixes: q_proj,v_proj for Llama / Qwen2, c_attn for GPT-2). Every
pretrained weight is frozen except the vocabulary matrices, of which ONLY rows [V, N) train:

    * a gradient hook on each vocabulary matrix zeroes the grad of rows [0, V). It runs on the leaf
      before the grad is accumulated, so before DDP's all-reduce and before ZeRO's reduce-scatter into
      partitions: it holds unchanged under ZeRO-2/3 (the hook sees the gathered, whole parameter's grad);
      a tied matrix is one parameter, so one hook covers both its uses.
    * zero grad alone is not enough with AdamW: its decoupled weight decay moves every row, grad or not.
      The matrices are marked `no_weight_decay` (alm/training/optim.py puts them in a decay-0 group);
      with zero grads Adam's moments stay 0 and its update is exactly 0, so rows [0, V) stay
      bit-identical (also with gradient clipping: it scales a zero).
      (A split forward — frozen text rows as a buffer, trainable new rows as a parameter — would rename
      and reshape the transformers parameters, and a buffer is not partitioned by ZeRO-3: V x D on every rank.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import torch
from omegaconf import MISSING

from alm.errors import UserError

NEW_ROWS = ("sample", "mean")
CONFIG_DROP = ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "_commit_hash")


@dataclass
class AudioPalmConfig:
    pretrained: str = MISSING  # transformers causal LM: hub id, local dir, or `synthetic` (a random LM of model.synthetic)
    # the transformers config (config.json's fields, model_type included): keys given here override
    # model.pretrained's; alm train fills in the rest, so the run's config.yaml holds all of it
    config: dict = field(default_factory=dict)
    synthetic: dict = field(default_factory=dict)  # pretrained=synthetic: the random LM's transformers config
    audio_tokens: int = MISSING  # K: clusters of data.tokenizer (semantic_tokenizer.json n_clusters)
    task_tags: list = field(default_factory=lambda: ["[ASR English]", "[TTS English]", "[Continuation English]"])
    pad_vocab_multiple: int = 8  # the extended vocabulary is rounded up to a multiple of this (1: none)
    new_rows: str = "sample"  # new rows: sample = drawn from N(mean, cov) of the text rows; mean = their mean
    lora_rank: int = 0  # > 0: LoRA adapters on lora_targets, the body frozen, only the new vocabulary rows of it train
    lora_alpha: float = 16.0  # adapter scale = lora_alpha / lora_rank
    lora_targets: str = "q_proj,v_proj"  # comma-separated module-name suffixes of the body (GPT-2: c_attn)
    lora_dropout: float = 0.0  # dropout on the adapters' input (training only)

    @property
    def lora_target_list(self) -> list[str]:
        return [t.strip() for t in str(self.lora_targets).split(",") if t.strip()]


@dataclass(frozen=True)
class VocabLayout:
    text: int  # V: rows of the pretrained checkpoint
    audio: int  # K
    tags: tuple  # the tag strings, in id order
    total: int  # N (padded)

    @property
    def audio_start(self) -> int:
        return self.text

    @property
    def tag_start(self) -> int:
        return self.text + self.audio

    def tag_id(self, tag: str) -> int:
        if tag not in self.tags:
            raise UserError(f"task tag {tag!r} is not in model.task_tags {list(self.tags)}")
        return self.tag_start + self.tags.index(tag)

    def audio_ids(self) -> range:
        return range(self.audio_start, self.audio_start + self.audio)

    def text_ids(self) -> range:
        return range(self.text)

    def as_dict(self) -> dict:
        return {"text": self.text, "audio_start": self.audio_start, "audio": self.audio,
                "tag_start": self.tag_start, "tags": list(self.tags), "total": self.total}


def audio_token(k: int) -> str:
    return f"<a_{k}>"


def filler_token(i: int) -> str:
    return f"<|alm_unused_{i}|>"


def lm_config(mc: AudioPalmConfig) -> dict:
    """The LM's transformers config fields: model.config once alm train resolved it; before that (e.g. to
    count a recipe's parameters) model.synthetic under model.config for pretrained=synthetic."""
    config = plain(mc.config)
    if "model_type" not in config and mc.pretrained == "synthetic":
        config = {**plain(mc.synthetic), **config}
    if "vocab_size" not in config or "model_type" not in config:
        raise UserError("model.config needs model_type and vocab_size (alm train fills them from model.pretrained's "
                        "config.json; a recipe states them to count parameters without the files)")
    return config


def layout_of(mc: AudioPalmConfig) -> VocabLayout:
    config = lm_config(mc)
    if mc.audio_tokens < 1:
        raise UserError(f"model.audio_tokens={mc.audio_tokens}: expected the number of semantic clusters (>= 1)")
    if mc.pad_vocab_multiple < 1:
        raise UserError(f"model.pad_vocab_multiple={mc.pad_vocab_multiple}: expected >= 1")
    tags = tuple(str(t) for t in mc.task_tags)
    if len(set(tags)) != len(tags) or any(not t.strip() for t in tags):
        raise UserError(f"model.task_tags {list(tags)}: expected distinct, non-empty tags")
    v = int(config["vocab_size"])
    used = v + mc.audio_tokens + len(tags)
    m = mc.pad_vocab_multiple
    return VocabLayout(v, int(mc.audio_tokens), tags, -(-used // m) * m)


def hf_config(mc: AudioPalmConfig, vocab_size: int | None = None):
    """The transformers config of model.config (vocab_size replaced by the extended one unless given)."""
    from transformers import AutoConfig

    fields = {k: v for k, v in lm_config(mc).items() if k not in CONFIG_DROP}
    model_type = fields.pop("model_type")
    fields["vocab_size"] = layout_of(mc).total if vocab_size is None else vocab_size
    try:
        return AutoConfig.for_model(model_type, **fields)
    except ValueError as exc:
        raise UserError(f"model.config: model_type {model_type!r}: {str(exc).splitlines()[0]}") from None


def plain(value: Any) -> Any:
    """An OmegaConf container (or anything) -> plain python dicts / lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(value) if isinstance(value, dict) else value


class AudioPalmLM(torch.nn.Module):
    """The transformers causal LM of model.config with the extended vocabulary. Its submodules are the
    transformers model's children under their names (`model`, `lm_head` for Llama / Qwen2;
    `transformer`, `lm_head` for GPT-2): parameter names are transformers' own."""

    def __init__(self, mc: AudioPalmConfig):
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.mc = mc
        self.layout = layout_of(mc)
        config = hf_config(mc)
        config.use_cache = False  # training; generate() turns the KV cache on
        hf = AutoModelForCausalLM.from_config(config)
        object.__setattr__(self, "hf", hf)  # not a submodule: its children are ours
        for name, child in hf.named_children():
            self.add_module(name, child)
        if config.tie_word_embeddings and hf.get_output_embeddings() is not None:
            assert hf.get_output_embeddings().weight is hf.get_input_embeddings().weight, "tied weights came untied"
        self.lora = check_lora(mc)
        if self.lora:
            from alm.models.lora import add_lora, is_adapter

            add_lora(hf.base_model, mc.lora_target_list, mc.lora_rank, mc.lora_alpha, mc.lora_dropout)
            for name, p in self.named_parameters():
                p.requires_grad_(is_adapter(name))
            for _, p in self.vocab_matrices():
                train_rows_from(p, self.layout.text)

    def init_weights(self, gathered: Callable[[list], ContextManager]) -> None:
        """transformers' own initialisation again, module by module on gathered parameters (rank 0 writes):
        under ZeRO-3 the pass in __init__ wrote into empty partitions. (Stage.load_pretrained then
        overwrites every tensor but the new vocabulary rows, which it draws itself.)"""
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        for module in self.hf.modules():
            params = list(module.parameters(recurse=False))
            if not params:
                continue
            with gathered(params):
                if rank == 0 or not any(hasattr(p, "ds_id") for p in params):
                    with torch.no_grad():
                        self.hf._init_weights(module)
                        if hasattr(module, "reset_adapters"):
                            module.reset_adapters()

    @property
    def blocks(self) -> torch.nn.ModuleList:
        """The decoder layers (per-block activation checkpointing)."""
        base = self.hf.base_model
        for name in ("layers", "h", "blocks"):
            if isinstance(getattr(base, name, None), torch.nn.ModuleList):
                return getattr(base, name)
        raise ValueError(f"{type(self.hf).__name__}: no decoder layer list found")

    def train(self, mode: bool = True):
        super().train(mode)
        self.hf.training = mode
        return self

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, N) logits. position_ids restarting at 0 mark packed sequences: transformers
        then masks attention to each sequence's own tokens (no attention mask is given)."""
        return self.hf(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits

    def generate(self, *args, **kwargs):
        return self.hf.generate(*args, **kwargs)

    def vocab_matrices(self) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, param) of the input embedding and — unless tied to it — the output projection
        (and its bias, if any): the tensors with one row per vocabulary entry."""
        names = {id(p): n for n, p in self.named_parameters()}
        out = [self.hf.get_input_embeddings().weight]
        head = self.hf.get_output_embeddings()
        if head is not None and head.weight is not out[0]:
            out.append(head.weight)
        if head is not None and getattr(head, "bias", None) is not None:
            out.append(head.bias)
        return [(names[id(p)], p) for p in out]


def merged_lm(model: AudioPalmLM) -> AudioPalmLM:
    """The plain AudioPalmLM (lora_rank 0) of an adapted one: W + (alpha / r) B A at every adapter, every
    other tensor the model's own (built on the meta device and given the tensors: no second copy of the
    model, only the merged projections are new). Tied weights stay tied. A model without LoRA: itself."""
    import dataclasses

    from alm.models.lora import merged_state_dict

    if not model.lora:
        return model
    with torch.device("meta"):
        plain = AudioPalmLM(dataclasses.replace(model.mc, lora_rank=0))
    plain.load_state_dict(merged_state_dict(model), strict=True, assign=True)
    for name, buf in model.named_buffers():  # non-persistent buffers (rotary inv_freq) are not in the state dict
        owner, _, leaf = name.rpartition(".")
        plain.get_submodule(owner)._buffers[leaf] = buf
    head, emb = model.hf.get_output_embeddings(), model.hf.get_input_embeddings()
    if head is not None and head.weight is emb.weight:
        plain.hf.get_output_embeddings().weight = plain.hf.get_input_embeddings().weight
    return plain.train(model.training)


def check_lora(mc: AudioPalmConfig) -> bool:
    """model.lora_* -> whether LoRA is on (UserError naming the key otherwise)."""
    if mc.lora_rank < 0 or mc.lora_alpha <= 0 or not 0.0 <= mc.lora_dropout < 1.0:
        raise UserError(f"model.lora_rank={mc.lora_rank} (>= 0; 0 = no adapters), model.lora_alpha={mc.lora_alpha} "
                        f"(> 0), model.lora_dropout={mc.lora_dropout} (in [0, 1)): out of range")
    if mc.lora_rank and not mc.lora_target_list:
        raise UserError("model.lora_targets is empty: name module suffixes of the body, e.g. q_proj,v_proj (GPT-2: c_attn)")
    return mc.lora_rank > 0


def train_rows_from(p: torch.nn.Parameter, first: int) -> None:
    """Only rows [first, ...) of p train: a hook zeroes the grad of rows [0, first) (on the leaf, before
    accumulation: before DDP's / ZeRO's reductions), and p is marked no_weight_decay (decoupled decay
    would move rows whose grad is zero). See the module docstring."""

    def zero_text_rows(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:first] = 0
        return grad

    p.requires_grad_(True)
    p.register_hook(zero_text_rows)
    p.no_weight_decay = True


def new_rows(rows: torch.Tensor, n: int, how: str, generator: torch.Generator) -> torch.Tensor:
    """n new rows for a (V, D) matrix (or a (V,) bias): `sample` = N(mean, cov) of the existing rows
    (full covariance, float64; a tiny ridge where cov is singular), `mean` = the mean row repeated."""
    if how not in NEW_ROWS:
        raise UserError(f"model.new_rows={how!r}: expected one of {list(NEW_ROWS)}")
    mean, cov = _mean_cov(rows)
    if how == "mean" or rows.dim() == 1:
        return mean.expand(n, *mean.shape).clone().to(rows.dtype)
    ridge = 1e-10 * cov.diagonal().mean().clamp_min(1e-30)
    for _ in range(8):
        chol, info = torch.linalg.cholesky_ex(cov + ridge * torch.eye(cov.shape[0], dtype=cov.dtype))
        if int(info) == 0:
            break
        ridge *= 100
    z = torch.randn(n, rows.shape[1], generator=generator, dtype=torch.float64)
    return (mean + z @ chol.T).to(rows.dtype)


def _mean_cov(rows: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean row and (D, D) covariance of a (V, D) matrix in float64, read `chunk` rows at a time (memory:
    D x D doubles + one chunk, not a float64 copy of the matrix); a (V,) bias: its mean, no covariance."""
    v = rows.shape[0]
    total = torch.zeros(rows.shape[1:], dtype=torch.float64)
    for i in range(0, v, chunk):
        total += rows[i : i + chunk].detach().to(torch.float64).sum(0)
    mean = total / v
    if rows.dim() == 1:
        return mean, None
    cov = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64)
    for i in range(0, v, chunk):
        c = rows[i : i + chunk].detach().to(torch.float64) - mean
        cov += c.T @ c
    return mean, cov / max(1, v - 1)


def fill_new_rows(model: AudioPalmLM, how: str, seed: int, gathered: Callable[[list], ContextManager],
                  rank: int = 0) -> dict[str, int]:
    """Rows [V, N) of every vocabulary matrix drawn by `new_rows` (rank 0 writes; partitioned params are
    gathered one at a time). Rows [0, V) are not touched. -> {name: rows filled}."""
    v, total = model.layout.text, model.layout.total
    out = {}
    for i, (name, p) in enumerate(model.vocab_matrices()):
        with gathered([p]):
            if rank == 0 or not hasattr(p, "ds_id"):
                g = torch.Generator().manual_seed(seed * 1000 + i)
                with torch.no_grad():
                    p[v:] = new_rows(p[:v], total - v, how, g)
        out[name] = total - v
    return out


def extended_tokenizer(base, layout: VocabLayout):
    """The pretrained tokenizer + fillers up to V (when it has fewer entries than the embedding has
    rows) + <a_0>..<a_{K-1}> + the task tags, as special added tokens at exactly the layout's ids."""
    from tokenizers import AddedToken

    tok = base
    n = len(tok)
    if n > layout.text:
        raise UserError(f"the tokenizer has {n} entries but the model's embedding only {layout.text} rows")
    new = [filler_token(i) for i in range(n, layout.text)] + [audio_token(k) for k in range(layout.audio)]
    new += list(layout.tags)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in new], special_tokens=True)
    expect = {audio_token(0): layout.audio_start, audio_token(layout.audio - 1): layout.tag_start - 1,
              **{t: layout.tag_id(t) for t in layout.tags}}
    got = {t: tok.convert_tokens_to_ids(t) for t in expect}
    if got != expect:
        raise UserError(f"the extended tokenizer's ids {got} differ from the model's vocabulary layout {expect} "
                        "(a tag or audio token already in the pretrained tokenizer?)")
    return tok


def resolved_config(pretrained_config: dict, overrides: dict) -> dict:
    """config.json of model.pretrained with model.config's keys over it (bookkeeping keys dropped)."""
    merged = {k: v for k, v in pretrained_config.items() if k not in CONFIG_DROP}
    merged.update({k: v for k, v in plain(overrides).items() if k not in CONFIG_DROP})
    return merged
