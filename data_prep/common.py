"""Shared pieces of every dataset scan: sample/skip records and audio-file lookup.

A dataset module's `scan(src)` returns a `Scan`: the dataset folder that audio paths are
relative to, the samples whose audio file exists (`Entry`), and the samples already known
to be skipped (`Skip`: missing or unlisted audio). Decoding decides the rest
(`corrupt_audio`, `empty_audio`) in `pipeline`.

File names are used verbatim: lookups compare the exact strings `os.listdir` returns with the
exact strings of the index (no case folding, no Unicode normalisation, no HTML unescaping),
so `Chris&#39; Elevator.wav`, `x.WAV` or an NFD name on disk vs NFC in the CSV behave as the
rules say. Only the audio *extension* is matched case-insensitively when the layout leaves
it open (AudioCaps `{ytid}_{start}.flac|.wav`, MusicCaps `{ytid}.wav`, ...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

AUDIO_EXTS = (".flac", ".wav")  # preference order when one stem has several audio files
REASONS = ("missing_audio", "corrupt_audio", "empty_audio", "unlisted_audio")


class PrepError(Exception):
    """A problem that stops the whole run (unparsable index, bad output directory, ...)."""


@dataclass
class Entry:
    """One sample whose audio file exists: `path` is relative to the dataset folder (POSIX)."""

    id: str
    split: str
    path: str
    fields: dict[str, Any] = field(default_factory=dict)  # captions/transcript + extras


@dataclass
class Skip:
    id: str
    split: str | None
    reason: str
    path: str
    detail: str = ""


@dataclass
class Scan:
    root: Path  # the dataset folder; Entry.path / Skip.path are relative to it
    entries: list[Entry]
    skips: list[Skip]


def audio_ext(name: str) -> str | None:
    """The lower-cased audio extension of a file name ('.flac'/'.wav'), or None."""
    ext = os.path.splitext(name)[1].lower()
    return ext if ext in AUDIO_EXTS else None


def rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def list_files(folder: Path) -> list[str]:
    """Names of the plain files directly in `folder` (sorted); [] when it does not exist."""
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if e.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return []


def walk_audio(folder: Path) -> list[Path]:
    """Every audio file (by extension, any case) below `folder`, recursively, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found.extend(Path(dirpath) / n for n in sorted(filenames) if audio_ext(n))
    return found


def audio_by_stem(names: Iterable[str]) -> dict[str, list[str]]:
    """{stem: [file names]} for the audio files among `names`, best extension first.

    The stem is the name without its LAST extension, so `Yk_uT9K2PzQ_20.flac` -> `Yk_uT9K2PzQ_20`
    and `a.b.WAV` -> `a.b`. Preference: `.flac` before `.wav`, exact lower case first.
    """
    out: dict[str, list[str]] = {}
    for name in names:
        ext = audio_ext(name)
        if ext:
            out.setdefault(name[: -len(ext)], []).append(name)
    for stem, files in out.items():
        files.sort(key=lambda n: (AUDIO_EXTS.index(audio_ext(n)), n[len(stem):] != audio_ext(n), n))
    return out


def first_dir(*candidates: Path) -> Path | None:
    for c in candidates:
        if c.is_dir():
            return c
    return None


def unlisted(files: Iterable[Path], claimed: set[Path], root: Path, id_of, split_of) -> list[Skip]:
    """`unlisted_audio` skips for the audio files nobody's index claimed.

    `id_of(path)` gives the id such a file would have had, `split_of(path)` its split (or None).
    """
    return [
        Skip(id_of(p), split_of(p), "unlisted_audio", rel(p, root), "no index entry references this file")
        for p in files
        if p not in claimed
    ]


def check_src(src: str | os.PathLike) -> Path:
    path = Path(src)
    if not path.is_dir():
        raise PrepError(f"source folder {str(path)!r} does not exist or is not a directory")
    return path
