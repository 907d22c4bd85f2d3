"""PNG pictures of a run: log-magnitude spectrograms side by side, and loss curves (matplotlib, Agg).

    spectrograms_png(path, [(title, audio, sample_rate), ...])   one panel per clip, same colour scale
    loss_curves_png(path, {name: (steps, losses), ...})          one line per curve
    plot_generated(wav, export_dir)                              `alm generate --plot`: OUT.png beside the wav
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def log_spectrogram(audio: np.ndarray, sample_rate: int, frame: int = 512, hop: int = 128) -> np.ndarray:
    """(frame // 2 + 1, n_frames) dB magnitude of a Hann STFT."""
    x = np.asarray(audio, np.float64).reshape(-1)
    if len(x) < frame:
        x = np.pad(x, (0, frame - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop] * np.hanning(frame)
    return 20 * np.log10(np.abs(np.fft.rfft(frames, axis=-1)).T + 1e-6)


def _save(fig, path: str | os.PathLike) -> str:
    """Write the figure to `path` atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)
    return str(path)


def spectrograms_png(path: str | os.PathLike, clips: Sequence[tuple[str, np.ndarray, int]]) -> str:
    """One spectrogram panel per (title, audio, sample_rate), stacked, sharing a 80 dB colour range."""
    if not clips:
        raise ValueError("spectrograms_png: no clips to draw")
    plt = _pyplot()
    specs = [log_spectrogram(a, sr) for _, a, sr in clips]
    top = max(float(s.max()) for s in specs)
    fig, axes = plt.subplots(len(clips), 1, figsize=(9, 2.6 * len(clips)), squeeze=False)
    for ax, (title, audio, sr), spec in zip(axes[:, 0], clips, specs):
        seconds = len(np.asarray(audio).reshape(-1)) / sr
        im = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
                       extent=(0, seconds, 0, sr / 2000))
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("kHz")
    axes[-1, 0].set_xlabel("seconds")
    fig.colorbar(im, ax=axes[:, 0].tolist(), label="dB")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def loss_curves_png(path: str | os.PathLike, curves: dict[str, tuple[Sequence[float], Sequence[float]]],
                    title: str = "training loss") -> str:
    """One line per curve name: (steps, losses)."""
    if not curves:
        raise ValueError("loss_curves_png: no curves to draw")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (steps, values) in curves.items():
        ax.plot(list(steps), list(values), label=name, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------------
# A generated wav beside the training clip it resembles


def read_clips(shards_spec: str, sample_rate: int = 16000, limit: int | None = None) -> list[tuple[np.ndarray, dict]]:
    """(mono audio at `sample_rate`, json) of the clips of an audio shard set (flac/wav/ogg + json)."""
    import json

    from alm.data.audio import load_mono, shard_audio_ext
    from alm.data.shards import expand_shards, read_shard

    clips = []
    for url in expand_shards(shards_spec):
        for s in read_shard(url):
            ext = shard_audio_ext(s)
            if ext is not None:
                data = s[ext]
                clips.append((load_mono(data, sample_rate)[0], json.loads(s["json"]) if "json" in s else {}))
            if limit is not None and len(clips) >= limit:
                return clips
    return clips


def kind_of(info: dict) -> str:
    """The kind of a clip from its json (metadata.kind of the synthetic set), else its first caption, else '?'."""
    meta = info.get("metadata") or {}
    return str(meta.get("kind") or (info.get("captions") or ["?"])[0])


def closest_clip(audio: np.ndarray, sample_rate: int, clips: list[tuple[np.ndarray, dict]]) -> tuple[np.ndarray, dict]:
    """The clip (at `sample_rate` too) whose mean log spectrum is closest to `audio`'s: the kind it resembles."""
    def profile(x: np.ndarray) -> np.ndarray:
        p = log_spectrogram(x, sample_rate).mean(-1)
        return p - p.max()

    target = profile(audio)
    return min(clips, key=lambda c: float(np.sum((profile(c[0]) - target) ** 2)))


def training_audio_of(export_dir: str | os.PathLike) -> str | None:
    """The audio shards an acoustic export's codes were made from (codec.json's source), when still on disk."""
    from alm.data.provenance import spec_provenance
    from alm.export import load_config

    try:
        cfg = load_config(str(export_dir))
        codec = spec_provenance(cfg.data.train_shards, "data.train_shards")["codec"] if cfg.data.train_shards else None
        source = (codec or {}).get("source")
        if isinstance(source, list):
            source = "::".join(source)
        from alm.data.shards import expand_shards

        return source if source and expand_shards(source) else None
    except (OSError, ValueError):  # moved or deleted shards: draw the generated audio alone
        return None


def plot_generated(wav: str | os.PathLike, export_dir: str | os.PathLike, png: str | os.PathLike | None = None,
                   max_clips: int = 256) -> dict:
    """PNG spectrogram of a generated wav (default: beside it, .png) over the closest of the first
    `max_clips` training clips of `export_dir` (an acoustic export) when its training audio is found.
    -> {"png", "kind" (of that clip, or None), "caption"}."""
    import soundfile as sf

    audio, rate = sf.read(str(wav), dtype="float32")
    audio = audio if audio.ndim == 1 else audio.mean(-1)
    png = Path(png) if png is not None else Path(wav).with_suffix(".png")
    source = training_audio_of(export_dir)
    clips = read_clips(source, rate, max_clips) if source else []
    panels = [(f"generated ({Path(wav).name})", audio, rate)]
    kind = caption = None
    if clips:
        ref, info = closest_clip(audio, rate, clips)
        kind, caption = kind_of(info), (info.get("captions") or [""])[0]
        panels.append((f"closest training clip ({kind}): {caption}", ref, rate))
    return {"png": spectrograms_png(png, panels), "kind": kind, "caption": caption}
