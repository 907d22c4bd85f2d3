"""`init_from=EXPORT_DIR`: start a run from exported weights (fresh optimizer, step 0), also into a
model that ZeRO-3 built partitioned.

Memory: tensors are read one at a time from the safetensors file(s) (memory-mapped, by name), and
each parameter is gathered, filled by rank 0 and re-partitioned on its own, so no rank ever holds
more than its partition plus one whole parameter — never the whole fp32 model. Reads both a
single `model.safetensors` and the sharded layout (`model.safetensors.index.json` + shards).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import torch
from omegaconf import OmegaConf

from alm.config import RunConfig
from alm.errors import UserError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of an export (or a transformers model folder)."""
    if (path / INDEX).is_file():
        weight_map = json.loads((path / INDEX).read_text())["weight_map"]
        return [path / f for f in sorted(set(weight_map.values()))]
    if (path / SINGLE).is_file():
        return [path / SINGLE]
    raise UserError(f"{path}: no {SINGLE} or {INDEX} inside (an `alm export` or transformers model folder has one)")


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, Callable[[], torch.Tensor]]]:
    """(name, load) per stored tensor; load() reads just that tensor."""
    from safetensors import safe_open

    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as handle:
            for name in handle.keys():
                yield name, (lambda h=handle, n=name: h.get_tensor(n))


def check_compatible(cfg: RunConfig, export_dir: Path) -> None:
    """The export must be of this stage and architecture; differences are named key by key."""
    if not export_dir.is_dir():
        raise UserError(f"init_from={export_dir}: no such export directory")
    f = export_dir / "config.yaml"
    if not f.is_file():
        raise UserError(f"init_from={export_dir}: no config.yaml (not an alm export; `alm export RUN --out DIR` makes one)")
    theirs = OmegaConf.load(f)
    if theirs.get("stage") != cfg.stage:
        raise UserError(f"init_from={export_dir}: an export of stage {theirs.get('stage')!r}, this run trains {cfg.stage!r}")
    mine = OmegaConf.to_container(OmegaConf.structured(cfg.model))
    other = OmegaConf.to_container(theirs.get("model", {}))
    # dropout may change when fine-tuning, and adapters (lora_*) may be added to an export's weights
    shape_keys = [k for k in mine if k not in ("dropout",) and not k.startswith("lora_")]
    changed = [f"model.{k} {other.get(k)!r} -> {mine[k]!r}" for k in shape_keys if other.get(k) != mine[k]]
    if changed:
        raise UserError(f"init_from={export_dir}: architecture differs from this recipe: {'; '.join(changed)}")


def load_export_weights(model: torch.nn.Module, cfg: RunConfig,
                        gathered: Callable[[list], ContextManager], rank: int | None = None) -> int:
    """Copy the export `cfg.init_from`'s tensors into `model` (partitioned or not) -> tensors loaded."""
    export_dir = Path(cfg.init_from)
    check_compatible(cfg, export_dir)
    key_map, fold = adapter_folding(model, export_dir)
    return load_weights(model, export_dir, gathered, rank, key_map, what=f"init_from={export_dir}", transform=fold)


def adapter_folding(model: torch.nn.Module, export_dir: Path):
    """An export trained with LoRA (model.lora_rank > 0) holds `X.weight` + `X.lora_a` / `X.lora_b`. Where
    this model has the same adapters (shape and alpha / rank) they load as they are; elsewhere (no
    adapters in this run, or other ones) they are folded into X.weight (W + alpha / r B A) and this
    run's own adapters, if any, start fresh. -> (key_map, transform) for load_weights (None, None: no adapters)."""
    from alm.models.lora import ADAPTERS, folded

    theirs = OmegaConf.load(export_dir / "config.yaml").get("model", {})
    if not theirs.get("lora_rank"):
        return None, None
    scale = float(theirs.get("lora_alpha")) / int(theirs.get("lora_rank"))
    stored = tensor_files(weight_files(export_dir))
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    sites = {n.rsplit(".", 1)[0] for n in stored if n.rsplit(".", 1)[-1] == ADAPTERS[0]}

    def same_adapters(x: str) -> bool:  # this model has adapters at x of the export's rank and scale
        a = params.get(f"{x}.lora_a")
        return a is not None and getattr(modules[x], "scale", None) == scale and \
            tuple(getattr(a, "ds_shape", a.shape)) == tuple(read_tensor(stored, f"{x}.lora_a", shape_only=True))

    as_is = {x for x in sites if same_adapters(x)}
    fold_at = {f"{x}.weight": x for x in sites - as_is}
    missing = [x for x in fold_at.values() if x not in modules]
    if missing:
        raise UserError(f"init_from={export_dir}: adapters at {missing[0]}, which this model does not have")

    def key_map(name: str) -> str | None:
        site, _, leaf = name.rpartition(".")
        return None if leaf in ADAPTERS and site in fold_at.values() else name

    def transform(name: str, tensor: torch.Tensor) -> torch.Tensor:
        x = fold_at.get(name)
        if x is None:
            return tensor
        return folded(modules[x], tensor, read_tensor(stored, f"{x}.lora_a"), read_tensor(stored, f"{x}.lora_b"), scale)

    return key_map, transform


def tensor_files(files: list[Path]) -> dict[str, Path]:
    """Stored tensor name -> the safetensors file holding it (headers read once)."""
    from safetensors import safe_open

    where: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as handle:
            where.update(dict.fromkeys(handle.keys(), f))
    return where


def read_tensor(where: dict[str, Path], name: str, shape_only: bool = False):
    """One stored tensor (tensor_files' map), or only its shape (the data is not read)."""
    from safetensors import safe_open

    if name not in where:
        raise UserError(f"{next(iter(where.values())).parent}: no tensor {name!r} in its weights")
    with safe_open(str(where[name]), framework="pt", device="cpu") as handle:
        return handle.get_slice(name).get_shape() if shape_only else handle.get_tensor(name)


def hf_weights_dir(name_or_path: str) -> Path:
    """A transformers model folder (local path, or a hub id resolved through the HF cache / hub,
    offline mode respected) holding its safetensors weights."""
    from alm.hub import resolve

    local, revision = resolve(name_or_path, "pretrained model")
    if revision is None and Path(local).is_dir():
        return Path(local)
    from huggingface_hub import snapshot_download

    from alm.hub import offline

    try:
        return Path(snapshot_download(local, revision=revision, allow_patterns=["*.safetensors", "*.json"],
                                      local_files_only=offline()))
    except Exception as exc:  # not cached while offline, no network, no such repository
        raise UserError(f"pretrained model {name_or_path!r} cannot be had: {str(exc).splitlines()[0]} "
                        "(HF_HUB_OFFLINE=1 reads only the local HF cache)") from exc


def load_hf_weights(model: torch.nn.Module, name_or_path: str, gathered: Callable[[list], ContextManager],
                    key_map: Callable[[str], str | None] | None = None, rank: int | None = None,
                    prefix_rows: frozenset[str] = frozenset()) -> int:
    """Load a transformers checkpoint (hub id or local folder) into `model` — a transformers model,
    or an alm module wrapping one — tensor by tensor, also when ZeRO-3 built it partitioned.
    key_map maps a stored name to the module's (None: skip that tensor); prefix_rows: see load_weights."""
    return load_weights(model, hf_weights_dir(name_or_path), gathered, rank, key_map, what=str(name_or_path),
                        prefix_rows=prefix_rows)


def load_weights(model: torch.nn.Module, folder: Path, gathered: Callable[[list], ContextManager],
                 rank: int | None = None, key_map: Callable[[str], str | None] | None = None,
                 what: str = "weights", prefix_rows: frozenset[str] = frozenset(),
                 transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> int:
    """Copy the safetensors tensors of `folder` into `model`, one parameter at a time -> tensors
    loaded. Every parameter must receive a value (tied names count once) except LoRA adapters the
    folder lacks (fine-tuning a plain export with adapters); an unknown or mis-shaped tensor is an
    error naming it. prefix_rows: names (the model's) whose stored tensor may have fewer rows than
    the parameter (a vocabulary extended after the checkpoint): it fills the first rows, the caller
    fills the rest. transform(name, tensor) -> the tensor to copy (e.g. adapters folded in)."""
    if rank is None:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    targets = dict(model.named_parameters(remove_duplicate=False))
    targets.update(dict(model.named_buffers()))
    loaded: set[int] = set()
    n = 0
    for stored, load in iter_tensors(weight_files(folder)):
        name = key_map(stored) if key_map is not None else stored
        if name is None:
            continue
        if name not in targets:
            raise UserError(f"{what}: tensor {stored!r} has no place in the {type(model).__name__}")
        target = targets[name]
        if id(target) in loaded:  # a tied weight stored under both names
            continue
        loaded.add(id(target))
        partitioned = hasattr(target, "ds_id")
        with gathered([target]) if isinstance(target, torch.nn.Parameter) else contextlib.nullcontext():
            if rank == 0 or not partitioned:  # rank 0 fills a gathered parameter; the others receive it
                tensor = load() if transform is None else transform(name, load())
                into = target
                if name in prefix_rows and tensor.dim() == target.dim() and tensor.shape[1:] == target.shape[1:] \
                        and tensor.shape[0] <= target.shape[0]:
                    into = target[: tensor.shape[0]]
                if tensor.shape != into.shape:
                    raise UserError(f"{what}: {stored} has shape {tuple(tensor.shape)}, the model expects {tuple(target.shape)}")
                with torch.no_grad():
                    into.copy_(tensor.to(target.dtype))
        n += 1
    params = dict(model.named_parameters(remove_duplicate=False))
    # LoRA adapters (`...lora_a` / `...lora_b`) absent from the weights keep their initialisation
    missing = [k for k, p in params.items() if id(p) not in loaded and k.rsplit(".", 1)[-1] not in ("lora_a", "lora_b")]
    if missing:
        raise UserError(f"{what}: no weights for {', '.join(missing[:5])}"
                        + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return n
