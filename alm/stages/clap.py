"""CLAP: contrastive audio-text pre-training of two towers (model: alm/models/clap.py; loss:
alm/stages/contrastive_loss.py, symmetric InfoNCE over the global batch of all ranks).

Data: prep shards (data_prep contract): an audio member (flac / wav / ogg / mp3) and a `json`
member with the clip's `captions` (or caption / transcript / text). data.tokenizer: a sentencepiece
model (`alm tokenize text`, alm/tokenizers/text.py), model.text_vocab_size = its size.
Example: one of the clip's captions at random, as [BOS] ids [EOS] truncated to model.text_max_len;
the audio as mono at model.sample_rate, a random crop of model.max_seconds when longer (no padding).
data.windows must be `one` (windows of one clip would share its captions: false negatives).
Dynamic batching (data.max_tokens > 0) counts audio samples: example_length is the clip's length.
Validation: the same examples (their crop and caption are fixed by the sample's key and seed) and the
in-batch loss of each rank's batch (no cross-rank gather: ranks may hold different batch counts);
then retrieval metrics over the whole data.val_shards, gathered across ranks (alm/stages/clap_val.py).

model.tower=hf (a converted LAION CLAP, alm/models/clap_hf.py; fine-tune with init_from=EXPORT): the
front end is the converted model's own processor in data.tokenizer (EXPORT/tokenizer): captions go
through its RoBERTa tokenizer, and each clip, cropped at random to the feature extractor's
max_length_s, through its ClapFeatureExtractor (rate, mel filters, padding mode) into log-mel
features; the model.sample_rate / n_fft / ... keys of alm's towers are unused.
Pretrained towers, each on its own (model.tower=alm; alm/models/hf_towers.py): model.audio_tower /
model.text_tower = a hub id or folder (AST / HTS-AT audio; RoBERTa / BERT / ClapTextModel text). The
check resolves their transformers configs from the folders' config.json into model.audio_hf_config /
model.text_hf_config (so the run's config.yaml and every export rebuild them without the files);
load_pretrained copies their weights in at a fresh start (tensor by tensor, also into ZeRO-3
partitions); each clip goes through the audio tower's feature extractor and each caption through the
text tower's tokenizer in the loader's workers (alm/models/clap_front.py); every export carries those
front ends in EXPORT/audio_frontend/ and EXPORT/text_frontend/. A pretrained text tower needs no
data.tokenizer.
Commands: `alm embed` (alm/embed.py), `alm convert clap` (alm/convert_clap.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alm.config import RunConfig
from alm.errors import UserError
from alm.models.clap import Clap, ClapConfig, build_clap, pad_text
from alm.stages import clap_val
from alm.stages.contrastive_loss import contrastive_loss
from alm.stages.spec import Command, Stage

log = logging.getLogger(__name__)

def audio_member(sample: dict[str, Any]) -> bytes:
    from alm.data.audio import SHARD_AUDIO, shard_audio_ext

    ext = shard_audio_ext(sample)
    if ext is not None:
        return sample[ext]
    members = ", ".join(sorted(k for k in sample if not k.startswith("__")))
    raise KeyError(f"no audio member ({'/'.join(SHARD_AUDIO)}) in sample {sample.get('__key__')!r}: has {members}")


def captions_of(sample: dict[str, Any]) -> list[str]:
    from alm.tokenizers.text import sample_texts

    if "json" not in sample:
        raise KeyError(f"no json member with captions in sample {sample.get('__key__')!r} (are these prep shards?)")
    meta = json.loads(sample["json"])
    return sample_texts(meta) if isinstance(meta, dict) else []


def text_ids(tokenizer, caption: str, max_len: int) -> np.ndarray:
    """[BOS] + sentencepiece ids + [EOS], truncated to max_len (the EOS kept last)."""
    ids = tokenizer.encode(caption, bos=True, eos=True)
    if len(ids) > max_len:
        ids = ids[: max_len - 1] + [tokenizer.eos_id]
    return np.asarray(ids, dtype=np.int64)


def crop(audio: np.ndarray, max_samples: int, rng: np.random.Generator | None) -> np.ndarray:
    """A random window of max_samples (rng None: the first max_samples); shorter audio unchanged."""
    if len(audio) <= max_samples:
        return audio
    start = 0 if rng is None else int(rng.integers(0, len(audio) - max_samples + 1))
    return audio[start : start + max_samples]


class _Examples:
    """sample -> one example: a random caption and a random crop of the clip through the model's front
    end, loaded once per process: the towers' own (alm/models/clap_front.py: alm's log-mel waveform +
    sentencepiece ids, or a pretrained tower's feature extractor / tokenizer) or, for model.tower=hf,
    the converted CLAP's processor (data.tokenizer). -> the audio part ({"audio"} or {"features",
    "is_longer", "samples"}) + {"text": ids, "pad": the text tower's pad id}."""

    def __init__(self, cfg: RunConfig):
        self.model: ClapConfig = cfg.model
        self.tokenizer_dir = cfg.data.tokenizer
        self._front = None

    def front(self):
        if self._front is None:
            if self.model.tower == "hf":
                from alm.models.clap_hf import HFFrontEnd

                self._front = HFFrontEnd(self.tokenizer_dir, self.model.hf_config)
            else:
                from alm.models.clap_front import TowersFront

                self._front = TowersFront(self.model, self.tokenizer_dir)
        return self._front

    def __getstate__(self):
        return {**self.__dict__, "_front": None}

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict | None:
        from alm.data.audio import load_mono

        captions = captions_of(sample)
        if not captions:
            return None
        front = self.front()
        audio, _ = load_mono(audio_member(sample), front.sample_rate)
        if audio.size == 0:
            return None
        caption = captions[int(rng.integers(len(captions)))]
        clip = crop(audio.astype(np.float32), front.window, rng)
        return {**front.audio_example(clip), "text": front.text_ids(caption), "pad": front.pad_id}


def examples(cfg: RunConfig):
    return _Examples(cfg)


def example_length(example: dict) -> int:
    return example["samples"] if "features" in example else len(example["audio"])


def pad_audio(clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> audio (B, N) zero-padded float32, lengths (B,) int64."""
    audio = np.zeros((len(clips), max(len(c) for c in clips)), dtype=np.float32)
    lengths = np.array([len(c) for c in clips], dtype=np.int64)
    for i, c in enumerate(clips):
        audio[i, : len(c)] = c
    return torch.from_numpy(audio), torch.from_numpy(lengths)


def collate(examples: list[dict]) -> dict[str, Any]:
    """audio (B, N) + lengths (B,); text (B, L) + mask (B, L). A transformers audio tower (model.tower=hf, or
    a pretrained model.audio_tower): features (B, ...) + is_longer (B, 1) instead of audio + lengths; a
    transformers text tower: text padded with its tokenizer's pad id (the examples' "pad")."""
    text, mask = pad_text([e["text"] for e in examples], examples[0].get("pad", 0))
    if "features" in examples[0]:
        return {"features": torch.from_numpy(np.stack([e["features"] for e in examples])),
                "is_longer": torch.tensor([[e["is_longer"]] for e in examples], dtype=torch.bool),
                "text": text, "mask": mask, "_tokens": sum(e["samples"] for e in examples)}
    audio, lengths = pad_audio([e["audio"] for e in examples])
    return {"audio": audio, "lengths": lengths, "text": text, "mask": mask, "_tokens": int(lengths.sum())}


def embeddings(model, batch: dict[str, Any]):
    """-> (audio (B, D), text (B, D), scale) of either tower kind."""
    if "features" in batch:
        return model(batch["features"], batch["is_longer"], batch["text"], batch["mask"])
    return model(batch["audio"], batch["lengths"], batch["text"], batch["mask"])


def loss(model: Clap, batch: dict[str, Any]) -> torch.Tensor:
    a, t, scale = embeddings(model, batch)
    return contrastive_loss(a, t, scale, local_loss=model.cfg.local_loss)


def val_loss(model: Clap, batch: dict[str, Any], batch_idx: int, seed: int) -> torch.Tensor:
    """In-batch loss of this rank's batch only: no collective, so ranks with different numbers of
    validation batches cannot deadlock."""
    from alm.stages.contrastive_loss import in_batch_loss

    a, t, scale = embeddings(model, batch)
    return in_batch_loss(a, t, scale)


def check(cfg: RunConfig) -> None:
    """data.windows=one; data.tokenizer is a text tokenizer with at most model.text_vocab_size pieces;
    [BOS] x [EOS] fits."""
    if cfg.data.windows != "one":
        raise UserError(f"data.windows={cfg.data.windows}: stage clap takes one random crop per clip (data.windows=one); "
                        "windows of one clip share its captions and would be each other's negatives")
    if cfg.model.tower == "hf":
        return check_hf(cfg)
    if cfg.model.pretrained("audio") or cfg.model.pretrained("text"):
        check_towers(cfg)
        if cfg.model.pretrained("text"):
            return
    if cfg.model.text_max_len < 3:
        raise UserError(f"model.text_max_len={cfg.model.text_max_len}: needs room for BOS, a token and EOS (>= 3)")
    if not cfg.data.tokenizer:
        raise UserError("stage clap needs data.tokenizer: a sentencepiece tokenizer dir (`alm tokenize text`)")
    meta = Path(cfg.data.tokenizer) / "text_tokenizer.json"
    if not meta.is_file():
        raise UserError(f"data.tokenizer={cfg.data.tokenizer}: no text_tokenizer.json inside (not a text tokenizer)")
    size = json.loads(meta.read_text())["vocab_size"]
    if cfg.model.text_vocab_size < size:
        raise UserError(f"model.text_vocab_size={cfg.model.text_vocab_size} but the tokenizer in {cfg.data.tokenizer} "
                        f"has {size} pieces: expected at least {size}")


def check_towers(cfg: RunConfig) -> None:
    """Pretrained towers: their transformers configs resolved from the towers' config.json into
    model.{audio,text}_hf_config (recorded in the run's config.yaml; a value already there is the
    tower's when it agrees in model_type), and their front ends load and fit the tower."""
    from alm.models import hf_towers

    mc = cfg.model
    for side in ("audio", "text"):
        if not mc.pretrained(side):
            continue
        resolved = hf_towers.resolve_tower_config(getattr(mc, f"{side}_tower"), side)
        given = getattr(mc, f"{side}_hf_config")
        if given:
            given = dict(given)
            if given.get("model_type") != resolved["model_type"]:
                raise UserError(f"model.{side}_hf_config: model_type {given.get('model_type')!r}, but "
                                f"model.{side}_tower={getattr(mc, f'{side}_tower')} is a {resolved['model_type']!r}")
            resolved = {**resolved, **given}
        setattr(mc, f"{side}_hf_config", resolved)
    mc.validate()
    if mc.pretrained("audio"):
        front = hf_towers.audio_front_end(mc)
        config = mc.audio_hf_config
        if config["model_type"] == "audio-spectrogram-transformer":
            for key, theirs in (("max_length", front.extractor.max_length), ("num_mel_bins", front.extractor.num_mel_bins)):
                if int(config.get(key, -1)) != int(theirs):
                    raise UserError(f"model.audio_tower={mc.audio_tower}: the AST config has {key}={config.get(key)}, "
                                    f"its feature extractor {theirs}")
    if mc.pretrained("text"):
        front = hf_towers.text_front_end(mc)
        vocab = int(mc.text_hf_config.get("vocab_size", 0))
        if len(front.tokenizer) > vocab:
            raise UserError(f"model.text_tower={mc.text_tower}: its tokenizer has {len(front.tokenizer)} entries, the "
                            f"text model's embedding only {vocab} rows")
        if front.max_tokens < 3:
            raise UserError(f"model.text_max_len={mc.text_max_len}: room for fewer than 3 tokens")


def load_pretrained(model, cfg: RunConfig, gathered) -> None:
    """Stage.load_pretrained: the pretrained towers' weights (model.audio_tower / text_tower) into the
    freshly built, possibly ZeRO-3 partitioned model, tensor by tensor; alm's parts keep their init."""
    if cfg.model.tower != "alm":
        return
    from alm.models.hf_towers import load_tower_weights

    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    for side, tower in (("audio", getattr(model, "audio", None)), ("text", getattr(model, "text", None))):
        if cfg.model.pretrained(side):
            n = load_tower_weights(tower, getattr(cfg.model, f"{side}_tower"), side, gathered, rank)
            if rank == 0:
                log.info("model.%s_tower=%s: %d tensors loaded", side, getattr(cfg.model, f"{side}_tower"), n)


def export_files(model, cfg: RunConfig, out: Path) -> dict:
    """Stage.export_files: the pretrained towers' front ends (feature extractor, tokenizer) into
    EXPORT/audio_frontend/ and EXPORT/text_frontend/, so `alm embed` / `alm eval` need nothing else."""
    if cfg.model.tower != "alm" or not (cfg.model.pretrained("audio") or cfg.model.pretrained("text")):
        return {}
    from alm.models import hf_towers

    towers = {}
    for side in ("audio", "text"):
        if not cfg.model.pretrained(side):
            continue
        front = hf_towers.audio_front_end(cfg.model) if side == "audio" else hf_towers.text_front_end(cfg.model)
        dest = out / hf_towers.FRONTEND_DIR[side]
        (front.extractor if side == "audio" else front.tokenizer).save_pretrained(str(dest))
        towers[side] = {"source": getattr(cfg.model, f"{side}_tower"), "frontend": hf_towers.FRONTEND_DIR[side],
                        "model_type": getattr(cfg.model, f"{side}_hf_config")["model_type"]}
    return {"towers": towers}


def check_hf(cfg: RunConfig) -> None:
    """model.tower=hf: data.tokenizer is the converted model's processor folder."""
    cfg.model.validate()
    tok = cfg.data.tokenizer
    if not tok or tok == "synthetic" or not Path(tok).is_dir():
        raise UserError(f"data.tokenizer={tok}: model.tower=hf needs the converted CLAP's processor folder "
                        "(EXPORT/tokenizer of `alm convert clap`)")
    if not (Path(tok) / "tokenizer_config.json").is_file() or not any(
            (Path(tok) / f).is_file() for f in ("preprocessor_config.json", "processor_config.json")):
        raise UserError(f"data.tokenizer={tok}: not a CLAP processor folder (needs tokenizer_config.json and "
                        "preprocessor_config.json or processor_config.json)")


SYNTHETIC_AUDIO = "synthetic-v1"


def synthetic_data(cfg: RunConfig, root: Path) -> dict[str, str]:
    """alm's synthetic captioned audio (cached) + a sentencepiece tokenizer fitted on its training
    captions with model.text_vocab_size pieces (the tiny recipe's size is what the corpus yields)."""
    from alm.data.cache import cached
    from alm.data.synthetic import write_synthetic
    from alm.tokenizers.text import train_text_tokenizer

    audio = cached(root / SYNTHETIC_AUDIO, lambda d: write_synthetic(d), "the synthetic audio dataset")
    made = {"train_shards": str(audio / "train-*.tar"), "val_shards": str(audio / "val-*.tar")}
    if cfg.data.tokenizer not in (None, "synthetic"):  # the user's own tokenizer
        return made
    if cfg.model.pretrained("text"):  # the text tower's own tokenizer: no sentencepiece model
        return {**made, "tokenizer": None}
    size = cfg.model.text_vocab_size

    def make(d: Path) -> None:
        try:
            train_text_tokenizer(str(audio / "train-*.tar"), d, size)
        except ValueError as exc:
            reason = str(exc).splitlines()[0].rsplit("] ", 1)[-1]
            raise UserError(f"model.text_vocab_size={size}: no sentencepiece model of the synthetic captions with "
                            f"that size ({reason})") from exc

    spm = cached(root / f"{SYNTHETIC_AUDIO}-spm{size}", make, f"a sentencepiece tokenizer ({size} pieces) of the synthetic captions")
    return {**made, "tokenizer": str(spm)}


@torch.no_grad()
def embed_pairs(model: Clap, shards: str, tokenizer_dir: str, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray, list]:
    """Every clip of `shards` (first model.max_seconds, no random crop) and every caption of it ->
    (audio embeddings (n_clips, D), text embeddings (n_captions, D), pairs [(text_row, clip_row)])."""
    from alm.data.audio import load_mono
    from alm.data.shards import expand_shards, read_shard
    from alm.tokenizers.text import load_text_tokenizer

    tok = load_text_tokenizer(tokenizer_dir)
    cfg = model.cfg
    model.eval()
    clips, texts, pairs = [], [], []
    for url in expand_shards(shards):
        for sample in read_shard(url):
            caps = captions_of(sample)
            if not caps:
                continue
            audio, _ = load_mono(audio_member(sample), cfg.sample_rate)
            for c in caps:
                pairs.append((len(texts), len(clips)))
                texts.append(text_ids(tok, c, cfg.text_max_len))
            clips.append(crop(audio, cfg.max_samples, None))
    a = [model.encode_audio(*pad_audio(chunk)) for chunk in _chunks(clips, batch_size)]
    t = [model.encode_text(*pad_text(chunk)) for chunk in _chunks(texts, batch_size)]
    return torch.cat(a).numpy(), torch.cat(t).numpy(), pairs


def _chunks(items: list, n: int) -> list[list]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def heldout_retrieval(model: Clap, shards: str, tokenizer_dir: str) -> dict:
    """alm/eval/retrieval.py metrics of `model` on `shards`, plus the clip and caption counts."""
    from alm.eval.retrieval import retrieval_metrics

    audio, text, pairs = embed_pairs(model, shards, tokenizer_dir)
    metrics = retrieval_metrics(text @ audio.T, pairs)
    return {"metrics": metrics, "n_audio": len(audio), "n_text": len(text)}


def export_transformers(model, cfg: RunConfig, out: Path) -> None:
    """`alm export RUN --out DIR --format transformers` of a converted (and fine-tuned) CLAP: a transformers
    folder — ClapModel.from_pretrained(DIR) and ClapProcessor.from_pretrained(DIR) load it."""
    import shutil

    if cfg.model.tower != "hf":
        raise UserError("--format transformers: only for model.tower=hf (a converted CLAP); alm's own towers have no "
                        "transformers class: use the default --format alm")
    from transformers import ClapModel

    from alm.models.clap_hf import transformers_config

    dtype = next(model.parameters()).dtype
    hf = ClapModel(transformers_config(cfg.model.hf_config)).to(dtype)
    hf.load_state_dict(model.to_transformers_state(), strict=True)  # the same names (alm/models/clap_hf.py)
    hf.save_pretrained(str(out))
    processor = Path(cfg.data.tokenizer or "")
    if not processor.is_dir():
        raise UserError(f"--format transformers: data.tokenizer={cfg.data.tokenizer} is not the CLAP processor folder")
    for f in sorted(processor.iterdir()):
        if f.is_file() and not (out / f.name).exists():
            shutil.copyfile(f, out / f.name)


def _convert_arguments(p) -> None:
    from alm.convert_clap import add_arguments

    add_arguments(p)


def _convert(a) -> int:
    from alm.convert_clap import run

    return run(a)


def _embed_arguments(p) -> None:
    from alm.embed import add_arguments

    add_arguments(p)


def _embed(a) -> int:
    from alm.embed import run

    return run(a)


STAGE = Stage(
    name="clap",
    description="CLAP: contrastive audio-text two-tower encoders, InfoNCE over the global batch of all ranks",
    model_config=ClapConfig,
    model=build_clap,
    make_example=examples,
    collate=collate,
    example_length=example_length,
    loss=loss,
    val_loss=val_loss,
    val_epoch_end=clap_val.val_epoch_end,
    eval_tasks=clap_val.EVAL_TASKS,
    check=check,
    synthetic_data=synthetic_data,
    load_pretrained=load_pretrained,
    export_files=export_files,
    export_formats={"transformers": export_transformers},
    commands=(Command("embed", None, "CLAP embeddings of texts or audio files from a clap export: (N, D) float32 "
                      "L2-normalised rows in input order, as .npy; audio longer than the model's window: the length-weighted "
                      "mean of its non-overlapping windows' embeddings", _embed_arguments, _embed),
              Command("convert", "clap", "a transformers ClapModel (save_pretrained folder with its processor, or a hub "
                      "id such as laion/clap-htsat-unfused) -> an alm clap export (model.tower: hf)",
                      _convert_arguments, _convert)),
)
