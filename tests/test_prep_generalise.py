"""The rules, not the fixture rows: small datasets built here in the real formats with the
real-world mess the rules describe (BOMs, CRLF, `.WAV`, ids starting with '-'/'_', cp1252
metadata, ';'-separated DCASE metadata, bare NaN sidecars, shared 1h/9h chapters, empty and
corrupt files, unlisted audio) and CSVs that cannot be parsed."""

from __future__ import annotations

import io
import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from alm.data_prep.cli import main, run
from alm.data_prep.common import PrepError


def tone(path: Path, seconds: float = 0.25, rate: int = 16000, channels: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t)
    fmt = path.suffix[1:].upper()
    sf.write(str(path), np.stack([x] * channels, axis=1), rate, format=fmt, subtype="PCM_16")
    return path


def empty_wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros((0, 1)), 16000, format="WAV", subtype="PCM_16")
    return path


def prep(name: str, src: Path, out: Path, **kw) -> tuple[dict, dict[str, dict]]:
    from alm.data.shards import read_shard

    manifest = run(name, src, out, quiet=True, **kw)
    samples = {}
    for shard in sorted(out.glob("*.tar")):
        for s in read_shard(str(shard)):
            meta = json.loads(s["json"])
            info = sf.info(io.BytesIO(s["flac"]))
            assert info.channels == 1 and meta["id"] not in samples
            samples[meta["id"]] = meta
    return {s["id"]: s["reason"] for s in manifest["skipped"]}, samples


# ----------------------------------------------------------------------------- AudioCaps
def test_audiocaps_rules(tmp_path):
    src = tmp_path / "audiocaps"
    header = "audiocap_id,youtube_id,start_time,caption"
    train = [header, '1,_aB3-xY9_Qw,0,"Quiet hum, then a ""click"""', "2,-dupStart01,10,first start",
             "3,-dupStart01,20,second start", "4,zeroFrames1,0,empty file", "5,htmlPage000,5,html page"]
    (src).mkdir()
    (src / "train.csv").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(train).encode() + b"\r\n")
    val = [header, "6,valClipAAAA,30,cap one", "7,otherClip00,0,only caption", "8,valClipAAAA,30,cap two"]
    (src / "val.csv").write_text("\n".join(val) + "\n\n")
    tone(src / "audio/train/_aB3-xY9_Qw_0.WAV", rate=32000, channels=2)
    tone(src / "audio/train/-dupStart01_10.flac")
    tone(src / "audio/train/-dupStart01_20.wav", rate=44100)
    empty_wav(src / "audio/train/zeroFrames1_0.wav")
    (src / "audio/train/htmlPage000_5.flac").write_text("<html>403 Forbidden</html>")
    tone(src / "audio/train/valClipAAAA_30.flac")  # listed in val.csv, stored under train/
    tone(src / "audio/val/notInAnyCsv_7.flac")
    (src / "audio/val/readme.txt").write_text("not audio")
    skipped, kept = prep("audiocaps", src, tmp_path / "out")
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    reasons = sorted((s["id"], s["split"], s["reason"]) for s in manifest["skipped"])
    assert reasons == [
        ("htmlPage000_5", "train", "corrupt_audio"),
        ("notInAnyCsv_7", "val", "unlisted_audio"),
        ("otherClip00_0", "val", "missing_audio"),
        ("valClipAAAA_30", "train", "unlisted_audio"),
        ("valClipAAAA_30", "val", "missing_audio"),
        ("zeroFrames1_0", "train", "empty_audio"),
    ]
    assert sorted(kept) == ["-dupStart01_10", "-dupStart01_20", "_aB3-xY9_Qw_0"]
    upper = kept["_aB3-xY9_Qw_0"]
    assert upper["audio_path"] == "audio/train/_aB3-xY9_Qw_0.WAV"
    assert upper["captions"] == ['Quiet hum, then a "click"']
    assert (upper["sample_rate"], upper["channels"], upper["num_frames"]) == (32000, 2, 8000)
    assert kept["-dupStart01_20"]["sample_rate"] == 44100


def test_unparsable_csv_names_file_and_line(tmp_path, capsys):
    src = tmp_path / "audiocaps"
    src.mkdir()
    (src / "train.csv").write_text('audiocap_id,youtube_id,start_time,caption\n1,abc,0,fine\n2,def,0,"never closed\n')
    with pytest.raises(PrepError, match=r"train\.csv: line 3: cannot parse CSV"):
        run("audiocaps", src, tmp_path / "out", quiet=True)
    assert main(["audiocaps", "--src", str(src), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "train.csv" in err and "line 3" in err
    (src / "train.csv").write_text("id,video,caption\n1,abc,x\n")
    with pytest.raises(PrepError, match=r"train\.csv: line 1: missing column\(s\) youtube_id, start_time"):
        run("audiocaps", src, tmp_path / "out", quiet=True)
    (src / "train.csv").write_bytes(b"audiocap_id,youtube_id,start_time,caption\n1,abc,0,ok\n2,abd,0,caf\xe9\n")
    with pytest.raises(PrepError, match=r"train\.csv: line 3: not valid UTF-8"):
        run("audiocaps", src, tmp_path / "out", quiet=True)
    (src / "train.csv").write_text("audiocap_id,youtube_id,start_time,caption\n1,abc,0\n")
    with pytest.raises(PrepError, match=r"train\.csv: line 2: expected 4 fields"):
        run("audiocaps", src, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out" / "manifest.json").exists()


# ----------------------------------------------------------------------------- Clotho
def test_clotho_rules(tmp_path):
    src = tmp_path / "clotho"
    nfc = unicodedata.normalize("NFC", "Café terrace.wav")
    names = ["Rain #2, take.3 (final).wav", "Tom&amp;Jerry&#39;s door.WAV", nfc, "no_meta.wav", "corrupt.wav"]
    rows = ["file_name,caption_1,caption_2,caption_3,caption_4,caption_5"]
    for n in names:
        q = '"' + n.replace('"', '""') + '"'
        rows.append(f'{q},"a, b",two,"line\nbreak","say ""hi""",five')
    (src).mkdir()
    (src / "clotho_captions_development.csv").write_bytes(b"\xef\xbb\xbf" + "\n".join(rows).encode() + b"\n")
    meta = ("file_name,keywords,sound_id,sound_link,start_end_samples,manufacturer,license\n"
            '"Rain #2, take.3 (final).wav",rain;roof,1,http://x/1,"[0, 10]",O\x92Brien \x81x,CC0\n'
            "Tom&amp;Jerry&#39;s door.WAV,door,2,http://x/2,\"[0, 5]\",Jos\xe9,CC0\n")
    (src / "clotho_metadata_development.csv").write_bytes(meta.encode("latin-1"))
    d = src / "clotho_audio_development"
    tone(d / "Rain #2, take.3 (final).wav", rate=44100)
    tone(d / "Tom&amp;Jerry&#39;s door.WAV", rate=44100)
    tone(d / unicodedata.normalize("NFD", nfc), rate=44100)  # macOS-style NFD name on disk
    tone(d / "no_meta.wav", rate=22050)
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    # the DCASE test set: no captions, ';'-separated metadata (keywords quoted, or not)
    (src / "clotho_metadata_test.csv").write_bytes(
        b'file_name;keywords;sound_id;sound_link;start_end_samples;manufacturer;license\n'
        b'test_0001.wav;"bird;wind";7;http://x/7;[0, 3];A\xe9;CC-BY\n'
        b'test_0002.wav;car;road;night;8;http://x/8;[0, 3];B;CC0\n')
    tone(src / "clotho_audio_test/test_0001.wav", rate=44100)
    tone(src / "clotho_audio_test/test_0002.wav", rate=44100)
    skipped, kept = prep("clotho", src, tmp_path / "out")
    nfd = unicodedata.normalize("NFD", nfc)
    assert skipped == {nfc: "missing_audio", nfd: "unlisted_audio", "corrupt.wav": "corrupt_audio"}
    assert sorted(kept) == sorted(["Rain #2, take.3 (final).wav", "Tom&amp;Jerry&#39;s door.WAV", "no_meta.wav",
                                   "test_0001.wav", "test_0002.wav"])
    rain = kept["Rain #2, take.3 (final).wav"]
    assert rain["captions"] == ["a, b", "two", "line\nbreak", 'say "hi"', "five"]
    assert rain["metadata"]["manufacturer"] == "O\u2019Brien \x81x"  # cp1252 0x92, latin-1 fallback 0x81
    assert rain["metadata"]["keywords"] == ["rain", "roof"] and rain["metadata"]["sound_id"] == "1"
    assert kept["Tom&amp;Jerry&#39;s door.WAV"]["metadata"]["manufacturer"] == "José"
    assert kept["Tom&amp;Jerry&#39;s door.WAV"]["audio_path"] == "clotho_audio_development/Tom&amp;Jerry&#39;s door.WAV"
    assert kept["no_meta.wav"]["metadata"] is None and kept["no_meta.wav"]["sample_rate"] == 22050
    t1, t2 = kept["test_0001.wav"], kept["test_0002.wav"]
    assert t1["split"] == "test" and t1["captions"] == []
    assert t1["metadata"]["keywords"] == ["bird", "wind"] and t1["metadata"]["manufacturer"] == "Aé"
    assert t2["metadata"]["keywords"] == ["car", "road", "night"] and t2["metadata"]["sound_id"] == "8"


# ----------------------------------------------------------------------------- MusicCaps
def test_musiccaps_rules(tmp_path):
    src = tmp_path / "musiccaps"
    src.mkdir()
    head = "ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,is_balanced_subset,is_audioset_eval"
    rows = [head,
            '_x-1_aaaaaa,0,10,"/m/a,/m/b","[""rock \'n\' roll"", \'loud\']","Two lines:\nsecond, with comma",3,True,False',
            "-y2bbbbbbbb,5,15,/m/c,['calm'],Plain.,1,False,True",
            "zzzzzzzzzzz,0,10,/m/d,[],Not downloaded.,2,False,False"]
    (src / "musiccaps-public.csv").write_bytes("\r\n".join(rows).encode() + b"\r\n")
    tone(src / "music/_x-1_aaaaaa.FLAC", seconds=0.5, rate=44100, channels=2)
    tone(src / "music/-y2bbbbbbbb.wav", seconds=0.4, rate=48000)
    tone(src / "music/orphan00000.wav")
    skipped, kept = prep("musiccaps", src, tmp_path / "out", sample_rate=24000)
    assert skipped == {"zzzzzzzzzzz": "missing_audio", "orphan00000": "unlisted_audio"}
    a = kept["_x-1_aaaaaa"]
    assert a["captions"] == ["Two lines:\nsecond, with comma"]
    assert a["aspect_list"] == ["rock 'n' roll", "loud"]
    assert a["audioset_positive_labels"] == ["/m/a", "/m/b"]
    assert (a["start_s"], a["end_s"], a["author_id"], a["is_balanced_subset"]) == (0, 10, 3, True)
    assert (a["split"], a["audio_path"], a["sample_rate"], a["channels"]) == ("train", "music/_x-1_aaaaaa.FLAC", 44100, 2)
    assert a["duration_s"] == pytest.approx(0.5, abs=1e-3)
    assert kept["-y2bbbbbbbb"]["split"] == "eval"
    (src / "musiccaps-public.csv").write_text(head + "\nqqqqqqqqqqq,0,10,/m/a,not a list,c,1,False,False\n")
    with pytest.raises(PrepError, match=r"musiccaps-public\.csv: line 2: aspect_list"):
        run("musiccaps", src, tmp_path / "out2", quiet=True)


# ----------------------------------------------------------------------------- LibriLight
def test_librilight_rules(tmp_path):
    root = tmp_path / "librilight"
    book = root / "small/42/some_book_64kb_mp3"
    tone(book / "ch01.flac")
    (book / "ch01.json").write_text('{"speaker": "42", "snr": NaN, "x": [Infinity, 1.5], "file_length_sec": 99}')
    tone(book / "ch02.FLAC")
    (book / "ch02.json").write_text("{not json")
    (book / "ch03.json").write_text('{"speaker": "42"}')  # sidecar without audio
    (book / "ch04.flac").write_bytes(b"")
    tone(root / "small/42/stray.flac")  # wrong depth
    tone(root / "medium/7/other_book/ch01.flac", seconds=0.5)
    tone(root / "librispeech_finetuning/1h/0/clean/1/2/1-2-0000.flac")  # the labelled set, not a subset
    skipped, kept = prep("librilight", root, tmp_path / "out")
    assert sorted(kept) == ["42/some_book_64kb_mp3/ch01", "42/some_book_64kb_mp3/ch02", "7/other_book/ch01"]
    assert skipped == {"42/some_book_64kb_mp3/ch03": "missing_audio", "42/some_book_64kb_mp3/ch04": "corrupt_audio",
                       "42/stray": "unlisted_audio"}
    one = kept["42/some_book_64kb_mp3/ch01"]
    assert one["metadata"] == {"speaker": "42", "snr": None, "x": [None, 1.5], "file_length_sec": 99}
    assert one["duration_s"] == pytest.approx(0.25, abs=1e-3)  # from the audio, not file_length_sec
    assert (one["speaker"], one["book_dir"], one["split"]) == ("42", "some_book_64kb_mp3", "small")
    assert kept["42/some_book_64kb_mp3/ch02"]["metadata"] is None
    assert kept["42/some_book_64kb_mp3/ch02"]["audio_path"] == "small/42/some_book_64kb_mp3/ch02.FLAC"
    assert kept["7/other_book/ch01"]["split"] == "medium"
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert sorted(manifest["splits"]) == ["medium", "small"]


# ----------------------------------------------------------------------------- librispeech_finetuning
def test_librispeech_finetuning_rules(tmp_path):
    root = tmp_path / "librilight" / "librispeech_finetuning"
    a = root / "1h/3/other/2843/152918"
    b = root / "9h/other/2843/152918"  # the same chapter in 1h and 9h, its own trans.txt
    tone(a / "2843-152918-0000.flac")
    tone(a / "2843-152918-0001.FLAC")
    (a / "2843-152918.trans.txt").write_bytes(
        b"\xef\xbb\xbf2843-152918-0000 IT'S  TWO  SPACES\r\n2843-152918-0001 ONE\r\n2843-152918-0009 NO AUDIO\r\n")
    tone(b / "2843-152918-0002.flac")
    tone(b / "2843-152918-0003.flac")  # no line names it
    (b / "2843-152918.trans.txt").write_text("2843-152918-0002 NINE H\n")
    (root / "phones").mkdir()
    (root / "phones/10h_phones.txt").write_text("2843-152918-0000 1 2 3\n")
    skipped, kept = prep("librispeech_finetuning", root.parent, tmp_path / "out")  # its parent works too
    assert skipped == {"2843-152918-0009": "missing_audio", "2843-152918-0003": "unlisted_audio"}
    assert {k: (v["split"], v["transcript"]) for k, v in kept.items()} == {
        "2843-152918-0000": ("1h/3/other", "IT'S  TWO  SPACES"),
        "2843-152918-0001": ("1h/3/other", "ONE"),
        "2843-152918-0002": ("9h/other", "NINE H"),
    }
    assert kept["2843-152918-0001"]["audio_path"] == "1h/3/other/2843/152918/2843-152918-0001.FLAC"
    assert (kept["2843-152918-0002"]["speaker"], kept["2843-152918-0002"]["chapter"]) == ("2843", "152918")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == ["1h_3_other-000000.tar", "9h_other-000000.tar"]
