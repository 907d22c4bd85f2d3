"""Semantic tokenization through a real transformers SSL model (tiny, random init, loaded by path)."""

import json

import numpy as np
import pytest
import torch

from alm.data.shards import read_shard, npy_load
from alm.errors import UserError
from alm.data.synthetic import write_synthetic
from alm.tokenizers.semantic import MEMBER, SemanticTokenizer, SemanticTokenizerConfig, main, run


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    path = tmp_path_factory.mktemp("hubert")
    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    HubertModel(cfg).save_pretrained(path)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def audio_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("audio")
    write_synthetic(out, num_clips=12, val_clips=4, seconds=2.0, shard_size=6)
    return out


def test_ssl_tokens_written_as_parallel_shards(tiny_hubert, audio_shards, tmp_path):
    cfg = SemanticTokenizerConfig(features="ssl", model=tiny_hubert, layer=2, n_clusters=8)
    r = run(str(audio_shards), str(tmp_path / "sem"), cfg, fit_shards=str(audio_shards / "train-*.tar"), progress=False)
    assert r["samples"] == 16 and r["errors"] == []
    for shard in r["shards"]:
        src = {s["__key__"]: s for s in read_shard(str(audio_shards / shard.split("/")[-1]))}
        toks = list(read_shard(shard))
        assert [s["__key__"] for s in toks] == list(src)  # same keys, same order
        for s in toks:
            ids = npy_load(s[MEMBER])
            assert ids.ndim == 1 and abs(len(ids) - 100) <= 1  # 2 s at 50 Hz
            assert ids.min() >= 0 and ids.max() < 8
            assert json.loads(s["json"])["id"] == json.loads(src[s["__key__"]]["json"])["id"]
    all_ids = np.concatenate([npy_load(s[MEMBER]) for p in r["shards"] for s in read_shard(p)])
    assert len(np.unique(all_ids)) >= 4  # the clusters are used, not collapsed
    tok = SemanticTokenizer.load(tmp_path / "sem" / "tokenizer")
    assert tok.cfg.model == tiny_hubert and tok.cfg.layer == 2 and tok.vocab_size == 8
    sample = next(iter(read_shard(r["shards"][0])))
    from alm.data.audio import load_mono

    audio = load_mono(next(iter(read_shard(str(audio_shards / "train-000000.tar"))))["flac"], 16000)[0]
    assert np.array_equal(tok(audio), npy_load(sample[MEMBER]))  # a reloaded tokenizer gives the same ids


def test_cli_logmel_fallback_and_reuse(audio_shards, tmp_path, capsys):
    out = tmp_path / "lm"
    assert main(["--shards", str(audio_shards / "train-*.tar"), "--out", str(out), "--features", "logmel", "--clusters", "16"]) == 0
    assert "wrote 2 token shard(s), 12 samples" in capsys.readouterr().out
    assert main(["--shards", str(audio_shards / "val-*.tar"), "--out", str(tmp_path / "val"),
                 "--tokenizer", str(out / "tokenizer")]) == 0
    a = json.loads((out / "tokenizer" / "semantic_tokenizer.json").read_text())
    assert a["features"] == "logmel" and a["n_clusters"] == 16
    assert (tmp_path / "val" / "val-000000.tar").is_file()
    from alm.data.provenance import dir_fingerprint

    assert dir_fingerprint(tmp_path / "val" / "tokenizer") == dir_fingerprint(out / "tokenizer")  # one tokenizer


def test_bad_inputs(audio_shards, tmp_path):
    with pytest.raises(SystemExit):
        main(["--shards", str(audio_shards), "--out", str(tmp_path / "x")])  # ssl without --model
    with pytest.raises(FileNotFoundError, match="not a semantic tokenizer"):
        SemanticTokenizer.load(tmp_path)
    with pytest.raises(UserError, match="no such local path"):
        run(str(audio_shards), str(tmp_path / "y"), SemanticTokenizerConfig(model="/no/such/model", n_clusters=4))


def test_existing_out_continues_only_with_the_same_tokenizer(audio_shards, tmp_path, capsys):
    import os
    import stat

    from alm.data.provenance import dir_fingerprint

    out = tmp_path / "lm"
    args = ["--shards", str(audio_shards / "train-*.tar"), "--out", str(out), "--features", "logmel"]
    assert main([*args, "--clusters", "16"]) == 0
    fp = dir_fingerprint(out / "tokenizer")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((out / "tokenizer" / "kmeans.safetensors").stat().st_mode) == 0o666 & ~mask
    with pytest.raises(UserError, match=r"n_clusters=16 \(asked 32\)"):
        main([*args, "--clusters", "32"])
    other = tmp_path / "other"
    assert main(["--shards", str(audio_shards / "val-*.tar"), "--out", str(other), "--features", "logmel",
                 "--clusters", "8"]) == 0
    with pytest.raises(UserError, match="made by another tokenizer"):
        main(["--shards", str(audio_shards / "train-*.tar"), "--out", str(out), "--tokenizer", str(other / "tokenizer")])
    with pytest.raises(UserError, match=r"fitted with n_clusters=8 \(asked 16\)"):
        main(["--shards", str(audio_shards / "val-*.tar"), "--out", str(tmp_path / "z"), "--tokenizer",
              str(other / "tokenizer"), "--clusters", "16"])
    assert dir_fingerprint(out / "tokenizer") == fp  # refusals leave the set as it was
    # an interrupted run continues with its own tokenizer: flags not given are taken from it
    first = out / "train-000000.tar"
    before = first.read_bytes()
    (out / "train-000001.tar").unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert "wrote 1 token shard(s) (1 already there, kept), 6 samples" in capsys.readouterr().out
    assert first.read_bytes() == before and (out / "train-000001.tar").is_file()
    assert dir_fingerprint(out / "tokenizer") == fp
    assert main(["--shards", str(audio_shards / "train-*.tar"), "--out", str(out), "--tokenizer", str(out / "tokenizer")]) == 0
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "train-000000.tar").write_bytes(b"")
    with pytest.raises(UserError, match="no tokenizer/"):
        main(["--shards", str(audio_shards / "train-*.tar"), "--out", str(stray), "--features", "logmel"])
