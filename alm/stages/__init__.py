"""The trainable stages of the family, and the one table that maps a recipe's `stage:` to code.

A stage is one model file (alm/models/, pure torch), one small LightningModule (alm/stages/<name>.py)
and one recipe. This table names, for each stage, its model config dataclass and model class —
light imports only (no Lightning), so loading an export needs nothing but torch.
`lightning_module(stage)` imports the LightningModule of a stage explicitly.
"""

from __future__ import annotations

from alm.models.transformer import TransformerConfig, TransformerLM

MODEL_OF_STAGE = {
    "semantic": (TransformerConfig, TransformerLM),
}


def lightning_module(stage: str):
    """The LightningModule class that trains `stage`."""
    if stage == "semantic":
        from alm.stages.semantic import SemanticStage

        return SemanticStage
    raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(sorted(MODEL_OF_STAGE))}")


def synthetic_data(stage: str):
    """The function that makes (once, cached) the synthetic training data of `stage`:
    f(cfg, cache_root) -> {"train_shards", "val_shards", "tokenizer"}."""
    if stage == "semantic":
        from alm.stages.semantic import synthetic_data as make

        return make
    raise ValueError(f"stage {stage!r} has no synthetic dataset")
