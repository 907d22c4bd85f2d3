"""Audio decode/encode with soundfile, and resampling with scipy (no torchaudio needed)."""

from __future__ import annotations

import io
from math import gcd

import numpy as np
import soundfile as sf


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Decode FLAC/WAV/OGG bytes -> (float32 array [channels, frames], sample_rate).

    Raises ValueError (with soundfile's reason) when the bytes are not decodable audio.
    """
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            audio = f.read(dtype="float32", always_2d=True)  # (frames, channels)
            rate = f.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise ValueError(f"undecodable audio: {exc}") from exc
    return np.ascontiguousarray(audio.T), rate


def to_mono(audio: np.ndarray) -> np.ndarray:
    """[channels, frames] or [frames] -> [frames] (mean over channels; one channel: a view, no copy)."""
    if audio.ndim == 1:
        return audio
    return audio[0] if audio.shape[0] == 1 else audio.mean(axis=0)


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling along the last axis (band-limited, deterministic)."""
    if rate_in == rate_out:
        return audio.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = gcd(int(rate_in), int(rate_out))
    return resample_poly(audio, rate_out // g, rate_in // g, axis=-1).astype(np.float32)


def load_mono(data: bytes, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode bytes to mono float32 [frames], resampled to `sample_rate` if given."""
    audio, rate = decode_audio(data)
    audio = to_mono(audio)
    if sample_rate is not None and rate != sample_rate:
        audio, rate = resample(audio, rate, sample_rate), sample_rate
    return audio, rate


def encode(audio: np.ndarray, sample_rate: int, fmt: str = "FLAC") -> bytes:
    """float array [frames] or [channels, frames] in [-1, 1] -> 16-bit FLAC / WAV bytes."""
    audio = np.asarray(audio, dtype=np.float32)
    frames_first = audio.T if audio.ndim == 2 else audio
    buf = io.BytesIO()
    sf.write(buf, np.clip(frames_first, -1.0, 1.0), sample_rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def encode_flac(audio: np.ndarray, sample_rate: int) -> bytes:
    return encode(audio, sample_rate, "FLAC")


def encode_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    return encode(audio, sample_rate, "WAV")
