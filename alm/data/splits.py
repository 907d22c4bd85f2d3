"""Split roles: which shards of a prepared or tokenized directory serve training, validation, fitting.

`alm prep` writes `{split}-NNNNNN.tar` shards and a manifest.json naming each split's shards; the
token passes mirror those file names. A *directory* in a shard spec therefore resolves by role:

    role "train" / "fit" (training a model, fitting a tokenizer): the training split(s)
    role "val": the validation split

Split names -> roles (the datasets alm prepares):

    AudioCaps  train / val / test          Clotho  development (train) / validation / evaluation (test)
    MusicCaps  train / eval (test)         LibriLight: every subset, and every librispeech_finetuning
                                           folder (1h/*, 9h/*): training data
    LibriSpeech  train-clean-100 / train-clean-360 / train-other-500 (train), dev-clean / dev-other (val),
                 test-clean / test-other (test)
    CoVoST 2   train / dev (val) / test
    WavCaps    every subset (AudioSet_SL, BBC_Sound_Effects, FreeSound, SoundBible): training data

A test split is never picked for a directory: to train or fit on it, name its files with an
explicit glob (`dir/test-*.tar`); an explicit glob, brace pattern, file or URL means exactly the
files it matches. A directory without a manifest (a token pass's output) is read by its file
names' split prefixes; one whose prefixes name no known split at all serves training as a whole.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from alm.data.shards import is_remote, join_sets, mixture_parts, safe_split_name
from alm.errors import UserError

log = logging.getLogger(__name__)

ROLES = ("train", "val", "fit")
# split name (as in shard file names) -> role; datasets whose every split trains are listed below
SPLIT_ROLES = {
    "train": "train", "development": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "eval": "test", "evaluation": "test",
}
ALL_TRAIN_DATASETS = ("librilight", "librispeech_finetuning", "wavcaps")
ALL_TRAIN_PREFIX = re.compile(r"^(small|medium|large|duplicate|1h_\d+_(clean|other)|9h_(clean|other))$")
# LibriSpeech subsets (alm prep librispeech): train-clean-100 / -360, train-other-500, dev-*, test-*
LIBRISPEECH_ROLES = re.compile(
    r"^(?:(?P<train>train-(clean|other)-\d+)|(?P<val>dev-(clean|other))|(?P<test>test-(clean|other)))$")
_SHARD = re.compile(r"^(.+)-\d{6}\.tar$")


def _role_of(split: str, dataset: str | None) -> str | None:
    if dataset in ALL_TRAIN_DATASETS:
        return "train"
    name = safe_split_name(split)
    if name in SPLIT_ROLES:
        return SPLIT_ROLES[name]
    m = LIBRISPEECH_ROLES.match(name)
    if m:
        return m.lastgroup
    return "train" if ALL_TRAIN_PREFIX.match(name) else None


def directory_splits(path: str | os.PathLike) -> tuple[str | None, dict[str, list[str]]]:
    """(dataset name or None, {split: [shard file names]}) of a prepared or tokenized directory."""
    path = Path(path)
    manifest = path / "manifest.json"
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text())
            return m.get("dataset"), {s: list(info["shards"]) for s, info in m["splits"].items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{manifest}: not a manifest written by `alm prep` ({exc})") from exc
    splits: dict[str, list[str]] = {}
    for name in sorted(os.listdir(path)):
        m = _SHARD.match(name)
        if m and (path / name).is_file():
            splits.setdefault(m.group(1), []).append(name)
    return None, splits


def _resolve_dir(path: str, role: str) -> str:
    dataset, splits = directory_splits(path)
    if not splits:
        raise FileNotFoundError(f"shard directory {path}: no {{split}}-NNNNNN.tar shards and no manifest.json")
    roles = {s: _role_of(s, dataset) for s in splits}
    want = "train" if role == "fit" else role
    if all(r is None for r in roles.values()) and dataset is None and want == "train":
        picked = sorted(splits)  # a plain directory of shards, no split names: all of it trains
    else:
        unknown = sorted(s for s, r in roles.items() if r is None)
        if unknown:
            raise UserError(f"shard directory {path}: split(s) {', '.join(unknown)} have no known role "
                            f"(train / val / test); name the shards to use with an explicit glob, e.g. {path}/NAME-*.tar")
        picked = sorted(s for s, r in roles.items() if r == want)
    if not picked:
        have = ", ".join(f"{s} ({r})" for s, r in sorted(roles.items()))
        raise UserError(f"shard directory {path} has no {want} split (it has: {have}); name the shards to use with "
                        f"an explicit glob, e.g. {path}/{sorted(splits)[0]}-*.tar")
    files = [os.path.join(path, f) for s in picked for f in splits[s]]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"shard directory {path}: {len(missing)} shard(s) its manifest names are missing, "
                                f"e.g. {missing[0]}")
    log.info("%s data from %s: split(s) %s, %d shard(s)", role, path, ", ".join(picked), len(files))
    return "::".join(files)


def resolve_split_spec(spec: str, role: str) -> str:
    """A shard spec with every directory in it replaced by its shards for `role` (train | val | fit).

    Globs, brace patterns, files and URLs are kept as written (exactly the files they match);
    ' + ' (parallel sets) and '::' (several sources) are kept; 'synthetic' passes through.
    Returns a spec for alm.data.stream.resolve_shard_sets / alm.data.shards.expand_shards.
    """
    if role not in ROLES:
        raise ValueError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if spec.strip() == "synthetic":
        return spec
    parts = mixture_parts(spec)
    if parts[0][1] is not None:  # a weighted mixture: each dataset resolved, its weight kept
        return " :: ".join(f"{resolve_split_spec(body, role)} @{weight!r}" for body, weight in parts)
    sets = []
    for one in join_sets(spec):
        pieces = []
        for piece in (p.strip() for p in one.split("::") if p.strip()):
            local = os.path.expanduser(piece)
            pieces.append(_resolve_dir(local, role) if not is_remote(piece) and os.path.isdir(local) else piece)
        sets.append("::".join(pieces))
    return " + ".join(sets)


def auto_val_spec(train_spec: str) -> str | None:
    """`data.val_shards: auto`: the validation split of the directories `train_spec` names, or None
    (no validation) when it names a glob or file (no split to derive), or a directory without a
    validation split."""
    pieces = [p.strip() for one in join_sets(train_spec) for p in one.split("::") if p.strip()]
    if not pieces or not all(not is_remote(p) and os.path.isdir(os.path.expanduser(p)) for p in pieces):
        log.info("data.val_shards=auto: data.train_shards=%s names no prepared directory: validation off", train_spec)
        return None
    try:
        return resolve_split_spec(train_spec, "val")
    except UserError as exc:
        log.info("data.val_shards=auto: no validation split (%s): validation off", exc)
        return None
