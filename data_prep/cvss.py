"""CVSS (Jia et al. 2022): target-language speech for the CoVoST 2 clips (speech-to-speech translation).
One CVSS-C or CVSS-T language-pair folder, as released (e.g. `cvss_c_fr_en_v1.0/`):

    SRC/train.tsv, SRC/dev.tsv, SRC/test.tsv     lines `<Common Voice clip file name>\t<target text>`,
                                                 no header (e.g. `common_voice_fr_17732749.mp3\tWhy not?`)
    SRC/train/<clip file name>.wav ...           the target speech of that clip (`common_voice_fr_17732749.mp3.wav`;
    SRC/dev/..., SRC/test/...                    24 kHz mono in the release)

Samples: one per TSV row, split = the TSV's. Natural id and shard key: the clip's file name without its
audio extension (`common_voice_fr_17732749`), exactly as `alm prep covost2` keys the source clip, so a
token set of these shards joins the covost2 prep shards by key. Shards are `{split}-{index:06d}.tar`
of covost2's shard size (samples sorted by id in each split, as every prep writes them): with the same
clips on both sides (a complete download) the shard files have the same names and keys as covost2's.
Each sample's json carries `translation` (the target text, verbatim) and `source_clip` (the TSV's name).

Skips (manifest.json, counted in the summary table; nothing is dropped silently):
* a row whose wav is absent -> missing_audio; an unreadable / empty one -> corrupt_audio / empty_audio;
* a wav of a split folder that no row names -> unlisted_audio;
* a row with the wrong number of fields, an empty clip name or text, or a clip listed twice in a
  split -> bad_row (with file and line).
A wav converted to another format keeps its name up to the extension (`x.mp3.flac`) or the clip's stem
(`x.flac`) and is found by it. A folder with none of train/dev/test.tsv stops the run (PrepError).
TSVs are streamed line by line and each split folder is listed once (one scandir, no per-row stat).
"""

from __future__ import annotations

import sys
from pathlib import Path

from alm.data_prep.common import Candidate, PrepError, Row, Scan, Skip, audio_by_stem, check_src, list_files, resolve
from alm.data_prep.covost2 import DEFAULT_SHARD_SIZE as COVOST2_SHARD_SIZE
from alm.data_prep.covost2 import _stem

NAME = "cvss"
DEFAULT_SHARD_SIZE = COVOST2_SHARD_SIZE  # the same shard boundaries as alm prep covost2's
SPLITS = ("train", "dev", "test")


def _lines(path: Path):
    """(line number, fields) of a header-less tab-separated file, no quoting; LF or CRLF; BOM dropped;
    blank lines skipped. Undecodable line -> PrepError naming file and line."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise PrepError(f"{path}: cannot read: {exc.strerror or exc}") from None
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


def _rows(root: Path, split: str, skips: list[Skip]) -> list[tuple[str, str, str]]:
    """[(clip file name, target text, where)] of SRC/{split}.tsv; bad lines -> bad_row skips."""
    tsv = root / f"{split}.tsv"
    seen: dict[str, str] = {}
    out = []
    for no, fields in _lines(tsv):
        where = f"{tsv.name} line {no}"
        clip = fields[0].strip()
        sid = (_stem(clip) if len(fields) > 1 else "") or where  # a line without a tab names no clip
        if len(fields) != 2:
            skips.append(Skip(sid, split, "bad_row", f"{split}/{clip}.wav" if len(fields) > 1 else tsv.name,
                              f"{where}: expected 2 tab-separated fields (clip, text), found {len(fields)}"))
            continue
        text = fields[1]
        if not clip or not text.strip():
            skips.append(Skip(sid, split, "bad_row", f"{split}/{clip}.wav",
                              f"{where}: empty {'clip name' if not clip else 'target text'}"))
            continue
        if clip in seen:
            skips.append(Skip(sid, split, "bad_row", f"{split}/{clip}.wav", f"{where}: {clip} listed again "
                              f"(first at {seen[clip]})"))
            continue
        seen[clip] = where
        out.append((clip, text, where))
    return out


def scan(src) -> Scan:
    root = check_src(src)
    splits = [s for s in SPLITS if (root / f"{s}.tsv").is_file()]
    if not splits:
        raise PrepError(f"{root}: no train.tsv, dev.tsv or test.tsv (expected a CVSS-C / CVSS-T language-pair folder: "
                        "{split}.tsv with `clip<TAB>text` lines and {split}/<clip>.wav)")
    skips: list[Skip] = []
    todo: list[Row] = []
    files: list[str] = []
    for split in splits:
        names = [n for n in list_files(root / split)]
        found = audio_by_stem(names)  # `x.mp3.wav` -> stem `x.mp3`; `x.wav` -> `x`
        files += [f"{split}/{n}" for stems in found.values() for n in stems]
        for clip, text, _ in _rows(root, split, skips):
            stem = _stem(clip)
            cands = [Candidate(f"{split}/{n}", (0,) if n == f"{clip}.wav" else (1,),
                               f"{split}/{{clip}}.wav" if n == f"{clip}.wav" else f"{split}/{{clip}}.*",
                               exact=n == f"{clip}.wav") for n in found.get(clip, ())]
            if stem != clip:
                cands += [Candidate(f"{split}/{n}", (2,), f"{split}/{{stem}}.*") for n in found.get(stem, ())]
            todo.append(Row(stem, split, {"translation": text, "source_clip": clip}, cands, f"{split}/{clip}.wav",
                            f"{split}/{{clip}}.wav, {split}/{{clip}}.<any audio ext>, {split}/{{stem}}.<any audio ext>"))
    entries, more = resolve(todo, files, lambda p: (_stem(_stem(p.rsplit("/", 1)[-1])), p.split("/", 1)[0],
                                                     f"no row of {p.split('/', 1)[0]}.tsv names it"))
    return Scan(root, entries, skips + more)


def main(argv: list[str] | None = None) -> int:
    from alm.data_prep.cli import main as cli_main

    return cli_main([NAME, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
