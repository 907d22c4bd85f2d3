"""`alm generate` refuses wrong exports and arguments in one line, before any sampling.

The exports are tiny random models written with alm.export.write_export (no training needed)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from alm.cli import main as cli
from alm.config import load_recipe
from alm.export import build_model, write_export

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "tiny"
SMALL = ["model.n_layer=1", "model.d_model=32", "model.n_head=2"]


def fake_tokenizer(path: Path, seed: int) -> Path:
    from alm.tokenizers.semantic import SemanticTokenizer, SemanticTokenizerConfig

    g = torch.Generator().manual_seed(seed)
    SemanticTokenizer(SemanticTokenizerConfig(features="logmel", n_clusters=64), torch.randn(64, 64, generator=g),
                      torch.zeros(64), torch.ones(64), features=lambda a: a).save(path)
    return path


def make_export(root: Path, name: str, stage: str, tokenizer=None, codec=None) -> str:
    cfg = load_recipe(str(RECIPES / f"{stage}.yaml"), [f"run_dir={root / 'runs' / name}", *SMALL])
    cfg.data.tokenizer, cfg.data.codec = (str(tokenizer) if tokenizer else None), (str(codec) if codec else None)
    torch.manual_seed(0)
    return str(write_export(build_model(cfg), cfg, root / name))


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    from alm.data.cache import cache_root, cached
    from alm.stages.acoustic import TINY_CODEC
    from alm.tokenizers.codec import make_tiny_codec

    root = tmp_path_factory.mktemp("exports")
    tok_a, tok_b = fake_tokenizer(root / "tokA", 0), fake_tokenizer(root / "tokB", 1)
    codec_a = cached(cache_root() / TINY_CODEC, lambda d: make_tiny_codec(d, seed=0), "the tiny codec")  # shared
    codec_b = root / "codecB"  # other files: another codec as far as provenance can tell
    shutil.copytree(codec_a, codec_b)
    (codec_b / "config.json").write_text((codec_a / "config.json").read_text() + "\n")
    e = {
        "semantic": make_export(root, "semantic", "semantic", tokenizer=tok_a),
        "semantic_b": make_export(root, "semantic_b", "semantic", tokenizer=tok_b),
        "coarse": make_export(root, "coarse", "coarse", tokenizer=tok_a, codec=codec_a),
        "fine": make_export(root, "fine", "fine", codec=codec_a),
        "fine_b": make_export(root, "fine_b", "fine", codec=codec_b),
        "soundstorm": make_export(root, "soundstorm", "soundstorm", tokenizer=tok_a, codec=codec_a),
    }
    run = root / "a-run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(Path(e["semantic"]) / "config.yaml", run / "config.yaml")
    e["run"] = str(run)
    e["root"] = root
    return e


def refused(capsys, *argv) -> str:
    assert cli(["generate", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def chain(ex, **kw):
    args = {"--semantic": ex["semantic"], "--coarse": ex["coarse"], "--fine": ex["fine"], "--seconds": "0.1",
            "--out": str(ex["root"] / "x.wav"), **kw}
    return ["audiolm", *[x for k, v in args.items() for x in (k, v)]]


def test_generate_semantic_checks(ex, capsys, tmp_path):
    assert "this is a coarse export; export needs a semantic export" in refused(capsys, "semantic", ex["coarse"])
    assert "this is a run dir" in refused(capsys, "semantic", ex["run"]) and "alm export it first" in \
        refused(capsys, "semantic", ex["run"])
    for n in ("0", "-5"):
        assert "--tokens and --num must be >= 1" in refused(capsys, "semantic", ex["semantic"], "--tokens", n)
    assert "top_p must be <= 1" in refused(capsys, "semantic", ex["semantic"], "--top-p", "1.5")
    assert "does not exist" in refused(capsys, "semantic", ex["semantic"], "--out", str(tmp_path / "no" / "x.npy"))
    assert cli(["generate", "semantic", ex["semantic"], "--tokens", "5", "--top-p", "0", "--out", str(tmp_path / "x.npy")]) == 0
    ids = np.load(tmp_path / "x.npy")
    assert ids.shape == (1, 5) and ids.max() < 64  # cluster ids only


def test_generate_chain_checks(ex, capsys, tmp_path):
    assert "--semantic" in (m := refused(capsys, *chain(ex, **{"--semantic": ex["coarse"]}))) and \
        "this is a coarse export; --semantic needs a semantic export" in m
    assert "this is a semantic export; --coarse needs a coarse export" in refused(
        capsys, *chain(ex, **{"--coarse": ex["semantic"]}))
    for s in ("0", "-1"):
        assert "--seconds must be > 0" in refused(capsys, *chain(ex, **{"--seconds": s}))
    assert "less than one semantic token at 50 Hz" in refused(capsys, *chain(ex, **{"--seconds": "0.001"}))
    assert "different semantic tokenizers" in refused(capsys, *chain(ex, **{"--semantic": ex["semantic_b"]}))
    assert "different codecs" in refused(capsys, *chain(ex, **{"--fine": ex["fine_b"]}))
    assert "does not exist" in refused(capsys, *chain(ex, **{"--out": str(tmp_path / "no" / "x.wav")}))
    bad = tmp_path / "prompt.m4a"
    bad.write_bytes(b"\x00\x00\x00\x18ftypM4A not really")
    m = refused(capsys, *chain(ex, **{"--prompt": str(bad)}))
    assert f"--prompt {bad}: cannot read it as audio" in m
    assert "this is a run dir" in refused(capsys, *chain(ex, **{"--fine": ex["run"]}))
    storm = ["soundstorm", "--semantic", ex["semantic_b"], "--soundstorm", ex["soundstorm"], "--out", str(tmp_path / "s.wav")]
    assert "different semantic tokenizers" in refused(capsys, *storm)
    storm[2] = ex["semantic"]
    assert "--steps: expected 4" in refused(capsys, *storm, "--steps", "4,1")
    assert "this is a coarse export; --soundstorm needs a soundstorm export" in refused(
        capsys, "soundstorm", "--semantic", ex["semantic"], "--soundstorm", ex["coarse"], "--out", str(tmp_path / "s.wav"))


def test_valid_chain_still_generates(ex, tmp_path, capsys):
    from alm.data.synthetic import make_clip

    sf.write(tmp_path / "prompt.wav", make_clip(0, 0, 16000, 0.2)[0], 16000)
    assert cli(["generate", *chain(ex, **{"--out": str(tmp_path / "o.wav"), "--prompt": str(tmp_path / "prompt.wav")})]) == 0
    audio, rate = sf.read(tmp_path / "o.wav")
    assert rate == 16000 and abs(len(audio) - 0.3 * 16000) <= 320
    meta = json.loads((Path(ex["coarse"]) / "export.json").read_text())
    assert meta["codec"]["files_sha256"] and meta["tokenizer"]["fingerprint"]
