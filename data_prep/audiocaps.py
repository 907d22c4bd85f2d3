"""AudioCaps: `{train,val,test}.csv` (audiocap_id,youtube_id,start_time,caption) + audio the
user downloaded from YouTube, one folder per split.

Pitfalls handled:
* val/test have 5 rows per clip, not necessarily adjacent: rows are grouped by
  (youtube_id, start_time) and captions kept in CSV row order.
* The id `{youtube_id}_{start_time}` is built from the CSV, never parsed back from a file name
  (YouTube ids contain '_' and may start with '-' or '_').
* Many clips were never downloaded -> missing_audio; audio files in a split folder that no CSV
  row of that split matches -> unlisted_audio (with the patterns tried).

Layouts: CSVs in SRC or SRC/dataset/; audio in SRC/audio/{split}/, SRC/audio_*/{split}/ (e.g.
aac-datasets' `audio_32000Hz/`) or SRC/{split}/; an audio folder without split sub-folders
serves every split. A row's file, in preference order (download tools name them differently):
  1. `{youtube_id}_{start_time}` with the start as the CSV writes it (the canonical name),
  2. `{youtube_id}_{start}` with the start written another way (`30`, `30.0`, `30.000`:
     equal numbers; AudioSet-based tools write AudioSet's `30.000`),
  3. `Y{youtube_id}` (PANNs / AudioSet-style names),
  4. `{youtube_id}`,
  5. `{audiocap_id}` of any of the clip's rows, in row order (the `audiocaps-download`
     package writes one such file per CSV row: the first is used, the others are duplicates).
Any audio extension (AUDIO_EXTS, any case). Patterns 3-5 carry no start time: when the split
has two clips of one video, such a file is ambiguous_audio for both, never given to one.
"""

from __future__ import annotations

import re
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

from alm.data_prep.common import (
    Candidate, PrepError, Row, Scan, audio_files, audio_stem, by_stem, check_src, resolve,
)

NAME = "audiocaps"
SPLITS = ("train", "val", "test")
DEFAULT_SHARD_SIZE = 1000
COLUMNS = ("youtube_id", "start_time", "caption")
PATTERNS = "{ytid}_{start} (start as in the CSV, then 30 / 30.0 / 30.000 spellings), Y{ytid}, {ytid}, {audiocap_id}"
_START = re.compile(r"\d+(\.\d+)?$")


def _number(text: str) -> Decimal | None:
    if not _START.match(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        return None


def read_split_csv(path: Path) -> dict[str, dict]:
    """{clip id: {"youtube_id", "start_time", "captions": [row order], "audiocap_ids": [...]}}."""
    from alm.data_prep.textio import read_csv

    header, rows = read_csv(path, required=COLUMNS)
    clips: dict[str, dict] = {}
    for line, row in rows:
        yt, start = row["youtube_id"], row["start_time"]
        if not yt or not start:
            raise PrepError(f"{path}: line {line}: empty youtube_id or start_time")
        clip = clips.setdefault(f"{yt}_{start}", {"youtube_id": yt, "start_time": start, "captions": [],
                                                  "audiocap_ids": []})
        clip["captions"].append(row["caption"])
        if row.get("audiocap_id"):
            clip["audiocap_ids"].append(row["audiocap_id"])
    return clips


class _Folder:
    """One scan of a split's audio folder, indexed for the row patterns."""

    def __init__(self, files: list[str]):
        self.files = files
        self.stems = by_stem(files)
        self.timed: dict[tuple[str, Decimal], list[str]] = {}
        for stem, paths in self.stems.items():
            head, _, tail = stem.rpartition("_")
            number = _number(tail) if head else None
            if number is not None:
                self.timed.setdefault((head, number), []).extend(paths)

    def candidates(self, clip_id: str, clip: dict) -> list[Candidate]:
        yt = clip["youtube_id"]
        out = [Candidate(p, (0,), "{ytid}_{start}", exact=True) for p in self.stems.get(clip_id, [])]
        number = _number(clip["start_time"])
        if number is not None:
            out += [Candidate(p, (1,), "{ytid}_{start} spelled differently")
                    for p in self.timed.get((yt, number), []) if p not in {c.path for c in out}]
        out += [Candidate(p, (2,), "Y{ytid}") for p in self.stems.get(f"Y{yt}", [])]
        out += [Candidate(p, (3,), "{ytid}") for p in self.stems.get(yt, [])]
        for k, cap_id in enumerate(clip["audiocap_ids"]):
            out += [Candidate(p, (4, k), "{audiocap_id}") for p in self.stems.get(cap_id, [])]
        return out


def find_audio_root(root: Path) -> Path:
    if (root / "audio").is_dir():
        return root / "audio"
    named = sorted(p for p in root.glob("audio_*") if p.is_dir())
    return named[0] if len(named) == 1 else root


def scan(src) -> Scan:
    root = check_src(src)
    csv_dir = next((d for d in (root, root / "dataset") if any((d / f"{s}.csv").is_file() for s in SPLITS)), None)
    if csv_dir is None:
        raise PrepError(f"{root}: no AudioCaps index found (expected train.csv, val.csv and/or test.csv)")
    audio_root = find_audio_root(root)
    base = "" if audio_root == root else audio_root.relative_to(root).as_posix() + "/"
    split_dirs = [s for s in SPLITS if (audio_root / s).is_dir()]
    flat = audio_root != root and not split_dirs  # one audio folder serves every split
    # one recursive walk: the split folders' files are candidates, anything else is reported
    if audio_root != root:
        files = audio_files(audio_root, root, recursive=True)
    else:
        files = sorted(f for s in split_dirs for f in audio_files(root / s, root, recursive=True))
    by_parent: dict[str, list[str]] = {}
    for f in files:
        by_parent.setdefault(f.rpartition("/")[0], []).append(f)
    indexes: dict[str, _Folder] = {}
    rows: list[Row] = []
    for split in SPLITS:
        path = csv_dir / f"{split}.csv"
        if not path.is_file():
            continue
        folder = base.rstrip("/") if flat else base + split
        if folder not in indexes:  # flat: the three splits share one folder's index
            indexes[folder] = _Folder(by_parent.get(folder, []))
        index = indexes[folder]
        for clip_id, clip in read_split_csv(path).items():
            rows.append(Row(clip_id, split, {"captions": clip["captions"]}, index.candidates(clip_id, clip),
                            f"{folder}/{clip_id}.flac", PATTERNS))

    def describe(path: str):
        parts = path[len(base):].split("/")
        split = parts[0] if len(parts) > 1 and parts[0] in SPLITS else None
        if len(parts) > 2 or (len(parts) == 2 and split is None) or (len(parts) == 1 and not flat):
            return audio_stem(parts[-1]), split, "not directly in a split folder (train/, val/, test/)"
        where = f"{split}.csv" if split else "any CSV"
        return audio_stem(parts[-1]), split, f"no row of {where} matches; tried {PATTERNS}"

    entries, skips = resolve(rows, files, describe)
    return Scan(root, entries, skips)


def main(argv: list[str] | None = None) -> int:
    from alm.data_prep.cli import main as cli_main

    return cli_main([NAME, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
