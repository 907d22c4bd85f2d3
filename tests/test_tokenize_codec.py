"""Codec tokenization with a tiny random EnCodec saved to disk and loaded by path (no mocks)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from alm.data.audio import encode_flac
from alm.data.shards import ShardWriter, json_bytes, key_from_id, npy_load, read_shard
from alm.errors import UserError
from alm.tokenizers import codec as C

SR_IN = 24000  # shard audio rate; the tiny codec runs at 16 kHz, so the pass resamples


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory):
    return C.make_tiny_codec(tmp_path_factory.mktemp("codec") / "tiny", seed=0)


@pytest.fixture(scope="module")
def codec(codec_dir):
    return C.load_codec(codec_dir)


def tone(seconds: float, freq: float, seed: int, rate: int) -> np.ndarray:
    """A rising, amplitude-modulated tone plus noise (non-stationary, so codes change over time)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    sweep = np.sin(2 * np.pi * freq * t * (1 + 2 * t))
    envelope = 0.25 + 0.2 * np.sin(2 * np.pi * 3 * t)
    return (envelope * sweep + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def batch(codec_rate: int = 16000):
    """(3, T) padded audio with lengths (1 s, 0.6 s, 0.25 s)."""
    clips = [tone(1.0, 220, 0, codec_rate), tone(0.6, 660, 1, codec_rate), tone(0.25, 1500, 2, codec_rate)]
    lengths = torch.tensor([len(c) for c in clips])
    audio = torch.zeros(3, int(lengths.max()))
    for i, c in enumerate(clips):
        audio[i, : len(c)] = torch.from_numpy(c)
    return audio, lengths


def test_random_init_codebooks_are_zero_and_tiny_codec_fixes_that(codec):
    from transformers import EncodecModel

    fresh = EncodecModel(codec.config)
    assert all(float(layer.codebook.embed.abs().max()) == 0.0 for layer in fresh.quantizer.layers)
    with torch.no_grad():
        out = fresh.encode(torch.randn(1, 1, 16000), bandwidth=codec.config.target_bandwidths[-1])
    assert out.audio_codes.unique().tolist() == [0]  # degenerate: every code is 0
    assert all(float(layer.codebook.embed.abs().max()) > 0 for layer in codec.quantizer.layers)


def test_load_codec_by_path_and_info(codec_dir, codec, tmp_path):
    assert not codec.training
    assert os.path.isfile(os.path.join(codec_dir, "preprocessor_config.json"))
    info = C.codec_info(codec)
    assert info == {
        "name": str(codec_dir), "sample_rate": 16000, "hop_length": 320, "frame_rate": 50, "n_q": 4,
        "codebook_size": 32,
    }
    with pytest.raises(UserError, match="no such local path"):
        C.load_codec(tmp_path / "missing" / "codec")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json"):
        C.load_codec(tmp_path / "empty")


def test_encode_levels_vary_deterministic_and_decode(codec):
    audio, lengths = batch()
    codes = C.encode(codec, audio, lengths, n_q=4)  # (B, n_q, F)
    frames = [math.ceil(int(n) / 320) for n in lengths]
    assert codes.dtype == torch.long and codes.shape == (3, 4, max(frames))
    for b, f in enumerate(frames):
        assert (codes[b, :, :f] >= 0).all() and (codes[b, :, :f] < 32).all()
        assert (codes[b, :, f:] == -1).all()  # padding frames are marked
    for q in range(4):
        assert codes[0, q].unique().numel() >= 4, f"level {q} barely varies: {codes[0, q].tolist()}"
    assert not torch.equal(codes[0, :, :10], codes[1, :, :10])  # different audio, different codes
    assert torch.equal(codes, C.encode(codec, audio, lengths, n_q=4))  # deterministic
    # fewer levels = the prefix (residual VQ); bandwidth picks levels: 0.5 kbps = 2 x 5 bits x 50 Hz
    assert torch.equal(C.encode(codec, audio, lengths, n_q=2), codes[:, :2])
    assert torch.equal(C.encode(codec, audio, lengths, bandwidth=0.5), codes[:, :2])
    assert C.encode(codec, audio, lengths).shape[1] == 4  # default: all levels
    # a long-enough clip encoded alone matches its batched codes except (at most) its last frame
    solo = C.encode(codec, audio[1:2, : lengths[1]], n_q=4)
    assert torch.equal(solo[0, :, : frames[1] - 1], codes[1, :, : frames[1] - 1])
    with pytest.raises(ValueError, match="levels"):
        C.encode(codec, audio, lengths, n_q=5)
    with pytest.raises(ValueError, match="not both"):
        C.encode(codec, audio, lengths, n_q=2, bandwidth=0.5)

    wav = C.decode(codec, codes)  # (B, F * hop)
    assert wav.shape == (3, max(frames) * 320) and torch.isfinite(wav).all()
    assert float(wav[0].abs().max()) > 0
    assert (wav[2, frames[2] * 320 :] == 0).all()  # padding frames decode to silence
    assert C.decode(codec, codes[:, :2]).shape == wav.shape


def write_audio_shards(root, corrupt_key: str):
    """2 shards of 3 samples at 24 kHz (varied lengths), one sample with a corrupt flac member."""
    ids = [f"clip {i}.wav" for i in range(6)]  # ids needing key escaping
    with ShardWriter(root, "audio", max_count=3) as writer:
        for i, sample_id in enumerate(ids):
            key = key_from_id(sample_id)
            flac = b"this is not a flac file" if key == corrupt_key else encode_flac(
                tone(0.3 + 0.15 * i, 200 + 100 * i, i, SR_IN), SR_IN
            )
            meta = {"id": sample_id, "dataset": "toy", "captions": [f"tone number {i}"]}
            writer.write({"__key__": key, "flac": flac, "json": json_bytes(meta)})
        paths = writer.close()
    return paths, [key_from_id(s) for s in ids]


def test_tokenize_codec_shards(codec_dir, codec, tmp_path):
    corrupt = key_from_id("clip 4.wav")
    in_paths, keys = write_audio_shards(tmp_path / "audio", corrupt)
    out = tmp_path / "codes"
    summary = C.tokenize_codec_shards(str(tmp_path / "audio"), out, codec, n_q=4, batch_size=2, progress=False)

    names = [os.path.basename(p) for p in in_paths]
    assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == sorted(names + ["codec.json", "errors", "errors.json"])
    assert os.listdir(out / "errors") == [f"{names[1]}.json"]  # the one shard with a failed sample
    assert summary["samples"] == 5
    errors = json.loads((out / "errors.json").read_text())
    assert errors == [{"key": corrupt, "shard": names[1], "reason": "tokenizer_failed"}]

    got_keys = []
    for in_path, name in zip(in_paths, names):
        in_samples = {s["__key__"]: s for s in read_shard(in_path)}
        for sample in read_shard(str(out / name)):
            key = sample["__key__"]
            got_keys.append(key)
            codes = npy_load(sample["codes.npy"])  # (n_q, F)
            seconds = 0.3 + 0.15 * keys.index(key)
            assert codes.dtype == np.int16 and codes.shape == (4, math.ceil(round(seconds * 16000) / 320))
            assert codes.min() >= 0 and codes.max() < 32 and len(np.unique(codes[0])) > 2
            assert sample["json"] == in_samples[key]["json"]
    assert got_keys == [k for k in keys if k != corrupt]  # same keys, same order, minus the corrupt one

    meta = json.loads((out / "codec.json").read_text())
    assert meta["n_q"] == 4 and meta["sample_rate"] == 16000 and meta["frame_rate"] == 50
    assert meta["dtype"] == "int16" and meta["member"] == "codes.npy" and meta["source"] == str(tmp_path / "audio")

    # codes in the shards equal encoding the (resampled) clip directly
    from alm.data.audio import load_mono

    first = next(iter(read_shard(in_paths[0])))
    wav, _ = load_mono(first["flac"], 16000)
    direct = C.encode(codec, torch.from_numpy(wav)[None], n_q=4)[0].numpy()
    stored = npy_load(next(iter(read_shard(str(out / names[0]))))["codes.npy"])
    np.testing.assert_array_equal(stored, direct)

    # a rerun skips finished shards; a deleted shard is redone identically
    before = (out / names[0]).read_bytes()
    mtime = os.stat(out / names[1]).st_mtime_ns
    os.remove(out / names[0])
    again = C.tokenize_codec_shards(str(tmp_path / "audio"), out, codec, n_q=4, batch_size=2, progress=False)
    assert again["samples"] == 3 and (out / names[0]).read_bytes() == before
    assert os.stat(out / names[1]).st_mtime_ns == mtime
    assert json.loads((out / "errors.json").read_text()) == errors
    # a different n_q into the same directory is refused
    with pytest.raises(ValueError, match="n_q"):
        C.tokenize_codec_shards(str(tmp_path / "audio"), out, codec, n_q=2, progress=False)

    # the CLI, by path, with fewer levels: the stored codes are the prefix of the 4-level ones
    out2 = tmp_path / "codes2"
    rc = C.main(["--shards", str(tmp_path / "audio"), "--out", str(out2), "--codec", str(codec_dir),
                 "--n-q", "2", "--batch-size", "3", "--no-progress"])
    assert rc == 0
    for name in names:
        four = {s["__key__"]: npy_load(s["codes.npy"]) for s in read_shard(str(out / name))}
        for s in read_shard(str(out2 / name)):
            two = npy_load(s["codes.npy"])
            assert two.shape[0] == 2
            # batch composition differs (3 vs 2): all but the last frame must agree
            np.testing.assert_array_equal(two[:, :-1], four[s["__key__"]][:2, :-1])
    assert json.loads((out2 / "codec.json").read_text())["name"] == str(codec_dir)
    assert C.main(["--shards", str(tmp_path / "audio"), "--out", str(tmp_path / "x"),
                   "--codec", str(tmp_path / "nope")]) == 2
