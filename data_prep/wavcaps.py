"""WavCaps (cvssp/WavCaps on the Hugging Face hub): ~400k clips with ChatGPT-processed captions
from four sources, each a split of its own (every split is training data):

    SRC/json_files/{subset}/*.json    (or SRC/json/{subset}/*.json)
        {"num_captions_per_audio": 1, "data": [{"id", "caption", "audio", "duration", ...}]}
        (a bare list of entries is read too; the GitHub copy of sb_final.json is one)
    SRC/{audio folder}/{subset}/...    the flac files from Zip_files/{subset}/ (any nesting)

subset       json (release)          audio file of an entry   extra fields kept in `metadata`
AudioSet_SL  as_final.json           id "Y{ytid}.wav" -> Y{ytid}.flac (PANNs names; {ytid}.flac accepted)
BBC_Sound_Effects  bbc_final.json    {id}.flac               description, category, ...
FreeSound    fsd_final.json          {id}.flac               file_name, href, tags, description, author, download_link
SoundBible   sb_final.json           {id}.flac               title, description, author, href

The audio folder of a subset is the first present of Audio/{subset}/ (what aac-datasets
extracts to), audio/{subset}/, waveforms/{subset}/, Zip_files/{subset}/ (unzipped in place)
and {subset}/; it is searched recursively, so the zips' inner folders need not be flattened.

Each sample: `id` = the entry's id exactly (as a string), split = the subset, `captions` =
[caption] (an id listed again with another caption gets it appended, an identical repeat is the
same row), `subset`, `source_id` (the id as the json has it), `license` (the entry's own
`license`/`licence` field if it has one, else the subset's terms below) and `metadata` (the
rest of the entry; `audio` is a placeholder path in the release and `duration` is not trusted:
durations come from the audio).

Licences (WavCaps itself: academic use only, https://github.com/XinhaoMei/WavCaps#license):
  AudioSet_SL        audio of YouTube videos (AudioSet strongly-labelled subset): the uploaders'
                     rights, research use only.
  BBC_Sound_Effects  BBC RemArc licence: personal, educational and research use, no commercial
                     use (https://sound-effects.bbcrewind.co.uk/licensing).
  FreeSound          each clip its own Creative Commons licence (CC0, CC BY, CC BY-NC, ...),
                     stated on its Freesound page (`href`).
  SoundBible         each clip's terms as stated on its SoundBible page (https://soundbible.com/about.php).

`--exclude-ids FILE` leaves listed entries out (reason `excluded` in the manifest): a WavCaps
blacklist json (`json_files/blacklist/blacklist_exclude_*.json`: {"AudioSet": [...],
"FreeSound": [...]}, the ids overlapping AudioCaps / Clotho evaluation data) or a text file
with one id per line ('#' comments allowed), which applies to every subset. Ids compare without
a trailing audio extension, so `Yabc.wav` and `Yabc` are the same.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from alm.data_prep.common import (
    Candidate, Entry, PrepError, Row, Scan, Skip, audio_ext, audio_files, audio_stem, by_stem, check_src, first_dir,
    resolve,
)
from alm.data_prep.textio import finite

NAME = "wavcaps"
DEFAULT_SHARD_SIZE = 500
SUBSETS = ("AudioSet_SL", "BBC_Sound_Effects", "FreeSound", "SoundBible")
NOT_SUBSETS = ("blacklist",)
ACADEMIC = "WavCaps: academic use only"
LICENSES = {
    "AudioSet_SL": f"{ACADEMIC}; audio of YouTube videos (AudioSet strongly-labelled subset), the uploaders' rights",
    "BBC_Sound_Effects": f"{ACADEMIC}; BBC RemArc licence: personal, educational and research use, non-commercial "
                         "(https://sound-effects.bbcrewind.co.uk/licensing)",
    "FreeSound": f"{ACADEMIC}; the clip's own Creative Commons licence on its Freesound page (see metadata.href)",
    "SoundBible": f"{ACADEMIC}; the clip's terms on its SoundBible page (https://soundbible.com/about.php)",
}
BLACKLIST_KEYS = {"AudioSet": "AudioSet_SL", "BBC": "BBC_Sound_Effects", "FreeSound": "FreeSound",
                  "SoundBible": "SoundBible", **{s: s for s in SUBSETS}}


def _bare(sid: str) -> str:
    """An id without a trailing audio extension (`Yabc.wav` -> `Yabc`)."""
    return audio_stem(sid) if audio_ext(sid) else sid


def read_exclusions(path: str | Path) -> dict[str | None, set[str]]:
    """{subset or None (= every subset): {bare ids}} from a blacklist json or a one-id-per-line file."""
    path = Path(path)
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PrepError(f"--exclude-ids {path}: cannot read: {exc}") from None
    if raw.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise PrepError(f"--exclude-ids {path}: not valid JSON: {exc}") from None
        if isinstance(data, list):
            data = {None: data}
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise PrepError(f"--exclude-ids {path}: expected {{subset: [ids]}} or [ids]")
        out: dict[str | None, set[str]] = {}
        for key, ids in data.items():
            if key is not None and key not in BLACKLIST_KEYS:
                raise PrepError(f"--exclude-ids {path}: unknown subset {key!r} (expected one of "
                                f"{', '.join(sorted(BLACKLIST_KEYS))})")
            out.setdefault(None if key is None else BLACKLIST_KEYS[key], set()).update(_bare(str(i)) for i in ids)
        return out
    lines = (line.split("#", 1)[0].strip() for line in raw.splitlines())
    return {None: {_bare(line) for line in lines if line}}


def _entries_of(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PrepError(f"{path}: cannot read WavCaps json: {exc}") from None
    items = data.get("data") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise PrepError(f"{path}: expected {{\"data\": [...]}} or a list of entries")
    for k, item in enumerate(items):
        if not isinstance(item, dict) or "id" not in item or not isinstance(item.get("caption"), str):
            raise PrepError(f"{path}: entry {k}: expected an object with \"id\" and a string \"caption\"")
    return finite(items)


def read_subset(folder: Path) -> dict[str, dict[str, Any]]:
    """{id: {"source_id", "captions", "metadata"}} over every *.json of one subset folder (name order)."""
    clips: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")):
        for item in _entries_of(path):
            sid = str(item["id"])
            if sid in clips:
                if item["caption"] not in clips[sid]["captions"]:
                    clips[sid]["captions"].append(item["caption"])
                continue
            rest = {k: v for k, v in item.items() if k not in ("id", "caption")}
            clips[sid] = {"source_id": item["id"], "captions": [item["caption"]], "metadata": rest}
    return clips


def find_json(root: Path) -> dict[str, Path]:
    base = first_dir(root / "json_files", root / "json")
    if base is None:
        raise PrepError(f"{root}: no WavCaps metadata found (expected json_files/{{subset}}/*.json)")
    found = {}
    for d in sorted(p for p in base.iterdir() if p.is_dir() and any(p.glob("*.json"))):
        if d.name in NOT_SUBSETS:
            continue
        if d.name not in SUBSETS:
            raise PrepError(f"{d}: not a WavCaps subset (expected {', '.join(SUBSETS)}; blacklist/ is skipped)")
        found[d.name] = d
    if not found:
        raise PrepError(f"{base}: no subset folder with json files ({', '.join(SUBSETS)})")
    return found


def audio_dir(root: Path, subset: str) -> Path:
    places = [root / p / subset for p in ("Audio", "audio", "waveforms", "Zip_files")] + [root / subset]
    return first_dir(*places) or places[0]


def scan(src, exclude_ids: str | Path | None = None) -> Scan:
    root = check_src(src)
    excluded = read_exclusions(exclude_ids) if exclude_ids else {}
    listed = Path(exclude_ids).name if exclude_ids else None  # no absolute paths in a manifest
    entries: list[Entry] = []
    skips: list[Skip] = []
    for subset, folder in find_json(root).items():
        audio = audio_dir(root, subset)
        files = audio_files(audio, root, recursive=True) if audio.is_dir() else []
        stems = by_stem(files)
        base = audio.relative_to(root).as_posix()
        drop = excluded.get(None, set()) | excluded.get(subset, set())
        rows: list[Row] = []
        taken: set[str] = set()  # the files of excluded entries: neither used nor unlisted
        for sid, clip in read_subset(folder).items():
            bare = _bare(sid)
            cands = [Candidate(p, (0,), "{id}", exact=True) for p in stems.get(bare, [])]
            if subset == "AudioSet_SL" and bare.startswith("Y"):
                cands += [Candidate(p, (1,), "{id} without Y") for p in stems.get(bare[1:], [])]
            if bare in drop:
                where = cands[0].path if cands else f"{base}/{bare}.flac"
                skips.append(Skip(sid, subset, "excluded", where, f"listed in --exclude-ids {listed}"))
                taken.update(c.path for c in cands)
                continue
            meta = clip["metadata"]
            own = next((meta[k] for k in ("license", "licence") if isinstance(meta.get(k), str)), None)
            fields = {"captions": clip["captions"], "subset": subset, "source_id": clip["source_id"],
                      "license": own or LICENSES[subset], "metadata": meta}
            tried = "{id}" + (", {id} without the leading Y" if subset == "AudioSet_SL" else "") + f" under {base}/"
            rows.append(Row(sid, subset, fields, cands, f"{base}/{bare}.flac", tried))

        def describe(path: str, subset=subset):
            tried = "{id}, Y{stem}" if subset == "AudioSet_SL" else "{id}"
            detail = f"no entry of json_files/{subset}/ matches (tried {tried})"
            return audio_stem(path.rsplit("/", 1)[-1]), subset, detail

        e, s = resolve(rows, [f for f in files if f not in taken], describe)
        entries += e
        skips += s
    return Scan(root, entries, skips)


def main(argv: list[str] | None = None) -> int:
    from alm.data_prep.cli import main as cli_main

    return cli_main([NAME, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
