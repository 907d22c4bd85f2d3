"""Two numbers that say whether audio is what it should be: SI-SNR (reconstruction) and spectral flatness.

    si_snr(ref, est)          scale-invariant SNR in dB of `est` against `ref` (both mean-removed)
    spectral_flatness(audio)  median over frames of geometric / arithmetic mean of |rfft|^2, Hann-512
                              frames, hop 256, frames with energy above 1e-6 of the loudest frame's;
                              ~0 for tones, ~0.5 and up for white noise
"""

from __future__ import annotations

import numpy as np


def si_snr(ref: np.ndarray, est: np.ndarray) -> float:
    """dB; `est` is cut or zero-padded to len(ref)."""
    ref = np.asarray(ref, np.float64).reshape(-1)
    est = np.asarray(est, np.float64).reshape(-1)[: len(ref)]
    est = np.pad(est, (0, len(ref) - len(est)))
    ref, est = ref - ref.mean(), est - est.mean()
    target = (est @ ref) / max(ref @ ref, 1e-20) * ref
    noise = est - target
    return float(10 * np.log10(max(target @ target, 1e-20) / max(noise @ noise, 1e-20)))


def spectral_flatness(audio: np.ndarray, frame: int = 512, hop: int = 256, floor: float = 1e-6,
                      sample_rate: int = 16000, max_hz: float | None = None) -> float:
    """Median spectral flatness of the frames whose energy is above `floor` x the loudest frame's.

    max_hz: only the bins up to max_hz (e.g. a band-limited codec's coded band: an empty upper band
    alone drives the full-band measure towards 0)."""
    x = np.asarray(audio, np.float64).reshape(-1)
    if len(x) < frame:
        x = np.pad(x, (0, frame - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop] * np.hanning(frame)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2  # (n_frames, frame // 2 + 1)
    if max_hz is not None:
        power = power[:, : int(max_hz / sample_rate * frame) + 1]
    energy = power.sum(-1)
    keep = energy > floor * energy.max() if energy.max() > 0 else np.zeros(len(energy), bool)
    if not keep.any():
        raise ValueError("spectral flatness of silence is undefined (no frame has energy)")
    p = power[keep] + 1e-30
    flat = np.exp(np.log(p).mean(-1)) / p.mean(-1)
    return float(np.median(flat))
