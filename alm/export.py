"""Export a trained stage to a plain folder anyone can load, and load it back.

    alm export RUN_DIR_or_CHECKPOINT --out DIR

writes DIR/model.safetensors (full fp32 weights, consolidated from ZeRO shards when needed),
DIR/config.yaml (the run's resolved config: stage + model define the architecture),
DIR/tokenizer/ (the tokenizer files the tokens came from, e.g. k-means centroids), DIR/codec/
(a local codec the codes came from; a hub codec is named in config.yaml) and DIR/export.json
(provenance). `alm.load_pretrained(DIR)` rebuilds the pure-torch model from these
files alone: no pickle, no optimizer state, no Lightning.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from alm.config import RunConfig, from_yaml_text, to_yaml
from alm.io import atomic_write_text
from alm.stages import get_stage

PREFIX = "model."  # the LightningModule holds the model as `self.model`


def find_checkpoint(src: str | os.PathLike) -> Path:
    """A run dir (-> its newest checkpoint), a checkpoint dir, or a checkpoint.ckpt file -> checkpoint dir."""
    from alm.training.checkpoint import latest_checkpoint

    src = Path(src)
    if src.is_file():
        return src.parent
    if (src / "checkpoints").is_dir():
        latest = latest_checkpoint(src)
        if latest is None:
            raise FileNotFoundError(f"{src}: run has no complete checkpoint yet")
        return latest
    if (src / "config.yaml").is_file() and ((src / "checkpoint.ckpt").is_file() or (src / "checkpoint").is_dir()):
        return src
    raise FileNotFoundError(f"{src}: not a run directory or checkpoint directory")


def consolidated_state_dict(step_dir: Path) -> dict[str, torch.Tensor]:
    """Full fp32 model weights of a checkpoint (DDP file or DeepSpeed ZeRO 1/2/3 shards), `model.` keys stripped."""
    step_dir = Path(step_dir)
    if (step_dir / "checkpoint.ckpt").is_file():
        ckpt = torch.load(step_dir / "checkpoint.ckpt", map_location="cpu", weights_only=True)
        state = ckpt["state_dict"]
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(step_dir), tag="checkpoint")
    return {k[len(PREFIX) :]: v.float() for k, v in state.items() if k.startswith(PREFIX)}


def build_model(cfg: RunConfig) -> torch.nn.Module:
    return get_stage(cfg.stage).model(cfg.model)


def export(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    from alm.training.trainer import config_from_checkpoint

    step_dir = find_checkpoint(src)
    cfg = config_from_checkpoint(step_dir)
    model = build_model(cfg)
    state = consolidated_state_dict(step_dir)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(cfg.model, "tie_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"{step_dir}: weights do not match the {cfg.stage} model: missing {missing}, unexpected {unexpected}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".model.safetensors.tmp"
    save_model(model, str(tmp), metadata={"stage": cfg.stage})
    os.replace(tmp, out / "model.safetensors")
    atomic_write_text(out / "config.yaml", to_yaml(cfg))
    if cfg.data.tokenizer and Path(cfg.data.tokenizer).is_dir():
        shutil.copytree(cfg.data.tokenizer, out / "tokenizer", dirs_exist_ok=True)
    if cfg.data.codec and Path(cfg.data.codec).is_dir():  # a local codec travels with the export
        shutil.copytree(cfg.data.codec, out / "codec", dirs_exist_ok=True)
    meta = {"stage": cfg.stage, "source": str(step_dir), "step": int(step_dir.name.split("-")[-1]),
            "parameters": sum(p.numel() for p in model.parameters())}
    atomic_write_text(out / "export.json", json.dumps(meta, indent=1))
    return out


def load_config(path: str | os.PathLike) -> RunConfig:
    f = Path(path) / "config.yaml"
    if not f.is_file():
        raise FileNotFoundError(f"{path}: no config.yaml (not an alm export)")
    return from_yaml_text(f.read_text(), str(f))


def load_pretrained(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild an exported model from DIR/config.yaml + DIR/model.safetensors (eval mode)."""
    cfg = load_config(path)
    weights = Path(path) / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{path}: no model.safetensors")
    model = build_model(cfg)
    load_model(model, str(weights), strict=True, device=str(device))
    return model.to(device).eval()
