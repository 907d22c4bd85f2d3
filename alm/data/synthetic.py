"""A synthetic captioned audio dataset with real structure, made offline in seconds.

Used by `alm demo`, the tiny recipes and the tests, so nothing needs a download. Every clip is a
sequence of events whose caption describes it, so tiny models can learn something measurable:

* melody  — notes of a major/minor scale on a harmonic instrument (piano-, organ- or pluck-like
            envelope), rising / falling / wandering contour, slow or fast tempo;
* chords  — a progression of triads (I-IV-V-I, I-vi-IV-V, ...), sustained;
* speech  — speech-like babble: a glottal pulse train at a (low/high) pitch shaped by vowel formants
            (a, e, i, o, u), separated by noise bursts like fricatives;
* events  — noise events: knocks, rain-like hiss, a siren-like sweep, counted in the caption.

Clips are deterministic functions of (seed, index); shards follow the data_prep contract
(`flac` + `json` with id, dataset, split, captions, duration_s, sample_rate, channels, num_frames).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from alm.data.audio import encode_flac
from alm.data.shards import ShardWriter, json_bytes, key_from_id

NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
MAJOR = [0, 2, 4, 5, 7, 9, 11]
MINOR = [0, 2, 3, 5, 7, 8, 10]
VOWELS = {"a": (730, 1090), "e": (530, 1840), "i": (270, 2290), "o": (570, 840), "u": (300, 870)}
INSTRUMENTS = {  # harmonic amplitudes, attack (s), decay rate (1/s)
    "piano": ([1.0, 0.5, 0.3, 0.2, 0.1], 0.005, 4.0),
    "organ": ([1.0, 0.8, 0.6, 0.4, 0.3, 0.2], 0.03, 0.3),
    "pluck": ([1.0, 0.3, 0.15, 0.05], 0.002, 9.0),
}


def midi_hz(m: float) -> float:
    return 440.0 * 2 ** ((m - 69) / 12)


def _tone(freq: float, dur: float, sr: int, instrument: str) -> np.ndarray:
    harmonics, attack, decay = INSTRUMENTS[instrument]
    t = np.arange(int(dur * sr)) / sr
    env = np.minimum(1.0, t / attack) * np.exp(-decay * t)
    wave = sum(a * np.sin(2 * np.pi * freq * (h + 1) * t) for h, a in enumerate(harmonics) if freq * (h + 1) < sr / 2)
    return env * wave / sum(harmonics)


def _place(out: np.ndarray, seg: np.ndarray, start: int) -> None:
    end = min(len(out), start + len(seg))
    if end > start:
        out[start:end] += seg[: end - start]


def melody(rng: np.random.Generator, sr: int, seconds: float) -> tuple[np.ndarray, str, dict]:
    key = int(rng.integers(12))
    mode = "major" if rng.random() < 0.5 else "minor"
    scale = MAJOR if mode == "major" else MINOR
    instrument = str(rng.choice(list(INSTRUMENTS)))
    fast = rng.random() < 0.5
    note_dur = 0.18 if fast else 0.4
    contour = str(rng.choice(["rising", "falling", "wandering"]))
    n = max(2, int(seconds / note_dur))
    degree = 0 if contour == "rising" else (len(scale) + 2 if contour == "falling" else 3)
    out = np.zeros(int(seconds * sr))
    notes = []
    for i in range(n):
        octave, d = divmod(degree, len(scale))
        m = 60 + key + 12 * octave + scale[d]
        notes.append(NOTE_NAMES[m % 12])
        _place(out, _tone(midi_hz(m), note_dur * 1.5, sr, instrument), int(i * note_dur * sr))
        step = {"rising": 1, "falling": -1}.get(contour, int(rng.choice([-2, -1, 1, 2])))
        degree = int(np.clip(degree + step, 0, 2 * len(scale) - 1))
    caption = f"a {'fast' if fast else 'slow'} {contour} {instrument} melody in {NOTE_NAMES[key]} {mode}"
    return out, caption, {"kind": "melody", "instrument": instrument, "notes": notes}


def chords(rng: np.random.Generator, sr: int, seconds: float) -> tuple[np.ndarray, str, dict]:
    progressions = {"I-IV-V-I": [0, 3, 4, 0], "I-vi-IV-V": [0, 5, 3, 4], "ii-V-I-I": [1, 4, 0, 0]}
    name = str(rng.choice(list(progressions)))
    key = int(rng.integers(12))
    instrument = str(rng.choice(["piano", "organ"]))
    dur = seconds / 4
    out = np.zeros(int(seconds * sr))
    for i, degree in enumerate(progressions[name]):
        for third in (0, 2, 4):
            d = degree + third
            m = 48 + key + 12 * (d // 7) + MAJOR[d % 7]
            _place(out, _tone(midi_hz(m), dur, sr, instrument) / 2, int(i * dur * sr))
    caption = f"{instrument} chords playing a {name} progression in {NOTE_NAMES[key]} major"
    return out, caption, {"kind": "chords", "instrument": instrument, "progression": name}


def _resonator(x: np.ndarray, freq: float, bw: float, sr: int) -> np.ndarray:
    r = np.exp(-np.pi * bw / sr)
    theta = 2 * np.pi * freq / sr
    return lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], x)


def speech(rng: np.random.Generator, sr: int, seconds: float) -> tuple[np.ndarray, str, dict]:
    high = rng.random() < 0.5
    f0 = (190 if high else 105) * (1 + 0.1 * rng.standard_normal())
    n_syll = max(2, int(seconds / 0.3))
    out = np.zeros(int(seconds * sr))
    said = []
    pos = int(0.05 * sr)
    for _ in range(n_syll):
        vowel = str(rng.choice(list(VOWELS)))
        said.append(vowel)
        dur = float(rng.uniform(0.15, 0.3))
        t = np.arange(int(dur * sr)) / sr
        pitch = f0 * (1 + 0.08 * np.sin(2 * np.pi * 3 * t))  # gentle intonation
        phase = np.cumsum(pitch / sr)
        pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(float)
        f1, f2 = VOWELS[vowel]
        v = _resonator(pulses, f1, 90, sr) + 0.5 * _resonator(pulses, f2, 120, sr)
        v *= np.hanning(len(v))
        _place(out, v / (np.abs(v).max() + 1e-9), pos)
        pos += len(v)
        if rng.random() < 0.5:  # a fricative-like burst between syllables
            burst = rng.standard_normal(int(0.06 * sr)) * 0.15
            _place(out, np.diff(burst, prepend=0) * np.hanning(len(burst)), pos)
            pos += len(burst)
        pos += int(0.03 * sr)
        if pos >= len(out):
            break
    caption = f"a {'high' if high else 'low'}-pitched voice babbling the vowels {'-'.join(said)}"
    return out, caption, {"kind": "speech", "vowels": said}


def events(rng: np.random.Generator, sr: int, seconds: float) -> tuple[np.ndarray, str, dict]:
    kind = str(rng.choice(["knocks", "rain", "siren"]))
    out = np.zeros(int(seconds * sr))
    if kind == "knocks":
        n = int(rng.integers(2, 6))
        for i in range(n):
            t = np.arange(int(0.12 * sr)) / sr
            knock = np.sin(2 * np.pi * 180 * t) * np.exp(-40 * t) + 0.3 * rng.standard_normal(len(t)) * np.exp(-80 * t)
            _place(out, knock, int((0.2 + i * (seconds - 0.4) / n) * sr))
        caption = f"{n} knocks on a wooden door"
        meta = {"count": n}
    elif kind == "rain":
        heavy = rng.random() < 0.5
        noise = rng.standard_normal(len(out)) * (0.5 if heavy else 0.15)
        out = lfilter([1.0], [1.0, -0.6], noise)
        caption = f"{'heavy' if heavy else 'light'} rain falling steadily"
        meta = {"heavy": bool(heavy)}
    else:
        t = np.arange(len(out)) / sr
        f = 700 + 300 * np.sin(2 * np.pi * 0.8 * t)
        out = 0.6 * np.sin(2 * np.pi * np.cumsum(f) / sr)
        caption = "a siren wailing up and down"
        meta = {}
    return out, caption, {"kind": kind, **meta}


GENERATORS = {"melody": melody, "chords": chords, "speech": speech, "events": events}


def make_clip(seed: int, index: int, sr: int, seconds: float) -> tuple[np.ndarray, str, dict]:
    """Clip `index` of the synthetic set: (audio float32 [frames] in [-1, 1], caption, metadata)."""
    rng = np.random.default_rng([seed, index])
    kind = list(GENERATORS)[index % len(GENERATORS)]
    audio, caption, meta = GENERATORS[kind](rng, sr, seconds)
    audio = audio + 0.003 * rng.standard_normal(len(audio))  # a little room noise
    audio = 0.8 * audio / (np.abs(audio).max() + 1e-9)
    return audio.astype(np.float32), caption, meta


def write_synthetic(
    out_dir: str | Path,
    num_clips: int = 240,
    seconds: float = 4.0,
    sample_rate: int = 16000,
    seed: int = 0,
    shard_size: int = 40,
    val_clips: int = 24,
) -> dict:
    """Write `num_clips` train and `val_clips` validation clips as shards + manifest.json."""
    out_dir = Path(out_dir)
    manifest: dict = {"dataset": "synthetic", "splits": {}, "skipped": []}
    offset = 0
    for split, count in (("train", num_clips), ("val", val_clips)):
        with ShardWriter(out_dir, split, max_count=shard_size) as writer:
            for i in range(offset, offset + count):
                audio, caption, meta = make_clip(seed, i, sample_rate, seconds)
                sample_id = f"synthetic-{i:06d}"
                info = {
                    "id": sample_id,
                    "dataset": "synthetic",
                    "split": split,
                    "captions": [caption],
                    "duration_s": len(audio) / sample_rate,
                    "sample_rate": sample_rate,
                    "channels": 1,
                    "num_frames": len(audio),
                    "metadata": meta,
                }
                writer.write({"__key__": key_from_id(sample_id), "flac": encode_flac(audio, sample_rate), "json": json_bytes(info)})
        manifest["splits"][split] = {
            "shards": [Path(p).name for p in writer.paths],
            "num_samples": count,
            "hours": count * seconds / 3600,
        }
        offset += count
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
