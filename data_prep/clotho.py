"""Clotho v2.1: `clotho_captions_{split}.csv` (file_name,caption_1..caption_5),
`clotho_metadata_{split}.csv` and audio `clotho_audio_{split}/{file_name}`.

Pitfalls handled:
* The id is `file_name` exactly as in the captions CSV and the audio is looked up under that
  exact name: spaces, commas, parentheses, several dots and literal HTML entities
  (`121006_rain&amp;storm.wav`, `Chris&#39; Elevator.wav`) are part of real names - nothing is
  unescaped, case-folded or Unicode-normalised.
* Captions CSV: UTF-8, optional BOM. Metadata CSV: declared ISO-8859-1 but holds cp1252 bytes
  (decoded cp1252 with ISO-8859-1 fallback); the DCASE test-set variant is ';'-separated
  (detected from the header; unquoted ';'-separated keywords are joined back).
  Metadata is optional per clip (`metadata: null`); keywords are split on ';'.
* A split with metadata but no captions CSV (the DCASE test set) is indexed by its metadata,
  with `captions: []`; audio files no index row names -> unlisted_audio.
Layout variants accepted: CSVs in SRC or SRC/clotho_csv_files/; audio in SRC/clotho_audio_{split}/,
SRC/clotho_audio_files/{split}/ or SRC/{split}/ (what the 7z archives extract to), also with the
archive's {split}/ folder nested inside.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from alm.data_prep.common import (
    Entry, PrepError, Scan, Skip, audio_ext, check_src, first_dir, list_files, rel, unlisted, walk_audio,
)
from alm.data_prep.textio import decode_legacy, read_csv, sniff_delimiter

NAME = "clotho"
DEFAULT_SHARD_SIZE = 500
_CAPTIONS = re.compile(r"clotho_captions_(.+)\.csv$")
_METADATA = re.compile(r"clotho_metadata_(.+)\.csv$")
_CAPTION_COL = re.compile(r"caption_(\d+)$")


def read_captions(path: Path) -> dict[str, list[str]]:
    """{file_name: [captions]} in row and column order (duplicate rows' captions are appended)."""
    header, rows = read_csv(path, required=("file_name",))
    cols = sorted((c for c in header if _CAPTION_COL.match(c)), key=lambda c: int(_CAPTION_COL.match(c).group(1)))
    out: dict[str, list[str]] = {}
    for line, row in rows:
        if not row["file_name"]:
            raise PrepError(f"{path}: line {line}: empty file_name")
        out.setdefault(row["file_name"], []).extend(row[c] for c in cols)
    return out


def read_metadata(path: Path) -> dict[str, dict[str, Any]]:
    """{file_name: metadata row without file_name, keywords split on ';'} (first row wins)."""
    try:
        text = decode_legacy(path.read_bytes())
    except OSError as exc:
        raise PrepError(f"{path}: cannot read: {exc}") from None
    delim = sniff_delimiter(text, ("file_name",))
    _, rows = read_csv(path, text=text, required=("file_name",), delimiter=delim,
                       overflow_into="keywords" if delim == ";" else None)
    out: dict[str, dict[str, Any]] = {}
    for _, row in rows:
        meta: dict[str, Any] = {k: v for k, v in row.items() if k != "file_name"}
        if "keywords" in meta:
            meta["keywords"] = meta["keywords"].split(";")
        out.setdefault(row["file_name"], meta)
    return out


def _find(root: Path, pattern: re.Pattern) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in (root / "clotho_csv_files", root):  # SRC wins over the sub-folder
        for name in list_files(folder):
            m = pattern.match(name)
            if m:
                found[m.group(1)] = folder / name
    return found


def scan(src) -> Scan:
    root = check_src(src)
    captions, metadata = _find(root, _CAPTIONS), _find(root, _METADATA)
    splits = set(captions) | set(metadata)
    splits |= {p.name[len("clotho_audio_"):] for p in root.glob("clotho_audio_*") if p.is_dir()}
    if (root / "clotho_audio_files").is_dir():
        splits |= {p.name for p in (root / "clotho_audio_files").iterdir() if p.is_dir()}
    if not captions and not metadata:
        raise PrepError(f"{root}: no Clotho index found (expected clotho_captions_{{split}}.csv files)")
    entries: list[Entry] = []
    skips: list[Skip] = []
    for split in sorted(splits):
        default = root / f"clotho_audio_{split}"
        folder = first_dir(default, root / "clotho_audio_files" / split, root / split) or default
        if (folder / split).is_dir() and not any(audio_ext(n) for n in list_files(folder)):
            folder = folder / split  # `7z x clotho_audio_{split}.7z -oclotho_audio_{split}` nests {split}/
        meta = read_metadata(metadata[split]) if split in metadata else {}
        if split in captions:
            index = read_captions(captions[split])
        else:
            index = {name: [] for name in meta}
        names = set(list_files(folder))
        claimed: set[Path] = set()
        for file_name, caps in index.items():
            path = folder / file_name
            if file_name not in names:
                skips.append(Skip(file_name, split, "missing_audio", rel(path, root), "no such file"))
                continue
            claimed.add(path)
            fields = {"captions": caps, "metadata": meta.get(file_name)}
            entries.append(Entry(file_name, split, rel(path, root), fields))
        skips += unlisted(walk_audio(folder), claimed, root, lambda p, f=folder: rel(p, f), lambda p, s=split: s)
    return Scan(root, entries, skips)


def main(argv: list[str] | None = None) -> int:
    from alm.data_prep.cli import main as cli_main

    return cli_main([NAME, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
