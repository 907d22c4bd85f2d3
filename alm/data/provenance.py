"""What made a shard set, and whether the recipe agrees with it.

Token shard sets carry what made them, beside the shards:

    DIR/tokenizer/     semantic token sets (`alm tokenize semantic`): the fitted tokenizer
    DIR/codec.json     codec code sets (`alm tokenize codec`): codec name/path, facts and fingerprints
                       (weights_sha256 over the state dict; files_sha256 over a local codec's files)

`resolve_provenance(cfg)`, run once synthetic data is resolved, checks that data.tokenizer and
data.codec are the ones that made data.train_shards / data.val_shards, takes them from the
shards when the recipe leaves them unset, and refuses shard sets joined (`::` or ` + `) across
different tokenizers or codecs, and a recipe that trains on the user's shards while validation,
tokenizer or codec still point at the synthetic demo data. Shards given by URL (remote, pipe:)
carry nothing readable here and are not checked.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from alm.errors import UserError

TOKENIZER_DIR = "tokenizer"
CODEC_FILE = "codec.json"
SYNTHETIC = "synthetic"


def dir_fingerprint(path: str | os.PathLike) -> str:
    """sha256 over the relative names and bytes of every file under `path` (hidden files skipped)."""
    root = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                           p.relative_to(root).parts))
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def _is_tokenizer_dir(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*.json")) and any(p.is_file() for p in path.iterdir())


def _under_cache(value: str) -> bool:
    from alm.data.cache import cache_root

    root = os.path.abspath(cache_root())
    pieces = [p.strip() for s in value.split(" + ") for p in s.split("::") if p.strip()]
    return any(os.path.abspath(os.path.expanduser(p)).startswith(root + os.sep) for p in pieces)


def is_synthetic(value: str | None) -> bool:
    """`synthetic`, or a path into alm's synthetic-data cache (what resolve_synthetic puts there)."""
    return bool(value) and (value == SYNTHETIC or _under_cache(value))


def shard_dirs(spec: str) -> list[list[str]]:
    """The directories holding the shards of each parallel set of `spec` (' + '), in order."""
    from alm.data.shards import expand_shards, is_remote, join_sets

    out = []
    for one in join_sets(spec):
        dirs: list[str] = []
        for url in expand_shards(one):
            d = os.path.dirname(os.path.abspath(url)) if not is_remote(url) else None
            if d is not None and d not in dirs:
                dirs.append(d)
        out.append(dirs)
    return out


def _describe_tokenizer(path: str | Path) -> str:
    path = Path(path)
    facts = []
    for name in sorted(path.glob("*.json")):
        try:
            meta = json.loads(name.read_text())
        except (OSError, ValueError):
            continue
        for key in ("n_clusters", "vocab_size", "features", "model", "layer"):
            if meta.get(key) not in (None, ""):
                facts.append(f"{key}={meta[key]}")
    return f"{path} ({', '.join(facts)})" if facts else str(path)


def spec_provenance(spec: str, key: str) -> dict[str, Any]:
    """{"tokenizer": dir or None, "tokenizer_fingerprint", "codec": codec.json dict or None, "codec_dir"}
    of one shard spec; shard sets in it made by different tokenizers or codecs -> UserError."""
    tokenizers: dict[str, str] = {}  # fingerprint -> tokenizer dir
    codecs: dict[str, tuple[str, dict]] = {}  # weights_sha256 -> (shard dir, codec.json)
    for dirs in shard_dirs(spec):
        for d in dirs:
            tok = Path(d) / TOKENIZER_DIR
            if _is_tokenizer_dir(tok):
                tokenizers.setdefault(dir_fingerprint(tok), str(tok))
            meta_path = Path(d) / CODEC_FILE
            if meta_path.is_file():
                meta = json.loads(meta_path.read_text())
                codecs.setdefault(str(meta.get("weights_sha256")), (d, meta))
    if len(tokenizers) > 1:
        a, b = list(tokenizers.values())[:2]
        raise UserError(f"{key}: joins shard sets made by different tokenizers: {_describe_tokenizer(a)} and "
                        f"{_describe_tokenizer(b)}; tokenize them with one tokenizer (alm tokenize ... --tokenizer DIR)")
    if len(codecs) > 1:
        (da, ma), (db, mb) = list(codecs.values())[:2]
        raise UserError(f"{key}: joins shard sets made by different codecs: {da} ({ma.get('name')}) and {db} "
                        f"({mb.get('name')}); encode them with one codec")
    tok_fp, tok_dir = next(iter(tokenizers.items()), (None, None))
    codec_dir, codec = next(iter(codecs.values()), (None, None))
    return {"tokenizer": tok_dir, "tokenizer_fingerprint": tok_fp, "codec": codec, "codec_dir": codec_dir}


def codec_source(meta: dict) -> str:
    """The codec to load for codes described by `meta` (codec.json): its local path if still there, else its name."""
    path = meta.get("path")
    return path if path and Path(path).is_dir() else meta.get("name") or ""


def _normalised(name: str) -> str:
    from alm.tokenizers.codec import CODEC_NAMES

    name = CODEC_NAMES.get(name, name)
    local = os.path.expanduser(name)
    return os.path.abspath(local) if os.path.exists(local) else name


def codec_matches(codec: str, meta: dict) -> bool:
    """Whether `codec` (a name, hub id or local dir) is the codec described by `meta` (codec.json).

    A local directory is compared by its files (files_sha256), else by its weights; a hub id by its
    name, else by loading it and comparing its weights."""
    local = Path(os.path.expanduser(codec))
    if local.is_dir() and meta.get("files_sha256"):
        if dir_fingerprint(local) == meta["files_sha256"]:
            return True
    elif not local.is_dir():
        recorded = [_normalised(meta[k]) for k in ("name", "path") if meta.get(k)]
        if _normalised(codec) in recorded:
            return True
    from alm.tokenizers.codec import load_codec, weights_fingerprint

    return weights_fingerprint(load_codec(codec)) == meta.get("weights_sha256")


def _same_tokenizer(a: dict, b: dict) -> bool:
    return a["tokenizer_fingerprint"] is None or b["tokenizer_fingerprint"] is None or \
        a["tokenizer_fingerprint"] == b["tokenizer_fingerprint"]


def _same_codec(a: dict, b: dict) -> bool:
    return a["codec"] is None or b["codec"] is None or a["codec"].get("weights_sha256") == b["codec"].get("weights_sha256")


def resolve_provenance(cfg) -> list[str]:
    """Check data.tokenizer / data.codec against what made the shards; fill them from the shards when unset.

    Mutates cfg.data.tokenizer and cfg.data.codec when taken from the shards; returns log lines;
    raises UserError on a mismatch (naming both), on shard sets joined across tokenizers or codecs,
    and when data.train_shards is the user's data while data.val_shards, data.tokenizer or
    data.codec still name the synthetic demo data."""
    d = cfg.data
    if d.train_shards == SYNTHETIC:  # not resolved yet: nothing on disk to compare with
        return []
    lines: list[str] = []
    user_data = not is_synthetic(d.train_shards)
    if user_data and is_synthetic(d.val_shards):
        raise UserError(f"data.val_shards is still the synthetic demo set while data.train_shards={d.train_shards} "
                        "is your data: set data.val_shards=YOUR_VAL_SHARDS (or data.val_shards=null for no validation)")
    train = spec_provenance(d.train_shards, "data.train_shards")
    val = spec_provenance(d.val_shards, "data.val_shards") if d.val_shards else None
    if val is not None and not _same_tokenizer(train, val):
        raise UserError(f"data.val_shards were made by the tokenizer {_describe_tokenizer(val['tokenizer'])}, "
                        f"data.train_shards by {_describe_tokenizer(train['tokenizer'])}: validate on shards of the same tokenizer")
    if val is not None and not _same_codec(train, val):
        raise UserError(f"data.val_shards were made by the codec {val['codec'].get('name')} ({val['codec_dir']}), "
                        f"data.train_shards by {train['codec'].get('name')} ({train['codec_dir']}): use codes of one codec")
    made = train if train["tokenizer"] or val is None else val

    # tokenizer
    tok = d.tokenizer
    if tok is None or (user_data and is_synthetic(tok)):
        if made["tokenizer"]:
            was = "unset" if tok is None else "the synthetic demo tokenizer"
            d.tokenizer = made["tokenizer"]
            lines.append(f"data.tokenizer ({was}) taken from the shards: {d.tokenizer}")
        elif tok is not None:
            raise UserError(f"data.tokenizer is still the synthetic demo tokenizer ({tok}) while data.train_shards="
                            f"{d.train_shards} is your data, and the shards record no tokenizer: set data.tokenizer=DIR "
                            "(or data.tokenizer=null)")
    else:
        if not Path(tok).is_dir():
            raise UserError(f"data.tokenizer={tok}: no such directory")
        if made["tokenizer"] and dir_fingerprint(tok) != made["tokenizer_fingerprint"]:
            raise UserError(f"data.tokenizer={_describe_tokenizer(tok)} is not the tokenizer that made the shards "
                            f"({_describe_tokenizer(made['tokenizer'])}): set data.tokenizer={made['tokenizer']}, or leave "
                            "it null to take it from the shards")
        if made["tokenizer"]:
            lines.append(f"data.tokenizer {tok} is the tokenizer that made the shards")

    # codec
    meta = (train if train["codec"] or val is None else val)["codec"]
    codec = d.codec
    if codec is None or (user_data and is_synthetic(codec)):
        if meta:
            was = "unset" if codec is None else "the synthetic demo codec"
            d.codec = codec_source(meta)
            lines.append(f"data.codec ({was}) taken from the shards: {d.codec}")
        elif codec is not None:
            raise UserError(f"data.codec is still the synthetic demo codec ({codec}) while data.train_shards="
                            f"{d.train_shards} is your data, and the shards record no codec: set data.codec=NAME_OR_DIR "
                            "(or data.codec=null)")
    elif meta:
        if not codec_matches(codec, meta):
            raise UserError(f"data.codec={codec} is not the codec that made the codes ({meta.get('name')}, recorded in "
                            f"{Path(train['codec_dir'] or val['codec_dir']) / CODEC_FILE}): set data.codec="
                            f"{codec_source(meta)}, or leave it null to take it from the shards")
        lines.append(f"data.codec {codec} is the codec that made the codes")
    return lines
