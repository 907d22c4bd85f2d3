"""A transformers CLAP inside alm's clap stage (`model.tower: hf`): LAION CLAP's towers — the HTS-AT
audio encoder (ClapAudioModel) and the RoBERTa text encoder (ClapTextModel) — their projections
and logit scales, rebuilt from `model.hf_config` (the ClapConfig as a dict) alone: no download.

The submodules keep transformers' ClapModel names (text_model.*, text_projection.*, audio_model.*,
audio_projection.*, logit_scale_a, logit_scale_t), so an alm export of this model holds the tensors
of a transformers ClapModel checkpoint under the same names — the two logit scales with shape (1,)
instead of transformers' 0-dim scalars, because DeepSpeed cannot broadcast or partition a 0-dim
parameter (`to_transformers_state` gives them back as scalars; `alm export --format transformers`).

    features (B, 1 or 4, frames, n_mels)  the ClapFeatureExtractor's log-mels (4: fusion models)
    is_longer (B, 1) bool                 the feature extractor's fusion flag
      -> audio_model pooler -> audio_projection -> L2-normalised (B, projection_dim)
    input_ids (B, L), attention_mask (B, L)   the RoBERTa tokenizer's
      -> text_model pooler -> text_projection -> L2-normalised (B, projection_dim)

Similarities are cosine * exp(logit_scale_a) (clamped at ln 100 as in CLIP): LAION's training
loss uses logit_scale_a for both directions (logit_scale_t only scores its MLP-feature loss, so it
is kept frozen here: under DDP an unused trainable parameter stops the second step).
Built from config, the towers and projections are constructed one by one (not a whole ClapModel,
whose 0-dim logit scales DeepSpeed cannot partition) with transformers' in-constructor init
switched off, then initialised by transformers' own `_init_weights` module by module
(alm/models/hf_towers.py hf_init) — under ZeRO-3 on gathered parameters, by the trainer calling
`init_weights(gathered)`, so zero.Init partitions the model at construction and no rank holds it whole.

Front end (`HFFrontEnd`): the processor files of the export (its tokenizer/ folder: tokenizer +
feature extractor config, written by `alm convert clap`) — the feature extractor's own rate, mel
filters, padding mode (repeatpad, ...) and truncation for clips up to its max_length_s.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from alm.errors import UserError

MAX_LOGIT_SCALE = math.log(100.0)
SCALARS = ("logit_scale_a", "logit_scale_t")  # 0-dim in transformers, (1,) here
VOLATILE_KEYS = ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype")


def hf_config_dict(config) -> dict[str, Any]:
    """A transformers ClapConfig -> the plain dict `model.hf_config` holds (no version/path/dtype keys)."""

    def clean(d: dict) -> dict:
        return {k: (clean(v) if isinstance(v, dict) else v) for k, v in d.items() if k not in VOLATILE_KEYS}

    return clean(config.to_diff_dict())  # what save_pretrained writes to config.json: the non-default values


def transformers_config(hf_config: dict[str, Any]):
    from transformers import ClapConfig as HFClapConfig

    try:
        return HFClapConfig.from_dict(dict(hf_config))
    except (TypeError, ValueError) as exc:
        raise UserError(f"key 'model.hf_config': not a transformers ClapConfig ({str(exc).splitlines()[0]})") from exc


class HFClap(nn.Module):
    """transformers ClapModel's towers, projections and logit scales (see the module docstring)."""

    def __init__(self, cfg, clap=None):
        """cfg: alm.models.clap.ClapConfig with tower=hf; clap: an existing transformers ClapModel to
        wrap (its weights kept), else one is built from cfg.hf_config with transformers' init."""
        super().__init__()
        if not cfg.hf_config:
            raise UserError("key 'model.hf_config': model.tower=hf needs the transformers ClapConfig as a dict "
                            "(`alm convert clap` writes it into the export's config.yaml)")
        self.cfg = cfg
        self.config = transformers_config(cfg.hf_config)
        if clap is None:
            from transformers.models.clap.modeling_clap import ClapAudioModel, ClapProjectionLayer, ClapTextModel

            from alm.models.hf_towers import build_transformers

            self.text_model = build_transformers(ClapTextModel, self.config.text_config)
            self.text_projection = ClapProjectionLayer(self.config.text_config)
            self.audio_model = build_transformers(ClapAudioModel, self.config.audio_config)
            self.audio_projection = ClapProjectionLayer(self.config.audio_config)
            start = math.log(self.config.logit_scale_init_value)
            scale_a = scale_t = torch.full((1,), start)
        else:
            self.text_model = clap.text_model
            self.text_projection = clap.text_projection
            self.audio_model = clap.audio_model
            self.audio_projection = clap.audio_projection
            scale_a, scale_t = clap.logit_scale_a.detach().reshape(1), clap.logit_scale_t.detach().reshape(1)
        self.logit_scale_a = nn.Parameter(scale_a.clone())  # (1,): see above
        self.logit_scale_t = nn.Parameter(scale_t.clone())
        # no loss here uses it (LAION's logit_scale_t scales only its MLP-feature loss): frozen, so DDP's
        # reducer does not wait for a gradient that never comes; exported unchanged
        self.logit_scale_t.requires_grad_(False)
        if clap is None and not any(hasattr(p, "ds_id") for p in self.parameters()):
            self.init_weights()  # ZeRO-3: the trainer calls it on gathered parameters

    def init_weights(self, gathered=None) -> None:
        """transformers' ClapModel init: the towers by their own _init_weights (hf_init), the projections'
        linears N(0, hidden^-0.5 (2 layers)^-0.5 factor) with zero biases as ClapModel draws them, the
        logit scales at ln(logit_scale_init_value); partitioned parameters gathered (rank 0 writes)."""
        from alm.models.hf_towers import hf_init
        from alm.models.transformer import no_gather

        gathered = gathered or no_gather
        c = self.config
        std = (c.hidden_size ** -0.5) * ((2 * c.num_hidden_layers) ** -0.5) * c.initializer_factor
        for projection in (self.text_projection, self.audio_projection):
            for linear in (m for m in projection.modules() if isinstance(m, nn.Linear)):
                with gathered(list(linear.parameters(recurse=False))), torch.no_grad():
                    nn.init.normal_(linear.weight, std=std)
                    if linear.bias is not None:
                        nn.init.zeros_(linear.bias)
        hf_init(self.text_model, gathered)
        hf_init(self.audio_model, gathered)
        with gathered([self.logit_scale_a, self.logit_scale_t]), torch.no_grad():
            self.logit_scale_a.fill_(math.log(c.logit_scale_init_value))
            self.logit_scale_t.fill_(math.log(c.logit_scale_init_value))

    def to_transformers_state(self) -> dict[str, torch.Tensor]:
        """The state dict of the equivalent transformers ClapModel (0-dim logit scales)."""
        state = self.state_dict()
        for name in SCALARS:
            state[name] = state[name].reshape(())
        return state

    def scale(self) -> torch.Tensor:
        """exp(logit_scale_a), clamped at 100, shape (1,)."""
        return self.logit_scale_a.clamp(max=MAX_LOGIT_SCALE).exp().reshape(1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids (B, L), mask (B, L) -> (B, D) unit norm: transformers' get_text_features, normalised."""
        out = self.text_model(input_ids=ids, attention_mask=mask.long())
        return F.normalize(self.text_projection(out.pooler_output).float(), dim=-1)

    def encode_features(self, features: torch.Tensor, is_longer: torch.Tensor) -> torch.Tensor:
        """features (B, C, frames, mels), is_longer (B, 1) -> (B, D) unit norm: get_audio_features, normalised."""
        dtype = self.audio_projection.linear1.weight.dtype
        out = self.audio_model(input_features=features.to(dtype), is_longer=is_longer.bool())
        return F.normalize(self.audio_projection(out.pooler_output).float(), dim=-1)

    def forward(self, features, is_longer, ids, mask):
        """-> (audio embeddings (B, D), text embeddings (B, D), exp(logit_scale_a)), embeddings unit norm."""
        return self.encode_features(features, is_longer), self.encode_text(ids, mask), self.scale()


def text_limit(tokenizer, hf_config: dict[str, Any]) -> int:
    """Most tokens the text tower takes: RoBERTa positions start after the padding index."""
    text = hf_config.get("text_config") or {}
    positions = int(text.get("max_position_embeddings", 514)) - int(text.get("pad_token_id", 1)) - 1
    return int(min(tokenizer.model_max_length, positions))


class HFFrontEnd:
    """The processor of a converted CLAP: tokenizer + ClapFeatureExtractor, from one local folder."""

    def __init__(self, processor_dir: str | Path, hf_config: dict[str, Any]):
        from transformers import AutoTokenizer, ClapFeatureExtractor

        d = Path(processor_dir)
        if not d.is_dir():
            raise UserError(f"{d}: no such folder (the CLAP processor: tokenizer + feature extractor, "
                            "`alm convert clap` writes it as EXPORT/tokenizer)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(d))
            self.features = ClapFeatureExtractor.from_pretrained(str(d))
        except (OSError, ValueError) as exc:
            raise UserError(f"{d}: not a CLAP processor folder (tokenizer + ClapFeatureExtractor config): "
                            f"{str(exc).splitlines()[0]}") from exc
        self.sample_rate = int(self.features.sampling_rate)
        self.window = int(self.features.nb_max_samples)
        self.max_tokens = text_limit(self.tokenizer, hf_config)
        self.fusion = self.features.truncation == "fusion"
        self.pad_id = int(self.tokenizer.pad_token_id)

    def audio_example(self, clip: np.ndarray) -> dict:
        """One clip (at most `window` samples) -> a training example's audio part (alm.stages.clap.collate)."""
        features, longer = self.audio_features(clip)
        return {"features": features, "is_longer": longer, "samples": len(clip)}

    def text_ids(self, text: str) -> np.ndarray:
        ids = self.tokenizer(text, truncation=True, max_length=self.max_tokens)["input_ids"]
        return np.asarray(ids, dtype=np.int64)

    def text_batch(self, ids: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ids (B, L) padded with the tokenizer's pad id, mask (B, L) bool."""
        from alm.models.clap import pad_text

        return pad_text(ids, self.pad_id)

    def audio_features(self, clip: np.ndarray) -> tuple[np.ndarray, bool]:
        """One clip of at most `window` samples -> (features (C, frames, mels) float32, is_longer), exactly
        what the feature extractor gives this clip alone (a fusion extractor marks a lone short clip
        longer: it sets one clip of every batch without a longer one)."""
        if len(clip) > self.window:
            raise ValueError(f"clip of {len(clip)} samples is longer than the feature extractor's {self.window}")
        out = self.features([np.asarray(clip, np.float32)], sampling_rate=self.sample_rate, return_tensors="np")
        return np.asarray(out["input_features"][0], np.float32), bool(np.asarray(out["is_longer"]).reshape(-1)[0])

    def audio_batch(self, clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> features (B, C, frames, mels), is_longer (B, 1): each clip featurised alone (deterministic)."""
        feats = [self.audio_features(c) for c in clips]
        return (torch.from_numpy(np.stack([f for f, _ in feats])),
                torch.tensor([[longer] for _, longer in feats], dtype=torch.bool))


class HFClapBackend:
    """alm.embed's backend for a converted CLAP export (model.tower: hf)."""

    def __init__(self, model: HFClap, processor_dir: Path, device: str):
        self.model = model  # used as it is (device, train/eval mode): see alm.embed.encoder_for
        self.device = device
        self.front = HFFrontEnd(processor_dir, model.cfg.hf_config)
        self.sample_rate = self.front.sample_rate
        self.window = self.front.window
        self.dim = int(model.audio_projection.linear2.out_features)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        ids, mask = self.front.text_batch([self.front.text_ids(t) for t in texts])
        with torch.no_grad():
            return self.model.encode_text(ids.to(self.device), mask.to(self.device)).cpu().numpy()

    def embed_windows(self, clips: list[np.ndarray]) -> np.ndarray:
        features, is_longer = self.front.audio_batch([c[: self.window] for c in clips])
        with torch.no_grad():
            return self.model.encode_features(features.to(self.device), is_longer.to(self.device)).cpu().numpy()


TINY_CORPUS = ("a dog barks", "rain falls on a roof", "a piano plays a slow melody", "birds sing at dawn",
               "a car passes by", "people talk in a room", "a bell rings", "wind in the trees", "a cat meows",
               "water drips", "a sine tone rises", "noise bursts", "a chord of three notes", "speech babble")


def make_tiny_hf_clap(out: str | Path, fusion: bool = False, seed: int = 0) -> Path:
    """A tiny random transformers CLAP folder (ClapModel + RoBERTa BPE tokenizer + ClapFeatureExtractor,
    save_pretrained), made offline in about a second: what `alm convert clap` reads, for tests and the
    tiny fine-tuning recipe. 16 kHz, 1 s windows (repeatpad), 32 mel bins, 2-layer towers, 32-dim
    space; fusion=True: a fusion HTS-AT with the feature extractor's `fusion` truncation."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (ClapAudioConfig, ClapConfig as HFClapConfig, ClapFeatureExtractor, ClapModel,
                              ClapProcessor, ClapTextConfig, RobertaTokenizer)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(TINY_CORPUS) * 4, vocab_size=400, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(out))  # vocab.json + merges.txt
    tokenizer = RobertaTokenizer.from_pretrained(str(out), model_max_length=62)
    text = ClapTextConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=64, projection_dim=32)
    # HTS-AT: hidden_size = patch_embeds_hidden_size * 2 ** (len(depths) - 1); the 101 mel frames of 1 s
    # at hop 160 must fit spec_size * (spec_size // num_mel_bins) = 64 * 2 = 128
    audio = ClapAudioConfig(num_mel_bins=32, spec_size=64, window_size=4, patch_size=4, patch_stride=(4, 4),
                            depths=[1, 1], num_attention_heads=[2, 2], patch_embeds_hidden_size=16, hidden_size=32,
                            projection_dim=32, enable_fusion=fusion, fusion_type="aff_2d" if fusion else None)
    torch.manual_seed(seed)
    model = ClapModel(HFClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=32)).eval()
    features = ClapFeatureExtractor(feature_size=32, sampling_rate=16000, hop_length=160, max_length_s=1,
                                    fft_window_size=400, padding="repeatpad",
                                    truncation="fusion" if fusion else "rand_trunc", frequency_min=50,
                                    frequency_max=8000)
    model.save_pretrained(str(out))
    ClapProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(str(out))
    return out
