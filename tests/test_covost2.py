"""`alm prep covost2`: a tiny Common Voice language folder made here (mp3 clips encoded with PyAV,
Common Voice and CoVoST 2 TSVs written here) with the real layout's mess: unquoted sentences
with quotes, a malformed row, a missing clip, a duplicate row, a converted clip, clips only
Common Voice lists, an unlisted clip, the release TSV form, several language pairs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from alm.data.shards import read_shard
from alm.data.splits import resolve_split_spec
from alm.data_prep.cli import main, run
from alm.data_prep.common import PrepError
from alm.data_prep.covost2 import read_tsv

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "scripts"))
from make_speech import mp3_bytes  # noqa: E402

CV_HEADER = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accents", "locale", "segment"]
SPLIT_HEADER = CV_HEADER + ["translation", "split"]  # what get_covost_splits.py writes: validated.tsv + CoVoST


def clip(root: Path, name: str, seconds: float = 0.5, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * rng.uniform(200, 600) * t) + 0.01 * rng.standard_normal(t.size))
    path = root / "clips" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(mp3_bytes(audio.astype(np.float32)))


def write_tsv(path: Path, rows: list[list[str]]) -> None:
    path.write_bytes(("".join("\t".join(r) + "\n" for r in rows)).encode("utf-8"))


def cv_row(n: int, sentence: str, client: str = "a" * 64) -> list[str]:
    return [client, f"common_voice_en_{n}.mp3", sentence, "2", "0", "", "", "", "en", ""]


def prep(src: Path, out: Path, **kw) -> tuple[dict, dict[str, dict]]:
    manifest = run("covost2", src, out, quiet=True, **kw)
    samples = {}
    for shard in sorted(out.glob("*.tar")):
        for s in read_shard(str(shard)):
            meta = json.loads(s["json"])
            assert meta["id"] not in samples
            samples[meta["id"]] = meta
    return manifest, samples


@pytest.fixture
def cv(tmp_path) -> Path:
    """SRC with covost_v2.en_de.{train,dev,test}.tsv (get_covost_splits.py's output) and clips."""
    root = tmp_path / "cv-corpus" / "en"
    quoted = '"Stop," she said, "or I\'ll go.'  # unbalanced quotes: not CSV-quoted in Common Voice
    validated = [CV_HEADER, cv_row(1, quoted, "b" * 64), cv_row(2, "Plain words here."), cv_row(3, "Missing clip."),
                 cv_row(4, "Converted to flac."), cv_row(5, "Dev sentence."), cv_row(6, "Test sentence."),
                 cv_row(7, "Only Common Voice has me."), cv_row(8, "Empty translation.")]
    root.mkdir(parents=True)
    write_tsv(root / "validated.tsv", validated)
    write_tsv(root / "invalidated.tsv", [CV_HEADER, cv_row(9, "A rejected clip.")])
    train = [SPLIT_HEADER,
             validated[1] + ['"Halt", sagte sie, "oder ich gehe.', "train"],
             validated[2] + ["Einfache Worte hier.", "train"],
             validated[3] + ["Fehlender Clip.", "train"],
             validated[4] + ["In flac umgewandelt.", "train"],
             validated[2][:5] + ["too", "few"],  # malformed: 7 fields
             validated[2] + ["Nochmal.", "train"]]  # the same clip again
    write_tsv(root / "covost_v2.en_de.train.tsv", train)
    write_tsv(root / "covost_v2.en_de.dev.tsv", [SPLIT_HEADER, validated[5] + ["Dev-Satz.", "dev"]])
    write_tsv(root / "covost_v2.en_de.test.tsv", [SPLIT_HEADER, validated[6] + ["Testsatz.", "test"],
                                                  validated[8] + [" ", "test"]])
    for n in (1, 2, 5, 6, 7, 8, 9):
        clip(root, f"common_voice_en_{n}.mp3", seed=n)
    sf.write(str(root / "clips" / "common_voice_en_4.flac"), np.full(8000, 0.1), 16000)  # a user's converted clip
    sf.write(str(root / "clips" / "common_voice_en_2.wav"), np.full(8000, 0.1), 16000)  # beside the listed .mp3
    clip(root, "common_voice_en_99.mp3", seed=99)  # no TSV lists it
    return root


def test_covost2_rows_clips_and_skips(cv, tmp_path, capsys):
    manifest, samples = prep(cv, tmp_path / "out")
    assert sorted(samples) == [f"common_voice_en_{n}" for n in (1, 2, 4, 5, 6)]
    one = samples["common_voice_en_1"]
    assert {k: one[k] for k in ("transcript", "translation", "source_lang", "target_lang", "speaker", "split")} == {
        "transcript": '"Stop," she said, "or I\'ll go.', "translation": '"Halt", sagte sie, "oder ich gehe.',
        "source_lang": "en", "target_lang": "de", "speaker": "b" * 64, "split": "train"}
    assert one["audio_path"] == "clips/common_voice_en_1.mp3" and one["sample_rate"] == 16000
    assert samples["common_voice_en_2"]["audio_path"] == "clips/common_voice_en_2.mp3"
    assert abs(one["duration_s"] - 0.5) < 0.1  # decoded mp3 (encoder padding aside)
    converted = samples["common_voice_en_4"]  # listed as .mp3, found by its stem
    assert (converted["audio_path"], converted["transcript"]) == ("clips/common_voice_en_4.flac", "Converted to flac.")
    assert (samples["common_voice_en_5"]["split"], samples["common_voice_en_6"]["split"]) == ("dev", "test")
    reasons = sorted((s["id"], s["split"], s["reason"]) for s in manifest["skipped"])
    assert reasons == [("common_voice_en_2", "train", "bad_row"), ("common_voice_en_2", "train", "bad_row"),
                       ("common_voice_en_2", "train", "duplicate_audio"),  # the .wav; the listed .mp3 is used
                       ("common_voice_en_3", "train", "missing_audio"),
                       ("common_voice_en_8", "test", "bad_row"), ("common_voice_en_99", None, "unlisted_audio")]
    details = sorted(s["detail"] for s in manifest["skipped"] if s["reason"] == "bad_row")
    assert details == ["covost_v2.en_de.test.tsv line 3: empty translation",
                       "covost_v2.en_de.train.tsv line 6: expected 12 tab-separated fields, found 7",
                       "covost_v2.en_de.train.tsv line 7: common_voice_en_2.mp3 listed again "
                       "(first at covost_v2.en_de.train.tsv line 3)"]
    # every data row of the pair's TSVs is kept or has a reason; clips 7 and 9 are Common Voice's only
    assert len(samples) + sum(s["reason"] not in ("unlisted_audio", "duplicate_audio")
                              for s in manifest["skipped"]) == 6 + 1 + 2
    assert "2 clip(s)" in capsys.readouterr().err
    assert [Path(p).name for p in resolve_split_spec(str(tmp_path / "out"), "val").split("::")] == \
        manifest["splits"]["dev"]["shards"]


def test_covost2_release_tsv_takes_sentences_from_validated(tmp_path):
    root = tmp_path / "fr"
    root.mkdir()
    write_tsv(root / "validated.tsv", [CV_HEADER, cv_row(1, "Bonjour à tous.", "c" * 64), cv_row(2, "Merci.")])
    write_tsv(root / "covost_v2.fr_en.tsv", [["path", "translation", "split"],
                                             ["common_voice_en_1.mp3", "Hello everyone.", "train_covost"],
                                             ["common_voice_en_2.mp3", "Thanks.", "validation"],  # unknown split
                                             ["common_voice_en_3.mp3", "Not validated.", "test"]])
    for n in (1, 2, 3):
        clip(root, f"common_voice_en_{n}.mp3", seed=n)
    manifest, samples = prep(root, tmp_path / "out")
    assert list(samples) == ["common_voice_en_1"]
    s = samples["common_voice_en_1"]
    assert (s["split"], s["transcript"], s["translation"], s["speaker"], s["source_lang"], s["target_lang"]) == (
        "train", "Bonjour à tous.", "Hello everyone.", "c" * 64, "fr", "en")
    got = sorted((s["id"], s["split"], s["reason"], s["detail"]) for s in manifest["skipped"])
    assert got == [("common_voice_en_2", None, "bad_row", "covost_v2.fr_en.tsv line 3: split 'validation' is none of "
                    "train, train_covost, dev, test"),
                   ("common_voice_en_3", "test", "bad_row", "covost_v2.fr_en.tsv line 4: no sentence / client_id for "
                    "common_voice_en_3.mp3 in validated.tsv")]
    (root / "validated.tsv").unlink()
    with pytest.raises(PrepError, match="no validated.tsv"):
        run("covost2", root, tmp_path / "out2", quiet=True)


def test_covost2_language_pair_from_names_or_flags(cv, tmp_path, capsys):
    write_tsv(cv / "covost_v2.en_ca.train.tsv", [SPLIT_HEADER, cv_row(2, "Plain words here.") + ["Paraules.", "train"]])
    out = tmp_path / "out"
    assert main(["covost2", "--src", str(cv), "--out", str(out), "--quiet", "--workers", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "several language pairs (en_ca, en_de)" in err and "--target-lang" in err and "\n" not in err
    assert main(["covost2", "--src", str(cv), "--out", str(out), "--quiet", "--workers", "1",
                 "--target-lang", "ca"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 1}
    with pytest.raises(PrepError, match=r"no CoVoST 2 TSV covost_v2.\{src\}_ja.*language pairs found: en_ca, en_de"):
        run("covost2", cv, tmp_path / "o2", quiet=True, target_lang="ja")


def test_covost2_unusable_inputs_stop_the_run(tmp_path):
    root = tmp_path / "en"
    root.mkdir()
    with pytest.raises(PrepError, match="no clips/ folder"):
        run("covost2", root, tmp_path / "o", quiet=True)
    (root / "clips").mkdir()
    with pytest.raises(PrepError, match="language pairs found: none"):
        run("covost2", root, tmp_path / "o", quiet=True)
    write_tsv(root / "covost_v2.en_de.train.tsv", [["path", "sentence"], ["a.mp3", "x"]])
    with pytest.raises(PrepError, match=r"covost_v2.en_de.train.tsv: line 1: missing column\(s\) translation"):
        run("covost2", root, tmp_path / "o", quiet=True)
    (root / "covost_v2.en_de.train.tsv").write_bytes(b"path\tsentence\ttranslation\tclient_id\na.mp3\t\xff\tx\ty\n")
    with pytest.raises(PrepError, match="line 2: not valid UTF-8"):
        run("covost2", root, tmp_path / "o", quiet=True)


def test_read_tsv_is_unquoted_and_streams(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_bytes(b'\xef\xbb\xbfpath\tsentence\r\n"a.mp3\t"quoted\nb.mp3\tsecond\r\n\n')
    header, lines = read_tsv(path)
    assert header == ["path", "sentence"]
    assert not isinstance(lines, list)  # an iterator: a 1.5M-row validated.tsv is never held whole
    assert list(lines) == [(2, ['"a.mp3', '"quoted']), (3, ["b.mp3", "second"])]
