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
Layouts: a single `musiccaps*.csv` if the usual name is absent; audio folder music/, audio/,
wav/ or wavs/ (first present, searched recursively, so `train/` and `eval/` sub-folders are
found), else SRC itself (its top level and its train/ and eval/ folders). A row's file, in
preference order (download scripts name them differently):
  1. `{ytid}` (the canonical name),
  2. `[{ytid}]-[{start_s}-{end_s}]`,
  3. `{ytid}_{start_s}-{end_s}`,
where the times in a name must equal the row's (`30`, `30.0`, `30.000` are equal) - a name
with other times is another cut of the video and is unlisted_audio. Any audio extension
(AUDIO_EXTS, any case). The split is always the CSV's `is_audioset_eval`: a file under the
folder of the row's split (`eval/` for eval, `train/` for train) is preferred to one outside
both, and that to one under the other split's folder; a file sorted under the other split's
folder is still that clip's audio (ytids are unique).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Any

from decimal import Decimal

from alm.data_prep.common import (
    Candidate, PrepError, Row, Scan, audio_files, audio_stem, check_src, first_dir, list_files, resolve,
)
from alm.data_prep.textio import read_csv

NAME = "musiccaps"
DEFAULT_SHARD_SIZE = 500
CSV_NAME = "musiccaps-public.csv"
COLUMNS = ("ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list", "caption",
           "author_id", "is_balanced_subset", "is_audioset_eval")
_INT = re.compile(r"[+-]?\d+$")
_TIME = r"(\d+(?:\.\d+)?)"
_BRACKETED = re.compile(rf"\[(.+)\]-\[{_TIME}-{_TIME}\]$")  # [{ytid}]-[{start}-{end}]
_UNDERSCORED = re.compile(rf"(.+)_{_TIME}-{_TIME}$")  # {ytid}_{start}-{end}
PATTERNS = "{ytid}, [{ytid}]-[{start_s}-{end_s}], {ytid}_{start_s}-{end_s}"
SPLIT_DIRS = ("train", "eval")


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


def _index(files: list[str]) -> dict[str, list[tuple[str, int, Decimal | None, Decimal | None]]]:
    """{ytid: [(path, pattern rank, start, end)]} for every file name one of the patterns parses."""
    out: dict[str, list] = {}
    for path in files:
        stem = audio_stem(path.rsplit("/", 1)[-1])
        out.setdefault(stem, []).append((path, 0, None, None))
        for rank, pattern in ((1, _BRACKETED), (2, _UNDERSCORED)):
            m = pattern.match(stem)
            if m:
                out.setdefault(m.group(1), []).append((path, rank, Decimal(m.group(2)), Decimal(m.group(3))))
    return out


def _same_time(value: int | float, written: Decimal) -> bool:
    return Decimal(str(value)) == written


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
    folder = first_dir(*(root / d for d in ("music", "audio", "wav", "wavs")))
    if folder is not None:
        files = audio_files(folder, root, recursive=True)
        base = folder.relative_to(root).as_posix() + "/"
    else:  # audio beside the CSV: SRC's top level and its train/ eval/ folders only
        folder, base = root, ""
        files = sorted(audio_files(root, root) + [f for d in SPLIT_DIRS for f in audio_files(root / d, root, True)])
    index = _index(files)
    table: list[Row] = []
    for ytid, fields in clips.items():
        split = "eval" if fields["is_audioset_eval"] else "train"
        cands = []
        for p, rank, start, end in index.get(ytid, []):
            if rank and not (_same_time(fields["start_s"], start) and _same_time(fields["end_s"], end)):
                continue  # another cut of the video
            top = p[len(base):].split("/", 1)[0] if "/" in p[len(base):] else ""
            away = 0 if top == split else 2 if top in SPLIT_DIRS else 1  # own split's folder first
            label = ("{ytid}", "[{ytid}]-[{start_s}-{end_s}]", "{ytid}_{start_s}-{end_s}")[rank]
            cands.append(Candidate(p, (rank, away), label, exact=(rank == 0)))
        table.append(Row(ytid, split, fields, cands, f"{base}{ytid}.wav", PATTERNS))

    def describe(p: str):
        stem = audio_stem(p.rsplit("/", 1)[-1])
        for pattern in (_BRACKETED, _UNDERSCORED):
            m = pattern.match(stem)
            if m and m.group(1) in clips:
                c = clips[m.group(1)]
                return stem, None, (f"names times {m.group(2)}-{m.group(3)} but the CSV row of {m.group(1)} has "
                                    f"{c['start_s']}-{c['end_s']}: another cut of the video")
        return stem, None, f"no CSV row matches; tried {PATTERNS}"

    entries, skips = resolve(table, files, describe)
    return Scan(root, entries, skips)


def main(argv: list[str] | None = None) -> int:
    from alm.data_prep.cli import main as cli_main

    return cli_main([NAME, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
