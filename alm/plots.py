"""PNG pictures of a run: log-magnitude spectrograms side by side, and loss curves (matplotlib, Agg).

    spectrograms_png(path, [(title, audio, sample_rate), ...])   one panel per clip, same colour scale
    loss_curves_png(path, {name: (steps, losses), ...})          one line per curve, log-scaled steps
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
