"""Audio formats: every supported format written here with Python libraries (soundfile writes
flac/wav/aiff/mp3/ogg/opus, PyAV writes m4a/aac/webm; no system tools), decoded, downmixed,
resampled and prepared into shards; bad files reported in the manifest with their reason."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from alm.data.audio import (
    DECODABLE_EXTS, TRUNCATION_TOLERANCE, Resampler, decode_audio, decoder_for, encode_flac, resample, to_mono,
)
from alm.data_prep.common import AUDIO_EXTS, DECODED_EXTS, UNSUPPORTED_EXTS, audio_by_stem, audio_ext
from alm.data_prep.decode import process

FREQ = 440.0


def sine(rate: int, seconds: float, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    """(frames, channels): channel c is a sine at FREQ * (c + 1)."""
    t = np.arange(int(rate * seconds)) / rate
    return np.stack([amp * np.sin(2 * np.pi * FREQ * (c + 1) * t) for c in range(channels)], axis=1).astype(np.float32)


def write_av(path: Path, x: np.ndarray, rate: int, container: str, codec: str, options=None, vbr_q=None) -> Path:
    """Encode (frames, channels) float audio with PyAV (FFmpeg inside the wheel)."""
    import av
    from av.codec.context import Flags

    layout = {1: "mono", 2: "stereo"}[x.shape[1]]
    with av.open(str(path), "w", format=container, options=options or {}) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        if vbr_q is not None:  # LAME VBR at this quality
            stream.codec_context.qscale = vbr_q
            stream.codec_context.flags |= Flags.qscale
        step = 4096
        for i in range(0, len(x), step):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[i : i + step].T), format="fltp", layout=layout)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


# name: (extension, writer(path, x, rate), rate, decoder, lossy)
FORMATS = {
    "flac": (".flac", lambda p, x, r: sf.write(p, x, r, format="FLAC", subtype="PCM_16"), 44100, "soundfile", False),
    "wav": (".wav", lambda p, x, r: sf.write(p, x, r, format="WAV", subtype="PCM_16"), 44100, "soundfile", False),
    "aiff": (".aiff", lambda p, x, r: sf.write(p, x, r, format="AIFF", subtype="PCM_16"), 44100, "soundfile", False),
    "mp3": (".mp3", lambda p, x, r: sf.write(p, x, r, format="MP3", subtype="MPEG_LAYER_III"), 44100, "pyav", True),
    "ogg-vorbis": (".ogg", lambda p, x, r: sf.write(p, x, r, format="OGG", subtype="VORBIS"), 44100, "pyav", True),
    "opus": (".opus", lambda p, x, r: sf.write(p, x, r, format="OGG", subtype="OPUS"), 48000, "pyav", True),
    "m4a-aac": (".m4a", lambda p, x, r: write_av(Path(p), x, r, "ipod", "aac"), 44100, "pyav", True),
    "aac-adts": (".aac", lambda p, x, r: write_av(Path(p), x, r, "adts", "aac"), 44100, "pyav", True),
    "webm-opus": (".webm", lambda p, x, r: write_av(Path(p), x, r, "webm", "libopus"), 48000, "pyav", True),
}


def best_alignment(decoded: np.ndarray, source: np.ndarray, max_lag: int = 4096) -> tuple[float, int]:
    """Highest correlation between decoded[lag:] and source over lags 0..max_lag (codec priming)."""
    best = (-1.0, 0)
    n = len(source) - max_lag
    ref = source[:n]
    for lag in range(0, max_lag + 1):
        seg = decoded[lag : lag + n]
        if len(seg) < n:
            break
        c = float(np.dot(seg, ref) / (np.linalg.norm(seg) * np.linalg.norm(ref) + 1e-12))
        best = max(best, (c, lag))
    return best


def snr_db(decoded: np.ndarray, source: np.ndarray, edge: int = 2048) -> float:
    """Signal-to-error ratio away from the first/last `edge` frames (codec start-up transients)."""
    n = min(len(decoded), len(source))
    ref, noise = source[edge : n - edge], decoded[edge : n - edge] - source[edge : n - edge]
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum(noise**2), 1e-20)))


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_format_decodes_to_the_source(tmp_path, name):
    ext, write, rate, decoder, lossy = FORMATS[name]
    src = sine(rate, 1.0, channels=2)
    path = str(tmp_path / f"clip{ext}")
    write(path, src, rate)
    assert decoder_for(path) == decoder and audio_ext(path) == ext
    audio, got_rate = decode_audio(path)
    assert got_rate == rate and audio.shape[0] == 2 and audio.dtype == np.float32
    frames = audio.shape[1]
    if not lossy:
        assert frames == len(src)
        assert np.abs(audio.T - src).max() < 2.0 / 32768
        return
    # lossy: length within the codec's priming/padding, content the source after alignment
    assert len(src) - TRUNCATION_TOLERANCE <= frames <= len(src) + TRUNCATION_TOLERANCE, frames
    for ch in range(2):
        corr, lag = best_alignment(audio[ch], src[:, ch])
        assert corr > 0.98, (ch, corr)
        assert snr_db(audio[ch, lag:], src[:, ch]) > 15.0
    # the same bytes decode identically through the bytes path (soundfile sniffs, hands over to PyAV)
    from_bytes, _ = decode_audio(Path(path).read_bytes())
    assert from_bytes.shape == audio.shape and np.array_equal(from_bytes, audio)


@pytest.mark.parametrize("vbr_q", [None, 4])
def test_mp3_without_xing_header_decodes_to_its_end(tmp_path, vbr_q):
    """CBR and VBR mp3 with no Xing/Info header (older encoders): libsndfile would stop at its
    size/bitrate estimate of the length; the whole stream must come out."""
    rng = np.random.default_rng(0)  # varied content (tones, silence, noise) so VBR frame sizes vary
    parts = [0.4 * np.sin(2 * np.pi * f * np.arange(22050) / 44100) for f in (220, 1760, 5000)]
    parts += [np.zeros(22050), 0.3 * rng.standard_normal(22050), 0.05 * rng.standard_normal(22050)]
    src = np.concatenate(parts + parts[::-1]).astype(np.float32)[:, None]
    path = write_av(tmp_path / "old.mp3", src, 44100, "mp3", "libmp3lame", options={"write_xing": "0"}, vbr_q=vbr_q)
    assert b"Xing" not in path.read_bytes()[:4096] and b"Info" not in path.read_bytes()[:4096]
    status, facts, flac = process((str(path), None))
    assert status == "ok", facts
    assert 0 <= facts["num_frames"] - len(src) <= 3 * 1152  # LAME's delay + padding (< 3 frames), nothing lost
    mono, _ = sf.read(io.BytesIO(flac), dtype="float32")
    corr, _ = best_alignment(mono, src[:, 0], max_lag=2048)
    assert corr > 0.9, corr
    # with a Xing header (the default), the length is exact (LAME's gapless info is applied)
    tagged = write_av(tmp_path / "new.mp3", src, 44100, "mp3", "libmp3lame", vbr_q=vbr_q)
    assert process((str(tagged), None))[1]["num_frames"] == len(src)


def test_random_bytes_are_corrupt_not_noise():
    rng = np.random.default_rng(0)
    for n in (17, 5000, 200_000):
        with pytest.raises(ValueError, match="undecodable audio"):
            decode_audio(rng.integers(0, 256, n, dtype=np.uint8).tobytes())


@pytest.mark.parametrize("subtype,bound", [("PCM_U8", 1 / 64), ("PCM_16", 1 / 16384), ("PCM_24", 1e-6),
                                           ("PCM_32", 1e-6), ("FLOAT", 1e-7), ("DOUBLE", 1e-7)])
def test_wav_bit_depths(tmp_path, subtype, bound):
    src = sine(22050, 0.5, channels=1)
    path = tmp_path / f"x-{subtype}.wav"
    sf.write(path, src, 22050, format="WAV", subtype=subtype)
    assert sf.info(path).subtype == subtype
    audio, rate = decode_audio(str(path))
    assert rate == 22050 and audio.shape == (1, len(src))
    assert np.abs(audio[0] - src[:, 0]).max() < bound
    status, facts, flac = process((str(path), None))
    assert status == "ok" and facts == {"sample_rate": 22050, "channels": 1, "num_frames": len(src)}


def test_multichannel_downmix_is_the_channel_mean(tmp_path):
    rate = 16000
    src = sine(rate, 0.5, channels=6, amp=0.15)  # six different sines
    path = tmp_path / "surround.wav"
    sf.write(path, src, rate, format="WAV", subtype="FLOAT")
    status, facts, flac = process((str(path), None))
    assert status == "ok" and facts["channels"] == 6 and facts["num_frames"] == len(src)
    mono, _ = sf.read(io.BytesIO(flac), dtype="float32")
    assert np.abs(mono - src.mean(axis=1)).max() < 1.0 / 32768 + 1e-7
    assert np.abs(to_mono(src.T) - src.mean(axis=1)).max() == 0.0
    # a stereo m4a through PyAV: channels counted, downmix the mean of the decoded channels
    m4a = write_av(tmp_path / "stereo.m4a", sine(44100, 0.5, channels=2), 44100, "ipod", "aac")
    decoded, _ = decode_audio(str(m4a))
    status, facts, flac = process((str(m4a), None))
    assert status == "ok" and facts["channels"] == 2
    mono, _ = sf.read(io.BytesIO(flac), dtype="float32")
    assert np.abs(mono - decoded.mean(axis=0)).max() < 1.0 / 32768 + 1e-6


def test_resample_44k1_to_24k_is_accurate_and_streamed_equals_whole(tmp_path):
    rate_in, rate_out = 44100, 24000
    t_in = np.arange(rate_in * 2) / rate_in
    t_out = np.arange(rate_out * 2) / rate_out
    x = (0.5 * np.sin(2 * np.pi * 1000 * t_in) + 0.3 * np.sin(2 * np.pi * 9000 * t_in)).astype(np.float32)
    want = 0.5 * np.sin(2 * np.pi * 1000 * t_out) + 0.3 * np.sin(2 * np.pi * 9000 * t_out)
    y = resample(x, rate_in, rate_out)
    assert len(y) == len(want)
    inner = slice(1000, len(y) - 1000)  # away from the edges' filter transients
    assert np.abs(y[inner] - want[inner]).max() < 1e-3
    # a tone above the output Nyquist (14 kHz > 12 kHz) is removed, not aliased to 10 kHz
    alias = resample((0.5 * np.sin(2 * np.pi * 14000 * t_in)).astype(np.float32), rate_in, rate_out)
    assert np.sqrt(np.mean(alias[inner] ** 2)) < 1e-3
    # streamed in uneven chunks == whole array, exactly
    r = Resampler(rate_in, rate_out)
    bounds = [0, 1, 777, 30000, 65536, len(x)]
    chunks = [r(x[a:b]) for a, b in zip(bounds, bounds[1:])] + [r(np.zeros(0, np.float32), last=True)]
    assert np.array_equal(np.concatenate(chunks), y)
    # prep's block-by-block conversion writes the very bytes converting the whole file would
    path = tmp_path / "long.wav"
    stereo = sine(rate_in, 5.0, channels=2)
    sf.write(path, stereo, rate_in, format="WAV", subtype="FLOAT")
    status, facts, flac = process((str(path), rate_out))
    assert status == "ok" and facts == {"sample_rate": rate_in, "channels": 2, "num_frames": len(stereo)}
    assert flac == encode_flac(resample(to_mono(stereo.T), rate_in, rate_out), rate_out)


def test_prep_memory_is_bounded_by_the_output_not_the_recording(tmp_path):
    rate, seconds = 48000, 120.0
    path = tmp_path / "two-minutes.wav"
    with sf.SoundFile(path, "w", rate, 2, format="WAV", subtype="PCM_16") as f:
        for _ in range(int(seconds / 10)):
            f.write(sine(rate, 10.0, channels=2))
    decoded_bytes = int(rate * seconds) * 2 * 4  # the whole recording as float32 stereo: 46 MB
    tracemalloc.start()
    try:
        status, facts, flac = process((str(path), 16000))
        _, streamed_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        decode_audio(str(path))  # the whole-array path, to show the measurement sees big arrays
        _, whole_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == "ok" and facts["num_frames"] == int(rate * seconds)
    assert whole_peak > decoded_bytes
    assert streamed_peak < 0.1 * decoded_bytes, (streamed_peak, decoded_bytes, len(flac))


def _truncate(path: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    out = path.with_name("cut-" + path.name)
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def test_bad_files_are_reported_with_their_reason(tmp_path):
    src = sine(44100, 2.0)
    mp3 = tmp_path / "a.mp3"
    sf.write(mp3, src, 44100, format="MP3", subtype="MPEG_LAYER_III")
    status, detail, _ = process((str(_truncate(mp3)), None))
    assert status == "corrupt_audio" and detail.startswith("truncated: decoded "), detail
    ogg = tmp_path / "a.ogg"
    sf.write(ogg, src, 44100, format="OGG", subtype="VORBIS")
    status, detail, _ = process((str(_truncate(ogg)), None))  # no final page: FFmpeg cannot find the end
    assert status == "corrupt_audio" and "FFmpeg" in detail, detail
    webm = write_av(tmp_path / "a.webm", sine(48000, 2.0), 48000, "webm", "libopus")
    status, detail, _ = process((str(_truncate(webm)), None))
    assert status == "corrupt_audio" and "truncated" in detail, detail
    m4a = write_av(tmp_path / "a.m4a", src, 44100, "ipod", "aac")  # index (moov) at the end: gone
    status, detail, _ = process((str(_truncate(m4a)), None))
    assert status == "corrupt_audio" and "FFmpeg" in detail and str(tmp_path) not in detail, detail
    page = tmp_path / "page.m4a"
    page.write_bytes(b"<html><body>403 Forbidden</body></html>")
    assert process((str(page), None))[0] == "corrupt_audio"
    wma = tmp_path / "song.WMA"
    wma.write_bytes(b"\x30\x26\xb2\x75" + bytes(100))
    status, detail, _ = process((str(wma), None))
    assert status == "unsupported_format" and ".WMA is not a supported audio format" in detail
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1)), 16000)
    assert process((str(empty), None))[:2] == ("empty_audio", "file decodes to 0 frames")
    zero = tmp_path / "zero.mp3"
    zero.write_bytes(b"")
    assert process((str(zero), None))[:2] == ("corrupt_audio", "file is 0 bytes")


def test_extension_tables_and_preference_order():
    assert set(DECODED_EXTS) == set(DECODABLE_EXTS) and not set(UNSUPPORTED_EXTS) & set(DECODED_EXTS)
    assert AUDIO_EXTS[:2] == (".flac", ".wav") and len(set(AUDIO_EXTS)) == len(AUDIO_EXTS)
    assert all(decoder_for("x" + e) is None for e in UNSUPPORTED_EXTS)
    assert audio_ext("a.WMA") == ".wma" and audio_ext("a.txt") is None and audio_ext("a.Mp3") == ".mp3"
    names = ["k.mp3", "k.m4a", "k.wma", "k.wav", "k.opus", "k.flac", "k.webm", "k.ogg"]
    assert audio_by_stem(names)["k"] == ["k.flac", "k.wav", "k.opus", "k.ogg", "k.m4a", "k.webm", "k.mp3", "k.wma"]


def test_prep_audiocaps_with_mp3_and_m4a(tmp_path):
    """mp3 and m4a go through `alm prep audiocaps` into shards; a truncated mp3 and a wma are reported."""
    from alm.data.shards import read_shard
    from alm.data_prep.cli import main

    src = tmp_path / "audiocaps"
    (src / "audio/train").mkdir(parents=True)
    header = "audiocap_id,youtube_id,start_time,caption"
    rows = ["1,mp3Clip0000,30,a tone in mp3", "2,m4aClip0000,0,a tone in aac", "3,cutMp3Clip0,10,truncated",
            "4,wmaClip0000,0,windows media", "5,flacClip000,0,lossless"]
    (src / "train.csv").write_text("\n".join([header] + rows) + "\n")
    audio = src / "audio/train"
    stereo = sine(44100, 1.0, channels=2)
    sf.write(audio / "mp3Clip0000_30.mp3", stereo, 44100, format="MP3", subtype="MPEG_LAYER_III")
    write_av(audio / "m4aClip0000_0.m4a", stereo, 44100, "ipod", "aac")
    sf.write(tmp_path / "full.mp3", sine(44100, 3.0), 44100, format="MP3", subtype="MPEG_LAYER_III")
    (audio / "cutMp3Clip0_10.mp3").write_bytes(_truncate(tmp_path / "full.mp3").read_bytes())
    (audio / "wmaClip0000_0.wma").write_bytes(b"\x30\x26\xb2\x75" + bytes(100))
    sf.write(audio / "flacClip000_0.flac", sine(16000, 1.0), 16000, format="FLAC")
    sf.write(audio / "flacClip000_0.mp3", sine(16000, 1.0), 16000, format="MP3")  # same stem: flac is kept
    out = tmp_path / "out"
    assert main(["audiocaps", "--src", str(src), "--out", str(out), "--sample-rate", "24000", "--workers", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = {s["id"]: (s["reason"], s["path"], s["detail"]) for s in manifest["skipped"]}
    assert skipped["cutMp3Clip0_10"][:2] == ("corrupt_audio", "audio/train/cutMp3Clip0_10.mp3")
    assert "truncated" in skipped["cutMp3Clip0_10"][2]
    assert skipped["wmaClip0000_0"][:2] == ("unsupported_format", "audio/train/wmaClip0000_0.wma")
    assert skipped["flacClip000_0"][:2] == ("duplicate_audio", "audio/train/flacClip000_0.mp3")  # flac preferred
    assert set(skipped) == {"cutMp3Clip0_10", "wmaClip0000_0", "flacClip000_0"}, skipped
    kept = {}
    for shard in sorted(out.glob("*.tar")):
        for s in read_shard(str(shard)):
            meta = json.loads(s["json"])
            wav, rate = sf.read(io.BytesIO(s["flac"]), dtype="float32")
            kept[meta["id"]] = (meta, wav, rate)
    assert sorted(kept) == ["flacClip000_0", "m4aClip0000_0", "mp3Clip0000_30"]
    assert kept["flacClip000_0"][0]["audio_path"] == "audio/train/flacClip000_0.flac"
    for clip in ("m4aClip0000_0", "mp3Clip0000_30"):
        meta, wav, rate = kept[clip]
        assert rate == 24000 and (meta["sample_rate"], meta["channels"]) == (44100, 2)
        assert abs(meta["num_frames"] - 44100) <= TRUNCATION_TOLERANCE
        assert abs(len(wav) - meta["num_frames"] * 24000 / 44100) <= 1
        want = sine(24000, 1.0, channels=2).mean(axis=1)  # the downmix of 440 Hz + 880 Hz
        corr, _ = best_alignment(wav, want, max_lag=2048)
        assert corr > 0.98, (clip, corr)
