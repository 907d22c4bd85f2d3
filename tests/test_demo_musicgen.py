"""`alm demo --model musicgen`: trains the tiny MusicGen, writes one wav per caption with its spectrogram,
the loss curve and validation audio, and says where everything is."""

from __future__ import annotations

import soundfile as sf

from helpers import alm


def test_demo_musicgen_writes_wavs_pictures_and_validation_audio(tmp_path):
    out = tmp_path / "demo"
    p = alm("demo", "--model", "musicgen", "--steps", "4", "--seconds", "0.5", "--out", str(out), timeout=900)
    for i in range(2):
        wav = out / "generated" / f"00{i}.wav"
        audio, rate = sf.read(wav)
        assert rate == 16000 and len(audio) == 8000, (wav, rate, len(audio))
        assert (out / "generated" / f"00{i}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"{wav}  <- " in p.stdout and "median spectral flatness" in p.stdout
    assert (out / "musicgen_losses.png").read_bytes()[:4] == b"\x89PNG"
    assert list((out / "runs" / "musicgen" / "samples").glob("*-generated.wav"))
    assert "alm generate musicgen" in p.stdout and "alm convert musicgen" in p.stdout
