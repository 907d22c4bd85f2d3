"""How clips and captions enter a CLAP whose towers are chosen one by one (model.audio_tower /
model.text_tower, alm/models/hf_towers.py): one front end per tower, used alike by training examples
(alm/stages/clap.py, in the data loader's workers), validation (alm/stages/clap_val.py) and `alm embed`.

    audio tower alm         mono waveform at model.sample_rate, at most model.max_seconds -> (audio, lengths)
    audio tower pretrained  its feature extractor, each clip alone (rate, mel filters, padding)
                            -> (features (B, ...), is_longer (B, 1))
    text tower alm          data.tokenizer's sentencepiece model: [BOS] ids [EOS], pad 0
    text tower pretrained   its tokenizer, truncated to min(model.text_max_len, its positions), its pad id

A pretrained tower's front end is read from EXPORT/{audio,text}_frontend when given an export,
else from model.{audio,text}_tower (hub id or folder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from alm.errors import UserError


class TowersFront:
    def __init__(self, model_cfg, tokenizer_dir: str | Path | None, export_dir: str | Path | None = None):
        from alm.models import hf_towers

        self.m = model_cfg
        self.audio_front = hf_towers.audio_front_end(model_cfg, export_dir) if model_cfg.pretrained("audio") else None
        self.text_front = hf_towers.text_front_end(model_cfg, export_dir) if model_cfg.pretrained("text") else None
        self.tokenizer = None
        if self.text_front is None:
            from alm.tokenizers.text import load_text_tokenizer

            if not tokenizer_dir or not (Path(tokenizer_dir) / "spm.model").is_file():
                raise UserError(f"{tokenizer_dir}: no spm.model (alm's text tower needs its sentencepiece tokenizer: "
                                "data.tokenizer, kept in EXPORT/tokenizer by an export)")
            self.tokenizer = load_text_tokenizer(str(tokenizer_dir))
        front = self.audio_front
        self.sample_rate = front.sample_rate if front else int(model_cfg.sample_rate)
        self.window = front.window if front else int(model_cfg.max_samples)
        self.pad_id = self.text_front.pad_id if self.text_front else 0

    # ---- text
    def text_ids(self, text: str) -> np.ndarray:
        if self.text_front is not None:
            return self.text_front.ids(text)
        from alm.stages.clap import text_ids

        return text_ids(self.tokenizer, text, self.m.text_max_len)

    def text_batch(self, ids: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ids (B, L) padded with the tower's pad id, mask (B, L) bool of real tokens."""
        if self.text_front is not None:
            return self.text_front.batch(ids)
        from alm.models.clap import pad_text

        return pad_text(ids)

    # ---- audio
    def audio_example(self, clip: np.ndarray) -> dict:
        """One clip (at most `window` samples) -> the example's audio part (collated by alm.stages.clap.collate)."""
        if self.audio_front is None:
            return {"audio": np.asarray(clip, np.float32)}
        features, longer = self.audio_front.features(clip)
        return {"features": features, "is_longer": longer, "samples": len(clip)}

    def audio_batch(self, clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (audio (B, N), lengths (B,)) for alm's tower, (features, is_longer (B, 1)) for a pretrained one."""
        if self.audio_front is not None:
            return self.audio_front.batch(clips)
        from alm.stages.clap import pad_audio

        return pad_audio(clips)

    def encode_audio(self, model, clips: list[np.ndarray], device) -> torch.Tensor:
        a, b = self.audio_batch(clips)
        if self.audio_front is not None:
            return model.encode_features(a.to(device), b.to(device))
        return model.encode_audio(a.to(device), b.to(device))

    def encode_texts(self, model, ids: list[np.ndarray], device) -> torch.Tensor:
        text, mask = self.text_batch(ids)
        return model.encode_text(text.to(device), mask.to(device))


class TowersBackend:
    """alm.embed's backend for a CLAP with one or two pretrained towers (model.audio_tower / text_tower)."""

    def __init__(self, model, tokenizer_dir: Path | None, device: str, export_dir: Path | None = None):
        self.model = model  # used as it is (device, train/eval mode): see alm.embed.encoder_for
        self.device = device
        self.front = TowersFront(model.cfg, tokenizer_dir, export_dir)
        self.sample_rate = self.front.sample_rate
        self.window = self.front.window
        self.dim = int(model.cfg.embed_dim)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            ids = [self.front.text_ids(t) for t in texts]
            return self.front.encode_texts(self.model, ids, self.device).float().cpu().numpy()

    def embed_windows(self, clips: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return self.front.encode_audio(self.model, clips, self.device).float().cpu().numpy()
