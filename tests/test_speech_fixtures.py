"""The committed espeak-ng speech fixtures (tests/fixtures/speech/) and `alm prep librispeech`:
the fixtures prep into shards with every transcript intact, the LibriSpeech subsets get their
split roles, and the prep's rules (missing / unlisted audio, one subset as --src) hold."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from alm.data.shards import read_shard
from alm.data.splits import resolve_split_spec
from alm.data_prep.cli import main, run

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / "tests" / "fixtures" / "speech"
sys.path.insert(0, str(REPO / "tests" / "scripts"))
import make_speech  # noqa: E402


def read_out(out: Path) -> dict[str, dict]:
    samples = {}
    for shard in sorted(out.glob("*.tar")):
        for s in read_shard(str(shard)):
            meta = json.loads(s["json"])
            assert meta["id"] not in samples
            samples[meta["id"]] = {**meta, "shard": shard.name, "audio": sf.read(io.BytesIO(s["flac"]))[0]}
    return samples


def test_committed_files_match_the_generator_tables():
    """What make_speech.py declares (sentences, speakers, translations) is what is committed."""
    utts = make_speech.utterances()
    assert 24 <= len(utts) <= 36
    on_disk = sorted(p.stem for p in (SPEECH / "LibriSpeech").rglob("*.flac"))
    assert on_disk == sorted(u[0] for u in utts)
    for utt, subset, _, spk, _, text in utts:
        chap = utt.split("-")[1]
        folder = SPEECH / "LibriSpeech" / subset / spk / chap
        assert f"{utt} {text}\n" in (folder / f"{spk}-{chap}.trans.txt").read_text(encoding="utf-8")
        info = sf.info(str(folder / f"{utt}.flac"))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert make_speech.MIN_S <= info.duration <= make_speech.MAX_S
        assert text == text.upper() and set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")
    size = sum(p.stat().st_size for p in SPEECH.rglob("*") if p.is_file() and "cvss" not in p.parts)
    assert size < 1_600_000, f"tests/fixtures/speech/ holds {size} bytes; keep it about 1.5 MB"
    cvss = sum(p.stat().st_size for p in (SPEECH / "cvss").rglob("*") if p.is_file())
    assert cvss < 300_000, f"tests/fixtures/speech/cvss/ holds {cvss} bytes; keep it under 300 KB"
    rows = (SPEECH / "translations.en_fr.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0].split("\t") == ["id", "sentence", "translation"]
    texts = {u[0]: u[5] for u in utts}
    assert {r.split("\t")[0]: r.split("\t")[1:] for r in rows[1:]} == {
        u: [texts[u], fr] for u, fr in make_speech.FRENCH.items()}


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (the clips are committed)")
def test_generator_reproduces_a_committed_clip():
    utt, subset, voice, spk, speed, text = make_speech.utterances()[0]
    chap = utt.split("-")[1]
    committed, rate = sf.read(str(SPEECH / "LibriSpeech" / subset / spk / chap / f"{utt}.flac"), dtype="int16")
    fresh = np.clip(np.round(make_speech.speak(text, voice, speed) * 32767), -32768, 32767).astype(np.int16)
    assert rate == make_speech.RATE and len(fresh) == len(committed)
    assert np.abs(fresh.astype(np.int32) - committed).max() <= 1  # the FLAC encoder's own rounding at most


def test_fixtures_prep_into_shards_with_every_transcript(tmp_path):
    out = tmp_path / "out"
    assert main(["librispeech", "--src", str(SPEECH / "LibriSpeech"), "--out", str(out), "--workers", "1",
                 "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "librispeech" and manifest["skipped"] == []
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"dev-clean": 6, "train-clean-100": 30}
    samples = read_out(out)
    utts = make_speech.utterances()
    assert sorted(samples) == sorted(u[0] for u in utts)
    for utt, subset, _, spk, _, text in utts:
        s = samples[utt]
        assert s["transcript"] == text and s["split"] == subset and s["speaker"] == spk
        assert s["chapter"] == utt.split("-")[1] and s["shard"].startswith(subset + "-")
        committed, _ = sf.read(str(SPEECH / "LibriSpeech" / s["audio_path"]))
        assert s["sample_rate"] == 16000 and np.array_equal(s["audio"], committed)  # lossless, not resampled
    # the directory serves training from train-clean-100 and validation from dev-clean
    assert [Path(p).name for p in resolve_split_spec(str(out), "train").split("::")] == \
        manifest["splits"]["train-clean-100"]["shards"]
    assert [Path(p).name for p in resolve_split_spec(str(out), "val").split("::")] == \
        manifest["splits"]["dev-clean"]["shards"]


def manifest_out(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _tone(path: Path, seconds: float = 0.2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), 0.2 * np.sin(np.arange(int(16000 * seconds)) / 5.0), 16000, format="FLAC")


def test_librispeech_rules(tmp_path):
    root = tmp_path / "dl" / "LibriSpeech"
    chap = root / "test-clean" / "61" / "70968"
    _tone(chap / "61-70968-0000.flac")
    _tone(chap / "61-70968-0002.flac")  # no transcript line -> unlisted_audio
    (chap / "61-70968.trans.txt").write_bytes(b"61-70968-0000 HE BEGAN A CONFUSED COMPLAINT\r\n"
                                              b"61-70968-0001 WHAT'S THE MATTER\r\n")  # 0001: no audio
    _tone(root / "train-other-500" / "20" / "205" / "20-205-0000.flac")
    (root / "train-other-500" / "20" / "205" / "20-205.trans.txt").write_text("20-205-0000 A  DOUBLE  SPACE \n")
    (root / "SPEAKERS.TXT").write_text(";ID |SEX\n61 |M\n")
    for src in (root, root.parent):  # LibriSpeech/ or the folder holding it
        manifest = run("librispeech", src, tmp_path / "out", quiet=True, overwrite=True)
        skipped = {(s["id"], s["split"], s["reason"], s["path"]) for s in manifest["skipped"]}
        assert skipped == {("61-70968-0001", "test-clean", "missing_audio", "test-clean/61/70968/61-70968-0001.flac"),
                           ("61-70968-0002", "test-clean", "unlisted_audio", "test-clean/61/70968/61-70968-0002.flac")}
        samples = read_out(tmp_path / "out")
        assert {k: v["transcript"] for k, v in samples.items()} == {
            "61-70968-0000": "HE BEGAN A CONFUSED COMPLAINT", "20-205-0000": "A  DOUBLE  SPACE "}  # verbatim
    # one subset folder as --src: only that subset, paths still relative to LibriSpeech/
    manifest = run("librispeech", root / "train-other-500", tmp_path / "one", quiet=True)
    assert list(manifest["splits"]) == ["train-other-500"] and manifest["skipped"] == []
    assert read_out(tmp_path / "one")["20-205-0000"]["audio_path"] == "train-other-500/20/205/20-205-0000.flac"
    # test-clean is never picked from a directory: train-other-500 trains, there is no val split
    assert [Path(p).name for p in resolve_split_spec(str(tmp_path / "out"), "train").split("::")] == \
        manifest_out(tmp_path / "out")["splits"]["train-other-500"]["shards"]
    with pytest.raises(ValueError, match="no val split"):
        resolve_split_spec(str(tmp_path / "out"), "val")


def test_librispeech_without_subsets_is_one_line_error(tmp_path, capsys):
    (tmp_path / "empty" / "x").mkdir(parents=True)
    assert main(["librispeech", "--src", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "no LibriSpeech subset found" in err and "\n" not in err


def test_covost_fixture_preps_with_translations(tmp_path):
    """tests/fixtures/speech/covost2 (mp3 clips of 7 of the utterances + CoVoST TSVs) -> shards whose
    json has the Common Voice sentence, the French translation and the pair."""
    manifest = run("covost2", SPEECH / "covost2", tmp_path / "out", quiet=True)
    assert manifest["skipped"] == []
    samples = read_out(tmp_path / "out")
    texts = {u[0]: (u[1], u[5]) for u in make_speech.utterances()}
    assert len(samples) == len(make_speech.FRENCH)
    for n, (utt, french) in enumerate(make_speech.FRENCH.items()):
        s = samples[f"common_voice_en_{7000001 + n}"]
        subset, text = texts[utt]
        assert (s["translation"], s["source_lang"], s["target_lang"]) == (french, "en", "fr")
        assert s["transcript"] == text.capitalize() + "." and s["speaker"].startswith("c0ffee" + utt.split("-")[0])
        assert s["split"] == ("dev" if subset == "dev-clean" else "train")
        flac = sf.info(str(SPEECH / "LibriSpeech" / subset / utt.split("-")[0] / utt.split("-")[1] / f"{utt}.flac"))
        assert abs(s["duration_s"] - flac.duration) < 0.15  # the same clip, mp3 encoder padding aside
