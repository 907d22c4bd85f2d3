"""AudioCaps: `{train,val,test}.csv` (audiocap_id,youtube_id,start_time,caption) + audio the
user downloaded from YouTube as `audio/{split}/{youtube_id}_{start_time}.{flac,wav}`.

Pitfalls handled:
* val/test have 5 rows per clip, not necessarily adjacent: rows are grouped by
  (youtube_id, start_time) and captions kept in CSV row order.
* The id `{youtube_id}_{start_time}` is built from the CSV, never parsed back from a file name
  (YouTube ids contain '_' and may start with '-' or '_'); file stems are the name without the
  last extension, matched exactly; the extension may be .flac/.wav in any case (`.WAV`).
* Many clips were never downloaded -> missing_audio; audio files under audio/ that no CSV row of
  their split names -> unlisted_audio.
Layout variants accepted: CSVs in SRC or SRC/dataset/; audio in SRC/audio/{split}/ or SRC/{split}/.
"""

from __future__ import annotations

import sys
from pathlib import Path

from alm.data_prep.common import (
    Entry, PrepError, Scan, Skip, audio_by_stem, check_src, list_files, rel, unlisted, walk_audio,
)

NAME = "audiocaps"
SPLITS = ("train", "val", "test")
DEFAULT_SHARD_SIZE = 1000
COLUMNS = ("youtube_id", "start_time", "caption")


def read_split_csv(path: Path) -> dict[str, list[str]]:
    """{clip id: [captions in row order]} for one split CSV."""
    from alm.data_prep.textio import read_csv

    _, rows = read_csv(path, required=COLUMNS)
    clips: dict[str, list[str]] = {}
    for line, row in rows:
        yt, start = row["youtube_id"], row["start_time"]
        if not yt or not start:
            raise PrepError(f"{path}: line {line}: empty youtube_id or start_time")
        clips.setdefault(f"{yt}_{start}", []).append(row["caption"])
    return clips


def scan(src) -> Scan:
    root = check_src(src)
    csv_dir = next((d for d in (root, root / "dataset") if any((d / f"{s}.csv").is_file() for s in SPLITS)), None)
    if csv_dir is None:
        raise PrepError(f"{root}: no AudioCaps index found (expected train.csv, val.csv and/or test.csv)")
    audio_root = root / "audio" if (root / "audio").is_dir() else root
    entries: list[Entry] = []
    skips: list[Skip] = []
    claimed: set[Path] = set()
    for split in SPLITS:
        path = csv_dir / f"{split}.csv"
        if not path.is_file():
            continue
        folder = audio_root / split
        by_stem = audio_by_stem(list_files(folder))
        for clip_id, captions in read_split_csv(path).items():
            files = by_stem.get(clip_id)
            if not files:
                where = rel(folder / f"{clip_id}.flac", root)
                skips.append(Skip(clip_id, split, "missing_audio", where, "no .flac/.wav file"))
                continue
            claimed.add(folder / files[0])
            entries.append(Entry(clip_id, split, rel(folder / files[0], root), {"captions": captions}))
    if audio_root == root:
        files = [p for s in SPLITS for p in walk_audio(root / s)]
    else:
        files = walk_audio(audio_root)

    def split_of(p: Path) -> str | None:
        parts = p.relative_to(audio_root).parts
        return parts[0] if len(parts) > 1 else None

    skips += unlisted(files, claimed, root, lambda p: p.name[: -len(p.suffix)], split_of)
    return Scan(root, entries, skips)


def main(argv: list[str] | None = None) -> int:
    from alm.data_prep.cli import main as cli_main

    return cli_main([NAME, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
