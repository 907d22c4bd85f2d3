"""`alm prep wavcaps` on a tiny WavCaps tree built here (tests/fixtures/datasets.py wavcaps()): the
four subsets' json metadata and audio folders -> one split per subset, counts per subset,
captions / subset / source id / licence per sample, `--exclude-ids` with WavCaps' blacklist."""

from __future__ import annotations

import io
import json
import os

import pytest
import soundfile as sf
from fixtures.datasets import WAVCAPS_BLACKLIST, wavcaps

from alm.data.shards import read_shard
from alm.data.splits import resolve_split_spec
from alm.data_prep import wavcaps as wc
from alm.data_prep.cli import main
from alm.data_prep.common import PrepError

SUBSETS = ("AudioSet_SL", "BBC_Sound_Effects", "FreeSound", "SoundBible")


@pytest.fixture()
def tree(tmp_path):
    src = tmp_path / "WavCaps"
    return src, wavcaps(src)


def test_prep_wavcaps_end_to_end(tree, tmp_path, capsys):
    src, expected = tree
    out = tmp_path / "out"
    assert main(["wavcaps", "--src", str(src), "--out", str(out), "--exclude-ids", str(src / WAVCAPS_BLACKLIST),
                 "--workers", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    head = table[1].split()
    row = dict(zip(head, next(line for line in table if line.startswith("FreeSound")).split()))
    assert (row["kept"], row["missing_audio"], row["excluded"]) == ("2", "1", "1")  # one summary row per subset
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "wavcaps"
    assert {s: i["num_samples"] for s, i in manifest["splits"].items()} == {
        "AudioSet_SL": 2, "BBC_Sound_Effects": 1, "FreeSound": 2, "SoundBible": 1}
    assert sorted(p.name for p in out.glob("*.tar")) == [f"{s}-000000.tar" for s in SUBSETS]
    got_skips = {(s["split"], s["id"]): s["reason"] for s in manifest["skipped"]}
    assert got_skips == expected["skipped"]
    assert all(not os.path.isabs(s["path"]) and str(tmp_path) not in s["detail"] for s in manifest["skipped"])
    samples = {}
    for shard in sorted(out.glob("*.tar")):
        for s in read_shard(str(shard)):
            meta = json.loads(s["json"])
            assert shard.name.startswith(meta["split"] + "-")
            samples[f"{meta['split']}/{meta['id']}"] = meta
            assert sf.info(io.BytesIO(s["flac"])).channels == 1
    assert sorted(samples) == sorted(expected["kept"])
    for key, want in expected["kept"].items():
        got = samples[key]
        assert got["dataset"] == "wavcaps" and got["id"] == key.split("/", 1)[1]
        assert got["source_id"] == got["id"]  # the fixture's ids are strings, as in the release
        for field in ("captions", "subset", "split", "metadata", "audio_path", "num_frames", "sample_rate"):
            assert got[field] == want[field], (key, field)
        assert got["license"] == (want["license"] or wc.LICENSES[want["subset"]])
        assert got["duration_s"] == pytest.approx(want["duration_s"], abs=1e-6)  # from the audio, not the json
    # every subset is training data: a directory spec resolves to all four
    train = resolve_split_spec(str(out), "train")
    assert sorted(os.path.basename(p) for p in train.split("::")) == [f"{s}-000000.tar" for s in SUBSETS]


def test_without_exclusions_the_overlap_is_kept_and_reasons_say_why(tree):
    src, _ = tree
    scan = wc.scan(src)
    ids = {(e.split, e.id) for e in scan.entries}
    assert ("AudioSet_SL", "YoverlapAC01.wav") in ids and ("FreeSound", "999") in ids
    why = {(s.split, s.id): (s.reason, s.detail) for s in scan.skips}
    assert why[("FreeSound", "5555")][0] == "missing_audio" and "{id}" in why[("FreeSound", "5555")][1]
    assert why[("AudioSet_SL", "YnotInJson99")] == ("unlisted_audio",
                                                   "no entry of json_files/AudioSet_SL/ matches (tried {id}, Y{stem})")


def test_exclude_ids_text_file_and_bad_lists(tree, tmp_path):
    src, _ = tree
    ids = tmp_path / "ids.txt"
    ids.write_text("# one id per line; a trailing .wav is optional\nYoverlapAC01\n999  # a FreeSound id\n\n")
    skipped = {(s.split, s.id): s.reason for s in wc.scan(src, exclude_ids=ids).skips}
    assert skipped[("AudioSet_SL", "YoverlapAC01.wav")] == "excluded" and skipped[("FreeSound", "999")] == "excluded"
    bad = tmp_path / "bad.json"
    bad.write_text('{"Clotho": ["1"]}')
    with pytest.raises(PrepError, match=r"--exclude-ids .*bad\.json: unknown subset 'Clotho'"):
        wc.scan(src, exclude_ids=bad)
    with pytest.raises(PrepError, match=r"--exclude-ids .*missing\.txt: cannot read"):
        wc.scan(src, exclude_ids=tmp_path / "missing.txt")


def test_layout_errors_name_the_folder(tree, tmp_path):
    src, _ = tree
    (src / "json_files/Clotho").mkdir()
    (src / "json_files/Clotho/x.json").write_text("[]")
    with pytest.raises(PrepError, match=r"json_files/Clotho: not a WavCaps subset"):
        wc.scan(src)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PrepError, match=r"no WavCaps metadata found \(expected json_files/\{subset\}/\*\.json\)"):
        wc.scan(empty)
    (src / "json_files/Clotho/x.json").unlink()
    (src / "json_files/SoundBible/sb_final.json").write_text('[{"id": "1"}]')
    with pytest.raises(PrepError, match=r"sb_final\.json: entry 0: expected an object with \"id\" and a string"):
        wc.scan(src)
