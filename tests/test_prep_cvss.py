"""`alm prep cvss`: the committed CVSS-style fixture (tests/fixtures/speech/cvss: the French translations of
the 7 covost2 fixture clips, spoken by espeak-ng) preps with every clip in, and its shards have the same
names and keys as `alm prep covost2`'s of the same clips (so token sets of both join); a folder with the
real layout's mess (a bad line, a missing wav, an unlisted wav, a converted wav, a clip listed twice,
an unreadable wav) loses nothing silently."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from alm.data.shards import read_shard
from alm.data_prep.cli import main, run
from alm.data_prep.common import PrepError

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / "tests" / "fixtures" / "speech"


def layout(out: Path) -> dict[str, list[str]]:
    """{shard file name: [keys in order]}."""
    return {p.name: [s["__key__"] for s in read_shard(str(p))] for p in sorted(out.glob("*.tar"))}


def test_the_fixture_preps_whole_and_joins_covost2_by_shard_name_and_key(tmp_path):
    cvss = run("cvss", SPEECH / "cvss", tmp_path / "cvss", quiet=True)
    covost = run("covost2", SPEECH / "covost2", tmp_path / "covost", quiet=True)
    assert cvss["skipped"] == [] and covost["skipped"] == []
    assert {s: v["num_samples"] for s, v in cvss["splits"].items()} == {"train": 6, "dev": 1}
    assert layout(tmp_path / "cvss") == layout(tmp_path / "covost")  # same shard names, same keys in each
    tsv = {}
    for split in ("train", "dev"):
        for line in (SPEECH / "cvss" / f"{split}.tsv").read_text(encoding="utf-8").splitlines():
            clip, text = line.split("\t")
            tsv[clip] = text
    source = {s["__key__"]: json.loads(s["json"]) for p in sorted((tmp_path / "covost").glob("*.tar"))
              for s in read_shard(str(p))}
    for p in sorted((tmp_path / "cvss").glob("*.tar")):
        for s in read_shard(str(p)):
            meta = json.loads(s["json"])
            assert meta["translation"] == tsv[meta["source_clip"]] == source[s["__key__"]]["translation"]
            audio, rate = sf.read(__import__("io").BytesIO(s["flac"]))
            assert rate == 16000 and 1.0 < len(audio) / rate < 3.3 and np.abs(audio).max() > 0.05


def write(root: Path, split: str, name: str, seconds: float = 0.4) -> None:
    t = np.arange(int(16000 * seconds)) / 16000
    (root / split).mkdir(parents=True, exist_ok=True)
    sf.write(str(root / split / name), (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000)


def test_every_missing_unlisted_unreadable_or_bad_row_is_reported(tmp_path):
    src = tmp_path / "cvss_c_fr_en_v1.0"
    rows = ["common_voice_fr_1.mp3\tHello.", "common_voice_fr_2.mp3\tNo wav.", "broken line without a tab",
            "common_voice_fr_3.mp3\tConverted.", "common_voice_fr_1.mp3\tAgain.", "common_voice_fr_5.mp3\t  ",
            "common_voice_fr_6.mp3\tUnreadable."]
    src.mkdir()
    (src / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (src / "test.tsv").write_text("common_voice_fr_9.mp3\tA test clip.\r\n", encoding="utf-8")
    write(src, "train", "common_voice_fr_1.mp3.wav")
    write(src, "train", "common_voice_fr_3.mp3.flac")  # converted by the user: found by name
    write(src, "train", "common_voice_fr_4.mp3.wav")  # no row names it
    (src / "train" / "common_voice_fr_6.mp3.wav").write_bytes(b"RIFF not really")
    write(src, "test", "common_voice_fr_9.mp3.wav")
    manifest = run("cvss", src, tmp_path / "out", quiet=True)
    skipped = sorted((s["id"], s["reason"]) for s in manifest["skipped"])
    assert skipped == [("common_voice_fr_1", "bad_row"), ("common_voice_fr_2", "missing_audio"),
                       ("common_voice_fr_4", "unlisted_audio"), ("common_voice_fr_5", "bad_row"),
                       ("common_voice_fr_6", "corrupt_audio"), ("train.tsv line 3", "bad_row")], skipped
    kept = {s["__key__"]: json.loads(s["json"]) for p in sorted((tmp_path / "out").glob("*.tar"))
            for s in read_shard(str(p))}
    assert sorted(kept) == ["common_voice_fr_1", "common_voice_fr_3", "common_voice_fr_9"]
    assert kept["common_voice_fr_1"]["translation"] == "Hello." and kept["common_voice_fr_9"]["split"] == "test"
    assert kept["common_voice_fr_3"]["audio_path"] == "train/common_voice_fr_3.mp3.flac"
    bad = next(s for s in manifest["skipped"] if s["id"] == "common_voice_fr_1")
    assert "train.tsv line 5" in bad["detail"] and "first at train.tsv line 1" in bad["detail"]


def test_a_folder_without_cvss_tsvs_stops_with_a_clear_error(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    with pytest.raises(PrepError, match="no train.tsv, dev.tsv or test.tsv"):
        run("cvss", tmp_path / "src", tmp_path / "out", quiet=True)
    shutil.copytree(SPEECH / "cvss", tmp_path / "ok")
    assert main(["cvss", "--src", str(tmp_path / "ok"), "--out", str(tmp_path / "out2"), "--quiet"]) == 0


def test_like_lays_the_shards_out_as_the_covost2_prep_when_clips_differ(tmp_path):
    """covost2 lost a clip (its mp3 missing), so count-based boundaries would shift every later shard:
    --like gives each covost2 shard a cvss shard of the same name holding exactly its keys that CVSS has."""
    cv = tmp_path / "cv"
    shutil.copytree(SPEECH / "covost2", cv)
    (cv / "clips" / "common_voice_en_7000002.mp3").unlink()
    covost = run("covost2", cv, tmp_path / "covost", shard_size=2, quiet=True)
    assert [s["reason"] for s in covost["skipped"]] == ["missing_audio"]
    src = tmp_path / "cvss-src"
    shutil.copytree(SPEECH / "cvss", src)
    (src / "train" / "common_voice_en_7000005.mp3.wav").unlink()  # and CVSS lost another
    plain = run("cvss", src, tmp_path / "plain", shard_size=2, quiet=True)
    assert layout(tmp_path / "plain") != layout(tmp_path / "covost")  # shifted: the join would lose samples
    assert main(["cvss", "--src", str(src), "--out", str(tmp_path / "like"), "--shard-size", "2", "--like",
                 str(tmp_path / "covost"), "--quiet"]) == 0
    theirs, ours = layout(tmp_path / "covost"), layout(tmp_path / "like")
    assert sorted(ours) == sorted(theirs)
    assert all(ours[name] == [k for k in keys if k != "common_voice_en_7000005"] for name, keys in theirs.items())
    manifest = json.loads((tmp_path / "like" / "manifest.json").read_text())
    assert manifest["like"]["no_target"] == {"count": 1, "first": ["common_voice_en_7000005"]}
    assert [(s["id"], s["reason"]) for s in manifest["skipped"]] == [
        ("common_voice_en_7000005", "missing_audio"), ("common_voice_en_7000002", "not_in_like")]
    assert sum(v["num_samples"] for v in manifest["splits"].values()) == 5 == \
        sum(v["num_samples"] for v in plain["splits"].values()) - 1
    assert not list((tmp_path / "like").glob(".*"))  # no temporary left
