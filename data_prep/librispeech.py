"""LibriSpeech (openslr 12): `LibriSpeech/{subset}/{spk}/{chap}/{spk}-{chap}-{utt}.flac` with
`{spk}-{chap}.trans.txt` beside the audio, subsets train-clean-100, train-clean-360,
train-other-500, dev-clean, dev-other, test-clean, test-other (each archive unpacks into
LibriSpeech/{subset}/).

* split = the subset folder's name (`dev-clean`, shards `dev-clean-NNNNNN.tar`); train-* subsets
  train, dev-* validate, test-* are test data (alm.data.splits).
* Transcript lines are read exactly as for librispeech_finetuning (`read_folder`): the text after
  the first space, verbatim; a line without audio -> missing_audio; audio no line names ->
  unlisted_audio. SPEAKERS.TXT / CHAPTERS.TXT / BOOKS.TXT at the top are metadata and ignored.
`--src` is LibriSpeech/ (or its parent), or one subset folder (`LibriSpeech/dev-clean`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from alm.data_prep.common import Entry, PrepError, Scan, Skip, check_src, unlisted, walk_audio
from alm.data_prep.librispeech_finetuning import read_folder

NAME = "librispeech"
DEFAULT_SHARD_SIZE = 1000


def _has_chapters(folder: Path) -> bool:
    """A subset folder: {spk}/{chap}/ sub-folders, one of them holding a *.trans.txt."""
    for spk in sorted(p for p in folder.iterdir() if p.is_dir()):
        for chap in sorted(p for p in spk.iterdir() if p.is_dir()):
            if any(n.lower().endswith(".trans.txt") for n in os.listdir(chap)):
                return True
    return False


def _subsets(src: Path) -> tuple[Path, list[Path]]:
    """(root that audio paths are relative to, the subset folders to read)."""
    if (src / "LibriSpeech").is_dir() and not _has_chapters(src):
        src = src / "LibriSpeech"
    if _has_chapters(src):  # one subset folder given
        return src.parent, [src]
    subsets = [p for p in sorted(src.iterdir()) if p.is_dir() and _has_chapters(p)]
    if not subsets:
        raise PrepError(f"{src}: no LibriSpeech subset found (expected {{subset}}/{{speaker}}/{{chapter}}/ folders "
                        "with *.trans.txt, e.g. LibriSpeech/dev-clean/1272/128104/1272-128104.trans.txt)")
    return src, subsets


def scan(src) -> Scan:
    root, subsets = _subsets(check_src(src))
    entries: list[Entry] = []
    skips: list[Skip] = []
    claimed: set[Path] = set()
    audio: list[Path] = []
    for subset in subsets:
        for dirpath, dirnames, filenames in os.walk(subset):
            dirnames.sort()
            e, s, _ = read_folder(Path(dirpath), sorted(filenames), root, subset.name, claimed)
            entries += e
            skips += s
        audio += walk_audio(subset)
    skips += unlisted(audio, claimed, root, lambda p: p.name[: -len(p.suffix)],
                      lambda p: p.relative_to(root).parts[0])
    return Scan(root, entries, skips)


def main(argv: list[str] | None = None) -> int:
    from alm.data_prep.cli import main as cli_main

    return cli_main([NAME, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
