"""Pretrained transformers towers for alm's CLAP: `model.audio_tower` / `model.text_tower` = a hub id or
a local folder (save_pretrained) instead of `alm` (alm's own towers, alm/models/clap.py).

    audio  ASTModel (AST, e.g. MIT/ast-finetuned-audioset-10-10-0.4593)   pooled: pooler_output, the mean
                                                                          of the CLS and distillation tokens
           ClapAudioModel (HTS-AT, e.g. the audio half of laion/clap-htsat-unfused)   pooled: pooler_output
    text   RobertaModel / BertModel (roberta-base, bert-base-uncased)     pooled: the mean of the last hidden
                                                                          states of the real tokens (below)
           ClapTextModel (the text half of a LAION CLAP)                  pooled: pooler_output

then alm's projection to model.embed_dim and L2 normalisation (alm/models/clap.py). BERT / RoBERTa
pooling is the mean of real tokens, not CLS: roberta-base ships no trained pooler (its checkpoint is
a masked LM), BERT's pooler was trained for next-sentence prediction, not for sentence meaning, and
mean pooling is the better sentence embedding of the two for both (Reimers & Gurevych 2019,
Sentence-BERT). ClapTextModel's pooler is LAION CLAP's own, trained contrastively: kept.

Each tower is built FROM ITS CONFIG (`model.audio_hf_config` / `model.text_hf_config`, resolved by
the stage's check from the folder's config.json and recorded in the run's config.yaml), so ZeRO-3
partitions it at construction and an export rebuilds it without the pretrained files; the weights
are copied in by Stage.load_pretrained, tensor by tensor (`load_tower_weights`). transformers runs
its weight init inside every model's constructor; under ZeRO-3 those would be writes into empty
partitions (an IndexError at an embedding's padding row), so towers are constructed with that init
switched off (transformers' no_init_weights) and initialised afterwards by `hf_init`: transformers'
own `_init_weights`, module by module, on gathered parameters (as AudioPalmLM.init_weights does).

Front ends travel with the tower: the feature extractor (AST: kaldi fbank frames padded / cut to its
max_length; HTS-AT: ClapFeatureExtractor, its rate, mel filters and padding mode) and the tokenizer of
the same folder, run in the data loader's workers, not in the model. An export holds them in
EXPORT/audio_frontend/ and EXPORT/text_frontend/ (Stage.export_files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch
import torch.nn as nn

from alm.errors import UserError
from alm.models.transformer import no_gather

# model_type -> (config class, model class, pooling) of transformers
AUDIO_FAMILIES = {
    "audio-spectrogram-transformer": ("ASTConfig", "ASTModel", "pooler_output"),
    "clap_audio_model": ("ClapAudioConfig", "ClapAudioModel", "pooler_output"),
}
TEXT_FAMILIES = {
    "roberta": ("RobertaConfig", "RobertaModel", "mean"),
    "bert": ("BertConfig", "BertModel", "mean"),
    "clap_text_model": ("ClapTextConfig", "ClapTextModel", "pooler_output"),
}
FAMILIES = {"audio": AUDIO_FAMILIES, "text": TEXT_FAMILIES}
CLAP_HALF = {"audio": ("audio_config", "clap_audio_model", "audio_model"),
             "text": ("text_config", "clap_text_model", "text_model")}  # a whole ClapModel folder's halves
FRONTEND_DIR = {"audio": "audio_frontend", "text": "text_frontend"}  # inside an export
CONFIG_DROP = ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype", "_commit_hash",
               "id2label", "label2id", "auto_map")
AST_FRAME, AST_HOP = 400, 160  # ASTFeatureExtractor's kaldi fbank: 25 ms frames every 10 ms at 16 kHz


# ---- configs --------------------------------------------------------------------------------------

def tower_config(config_json: dict[str, Any], side: str, where: str) -> dict[str, Any]:
    """A folder's config.json -> the tower's transformers config as a plain dict (model_type kept,
    bookkeeping keys dropped); a whole ClapModel's config gives its audio or text half."""
    config = dict(config_json)
    if config.get("model_type") == "clap":
        key, model_type, _ = CLAP_HALF[side]
        config = {**dict(config.get(key) or {}), "model_type": model_type}
    model_type = config.get("model_type")
    if model_type not in FAMILIES[side]:
        raise UserError(f"model.{side}_tower={where}: model_type {model_type!r} is not a supported {side} tower "
                        f"(expected one of {sorted(FAMILIES[side])}, or a whole CLAP)")
    return {k: v for k, v in config.items() if k not in CONFIG_DROP}


def resolve_tower_config(name_or_path: str, side: str) -> dict[str, Any]:
    """model.{side}_tower (hub id or folder) -> its tower config dict (tower_config of its config.json)."""
    import json

    from alm.training.init_from import hf_weights_dir

    found = hf_weights_dir(name_or_path) / "config.json"
    if not found.is_file():
        raise UserError(f"model.{side}_tower={name_or_path}: no config.json in {found.parent}")
    return tower_config(json.loads(found.read_text()), side, name_or_path)


def family(config: dict[str, Any], side: str) -> tuple[str, str, str]:
    model_type = config.get("model_type")
    if model_type not in FAMILIES[side]:
        raise UserError(f"key 'model.{side}_hf_config': model_type {model_type!r} is not one of {sorted(FAMILIES[side])}")
    return FAMILIES[side][model_type]


def transformers_config(config: dict[str, Any], side: str):
    import transformers

    config_cls = getattr(transformers, family(config, side)[0])
    fields = {k: v for k, v in config.items() if k != "model_type"}
    try:
        return config_cls.from_dict(fields)
    except (TypeError, ValueError) as exc:
        raise UserError(f"key 'model.{side}_hf_config': not a {config_cls.__name__} ({str(exc).splitlines()[0]})") from exc


def build_transformers(cls, config, **kwargs) -> nn.Module:
    """cls(config) with transformers' in-constructor init switched off (see the module docstring):
    initialise it with hf_init."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        return cls(config, **kwargs)


def hf_init(root: nn.Module, gathered: Callable[[list], ContextManager] = no_gather) -> None:
    """transformers' weight init of every transformers model inside `root`, children first (as its own
    initialize_weights walks them), each module's own parameters gathered while its owner's
    `_init_weights` writes them (ZeRO-3: modifier rank 0; one module's parameters whole at a time)."""
    from transformers import PreTrainedModel

    def visit(module: nn.Module, owner) -> None:
        for child in module.children():
            visit(child, child if isinstance(child, PreTrainedModel) else owner)
        if owner is None:
            return
        with gathered(list(module.parameters(recurse=False))), torch.no_grad():
            owner._init_weights(module)

    visit(root, root if isinstance(root, PreTrainedModel) else None)


# ---- towers ---------------------------------------------------------------------------------------

class HFAudioTower(nn.Module):
    """features (B, ...) of the tower's feature extractor (+ is_longer (B, 1) for HTS-AT) -> pooled (B, H)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        import transformers

        _, model_cls, self.pooling = family(config, "audio")
        self.model_type = config["model_type"]
        hf_config = transformers_config(config, "audio")
        self.model = build_transformers(getattr(transformers, model_cls), hf_config)
        self.hidden_size = int(hf_config.hidden_size)

    def forward(self, features: torch.Tensor, is_longer: torch.Tensor | None = None) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        if self.model_type == "clap_audio_model":
            if is_longer is None:
                is_longer = torch.zeros(features.shape[0], 1, dtype=torch.bool, device=features.device)
            out = self.model(input_features=features.to(dtype), is_longer=is_longer.bool().reshape(-1, 1))
        else:
            out = self.model(input_values=features.to(dtype))
        return out.pooler_output


class HFTextTower(nn.Module):
    """ids (B, L) + mask (B, L) of the tower's tokenizer -> pooled (B, H) (see the module docstring)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        import transformers

        _, model_cls, self.pooling = family(config, "text")
        hf_config = transformers_config(config, "text")
        kwargs = {"add_pooling_layer": False} if self.pooling == "mean" else {}
        self.model = build_transformers(getattr(transformers, model_cls), hf_config, **kwargs)
        self.hidden_size = int(hf_config.hidden_size)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=mask.long())
        if self.pooling == "pooler_output":
            return out.pooler_output
        w = mask.to(out.last_hidden_state.dtype)[..., None]
        return (out.last_hidden_state * w).sum(1) / w.sum(1).clamp(min=1.0)


def tower_key_map(tower: nn.Module, side: str) -> Callable[[str], str | None]:
    """A stored tensor name -> the tower's transformers model's name (None: not the tower's). Reads a
    base model's own save_pretrained, a task model's (its base_model_prefix, e.g. `roberta.`,
    `audio_spectrogram_transformer.`; heads skipped) and a whole ClapModel's (its `audio_model.` or
    `text_model.` half)."""
    model = tower.model
    names = set(dict(model.named_parameters(remove_duplicate=False))) | set(dict(model.named_buffers()))
    prefixes = tuple(p + "." for p in {model.base_model_prefix, CLAP_HALF[side][2]} if p)
    rename = checkpoint_renaming(model)

    def key_map(stored: str) -> str | None:
        for name in dict.fromkeys((stored, rename(stored))):
            if name in names:
                return name
            for p in prefixes:
                if name.startswith(p) and name[len(p):] in names:
                    return name[len(p):]
        return None

    return key_map


def checkpoint_renaming(model: nn.Module) -> Callable[[str], str]:
    """transformers' own checkpoint-key renaming for `model` (5.x renames modules on load and back on
    save, e.g. AST's `encoder.layer.N.attention.attention.query` -> `layers.N.attention.q_proj`). Only
    renamings: a conversion that merges or splits tensors cannot be applied one tensor at a time."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key
    except ImportError:  # a transformers without conversion mappings stores the modules' own names
        return lambda key: key
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if not isinstance(t, WeightRenaming)]

    def rename(key: str) -> str:
        renamed, merged = rename_source_key(key, renamings, converters)
        if merged is not None:
            raise UserError(f"{type(model).__name__}: checkpoint tensor {key!r} needs transformers' merging conversion "
                            f"({merged}); alm loads towers one tensor at a time")
        return renamed

    return rename


def load_tower_weights(tower: nn.Module, name_or_path: str, side: str, gathered: Callable[[list], ContextManager],
                       rank: int | None = None) -> int:
    """The pretrained tensors of model.{side}_tower into the (possibly ZeRO-3 partitioned) tower, one
    parameter at a time; every parameter of the tower must get one -> tensors loaded."""
    from alm.training.init_from import load_hf_weights

    return load_hf_weights(tower.model, name_or_path, gathered, tower_key_map(tower, side), rank)


# ---- front ends -----------------------------------------------------------------------------------

def load_front(cls, src: str | Path, what: str):
    """cls.from_pretrained of a local folder (an export's front end has no config.json) or a hub id."""
    if Path(src).is_dir():
        try:
            return cls.from_pretrained(str(src))
        except (OSError, ValueError) as exc:
            raise UserError(f"{what}: cannot load {src}: {str(exc).splitlines()[0]}") from exc
    from alm import hub

    return hub.from_pretrained(cls, str(src), what=what)


class AudioFrontEnd:
    """The tower's feature extractor (AutoFeatureExtractor of its folder): one clip -> features, alone."""

    def __init__(self, folder: str | Path, config: dict[str, Any], where: str):
        from transformers import AutoFeatureExtractor

        self.extractor = load_front(AutoFeatureExtractor, folder, f"{where} (its feature extractor)")
        self.model_type = config["model_type"]
        kind = type(self.extractor).__name__
        want = {"audio-spectrogram-transformer": "ASTFeatureExtractor", "clap_audio_model": "ClapFeatureExtractor"}
        if kind != want[self.model_type]:
            raise UserError(f"{where}: its feature extractor is a {kind}, the {self.model_type} tower needs a "
                            f"{want[self.model_type]}")
        self.sample_rate = int(self.extractor.sampling_rate)
        if self.model_type == "clap_audio_model":
            self.window = int(self.extractor.nb_max_samples)
        else:  # the samples whose fbank is exactly max_length frames
            self.window = AST_FRAME + (int(self.extractor.max_length) - 1) * AST_HOP

    def features(self, clip: np.ndarray) -> tuple[np.ndarray, bool]:
        """One clip of at most `window` samples -> (features float32, is_longer): what the feature
        extractor gives this clip alone (AST: a clip shorter than one 25 ms frame is zero-padded to it)."""
        clip = np.asarray(clip, np.float32)
        if len(clip) > self.window:
            raise ValueError(f"clip of {len(clip)} samples is longer than the feature extractor's {self.window}")
        if self.model_type == "audio-spectrogram-transformer":
            if len(clip) < AST_FRAME:
                clip = np.pad(clip, (0, AST_FRAME - len(clip)))
            out = self.extractor([clip], sampling_rate=self.sample_rate, return_tensors="np")
            return np.asarray(out["input_values"][0], np.float32), False
        out = self.extractor([clip], sampling_rate=self.sample_rate, return_tensors="np")
        return np.asarray(out["input_features"][0], np.float32), bool(np.asarray(out["is_longer"]).reshape(-1)[0])

    def batch(self, clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> features (B, ...), is_longer (B, 1): each clip featurised alone (deterministic)."""
        feats = [self.features(c) for c in clips]
        return (torch.from_numpy(np.stack([f for f, _ in feats])),
                torch.tensor([[longer] for _, longer in feats], dtype=torch.bool))


def text_positions(config: dict[str, Any]) -> int:
    """Most tokens the text tower's positions take: RoBERTa-style positions start after the padding index."""
    n = int(config.get("max_position_embeddings", 512))
    if config["model_type"] in ("roberta", "clap_text_model"):
        n -= int(config.get("pad_token_id", 1)) + 1
    return n


class TextFrontEnd:
    """The tower's tokenizer (AutoTokenizer of its folder), captions truncated to at most max_len tokens."""

    def __init__(self, folder: str | Path, config: dict[str, Any], max_len: int, where: str):
        from transformers import AutoTokenizer

        self.tokenizer = load_front(AutoTokenizer, folder, f"{where} (its tokenizer)")
        if self.tokenizer.pad_token_id is None:
            raise UserError(f"{where}: its tokenizer has no pad token")
        self.max_tokens = int(min(max_len, self.tokenizer.model_max_length, text_positions(config)))

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def ids(self, text: str) -> np.ndarray:
        ids = self.tokenizer(text, truncation=True, max_length=self.max_tokens)["input_ids"]
        return np.asarray(ids, dtype=np.int64)

    def batch(self, ids: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ids (B, L) padded with the tokenizer's pad id, mask (B, L) bool."""
        from alm.models.clap import pad_text

        return pad_text(ids, self.pad_id)


def frontend_source(model_cfg, side: str, export_dir: str | Path | None = None) -> str:
    """Where the front end of a pretrained tower is read: EXPORT/{audio,text}_frontend of an export,
    else model.{side}_tower itself (hub id or folder)."""
    from alm.export import bundled

    return bundled(export_dir, FRONTEND_DIR[side], getattr(model_cfg, f"{side}_tower"), f"model.{side}_tower")


def audio_front_end(model_cfg, export_dir=None) -> AudioFrontEnd:
    src = frontend_source(model_cfg, "audio", export_dir)
    return AudioFrontEnd(src, model_cfg.audio_hf_config, f"model.audio_tower={src}")


def text_front_end(model_cfg, export_dir=None) -> TextFrontEnd:
    src = frontend_source(model_cfg, "text", export_dir)
    return TextFrontEnd(src, model_cfg.text_hf_config, model_cfg.text_max_len, f"model.text_tower={src}")
