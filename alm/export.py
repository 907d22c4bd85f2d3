"""Export a trained stage to a plain folder anyone can load, and load it back.

    alm export RUN_DIR_or_CHECKPOINT --out DIR [--dtype fp32|bf16|fp16] [--max-shard-size 5GB] [--overwrite]

writes into DIR (built beside it and renamed into place when complete):

    model.safetensors                        the weights (consolidated from ZeRO shards when needed), or,
                                             above --max-shard-size, transformers' sharded layout:
    model-00001-of-0000N.safetensors ...     + model.safetensors.index.json
                                               {"metadata": {"total_size": bytes}, "weight_map": {name: file}}
    config.yaml                              the run's resolved config: stage + model define the architecture
    tokenizer/                               the tokenizer the tokens came from (e.g. k-means centroids)
    codec/                                   a local codec the codes came from (a hub codec is named in config.yaml)
    export.json                              provenance: stage, source checkpoint and step, dtype, files,
                                             tied weights, tokenizer and codec fingerprints

Floating tensors are stored in --dtype (fp32 by default), others as they are. Tied weights (names
that share storage in the model, e.g. a tied embedding and output projection) are stored once,
under the first name, and listed in export.json. `alm.load_pretrained(DIR)` rebuilds the pure-torch
model from these files alone (either layout; dtype as stored): no pickle, no optimizer state, no
Lightning. An existing DIR is replaced only with --overwrite, and only if it is an alm export.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from alm.config import RunConfig, from_yaml_text, to_yaml
from alm.errors import UserError
from alm.io import atomic_write_text, atomic_write_with, fsync_dir
from alm.stages import get_stage

PREFIX = "model."  # the LightningModule holds the model as `self.model`
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
META = "export.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_MAX_SHARD_SIZE = "5GB"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    """'5GB' -> 5_000_000_000 (KB/MB/GB decimal, KiB/MiB/GiB binary, plain number = bytes)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?I?B?)\s*", str(text).upper())
    if not m or m.group(2) not in _UNITS or float(m.group(1)) <= 0:
        raise UserError(f"--max-shard-size {text!r}: expected a size such as 5GB, 500MB, 2GiB or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def find_checkpoint(src: str | os.PathLike) -> Path:
    """A run dir (-> its newest checkpoint), a checkpoint dir, or a checkpoint.ckpt file -> checkpoint dir."""
    from alm.training.checkpoint import latest_checkpoint

    src = Path(src)
    if src.is_file():
        return src.parent
    if not src.exists():
        raise UserError(f"{src}: no such run directory or checkpoint")
    if (src / "checkpoints").is_dir():
        latest = latest_checkpoint(src)
        if latest is None:
            raise UserError(f"{src}: the run has no complete checkpoint yet (nothing to export)")
        return latest
    if (src / "config.yaml").is_file() and ((src / "checkpoint.ckpt").is_file() or (src / "checkpoint").is_dir()):
        return src
    if is_export(src):
        raise UserError(f"{src}: this is an export already, not a run directory or checkpoint")
    if (src / "config.yaml").is_file():
        raise UserError(f"{src}: the run has no checkpoints/ yet (nothing to export)")
    raise UserError(f"{src}: not a run directory or checkpoint directory")


def consolidated_state_dict(step_dir: Path) -> dict[str, torch.Tensor]:
    """Full model weights of a checkpoint (DDP file or DeepSpeed ZeRO 1/2/3 shards), `model.` keys stripped."""
    step_dir = Path(step_dir)
    if (step_dir / "checkpoint.ckpt").is_file():
        ckpt = torch.load(step_dir / "checkpoint.ckpt", map_location="cpu", weights_only=True)
        state = ckpt["state_dict"]
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(step_dir), tag="checkpoint")
    return {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}


def build_model(cfg: RunConfig) -> torch.nn.Module:
    return get_stage(cfg.stage).model(cfg.model)


def tied_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names of the model's state dict that are the same tensor storage (tied weights), in state-dict order."""
    groups: dict[tuple, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if t.numel() == 0:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        groups.setdefault(key, []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def is_export(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / META).is_file() or (p / WEIGHTS).is_file() or (p / INDEX).is_file()


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse to replace anything but an alm export, and an export only with overwrite."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not is_export(out):
        raise UserError(f"--out {out}: a non-empty directory that is not an alm export; choose another --out")
    if not overwrite:
        meta = read_export_meta(out)
        what = f" (of {meta['source']}, step {meta.get('step')})" if meta.get("source") else ""
        raise UserError(f"--out {out} already holds an export{what}: pass --overwrite to replace it, or choose another --out")


def shard_plan(sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    """Names in order, cut into shards of at most max_bytes (a tensor larger than that gets a shard alone)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def write_weights(model: torch.nn.Module, out: Path, max_bytes: int, stage: str) -> dict:
    """Save the state dict (each tied group once) as one file or transformers-style shards + index."""
    ties = tied_groups(model)
    aliases = {n for g in ties for n in g[1:]}
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in aliases}
    seen: set[int] = set()
    for k, v in tensors.items():  # untied tensors that overlap in memory must be saved as copies
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen:
            tensors[k] = v.clone()
        seen.add(ptr)
    sizes = {k: v.numel() * v.element_size() for k, v in tensors.items()}
    plan = shard_plan(sizes, max_bytes)
    meta = {"format": "pt", "stage": stage}
    if len(plan) == 1:
        names = [WEIGHTS]
    else:
        names = [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
    for file, keys in zip(names, plan):
        part = {k: tensors[k] for k in keys}
        atomic_write_with(out / file, lambda tmp, part=part: save_file(part, tmp, metadata=meta))
    if len(plan) > 1:
        index = {"metadata": {"total_size": sum(sizes.values())},
                 "weight_map": {k: file for file, keys in zip(names, plan) for k in keys}}
        atomic_write_text(out / INDEX, json.dumps(index, indent=2))
    return {"files": names, "total_size": sum(sizes.values()), "tied_weights": ties}


def provenance_of(cfg: RunConfig, out: Path) -> dict:
    """Fingerprints of the tokenizer and codec the model was trained on, as exported into `out`."""
    from alm.data.provenance import dir_fingerprint

    tok = out / "tokenizer"
    codec = out / "codec"
    return {
        "tokenizer": {"path": cfg.data.tokenizer, "fingerprint": dir_fingerprint(tok)} if tok.is_dir() else None,
        "codec": ({"name": cfg.data.codec, "files_sha256": dir_fingerprint(codec) if codec.is_dir() else None}
                  if cfg.data.codec else None),
    }


def publish_dir(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out` (a sibling), replacing an existing `out` only once `tmp` is
    complete: a reader sees the old export or the new one, never a half-written one."""
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def write_export(model: torch.nn.Module, cfg: RunConfig, out: str | os.PathLike, dtype: str = "fp32",
                 max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE, overwrite: bool = False,
                 extra: dict | None = None, fmt: str = "alm") -> Path:
    """Write `model` (built from cfg) as an export folder at `out` (see the module docstring);
    fmt: "alm", or a layout of the stage's export_formats (e.g. "transformers")."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    max_bytes = parse_size(max_shard_size)
    out = Path(out)
    check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()  # the umask's mode (mkdtemp would make it 0700)
    try:
        model = model.to(DTYPES[dtype])  # floating tensors only; integer buffers keep their dtype
        stage = get_stage(cfg.stage)
        if fmt != "alm":  # another layout the stage knows (e.g. a transformers folder), written whole
            if fmt not in stage.export_formats:
                known = ", ".join(["alm", *stage.export_formats])
                raise UserError(f"--format {fmt!r}: stage {cfg.stage} exports as {known}")
            stage.export_formats[fmt](model, cfg, tmp)
            extra = {**(extra or {}), "format": fmt}
            weights = {}
        else:
            weights = write_weights(model, tmp, max_bytes, cfg.stage)
            if stage.export_files is not None:
                weights = {**weights, **stage.export_files(model, cfg, tmp)}
        atomic_write_text(tmp / "config.yaml", to_yaml(cfg))
        if cfg.data.tokenizer and Path(cfg.data.tokenizer).is_dir():
            shutil.copytree(cfg.data.tokenizer, tmp / "tokenizer", copy_function=shutil.copyfile)
        if cfg.data.codec and Path(cfg.data.codec).is_dir():  # a local codec travels with the export
            shutil.copytree(cfg.data.codec, tmp / "codec", copy_function=shutil.copyfile)
        meta = {"stage": cfg.stage, **(extra or {}), "dtype": dtype,
                "parameters": sum(p.numel() for p in model.parameters()), **weights, **provenance_of(cfg, tmp)}
        atomic_write_text(tmp / META, json.dumps(meta, indent=1))
        publish_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export(src: str | os.PathLike, out: str | os.PathLike, dtype: str = "fp32",
           max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE, overwrite: bool = False, fmt: str = "alm") -> Path:
    """Export the newest checkpoint of a run dir (or a given checkpoint) to `out`."""
    from alm.training.trainer import config_from_checkpoint

    check_out(Path(out), overwrite)
    step_dir = find_checkpoint(src)
    cfg = config_from_checkpoint(step_dir)
    model = build_model(cfg)
    state = consolidated_state_dict(step_dir)
    aliases = {n for g in tied_groups(model) for n in g[1:]}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - aliases or unexpected:
        raise ValueError(f"{step_dir}: weights do not match the {cfg.stage} model: missing {missing}, unexpected {unexpected}")
    extra = {"source": str(step_dir), "step": int(step_dir.name.split("-")[-1])}
    return write_export(model, cfg, out, dtype, max_shard_size, overwrite, extra, fmt)


def bundled(export_dir: str | os.PathLike | None, folder: str, configured: str | None, key: str) -> str:
    """A dependency of an export (its codec, its text encoder): the export's own copy EXPORT/folder when
    present, else the configured name or path (`key` names the recipe key that holds it)."""
    if export_dir is not None and (Path(export_dir) / folder).is_dir():
        return str(Path(export_dir) / folder)
    if not configured:
        where = f"{export_dir}: no {folder}/ folder and" if export_dir is not None else "the run has"
        raise UserError(f"{where} no {key} recorded: cannot find its {folder.replace('_', ' ')}")
    return str(configured)


def read_export_meta(path: str | os.PathLike) -> dict:
    """export.json of an export ({} for exports written before it recorded provenance)."""
    f = Path(path) / META
    return json.loads(f.read_text()) if f.is_file() else {}


def _not_an_export(path: Path) -> UserError:
    if (path / "checkpoints").is_dir() or (path / "checkpoint.ckpt").is_file() or (path / "checkpoint").is_dir():
        return UserError(f"{path}: this is a run dir (or checkpoint), not an export: alm export it first "
                         f"(alm export {path} --out EXPORT_DIR)")
    if not path.exists():
        return UserError(f"{path}: no such export directory")
    return UserError(f"{path}: not an alm export (no {WEIGHTS} or {INDEX})")


def load_config(path: str | os.PathLike) -> RunConfig:
    p = Path(path)
    f = p / "config.yaml"
    if not f.is_file() or ((p / "checkpoints").is_dir() and not is_export(p)):
        raise _not_an_export(p)
    return from_yaml_text(f.read_text(), str(f))


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files of an export: the index's shards, or model.safetensors."""
    p = Path(path)
    if (p / INDEX).is_file():
        index = json.loads((p / INDEX).read_text())
        files = list(dict.fromkeys(index["weight_map"].values()))
        missing = [f for f in files if not (p / f).is_file()]
        if missing:
            raise UserError(f"{p}: {INDEX} names {missing[0]}, which is missing")
        return [p / f for f in files]
    if (p / WEIGHTS).is_file():
        return [p / WEIGHTS]
    raise _not_an_export(p)


def load_pretrained(path: str | os.PathLike, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Rebuild an exported model from DIR/config.yaml + its safetensors (eval mode).

    dtype: None keeps the stored floating dtype (fp32 unless exported with --dtype)."""
    cfg = load_config(path)
    files = weight_files(path)
    model = build_model(cfg)
    ties = tied_groups(model)
    loaded: set[str] = set()
    expected = set(model.state_dict())
    for f in files:
        part = load_file(str(f), device="cpu")
        unexpected = sorted(set(part) - expected)
        if unexpected:
            raise ValueError(f"{f}: weights {unexpected[:3]} are not in the {cfg.stage} model")
        if not loaded:  # the first file tells the stored dtype
            stored = next((t.dtype for t in part.values() if t.is_floating_point()), torch.float32)
            model = model.to(dtype or stored)
        model.load_state_dict(part, strict=False)
        loaded |= set(part)
    filled = {n for g in ties if loaded & set(g) for n in g}  # a tied name is loaded with any of its group
    missing = sorted(expected - loaded - filled)
    if missing:
        raise ValueError(f"{path}: the export lacks weights {missing[:3]} of the {cfg.stage} model")
    return model.to(device).eval()
