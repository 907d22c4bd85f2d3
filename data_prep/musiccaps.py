"""MusicCaps: `musiccaps-public.csv` (ytid,start_s,end_s,audioset_positive_labels,aspect_list,
caption,author_id,is_balanced_subset,is_audioset_eval) + user-downloaded `music/{ytid}.wav`.

Pitfalls handled:
* CRLF row ends with captions holding bare '\\n' inside quoted fields: read raw by the csv
  module, the caption keeps its line break verbatim.
* `aspect_list` is a Python literal (items with apostrophes are double-quoted by repr):
  parsed with ast.literal_eval, never eval/json; anything but a list of strings is an error
  naming the file and line.
* `is_audioset_eval` True -> split `eval`, else `train`; booleans/ints are parsed, not kept as
  strings; `audioset_positive_labels` is split on ','.
* Durations come from the audio, never from end_s - start_s (downloads are often trimmed
  differently). ytids may start with '-' and contain '_'.
Layout variants accepted: audio folder music/, audio/, wav/ or wavs/ (first present), else SRC;
any `{ytid}.flac|.wav` extension case; a single `musiccaps*.csv` if the usual name is absent.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Any

from alm.data_prep.common import (
    Entry, PrepError, Scan, Skip, audio_by_stem, audio_ext, check_src, first_dir, list_files, rel, unlisted,
    walk_audio,
)
from alm.data_prep.textio import read_csv

NAME = "musiccaps"
DEFAULT_SHARD_SIZE = 500
CSV_NAME = "musiccaps-public.csv"
COLUMNS = ("ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list", "caption",
           "author_id", "is_balanced_subset", "is_audioset_eval")
_INT = re.compile(r"[+-]?\d+$")


def _number(text: str, where: str) -> int | float:
    text = text.strip()
    try:
        return int(text) if _INT.match(text) else float(text)
    except ValueError:
        raise PrepError(f"{where}: {text!r} is not a number") from None


def _bool(text: str, where: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise PrepError(f"{where}: {text!r} is not True/False")


def _aspects(text: str, where: str) -> list[str]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise PrepError(f"{where}: aspect_list {text!r} is not a Python list literal") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise PrepError(f"{where}: aspect_list {text!r} is not a list of strings")
    return list(value)


def parse_row(row: dict[str, str], where: str) -> dict[str, Any]:
    author = row["author_id"].strip()
    return {
        "captions": [row["caption"]],
        "start_s": _number(row["start_s"], where),
        "end_s": _number(row["end_s"], where),
        "aspect_list": _aspects(row["aspect_list"], where),
        "audioset_positive_labels": row["audioset_positive_labels"].split(","),
        "author_id": int(author) if _INT.match(author) else author,
        "is_balanced_subset": _bool(row["is_balanced_subset"], where),
        "is_audioset_eval": _bool(row["is_audioset_eval"], where),
    }


def find_csv(root: Path) -> Path:
    if (root / CSV_NAME).is_file():
        return root / CSV_NAME
    found = [root / n for n in list_files(root) if n.lower().startswith("musiccaps") and n.lower().endswith(".csv")]
    if len(found) == 1:
        return found[0]
    raise PrepError(f"{root}: no MusicCaps index found (expected {CSV_NAME})")


def scan(src) -> Scan:
    root = check_src(src)
    path = find_csv(root)
    _, rows = read_csv(path, required=COLUMNS)
    clips: dict[str, dict[str, Any]] = {}
    for line, row in rows:
        where = f"{path}: line {line}"
        ytid = row["ytid"]
        if not ytid:
            raise PrepError(f"{where}: empty ytid")
        fields = parse_row(row, where)
        if ytid in clips:  # a repeated ytid: one clip, its captions in row order
            clips[ytid]["captions"] += fields["captions"]
        else:
            clips[ytid] = fields
    folder = first_dir(*(root / d for d in ("music", "audio", "wav", "wavs"))) or root
    by_stem = audio_by_stem(list_files(folder))
    entries: list[Entry] = []
    skips: list[Skip] = []
    claimed: set[Path] = set()
    for ytid, fields in clips.items():
        split = "eval" if fields["is_audioset_eval"] else "train"
        files = by_stem.get(ytid)
        if not files:
            skips.append(Skip(ytid, split, "missing_audio", rel(folder / f"{ytid}.wav", root), "no .wav/.flac file"))
            continue
        claimed.add(folder / files[0])
        entries.append(Entry(ytid, split, rel(folder / files[0], root), fields))
    # the audio folder recursively; SRC itself (audio beside the CSV) only at its top level
    files = walk_audio(folder) if folder != root else [root / n for n in list_files(root) if audio_ext(n)]
    skips += unlisted(files, claimed, root, lambda p: p.name[: -len(p.suffix)], lambda p: None)
    return Scan(root, entries, skips)


def main(argv: list[str] | None = None) -> int:
    from alm.data_prep.cli import main as cli_main

    return cli_main([NAME, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
