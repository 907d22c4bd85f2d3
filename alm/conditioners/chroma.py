"""Melody conditioning: the chroma of a reference wav, as MusicGen-Melody takes it.

    wav (mono, resampled to 32 kHz) -> |STFT|^2 (n_fft 16384, hop 4096, periodic Hann, centred with
    reflect padding, scaled by 1/sqrt(sum window^2)) -> 12 chroma filters (librosa's chroma filter
    bank, tuning 0) -> per frame the argmax bin set to 1, the rest 0       (frames, 12) float32

These are the settings of transformers' MusicgenMelodyFeatureExtractor (audiocraft's
ChromaExtractor with argmax=True): 12 bins at 32000 Hz, 7.8 frames/s, so 30 s give 235 frames. A
clip shorter than n_fft is zero-padded to n_fft, centred, as there. A silent frame's chroma is all
zero before the argmax, so it becomes bin 0 — the same frame as the null melody.

Why a torch STFT and not librosa: it adds no dependency (librosa pulls numba and llvmlite), runs
batched on the GPU beside the model, and it is the computation the parity target does (torchaudio's
Spectrogram is torch.stft with exactly these options; torchaudio itself is not installed here and
its wheels are tied to one torch version). The filter bank is transformers' `chroma_filter_bank`
(librosa's filters, in numpy), built once per (sample rate, n_fft).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

SAMPLE_RATE = 32000
N_FFT = 16384
HOP = 4096
N_CHROMA = 12


@functools.lru_cache(maxsize=8)
def chroma_filters(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_chroma: int = N_CHROMA) -> torch.Tensor:
    """(n_chroma, n_fft // 2 + 1) float32: librosa's chroma filter bank (tuning 0)."""
    from transformers.audio_utils import chroma_filter_bank

    bank = chroma_filter_bank(num_frequency_bins=n_fft, num_chroma=n_chroma, sampling_rate=sample_rate, tuning=0)
    return torch.from_numpy(np.asarray(bank, dtype=np.float32))


def power_spectrogram(wav: torch.Tensor, n_fft: int = N_FFT, hop: int = HOP) -> torch.Tensor:
    """wav (B, N) -> (B, n_fft // 2 + 1, frames) power, window-normalised (torchaudio's normalized=True)."""
    window = torch.hann_window(n_fft, device=wav.device, dtype=wav.dtype)
    spec = torch.stft(wav, n_fft, hop_length=hop, win_length=n_fft, window=window, center=True,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    return (spec / window.pow(2).sum().sqrt()).abs().pow(2)


def chroma(wav: torch.Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, hop: int = HOP,
           n_chroma: int = N_CHROMA) -> torch.Tensor:
    """wav (N,) or (B, N) at `sample_rate` -> argmax one-hot chroma (frames, 12) or (B, frames, 12)."""
    x = torch.as_tensor(wav, dtype=torch.float32)
    single = x.dim() == 1
    if single:
        x = x[None]
    if x.dim() != 2 or x.shape[-1] == 0:
        raise ValueError(f"chroma: expected a non-empty mono wav (N,) or a batch (B, N), got shape {tuple(x.shape)}")
    if x.shape[-1] < n_fft:  # zero-padded to one window, centred (transformers pads the same way)
        pad = n_fft - x.shape[-1]
        x = torch.nn.functional.pad(x, (pad // 2, pad - pad // 2))
    spec = power_spectrogram(x, n_fft, hop)  # (B, F, frames)
    raw = torch.einsum("cf,bft->btc", chroma_filters(sample_rate, n_fft, n_chroma).to(x.device), spec)
    raw = raw / raw.amax(dim=-1, keepdim=True).clamp(min=1e-6)  # inf-norm over the bins (argmax unaffected)
    one_hot = torch.zeros_like(raw).scatter_(-1, raw.argmax(-1, keepdim=True), 1.0)
    return one_hot[0] if single else one_hot


def chroma_of_file(path: str, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """The chroma (frames, 12) of an audio file (downmixed to mono, resampled to `sample_rate`)."""
    from alm.data.audio import load_mono

    audio, _ = load_mono(path, sample_rate)
    return chroma(audio, sample_rate)


def frames_for(seconds: float, sample_rate: int = SAMPLE_RATE, hop: int = HOP) -> int:
    """Chroma frames of `seconds` of audio (centred STFT: 1 + N // hop); 30 s -> 235."""
    return 1 + int(round(seconds * sample_rate)) // hop
