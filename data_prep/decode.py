"""The per-file work done in pool workers: read, decode, measure, downmix, resample, encode.

Kept free of heavy imports (no torch/webdataset) so spawned workers start fast. The audio facts
(rate, channels, frames) are those of the SOURCE file as decoded, before any conversion.

Streamed: the file is decoded in blocks (alm.data.audio.BLOCK_FRAMES), each block is downmixed,
resampled by a streamed soxr resampler and appended to the FLAC encoder, so a worker holds the
compressed output plus one block, never the decoded recording (an hour of 48 kHz stereo float32
would be 1.4 GB per worker). The output equals converting the whole array at once.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any

import numpy as np
import soundfile as sf

from alm.data.audio import Resampler, UnsupportedFormat, check_length, open_audio

_OBJ_REPR = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")


def _reason(exc: BaseException, path: str = "") -> str:
    """The error text without object reprs or the absolute path (either would make manifests differ)."""
    text = _OBJ_REPR.sub("<file>", str(exc)) or type(exc).__name__
    return text.replace(path, os.path.basename(path)) if path else text


class _ConvertError(Exception):
    """Decoding worked but the converted audio cannot be written (e.g. a rate FLAC cannot store)."""


def _convert(path: str, target_rate: int | None) -> tuple[dict[str, Any], bytes]:
    """Stream `path` into mono 16-bit FLAC bytes at `target_rate` (or the source rate)."""
    with open_audio(path) as source:
        rate = source.sample_rate
        out_rate = target_rate or rate
        resampler = Resampler(rate, out_rate) if out_rate != rate else None
        buf = io.BytesIO()
        frames = 0
        try:
            out = sf.SoundFile(buf, "w", samplerate=out_rate, channels=1, format="FLAC", subtype="PCM_16")
        except Exception as exc:
            raise _ConvertError(_reason(exc)) from exc
        with out:
            for block in source.blocks():
                frames += block.shape[1]
                mono = np.nan_to_num(block.mean(axis=0), nan=0.0, posinf=1.0, neginf=-1.0)
                if resampler is not None:
                    mono = resampler(mono)
                out.write(np.clip(mono, -1.0, 1.0))
            if resampler is not None and frames:
                out.write(np.clip(resampler(np.zeros(0, np.float32), last=True), -1.0, 1.0))
        check_length(source, frames)
        facts = {"sample_rate": int(rate), "channels": int(source.channels), "num_frames": int(frames)}
    return facts, buf.getvalue()


def process(task: tuple[str, int | None]) -> tuple[str, Any, bytes | None]:
    """(absolute path, target rate or None) ->
    ("ok", {"sample_rate", "channels", "num_frames"}, flac bytes of the mono audio), or
    ("corrupt_audio" | "empty_audio" | "unsupported_format", detail, None). Never raises for a bad file.
    """
    path, target_rate = task
    try:
        with open(path, "rb") as f:
            if not f.read(1):
                return "corrupt_audio", "file is 0 bytes", None
    except OSError as exc:
        return "corrupt_audio", f"cannot read file: {exc.strerror or _reason(exc)}", None
    try:
        facts, flac = _convert(path, target_rate)
    except UnsupportedFormat as exc:
        return "unsupported_format", _reason(exc, path), None
    except _ConvertError as exc:
        return "corrupt_audio", f"cannot convert: {_reason(exc, path)}", None
    except Exception as exc:  # CorruptAudio, and whatever else a decoder raises on malformed input
        return "corrupt_audio", _reason(exc, path), None
    if facts["num_frames"] == 0:
        return "empty_audio", "file decodes to 0 frames", None
    return "ok", facts, flac
