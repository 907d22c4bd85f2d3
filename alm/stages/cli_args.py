"""Command-line flags the stages' wav-generating commands share (`alm generate audiolm|soundstorm ...`)."""

from __future__ import annotations


def add_wav_generation_arguments(p) -> None:
    """--prompt, --seconds, --out, sampling, --seed, --device, --plot (after the stage's own export flags)."""
    p.add_argument("--prompt", default=None, help="a recording to continue (its semantic tokens prefix the output)")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds to generate (after the prompt)")
    p.add_argument("--out", required=True, help="output .wav")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--plot", action="store_true", help="also write OUT.png: the spectrogram beside a training clip")
