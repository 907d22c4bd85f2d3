"""README "Train on your own data": the command sequences it shows, run exactly as written.

The commands below are README's text (the lead pastes them from here): prepared shards (`alm prep
synthetic` stands in for `alm prep audiocaps ...` on your dataset), tokens, then one `alm train` per
tiny recipe with only the overrides your data needs. The test runs each command as a subprocess in
a fresh folder (with `recipes/` linked in, as in a clone), appending QUICK to the train commands
only, so each stage trains 2 steps, validates and checkpoints.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alm.training.loggers import read_metrics
from helpers import REPO, env, losses

# --- README text: keep these strings and README's in step ----------------------------------------
SHARDS = [
    "alm prep synthetic --out data/mine --clips 24 --val-clips 8",
]
SEMANTIC_TOKENS = [
    "alm tokenize semantic --shards data/mine --fit-shards 'data/mine/train-*.tar' --out data/mine-semantic --features logmel --clusters 32",
]
CODEC_TOKENS = [
    "python -c \"from alm.tokenizers.codec import make_tiny_codec; make_tiny_codec('codecs/tiny')\"",
    "alm tokenize codec --shards data/mine --out data/mine-codes --codec codecs/tiny",
]
TRAIN = {
    "semantic": "alm train recipes/tiny/semantic.yaml run_dir=runs/mine-semantic data.train_shards='data/mine-semantic/train-*.tar' data.val_shards='data/mine-semantic/val-*.tar' model.vocab_size=34",
    "coarse": "alm train recipes/tiny/coarse.yaml run_dir=runs/mine-coarse data.train_shards='data/mine-semantic/train-*.tar + data/mine-codes/train-*.tar' data.val_shards='data/mine-semantic/val-*.tar + data/mine-codes/val-*.tar' model.semantic_vocab=32 model.vocab_size=99",
    "fine": "alm train recipes/tiny/fine.yaml run_dir=runs/mine-fine data.train_shards='data/mine-codes/train-*.tar' data.val_shards='data/mine-codes/val-*.tar'",
    "soundstorm": "alm train recipes/tiny/soundstorm.yaml run_dir=runs/mine-soundstorm data.train_shards='data/mine-semantic/train-*.tar + data/mine-codes/train-*.tar' data.val_shards='data/mine-semantic/val-*.tar + data/mine-codes/val-*.tar' model.semantic_vocab=32",
}
SEQUENCES = {  # one command sequence per stage
    "semantic": SHARDS + SEMANTIC_TOKENS + [TRAIN["semantic"]],
    "coarse": SHARDS + SEMANTIC_TOKENS + CODEC_TOKENS + [TRAIN["coarse"]],
    "fine": SHARDS + CODEC_TOKENS + [TRAIN["fine"]],
    "soundstorm": SHARDS + SEMANTIC_TOKENS + CODEC_TOKENS + [TRAIN["soundstorm"]],
}
LISTEN = [
    "alm export runs/mine-semantic --out exports/mine-semantic",
    "alm export runs/mine-coarse --out exports/mine-coarse",
    "alm export runs/mine-fine --out exports/mine-fine",
    "alm generate audiolm --semantic exports/mine-semantic --coarse exports/mine-coarse --fine exports/mine-fine --seconds 1 --out mine.wav",
]
# ---------------------------------------------------------------------------------------------------

# appended to the train commands only: 2 steps, one validation (with audio samples) and a checkpoint
QUICK = ["trainer.max_steps=2", "trainer.val_every_n_steps=2", "trainer.val_batches=1", "trainer.ckpt_every_n_steps=2",
         "trainer.progress_bar=false", "trainer.threads=1", "trainer.accelerator=cpu", "data.num_workers=1"]


def argv(command: str) -> list[str]:
    """A README command as a subprocess argv: `alm` -> this python's `-m alm`, `python` -> this python."""
    args = shlex.split(command)
    if args[0] == "alm":
        return [sys.executable, "-m", "alm", *args[1:]] + (QUICK if args[1] == "train" else [])
    assert args[0] == "python", command
    return [sys.executable, *args[1:]]


class Workdir:
    """A fresh folder like a clone's root; runs each command once (sequences share their first steps)."""

    def __init__(self, root: Path):
        self.root = root
        (root / "recipes").symlink_to(REPO / "recipes", target_is_directory=True)
        self.done: dict[str, subprocess.CompletedProcess] = {}

    def run(self, commands: list[str]) -> dict[str, subprocess.CompletedProcess]:
        for c in commands:
            if c not in self.done:
                p = subprocess.run(argv(c), cwd=self.root, env=env(), capture_output=True, text=True, timeout=300)
                assert p.returncode == 0, f"{c}\nfailed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
                self.done[c] = p
        return {c: self.done[c] for c in commands}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Workdir:
    return Workdir(tmp_path_factory.mktemp("own-data"))


def _check_run(work: Workdir, stage: str, tokenizer: bool, codec: bool) -> dict:
    out = work.run(SEQUENCES[stage])[TRAIN[stage]]
    run = work.root / "runs" / f"mine-{stage}"
    assert sorted(losses(run)) == [0, 1]  # two optimizer steps logged
    assert "val/loss" in read_metrics(run)[1]  # validated on the user's val shards
    assert (run / "checkpoints" / "step-000000002").is_dir()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    data = cfg["data"]
    assert "mine" in data["train_shards"] and "mine" in data["val_shards"]
    if tokenizer:  # the recipe's `synthetic` tokenizer replaced by the one recorded beside the shards
        assert "data.tokenizer (the synthetic demo tokenizer) taken from the shards" in out.stderr
        assert data["tokenizer"] == str(work.root / "data" / "mine-semantic" / "tokenizer")
    else:
        assert data["tokenizer"] is None
    if codec:
        assert "data.codec (the synthetic demo codec) taken from the shards" in out.stderr
        assert data["codec"] == str(work.root / "codecs" / "tiny")
        for name in ("generated", "reference"):  # README's RUN_DIR/samples text
            assert (run / "samples" / f"step-000000002-0-{name}.wav").is_file()
    return cfg


@pytest.mark.slow
def test_semantic_on_own_data(work):
    cfg = _check_run(work, "semantic", tokenizer=True, codec=False)
    assert cfg["model"]["vocab_size"] == 34
    assert not (work.root / "runs" / "mine-semantic" / "samples").exists()  # no codec: no audio samples


@pytest.mark.slow
def test_coarse_on_own_data(work):
    cfg = _check_run(work, "coarse", tokenizer=True, codec=True)
    assert cfg["model"]["semantic_vocab"] == 32


@pytest.mark.slow
def test_fine_on_own_data(work):
    _check_run(work, "fine", tokenizer=False, codec=True)


@pytest.mark.slow
def test_soundstorm_on_own_data(work):
    cfg = _check_run(work, "soundstorm", tokenizer=True, codec=True)
    assert cfg["model"]["semantic_vocab"] == 32


@pytest.mark.slow
def test_listen_to_own_data_models(work):
    import soundfile as sf

    work.run(SEQUENCES["semantic"] + SEQUENCES["coarse"] + SEQUENCES["fine"] + LISTEN)
    audio, rate = sf.read(work.root / "mine.wav")
    assert rate == 16000 and len(audio) == 16000


def test_readme_shows_exactly_these_commands():
    """Not slow: README's "Train on your own data" section holds every command string above."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Train on your own data"):]
    section = section[: section.index("\n## ", 1)]
    commands = SHARDS + SEMANTIC_TOKENS + CODEC_TOKENS + list(TRAIN.values()) + LISTEN
    missing = [c for c in commands if c not in section]
    assert not missing, f"README's own-data section lacks: {missing}"
