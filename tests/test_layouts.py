"""The file layouts real download tools produce (issue #12 item 6), each on a tree built here:
AudioCaps start-time spellings and Y{ytid} / {ytid} / {audiocap_id} names, MusicCaps bracketed and
underscored cut names with train/eval folders, Clotho v1 / v2 / v2.1 names and folders, LibriLight
stray folders; and the rules for files that match no row, several rows, or a row twice.

Most tests call a dataset's `scan` (the index/file matching, no decoding); one prep per dataset
checks the reasons end up in manifest.json. Scale: a folder is listed once, never globbed per row.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from alm.data_prep import audiocaps, clotho, librilight, musiccaps
from alm.data_prep.cli import run
from alm.data_prep.common import PrepError, audio_files

AC_HEAD = "audiocap_id,youtube_id,start_time,caption"
MC_HEAD = ("ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,is_balanced_subset,"
           "is_audioset_eval")


def touch(path: Path) -> Path:
    """An (empty) file: enough for scan(), which never decodes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def tone(path: Path, seconds: float = 0.05, rate: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), 0.3 * np.sin(2 * np.pi * 440 * t), rate, format=path.suffix[1:].upper(), subtype="PCM_16")
    return path


def outcome(scan) -> tuple[dict, list]:
    """({id: audio path} kept, sorted [(id, reason, path)] skipped) of a Scan.

    Checks the accounting rule on the way: every audio file under the dataset folder is kept,
    or named by exactly one unlisted/duplicate skip, or named by the ambiguous rows it matches.
    """
    kept = {e.id: e.path for e in scan.entries}
    skipped = sorted((s.id, s.reason, s.path) for s in scan.skips)
    once = list(kept.values()) + [s.path for s in scan.skips if s.reason in ("unlisted_audio", "duplicate_audio")]
    assert len(once) == len(set(once)), "a file reported twice"
    ambiguous = " ".join(s.detail for s in scan.skips if s.reason == "ambiguous_audio")
    for path in audio_files(scan.root, scan.root, recursive=True):
        assert path in once or path in ambiguous, f"{path} neither used nor reported"
    return kept, skipped


def details(scan, reason: str) -> dict[str, str]:
    return {s.path: s.detail for s in scan.skips if s.reason == reason}


# ----------------------------------------------------------------------------- AudioCaps
@pytest.mark.parametrize("csv_start", ["30", "30.0", "30.000"])
@pytest.mark.parametrize("file_start", ["30", "30.0", "30.000"])
def test_audiocaps_start_time_spellings(tmp_path, csv_start, file_start):
    (tmp_path / "train.csv").write_text(f"{AC_HEAD}\n1,Ab_cD-eF_gH,{csv_start},a caption\n")
    touch(tmp_path / f"audio/train/Ab_cD-eF_gH_{file_start}.wav")
    kept, skipped = outcome(audiocaps.scan(tmp_path))
    assert kept == {f"Ab_cD-eF_gH_{csv_start}": f"audio/train/Ab_cD-eF_gH_{file_start}.wav"}  # id from the CSV
    assert skipped == []


def test_audiocaps_download_tool_names(tmp_path):
    """SRC/{split}/ without audio/: canonical, Y{ytid}, {ytid} and audiocap_id names side by side."""
    rows = ["1,-aaaaaaaaaa,30,starts with a dash", "2,bbbbbbbbb_b,0,Y prefix", "3,ccccccccccc,10,bare ytid",
            "4,ddddddddddd,20,canonical and Y copy", "5,eeeeeeeeeee,0,first start", "6,eeeeeeeeeee,10,second start",
            "7,fffffffffff,40,never downloaded", "8,ggggggggggg,50,audiocap id name"]
    (tmp_path / "train.csv").write_text("\n".join([AC_HEAD, *rows]) + "\n")
    val = [f"{600 + k},hhhhhhhhhhh,70,caption {k}" for k in range(5)]  # 5 rows: audiocaps-download writes 5 files
    (tmp_path / "val.csv").write_text("\n".join([AC_HEAD, *val]) + "\n")
    for name in ["-aaaaaaaaaa_30.wav", "Ybbbbbbbbb_b.wav", "ccccccccccc.flac", "ddddddddddd_20.wav",
                 "Yddddddddddd.wav", "eeeeeeeeeee.wav", "8.wav", "zzzzzzzzzzz_5.wav"]:
        touch(tmp_path / "train" / name)
    for k in range(5):
        touch(tmp_path / "val" / f"{600 + k}.wav")
    touch(tmp_path / "val/sub/odd_7.wav")
    scan = audiocaps.scan(tmp_path)
    kept, skipped = outcome(scan)
    assert kept == {
        "-aaaaaaaaaa_30": "train/-aaaaaaaaaa_30.wav",
        "bbbbbbbbb_b_0": "train/Ybbbbbbbbb_b.wav",
        "ccccccccccc_10": "train/ccccccccccc.flac",
        "ddddddddddd_20": "train/ddddddddddd_20.wav",  # the canonical name wins over Y{ytid}
        "ggggggggggg_50": "train/8.wav",
        "hhhhhhhhhhh_70": "val/600.wav",  # the first row's audiocap_id
    }
    ambiguous = [(s.id, s.reason, s.path) for s in scan.skips if s.reason == "ambiguous_audio"]
    # one start-less file, two clips of that video: given to neither (both rows name it)
    assert sorted(ambiguous) == [("eeeeeeeeeee_0", "ambiguous_audio", "train/eeeeeeeeeee.wav"),
                                 ("eeeeeeeeeee_10", "ambiguous_audio", "train/eeeeeeeeeee.wav")]
    assert [x for x in skipped if x[1] != "ambiguous_audio"] == sorted([
        ("ddddddddddd_20", "duplicate_audio", "train/Yddddddddddd.wav"),
        ("fffffffffff_40", "missing_audio", "train/fffffffffff_40.flac"),
        *(("hhhhhhhhhhh_70", "duplicate_audio", f"val/{600 + k}.wav") for k in range(1, 5)),  # every other copy
        ("odd_7", "unlisted_audio", "val/sub/odd_7.wav"),
        ("zzzzzzzzzzz_5", "unlisted_audio", "train/zzzzzzzzzzz_5.wav"),
    ])
    missing = next(s for s in scan.skips if s.reason == "missing_audio")
    for pattern in ("{ytid}_{start}", "Y{ytid}", "{ytid}", "{audiocap_id}"):
        assert pattern in missing.detail
    assert "tried" in details(scan, "unlisted_audio")["train/zzzzzzzzzzz_5.wav"]
    why = {s.id: s.detail for s in scan.skips if s.reason == "ambiguous_audio"}
    assert "also matched by eeeeeeeeeee_10" in why["eeeeeeeeeee_0"]  # each names the other row
    assert "also matched by eeeeeeeeeee_0" in why["eeeeeeeeeee_10"]


def test_audiocaps_flat_and_named_audio_folders(tmp_path):
    """audio_32000Hz/{split}/ (aac-datasets) and one audio/ folder without split folders."""
    a = tmp_path / "a"
    (a / "dataset").mkdir(parents=True)
    (a / "dataset/test.csv").write_text(f"{AC_HEAD}\n1,kkkkkkkkkkk,0,x\n")
    touch(a / "audio_32000Hz/test/kkkkkkkkkkk_0.flac")
    assert outcome(audiocaps.scan(a))[0] == {"kkkkkkkkkkk_0": "audio_32000Hz/test/kkkkkkkkkkk_0.flac"}
    b = tmp_path / "b"
    b.mkdir()
    (b / "train.csv").write_text(f"{AC_HEAD}\n1,mmmmmmmmmmm,0,x\n")
    (b / "test.csv").write_text(f"{AC_HEAD}\n2,nnnnnnnnnnn,10,y\n")
    for name in ["mmmmmmmmmmm_0.wav", "Ynnnnnnnnnnn.wav", "ooooooooooo_0.wav"]:
        touch(b / "audio" / name)
    kept, skipped = outcome(audiocaps.scan(b))
    assert kept == {"mmmmmmmmmmm_0": "audio/mmmmmmmmmmm_0.wav", "nnnnnnnnnnn_10": "audio/Ynnnnnnnnnnn.wav"}
    assert skipped == [("ooooooooooo_0", "unlisted_audio", "audio/ooooooooooo_0.wav")]


def test_audiocaps_reasons_reach_the_manifest(tmp_path):
    src = tmp_path / "src"
    (src / "train").mkdir(parents=True)
    (src / "train.csv").write_text(f"{AC_HEAD}\n1,ppppppppppp,0,one\n2,qqqqqqqqqqq,0,two\n3,qqqqqqqqqqq,5,three\n")
    tone(src / "train/ppppppppppp_0.000.wav")
    tone(src / "train/Yppppppppppp.wav")
    tone(src / "train/qqqqqqqqqqq.wav")
    tone(src / "train/stray.wav")
    manifest = run("audiocaps", src, tmp_path / "out", quiet=True)
    got = sorted((s["id"], s["split"], s["reason"]) for s in manifest["skipped"])
    assert got == [("ppppppppppp_0", "train", "duplicate_audio"), ("qqqqqqqqqqq_0", "train", "ambiguous_audio"),
                   ("qqqqqqqqqqq_5", "train", "ambiguous_audio"), ("stray", "train", "unlisted_audio")]
    assert manifest["splits"]["train"]["num_samples"] == 1
    assert all(s["detail"] for s in manifest["skipped"])


def test_matching_lists_each_folder_once(tmp_path, monkeypatch):
    """Scale: N rows and N files cost one listing per folder and no per-row stat or glob."""
    n = 1000
    rows = [f"{k},y{k:010d},{k % 60},c" for k in range(n)]
    (tmp_path / "train.csv").write_text("\n".join([AC_HEAD, *rows]) + "\n")
    folder = tmp_path / "audio/train"
    folder.mkdir(parents=True)
    for k in range(n):
        (folder / f"y{k:010d}_{k % 60}.000.flac").write_bytes(b"")
    calls = {"scandir": 0, "stat": 0}
    real_scandir, real_stat = os.scandir, os.stat

    def scandir(*a, **kw):
        calls["scandir"] += 1
        return real_scandir(*a, **kw)

    def stat(*a, **kw):
        calls["stat"] += 1
        return real_stat(*a, **kw)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "stat", stat)
    scan = audiocaps.scan(tmp_path)
    monkeypatch.undo()
    kept, skipped = outcome(scan)
    assert len(kept) == n and not skipped
    assert calls["scandir"] <= 3  # audio/ and audio/train/
    assert calls["stat"] < 40  # a fixed number of is_dir/is_file checks, not one per row


# ----------------------------------------------------------------------------- MusicCaps
def mc_row(ytid: str, start, end, eval_: bool) -> str:
    return f'{ytid},{start},{end},/m/04rlf,"[\'calm\']",A caption.,1,False,{eval_}'


def test_musiccaps_names_and_split_folders(tmp_path):
    clips = [("aaaaaaaaaaa", 30, 40, True), ("-bbbbbbbbbb", 0, 10, False), ("cc_cccccccc", 50, 60, False),
             ("ddddddddddd", 10, 20, True), ("eeeeeeeeeee", 0, 10, False), ("fffffffffff", 70, 80, True),
             ("ggggggggggg", 0, 10, True)]
    (tmp_path / "musiccaps-public.csv").write_text("\n".join([MC_HEAD, *(mc_row(*c) for c in clips)]) + "\n")
    for name in ["eval/aaaaaaaaaaa.wav",  # plain {ytid} in its split folder
                 "train/aaaaaaaaaaa.wav",  # a second copy under the other split's folder
                 "train/[-bbbbbbbbbb]-[0-10].wav",
                 "train/cc_cccccccc_50.000-60.000.wav",  # {ytid}_{start}-{end}, times spelled as floats
                 "train/ddddddddddd.wav",  # an eval clip sorted under train/: still its audio
                 "train/[eeeeeeeeeee]-[30-40].wav",  # another cut of the video
                 "eval/fffffffffff_70-80.flac", "eval/[fffffffffff]-[70-80].wav",  # bracketed wins
                 "eval/zzzzzzzzzzz.wav"]:
        touch(tmp_path / "music" / name)
    scan = musiccaps.scan(tmp_path)
    kept, skipped = outcome(scan)
    assert kept == {
        "aaaaaaaaaaa": "music/eval/aaaaaaaaaaa.wav",
        "-bbbbbbbbbb": "music/train/[-bbbbbbbbbb]-[0-10].wav",
        "cc_cccccccc": "music/train/cc_cccccccc_50.000-60.000.wav",
        "ddddddddddd": "music/train/ddddddddddd.wav",
        "fffffffffff": "music/eval/[fffffffffff]-[70-80].wav",
    }
    assert skipped == sorted([
        ("aaaaaaaaaaa", "duplicate_audio", "music/train/aaaaaaaaaaa.wav"),
        ("fffffffffff", "duplicate_audio", "music/eval/fffffffffff_70-80.flac"),
        ("eeeeeeeeeee", "missing_audio", "music/eeeeeeeeeee.wav"),
        ("ggggggggggg", "missing_audio", "music/ggggggggggg.wav"),
        ("[eeeeeeeeeee]-[30-40]", "unlisted_audio", "music/train/[eeeeeeeeeee]-[30-40].wav"),
        ("zzzzzzzzzzz", "unlisted_audio", "music/eval/zzzzzzzzzzz.wav"),
    ])
    splits = {e.id: e.split for e in scan.entries}
    assert splits["ddddddddddd"] == "eval" and splits["-bbbbbbbbbb"] == "train"  # the CSV decides
    assert "another cut" in details(scan, "unlisted_audio")["music/train/[eeeeeeeeeee]-[30-40].wav"]
    assert "[{ytid}]-[{start_s}-{end_s}]" in details(scan, "unlisted_audio")["music/eval/zzzzzzzzzzz.wav"]


def test_musiccaps_split_folders_beside_the_csv(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "musiccaps-public.csv").write_text(
        "\n".join([MC_HEAD, mc_row("hhhhhhhhhhh", 0, 10, False), mc_row("iiiiiiiiiii", 0, 10, True)]) + "\n")
    tone(src / "train/hhhhhhhhhhh.wav")
    tone(src / "eval/[iiiiiiiiiii]-[0-10].wav")
    tone(src / "eval/[iiiiiiiiiii]-[0-10].flac")  # same pattern, preferred extension
    manifest = run("musiccaps", src, tmp_path / "out", quiet=True)
    assert {s: i["num_samples"] for s, i in manifest["splits"].items()} == {"eval": 1, "train": 1}
    assert [(s["reason"], s["path"]) for s in manifest["skipped"]] == [
        ("duplicate_audio", "eval/[iiiiiiiiiii]-[0-10].wav")]


# ----------------------------------------------------------------------------- Clotho
CAPS = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5"


def captions_csv(path: Path, names: list[str]) -> None:
    rows = [CAPS] + ['"' + n.replace('"', '""') + '",a,b,c,d,e' for n in names]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_clotho_v1_archives_extracted_at_src(tmp_path):
    """v1: development + evaluation only; `7z x clotho_audio_{split}.7z` gives {split}/ folders."""
    captions_csv(tmp_path / "clotho_captions_development.csv", ["Dev one.wav", "Dev two.wav"])
    captions_csv(tmp_path / "clotho_captions_evaluation.csv", ["Eval one.wav"])
    for name in ["development/Dev one.wav", "development/Dev two.wav", "evaluation/Eval one.wav",
                 "evaluation/Eval extra.wav"]:
        touch(tmp_path / name)
    scan = clotho.scan(tmp_path)
    kept, skipped = outcome(scan)
    assert kept == {"Dev one.wav": "development/Dev one.wav", "Dev two.wav": "development/Dev two.wav",
                    "Eval one.wav": "evaluation/Eval one.wav"}
    assert skipped == [("Eval extra.wav", "unlisted_audio", "evaluation/Eval extra.wav")]
    assert {e.split for e in scan.entries} == {"development", "evaluation"}


def test_clotho_v2_csv_with_v21_audio_and_back(tmp_path):
    """v2.1 renamed files with ':' (and spaces around it) to '_': either side may be the old spelling."""
    old = ["raindrops on metal: police background.wav", "Intersection Wet : Metro Pass.wav"]
    new = ["raindrops on metal_police background.wav", "Intersection Wet_Metro Pass.wav"]
    captions_csv(tmp_path / "clotho_captions_development.csv", old)  # a v2 CSV
    for n in new:
        touch(tmp_path / "clotho_audio_development" / n)  # v2.1 audio
    captions_csv(tmp_path / "clotho_captions_validation.csv", [new[0]])  # a v2.1 CSV
    touch(tmp_path / "clotho_audio_validation" / old[0])  # audio extracted from a v2 archive
    (tmp_path / "clotho_metadata_validation.csv").write_bytes(  # metadata from v2: the old spelling
        b"file_name,keywords,sound_id,sound_link,start_end_samples,manufacturer,license\n"
        + f'"{old[0]}",rain;metal,9,http://x/9,"[0, 1]",M,CC0\n'.encode())
    scan = clotho.scan(tmp_path)
    kept, skipped = outcome(scan)
    assert next(e for e in scan.entries if e.split == "validation").fields["metadata"]["sound_id"] == "9"
    assert kept == {old[0]: f"clotho_audio_development/{new[0]}", old[1]: f"clotho_audio_development/{new[1]}",
                    new[0]: f"clotho_audio_validation/{old[0]}"}  # ids stay the CSV's names
    assert skipped == []


def test_clotho_exact_name_beats_renaming_and_ties_are_ambiguous(tmp_path):
    captions_csv(tmp_path / "clotho_captions_evaluation.csv", ["a_b.wav", "a:b.wav", "x?y.wav"])
    for n in ["a_b.wav", "x_y.wav", "x|y.wav"]:
        touch(tmp_path / "clotho_audio_files/evaluation" / n)  # the DCASE baseline layout
    scan = clotho.scan(tmp_path)
    kept, skipped = outcome(scan)
    assert kept == {"a_b.wav": "clotho_audio_files/evaluation/a_b.wav"}  # exact name, not shared with a:b.wav
    assert skipped == [("a:b.wav", "missing_audio", "clotho_audio_files/evaluation/a:b.wav"),
                       ("x?y.wav", "ambiguous_audio", "clotho_audio_files/evaluation/x_y.wav")]
    assert "x|y.wav" in details(scan, "ambiguous_audio")["clotho_audio_files/evaluation/x_y.wav"]


def test_clotho_dcase_test_audio_folder(tmp_path):
    (tmp_path / "clotho_metadata_test.csv").write_text(
        "file_name;keywords;sound_id;sound_link;start_end_samples;manufacturer;license\n"
        "test_0001.wav;bird;7;http://x/7;[0, 3];A;CC0\n")
    touch(tmp_path / "clotho_test_audio/test_0001.wav")
    kept, skipped = outcome(clotho.scan(tmp_path))
    assert kept == {"test_0001.wav": "clotho_test_audio/test_0001.wav"} and not skipped


# ----------------------------------------------------------------------------- LibriLight
def test_librilight_stray_folders_are_reported_not_splits(tmp_path):
    root = tmp_path / "librilight"
    tone(root / "small/100/book_a/ch01.flac")
    tone(root / "small_cut/100/book_a/ch01_0000.flac")  # a derived copy beside the subsets
    tone(root / "backup/old.wav")
    tone(root / "stray_at_root.flac")
    (root / "notes").mkdir()  # no audio: nothing to report
    (root / "notes/readme.txt").write_text("x")
    manifest = run("librilight", root, tmp_path / "out", quiet=True)
    assert sorted(manifest["splits"]) == ["small"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == ["small-000000.tar"]
    got = sorted((s["path"], s["split"], s["reason"]) for s in manifest["skipped"])
    assert got == [("backup/old.wav", None, "unlisted_audio"),
                   ("small_cut/100/book_a/ch01_0000.flac", None, "unlisted_audio"),
                   ("stray_at_root.flac", None, "unlisted_audio")]
    assert all("not a subset folder" in s["detail"] for s in manifest["skipped"])
    one = librilight.scan(root / "small")  # a subset folder as --src: its siblings are not scanned
    assert [e.id for e in one.entries] == ["100/book_a/ch01"] and not one.skips


def test_librilight_root_without_subsets_names_what_it_found(tmp_path):
    touch(tmp_path / "backup/1/b/c.flac")
    with pytest.raises(PrepError, match=r"no LibriLight subset folders .*found backup/"):
        librilight.scan(tmp_path)
