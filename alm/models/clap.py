"""CLAP: a two-tower audio-text encoder trained contrastively (loss: alm/stages/contrastive_loss.py).

Pure PyTorch: no Lightning, no DeepSpeed.

    audio (B, N) float waveform at model.sample_rate, lengths (B,)
      -> log-mel (B, F, n_mels)           torch STFT (Hann window) + triangular mel filterbank, log(x + 1e-6)
      -> frame patches (B, F/p, p*n_mels) p = model.patch_frames consecutive frames per token
      -> Linear + learned positions -> n_layer x pre-norm bidirectional block -> RMSNorm
      -> mean over real (non-padding) tokens -> Linear -> L2-normalised (B, embed_dim)

    text ids (B, L) sentencepiece, pad = 0
      -> embedding + learned positions -> n_layer x pre-norm bidirectional block -> RMSNorm
      -> mean over real tokens -> Linear -> L2-normalised (B, embed_dim)

Similarities are cosine * exp(logit_scale); logit_scale starts at ln(1/0.07) and is clamped to
at most ln(100), as in CLIP. The blocks reuse alm/models/transformer.py's RMSNorm and MLP; the
attention here is bidirectional with a key-padding mask (the LM's is causal).

`model.tower: hf` replaces both towers by a transformers CLAP (LAION's HTS-AT + RoBERTa) rebuilt
from `model.hf_config`: alm/models/clap_hf.py (`build_clap` picks one).

Each tower may instead be a pretrained transformers model, chosen on its own (alm/models/hf_towers.py):
`model.audio_tower: alm | <hub id or folder>` (AST, HTS-AT) and `model.text_tower: alm | <hub id or
folder>` (RoBERTa, BERT, ClapTextModel), rebuilt from `model.audio_hf_config` / `model.text_hf_config`
(filled by the stage's check), any mix; its pooled output goes through alm's projection
(audio_proj / text_proj) to embed_dim. A pretrained audio tower takes its feature extractor's
features (B, ...) and is_longer (B, 1) instead of the waveform: encode_features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from alm.models.transformer import MLP, RMSNorm, TransformerConfig, gpt2_init, no_gather

MAX_LOGIT_SCALE = math.log(100.0)


TOWERS = ("alm", "hf")


@dataclass
class ClapConfig:
    # which towers: alm = the two below; hf = a transformers ClapModel (converted LAION CLAP) rebuilt from
    # hf_config, its front end (tokenizer, feature extractor) from data.tokenizer; the alm tower keys are then unused
    tower: str = "alm"
    hf_config: Optional[dict[str, Any]] = None  # tower=hf: the transformers ClapConfig as a dict (alm convert clap)
    # each tower on its own (tower=alm only): alm = alm's tower below; a hub id or folder = that pretrained
    # transformers model (audio: AST / HTS-AT; text: RoBERTa / BERT / ClapTextModel) with its own front end
    audio_tower: str = "alm"
    text_tower: str = "alm"
    audio_hf_config: Optional[dict[str, Any]] = None  # the pretrained audio tower's transformers config (check fills it)
    text_hf_config: Optional[dict[str, Any]] = None  # the pretrained text tower's transformers config (check fills it)
    # audio front end
    sample_rate: int = 16000
    n_fft: int = 512
    hop_length: int = 160
    n_mels: int = 64
    patch_frames: int = 4  # mel frames per audio token
    max_seconds: float = 10.0  # training crop; longer clips are cropped at random
    # audio tower
    audio_layers: int = 4
    audio_heads: int = 4
    audio_dim: int = 256
    # text tower
    text_vocab_size: int = 0  # the sentencepiece model's size (data.tokenizer)
    text_max_len: int = 64  # longer captions are truncated
    text_layers: int = 4
    text_heads: int = 4
    text_dim: int = 256
    # shared space and loss
    embed_dim: int = 256
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    init_temperature: float = 0.07  # logit_scale starts at ln(1 / init_temperature)
    local_loss: bool = False  # each rank's rows against all columns (memory O(B_local x B_global))

    def validate(self) -> None:
        if self.tower not in TOWERS:
            raise ValueError(f"key 'model.tower': expected one of {list(TOWERS)}, got {self.tower!r}")
        for side in ("audio", "text"):
            if not str(getattr(self, f"{side}_tower") or "").strip():
                raise ValueError(f"key 'model.{side}_tower': expected alm or a hub id / folder, got an empty value")
        if self.tower == "hf":
            if not self.hf_config:
                raise ValueError("key 'model.hf_config': model.tower=hf needs the transformers ClapConfig as a dict "
                                 "(`alm convert clap` writes it into the export's config.yaml)")
            for side in ("audio", "text"):
                if getattr(self, f"{side}_tower") != "alm":
                    raise ValueError(f"key 'model.{side}_tower': model.tower=hf is a whole transformers CLAP; choose "
                                     f"towers one by one with model.tower=alm")
            return
        if self.hf_config:
            raise ValueError("key 'model.hf_config': set, but model.tower=alm (set model.tower=hf, or hf_config: null)")
        for side in ("audio", "text"):
            if not self.pretrained(side) and getattr(self, f"{side}_hf_config"):
                raise ValueError(f"key 'model.{side}_hf_config': set, but model.{side}_tower=alm")
        if not self.pretrained("text") and self.text_vocab_size <= 0:
            raise ValueError(f"key 'model.text_vocab_size': must be > 0, got {self.text_vocab_size}")
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "patch_frames", "audio_layers", "audio_heads",
                     "audio_dim", "text_max_len", "text_layers", "text_heads", "text_dim", "embed_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"key 'model.{name}': must be > 0, got {getattr(self, name)}")
        if self.max_seconds <= 0:
            raise ValueError(f"key 'model.max_seconds': must be > 0, got {self.max_seconds}")
        for tower in ("audio", "text"):
            dim, heads = getattr(self, f"{tower}_dim"), getattr(self, f"{tower}_heads")
            if dim % heads:
                raise ValueError(f"key 'model.{tower}_dim': {dim} is not divisible by model.{tower}_heads={heads}")
        if not 0.0 < self.init_temperature <= 1.0:
            raise ValueError(f"key 'model.init_temperature': must be in (0, 1], got {self.init_temperature}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"key 'model.dropout': must be in [0, 1), got {self.dropout}")

    def require_tower_configs(self) -> None:
        """A pretrained tower is built from its transformers config: the stage's check fills it."""
        for side in ("audio", "text"):
            if self.pretrained(side) and not getattr(self, f"{side}_hf_config"):
                raise ValueError(f"key 'model.{side}_hf_config': model.{side}_tower={getattr(self, f'{side}_tower')} "
                                 "needs its transformers config (alm train fills it from the tower's config.json)")

    def pretrained(self, side: str) -> bool:
        """Is the audio / text tower a pretrained transformers model (model.{side}_tower not alm)?"""
        return self.tower == "alm" and getattr(self, f"{side}_tower") != "alm"

    @property
    def max_samples(self) -> int:
        return int(round(self.max_seconds * self.sample_rate))

    @property
    def max_audio_tokens(self) -> int:
        return self.max_samples // self.hop_length // self.patch_frames + 1


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) triangular filters on the HTK mel scale, 0 Hz .. Nyquist."""
    top = 2595.0 * math.log10(1.0 + (sample_rate / 2) / 700.0)  # Nyquist in mel
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = 700.0 * (10.0 ** (torch.linspace(0.0, top, n_mels + 2, dtype=torch.float64) / 2595.0) - 1.0)  # in Hz
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs[:, None] - lower) / (center - lower)
    down = (upper - freqs[:, None]) / (upper - center)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


class LogMel(nn.Module):
    """waveform (B, N) -> log-mel (B, F, n_mels), F = N // hop + 1 (centred frames, zeros beyond the
    ends: a clip's frames are the same alone or zero-padded in a batch), in fp32."""

    def __init__(self, cfg: ClapConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        self.register_buffer("filters", mel_filterbank(cfg.n_fft, cfg.n_mels, cfg.sample_rate), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(audio.float(), self.cfg.n_fft, self.cfg.hop_length, window=self.window.float(),
                          center=True, pad_mode="constant", return_complex=True)  # (B, n_fft/2+1, F)
        power = spec.real.pow(2) + spec.imag.pow(2)
        return torch.log(power.transpose(1, 2) @ self.filters.float() + 1e-6)


class EncoderAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x (B, T, C); keep (B, T) bool: real tokens (padding is never attended to)."""
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in self.qkv(x).split(C, dim=-1))
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :], dropout_p=dropout)
        return F.dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)), dropout, self.training)


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = EncoderAttention(dim, heads, dropout)
        self.norm2 = RMSNorm(dim)
        self.mlp = MLP(TransformerConfig(vocab_size=1, d_model=dim, n_head=heads, mlp_ratio=mlp_ratio, dropout=dropout))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), keep)
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    """Token vectors (B, T, C) + keep mask -> mean over kept tokens of the final normed states (B, C)."""

    def __init__(self, dim: int, heads: int, layers: int, max_len: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.pos = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, mlp_ratio, dropout) for _ in range(layers))
        self.norm = RMSNorm(dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        if T > self.pos.num_embeddings:
            raise ValueError(f"{T} tokens exceed the encoder's {self.pos.num_embeddings} positions")
        x = self.drop(x + self.pos.weight[:T])
        for block in self.blocks:
            x = block(x, keep)
        x = self.norm(x)
        w = keep.to(x.dtype)[..., None]
        return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


class Clap(nn.Module):
    def __init__(self, cfg: ClapConfig):
        super().__init__()
        cfg.validate()
        cfg.require_tower_configs()
        self.cfg = cfg
        if cfg.pretrained("audio"):
            from alm.models.hf_towers import HFAudioTower

            self.audio = HFAudioTower(cfg.audio_hf_config)
            self.audio_proj = nn.Linear(self.audio.hidden_size, cfg.embed_dim, bias=False)
        else:
            self.logmel = LogMel(cfg)
            self.audio_in = nn.Linear(cfg.patch_frames * cfg.n_mels, cfg.audio_dim)
            self.audio = Encoder(cfg.audio_dim, cfg.audio_heads, cfg.audio_layers, cfg.max_audio_tokens, cfg.mlp_ratio,
                                 cfg.dropout)
            self.audio_proj = nn.Linear(cfg.audio_dim, cfg.embed_dim, bias=False)
        if cfg.pretrained("text"):
            from alm.models.hf_towers import HFTextTower

            self.text = HFTextTower(cfg.text_hf_config)
            self.text_proj = nn.Linear(self.text.hidden_size, cfg.embed_dim, bias=False)
        else:
            self.text_embed = nn.Embedding(cfg.text_vocab_size, cfg.text_dim)
            self.text = Encoder(cfg.text_dim, cfg.text_heads, cfg.text_layers, cfg.text_max_len, cfg.mlp_ratio,
                                cfg.dropout)
            self.text_proj = nn.Linear(cfg.text_dim, cfg.embed_dim, bias=False)
        # shape (1,), not (): DeepSpeed ZeRO-3 cannot partition a 0-dim parameter
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1.0 / cfg.init_temperature)))
        if not self.hf_towers() or not any(hasattr(p, "ds_id") for p in self.parameters()):
            self.init_weights()  # ZeRO-3 with a transformers tower: the trainer calls it on gathered parameters

    def hf_towers(self) -> list[nn.Module]:
        """The pretrained transformers towers (alm/models/hf_towers.py) of this model."""
        return [m for side, m in (("audio", self.audio), ("text", self.text)) if self.cfg.pretrained(side)]

    def init_weights(self, gathered: Callable[[list], ContextManager] = no_gather) -> None:
        """alm's towers and projections: GPT-2 init (gpt2_init); then transformers' own init of its towers
        (hf_towers.hf_init; Stage.load_pretrained then overwrites them); the logit scale last."""
        towers = self.hf_towers()
        if not towers:
            gpt2_init(self, self.cfg.audio_layers + self.cfg.text_layers, gathered)
        else:
            from alm.models.hf_towers import hf_init

            layers = sum(getattr(self.cfg, f"{s}_layers") for s in ("audio", "text") if not self.cfg.pretrained(s))
            skip = {id(m) for t in towers for m in t.modules()}
            for module in (m for m in _children_first(self) if id(m) not in skip):
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    with gathered(list(module.parameters(recurse=False))):
                        nn.init.normal_(module.weight, mean=0.0, std=0.02)
                        if getattr(module, "bias", None) is not None:
                            nn.init.zeros_(module.bias)
            tower_params = {id(p) for t in towers for p in t.parameters()}
            for name, p in self.named_parameters():
                if name.endswith("proj.weight") and id(p) not in tower_params:
                    with gathered([p]):
                        nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * max(1, layers)))
            for tower in towers:
                hf_init(tower, gathered)
        with gathered([self.logit_scale]):
            self.logit_scale.data.fill_(math.log(1.0 / self.cfg.init_temperature))

    def scale(self) -> torch.Tensor:
        """exp(logit_scale) (shape (1,)), the logit scale clamped to at most ln(100) (CLIP)."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def encode_audio(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """audio (B, N) at cfg.sample_rate, lengths (B,) real samples (None: all) -> (B, embed_dim), unit norm."""
        if self.cfg.pretrained("audio"):
            raise ValueError("encode_audio: this CLAP's audio tower is pretrained (it takes its feature extractor's "
                             "features: encode_features)")
        B, N = audio.shape
        p = self.cfg.patch_frames
        if lengths is None:
            lengths = torch.full((B,), N, device=audio.device)
        mel = self.logmel(audio)  # (B, F, M)
        frames = mel.shape[1]
        real_frames = lengths.to(audio.device) // self.cfg.hop_length + 1
        mel = mel * (torch.arange(frames, device=audio.device)[None] < real_frames[:, None])[..., None]  # padding -> 0
        n_tok = -(-frames // p)
        mel = F.pad(mel, (0, 0, 0, n_tok * p - frames))
        x = self.audio_in(mel.reshape(B, n_tok, p * self.cfg.n_mels).to(self.audio_in.weight.dtype))
        keep = torch.arange(n_tok, device=audio.device)[None] < (-(-real_frames // p))[:, None]
        return F.normalize(self.audio_proj(self.audio(x, keep)).float(), dim=-1)

    def encode_features(self, features: torch.Tensor, is_longer: torch.Tensor | None = None) -> torch.Tensor:
        """A pretrained audio tower: its feature extractor's features (B, ...), is_longer (B, 1) -> (B, embed_dim)."""
        pooled = self.audio_pooled(features, is_longer)
        return F.normalize(self.audio_proj(pooled.to(self.audio_proj.weight.dtype)).float(), dim=-1)

    def audio_pooled(self, features: torch.Tensor, is_longer: torch.Tensor | None = None) -> torch.Tensor:
        """The pretrained audio tower's pooled output (B, H), before alm's projection."""
        if not self.cfg.pretrained("audio"):
            raise ValueError("encode_features: this CLAP's audio tower is alm's own (it takes waveforms: encode_audio)")
        return self.audio(features, is_longer)

    def text_pooled(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The text tower's pooled output (B, H) before the projection (mask None: ids != 0)."""
        if self.cfg.pretrained("text"):
            if mask is None:
                raise ValueError("text_pooled: a pretrained text tower needs the mask of real tokens (its pad id is not 0)")
            return self.text(ids, mask.bool())
        keep = ids != 0 if mask is None else mask.bool()
        return self.text(self.text_embed(ids), keep)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, L) token ids (alm's tower: sentencepiece, pad 0; a pretrained tower: its tokenizer's),
        mask (B, L) bool real tokens (None: ids != 0) -> (B, embed_dim), unit norm."""
        pooled = self.text_pooled(ids, mask)
        return F.normalize(self.text_proj(pooled.to(self.text_proj.weight.dtype)).float(), dim=-1)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
        """-> (audio embeddings (B, D), text embeddings (B, D), exp(logit_scale)), embeddings unit norm.
        A pretrained audio tower takes (features, is_longer) in place of (audio, lengths)."""
        a = self.encode_features(audio, lengths) if self.cfg.pretrained("audio") else self.encode_audio(audio, lengths)
        return a, self.encode_text(ids, mask), self.scale()


def pad_text(ids: list, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows -> ids (B, L) int64 padded with `pad` (alm's tower: 0; a transformers tower: its
    tokenizer's pad id), mask (B, L) bool of real tokens."""
    import numpy as np

    text = np.full((len(ids), max(len(t) for t in ids)), pad, dtype=np.int64)
    mask = np.zeros(text.shape, dtype=bool)
    for i, t in enumerate(ids):
        text[i, : len(t)], mask[i, : len(t)] = t, True
    return torch.from_numpy(text), torch.from_numpy(mask)


def _children_first(module: nn.Module):
    for child in module.children():
        yield from _children_first(child)
    yield module


def build_clap(cfg: ClapConfig) -> nn.Module:
    """The stage's model: alm's towers (Clap) or, for model.tower=hf, the transformers CLAP (HFClap)."""
    cfg.validate()
    if cfg.tower == "hf":
        from alm.models.clap_hf import HFClap

        return HFClap(cfg)
    return Clap(cfg)
