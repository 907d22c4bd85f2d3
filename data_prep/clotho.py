"""Clotho v1, v2 and v2.1: `clotho_captions_{split}.csv` (file_name,caption_1..caption_5),
`clotho_metadata_{split}.csv` and audio `clotho_audio_{split}/{file_name}`.

Versions: v1 has the splits development (2893 clips) and evaluation; v2 adds clips to
development (3840) and a validation split; v2.1 re-encodes ~150 damaged files and renames
~10 whose names held characters illegal on common filesystems (e.g. `raindrops on metal:
police background.wav` -> `raindrops on metal_police background.wav`: the character and the
spaces around it become one `_`). The splits are whatever captions/metadata CSVs are present.

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
* A row's audio is the file named exactly `file_name` (v2.1 CSVs with v2.1 audio, v1 with v1);
  failing that, the one whose name is equal after the v2.1 renaming of `:*?"<>|\\` (so a v1/v2
  CSV finds v2.1 audio and back). A file both spellings of two rows could claim, or two
  files equal after renaming, is ambiguous_audio, never given by chance.
Layout variants accepted: CSVs in SRC or SRC/clotho_csv_files/; audio in SRC/clotho_audio_{split}/,
SRC/clotho_audio_files/{split}/ (the DCASE baseline layout), SRC/{split}/ (what the 7z archives
extract to) or, for the DCASE test set, SRC/clotho_test_audio/; also with the archive's {split}/
folder nested inside.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from alm.data_prep.common import (
    Candidate, Entry, PrepError, Row, Scan, Skip, audio_ext, audio_files, check_src, first_dir, list_files, resolve,
)
from alm.data_prep.textio import decode_legacy, read_csv, sniff_delimiter

NAME = "clotho"
DEFAULT_SHARD_SIZE = 500
_CAPTIONS = re.compile(r"clotho_captions_(.+)\.csv$")
_METADATA = re.compile(r"clotho_metadata_(.+)\.csv$")
_CAPTION_COL = re.compile(r"caption_(\d+)$")
_ILLEGAL = re.compile(r"\s*[:*?\"<>|\\]\s*")  # what v2.1 replaced by "_" in file names


def renamed(name: str) -> str:
    """A file name as Clotho v2.1 spells it (illegal characters and their spaces -> one `_`)."""
    return _ILLEGAL.sub("_", name)


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
    splits |= {p.name[len("clotho_audio_"):] for p in root.glob("clotho_audio_*")
               if p.is_dir() and p.name != "clotho_audio_files"}  # that one holds {split}/ folders
    if (root / "clotho_audio_files").is_dir():
        splits |= {p.name for p in (root / "clotho_audio_files").iterdir() if p.is_dir()}
    if not captions and not metadata:
        raise PrepError(f"{root}: no Clotho index found (expected clotho_captions_{{split}}.csv files)")
    entries: list[Entry] = []
    skips: list[Skip] = []
    for split in sorted(splits):
        default = root / f"clotho_audio_{split}"
        extra = (root / "clotho_test_audio",) if split == "test" else ()
        folder = first_dir(default, root / "clotho_audio_files" / split, root / split, *extra) or default
        if (folder / split).is_dir() and not any(audio_ext(n) for n in list_files(folder)):
            folder = folder / split  # `7z x clotho_audio_{split}.7z -oclotho_audio_{split}` nests {split}/
        meta = read_metadata(metadata[split]) if split in metadata else {}
        if split in captions:
            index = read_captions(captions[split])
        else:
            index = {name: [] for name in meta}
        meta_renamed = {renamed(k): v for k, v in meta.items()}  # a v2 metadata CSV beside v2.1 captions
        base = folder.relative_to(root).as_posix() + "/"
        files = audio_files(folder, root, recursive=True)  # every file below is reported if unused
        exact: dict[str, str] = {}
        by_key: dict[str, list[str]] = {}
        for f in files:
            name = f[len(base):]
            if "/" not in name:
                exact[name] = f
                by_key.setdefault(renamed(name), []).append(f)
        rows = []
        for file_name, caps in index.items():
            cands = [Candidate(exact[file_name], (0,), "file_name", exact=True)] if file_name in exact else []
            cands += [Candidate(f, (1,), "file_name with v2.1 renaming")
                      for f in by_key.get(renamed(file_name), []) if f != exact.get(file_name)]
            fields = {"captions": caps, "metadata": meta.get(file_name, meta_renamed.get(renamed(file_name)))}
            rows.append(Row(file_name, split, fields, cands, base + file_name,
                            "file_name exactly, then with v2.1's renaming of :*?\"<>|\\"))

        def describe(f: str, base=base, split=split):
            name = f[len(base):]
            why = ("in a sub-folder of the split's audio folder" if "/" in name else
                   "no captions/metadata row names it (tried file_name exactly and with v2.1's renaming)")
            return name, split, why

        e, s = resolve(rows, files, describe)
        entries += e
        skips += s
    return Scan(root, entries, skips)


def main(argv: list[str] | None = None) -> int:
    from alm.data_prep.cli import main as cli_main

    return cli_main([NAME, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
