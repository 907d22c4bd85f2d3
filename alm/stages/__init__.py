"""The trainable stages of the family, and the one table that maps a recipe's `stage:` to code.

A stage is one model file (alm/models/, pure torch), one small stage file (alm/stages/<name>.py:
how a shard sample becomes an example, and which LightningModule trains it) and one recipe.
MODEL_OF_STAGE names each stage's model config dataclass and model class — light imports only (no
Lightning), so loading an export needs nothing but torch. `stage_builder(stage)` imports the stage
file explicitly and returns its `build(cfg) -> LightningModule`.
"""

from __future__ import annotations

from alm.models.acoustic_lm import AcousticLM, AcousticLMConfig
from alm.models.soundstorm import SoundStorm, SoundStormConfig
from alm.models.transformer import TransformerConfig, TransformerLM

MODEL_OF_STAGE = {
    "semantic": (TransformerConfig, TransformerLM),  # AudioLM stage 1
    "coarse": (AcousticLMConfig, AcousticLM),  # AudioLM stage 2: semantic -> first Q' RVQ levels
    "fine": (AcousticLMConfig, AcousticLM),  # AudioLM stage 3: coarse -> remaining levels
    "soundstorm": (SoundStormConfig, SoundStorm),  # semantic -> all RVQ levels, parallel decoding
}


def _stage_module(stage: str):
    if stage == "semantic":
        from alm.stages import semantic

        return semantic
    if stage in ("coarse", "fine"):
        from alm.stages import acoustic

        return acoustic
    if stage == "soundstorm":
        from alm.stages import soundstorm

        return soundstorm
    raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(sorted(MODEL_OF_STAGE))}")


def stage_builder(stage: str):
    """build(cfg) -> the LightningModule that trains `stage`."""
    return _stage_module(stage).build


def synthetic_data(stage: str):
    """The function that makes (once, cached) the synthetic training data of `stage`:
    f(cfg, cache_root) -> {"train_shards", "val_shards", "tokenizer", ...}."""
    return _stage_module(stage).synthetic_data
