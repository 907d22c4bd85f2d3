"""LibriLight unlabelled: `{subset}/{speaker}/{book_dir}/{stem}.flac` + optional `{stem}.json`.

`--src` is the LibriLight root holding the subset folders small/, medium/, large/ and
duplicate/ (those present); the split is the subset name. A subset folder itself is accepted
too. librispeech_finetuning/ (the labelled set) is skipped. Any other folder under the root
(a stray `backup/`, `small_cut/`, ...) is not a split: every audio file in it, and any audio
file directly in the root, is reported as unlisted_audio (split null) and not prepared.

Pitfalls handled:
* One sample per file (whole chapters, minutes long), id `{speaker}/{book_dir}/{stem}`;
  voice_activity stays in the metadata, cropping is the loader's job.
* Sidecars are optional and may be unparsable (-> metadata null, clip kept); Python's json
  writes bare `NaN` for a missing SNR, which strict parsers reject: accepted and stored as null.
  Durations come from the audio, never from `file_length_sec`.
* A sidecar without its audio -> missing_audio; audio files not at speaker/book/file depth ->
  unlisted_audio (id = their path in the subset without the extension); a second audio file
  for one id (`x.flac` + `x.wav`) -> duplicate_audio (AUDIO_EXTS order picks the one used).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from alm.data_prep.common import Entry, PrepError, Scan, Skip, audio_ext, audio_files, check_src, ext_rank, rel
from alm.data_prep.textio import read_sidecar

NAME = "librilight"
DEFAULT_SHARD_SIZE = 50  # whole chapters: tens of MB each
KNOWN_SUBSETS = ("small", "medium", "large", "duplicate")
NOT_SUBSETS = ("librispeech_finetuning",)


def find_subsets(root: Path) -> tuple[Path, list[str], list[str] | None]:
    """(LibriLight root, subset names, stray folder names or None when --src is one subset folder)."""
    children = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if root.name in KNOWN_SUBSETS and not any(c in KNOWN_SUBSETS for c in children):
        return root.parent, [root.name], None
    subsets = [c for c in children if c in KNOWN_SUBSETS]
    if not subsets:
        found = f" (found {', '.join(c + '/' for c in children)})" if children else ""
        raise PrepError(f"{root}: no LibriLight subset folders (small/, medium/, large/, duplicate/){found}")
    return root, subsets, [c for c in children if c not in KNOWN_SUBSETS and c not in NOT_SUBSETS]


def stray_audio(root: Path, strays: list[str] | None) -> list[Skip]:
    """unlisted_audio for audio in non-subset folders under the root and directly in the root."""
    skips: list[Skip] = []
    if strays is None:  # --src was one subset folder: its siblings are not ours to judge
        return skips
    for path in audio_files(root, root) + [f for d in strays for f in audio_files(root / d, root, recursive=True)]:
        where = path.split("/", 1)[0] + "/" if "/" in path else "the LibriLight root"
        skips.append(Skip(path[: -len(audio_ext(path))], None, "unlisted_audio", path,
                          f"in {where}, which is not a subset folder ({', '.join(KNOWN_SUBSETS)}): not prepared"))
    return skips


def scan_subset(root: Path, subset: str) -> tuple[list[Entry], list[Skip]]:
    base = root / subset
    audio: dict[tuple[str, str, str], list[str]] = {}
    sidecars: dict[tuple[str, str, str], str] = {}
    skips: list[Skip] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        parts = Path(dirpath).relative_to(base).parts
        for name in sorted(filenames):
            ext = audio_ext(name)
            stem, file_ext = os.path.splitext(name)
            if len(parts) == 2 and ext:
                audio.setdefault((*parts, stem), []).append(name)
            elif len(parts) == 2 and file_ext.lower() == ".json":
                sidecars.setdefault((*parts, stem), name)
            elif ext:
                rel_path = Path(dirpath, name).relative_to(base).as_posix()
                skips.append(Skip(rel_path[: -len(ext)], subset, "unlisted_audio", f"{subset}/{rel_path}",
                                  "not at {speaker}/{book_dir}/{file} depth"))
    entries: list[Entry] = []
    for key in sorted(set(audio) | set(sidecars)):
        speaker, book, stem = key
        sample_id = f"{speaker}/{book}/{stem}"
        folder = base / speaker / book
        names = sorted(audio.get(key, []), key=lambda n: (ext_rank(n), n))
        if not names:
            skips.append(Skip(sample_id, subset, "missing_audio", rel(folder / f"{stem}.flac", root),
                              f"sidecar {sidecars[key]} has no audio file"))
            continue
        for extra in names[1:]:
            skips.append(Skip(sample_id, subset, "duplicate_audio", rel(folder / extra, root),
                              f"a second audio file for this id ({names[0]} is used)"))
        metadata = read_sidecar(folder / sidecars[key]) if key in sidecars else None
        entries.append(Entry(sample_id, subset, rel(folder / names[0], root),
                             {"speaker": speaker, "book_dir": book, "metadata": metadata}))
    return entries, skips


def scan(src) -> Scan:
    root, subsets, strays = find_subsets(check_src(src))
    entries: list[Entry] = []
    skips: list[Skip] = stray_audio(root, strays)
    for subset in subsets:
        e, s = scan_subset(root, subset)
        entries += e
        skips += s
    return Scan(root, entries, skips)


def main(argv: list[str] | None = None) -> int:
    from alm.data_prep.cli import main as cli_main

    return cli_main([NAME, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
