"""Sentencepiece text tokenizer trained on captions/transcripts from shards (no mocks)."""

from __future__ import annotations

import json
import os
import pickle
import random

import pytest

from alm.data.shards import ShardWriter, json_bytes, key_from_id
from alm.tokenizers.text import load_text_tokenizer, main, train_text_tokenizer

SUBJECTS = ["a dog", "a man", "a woman", "the engine", "birds", "a small child", "rain", "a crowd", "music"]
VERBS = ["barks", "speaks", "laughs", "hums loudly", "chirp", "cries", "falls", "cheers", "plays softly"]
PLACES = ["in the distance", "nearby", "outside", "in a large hall", "while wind blows", "on a busy street"]


def caption(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)}"


def write_text_shards(root) -> int:
    """2 shards: caption samples (several captions each), transcript samples, one broken json.
    Returns the number of texts."""
    rng = random.Random(0)
    texts = 0
    with ShardWriter(root, "text", max_count=40) as writer:
        for i in range(60):
            if i % 3 == 2:
                transcript = f"CHAPTER {i} {caption(rng).upper()}"
                meta = {"id": f"libri/{i}", "dataset": "librispeech", "transcript": transcript}
                texts += 1
            else:
                caps = [caption(rng) for _ in range(1 + i % 5)]
                meta = {"id": f"caps/{i}", "dataset": "audiocaps", "captions": caps}
                texts += len(caps)
            writer.write({"__key__": key_from_id(meta["id"]), "flac": b"", "json": json_bytes(meta)})
        writer.write({"__key__": "broken", "flac": b"", "json": b"{not json"})
    return texts


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_shards")
    n_texts = write_text_shards(root)
    return str(root), n_texts


def test_train_encode_decode_reload(shards, tmp_path):
    spec, n_texts = shards
    tok = train_text_tokenizer(spec, tmp_path / "tok", vocab_size=120)
    assert (tmp_path / "tok" / "spm.model").is_file() and (tmp_path / "tok" / "spm.vocab").is_file()
    meta = json.loads((tmp_path / "tok" / "text_tokenizer.json").read_text())
    assert meta["vocab_size"] == tok.vocab_size == len(tok) and 50 < tok.vocab_size <= 120
    assert (meta["pad_id"], meta["unk_id"], meta["bos_id"], meta["eos_id"]) == (0, 1, 2, 3)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert meta["corpus"]["texts"] == n_texts and meta["corpus"]["samples"] == 61 and meta["corpus"]["skipped"] == 1
    assert meta["source"] == spec and meta["model_type"] == "unigram"

    text = "a dog barks in the distance while birds chirp"
    ids = tok.encode(text)
    assert ids and all(4 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    wrapped = tok.encode(text, bos=True, eos=True)
    assert wrapped[0] == tok.bos_id and wrapped[-1] == tok.eos_id and wrapped[1:-1] == ids
    assert tok.decode(wrapped + [tok.pad_id, tok.pad_id, -1]) == text
    assert tok.decode(tok.encode("CHAPTER 12 MUSIC PLAYS SOFTLY")) == "CHAPTER 12 MUSIC PLAYS SOFTLY"

    for again in (load_text_tokenizer(tmp_path / "tok"), load_text_tokenizer(tmp_path / "tok" / "spm.model"),
                  pickle.loads(pickle.dumps(tok))):
        assert again.encode(text) == ids and again.vocab_size == tok.vocab_size
    with pytest.raises(FileNotFoundError, match="no sentencepiece model"):
        load_text_tokenizer(tmp_path / "missing")


def test_deterministic_and_bpe(shards, tmp_path):
    spec, _ = shards
    train_text_tokenizer(spec, tmp_path / "a", vocab_size=100)
    train_text_tokenizer(spec, tmp_path / "b", vocab_size=100)
    assert (tmp_path / "a" / "spm.model").read_bytes() == (tmp_path / "b" / "spm.model").read_bytes()
    bpe = train_text_tokenizer(spec, tmp_path / "bpe", vocab_size=100, model_type="bpe")
    assert bpe.decode(bpe.encode("a crowd cheers outside")) == "a crowd cheers outside"
    assert bpe.pad_id == 0 and bpe.eos_id == 3
    with pytest.raises(ValueError, match="model_type"):
        train_text_tokenizer(spec, tmp_path / "c", vocab_size=100, model_type="word")


def test_cli_reuses_existing_model(shards, tmp_path):
    spec, _ = shards
    out = tmp_path / "cli"
    args = ["--shards", spec, "--out", str(out), "--vocab-size", "90"]
    assert main(args) == 0
    model = out / "spm.model"
    mtime = os.stat(model).st_mtime_ns
    assert main(args) == 0 and os.stat(model).st_mtime_ns == mtime  # loaded, not retrained
    assert main(args[:-1] + ["100"]) == 2  # a different vocab size needs --retrain
    assert main(args[:-1] + ["100", "--retrain"]) == 0
    assert json.loads((out / "text_tokenizer.json").read_text())["requested_vocab_size"] == 100
    assert main(["--shards", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--vocab-size", "50"]) == 2


def test_a_prepared_directory_fits_on_its_training_split_only(tmp_path):
    """[robust] split leakage: `--shards DIR` must not fit on validation/test captions."""
    from alm.data.synthetic import write_synthetic

    write_synthetic(tmp_path / "mine", num_clips=6, val_clips=3, seconds=0.5, shard_size=3)
    train_text_tokenizer(str(tmp_path / "mine"), tmp_path / "tok", vocab_size=40)
    meta = json.loads((tmp_path / "tok" / "text_tokenizer.json").read_text())
    assert meta["corpus"]["samples"] == 6, meta["corpus"]  # the 3 val clips are not in the corpus
    assert "val-" not in meta["fit_shards"] and "train-" in meta["fit_shards"]
