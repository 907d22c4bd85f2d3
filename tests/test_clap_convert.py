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
    assert ours["logit_scale_a"].shape == (1,) and theirs["logit_scale_a"].shape == ()  # (1,) for DeepSpeed
    assert all(torch.equal(ours[k].reshape(theirs[k].shape), theirs[k]) for k in theirs)
    back = model.to_transformers_state()
    assert all(back[k].shape == theirs[k].shape and torch.equal(back[k], theirs[k]) for k in theirs)


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


def test_every_trainable_parameter_gets_a_gradient_from_the_stage_loss(converted):
    """What DDP needs (it stops at the second step otherwise); examples through the stage's own front end."""
    from alm.export import load_config, load_pretrained
    from alm.stages.clap import _Examples, collate, loss

    _, export = converted
    cfg = load_config(export)
    model = load_pretrained(export).train()
    make = _Examples(cfg)
    g = np.random.default_rng(0)
    samples = []
    for i, (n, caption) in enumerate([(9000, "a dog barks"), (30000, "rain falls"), (16000, "a piano")]):
        from alm.data.audio import encode_flac

        samples.append({"__key__": str(i), "flac": encode_flac((0.3 * g.standard_normal(n)).astype(np.float32), 16000),
                        "json": json.dumps({"captions": [caption]}).encode()})
    batch = collate([make(s, np.random.default_rng(i)) for i, s in enumerate(samples)])
    assert batch["features"].shape[0] == 3 and batch["_tokens"] == 9000 + 16000 + 16000  # the 30000 one cropped
    loss(model, batch).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and {n for n, p in model.named_parameters() if p.grad is not None} == trainable
    assert "logit_scale_a" in trainable and "logit_scale_t" not in trainable


def test_export_format_transformers_round_trips(converted, tmp_path):
    """alm export --format transformers of a tower-hf model: ClapModel / ClapProcessor.from_pretrained load it,
    with the same tensors and the same embeddings."""
    from transformers import ClapModel, ClapProcessor

    from alm.embed import load_encoder
    from alm.export import load_config, load_pretrained, write_export

    _, export = converted
    model = load_pretrained(export)
    out = write_export(model, load_config(export), tmp_path / "hf", fmt="transformers")
    hf, proc = ClapModel.from_pretrained(str(out)).eval(), ClapProcessor.from_pretrained(str(out))
    ours = model.to_transformers_state()
    assert set(hf.state_dict()) == set(ours) and all(torch.equal(v, ours[k]) for k, v in hf.state_dict().items())
    with torch.no_grad():
        t = hf.get_text_features(**proc.tokenizer(TEXTS[:2], padding=True, return_tensors="pt")).pooler_output
    assert np.abs(torch.nn.functional.normalize(t, dim=-1).numpy() - load_encoder(export).texts(TEXTS[:2])).max() < TOL


def test_stage_check_of_tower_hf(converted, tmp_path):
    from alm.config import load_recipe
    from alm.errors import UserError
    from alm.stages.clap import check

    _, export = converted
    recipe = REPO / "recipes" / "tiny" / "clap_finetune.yaml"

    def cfg(*overrides):
        return load_recipe(recipe, [f"run_dir={tmp_path / 'run'}", f"data.tokenizer={export / 'tokenizer'}", *overrides])

    check(cfg())
    check(cfg("trainer.strategy=deepspeed", "trainer.zero_stage=3"))  # built partitioned (tests/test_clap_towers.py)
    check(cfg("trainer.strategy=deepspeed", "trainer.zero_stage=2"))
    with pytest.raises(UserError, match="needs the converted CLAP's processor folder"):
        check(cfg("data.tokenizer=synthetic"))
    (tmp_path / "spm").mkdir()
    with pytest.raises(UserError, match="not a CLAP processor folder"):
        check(cfg(f"data.tokenizer={tmp_path / 'spm'}"))


def test_convert_errors(tmp_path, capsys):
    from alm.cli import main

    assert main(["convert", "clap", "laion/clap-htsat-unfused", "--out", str(tmp_path / "e")]) == 2  # offline here
    err = capsys.readouterr().err.strip()
    assert "laion/clap-htsat-unfused" in err and "HF_HUB_OFFLINE=1" in err and len(err.splitlines()) == 1

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
    than the run's, so a fresh init cannot pass for it): trains under ddp on 2 gloo ranks (a trainable
    parameter without gradient stops DDP at step 2: seen with logit_scale_t), its export starts from the
    converted weights (fine-tuned params within the few steps' reach of them, far from a fresh init),
    alm embed reads the fine-tuned export, and DeepSpeed ZeRO-2 on 2 ranks logs the same losses (a 0-dim
    parameter stops DeepSpeed at engine init: seen with transformers' logit scales)."""
    from helpers import alm, losses

    from alm.cli import main
    from alm.config import load_recipe
    from alm.export import load_pretrained
    from alm.models.clap import build_clap
    from alm.models.clap_hf import make_tiny_hf_clap

    src = make_tiny_hf_clap(tmp_path / "src", seed=1)
    export, run, tuned = tmp_path / "export", tmp_path / "run", tmp_path / "tuned"
    assert main(["convert", "clap", str(src), "--out", str(export)]) == 0  # in-process: one subprocess (train) only
    recipe = REPO / "recipes" / "tiny" / "clap_finetune.yaml"
    common = [f"init_from={export}", f"data.tokenizer={export / 'tokenizer'}", "trainer.max_steps=3", "trainer.devices=2",
              "trainer.val_every_n_steps=0", "trainer.progress_bar=false", "trainer.accelerator=cpu", "trainer.threads=1",
              "data.shuffle_buffer=32", "wandb.enabled=false"]
    alm("train", str(recipe), f"run_dir={run}", *common)
    steps = losses(run)
    assert sorted(steps) == [0, 1, 2] and all(np.isfinite(v) for v in steps.values())
    alm("train", str(recipe), f"run_dir={tmp_path / 'z2'}", *common, "trainer.strategy=deepspeed", "trainer.zero_stage=2")
    z2 = losses(tmp_path / "z2")
    assert sorted(z2) == sorted(steps) and all(abs(z2[k] - steps[k]) <= 1e-5 * abs(steps[k]) for k in steps), (steps, z2)
    assert main(["export", str(run), "--out", str(tuned)]) == 0
    start, after = load_pretrained(export).state_dict(), load_pretrained(tuned).state_dict()
    torch.manual_seed(0)
    fresh = build_clap(load_recipe(recipe, [f"run_dir={run}"]).model).state_dict()
    name = "text_model.embeddings.word_embeddings.weight"
    moved, from_fresh = (after[name] - start[name]).abs().max(), (after[name] - fresh[name]).abs().max()
    assert 0 < moved < 0.01 < from_fresh, (moved, from_fresh)
    texts = tmp_path / "t.txt"
    texts.write_text("a dog barks\nrain falls\n")
    assert main(["embed", str(tuned), "--texts", str(texts), "--out", str(tmp_path / "T.npy")]) == 0
    assert np.load(tmp_path / "T.npy").shape == (2, 32)


@pytest.mark.slow
def test_convert_a_hub_id_from_the_hf_cache_offline(tmp_path):
    """`alm convert clap org/name` reads a model + processor the HF cache holds (faked in its layout), offline;
    the export embeds like the cached transformers folder."""
    from test_tokenize_hub import fake_hub_model, run_alm

    from alm.embed import load_encoder
    from alm.models.clap_hf import make_tiny_hf_clap

    snap = fake_hub_model(tmp_path / "hf", "laion/tiny-clap", lambda d: make_tiny_hf_clap(d))
    p = run_alm(["convert", "clap", "laion/tiny-clap", "--out", str(tmp_path / "export")], tmp_path / "hf")
    assert p.returncode == 0, p.stderr[-3000:]
    hf, tok, _ = reference(snap)
    with torch.no_grad():
        want = hf.get_text_features(**tok(TEXTS[:3], padding=True, return_tensors="pt")).pooler_output
    got = load_encoder(tmp_path / "export").texts(TEXTS[:3])
    assert np.abs(got - torch.nn.functional.normalize(want, dim=-1).numpy()).max() < TOL
    assert json.loads((tmp_path / "export" / "export.json").read_text())["source"] == "laion/tiny-clap"
