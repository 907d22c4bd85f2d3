"""Where a pretrained model comes from: a local directory or a Hugging Face hub id.

Every place that takes a model (the semantic tokenizer's SSL model, the codec, and later T5,
CLAP, LLMs, Whisper) names it with one string and loads it through `from_pretrained` here:

    an existing local path      -> that directory (it must hold config.json, as save_pretrained writes)
    anything else               -> a hub id, `org/name` or `org/name@revision` (branch, tag or commit),
                                   resolved by transformers: the local HF cache (HF_HUB_CACHE / HF_HOME),
                                   offline mode (HF_HUB_OFFLINE=1), else a download

A string that is neither an existing path nor a valid hub id, or a hub id that cannot be had (not
cached while offline, no network, no such repository), is a UserError naming it and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alm.errors import UserError


def split_revision(name: str) -> tuple[str, str | None]:
    """'org/name@rev' -> ('org/name', 'rev'); no '@' -> (name, None)."""
    repo, sep, rev = name.partition("@")
    if sep and not rev:
        raise UserError(f"model {name!r}: empty revision after '@' (expected org/name@branch-tag-or-commit)")
    return repo, (rev if sep else None)


def resolve(name_or_path: str | os.PathLike, what: str = "model") -> tuple[str, str | None]:
    """-> (local directory, None) or (hub id, revision or None). No network access."""
    name = str(name_or_path).strip()
    if not name:
        raise UserError(f"{what}: empty name (give a hub id such as org/name or a local directory)")
    local = Path(os.path.expanduser(name))
    if local.exists():
        if not local.is_dir() or not (local / "config.json").is_file():
            raise UserError(f"{what} {name!r}: local path {local} is not a model directory (no config.json; "
                            "write one with save_pretrained)")
        return str(local), None
    repo, revision = split_revision(name)
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise UserError(f"{what} {name!r}: no such local path, and not a hub id (expected org/name[@revision] "
                        "or an existing directory)") from None
    return repo, revision


def offline() -> bool:
    """Whether the hub is in offline mode (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    from huggingface_hub import constants

    env = any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or env


def from_pretrained(cls: Any, name_or_path: str | os.PathLike, what: str = "model", **kwargs: Any) -> Any:
    """`cls.from_pretrained` of a local directory or hub id (see the module docstring).

    A hub id that cannot be loaded -> UserError naming the id, the cache and the offline setting."""
    source, revision = resolve(name_or_path, what)
    if revision is not None:
        kwargs["revision"] = revision
    try:
        return cls.from_pretrained(source, **kwargs)
    except OSError as exc:
        if revision is None and Path(source).is_dir():
            raise UserError(f"{what} {str(name_or_path)!r}: cannot load {source}: {_first_line(exc)}") from exc
        raise UserError(_unavailable(str(name_or_path), what, exc)) from exc


def _unavailable(name: str, what: str, exc: BaseException) -> str:
    from huggingface_hub import constants

    where = f"not in the local HF cache ({constants.HF_HUB_CACHE})"
    if offline():
        how = ("HF_HUB_OFFLINE=1 is set, so nothing is downloaded: download it beforehand "
               f"(`hf download {split_revision(name)[0]}`) or pass a local directory")
    else:
        how = "and the hub could not provide it (no network, no such repository, or no access): check the id, " \
              "the network, or pass a local directory"
    return f"{what} {name!r}: hub id {where}; {how} ({_first_line(exc)})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
