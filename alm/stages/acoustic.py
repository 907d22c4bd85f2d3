"""AudioLM stages 2 and 3: coarse and fine acoustic LMs (model: alm/models/acoustic_lm.py).

Data: codec token shards (`codes.npy`, (n_q, T), from `alm tokenize codec`) and, for the coarse
stage, the semantic token shards of the same clips, joined by key:

    coarse: data.train_shards: "semantic/train-*.tar + codes/train-*.tar"
    fine:   data.train_shards: "codes/train-*.tar"

Examples: windows of model.window_s seconds, the same span in both streams: every non-overlapping
window of a recording per epoch at a random offset (data.windows=all, default), or one random
window (data.windows=one); a recording shorter than a window is one example:
    coarse: [BOS] semantic [SEP] levels 0..Q'-1 flattened          loss on the acoustic tokens
            (MusicLM, model.condition_levels = L: the clip's L MuLan tokens first, from a joined
             `mulan.npy` set: data.train_shards: "SEM/train-*.tar + CODES/train-*.tar + MULAN/train-*.tar")
    fine:   [BOS] levels 0..Q'-1 [SEP] levels Q'..Q-1 flattened    loss on the fine tokens
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alm.config import RunConfig
from alm.data.shards import npy_load
from alm.errors import UserError
from alm.models.acoustic_lm import AcousticLM, AcousticLMConfig, aligned_windows, condition_prefix
from alm.stages.lm import (IGNORE, ConditionedDataConfig, check_condition_tokenizer, collate, example_length,
                           export_condition_tokenizer, lm_loss)
from alm.stages.cli_args import add_wav_generation_arguments
from alm.stages.spec import Command, Stage, every_window

SEMANTIC = "semantic.npy"
CODES = "codes.npy"


def make_example(sample: dict[str, Any], rng: np.random.Generator, model: AcousticLMConfig,
                 every: bool = False) -> dict | list[dict] | None:
    """Raw sample -> a window of model.window_s seconds (every=False: one at random) or every
    non-overlapping window at a random offset (every=True, a list; alm.models.acoustic_lm.aligned_windows)."""
    if CODES not in sample:
        raise KeyError(f"no {CODES} member (are these codec token shards?)")
    codes = npy_load(sample[CODES]).astype(np.int64)  # (n_q, T)
    levels = model.prefix_levels + model.target_levels
    if codes.ndim != 2 or codes.shape[0] < levels:
        raise ValueError(f"codes of shape {codes.shape}: the model needs {levels} RVQ levels")
    if codes.min() < 0 or codes.max() >= model.codebook_size:
        raise ValueError(f"codes outside [0, {model.codebook_size}) — codec and model.codebook_size disagree")
    lay = model.layout
    out = []
    if model.semantic_vocab:  # coarse
        if SEMANTIC not in sample:
            raise KeyError(f"no {SEMANTIC} member: join the semantic shards (data.train_shards: 'SEM + CODES')")
        sem = npy_load(sample[SEMANTIC]).astype(np.int64).reshape(-1)
        if sem.size and (sem.min() < 0 or sem.max() >= model.semantic_vocab):
            raise ValueError(f"semantic ids outside [0, {model.semantic_vocab})")
        cond = np.zeros(0, np.int64)
        if model.condition_levels:  # MusicLM: the clip's MuLan tokens first
            from alm.tokenizers.mulan import sample_condition

            cond = condition_prefix(model, sample_condition(sample, model.condition_levels, model.condition_codebook))
        for f0, n, s0, ns in aligned_windows(codes.shape[1], sem.size, model.frame_rate, model.semantic_rate,
                                             model.frames(model.window_s), rng, every=every):
            if n == 0 or ns == 0:
                continue
            prefix = np.concatenate([cond, [lay.bos], sem[s0 : s0 + ns], [lay.sep]])
            target = lay.flatten(codes[: model.target_levels, f0 : f0 + n], first_level=0)
            out.append({"tokens": np.concatenate([prefix, target]).astype(np.int64), "n_prefix": len(prefix)})
    else:  # fine
        q0 = model.prefix_levels
        for f0, n, _, _ in aligned_windows(codes.shape[1], 0, model.frame_rate, model.semantic_rate,
                                           model.frames(model.window_s), rng, every=every):
            if n == 0:
                continue
            prefix = np.concatenate([[lay.bos], lay.flatten(codes[:q0, f0 : f0 + n], first_level=0), [lay.sep]])
            target = lay.flatten(codes[q0:levels, f0 : f0 + n], first_level=q0)
            out.append({"tokens": np.concatenate([prefix, target]).astype(np.int64), "n_prefix": len(prefix)})
    if every:
        return out
    return out[0] if out else None


def check_data(cfg: RunConfig) -> None:
    """The model's layout must match the tokenizers the data came from (when they are known)."""
    m: AcousticLMConfig = cfg.model
    if cfg.stage == "coarse":
        check_semantic_tokenizer(cfg, m.semantic_vocab, m.semantic_rate)
    if cfg.stage == "fine" and m.semantic_vocab:
        raise UserError("stage fine: model.semantic_vocab must be 0 (the fine stage is conditioned on coarse codes)")
    if cfg.stage == "coarse" and not m.semantic_vocab:
        raise UserError("stage coarse: model.semantic_vocab must be the number of semantic clusters (> 0)")
    check_codec(cfg, m.codebook_size, m.frame_rate, m.prefix_levels + m.target_levels)
    check_condition_tokenizer(cfg)


def check_semantic_tokenizer(cfg: RunConfig, semantic_vocab: int, semantic_rate: float) -> None:
    """The semantic tokenizer (data.tokenizer) must have model.semantic_vocab clusters at model.semantic_rate."""
    path = Path(cfg.data.tokenizer) / "semantic_tokenizer.json" if cfg.data.tokenizer else None
    if path is None or not path.is_file():
        return
    t = json.loads(path.read_text())
    if t["n_clusters"] != semantic_vocab:
        raise UserError(f"model.semantic_vocab={semantic_vocab} but {path} has {t['n_clusters']} clusters")
    if abs(t.get("frame_rate", semantic_rate) - semantic_rate) > 1e-6:
        raise UserError(f"model.semantic_rate={semantic_rate} but {path} has frame_rate {t['frame_rate']}")


def check_codec(cfg: RunConfig, codebook_size: int, frame_rate: float, levels: int) -> None:
    """A local codec (data.codec) must have the model's codebook size, frame rate and enough levels."""
    info = codec_meta(cfg.data.codec) if cfg.data.codec else {}
    if not info:
        return
    for key, want in (("codebook_size", codebook_size), ("frame_rate", frame_rate)):
        if abs(float(info[key]) - float(want)) > 1e-6:
            raise UserError(f"model.{key}={want} but the codec {cfg.data.codec} has {key}={info[key]}")
    if levels > info["n_q"]:
        raise UserError(f"the model uses {levels} RVQ levels; the codec {cfg.data.codec} has {info['n_q']}")


def codec_meta(codec: str) -> dict:
    """Facts of a local codec directory from its config.json ({} for a hub id: checked when loaded)."""
    from alm.tokenizers.codec import codec_facts

    return codec_facts(codec)


@torch.no_grad()
def sample_codes(model: AcousticLM, batch: dict[str, Any], i: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Continue example i of a batch from its prefix -> (generated, reference) codes (levels, T), with the
    fine stage's coarse prefix levels in front so both decode to full audio."""
    m, lay = model.cfg, model.layout
    targets = batch["targets"][i]
    real = (targets != IGNORE).nonzero().flatten()
    n_prefix = int(real[0]) + 1
    prefix = batch["inputs"][i, :n_prefix]
    q, first = m.target_levels, m.prefix_levels
    reference = lay.unflatten(targets[real].cpu().numpy(), first, q)
    frames = reference.shape[1]
    was_training = model.training
    g = torch.Generator(device=prefix.device).manual_seed(seed)
    generated = model.generate_codes(prefix[None], frames, temperature=0.9, generator=g)[0].cpu().numpy()
    model.train(was_training)
    if m.prefix_levels:  # fine: prepend the coarse levels it was conditioned on
        coarse = lay.unflatten(prefix[1:-1].cpu().numpy(), 0, m.prefix_levels)
        generated, reference = np.concatenate([coarse, generated]), np.concatenate([coarse, reference])
    return generated, reference


def examples(cfg: RunConfig):
    return functools.partial(make_example, model=cfg.model, every=every_window(cfg))


TINY_CODEC = "tiny-codec-16k-q4-c32"  # the tiny random EnCodec the tests share (alm.tokenizers.codec.make_tiny_codec)
DEMO_CODEC = "demo-codec-v2-mdct-rvq-16k-q4-c32"  # the demo codec fitted on the synthetic train clips (v2: beam search + refinement)


def synthetic_tokens(root: Path, semantic_vocab: int, codebook_size: int, frame_rate: float, levels: int):
    """(semantic token dir, codes dir, codec dir) of the synthetic audio set: log-mel semantic tokens
    with K = semantic_vocab (64 when 0) and codes of the demo codec (MDCT + residual VQ fitted on the
    set's train clips: alm/tokenizers/demo_codec.py), all made once into the cache."""
    from alm.data.cache import cached
    from alm.stages.semantic import SYNTHETIC_AUDIO, synthetic_semantic
    from alm.tokenizers.codec import tokenize_codec_shards

    if codebook_size != 32 or levels > 4 or frame_rate != 50:
        raise ValueError("data.train_shards=synthetic uses alm's demo codec: model.codebook_size must be 32, "
                         "model.frame_rate 50 and at most 4 RVQ levels")
    sem = synthetic_semantic(root, semantic_vocab or 64)  # also makes the audio set
    audio, codec = synthetic_codec(root)
    codes = cached(root / f"{SYNTHETIC_AUDIO}-codes-{DEMO_CODEC}",
                   lambda d: tokenize_codec_shards(str(audio), d, str(codec), progress=False), "demo-codec codes")
    return sem, codes, codec


def synthetic_codec(root: Path) -> tuple[Path, Path]:
    """(synthetic audio dir, demo codec dir fitted on its train clips), made once into the cache."""
    from alm.data.cache import cached
    from alm.data.synthetic import write_synthetic
    from alm.stages.semantic import SYNTHETIC_AUDIO
    from alm.tokenizers.demo_codec import make_demo_codec

    audio = cached(root / SYNTHETIC_AUDIO, lambda d: write_synthetic(d), "the synthetic audio dataset")
    codec = cached(root / DEMO_CODEC, lambda d: make_demo_codec(d, str(audio / "train-*.tar")),
                   "the demo codec (MDCT + residual VQ fitted on the synthetic train clips)")
    return audio, codec


def synthetic_data(cfg: RunConfig, root: Path) -> dict[str, str]:
    """The synthetic audio set as semantic tokens (log-mel demo tokenizer) + demo-codec codes."""
    m: AcousticLMConfig = cfg.model
    sem, codes, codec = synthetic_tokens(root, m.semantic_vocab, m.codebook_size, m.frame_rate,
                                         m.prefix_levels + m.target_levels)

    def spec(split: str) -> str:
        return f"{sem}/{split}-*.tar + {codes}/{split}-*.tar" if m.semantic_vocab else f"{codes}/{split}-*.tar"

    made = {"train_shards": spec("train"), "val_shards": spec("val"), "tokenizer": str(sem / "tokenizer"),
            "codec": str(codec)}
    if m.condition_levels:  # MusicLM's coarse stage: the set's MuLan tokens joined
        from alm.stages.lm import join_synthetic_mulan

        made = join_synthetic_mulan(cfg, root, made)
    return made


def _chain_arguments(p) -> None:
    p.add_argument("--semantic", required=True, help="exported semantic stage")
    p.add_argument("--coarse", required=True, help="exported coarse stage")
    p.add_argument("--fine", required=True, help="exported fine stage")
    add_wav_generation_arguments(p)


def print_plot(a, export_dir: str) -> None:
    """--plot: OUT.png, the generated audio's spectrogram over the closest training clip of `export_dir`'s data."""
    if not getattr(a, "plot", False):
        return
    from alm.plots import plot_generated

    pic = plot_generated(a.out, export_dir)
    beside = f" beside the closest training clip (a {pic['kind']} clip)" if pic["kind"] else \
        " (the export's training audio was not found, so without a training clip)"
    print(f"[alm] wrote {pic['png']}: its spectrogram{beside}")


def _chain(a) -> int:
    from alm.generate import generate_audiolm

    r = generate_audiolm(a.semantic, a.coarse, a.fine, a.seconds, a.out, a.prompt, a.temperature, a.top_k, a.seed, a.device)
    print(f"[alm] wrote {r['wav']}: {r['seconds']:.2f} s at {r['sample_rate']} Hz "
          f"({r['semantic_tokens']} semantic tokens, codes {tuple(r['codes'].shape)})")
    print_plot(a, a.coarse)
    return 0


def _musiclm_arguments(p) -> None:
    p.add_argument("--mulan", required=True, help="the CLAP / MuLan export the MuLan tokens came from (alm tokenize mulan)")
    p.add_argument("--text", required=True, help="the text prompt")
    _chain_arguments(p)


def _musiclm(a) -> int:
    from alm.generate import generate_musiclm

    if a.prompt:
        from alm.errors import UserError

        raise UserError("--prompt: alm generate musiclm generates from --text (no audio continuation)")
    r = generate_musiclm(a.mulan, a.semantic, a.coarse, a.fine, a.text, a.seconds, a.out, a.temperature, a.top_k,
                         a.seed, a.device)
    print(f"[alm] MuLan tokens of {a.text!r}: {' '.join(str(int(t)) for t in r['mulan_tokens'])}")
    print(f"[alm] wrote {r['wav']}: {r['seconds']:.2f} s at {r['sample_rate']} Hz "
          f"({r['semantic_tokens']} semantic tokens, codes {tuple(r['codes'].shape)})")
    print_plot(a, a.coarse)
    return 0


def _stage(name: str, description: str, commands: tuple = ()) -> Stage:
    return Stage(name=name, description=description, model_config=AcousticLMConfig, model=AcousticLM,
                 make_example=examples, collate=collate, example_length=example_length, loss=lm_loss,
                 check=check_data, synthetic_data=synthetic_data, sample_codes=sample_codes, commands=commands,
                 data_config=ConditionedDataConfig, export_files=export_condition_tokenizer)


COARSE = _stage("coarse", "AudioLM stage 2: semantic tokens -> the first Q' codec RVQ levels")
FINE = _stage("fine", "AudioLM stage 3: coarse RVQ levels -> the remaining levels", commands=(
    Command("generate", "audiolm", "semantic -> coarse -> fine -> codec: write a wav", _chain_arguments, _chain),
    Command("generate", "musiclm", "MusicLM: text -> MuLan tokens -> conditioned semantic -> coarse -> fine -> wav",
            _musiclm_arguments, _musiclm),))
