"""The per-file work done in pool workers: read, decode, measure, downmix, resample, encode.

Kept free of heavy imports (no torch/webdataset) so spawned workers start fast. The audio facts
(rate, channels, frames) are those of the SOURCE file as decoded, before any conversion.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from alm.data.audio import decode_audio, encode_flac, resample, to_mono

_OBJ_REPR = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")


def _reason(exc: BaseException) -> str:
    """The error text without object reprs (their memory addresses would make manifests differ)."""
    return _OBJ_REPR.sub("<file>", str(exc)) or type(exc).__name__


def process(task: tuple[str, int | None]) -> tuple[str, Any, bytes | None]:
    """(absolute path, target rate or None) ->
    ("ok", {"sample_rate", "channels", "num_frames"}, flac bytes of the mono audio), or
    ("corrupt_audio" | "empty_audio", detail, None). Never raises for a bad file.
    """
    path, target_rate = task
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return "corrupt_audio", f"cannot read file: {exc.strerror or _reason(exc)}", None
    if not data:
        return "corrupt_audio", "file is 0 bytes", None
    try:
        audio, rate = decode_audio(data)
    except Exception as exc:  # soundfile/libsndfile raise several types on malformed input
        return "corrupt_audio", _reason(exc), None
    channels, frames = audio.shape
    if frames == 0:
        return "empty_audio", "file decodes to 0 frames", None
    try:
        mono = np.nan_to_num(to_mono(audio), nan=0.0, posinf=1.0, neginf=-1.0)
        out_rate = target_rate or rate
        if out_rate != rate:
            mono = resample(mono, rate, out_rate)
        flac = encode_flac(mono, out_rate)
    except Exception as exc:  # e.g. a rate FLAC cannot store
        return "corrupt_audio", f"cannot convert: {_reason(exc)}", None
    return "ok", {"sample_rate": int(rate), "channels": int(channels), "num_frames": int(frames)}, flac
