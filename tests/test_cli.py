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
    out = tmp_path / "demo"
    p = alm("demo", "--out", str(out), "--steps", "40", "--clips", "40", timeout=900)
    text = p.stdout
    for step in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert f"[alm demo] {step}" in text
    assert "train loss" in text and "export" in text
    first, last = [float(x) for x in text.split("train loss")[1].split("\n")[0].replace("(first 10 steps) ->", "").split()[:2]]
    assert last < first - 0.5  # the loss visibly falls
    sample = np.load(out / "sample_tokens.npy")
    assert sample.shape == (1, 150) and sample.max() < 64
    model = alm_pkg.load_pretrained(out / "export")
    assert model.cfg.vocab_size == 66
    g = alm("generate", "semantic", str(out / "export"), "--tokens", "20", "--num", "2", "--out", str(tmp_path / "g.npy"))
    assert np.load(tmp_path / "g.npy").shape == (2, 20) and "saved" in g.stdout
