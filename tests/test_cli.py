"""The commands a newcomer types: `alm demo`, `alm train` errors, `alm export`, `alm generate`."""

from pathlib import Path

import numpy as np
import pytest

import alm as alm_pkg
from helpers import TINY, alm


def test_bad_recipe_exits_with_the_key(tmp_path):
    p = alm("train", TINY, "trainer.max_stepz=3", f"run_dir={tmp_path}", check=False)
    assert p.returncode == 2
    assert "command-line override: key 'trainer.max_stepz'" in p.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(TINY).read_text().replace("batch_size: 16", "batch_size: many"))
    p = alm("train", str(bad), check=False)
    assert p.returncode == 2 and "bad.yaml: key 'data.batch_size'" in p.stderr


def test_help_lists_commands():
    p = alm("--help")
    for cmd in ("demo", "train", "export", "generate", "tokenize", "prep"):
        assert f"alm {cmd}" in p.stdout


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """`alm demo` (shortened): data -> tokens -> semantic, coarse, fine trained and exported -> a wav."""
    import re

    import soundfile as sf

    out = tmp_path / "demo"
    p = alm("demo", "--out", str(out), "--steps", "40", "--clips", "40", "--seconds", "2", timeout=1200)
    text = p.stdout
    for step in ("1/4", "2/4", "3/4", "4/4"):
        assert f"[alm demo] {step}" in text
    for stage in ("semantic", "coarse", "fine"):
        first, last = map(float, re.search(rf"{stage}\s+train loss ([0-9.]+) .*-> ([0-9.]+)", text).groups())
        assert last < first - 0.3, (stage, first, last)  # the loss visibly falls
        assert (out / "exports" / stage / "model.safetensors").is_file()
    audio, rate = sf.read(out / "generated.wav")
    assert rate == 16000 and len(audio) == 2 * 16000
    assert np.load(out / "generated_codes.npy").shape == (4, 100)
    from PIL import Image

    for picture in ("generated.png", "losses.png"):  # the pictures exist, are valid PNGs, and are named
        assert str(out / picture) in text
        with Image.open(out / picture) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
    from alm.audio_quality import spectral_flatness

    flatness = float(re.search(r"median spectral flatness ([0-9.]+)", text).group(1))
    assert abs(flatness - spectral_flatness(audio)) < 1e-3  # computed on the written wav, and printed
    assert "codec reconstruction SI-SNR on held-out clips: chords" in text
    model = alm_pkg.load_pretrained(out / "exports" / "semantic")
    assert model.cfg.vocab_size == 66
    g = alm("generate", "semantic", str(out / "exports" / "semantic"), "--tokens", "20", "--num", "2",
            "--out", str(tmp_path / "g.npy"))
    assert np.load(tmp_path / "g.npy").shape == (2, 20) and "saved" in g.stdout
