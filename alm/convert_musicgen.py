"""Public MusicGen weights in and out: transformers' MusicgenForConditionalGeneration <-> an alm export.

    alm convert musicgen SRC --out EXPORT [--dtype fp32|bf16|fp16] [--overwrite]

SRC: a folder written by `save_pretrained` of a MusicgenForConditionalGeneration (or
MusicgenMelodyForConditionalGeneration) and its processor, or a hub id (`facebook/musicgen-small`,
read from the local HF cache: see alm.hub; nothing is downloaded when HF_HUB_OFFLINE=1). EXPORT is
an alm export that needs nothing from SRC afterwards:

    model.safetensors        alm's MusicGenLM (alm/models/musicgen.py), enc_to_dec_proj included (cond_in)
    config.yaml              stage musicgen; model: the LM's config (+ model.text_encoder, frame_rate)
    text_encoder/            the frozen T5 encoder (T5EncoderModel.save_pretrained) + the source's tokenizer
    codec/                   the EnCodec audio codec (EncodecModel.save_pretrained) + its feature extractor:
                             the codec travels inside the export (alm.generate.codec_of reads EXPORT/codec
                             first), so loading never downloads (musicgen-small's EnCodec 32 kHz: ~57 M
                             parameters, fp32); data.codec and model.text_encoder name these copies
    export.json              provenance: source, format, the key map used

The weights are data, not code: LM_KEYS below is the one table of names (alm <-> transformers), used
by both directions. `write_transformers(model, cfg, dir)` is the way out (the stage's
export_formats["transformers"]): a folder that transformers loads as MusicgenForConditionalGeneration
(MusicgenMelodyForConditionalGeneration for a melody LM), T5 and EnCodec taken from the run's
text encoder and codec; a LoRA-adapted LM is written merged.

Memory: convert holds the source model once (the LM is built on the meta device and takes the
source's tensors); write_transformers holds the LM and a transformers model (two copies of the
decoder: musicgen-large, 3.3 B parameters in fp32, ~27 GB of host memory). Both run on CPU.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from alm.errors import UserError
from alm.models.musicgen import MusicGenConfig, MusicGenLM, merge_lora

TEXT_ENCODER_DIR = "text_encoder"
CODEC_DIR = "codec"
MODEL_TYPES = ("musicgen", "musicgen_melody")


# ------------------------------------------------------------------------------------------ key map
def lm_keys(cfg: MusicGenConfig) -> dict[str, str]:
    """alm MusicGenLM parameter name -> the name in transformers' *ForConditionalGeneration state dict."""
    dec = "decoder.model.decoder."
    keys: dict[str, str] = {}
    for k in range(cfg.codebooks):
        keys[f"embed.{k}.weight"] = f"{dec}embed_tokens.{k}.weight"
        keys[f"heads.{k}.weight"] = f"decoder.lm_heads.{k}.weight"
    parts = {"norm_self": "self_attn_layer_norm", "norm_ffn": "final_layer_norm"}
    attns = {"self_attn": "self_attn"}
    if cfg.cond_mode == "cross":
        parts["norm_cross"] = "encoder_attn_layer_norm"
        attns["cross_attn"] = "encoder_attn"
    for i in range(cfg.n_layer):
        for ours, theirs in parts.items():
            for p in ("weight", "bias"):
                keys[f"blocks.{i}.{ours}.{p}"] = f"{dec}layers.{i}.{theirs}.{p}"
        for ours, theirs in attns.items():
            for a, b in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("proj", "out_proj")):
                keys[f"blocks.{i}.{ours}.{a}.weight"] = f"{dec}layers.{i}.{theirs}.{b}.weight"
        keys[f"blocks.{i}.ffn.fc.weight"] = f"{dec}layers.{i}.fc1.weight"
        keys[f"blocks.{i}.ffn.proj.weight"] = f"{dec}layers.{i}.fc2.weight"
    for p in ("weight", "bias"):
        keys[f"norm.{p}"] = f"{dec}layer_norm.{p}"
        if cfg.cond_proj:
            keys[f"cond_in.{p}"] = f"enc_to_dec_proj.{p}"
        if cfg.melody_dim:
            keys[f"melody_in.{p}"] = f"audio_enc_to_dec_proj.{p}"
    return keys


def lm_config(hf_config: Any) -> MusicGenConfig:
    """MusicGenConfig of a transformers MusicgenConfig / MusicgenMelodyConfig (refuses what alm's LM lacks)."""
    dec, text = hf_config.decoder, hf_config.text_encoder
    melody = hf_config.model_type == "musicgen_melody"
    what = f"{hf_config.model_type} decoder config"
    if dec.activation_function != "gelu":
        raise UserError(f"{what}: activation_function {dec.activation_function!r}; alm's MusicGen LM has gelu only")
    if getattr(dec, "audio_channels", 1) != 1:
        raise UserError(f"{what}: audio_channels={dec.audio_channels} (stereo); alm's MusicGen LM is mono only")
    if not melody and getattr(dec, "cross_attention_hidden_size", None) not in (None, text.hidden_size):
        raise UserError(f"{what}: cross_attention_hidden_size={dec.cross_attention_hidden_size} differs from the text "
                        f"encoder's {text.hidden_size}")
    for name in ("pad_token_id", "bos_token_id"):
        if getattr(dec, name) != dec.vocab_size:
            raise UserError(f"{what}: {name}={getattr(dec, name)}; alm's special token is vocab_size={dec.vocab_size}")
    num_chroma = getattr(hf_config, "num_chroma", 0) if melody else 0
    return MusicGenConfig(
        dim=dec.hidden_size, n_layer=dec.num_hidden_layers, n_head=dec.num_attention_heads, ffn_dim=dec.ffn_dim,
        codebooks=dec.num_codebooks, card=dec.vocab_size, cond_dim=text.hidden_size,
        cond_proj=text.hidden_size != dec.hidden_size, cond_mode="prefix" if melody else "cross",
        melody_dim=num_chroma if num_chroma != dec.hidden_size else 0,
        melody_len=hf_config.chroma_length if melody else 0,
        max_seq_len=dec.max_position_embeddings, dropout=float(dec.dropout), attn_dropout=float(dec.attention_dropout),
    )


def lm_from_transformers(hf_model: torch.nn.Module) -> MusicGenLM:
    """alm's MusicGenLM holding the decoder (+ enc_to_dec_proj) weights of a transformers MusicGen:
    the same tensors (built on the meta device, then assigned), so converting costs no second copy."""
    cfg = lm_config(hf_model.config)
    if cfg.cond_mode == "prefix" and hf_model.config.num_chroma == cfg.dim:
        raise UserError("musicgen_melody with num_chroma == decoder hidden_size (no audio_enc_to_dec_proj) is not supported")
    state = hf_model.state_dict()
    keys = lm_keys(cfg)
    missing = [theirs for theirs in keys.values() if theirs not in state]
    if missing:
        raise UserError(f"the source model has no {missing[0]} (and {len(missing) - 1} more): not a MusicGen checkpoint?")
    with torch.device("meta"):  # no second copy: the LM's parameters become the source's tensors
        model = MusicGenLM(cfg)
    model.load_state_dict({ours: state[theirs] for ours, theirs in keys.items()}, strict=True, assign=True)
    return model.eval()


# ------------------------------------------------------------------------------------------ in
def _source_classes(src: str):
    """(model class, config) of SRC by its config.json model_type (local folder or hub id)."""
    from transformers import AutoConfig, MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

    from alm.hub import from_pretrained

    config = from_pretrained(AutoConfig, src, what="musicgen source")
    if config.model_type not in MODEL_TYPES:
        raise UserError(f"{src}: model_type {config.model_type!r} is not a MusicGen ({' or '.join(MODEL_TYPES)})")
    cls = MusicgenForConditionalGeneration if config.model_type == "musicgen" else MusicgenMelodyForConditionalGeneration
    return cls, config


def load_source(src: str):
    """(transformers model in eval mode fp32, its tokenizer, the codec's feature extractor) of SRC.

    The tokenizer is the processor's (AutoTokenizer of SRC). The codec's feature extractor is a
    MusicGen processor's; a MusicGen-Melody processor holds the chroma extractor instead (which
    needs torchaudio), so for melody EnCodec's own is made at the codec's rate."""
    from transformers import AutoFeatureExtractor, AutoTokenizer, EncodecFeatureExtractor

    from alm.hub import from_pretrained

    cls, config = _source_classes(src)
    model = from_pretrained(cls, src, what="musicgen source", dtype=torch.float32).eval()
    try:
        tokenizer = from_pretrained(AutoTokenizer, src, what="musicgen tokenizer")
    except (UserError, ValueError) as exc:
        raise UserError(f"{src}: no tokenizer next to the model ({exc}); save the processor with "
                        "processor.save_pretrained(SRC)") from exc
    features = None
    if config.model_type == "musicgen":
        try:
            features = from_pretrained(AutoFeatureExtractor, src, what="musicgen feature extractor")
        except (UserError, ValueError, ImportError):
            features = None
    if not isinstance(features, EncodecFeatureExtractor):
        audio = model.config.audio_encoder
        features = EncodecFeatureExtractor(feature_size=audio.audio_channels, sampling_rate=audio.sampling_rate)
    return model, tokenizer, features


def _name_of(sub_config: Any, fallback: str) -> str:
    """The hub id a sub-model came from (its config's _name_or_path), else `fallback`."""
    name = getattr(sub_config, "_name_or_path", "") or ""
    return name if name and not Path(name).is_absolute() else fallback


def export_config(lm_cfg: MusicGenConfig, text_encoder: str, codec: str, frame_rate: float):
    """The RunConfig an `alm convert musicgen` export carries: stage musicgen, its model config
    (the LM's fields + the text encoder and frame rate where the stage's config has them)."""
    import dataclasses

    from alm.config import DataConfig, RunConfig, TrainerConfig
    from alm.stages import get_stage

    stage = get_stage("musicgen")
    fields = {f.name: getattr(lm_cfg, f.name) for f in dataclasses.fields(MusicGenConfig)}  # lora_rank 0
    model = stage.model_config(**fields)
    data = (stage.data_config or DataConfig)(train_shards="none", codec=codec)
    for section, key, value in ((model, "text_encoder", text_encoder), (data, "text_encoder", text_encoder),
                                (model, "frame_rate", float(frame_rate))):
        if hasattr(section, key):
            setattr(section, key, value)
    # a converted model was trained elsewhere: run_dir and trainer are placeholders a fine-tuning
    # recipe (init_from: EXPORT) replaces
    return RunConfig(stage="musicgen", run_dir="none", data=data, model=model, trainer=TrainerConfig(max_steps=1))


def convert(src: str, out: str | os.PathLike, dtype: str = "fp32", overwrite: bool = False) -> Path:
    """SRC (transformers MusicGen folder or hub id) -> an alm export at `out` (see the module docstring)."""
    from alm.config import to_yaml
    from alm.export import DTYPES, META, check_out, provenance_of, publish_dir, write_weights
    from alm.io import atomic_write_text

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    out = Path(out)
    check_out(out, overwrite)
    hf_model, tokenizer, features = load_source(src)
    lm = lm_from_transformers(hf_model).to(DTYPES[dtype])
    # the config names the export's own copies (absolute paths); EXPORT/text_encoder and EXPORT/codec
    # are read first anyway (text_encoder_of, alm.generate.codec_of), so a moved export still loads
    cfg = export_config(lm.cfg, str(out.resolve() / TEXT_ENCODER_DIR), str(out.resolve() / CODEC_DIR),
                        hf_model.config.audio_encoder.frame_rate)
    sources = {"text_encoder": _name_of(hf_model.config.text_encoder, f"{src}/text_encoder"),
               "codec": _name_of(hf_model.config.audio_encoder, f"{src}/audio_encoder")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.convert-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        weights = write_weights(lm, tmp, 5 * 10**9, "musicgen")
        hf_model.text_encoder.to(DTYPES[dtype]).save_pretrained(tmp / TEXT_ENCODER_DIR)
        tokenizer.save_pretrained(tmp / TEXT_ENCODER_DIR)
        hf_model.audio_encoder.save_pretrained(tmp / CODEC_DIR)  # the codec stays fp32
        features.save_pretrained(tmp / CODEC_DIR)
        atomic_write_text(tmp / "config.yaml", to_yaml(cfg))
        meta = {"stage": "musicgen", "source": str(src), "format": "alm", "converted_from": hf_model.config.model_type,
                "dtype": dtype, "parameters": lm.num_params(), **weights,
                "text_encoder_dir": TEXT_ENCODER_DIR, "codec_dir": CODEC_DIR, "sub_models": sources,
                **provenance_of(cfg, tmp)}
        atomic_write_text(tmp / META, json.dumps(meta, indent=1))
        publish_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------------ out
def hf_decoder_config(cfg: MusicGenConfig, melody: bool):
    from transformers import MusicgenDecoderConfig, MusicgenMelodyDecoderConfig

    cls = MusicgenMelodyDecoderConfig if melody else MusicgenDecoderConfig
    return cls(vocab_size=cfg.card, hidden_size=cfg.dim, num_hidden_layers=cfg.n_layer,
               num_attention_heads=cfg.n_head, ffn_dim=cfg.ffn_dim, num_codebooks=cfg.codebooks,
               max_position_embeddings=cfg.max_seq_len, dropout=cfg.dropout, attention_dropout=cfg.attn_dropout,
               activation_function="gelu", pad_token_id=cfg.special, bos_token_id=cfg.special,
               decoder_start_token_id=cfg.special)


def write_transformers_from(model: MusicGenLM, text_encoder: str | os.PathLike, codec: str | os.PathLike,
                            out: str | os.PathLike) -> Path:
    """Write `model` + the T5 folder + the EnCodec folder as one transformers MusicGen folder at `out`
    (config.json, model.safetensors, generation_config.json, the processor). A LoRA-adapted model is
    written merged (W + (alpha / r) B A: merge_lora): transformers' MusicGen has no adapters."""
    from transformers import (AutoFeatureExtractor, AutoTokenizer, EncodecModel, GenerationConfig,
                              MusicgenConfig, MusicgenForConditionalGeneration, MusicgenMelodyConfig,
                              MusicgenMelodyForConditionalGeneration, MusicgenProcessor, T5EncoderModel)

    from alm.hub import from_pretrained

    model = merge_lora(model)
    cfg = model.cfg
    melody = cfg.cond_mode == "prefix"
    t5 = from_pretrained(T5EncoderModel, str(text_encoder), what="text encoder", dtype=torch.float32)
    from alm.tokenizers.codec import is_demo_codec, load_codec

    enc = load_codec(codec)
    if is_demo_codec(enc) or not isinstance(enc, EncodecModel):
        raise UserError(f"codec {codec}: alm's demo codec, not an EnCodec; transformers' MusicGen decodes with "
                        "EnCodec, so a transformers folder needs a model trained on EnCodec codes")
    enc = enc.float()
    if cfg.cond_proj == (t5.config.hidden_size == cfg.dim):
        raise UserError(f"text encoder width {t5.config.hidden_size} vs LM width {cfg.dim}: transformers MusicGen has "
                        f"enc_to_dec_proj exactly when they differ, this LM has cond_proj={cfg.cond_proj}")
    if enc.config.codebook_size != cfg.card or (enc.config.num_quantizers or 0) < cfg.codebooks:
        raise UserError(f"codec {codec}: {enc.config.num_quantizers} codebooks of {enc.config.codebook_size} codes; "
                        f"the LM has {cfg.codebooks} of {cfg.card}")
    dec_cfg = hf_decoder_config(cfg, melody)
    if melody:
        config = MusicgenMelodyConfig(text_encoder=t5.config.to_dict(), audio_encoder=enc.config.to_dict(),
                                      decoder=dec_cfg.to_dict(), num_chroma=cfg.melody_dim or cfg.dim,
                                      chroma_length=cfg.melody_len)
        hf = MusicgenMelodyForConditionalGeneration(config)
    else:
        config = MusicgenConfig(text_encoder=t5.config.to_dict(), audio_encoder=enc.config.to_dict(),
                                decoder=dec_cfg.to_dict())
        hf = MusicgenForConditionalGeneration(config)
    state = {f"text_encoder.{k}": v for k, v in t5.state_dict().items()}
    state |= {f"audio_encoder.{k}": v for k, v in enc.state_dict().items()}
    ours = model.state_dict()
    state |= {theirs: ours[name].float() for name, theirs in lm_keys(cfg).items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [m for m in missing if "embed_positions" not in m]  # the sinusoid table is recomputed
    if missing or unexpected:
        raise ValueError(f"transformers MusicGen: weights missing {missing[:3]}, unexpected {unexpected[:3]}")
    hf.generation_config = GenerationConfig(decoder_start_token_id=cfg.special, pad_token_id=cfg.special,
                                            bos_token_id=cfg.special, max_length=cfg.max_seq_len)
    out = Path(out)
    hf.save_pretrained(out)
    tokenizer = from_pretrained(AutoTokenizer, str(text_encoder), what="text encoder tokenizer")
    try:
        features = from_pretrained(AutoFeatureExtractor, str(codec), what="codec feature extractor")
    except UserError:  # a codec folder without preprocessor_config.json: EnCodec's defaults at its rate
        from transformers import EncodecFeatureExtractor

        features = EncodecFeatureExtractor(feature_size=enc.config.audio_channels,
                                           sampling_rate=enc.config.sampling_rate)
    if melody:  # the chroma feature extractor of MusicGen-Melody's processor needs torchaudio
        try:
            from transformers import MusicgenMelodyFeatureExtractor, MusicgenMelodyProcessor

            processor = MusicgenMelodyProcessor(MusicgenMelodyFeatureExtractor(sampling_rate=enc.config.sampling_rate),
                                                tokenizer)
        except ImportError:
            processor = tokenizer  # the tokenizer alone; the chroma comes from alm's own extractor
    else:
        processor = MusicgenProcessor(features, tokenizer)
    processor.save_pretrained(out)
    return out


def text_encoder_of(export_dir: str | os.PathLike | None, cfg: Any) -> str:
    """The T5 folder of a model: EXPORT/text_encoder when present, else model.text_encoder (or data.text_encoder)."""
    from alm.export import bundled

    name = getattr(cfg.model, "text_encoder", None) or getattr(cfg.data, "text_encoder", None)
    return bundled(export_dir, TEXT_ENCODER_DIR, name, "model.text_encoder")


def write_transformers(model: MusicGenLM, cfg: Any, out: Path) -> None:
    """Stage.export_formats["transformers"]: `alm export RUN --out DIR --format transformers` (the
    run's T5 = model.text_encoder, its EnCodec = data.codec)."""
    codec = cfg.data.codec
    if not codec:
        raise UserError("no codec recorded (data.codec): a transformers MusicGen folder needs its EnCodec")
    write_transformers_from(model, text_encoder_of(None, cfg), codec, out)


# ------------------------------------------------------------------------------------------ cli
def add_arguments(parser) -> None:
    parser.add_argument("src", help="a transformers MusicGen (or MusicGen-Melody) folder written by save_pretrained "
                                    "with its processor, or a hub id (from the local HF cache)")
    parser.add_argument("--out", required=True, help="the alm export folder to write")
    parser.add_argument("--dtype", default="fp32", help="fp32 (default) | bf16 | fp16: the LM and T5 weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing alm export at --out")


def run(args) -> int:
    out = convert(args.src, args.out, dtype=args.dtype, overwrite=args.overwrite)
    meta = json.loads((out / "export.json").read_text())
    print(f"converted {args.src} -> {out}: {meta['parameters']:,} LM parameters, text encoder in "
          f"{out / TEXT_ENCODER_DIR}, codec in {out / CODEC_DIR}")
    return 0


def command():
    """The `alm convert musicgen` Command (the musicgen stage lists it in Stage.commands)."""
    from alm.stages.spec import Command

    return Command(verb="convert", name="musicgen", help="transformers MusicGen / MusicGen-Melody -> alm export",
                   add_arguments=add_arguments, run=run)
