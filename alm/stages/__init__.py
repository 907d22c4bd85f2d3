"""The stage table: every trainable member of the family, by the name a recipe's `stage:` uses.

Each entry imports its stage file only when asked for (explicit imports, no string registry), so
this table — `STAGE_NAMES`, and config validation of `stage:` — needs neither torch nor Lightning.
A stage file declares one `Stage` (alm/stages/spec.py); adding a stage is one model file
(alm/models/), one stage file and one recipe, plus its line here. Nothing in trainer, data,
export or cli changes.
"""

from __future__ import annotations

from typing import Callable

from alm.stages.spec import Command, Stage


def _semantic() -> Stage:
    from alm.stages.semantic import STAGE

    return STAGE


def _coarse() -> Stage:
    from alm.stages.acoustic import COARSE

    return COARSE


def _fine() -> Stage:
    from alm.stages.acoustic import FINE

    return FINE


def _soundstorm() -> Stage:
    from alm.stages.soundstorm import STAGE

    return STAGE


def _clap() -> Stage:
    from alm.stages.clap import STAGE

    return STAGE


def _musicgen() -> Stage:
    from alm.stages.musicgen import STAGE

    return STAGE


def _audiopalm() -> Stage:
    from alm.stages.audiopalm import STAGE

    return STAGE


STAGES: dict[str, Callable[[], Stage]] = {
    "semantic": _semantic,  # AudioLM stage 1: LM over semantic (k-means of SSL features) tokens
    "coarse": _coarse,  # AudioLM stage 2: semantic -> first Q' RVQ levels
    "fine": _fine,  # AudioLM stage 3: coarse -> remaining RVQ levels
    "soundstorm": _soundstorm,  # semantic -> all RVQ levels, parallel decoding
    "clap": _clap,  # contrastive audio-text two-tower encoders (global-batch InfoNCE)
    "musicgen": _musicgen,  # MusicGen / AudioGen: text-conditioned LM over interleaved codec codebooks
    "audiopalm": _audiopalm,  # a pretrained transformers LM + audio-token rows, tagged ASR / TTS / continuation
}
STAGE_NAMES = tuple(STAGES)


def get_stage(name: str) -> Stage:
    """The Stage declared for `name` (imports its stage file)."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; expected one of {', '.join(STAGE_NAMES)}")
    stage = STAGES[name]()
    assert stage.name == name, (stage.name, name)
    return stage


def all_commands() -> list[Command]:
    """Every CLI command the stages contribute, in table order."""
    return [c for name in STAGE_NAMES for c in get_stage(name).commands]
