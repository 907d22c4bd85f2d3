"""`alm convert clap` of a tiny random transformers ClapModel, and `alm embed` on the converted export
== transformers' get_text_features / get_audio_features (normalised) within 1e-4."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["a dog barks", "rain falls on a roof at night", "a piano", "birds sing at dawn while a car passes by",
         "", "wind"]
TOL = 1e-4


def convert(tmp: Path, fusion: bool) -> tuple[Path, Path]:
    """A tiny transformers CLAP folder (kept as the reference) and its conversion."""
    from alm.cli import main
    from alm.models.clap_hf import make_tiny_hf_clap

    src = make_tiny_hf_clap(tmp / "src", fusion=fusion)
    ref = tmp / "reference"
    shutil.copytree(src, ref)
    assert main(["convert", "clap", str(src), "--out", str(tmp / "export")]) == 0
    shutil.rmtree(src)  # the export needs nothing from SRC
    return ref, tmp / "export"


@pytest.fixture(scope="module", params=[False, True], ids=["unfused", "fusion"])
def converted(request, tmp_path_factory):
    return convert(tmp_path_factory.mktemp("convert"), request.param)


def reference(ref: Path):
    from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

    return (ClapModel.from_pretrained(str(ref)).eval(), AutoTokenizer.from_pretrained(str(ref)),
            ClapFeatureExtractor.from_pretrained(str(ref)))


def hf_audio(model, fe, clip: np.ndarray) -> np.ndarray:
    """transformers on one clip alone, as its docs do it."""
    inputs = fe(clip, sampling_rate=fe.sampling_rate, return_tensors="pt")
    with torch.no_grad():
        out = model.get_audio_features(**inputs).pooler_output
    return torch.nn.functional.normalize(out, dim=-1)[0].numpy()


def test_export_layout_and_weights(converted):
    from alm.export import load_config, load_pretrained

    ref, export = converted
    names = {p.name for p in export.iterdir()}
    assert {"model.safetensors", "config.yaml", "export.json", "tokenizer"} <= names
    tok = {p.name for p in (export / "tokenizer").iterdir()}
    assert "tokenizer_config.json" in tok and ("tokenizer.json" in tok or {"vocab.json", "merges.txt"} <= tok)
    assert tok & {"preprocessor_config.json", "processor_config.json"}
    cfg = load_config(export)
    assert cfg.stage == "clap" and cfg.model.tower == "hf" and cfg.model.sample_rate == 16000
    assert cfg.model.max_seconds == 1.0 and cfg.model.embed_dim == 32
    assert cfg.data.tokenizer == str((export / "tokenizer").resolve())
    meta = json.loads((export / "export.json").read_text())
    assert meta["stage"] == "clap" and meta["source"].endswith("src") and meta["tokenizer"]["path"] == cfg.data.tokenizer
    model, (hf, _, _) = load_pretrained(export), reference(ref)
    ours, theirs = model.state_dict(), hf.state_dict()
    assert set(ours) == set(theirs)  # transformers' own names
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_text_parity(converted):
    from alm.embed import load_encoder

    ref, export = converted
    hf, tok, _ = reference(ref)
    inputs = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = torch.nn.functional.normalize(hf.get_text_features(**inputs).pooler_output, dim=-1).numpy()
    got = load_encoder(export).texts(TEXTS, batch_size=4)
    diff = float(np.abs(got - want).max())
    print(f"text parity max abs diff {diff:.2e}")
    assert got.shape == want.shape == (len(TEXTS), 32) and diff < TOL
    assert np.abs(want[0] - want[1]).max() > 1e-2  # the texts are told apart


def test_audio_parity_up_to_max_length(converted):
    """Clips of 0.05 s .. exactly max_length_s (1 s) through the feature extractor's repeatpad (and, for
    the fusion model, its 4 stacked mels with is_longer set as transformers sets it for a lone clip)."""
    from alm.embed import load_encoder

    ref, export = converted
    hf, _, fe = reference(ref)
    enc = load_encoder(export)
    assert enc.sample_rate == 16000 and enc.window == 16000
    g = np.random.default_rng(0)
    clips = [(0.3 * g.standard_normal(n)).astype(np.float32) for n in (800, 5000, 11111, 16000)]
    clips.append(np.sin(2 * np.pi * 440 * np.arange(12000) / 16000).astype(np.float32))
    want = np.stack([hf_audio(hf, fe, c) for c in clips])
    got = enc.audio(clips, batch_size=3)
    diff = float(np.abs(got - want).max())
    print(f"audio parity max abs diff {diff:.2e}")
    assert diff < TOL
    assert np.abs(want[0] - want[3]).max() > 1e-3


def test_long_audio_is_the_weighted_mean_of_transformers_windows(converted):
    from alm.embed import load_encoder

    ref, export = converted
    hf, _, fe = reference(ref)
    x = (0.3 * np.random.default_rng(1).standard_normal(16000 * 2 + 4000)).astype(np.float32)
    parts = [x[:16000], x[16000:32000], x[32000:]]
    mean = sum(len(p) * hf_audio(hf, fe, p).astype(np.float64) for p in parts)
    got = load_encoder(export).audio([x])[0]
    assert np.abs(got - mean / np.linalg.norm(mean)).max() < TOL


def test_convert_errors(tmp_path, capsys):
    from alm.cli import main

    assert main(["convert", "clap", str(tmp_path / "nope"), "--out", str(tmp_path / "e")]) == 2
    assert "CLAP model" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["convert", "clap", str(tmp_path / "nope"), "--out", str(tmp_path / "busy")]) == 2
    assert "not an alm export" in capsys.readouterr().err


def test_clap_score_embedder_on_a_converted_export(converted):
    """alm eval audio --clap-model EXPORT: the converted model scores as the transformers folder does."""
    from alm.eval.embedders import ClapEmbedder

    ref, export = converted
    ours, theirs = ClapEmbedder(str(export)), ClapEmbedder(str(ref))
    assert ours.sample_rate == theirs.sample_rate and ours.window_s == theirs.window_s
    clips = [(0.3 * np.random.default_rng(3).standard_normal(n)).astype(np.float32) for n in (16000, 7000)]
    assert np.abs(ours.embed_windows(clips[:1]) - theirs.embed_windows(clips[:1])).max() < TOL
    assert np.abs(ours.embed_texts(TEXTS[:2]) - theirs.embed_texts(TEXTS[:2])).max() < TOL


@pytest.mark.slow
def test_tiny_finetune_from_a_converted_clap(tmp_path):
    """recipes/tiny/clap_finetune.yaml with init_from = a converted tiny CLAP (made with another seed
    than the run's, so a fresh init cannot pass for it): trains under ddp, its export starts from the
    converted weights (fine-tuned params within the few steps' reach of them, far from a fresh init),
    and alm embed reads the fine-tuned export."""
    from helpers import alm, losses

    from alm.config import load_recipe
    from alm.export import load_pretrained
    from alm.models.clap import build_clap
    from alm.models.clap_hf import make_tiny_hf_clap

    src = make_tiny_hf_clap(tmp_path / "src", seed=1)
    export, run, tuned = tmp_path / "export", tmp_path / "run", tmp_path / "tuned"
    alm("convert", "clap", str(src), "--out", str(export))
    recipe = REPO / "recipes" / "tiny" / "clap_finetune.yaml"
    alm("train", str(recipe), f"run_dir={run}", f"init_from={export}", f"data.tokenizer={export / 'tokenizer'}",
        "trainer.max_steps=3", "trainer.val_every_n_steps=0", "trainer.progress_bar=false", "trainer.accelerator=cpu",
        "trainer.threads=1", "data.shuffle_buffer=32", "wandb.enabled=false")
    steps = losses(run)
    assert sorted(steps) == [0, 1, 2] and all(np.isfinite(v) for v in steps.values())
    alm("export", str(run), "--out", str(tuned))
    start, after = load_pretrained(export).state_dict(), load_pretrained(tuned).state_dict()
    torch.manual_seed(0)
    fresh = build_clap(load_recipe(recipe, [f"run_dir={run}"]).model).state_dict()
    name = "text_model.embeddings.word_embeddings.weight"
    moved, from_fresh = (after[name] - start[name]).abs().max(), (after[name] - fresh[name]).abs().max()
    assert 0 < moved < 0.01 < from_fresh, (moved, from_fresh)
    texts = tmp_path / "t.txt"
    texts.write_text("a dog barks\nrain falls\n")
    alm("embed", str(tuned), "--texts", str(texts), "--out", str(tmp_path / "T.npy"))
    assert np.load(tmp_path / "T.npy").shape == (2, 32)
