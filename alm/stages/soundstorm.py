"""SoundStorm: parallel (MaskGIT-style) decoding of all RVQ levels from semantic tokens
(model: alm/models/soundstorm.py). Replaces AudioLM's coarse + fine AR stages.

Data: semantic token shards + codec token shards of the same clips, joined by key:
    data.train_shards: "semantic/train-*.tar + codes/train-*.tar"
Examples: windows of model.window_s seconds (every non-overlapping window of a recording per epoch
at a random offset with data.windows=all, the default; one random window with data.windows=one);
codes (Q, T) and the semantic token covering each codec frame (T,). Loss: the model's level-wise masked cross-entropy (random masking per step;
StepSeed makes it reproducible on resume).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alm.config import RunConfig
from alm.data.shards import npy_load
from alm.models.acoustic_lm import aligned_windows, semantic_per_frame
from alm.models.soundstorm import SoundStorm, SoundStormConfig
from alm.stages.cli_args import add_wav_generation_arguments
from alm.stages.spec import Command, Stage, every_window

SEMANTIC = "semantic.npy"
CODES = "codes.npy"


def make_example(sample: dict[str, Any], rng: np.random.Generator, model: SoundStormConfig,
                 every: bool = False) -> dict | list[dict] | None:
    """Raw sample -> one random window (every=False) or every non-overlapping window at a random
    offset (every=True, a list; alm.models.acoustic_lm.aligned_windows)."""
    for member in (SEMANTIC, CODES):
        if member not in sample:
            raise KeyError(f"no {member} member: data.train_shards must join semantic and codec shards ('SEM + CODES')")
    codes = npy_load(sample[CODES]).astype(np.int64)
    sem = npy_load(sample[SEMANTIC]).astype(np.int64).reshape(-1)
    if codes.ndim != 2 or codes.shape[0] < model.n_q:
        raise ValueError(f"codes of shape {codes.shape}: the model needs {model.n_q} RVQ levels")
    if codes.min() < 0 or codes.max() >= model.codebook_size or (sem.size and (sem.min() < 0 or sem.max() >= model.semantic_vocab)):
        raise ValueError("codes or semantic ids out of range for model.codebook_size / model.semantic_vocab")
    out = []
    for f0, n, s0, ns in aligned_windows(codes.shape[1], sem.size, model.frame_rate, model.semantic_rate,
                                         int(round(model.window_s * model.frame_rate)), rng, every=every):
        if n == 0 or ns == 0:
            continue
        out.append({"codes": codes[: model.n_q, f0 : f0 + n],
                    "semantic": semantic_per_frame(sem[s0 : s0 + ns], n, model.frame_rate, model.semantic_rate)})
    if every:
        return out
    return out[0] if out else None


def example_length(example: dict) -> int:
    return example["codes"].shape[1]


def collate(examples: list[dict]) -> dict[str, Any]:
    """codes (B, Q, T) and semantic (B, T) zero-padded; lengths (B,)."""
    q = examples[0]["codes"].shape[0]
    longest = max(example_length(e) for e in examples)
    codes = np.zeros((len(examples), q, longest), dtype=np.int64)
    semantic = np.zeros((len(examples), longest), dtype=np.int64)
    lengths = np.zeros(len(examples), dtype=np.int64)
    for i, e in enumerate(examples):
        n = example_length(e)
        codes[i, :, :n], semantic[i, :n], lengths[i] = e["codes"], e["semantic"], n
    return {"codes": torch.from_numpy(codes), "semantic": torch.from_numpy(semantic), "lengths": torch.from_numpy(lengths),
            "_tokens": int(lengths.sum()) * q}


def loss(model: SoundStorm, batch: dict[str, Any]) -> torch.Tensor:
    return model.training_loss(batch["codes"], batch["semantic"], batch["lengths"])[0]


def val_loss(model: SoundStorm, batch: dict[str, Any], batch_idx: int, seed: int) -> torch.Tensor:
    """The same masks at every validation, so the numbers are comparable across steps."""
    g = torch.Generator(device=batch["codes"].device).manual_seed(seed * 1000 + batch_idx)
    return model.training_loss(batch["codes"], batch["semantic"], batch["lengths"], generator=g)[0]


@torch.no_grad()
def sample_codes(model: SoundStorm, batch: dict[str, Any], i: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode example i's codes from its semantic tokens alone -> (generated, reference) (Q, T)."""
    n = int(batch["lengths"][i])
    g = torch.Generator(device=batch["codes"].device).manual_seed(seed)
    steps = [8] + [1] * (model.cfg.n_q - 1)
    generated = model.generate(batch["semantic"][i : i + 1, :n], steps_per_level=steps, generator=g)
    return generated[0].cpu().numpy(), batch["codes"][i, :, :n].cpu().numpy()


def check(cfg: RunConfig) -> None:
    from alm.stages.acoustic import check_codec, check_semantic_tokenizer

    check_semantic_tokenizer(cfg, cfg.model.semantic_vocab, cfg.model.semantic_rate)
    check_codec(cfg, cfg.model.codebook_size, cfg.model.frame_rate, cfg.model.n_q)


def examples(cfg: RunConfig):
    return functools.partial(make_example, model=cfg.model, every=every_window(cfg))


def synthetic_data(cfg: RunConfig, root: Path) -> dict[str, str]:
    """Synthetic semantic tokens (log-mel, K = model.semantic_vocab) + tiny-codec codes, joined by key."""
    from alm.stages.acoustic import synthetic_tokens

    sem, codes, codec = synthetic_tokens(root, cfg.model.semantic_vocab, cfg.model.codebook_size, cfg.model.frame_rate,
                                         cfg.model.n_q)
    return {"train_shards": f"{sem}/train-*.tar + {codes}/train-*.tar", "val_shards": f"{sem}/val-*.tar + {codes}/val-*.tar",
            "tokenizer": str(sem / "tokenizer"), "codec": str(codec)}


def _generate_arguments(p) -> None:
    p.add_argument("--semantic", required=True, help="exported semantic stage")
    p.add_argument("--soundstorm", required=True, help="exported SoundStorm stage")
    p.add_argument("--steps", default=None, help="forward passes per RVQ level, e.g. 16,1,1,1 (default 16 then 1s)")
    add_wav_generation_arguments(p)


def _generate(a) -> int:
    from alm.generate import generate_soundstorm

    steps = [int(x) for x in a.steps.split(",")] if a.steps else None
    r = generate_soundstorm(a.semantic, a.soundstorm, a.seconds, a.out, a.prompt, steps, a.temperature, a.top_k,
                            a.seed, a.device)
    print(f"[alm] wrote {r['wav']}: {r['seconds']:.2f} s at {r['sample_rate']} Hz "
          f"(codes {tuple(r['codes'].shape)} in {r['forward_passes']} SoundStorm forward passes)")
    from alm.stages.acoustic import print_plot

    print_plot(a, a.soundstorm)
    return 0


STAGE = Stage(
    name="soundstorm",
    description="SoundStorm: semantic tokens -> all codec RVQ levels by parallel (MaskGIT-style) decoding",
    model_config=SoundStormConfig,
    model=SoundStorm,
    make_example=examples,
    collate=collate,
    example_length=example_length,
    loss=loss,
    val_loss=val_loss,
    check=check,
    synthetic_data=synthetic_data,
    sample_codes=sample_codes,
    commands=(Command("generate", "soundstorm", "semantic LM -> SoundStorm (parallel decoding) -> codec: write a wav",
                      _generate_arguments, _generate),),
)
