"""Every fixture dataset (real on-disk formats) prepared into shards and compared with the fixtures'
expected.json: kept ids, text, extras, audio facts, skips, manifest.

The fixtures are built by tests/fixtures/datasets.py (the `dataset_fixtures` fixture of conftest.py),
or read from $ALM_FIXTURES (any fixture set with the same layout and an expected.json).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from alm.data.shards import key_from_id, read_shard
from alm.data_prep.cli import run

SRC = {
    "audiocaps": "audiocaps",
    "clotho": "clotho",
    "musiccaps": "musiccaps",
    "librilight": "librilight",
    "librispeech_finetuning": "librilight/librispeech_finetuning",
}
EXACT = ("split", "sample_rate", "channels", "num_frames", "audio_path")


def read_out(out: Path) -> dict[str, dict]:
    """{id: {"json": dict, "flac": bytes, "shard": name}} over all shards of `out`."""
    samples: dict[str, dict] = {}
    for shard in sorted(out.glob("*.tar")):
        for s in read_shard(str(shard)):
            meta = json.loads(s["json"])
            assert s["__key__"] == key_from_id(meta["id"])
            assert meta["id"] not in samples, f"{meta['id']} written twice"
            samples[meta["id"]] = {"json": meta, "flac": s["flac"], "shard": shard.name}
    return samples


@pytest.fixture(scope="module")
def expected(dataset_fixtures) -> dict:
    return json.loads((dataset_fixtures / "expected.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, dataset_fixtures) -> dict[str, tuple[Path, dict, dict]]:
    out: dict[str, tuple[Path, dict, dict]] = {}
    for name, sub in SRC.items():
        dest = tmp_path_factory.mktemp(name)
        manifest = run(name, dataset_fixtures / sub, dest, workers=1, quiet=True)
        out[name] = (dest, manifest, read_out(dest))
    return out


@pytest.mark.parametrize("name", list(SRC))
def test_kept_samples_match_expected(name, prepared, expected):
    _, _, samples = prepared[name]
    want = expected[name]["kept"]
    assert sorted(samples) == sorted(want)
    for sid, exp in want.items():
        got = samples[sid]["json"]
        assert got["id"] == sid and got["dataset"] == name
        assert got["duration_s"] == pytest.approx(exp["duration_s"], abs=1e-3)
        for field in EXACT:
            assert got[field] == exp[field], (sid, field)
        extras = {k: v for k, v in exp.items() if k not in EXACT and k != "duration_s"}
        for field, value in extras.items():  # captions / transcript / metadata / speaker / ...
            assert got[field] == value, (sid, field)
        assert set(got) == set(exp) | {"id", "dataset"}


@pytest.mark.parametrize("name", list(SRC))
def test_skipped_match_expected(name, prepared, expected):
    _, manifest, samples = prepared[name]
    got = {s["id"]: s["reason"] for s in manifest["skipped"]}
    assert got == expected[name]["skipped"]
    assert not set(got) & set(samples)
    for s in manifest["skipped"]:
        assert s["path"] and not os.path.isabs(s["path"])


@pytest.mark.parametrize("name", list(SRC))
def test_flac_members_are_mono_native_rate(name, prepared):
    _, _, samples = prepared[name]
    for sid, s in samples.items():
        audio, rate = sf.read(io.BytesIO(s["flac"]), always_2d=True)
        assert audio.shape[1] == 1, sid
        assert rate == s["json"]["sample_rate"]
        assert audio.shape[0] == s["json"]["num_frames"]
        assert np.abs(audio).max() > 0


@pytest.mark.parametrize("name", list(SRC))
def test_manifest_counts(name, prepared, expected):
    out, manifest, samples = prepared[name]
    on_disk = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert on_disk == manifest and manifest["dataset"] == name
    kept = expected[name]["kept"]
    for split in {e["split"] for e in kept.values()}:
        info = manifest["splits"][split]
        ids = [sid for sid, e in kept.items() if e["split"] == split]
        assert info["num_samples"] == len(ids)
        assert info["hours"] == pytest.approx(sum(kept[i]["duration_s"] for i in ids) / 3600, abs=1e-5)
        assert {samples[i]["shard"] for i in ids} == set(info["shards"])
        assert all((out / shard).is_file() for shard in info["shards"])
    assert sum(i["num_samples"] for i in manifest["splits"].values()) == len(samples)
    listed = sorted(s for info in manifest["splits"].values() for s in info["shards"])
    assert sorted(p.name for p in out.glob("*.tar")) == listed


def test_resampled_output_keeps_source_facts(tmp_path, expected, dataset_fixtures):
    run("musiccaps", dataset_fixtures / "musiccaps", tmp_path, sample_rate=16000, workers=1, quiet=True)
    samples = read_out(tmp_path)
    for sid, exp in expected["musiccaps"]["kept"].items():
        meta = samples[sid]["json"]
        facts = ("sample_rate", "channels", "num_frames")
        assert [meta[f] for f in facts] == [exp[f] for f in facts]
        info = sf.info(io.BytesIO(samples[sid]["flac"]))
        assert (info.samplerate, info.channels) == (16000, 1)
        assert abs(info.frames - exp["duration_s"] * 16000) <= 2
