"""Shared pieces of every dataset scan: sample/skip records and audio-file lookup.

A dataset module's `scan(src)` returns a `Scan`: the dataset folder that audio paths are
relative to, the samples whose audio file exists (`Entry`), and the samples and files already
known to be skipped (`Skip`: missing, unlisted, duplicate, ambiguous or excluded audio).
Decoding decides the rest (`corrupt_audio`, `empty_audio`, `unsupported_format`) in `pipeline`.

File names are used verbatim: lookups compare the exact strings `os.listdir` returns with the
exact strings of the index (no case folding, no Unicode normalisation, no HTML unescaping),
so `Chris&#39; Elevator.wav`, `x.WAV` or an NFD name on disk vs NFC in the CSV behave as the
rules say. Only the audio *extension* is matched case-insensitively when the layout leaves
it open (AudioCaps `{ytid}_{start}.flac|.wav`, MusicCaps `{ytid}.wav`, ...).

Datasets whose audio the user names (YouTube downloads, archives) go through `resolve`: every
index row lists the files that could be its audio (`Candidate`, found by dictionary lookups in
one scan of each audio folder, never a per-row glob), each with a preference rank, and
`resolve` decides, reporting every file and row it could not use:
* a row with no candidate -> `missing_audio` (detail: the patterns tried);
* a file no row's patterns match -> `unlisted_audio` (detail: the patterns tried);
* a row with several candidates keeps the most preferred one (lower rank, then the extension
  order of AUDIO_EXTS, then a lower-case extension); the others -> `duplicate_audio`;
* a file that several rows could claim (e.g. `{ytid}.wav` when the index has two clips of that
  video), or two equally preferred files for one row -> `ambiguous_audio`: never resolved by
  chance. An exact match (`Candidate.exact`) is never shared: it takes the file from looser
  patterns of other rows.
`excluded` is for samples a user asked to leave out (`alm prep wavcaps --exclude-ids`).
`bad_row` is an index row that cannot become a sample (wrong field count, empty path or text,
listed twice) in an index too large to reject whole for one bad line (`alm prep covost2`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

# Audio file extensions, in preference order when one stem has several audio files: lossless
# first, then the lossy codecs (Opus, Vorbis, AAC, MP3), then extensions that look like audio but
# that no tested decoder here handles: those are matched too and reported as unsupported_format
# (alm.data.audio.decoder_for says which decoder reads each supported one).
DECODED_EXTS = (".flac", ".wav", ".aiff", ".aif", ".opus", ".ogg", ".oga", ".m4a", ".webm", ".aac", ".mp3")
UNSUPPORTED_EXTS = (".wma", ".ape", ".wv", ".amr", ".ac3", ".mka", ".mid", ".midi")
AUDIO_EXTS = DECODED_EXTS + UNSUPPORTED_EXTS
REASONS = ("missing_audio", "corrupt_audio", "empty_audio", "unsupported_format", "unlisted_audio", "duplicate_audio",
           "ambiguous_audio", "excluded", "bad_row")


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
    """The lower-cased audio extension of a file name (one of AUDIO_EXTS: '.flac', '.mp3', '.wma', ...), or None."""
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
    and `a.b.WAV` -> `a.b`. Preference: AUDIO_EXTS order (`.flac`, `.wav`, ... `.mp3`), exact lower case first.
    """
    out: dict[str, list[str]] = {}
    for name in names:
        ext = audio_ext(name)
        if ext:
            out.setdefault(name[: -len(ext)], []).append(name)
    for stem, files in out.items():
        files.sort(key=lambda n: (AUDIO_EXTS.index(audio_ext(n)), n[len(stem):] != audio_ext(n), n))
    return out


def ext_rank(name: str) -> tuple[int, bool]:
    """Preference of an audio file name by extension: AUDIO_EXTS order, then lower case first."""
    ext = audio_ext(name)
    return AUDIO_EXTS.index(ext), not name.endswith(ext)


def audio_stem(name: str) -> str:
    """The file name without its audio extension (`a.b.WAV` -> `a.b`); `name` must be audio."""
    return name[: -len(audio_ext(name))]


def audio_files(folder: Path, root: Path, recursive: bool = False) -> list[str]:
    """Audio files in `folder` (and below, if `recursive`) as sorted POSIX paths relative to `root`.

    One `os.scandir` per directory and plain strings, so a folder of a million clips costs one
    listing and a few hundred MB at most, never a stat or glob per index row.
    """
    found: list[str] = []
    base = folder.relative_to(root).as_posix()
    prefix = "" if base == "." else base + "/"
    pending = [(folder, prefix)]
    while pending:
        path, pre = pending.pop()
        try:
            with os.scandir(path) as it:
                for e in it:
                    if e.is_file():
                        if audio_ext(e.name):
                            found.append(pre + e.name)
                    elif recursive and e.is_dir(follow_symlinks=False) and not e.name.startswith("."):
                        pending.append((Path(e.path), pre + e.name + "/"))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return sorted(found)


def by_stem(paths: Iterable[str]) -> dict[str, list[str]]:
    """{stem of the base name: [paths]} (paths as given, in their order)."""
    out: dict[str, list[str]] = {}
    for p in paths:
        out.setdefault(audio_stem(p.rsplit("/", 1)[-1]), []).append(p)
    return out


@dataclass(frozen=True, slots=True)
class Candidate:
    """A file that may be a row's audio: `path` relative to the dataset folder, `rank` the
    pattern's preference (lower wins), `pattern` its name for the manifest."""

    path: str
    rank: tuple
    pattern: str
    exact: bool = False  # the layout's canonical name for this row: never shared with looser matches


@dataclass(slots=True)
class Row:
    """An index row looking for its audio file."""

    id: str
    split: str | None
    fields: dict[str, Any]
    candidates: list[Candidate]
    expected: str  # the path reported when nothing matches (the layout's canonical name)
    tried: str  # the patterns tried, for the manifest


def _order(c: Candidate) -> tuple:
    name = c.path.rsplit("/", 1)[-1]
    return (*c.rank, *ext_rank(name))


def resolve(rows: list[Row], files: Iterable[str], describe) -> tuple[list[Entry], list[Skip]]:
    """Decide which file is each row's audio (see the module docstring for the rules).

    `files` are every audio file in the folders the layout scans; `describe(path)` gives
    (id, split, detail) of an `unlisted_audio` skip for a file no row matches.
    """
    exact_owner: dict[str, set[int]] = {}
    for i, row in enumerate(rows):
        for c in row.candidates:
            if c.exact:
                exact_owner.setdefault(c.path, set()).add(i)
    cands: list[list[Candidate]] = []
    claims: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        best: dict[str, Candidate] = {}
        for c in row.candidates:
            owners = exact_owner.get(c.path)
            if owners and i not in owners and not c.exact:
                continue  # another row's exact name
            if c.path not in best or _order(c) < _order(best[c.path]):
                best[c.path] = c
        mine = sorted(best.values(), key=lambda c: (_order(c), c.path))
        cands.append(mine)
        for c in mine:
            claims.setdefault(c.path, []).append(i)
    entries: list[Entry] = []
    skips: list[Skip] = []
    chosen: dict[int, str] = {}  # row index -> the file it keeps
    mentioned: set[str] = set()  # files named in an ambiguous row's skip
    for i, row in enumerate(rows):
        if not cands[i]:
            skips.append(Skip(row.id, row.split, "missing_audio", row.expected, f"no file matches; tried {row.tried}"))
            continue
        own = [c for c in cands[i] if len(claims[c.path]) == 1]
        listed = ", ".join(f"{c.path} ({c.pattern})" for c in cands[i])
        if not own or (len(own) > 1 and _order(own[0]) == _order(own[1])):
            if own:
                detail = f"equally good matches, none used: {listed}"
            else:
                others = sorted({rows[j].id for c in cands[i] for j in claims[c.path] if j != i})
                detail = f"{listed}: also matched by {', '.join(others)}; not used for any of them"
            skips.append(Skip(row.id, row.split, "ambiguous_audio", cands[i][0].path, detail))
            mentioned.update(c.path for c in cands[i])
            continue
        entries.append(Entry(row.id, row.split, own[0].path, row.fields))
        chosen[i] = own[0].path
    used = set(chosen.values())
    for path, owners in claims.items():
        if path in used or path in mentioned:
            continue
        keepers = [j for j in owners if j in chosen]
        j = keepers[0] if keepers else owners[0]
        pattern = next(c.pattern for c in cands[j] if c.path == path)
        also = sorted({rows[k].id for k in owners if k != j})
        detail = f"matches {rows[j].id} ({pattern})" + (f" and {', '.join(also)}" if also else "")
        detail += f"; {chosen[j]} is used" if keepers else "; not used"
        skips.append(Skip(rows[j].id, rows[j].split, "duplicate_audio" if keepers else "ambiguous_audio", path, detail))
    for path in files:
        if path not in claims:
            sid, split, detail = describe(path)
            skips.append(Skip(sid, split, "unlisted_audio", path, detail))
    return entries, skips


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
