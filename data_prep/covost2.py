"""CoVoST 2 (speech translation on Common Voice): the Common Voice language folder the
translations are of (`clips/*.mp3`, `validated.tsv`, ...) plus the CoVoST 2 TSVs, one language pair.

    SRC/clips/common_voice_en_19664034.mp3 ...          Common Voice clips (mp3, as shipped)
    SRC/validated.tsv                                   client_id, path, sentence, ... (Common Voice)
    SRC/covost_v2.en_de.{train,dev,test}.tsv            path, sentence, translation, client_id, ...
                                                        (what CoVoST's get_covost_splits.py writes)
    or SRC/covost_v2.en_de.tsv                          the release file: path, translation, split

Samples: one per TSV row, split = the TSV's (train / dev / test; the release file's `split`
column, where `train_covost` is train too). Natural id: the clip's file name without its
extension (`common_voice_en_19664034`). Each sample's json carries `transcript` (the source
sentence, verbatim), `translation`, `source_lang`, `target_lang` (from the TSV name) and
`speaker` (the Common Voice client_id). A row without `sentence` / `client_id` columns (the
release file) takes them from validated.tsv.

Pitfalls handled:
* Common Voice / CoVoST TSVs are not CSV-quoted: a sentence may start with `"` or hold unpaired
  quotes, so fields are split on tabs only (csv quoting would swallow the following lines).
* One bad line must not stop a 1M-row prep: a row with the wrong number of fields, an empty
  path / sentence / translation, an unknown split, a path listed twice in a split, or one the
  release file has but validated.tsv lacks -> `bad_row` in the manifest (with file and line).
  A TSV without the needed columns stops the run (PrepError naming the file).
* A clip no row's file exists for -> missing_audio; clips converted to another format keep
  their stem (`x.mp3` listed, `x.wav` or `x.flac` on disk) and are found by it.
* clips/ holds every clip of the language, most of them in no CoVoST pair: clips some Common
  Voice or CoVoST TSV in SRC names but this pair does not use are not samples of this dataset
  and are only counted (one line on stderr); clips NO TSV in SRC names -> unlisted_audio.
* Several pairs' TSVs in SRC: choose one with --source-lang / --target-lang.
TSVs are streamed line by line, keeping only the columns used, and clips/ is listed once.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Iterator

from alm.data_prep.common import (
    AUDIO_EXTS, Candidate, PrepError, Row, Scan, Skip, audio_ext, check_src, list_files, resolve,
)

NAME = "covost2"
DEFAULT_SHARD_SIZE = 1000
SPLITS = ("train", "dev", "test")
RELEASE_SPLITS = {"train": "train", "train_covost": "train", "dev": "dev", "test": "test"}
_LANG = r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]+)?"  # en, fr, zh-CN, sv-SE
_TSV = re.compile(rf"^covost_v2\.(?P<src>{_LANG})_(?P<tgt>{_LANG})(?:\.(?P<split>train|dev|test))?\.tsv$")
VALIDATED = "validated.tsv"


def tsv_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a tab-separated file, no quoting, read line by line (a 1.5M-row
    validated.tsv is never held whole); LF or CRLF; a UTF-8 BOM is dropped; blank lines are skipped.
    The file is opened at once (an unreadable one is a PrepError here); an undecodable line -> PrepError
    naming file and line."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise PrepError(f"{path}: cannot read: {exc.strerror or exc}") from None

    def lines() -> Iterator[tuple[int, list[str]]]:
        with f:
            for no, raw in enumerate(f, start=1):
                if no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise PrepError(f"{path}: line {no}: not valid UTF-8 ({exc.reason})") from None
                text = text.rstrip("\n").rstrip("\r")
                if text.strip():
                    yield no, text.split("\t")

    return lines()


def read_tsv(path: Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """(header, iterator of (line number, fields)) of a tab-separated file with a header (tsv_lines)."""
    it = tsv_lines(path)
    try:
        _, header = next(it)
    except StopIteration:
        raise PrepError(f"{path}: line 1: empty file, expected a tab-separated header") from None
    return [h.strip() for h in header], it


def _columns(path: Path, header: list[str], required: tuple[str, ...]) -> dict[str, int]:
    missing = [c for c in required if c not in header]
    if missing:
        raise PrepError(f"{path}: line 1: missing column(s) {', '.join(missing)} in header {header} "
                        f"(expected tab-separated {', '.join(required)})")
    return {c: i for i, c in enumerate(header)}


def _pick_pair(root: Path, source_lang: str | None, target_lang: str | None) -> tuple[str, str, list[tuple]]:
    """(source, target, [(split or None for the release file's column, TSV path)])."""
    pairs: dict[tuple[str, str], dict[str | None, Path]] = {}
    for name in sorted(os.listdir(root)):
        m = _TSV.match(name)
        if m and (root / name).is_file():
            pairs.setdefault((m["src"], m["tgt"]), {})[m["split"]] = root / name
    everything = ", ".join(f"{s}_{t}" for s, t in pairs) or "none"
    chosen = {p: f for p, f in pairs.items()
              if (source_lang is None or p[0] == source_lang) and (target_lang is None or p[1] == target_lang)}
    if not chosen:
        want = f"covost_v2.{source_lang or '{src}'}_{target_lang or '{tgt}'}"
        raise PrepError(f"{root}: no CoVoST 2 TSV {want}.{{train,dev,test}}.tsv (get_covost_splits.py) or {want}.tsv "
                        f"(the release file); language pairs found: {everything}")
    if len(chosen) > 1:
        names = ", ".join(f"{s}_{t}" for s, t in chosen)
        raise PrepError(f"{root}: CoVoST 2 TSVs of several language pairs ({names}); "
                        "choose one with --source-lang and --target-lang")
    (src, tgt), files = next(iter(chosen.items()))
    per_split = [(s, files[s]) for s in SPLITS if s in files]
    if per_split:
        if None in files:
            print(f"note: {root}: using the per-split {', '.join(p.name for _, p in per_split)}; "
                  f"{files[None].name} is not read", file=sys.stderr)
        return src, tgt, per_split
    return src, tgt, [(None, files[None])]


_EXTS = frozenset(AUDIO_EXTS)


def _stem(path: str) -> str:
    """`common_voice_en_1.mp3` -> `common_voice_en_1` (a path without an audio extension as it is).
    Called for every TSV line and clip: one rpartition, not os.path.splitext twice."""
    head, dot, ext = path.rpartition(".")
    return head if dot and "/" not in ext and f".{ext.lower()}" in _EXTS else path


class _Rows:
    """The pair's TSV rows, checked: {(split, path): [sentence, translation, client_id, where]} and bad_row skips."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], list] = {}
        self.skips: list[Skip] = []
        self.named: set[str] = set()  # stems of every clip a row names, bad rows included

    def bad(self, path: str, split: str | None, where: str, detail: str) -> None:
        sid = _stem(path) or where
        self.skips.append(Skip(sid, split, "bad_row", path, f"{where}: {detail}"))

    def read(self, tsv: Path, split: str | None) -> None:
        header, lines = read_tsv(tsv)
        col = _columns(tsv, header, ("path", "translation") + (() if split else ("split",)))
        get = lambda fields, name: fields[col[name]] if name in col else None  # noqa: E731
        for no, fields in lines:
            where = f"{tsv.name} line {no}"
            path = fields[col["path"]].strip() if len(fields) > col["path"] else ""
            self.named.add(_stem(path))
            if len(fields) != len(header):
                self.bad(path, split, where, f"expected {len(header)} tab-separated fields, found {len(fields)}")
                continue
            row_split = split or RELEASE_SPLITS.get(fields[col["split"]])
            if row_split is None:
                self.bad(path, None, where, f"split {fields[col['split']]!r} is none of {', '.join(RELEASE_SPLITS)}")
                continue
            empty = [c for c in ("path", "sentence", "translation", "client_id")
                     if get(fields, c) is not None and not get(fields, c).strip()]
            if empty:
                self.bad(path, row_split, where, f"empty {', '.join(empty)}")
                continue
            key = (row_split, path)
            if key in self.rows:
                self.bad(path, row_split, where, f"{path} listed again (first at {self.rows[key][3]})")
                continue
            self.rows[key] = [get(fields, "sentence"), fields[col["translation"]], get(fields, "client_id"), where]


def _read_common_voice(root: Path, rows: _Rows, covost: set[Path]) -> set[str]:
    """Stems of every clip some Common Voice TSV in `root` names; fills the rows' missing
    sentence / client_id from validated.tsv (a row it lacks -> bad_row)."""
    needy: dict[str, list[list]] = {}
    for (_, path), row in rows.rows.items():
        if row[0] is None or row[2] is None:
            needy.setdefault(path, []).append(row)
    if needy and not (root / VALIDATED).is_file():
        raise PrepError(f"{root}: no {VALIDATED}: the CoVoST TSVs here have no sentence / client_id columns, "
                        "which come from Common Voice's validated.tsv")
    listed: set[str] = set()
    for tsv in sorted(root.glob("*.tsv")):
        if tsv in covost or not tsv.is_file():
            continue
        header, lines = read_tsv(tsv)
        if "path" not in header:
            continue  # reported.tsv, clip_durations.tsv, ...
        fill = needy if tsv.name == VALIDATED else {}
        col = _columns(tsv, header, ("path", "sentence", "client_id") if fill else ("path",))
        for _, fields in lines:
            if len(fields) <= col["path"]:
                continue
            path = fields[col["path"]]
            listed.add(_stem(path))
            for row in fill.get(path, ()):
                if len(fields) == len(header):
                    row[0] = fields[col["sentence"]] if row[0] is None else row[0]
                    row[2] = fields[col["client_id"]] if row[2] is None else row[2]
    for (split, path), row in list(rows.rows.items()):
        if not (row[0] or "").strip() or not (row[2] or "").strip():
            rows.bad(path, split, row[3], f"no sentence / client_id for {path} in {VALIDATED}")
            del rows.rows[(split, path)]
    return listed


def scan(src, source_lang: str | None = None, target_lang: str | None = None) -> Scan:
    root = check_src(src)
    if not (root / "clips").is_dir():
        raise PrepError(f"{root}: no clips/ folder (expected a Common Voice language folder: clips/*.mp3, "
                        f"{VALIDATED}, and the covost_v2.*.tsv files)")
    src_lang, tgt_lang, tsvs = _pick_pair(root, source_lang, target_lang)
    rows = _Rows()
    for split, tsv in tsvs:
        rows.read(tsv, split)
    cv_listed = _read_common_voice(root, rows, {p for _, p in tsvs})

    names = [n for n in list_files(root / "clips") if audio_ext(n)]
    used = rows.named
    by_stem: dict[str, list[str]] = {}  # only the clips some row of the pair names (by stem)
    unlisted: list[str] = []
    other = 0  # clips that only Common Voice's own TSVs name
    for n in names:
        stem = _stem(n)
        if stem in used:
            by_stem.setdefault(stem, []).append(n)
        elif stem in cv_listed:
            other += 1
        else:
            unlisted.append(f"clips/{n}")
    todo: list[Row] = []
    for (split, path), (sentence, translation, client, _) in rows.rows.items():
        stem = _stem(path)
        # the listed name first; the same clip in another format (converted by the user) otherwise
        cands = [Candidate(f"clips/{n}", (0,) if n == path else (1,), "clips/{path}" if n == path else "clips/{stem}.*",
                           exact=n == path) for n in by_stem.get(stem, ())]
        fields = {"transcript": sentence, "translation": translation, "source_lang": src_lang,
                  "target_lang": tgt_lang, "speaker": client}
        todo.append(Row(stem, split, fields, cands, f"clips/{path}", "clips/{path}, clips/{stem}.<any audio ext>"))
    entries, skips = resolve(todo, unlisted, lambda p: (_stem(p.rsplit("/", 1)[-1]), None,
                                                        "no Common Voice or CoVoST TSV in the source folder lists it"))
    if other:
        print(f"note: {other} clip(s) in {root / 'clips'} are Common Voice's but in no covost_v2.{src_lang}_{tgt_lang} "
              "row: not part of this dataset", file=sys.stderr)
    return Scan(root, entries, rows.skips + skips)


def main(argv: list[str] | None = None) -> int:
    from alm.data_prep.cli import main as cli_main

    return cli_main([NAME, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
