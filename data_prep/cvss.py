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
When the two sides hold different clips (a Common Voice clip missing, a wav unreadable), the count-based
boundaries shift; `--like COVOST2_OUT` then lays the shards out as that prep's: one shard per shard of
it, of the same file name, holding exactly its keys that CVSS has (in its order). A covost2 sample
without a CVSS target is then only itself missing from the joined set (the loader counts it, see
data.max_corrupt_fraction), never a shift of every later shard; it is listed in the manifest's
`like.no_target` (count and the first 100 ids), and CVSS samples that covost2 prep lacks in `like.dropped`
(their reason: not_in_like).

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

import json
import sys
from pathlib import Path

from alm.data_prep.common import Candidate, PrepError, Row, Scan, Skip, audio_by_stem, check_src, list_files, resolve
from alm.data_prep.covost2 import DEFAULT_SHARD_SIZE as COVOST2_SHARD_SIZE
from alm.data_prep.covost2 import _stem, tsv_lines

NAME = "cvss"
DEFAULT_SHARD_SIZE = COVOST2_SHARD_SIZE  # the same shard boundaries as alm prep covost2's
SPLITS = ("train", "dev", "test")


def _rows(root: Path, split: str, skips: list[Skip]) -> list[tuple[str, str, str]]:
    """[(clip file name, target text, where)] of SRC/{split}.tsv; bad lines -> bad_row skips."""
    tsv = root / f"{split}.tsv"
    seen: dict[str, str] = {}
    out = []
    for no, fields in tsv_lines(tsv):
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


def scan(src, like: str | None = None) -> Scan:
    """`like` is checked here (a prep folder with manifest.json) and used by `finish`."""
    root = check_src(src)
    if like is not None and not (Path(like) / "manifest.json").is_file():
        raise PrepError(f"--like {like}: no manifest.json there (expected the `alm prep covost2` output folder)")
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


def finish(out, manifest: dict, like: str | None = None) -> dict:
    """--like COVOST2_OUT: rewrite the shards just written into that prep's layout (see the module docstring).
    Samples are copied member by member through the shard index (random access, one sample in memory);
    each new shard is atomic; the old shards are removed only after all new ones exist, the manifest first
    and rewritten last. -> the new manifest."""
    if like is None:
        return manifest
    from alm.data.index import read_sample, shard_index
    from alm.data.shards import TarShard
    from alm.data_prep.pipeline import MANIFEST, write_manifest

    out, like_dir = Path(out), Path(like)
    ours = sorted(out.glob("*.tar"))
    where: dict[str, tuple] = {}
    for path in ours:
        index = shard_index(str(path))
        if index.problem:
            raise PrepError(f"{path}: {index.problem} (just written: disk full?)")
        where.update((k, (index, i)) for i, k in enumerate(index.keys))
    like_splits = json.loads((like_dir / MANIFEST).read_text())["splits"]
    if not any(v["shards"] for v in like_splits.values()):
        raise PrepError(f"--like {like}: its manifest.json lists no shards")
    tmp = out / ".like"
    tmp.mkdir(exist_ok=True)
    placed: set[str] = set()
    no_target: list[str] = []
    splits: dict[str, dict] = {}
    for split, info in sorted(like_splits.items()):
        mine = splits.setdefault(split, {"shards": [], "num_samples": 0, "hours": 0.0})
        seconds = 0.0
        for name in info["shards"]:
            shard = TarShard(tmp / name)
            for key in shard_index(str(like_dir / name)).keys:
                if key not in where:
                    no_target.append(key)
                    continue
                index, i = where[key]
                sample = read_sample(index, i)
                shard.write({k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")})
                seconds += float(json.loads(sample["json"]).get("duration_s", 0.0))
                placed.add(key)
                mine["num_samples"] += 1
            shard.close()
            mine["shards"].append(name)
        mine["hours"] = round(seconds / 3600.0, 6)
    dropped = sorted(set(where) - placed)
    (out / MANIFEST).unlink()  # no manifest names a shard while the sets are swapped
    for path in ours:
        path.unlink()
    for path in sorted(tmp.glob("*.tar")):
        path.rename(out / path.name)
    tmp.rmdir()
    manifest = {**manifest, "splits": splits,
                "skipped": manifest["skipped"] + [{"id": k, "split": None, "reason": "not_in_like", "path": "",
                                                    "detail": f"no sample {k} in --like {like}"} for k in dropped],
                "like": {"dir": str(like_dir), "no_target": {"count": len(no_target), "first": no_target[:100]},
                         "dropped": len(dropped)}}
    write_manifest(out / MANIFEST, manifest)
    if no_target or dropped:
        print(f"note: --like {like}: {len(no_target)} of its samples have no CVSS target; {len(dropped)} CVSS "
              "sample(s) it lacks were left out (manifest.json: like, skipped)", file=sys.stderr)
    return manifest


def main(argv: list[str] | None = None) -> int:
    from alm.data_prep.cli import main as cli_main

    return cli_main([NAME, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
