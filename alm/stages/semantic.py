"""AudioLM stage 1: a decoder-only LM over semantic tokens (k-means ids of SSL features).

Data: token shards with a `semantic.npy` member (written by `alm tokenize semantic`).
Example: [BOS] + a random crop of at most data.max_len - 2 tokens + [EOS] if the crop reaches
the end of the clip. Vocabulary: K cluster ids, then BOS = K, EOS = K + 1, so
model.vocab_size = K + 2. Loss: next-token cross-entropy over real (non-padding) positions.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from alm.config import RunConfig
from alm.data.shards import npy_load
from alm.models.transformer import TransformerLM
from alm.training.data import train_loader, val_loader
from alm.tokenizers.semantic import MEMBER, special_tokens
from alm.training.optim import configure_optimizers

IGNORE = -100


def make_example(sample: dict[str, Any], rng: np.random.Generator, max_len: int, vocab_size: int) -> dict | None:
    """Raw shard sample -> {"tokens": int64 (T,)} with BOS/EOS, randomly cropped to max_len."""
    if MEMBER not in sample:
        raise KeyError(f"no {MEMBER} member (are these semantic token shards?)")
    ids = npy_load(sample[MEMBER]).astype(np.int64).reshape(-1)
    bos, eos = special_tokens(vocab_size)
    if ids.size == 0:
        return None
    if ids.min() < 0 or ids.max() >= bos:
        raise ValueError(f"token ids outside [0, {bos}) — tokenizer and model.vocab_size disagree")
    body = max_len - 2  # room for BOS and EOS
    if ids.size > body:  # crop; EOS only when the crop reaches the clip's end
        start = int(rng.integers(0, ids.size - body + 1))
        seq = ids[start : start + body]
        tail = [eos] if start + body == ids.size else []
    else:
        seq, tail = ids, [eos]
    return {"tokens": np.concatenate([[bos], seq, tail]).astype(np.int64)}


def example_length(example: dict) -> int:
    return len(example["tokens"])


def collate(examples: list[dict]) -> dict[str, Any]:
    """Right-pad to the longest example. inputs/targets: (B, T-1) int64; targets use IGNORE for padding."""
    longest = max(len(e["tokens"]) for e in examples)
    tokens = np.zeros((len(examples), longest), dtype=np.int64)
    targets = np.full((len(examples), longest), IGNORE, dtype=np.int64)
    for i, e in enumerate(examples):
        n = len(e["tokens"])
        tokens[i, :n] = e["tokens"]
        targets[i, : n - 1] = e["tokens"][1:]
    n_real = int((targets[:, :-1] != IGNORE).sum())
    return {"inputs": torch.from_numpy(tokens[:, :-1]), "targets": torch.from_numpy(targets[:, :-1]), "_tokens": n_real}


def lm_loss(model: TransformerLM, batch: dict[str, Any]) -> torch.Tensor:
    logits = model(batch["inputs"])  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=IGNORE)


def check_tokenizer(cfg: RunConfig) -> None:
    """model.vocab_size must be the tokenizer's K + 2 (BOS, EOS)."""
    if not cfg.data.tokenizer:
        return
    path = Path(cfg.data.tokenizer) / "semantic_tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"data.tokenizer={cfg.data.tokenizer}: no semantic_tokenizer.json inside")
    k = json.loads(path.read_text())["n_clusters"]
    if cfg.model.vocab_size != k + 2:
        raise ValueError(f"model.vocab_size={cfg.model.vocab_size} but the tokenizer has {k} clusters: expected {k + 2}")


class SemanticStage(L.LightningModule):
    def __init__(self, cfg: RunConfig):
        super().__init__()
        check_tokenizer(cfg)
        if cfg.data.max_len > cfg.model.max_seq_len:
            raise ValueError(f"data.max_len={cfg.data.max_len} exceeds model.max_seq_len={cfg.model.max_seq_len}")
        self.cfg = cfg
        self.model = TransformerLM(cfg.model)
        self._example = functools.partial(make_example, max_len=cfg.data.max_len, vocab_size=cfg.model.vocab_size)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = lm_loss(self.model, batch)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True, batch_size=1)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss = lm_loss(self.model, batch)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=1)

    def configure_optimizers(self):
        return configure_optimizers(self.model, self.cfg)

    def train_dataloader(self):
        return train_loader(self.trainer, self.cfg, self._example, collate, example_length)

    def val_dataloader(self):
        return val_loader(self.trainer, self.cfg, self._example, collate, example_length)


SYNTHETIC_AUDIO = "synthetic-v1"


def synthetic_data(cfg: RunConfig, root: Path) -> dict[str, str]:
    """The synthetic audio set tokenized with the log-mel demo tokenizer, K = model.vocab_size - 2."""
    from alm.data.cache import cached
    from alm.data.synthetic import write_synthetic
    from alm.tokenizers.semantic import SemanticTokenizerConfig, run

    audio = cached(root / SYNTHETIC_AUDIO, lambda d: write_synthetic(d), "the synthetic audio dataset")
    k = cfg.model.vocab_size - 2
    tok_cfg = SemanticTokenizerConfig(features="logmel", n_clusters=k)

    def build(d: Path) -> None:
        run(str(audio), str(d), tok_cfg, fit_shards=str(audio / "train-*.tar"), progress=False)

    tokens = cached(root / f"{SYNTHETIC_AUDIO}-semantic-logmel-k{k}", build, f"log-mel semantic tokens (K={k}, demo fallback)")
    return {
        "train_shards": str(tokens / "train-*.tar"),
        "val_shards": str(tokens / "val-*.tar"),
        "tokenizer": str(tokens / "tokenizer"),
    }
