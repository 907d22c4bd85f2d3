"""What every next-token stage shares (AudioLM semantic, coarse, fine; later MusicGen-style LMs):
the batch layout and the loss over the positions that follow the prefix. Plain functions.

A stage's make_example returns {"tokens": (T,), "n_prefix": P}: tokens [0, P) are conditioning (no
loss), the rest are predicted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from alm.config import DataConfig

IGNORE = -100


def example_length(example: dict) -> int:
    return len(example["tokens"])


def collate(examples: list[dict]) -> dict[str, Any]:
    """Right-pad to the longest example. inputs/targets (B, T-1) int64; targets are IGNORE on the
    prefix (the model is not asked to predict conditioning) and on padding."""
    longest = max(len(e["tokens"]) for e in examples)
    tokens = np.zeros((len(examples), longest), dtype=np.int64)
    targets = np.full((len(examples), longest), IGNORE, dtype=np.int64)
    for i, e in enumerate(examples):
        n, p = len(e["tokens"]), e.get("n_prefix", 1)
        tokens[i, :n] = e["tokens"]
        targets[i, p - 1 : n - 1] = e["tokens"][p:]
    n_real = int((targets[:, :-1] != IGNORE).sum())
    return {"inputs": torch.from_numpy(tokens[:, :-1]), "targets": torch.from_numpy(targets[:, :-1]), "_tokens": n_real}


def lm_loss(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    logits = model(batch["inputs"])  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=IGNORE)


# ---- condition tokens (MusicLM: MuLan tokens in front of the semantic and coarse stages) -------------

@dataclass
class ConditionedDataConfig(DataConfig):
    # a conditioned stage (model.condition_levels > 0): the MuLan tokenizer the condition tokens came from
    # (`alm tokenize mulan` OUT/mulan_tokenizer): exported with the model, so generation quantises a text the same way
    condition_tokenizer: Optional[str] = None


CONDITION_DIR = "condition_tokenizer"  # in an export


def check_condition_tokenizer(cfg) -> None:
    """A conditioned stage names its MuLan tokenizer, with enough levels of model.condition_codebook codes."""
    from alm.errors import UserError
    from alm.tokenizers.mulan import CONFIG

    m = cfg.model
    if not getattr(m, "condition_levels", 0):
        return
    d = cfg.data.condition_tokenizer
    if not d:
        raise UserError(f"stage {cfg.stage}: model.condition_levels={m.condition_levels} needs data.condition_tokenizer "
                        "(the MuLan tokenizer dir, `alm tokenize mulan` OUT/mulan_tokenizer)")
    f = Path(d) / CONFIG
    if not f.is_file():
        raise UserError(f"data.condition_tokenizer={d}: no {CONFIG} inside (not a MuLan tokenizer)")
    meta = json.loads(f.read_text())
    if meta["levels"] < m.condition_levels or meta["codebook"] != m.condition_codebook:
        raise UserError(f"model.condition_levels={m.condition_levels} x condition_codebook={m.condition_codebook} but "
                        f"{f} has {meta['levels']} levels x {meta['codebook']} codes")


def join_synthetic_mulan(cfg, root: Path, made: dict) -> dict:
    """A conditioned stage's synthetic data: `made`'s shard specs + the synthetic set's MuLan tokens
    (model.condition_levels x condition_codebook) and their tokenizer as data.condition_tokenizer."""
    from alm.tokenizers.mulan import TOKENIZER_DIR, synthetic_mulan

    mulan = synthetic_mulan(root, cfg.model.condition_levels, cfg.model.condition_codebook)
    return {**made, "train_shards": f"{made['train_shards']} + {mulan}/train-*.tar",
            "val_shards": f"{made['val_shards']} + {mulan}/val-*.tar", "condition_tokenizer": str(mulan / TOKENIZER_DIR)}


def export_condition_tokenizer(model, cfg, folder: Path) -> dict:
    """Stage.export_files: a conditioned stage's MuLan tokenizer travels with it (export/condition_tokenizer/)."""
    import shutil

    d = getattr(cfg.data, "condition_tokenizer", None)
    if not getattr(cfg.model, "condition_levels", 0) or not d:
        return {}
    shutil.copytree(d, Path(folder) / CONDITION_DIR, copy_function=shutil.copyfile)
    return {"condition_tokenizer": CONDITION_DIR}
