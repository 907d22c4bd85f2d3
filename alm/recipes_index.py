"""The shipped recipes: where they are, what each trains, on which data, with how many parameters.

`shipped_recipes_dir()` is the one place that says where the shipped recipes live. Everything
else here reads the YAML files as text/YAML only (no torch), except `count_parameters`, which
builds the model on torch's meta device (no memory, no init cost) to count it exactly.

A recipe is a YAML file with a `stage:` key; a pipeline (alm launch slurm) has `stages:` instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def shipped_recipes_dir() -> Path:
    """The folder of the recipes shipped with alm (today: `recipes/` beside the alm package)."""
    return Path(__file__).resolve().parent.parent / "recipes"


def header_line(path: str | os.PathLike) -> str:
    """The first line of a YAML file's leading comment block ('' when it has none)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("#"):
                return ""
            text = line.lstrip("#").strip()
            if text:
                return text
    return ""


def _entry(path: Path, root: Path) -> dict[str, Any] | None:
    from omegaconf import DictConfig, OmegaConf

    raw = OmegaConf.load(path)
    if not isinstance(raw, DictConfig):
        return None
    rel = path.relative_to(root).as_posix()
    if "stage" in raw:
        data = raw.get("data") or {}
        return {"recipe": rel, "path": str(path), "kind": "recipe", "stage": str(raw.stage),
                "train_shards": data.get("train_shards"), "val_shards": data.get("val_shards"),
                "header": header_line(path)}
    if "stages" in raw:
        names = [str(s.get("name")) for s in raw.stages]
        return {"recipe": rel, "path": str(path), "kind": "pipeline", "stage": None, "stages": names,
                "header": header_line(path)}
    return None


def list_recipes(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Every recipe and pipeline under `root` (default: the shipped ones), sorted by relative path.

    Each entry: recipe (path relative to root), path, kind ("recipe" | "pipeline"), stage,
    train_shards, val_shards (recipes) or stages (pipelines), header (first header-comment line)."""
    root = Path(root) if root is not None else shipped_recipes_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: recipes folder not found")
    entries = (_entry(p, root) for p in sorted(root.rglob("*.yaml")))
    return [e for e in entries if e is not None]


def count_parameters(path: str | os.PathLike) -> int:
    """Exact parameter count of a recipe's model, built on the meta device (no weights allocated)."""
    import torch

    from alm.config import load_recipe
    from alm.stages import get_stage

    cfg = load_recipe(path)
    with torch.device("meta"):
        model = get_stage(cfg.stage).model(cfg.model)
    return sum(p.numel() for p in model.parameters())


def human_count(n: int) -> str:
    """1234567 -> '1.2 M', 155729920 -> '155.7 M'."""
    if n >= 1e9:
        return f"{n / 1e9:.2f} B"
    if n >= 1e6:
        return f"{n / 1e6:.1f} M"
    return f"{n / 1e3:.1f} k"


def _yaml_value(value: Any) -> str:
    return "null" if value is None else str(value)


def format_recipes(entries: list[dict[str, Any]], show_path=str) -> str:
    """A readable listing of `list_recipes` entries (with "params" filled in for recipes)."""
    width = max([len(show_path(e["path"])) for e in entries] + [len("recipe")])
    lines = [f"{'recipe':<{width}}  {'stage':<10}  {'params':>8}  header (paper)"]
    for e in entries:
        if e["kind"] == "pipeline":
            lines.append(f"{show_path(e['path']):<{width}}  {'pipeline':<10}  {'':>8}  {e['header']}")
            lines.append(f"{'':<{width}}    stages: {', '.join(e['stages'])}")
            continue
        params = human_count(e["params"]) if e.get("params") is not None else "?"
        lines.append(f"{show_path(e['path']):<{width}}  {e['stage']:<10}  {params:>8}  {e['header']}")
        lines.append(f"{'':<{width}}    data: train_shards={_yaml_value(e['train_shards'])}  "
                     f"val_shards={_yaml_value(e['val_shards'])}")
    return "\n".join(lines)
