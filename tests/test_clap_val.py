"""CLAP validation over the whole held-out set (alm/stages/clap_val.py, alm/eval/heldout.py): every clip
and caption, each rank its share, gathered; 2 gloo ranks (ZeRO-3) log the metrics of 1 rank."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = ("", " loudly", " in the distance", " twice", " at night")


def write_captioned(out: Path, n_clips: int = 23, per_shard: int = 5, seconds: float = 0.6) -> list[int]:
    """Synthetic clips as prep shards `val-*.tar`, clip i with 1 + i % 5 captions (the clip's own
    caption and variants of it) -> the caption counts."""
    from alm.data.audio import encode_flac
    from alm.data.shards import ShardWriter, json_bytes, key_from_id
    from alm.data.synthetic import make_clip

    counts = []
    with ShardWriter(out, "val", max_count=per_shard) as w:
        for i in range(n_clips):
            audio, caption, _ = make_clip(7, i, 16000, seconds)
            caps = [caption + v for v in VARIANTS[: 1 + i % 5]]
            counts.append(len(caps))
            sid = f"clip-{i:03d}"
            w.write({"__key__": key_from_id(sid), "flac": encode_flac(audio, 16000),
                     "json": json_bytes({"id": sid, "captions": caps})})
    return counts


def test_rank_shares_cover_every_clip_once_and_read_only_their_bytes(tmp_path):
    from alm.data.index import Reads
    from alm.eval.heldout import clips, heldout_shards

    write_captioned(tmp_path, n_clips=11, per_shard=4)
    urls = heldout_shards(str(tmp_path))  # a directory: its validation split
    assert [Path(u).name for u in urls] == ["val-000000.tar", "val-000001.tar", "val-000002.tar"]
    whole = [(c.index, c.key, len(c.texts)) for c in clips(urls)]
    assert [i for i, _, _ in whole] == list(range(11))
    shares, read = [], []
    for rank in range(3):
        before = Reads.bytes
        shares.append([(c.index, c.key, len(c.texts)) for c in clips(urls, rank, 3)])
        read.append(Reads.bytes - before)
        assert all(i % 3 == rank for i, _, _ in shares[-1])
    assert sorted(sum(shares, [])) == whole
    total = sum(read)
    assert all(0.2 < r / total < 0.45 for r in read), read  # each rank reads about its third, not everything


def test_a_sample_without_audio_is_an_error_naming_it(tmp_path):
    from alm.data.shards import ShardWriter, json_bytes
    from alm.errors import UserError
    from alm.eval.heldout import clips

    with ShardWriter(tmp_path, "val") as w:
        w.write({"__key__": "x1", "json": json_bytes({"captions": ["a"]})})
    with pytest.raises(UserError, match="sample 'x1' has no audio member"):
        list(clips([str(tmp_path / "val-000000.tar")]))


def test_chunked_metrics_equal_the_whole_matrix():
    from alm.eval.retrieval import embedding_retrieval, retrieval_metrics

    rng = np.random.default_rng(3)
    audio = rng.normal(size=(37, 16)).astype(np.float32)
    audio /= np.linalg.norm(audio, axis=1, keepdims=True)
    pairs = [(t, t % 37) for t in range(37 * 3)]  # 3 captions per clip
    text = audio[[a for _, a in pairs]] + 0.6 * rng.normal(size=(len(pairs), 16)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    whole = retrieval_metrics(text @ audio.T, pairs)
    for block in (1, 7, 1024):
        assert embedding_retrieval(text, audio, pairs, block=block) == whole
    assert 0.1 < whole["text_to_audio"]["R@1"] < 0.9


TINY_MODEL = ["model.sample_rate=8000", "model.n_fft=128", "model.hop_length=64", "model.n_mels=16",
              "model.patch_frames=3", "model.max_seconds=0.25", "model.audio_layers=1", "model.audio_heads=2",
              "model.audio_dim=32", "model.text_vocab_size=64", "model.text_max_len=24", "model.text_layers=1",
              "model.text_heads=2", "model.text_dim=32", "model.embed_dim=16"]


def tiny_run(tmp: Path, tokenizer: str, val: Path):
    """(config, random tiny Clap) of the tiny recipe at 8 kHz (the shards are 16 kHz: resampled)
    with a 0.25 s window (the 0.6 s clips are 3 windows)."""
    from alm.config import load_recipe
    from alm.models.clap import Clap

    cfg = load_recipe(REPO / "recipes" / "tiny" / "clap.yaml", [f"run_dir={tmp / 'run'}", f"data.tokenizer={tokenizer}",
                                                              f"data.val_shards={val}", "data.batch_size=4", *TINY_MODEL])
    torch.manual_seed(0)
    return cfg, Clap(cfg.model).eval()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from alm.tokenizers.text import train_text_tokenizer

    root = tmp_path_factory.mktemp("captions")
    write_captioned(root / "shards", n_clips=40)
    train_text_tokenizer(str(root / "shards" / "val-*.tar"), root / "spm", 64)
    return str(root / "spm")


def test_validation_embeds_as_alm_embed_and_scores_as_alm_eval_retrieval(tmp_path, tokenizer):
    """One process: the validation pass's embeddings == alm/embed.py's on an export of the same model
    (every clip resampled and pooled over its windows, every caption), and its metrics == those
    `alm eval retrieval EXPORT --shards` writes."""
    from alm.cli import main
    from alm.data.audio import load_mono
    from alm.embed import load_encoder
    from alm.eval.heldout import clips, heldout_shards
    from alm.export import write_export
    from alm.stages.clap_val import heldout_embeddings, val_epoch_end

    val = tmp_path / "val"
    counts = write_captioned(val, n_clips=13)
    cfg, model = tiny_run(tmp_path, tokenizer, val)
    urls = heldout_shards(str(val))
    audio, text, pairs, no_caption = heldout_embeddings(model, cfg, urls)
    assert audio.shape == (13, 16) and text.shape == (sum(counts), 16) and no_caption == 0
    assert pairs == [(t, a) for t, a in enumerate(a for a, n in enumerate(counts) for _ in range(n))]
    enc = load_encoder(write_export(model, cfg, tmp_path / "export"))
    every = list(clips(urls))
    assert np.abs(audio - enc.audio([load_mono(c.audio, 8000)[0] for c in every])).max() < 1e-5
    assert np.abs(text - enc.texts([t for c in every for t in c.texts])).max() < 1e-5
    m = val_epoch_end(model, cfg)
    assert m["heldout_clips"] == 13 and m["heldout_captions"] == sum(counts) and m["heldout_no_caption"] == 0
    assert main(["eval", "retrieval", str(tmp_path / "export"), "--shards", str(val), "--out", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["n"] == 13 and r["config"]["n_text"] == sum(counts)
    for name, value in m.items():
        if "/" in name:
            direction, metric = name.split("/")
            assert r["metrics"][direction][metric] == pytest.approx(value, abs=1e-9), name


@pytest.mark.slow
def test_two_ranks_zero3_log_the_metrics_of_one_rank(tmp_path):
    """`alm train` of the tiny recipe with validation on 23 clips of 1-5 captions (unequal shares and
    batch counts per rank): 1 DDP rank and 2 DeepSpeed ZeRO-3 ranks log the same val/ retrieval
    metrics over all 23 clips and 66 captions. lr 0: both runs validate the same initial weights."""
    from helpers import alm

    from alm.training.loggers import read_metrics

    val = tmp_path / "val"
    counts = write_captioned(val)
    common = ["trainer.progress_bar=false", "trainer.accelerator=cpu", "trainer.threads=1", "trainer.max_steps=1",
              "trainer.val_every_n_steps=1", "trainer.val_batches=1", "model.audio_layers=1", "model.text_layers=1",
              "model.max_seconds=0.5", "data.batch_size=4", "data.shuffle_buffer=16", "optim.lr=0",
              "wandb.enabled=false", f"data.val_shards={val}"]
    recipe = str(REPO / "recipes" / "tiny" / "clap.yaml")
    alm("train", recipe, f"run_dir={tmp_path / 'one'}", *common)
    alm("train", recipe, f"run_dir={tmp_path / 'two'}", *common, "trainer.devices=2", "trainer.strategy=deepspeed",
        "trainer.zero_stage=3")

    def val_metrics(run):
        rows = [m for m in read_metrics(run).values() if "val/heldout_clips" in m]
        assert len(rows) == 1, rows
        return {k: v for k, v in rows[0].items() if k.startswith("val/") and k != "val/loss"}

    one, two = val_metrics(tmp_path / "one"), val_metrics(tmp_path / "two")
    assert one["val/heldout_clips"] == 23 and one["val/heldout_captions"] == sum(counts) == 66
    assert len(one) == 15 and one == two, (one, two)
    assert 0 < one["val/text_to_audio/mean_rank"] <= 23
    json.dumps(one)  # plain numbers


@pytest.mark.slow
def test_contrastive_scaling_benchmark_runs():
    """benchmarks/contrastive_scaling.py with tiny settings prints its ratio lines (nothing is timed here)."""
    import subprocess

    from helpers import env

    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "contrastive_scaling.py"), "--batch", "32",
                        "--dim", "32", "--steps", "2", "--warmup", "1"], cwd=REPO, env=env(), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ratio (local / global): step time" in p.stdout and "gather share of the global-loss step" in p.stdout


def test_activation_checkpointing_wraps_both_towers_and_keeps_gradients():
    """trainer.activation_checkpointing on a CLAP: every block of both towers is recomputed in the
    backward pass (each block's forward runs twice), with the loss and gradients of the plain model."""
    from alm.models.clap import Clap, ClapConfig
    from alm.stages.contrastive_loss import contrastive_loss
    from alm.training.module import checkpoint_blocks

    cfg = ClapConfig(sample_rate=8000, n_fft=128, hop_length=64, n_mels=16, patch_frames=3, max_seconds=0.5,
                     audio_layers=2, audio_heads=2, audio_dim=32, text_vocab_size=40, text_max_len=12, text_layers=3,
                     text_heads=2, text_dim=32, embed_dim=16)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(4, 3000, generator=g), torch.tensor([3000, 2000, 2500, 1000]),
             torch.randint(1, 40, (4, 12), generator=g), torch.ones(4, 12, dtype=torch.bool))

    def run(checkpointed: bool):
        torch.manual_seed(0)
        model = Clap(cfg)
        calls = []
        for name, m in model.named_modules():
            if name.startswith(("audio.blocks.", "text.blocks.")) and name.endswith(".attn"):  # runs inside a block
                m.register_forward_hook(lambda *_, n=name: calls.append(n))
        wrapped = checkpoint_blocks(model) if checkpointed else 0
        loss = contrastive_loss(*model(*batch))
        loss.backward()
        return wrapped, calls, loss.item(), {k: p.grad for k, p in model.named_parameters()}

    n_plain, plain_calls, plain_loss, plain_grads = run(False)
    n, calls, loss, grads = run(True)
    assert n == 5 and len(plain_calls) == 5 and len(calls) == 10  # 2 audio + 3 text blocks, each recomputed once
    assert loss == plain_loss
    assert all(torch.allclose(grads[k], plain_grads[k], atol=1e-6) for k in grads)


def test_full_recipes_state_the_papers_values_and_pass_the_stage_check(tmp_path):
    """recipes/clap.yaml and recipes/mulan.yaml load, build (meta device), and pass stage clap's
    check with a tokenizer of the size they state; the values their headers cite are the ones set."""
    from alm.config import load_recipe
    from alm.recipes_index import count_parameters
    from alm.stages.clap import check

    for name, vocab in (("clap", 4000), ("mulan", 8000)):
        tok = tmp_path / name
        tok.mkdir()
        (tok / "text_tokenizer.json").write_text(json.dumps({"vocab_size": vocab}))
        path = REPO / "recipes" / f"{name}.yaml"
        cfg = load_recipe(path, [f"data.tokenizer={tok}"])
        check(cfg)
        assert 100e6 < count_parameters(path) < 250e6
        assert cfg.model.max_seconds == 10.0 and cfg.model.init_temperature == 0.07 and cfg.data.windows == "one"
    clap = load_recipe(REPO / "recipes" / "clap.yaml")
    assert clap.data.batch_size * clap.trainer.devices * clap.trainer.num_nodes == 768  # the paper's global batch
    assert (clap.optim.lr, clap.optim.weight_decay, clap.optim.warmup_steps) == (1e-4, 0.0, 3200)
    assert (clap.model.sample_rate, clap.model.n_fft, clap.model.hop_length, clap.model.n_mels) == (48000, 1024, 480, 64)
    assert (clap.model.embed_dim, clap.model.text_max_len) == (512, 77)
    mulan = load_recipe(REPO / "recipes" / "mulan.yaml")
    assert mulan.model.embed_dim == 128 and (mulan.model.n_fft, mulan.model.hop_length) == (400, 160)
    assert (mulan.model.audio_layers, mulan.model.audio_dim, mulan.model.text_layers, mulan.model.text_dim) == (12, 768, 12, 768)


@pytest.mark.slow
def test_validation_of_a_converted_clap_embeds_as_alm_embed(tmp_path):
    """model.tower=hf (a converted transformers CLAP): the validation pass goes through its tokenizer
    and feature extractor, as alm embed does (1.5 s clips, a 1 s window: two windows each)."""
    from alm.cli import main
    from alm.data.audio import load_mono
    from alm.embed import load_encoder
    from alm.eval.heldout import clips, heldout_shards
    from alm.export import load_config, load_pretrained
    from alm.models.clap_hf import make_tiny_hf_clap
    from alm.stages.clap_val import heldout_embeddings

    assert main(["convert", "clap", str(make_tiny_hf_clap(tmp_path / "src")), "--out", str(tmp_path / "export")]) == 0
    counts = write_captioned(tmp_path / "val", n_clips=7, seconds=1.5)
    cfg = load_config(tmp_path / "export")
    cfg.data.tokenizer, cfg.data.batch_size = str(tmp_path / "export" / "tokenizer"), 3
    model = load_pretrained(tmp_path / "export").float().eval()
    urls = heldout_shards(str(tmp_path / "val"))
    audio, text, pairs, _ = heldout_embeddings(model, cfg, urls)
    enc = load_encoder(tmp_path / "export")
    assert enc.window < 1.5 * enc.sample_rate
    every = list(clips(urls))
    assert audio.shape[0] == 7 and text.shape[0] == sum(counts) == len(pairs)
    assert np.abs(audio - enc.audio([load_mono(c.audio, enc.sample_rate)[0] for c in every])).max() < 1e-5
    assert np.abs(text - enc.texts([t for c in every for t in c.texts])).max() < 1e-5
