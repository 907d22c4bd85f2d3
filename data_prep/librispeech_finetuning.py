"""librispeech_finetuning (LibriLight's labelled 10 h / 1 h / 10 min):
`1h/{0..5}/{clean,other}/{spk}/{chap}/{spk}-{chap}-{utt}.flac` and
`9h/{clean,other}/{spk}/{chap}/...`, transcripts in `{spk}-{chap}.trans.txt` beside the audio.

Pitfalls handled:
* 1h and 9h share chapters: two `2843-152918.trans.txt` files in different folders hold
  different utterances. Every `*.trans.txt` is read and each line points at the audio in ITS
  folder, so nothing is keyed by chapter or trans.txt name and no line is lost.
* Transcript = the line after the first space, verbatim, without the line ending (LF or CRLF;
  a UTF-8 BOM is dropped).
* split = the folder path below librispeech_finetuning/ down to the speaker folder
  (`1h/0/clean`, `9h/other`); `phones/` is alignments, not audio, and is ignored.
* A line without audio -> missing_audio; audio no line names -> unlisted_audio.
`--src` is the folder holding 1h/ and 9h/ (its parent holding librispeech_finetuning/ works too).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from alm.data_prep.common import (
    Entry, PrepError, Scan, Skip, audio_by_stem, check_src, list_files, rel, unlisted, walk_audio,
)
from alm.data_prep.textio import read_lines

NAME = "librispeech_finetuning"
DEFAULT_SHARD_SIZE = 1000
IGNORED = ("phones",)


def _split_of(folder: Path, root: Path) -> str:
    parts = folder.relative_to(root).parts
    return "/".join(parts[:-2] if len(parts) > 2 else parts)


def _walk(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in IGNORED]
        dirnames.sort()
        yield Path(dirpath), sorted(filenames)


def read_folder(folder: Path, names: list[str], root: Path, split: str, claimed: set[Path]) -> tuple[
        list[Entry], list[Skip], int]:
    """The samples of one folder's `*.trans.txt` files (entries, missing_audio skips, number of
    transcript files); the audio files used are added to `claimed`. Shared with `librispeech`."""
    entries: list[Entry] = []
    skips: list[Skip] = []
    trans = [n for n in names if n.lower().endswith(".trans.txt")]
    if not trans:
        return entries, skips, 0
    by_stem = audio_by_stem(list_files(folder))
    seen: dict[str, str] = {}
    for name in trans:
        for line_no, line in read_lines(folder / name):
            utt, _, text = line.partition(" ")
            if not utt:
                raise PrepError(f"{folder / name}: line {line_no}: line starts with a space, no utterance id")
            if utt in seen:
                if seen[utt] != text:
                    print(f"warning: {folder / name}: line {line_no}: {utt} listed again with another "
                          "transcript; the first one is used", file=sys.stderr)
                continue
            seen[utt] = text
            files = by_stem.get(utt)
            if not files:
                where = rel(folder / f"{utt}.flac", root)
                skips.append(Skip(utt, split, "missing_audio", where, f"listed in {name}"))
                continue
            claimed.add(folder / files[0])
            parts = utt.split("-")
            speaker, chapter = (parts[0], parts[1]) if len(parts) == 3 else (folder.parent.name, folder.name)
            entries.append(Entry(utt, split, rel(folder / files[0], root),
                                 {"transcript": text, "speaker": speaker, "chapter": chapter}))
    return entries, skips, len(trans)


def scan(src) -> Scan:
    root = check_src(src)
    if not any((root / d).is_dir() for d in ("1h", "9h")) and (root / NAME).is_dir():
        root = root / NAME
    entries: list[Entry] = []
    skips: list[Skip] = []
    claimed: set[Path] = set()
    n_trans = 0
    for folder, names in _walk(root):
        e, s, n = read_folder(folder, names, root, _split_of(folder, root), claimed)
        entries += e
        skips += s
        n_trans += n
    if n_trans == 0:
        raise PrepError(f"{root}: no *.trans.txt transcripts found (expected the 1h/ and 9h/ folders of {NAME})")
    audio = [p for p in walk_audio(root) if p.relative_to(root).parts[0] not in IGNORED]
    skips += unlisted(audio, claimed, root, lambda p: p.name[: -len(p.suffix)], lambda p: _split_of(p.parent, root))
    return Scan(root, entries, skips)


def main(argv: list[str] | None = None) -> int:
    from alm.data_prep.cli import main as cli_main

    return cli_main([NAME, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
