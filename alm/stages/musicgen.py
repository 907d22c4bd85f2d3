"""MusicGen / AudioGen: one LM over K codec codebooks conditioned on text (model: alm/models/musicgen.py).

Data: codec token shards (`codes.npy` (n_q, T), from `alm tokenize codec`), whose copied `json`
holds the clip's captions (AudioCaps / Clotho / MusicCaps: several per clip). Optionally joined by key
with precomputed text embeddings (`alm tokenize text-embeddings`, so the frozen T5 need not run
every step) and, for MusicGen-Melody, with the audio shards (its chroma is taken from the audio):

    data.train_shards: "codes/train-*.tar"                          T5 runs on the sampled caption
    data.train_shards: "codes/train-*.tar + t5emb/train-*.tar"      precomputed T5 states
    data.train_shards: "audio/train-*.tar + codes/train-*.tar"      melody (model.melody_dim = 12)

Examples: crops of data.segment_seconds (every non-overlapping window of a recording per epoch at a
random offset, data.windows=all; one random crop, data.windows=one; a shorter clip is one example),
each with one of the clip's captions drawn at random. The crop's codes (K, T) are laid out by the
codebook pattern model.pattern (alm/models/codebook_patterns.py; MusicGen: delay) into steps (K, S).

Loss: the condition of a fraction model.cond_dropout of the batch is nulled (classifier-free
guidance's unconditional branch, paper 0.3); cross-entropy per codebook over the pattern's valid
cells (every code once), averaged over the K codebooks (audiocraft's reduction).

The text encoder (model.text_encoder: a T5 / Flan-T5 hub id or save_pretrained folder) is frozen and
held outside the LM (alm/conditioners/t5.py): never in its parameters, optimizer, checkpoints or
ZeRO partitions; every export carries it as EXPORT/text_encoder/ so generation needs nothing else.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from alm.conditioners.t5 import DEFAULT_MAX_LENGTH, TEXT_ENCODER_DIR, T5Conditioner
from alm.config import DataConfig, RunConfig
from alm.data.shards import npy_load
from alm.errors import UserError
from alm.models.acoustic_lm import aligned_windows
from alm.models.codebook_patterns import PATTERNS, make_pattern
from alm.convert_musicgen import command as convert_command, write_transformers
from alm.models.musicgen import MusicGenConfig, MusicGenLM, drop_condition
from alm.stages import musicgen_generate
from alm.stages import musicgen_eval
from alm.stages.spec import Command, Stage, every_window
from alm.tokenizers.text_embeddings import TEXT_EMB, TEXT_EMB_LENGTHS  # precomputed T5 states per sample

CODES = "codes.npy"
SYNTHETIC = "synthetic"
TINY_T5 = "tiny-t5-synthetic-v1"  # the tiny random T5 of the synthetic captions (make_tiny_t5), cached


@dataclass
class MusicGenStageConfig(MusicGenConfig):
    pattern: str = "delay"  # codebook interleaving: parallel | delay (MusicGen) | unroll | coarse_first
    frame_rate: float = 50.0  # codec frames per second (EnCodec 32 kHz: 50)
    text_encoder: str = ""  # T5 / Flan-T5 hub id or save_pretrained folder; synthetic: the tiny T5 (tiny recipes);
    # empty with init_from: the export's own (model.text_encoder of its config)
    text_max_len: int = DEFAULT_MAX_LENGTH  # caption tokens kept (T5 truncation)


@dataclass
class MusicGenDataConfig(DataConfig):
    segment_seconds: float = 30.0  # training crop (paper: 30 s; AudioGen: 10 s)


# ------------------------------------------------------------------------------------------- data
def captions_of(sample: dict[str, Any]) -> list[str]:
    from alm.tokenizers.text import sample_texts

    if "json" not in sample:
        raise KeyError(f"no json member with captions in sample {sample.get('__key__')!r}")
    meta = json.loads(sample["json"])
    return sample_texts(meta) if isinstance(meta, dict) else []


def caption_embeddings(sample: dict[str, Any]) -> list[np.ndarray]:
    """The precomputed T5 states of every caption of a sample: [(L_i, D) float16]."""
    emb = npy_load(sample[TEXT_EMB])
    lengths = npy_load(sample[TEXT_EMB_LENGTHS]).astype(np.int64).reshape(-1)
    if emb.ndim != 2 or int(lengths.sum()) != emb.shape[0]:
        raise ValueError(f"{TEXT_EMB} of shape {emb.shape} does not match its lengths {lengths.tolist()}")
    return np.split(emb, np.cumsum(lengths)[:-1])


def melody_of(sample: dict[str, Any], f0: int, n: int, frame_rate: float) -> np.ndarray:
    """The chroma (frames, 12) of the audio span of codec frames [f0, f0 + n) (MusicGen-Melody)."""
    from alm.conditioners.chroma import SAMPLE_RATE, chroma
    from alm.data.audio import load_mono
    from alm.stages.clap import audio_member

    audio, _ = load_mono(audio_member(sample), SAMPLE_RATE)
    a, b = int(f0 / frame_rate * SAMPLE_RATE), int((f0 + n) / frame_rate * SAMPLE_RATE)
    return chroma(audio[a:b] if b > a else audio).numpy()


def make_example(sample: dict[str, Any], rng: np.random.Generator, model: MusicGenStageConfig,
                 segment_seconds: float, every: bool = False) -> dict | list[dict] | None:
    """Raw sample -> crops of segment_seconds in step layout, each with one caption drawn at random:
    {"seq": (K, S) int64, "valid": (K, S) bool, "text": str | "cond": (L, D) float16[, "melody": (F, 12)]}."""
    if CODES not in sample:
        raise KeyError(f"no {CODES} member (are these codec token shards?)")
    codes = npy_load(sample[CODES]).astype(np.int64)  # (n_q, T)
    K = model.codebooks
    if codes.ndim != 2 or codes.shape[0] < K:
        raise ValueError(f"codes of shape {codes.shape}: the model needs {K} codebooks (model.codebooks)")
    if codes.size and (codes.min() < 0 or codes.max() >= model.card):
        raise ValueError(f"codes outside [0, {model.card}) — codec and model.card disagree")
    if TEXT_EMB in sample:
        conditions = caption_embeddings(sample)
        key = "cond"
    else:
        conditions = captions_of(sample)
        key = "text"
    if not conditions:
        raise ValueError(f"sample {sample.get('__key__')!r} has no caption (json captions / caption / text)")
    out = []
    window = max(1, int(round(segment_seconds * model.frame_rate)))
    for f0, n, _, _ in aligned_windows(codes.shape[1], 0, model.frame_rate, model.frame_rate, window, rng, every=every):
        if n == 0:
            continue
        pattern = make_pattern(model.pattern, K, n)
        seq = pattern.build(torch.from_numpy(codes[None, :K, f0 : f0 + n]), model.special)[0]
        ex = {"seq": seq.numpy(), "valid": pattern.valid.numpy(), "special": model.special,
              key: conditions[int(rng.integers(len(conditions)))]}
        if model.melody_dim:
            ex["melody"] = melody_of(sample, f0, n, model.frame_rate)
        out.append(ex)
    if every:
        return out
    return out[0] if out else None


def examples(cfg: RunConfig):
    return functools.partial(make_example, model=cfg.model, segment_seconds=cfg.data.segment_seconds,
                             every=every_window(cfg))


def example_length(example: dict) -> int:
    return example["seq"].shape[1]


def pad_stack(arrays: list[np.ndarray], value: float = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[(L_i, ...)] -> (padded (B, L, ...), mask (B, L) long), right padding."""
    longest = max(a.shape[0] for a in arrays)
    out = np.full((len(arrays), longest, *arrays[0].shape[1:]), value, dtype=arrays[0].dtype)
    mask = np.zeros((len(arrays), longest), dtype=np.int64)
    for i, a in enumerate(arrays):
        out[i, : len(a)], mask[i, : len(a)] = a, 1
    return torch.from_numpy(out), torch.from_numpy(mask)


def collate(examples: list[dict]) -> dict[str, Any]:
    """seq (B, K, S) int64 (the special token past each example's end), valid (B, K, S) bool, and
    either text (list of B captions) or cond (B, L, D) float32 + cond_mask (B, L); melody (B, F, 12)."""
    K = examples[0]["seq"].shape[0]
    S = max(e["seq"].shape[1] for e in examples)
    seq = np.full((len(examples), K, S), examples[0]["special"], dtype=np.int64)
    valid = np.zeros((len(examples), K, S), dtype=bool)
    for i, e in enumerate(examples):
        seq[i, :, : e["seq"].shape[1]], valid[i, :, : e["valid"].shape[1]] = e["seq"], e["valid"]
    batch: dict[str, Any] = {"seq": torch.from_numpy(seq), "valid": torch.from_numpy(valid),
                             "_tokens": int(valid.sum())}
    if "cond" in examples[0]:
        cond, mask = pad_stack([e["cond"] for e in examples])
        batch["cond"], batch["cond_mask"] = cond.float(), mask
    else:
        batch["text"] = [e["text"] for e in examples]
    if "melody" in examples[0]:
        batch["melody"] = pad_stack([e["melody"] for e in examples])[0].float()
    return batch


# ------------------------------------------------------------------------------------------- loss
@functools.lru_cache(maxsize=2)
def _text_encoder(source: str, max_len: int) -> T5Conditioner:
    """One frozen T5 per process and source (loaded on first use, outside any ZeRO-3 init context)."""
    return T5Conditioner(source, max_length=max_len)


def text_encoder(cfg: MusicGenStageConfig, device: torch.device) -> T5Conditioner:
    if not cfg.text_encoder or cfg.text_encoder == SYNTHETIC:
        raise UserError("stage musicgen: model.text_encoder must name a T5 (hub id or save_pretrained folder)")
    t5 = _text_encoder(cfg.text_encoder, cfg.text_max_len)
    if t5.device != device:
        t5.to(device)
    return t5


def batch_condition(model: MusicGenLM, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond (B, L, cond_dim), cond_mask (B, L)): the batch's precomputed states, or its captions through T5."""
    if "cond" in batch:
        return batch["cond"], batch["cond_mask"]
    device = batch["seq"].device
    return text_encoder(model.cfg, device)(batch["text"])


def codebook_ce(logits: torch.Tensor, seq: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """logits (B, K, S, card) of seq (B, K, S): the outputs of steps 0..S-2 against the codes of steps
    1..S-1 on the valid cells; mean per codebook, then the mean over the K codebooks."""
    card = logits.shape[-1]
    targets, mask = seq[..., 1:], valid[..., 1:]
    ce = F.cross_entropy(logits[..., :-1, :].float().flatten(0, 2), targets.clamp(max=card - 1).flatten(),
                         reduction="none").view(targets.shape)  # (B, K, S-1)
    per_codebook = (ce * mask).sum((0, 2)) / mask.sum((0, 2)).clamp(min=1)
    return per_codebook.mean()


def loss(model: MusicGenLM, batch: dict[str, Any]) -> torch.Tensor:
    cond, cond_mask = batch_condition(model, batch)
    dtype = model.heads[0].weight.dtype
    if model.training:
        cond_mask = drop_condition(cond_mask, model.cfg.cond_dropout)
    logits = model(batch["seq"], cond.to(dtype), cond_mask, melody=batch.get("melody"))
    return codebook_ce(logits, batch["seq"], batch["valid"])


SAMPLE_CFG, SAMPLE_TOP_K = 3.0, 250  # audio samples at validation: MusicGen's generation defaults


@torch.no_grad()
def sample_codes(model: MusicGenLM, batch: dict[str, Any], i: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Audio samples at validation: generate as many frames as example i's crop from its caption's
    condition (guidance 3, top-k 250) -> (generated, reference) codes (K, T)."""
    K = model.cfg.codebooks
    frames = int(batch["valid"][i, 0].sum())  # every codebook holds each frame once, whatever the pattern
    pattern = make_pattern(model.cfg.pattern, K, frames)
    reference = pattern.revert(batch["seq"][i : i + 1, :, : pattern.num_steps])[0]
    if "cond" in batch:
        cond, mask = batch["cond"][i : i + 1], batch["cond_mask"][i : i + 1]
    else:
        cond, mask = text_encoder(model.cfg, batch["seq"].device)([batch["text"][i]])
    melody = batch["melody"][i : i + 1] if "melody" in batch else None
    g = torch.Generator(device=batch["seq"].device).manual_seed(seed)
    seq = model.generate(pattern.valid, cond.to(model.heads[0].weight.dtype), mask, melody=melody,
                         cfg_scale=SAMPLE_CFG, temperature=1.0, top_k=SAMPLE_TOP_K, generator=g)
    return pattern.revert(seq)[0].cpu().numpy(), reference.cpu().numpy()


# ---------------------------------------------------------------------------------- checks / data
def text_encoder_dim(source: str) -> Optional[int]:
    """d_model of a local T5 folder (None for a hub id: checked when loaded)."""
    config = Path(source).expanduser() / "config.json"
    if not config.is_file():
        return None
    return int(json.loads(config.read_text()).get("d_model", 0)) or None


def check(cfg: RunConfig) -> None:
    m: MusicGenStageConfig = cfg.model
    if m.pattern not in PATTERNS:
        raise UserError(f"key 'model.pattern': expected one of {list(PATTERNS)}, got {m.pattern!r}")
    if cfg.data.segment_seconds <= 0:
        raise UserError(f"key 'data.segment_seconds': must be > 0, got {cfg.data.segment_seconds}")
    if m.text_encoder == SYNTHETIC:
        from alm.data.cache import cache_root

        m.text_encoder = str(synthetic_t5(cache_root()))
    if not m.text_encoder and cfg.init_from:  # fine-tuning: the export's own frozen T5
        m.text_encoder = init_from_text_encoder(Path(cfg.init_from))
    if not m.text_encoder:
        raise UserError("stage musicgen needs model.text_encoder: a T5 / Flan-T5 hub id or save_pretrained folder")
    dim = text_encoder_dim(m.text_encoder)
    if dim is not None and dim != m.cond_dim:
        raise UserError(f"model.cond_dim={m.cond_dim} but the text encoder {m.text_encoder} has d_model={dim}")
    check_text_embeddings(cfg)
    from alm.stages.acoustic import check_codec

    check_codec(cfg, m.card, m.frame_rate, m.codebooks)


def init_from_text_encoder(export_dir: Path) -> str:
    """The text encoder an init_from export names (model.text_encoder of its config.yaml: an `alm
    convert musicgen` export names its own EXPORT/text_encoder copy), so the architecture check agrees."""
    from omegaconf import OmegaConf

    f = export_dir / "config.yaml"
    name = str(OmegaConf.load(f).get("model", {}).get("text_encoder", "") or "") if f.is_file() else ""
    if not name:
        raise UserError(f"model.text_encoder is empty and init_from={export_dir} names no text encoder: set model.text_encoder")
    return name


def check_text_embeddings(cfg: RunConfig) -> None:
    """Precomputed T5 states joined into the data (alm tokenize text-embeddings) must have model.cond_dim."""
    from alm.data.provenance import shard_dirs
    from alm.tokenizers.text_embeddings import META_FILE

    for spec in (cfg.data.train_shards, cfg.data.val_shards):
        if not spec or spec in (SYNTHETIC, "auto"):
            continue
        for d in (d for dirs in shard_dirs(spec) for d in dirs):
            meta = Path(d) / META_FILE
            if meta.is_file():
                made = json.loads(meta.read_text())
                if made.get("d_model") != cfg.model.cond_dim:
                    raise UserError(f"model.cond_dim={cfg.model.cond_dim} but the text embeddings in {d} were made by "
                                    f"{made.get('encoder')} with d_model={made.get('d_model')}")


def synthetic_t5(root: Path) -> Path:
    """The tiny random T5 (32 wide, sentencepiece on the synthetic train captions), made once into the cache."""
    from alm.data.cache import cached
    from alm.stages.acoustic import synthetic_codec
    from alm.tokenizers.text import iter_texts
    from alm.conditioners.t5 import make_tiny_t5

    audio, _ = synthetic_codec(root)
    return cached(root / TINY_T5, lambda d: make_tiny_t5(d, list(iter_texts(str(audio / "train-*.tar")))),
                  "a tiny random T5 encoder with a sentencepiece tokenizer of the synthetic captions")


def synthetic_data(cfg: RunConfig, root: Path) -> dict[str, str]:
    """The synthetic captioned set as demo-codec codes (4 levels x 32 codes at 50 Hz; captions in the
    copied json) + the tiny T5 (model.text_encoder: synthetic)."""
    from alm.data.cache import cached
    from alm.stages.acoustic import DEMO_CODEC
    from alm.stages.acoustic import synthetic_codec
    from alm.stages.semantic import SYNTHETIC_AUDIO
    from alm.tokenizers.codec import tokenize_codec_shards

    m: MusicGenStageConfig = cfg.model
    if m.card != 32 or m.codebooks > 4 or m.frame_rate != 50:
        raise UserError("data.train_shards=synthetic uses alm's demo codec: model.card must be 32, "
                        "model.frame_rate 50 and model.codebooks at most 4")
    audio, codec = synthetic_codec(root)
    codes = cached(root / f"{SYNTHETIC_AUDIO}-codes-{DEMO_CODEC}",
                   lambda d: tokenize_codec_shards(str(audio), d, str(codec), progress=False), "demo-codec codes")
    if m.text_encoder == SYNTHETIC:
        m.text_encoder = str(synthetic_t5(root))
    return {"train_shards": f"{codes}/train-*.tar", "val_shards": f"{codes}/val-*.tar", "codec": str(codec)}


# ------------------------------------------------------------------------------------------ export
def export_files(model: MusicGenLM, cfg: RunConfig, out: Path) -> dict:
    """Every export carries its frozen text encoder (EXPORT/text_encoder/, save_pretrained layout)."""
    source = cfg.model.text_encoder
    if not source or source == SYNTHETIC:
        return {}
    T5Conditioner(source, max_length=cfg.model.text_max_len).save(out / TEXT_ENCODER_DIR)
    return {"text_encoder": {"source": source, "dir": TEXT_ENCODER_DIR}}


STAGE = Stage(
    name="musicgen",
    description="MusicGen / AudioGen: one LM over K codec codebooks (interleaving pattern), T5 text conditioning, CFG",
    model_config=MusicGenStageConfig,
    model=MusicGenLM,
    make_example=examples,
    collate=collate,
    example_length=example_length,
    loss=loss,
    data_config=MusicGenDataConfig,
    check=check,
    synthetic_data=synthetic_data,
    sample_codes=sample_codes,
    export_files=export_files,
    commands=(Command("generate", "musicgen", "text (and melody) -> wav with a musicgen export (KV cache, CFG)",
                      musicgen_generate.add_arguments, musicgen_generate.run),
              convert_command()),  # alm convert musicgen SRC --out EXPORT (alm/convert_musicgen.py)
    export_formats={"transformers": write_transformers},  # alm export RUN --format transformers
    eval_tasks=musicgen_eval.EVAL_TASKS,  # alm eval run EXPORT --task text_to_audio (alm/stages/musicgen_eval.py)
)
