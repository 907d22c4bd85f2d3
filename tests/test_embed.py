"""alm embed on alm's own CLAP exports: texts and audio as the model embeds them, long clips as the
length-weighted mean of their windows, files streamed == the whole file resampled, the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTIONS = ["a dog barks twice", "rain falls on a tin roof", "a piano plays a slow melody", "birds sing at dawn",
            "a car passes by quickly", "people talk in a crowded room", "a bell rings three times",
            "wind blows through the trees", "a cat meows softly", "water drips in a cave"]
TINY = ["model.sample_rate=8000", "model.n_fft=128", "model.hop_length=64", "model.n_mels=16", "model.patch_frames=3",
        "model.max_seconds=0.5", "model.audio_layers=1", "model.audio_heads=2", "model.audio_dim=32",
        "model.text_vocab_size=48", "model.text_max_len=12", "model.text_layers=1", "model.text_heads=2",
        "model.text_dim=32", "model.embed_dim=16"]


def spm_tokenizer(out: Path, vocab: int = 48) -> Path:
    import sentencepiece as spm

    out.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CAPTIONS * 3), model_prefix=str(out / "spm"),
                                   vocab_size=vocab, pad_id=0, unk_id=1, bos_id=2, eos_id=3, hard_vocab_limit=False,
                                   minloglevel=2, num_threads=1)
    return out


def alm_clap_export(tmp: Path) -> Path:
    """A tiny random alm CLAP written by alm.export.write_export, with its sentencepiece tokenizer."""
    from alm.config import load_recipe
    from alm.export import write_export
    from alm.models.clap import Clap

    tok = spm_tokenizer(tmp / "tok")
    cfg = load_recipe(REPO / "recipes" / "tiny" / "clap.yaml", [f"run_dir={tmp / 'run'}", f"data.tokenizer={tok}", *TINY])
    torch.manual_seed(0)
    return write_export(Clap(cfg.model), cfg, tmp / "export")


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return alm_clap_export(tmp_path_factory.mktemp("embed"))


def test_texts_are_the_models_text_embeddings_in_order(export):
    from alm.embed import load_encoder
    from alm.export import load_pretrained
    from alm.stages.clap import text_ids
    from alm.tokenizers.text import load_text_tokenizer

    enc = load_encoder(export)
    model, tok = load_pretrained(export), load_text_tokenizer(export / "tokenizer")
    rows = enc.texts(CAPTIONS, batch_size=3)
    assert rows.shape == (len(CAPTIONS), 16) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)
    for i, c in enumerate(CAPTIONS):
        with torch.no_grad():
            want = model.encode_text(torch.from_numpy(text_ids(tok, c, 12))[None])[0].numpy()
        assert np.abs(rows[i] - want).max() < 1e-5, i
    assert np.abs(enc.texts(CAPTIONS[::-1], batch_size=64) - rows[::-1]).max() < 1e-5  # order, batch size
    assert len({r.tobytes() for r in rows}) == len(CAPTIONS)  # the texts are told apart
    from alm.embed import encoder_for

    live = encoder_for(model.eval(), export / "tokenizer")  # a live model (e.g. at validation), not an export dir
    assert np.abs(live.texts(CAPTIONS) - rows).max() < 1e-6


def test_long_audio_is_the_length_weighted_mean_of_its_windows(export):
    """A clip <= the window is embedded whole; a 2.3-window clip = the normalised, length-weighted
    mean of the model's embeddings of windows [0, W), [W, 2W), [2W, 2.3W) — independent of batch size
    and of its batch neighbours."""
    from alm.embed import load_encoder
    from alm.export import load_pretrained

    enc = load_encoder(export)
    model = load_pretrained(export)
    assert enc.sample_rate == 8000 and enc.window == 4000
    g = np.random.default_rng(0)
    short = g.standard_normal(2500).astype(np.float32)
    long = g.standard_normal(9200).astype(np.float32)

    def model_embedding(x):
        with torch.no_grad():
            return model.encode_audio(torch.from_numpy(x)[None])[0].double().numpy()

    parts = [long[:4000], long[4000:8000], long[8000:]]
    mean = sum(len(p) * model_embedding(p) for p in parts)
    want_long = mean / np.linalg.norm(mean)
    rows = enc.audio([short, long], batch_size=16)
    assert np.abs(rows[0] - model_embedding(short)).max() < 1e-5
    assert np.abs(rows[1] - want_long).max() < 1e-5
    assert np.abs(rows[1] - model_embedding(long[:4000])).max() > 1e-3  # not just the first window
    for bs in (1, 2, 5):
        assert np.abs(enc.audio([long, short], batch_size=bs)[::-1] - rows).max() < 1e-5, bs
    assert np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)


def test_files_stream_equals_the_whole_file_resampled(export, tmp_path):
    """A 16 kHz stereo FLAC of 9 s (3 decode blocks, 18 windows crossing block edges) and a short wav:
    files() == audio() of alm.data.audio.load_mono (the whole file decoded, downmixed, resampled)."""
    from alm.data.audio import load_mono
    from alm.embed import load_encoder

    g = np.random.default_rng(1)
    long, short = tmp_path / "long.flac", tmp_path / "short.wav"
    sf.write(long, 0.3 * g.standard_normal((16000 * 9, 2)), 16000)
    sf.write(short, 0.3 * g.standard_normal(3000), 8000)
    enc = load_encoder(export)
    rows = enc.files([short, long], batch_size=4)
    whole = enc.audio([load_mono(str(short), 8000)[0], load_mono(str(long), 8000)[0]], batch_size=4)
    assert rows.shape == (2, 16)
    assert np.abs(rows - whole).max() < 1e-6


def test_cli_texts_and_audio(export, tmp_path):
    from alm.cli import main
    from alm.embed import load_encoder

    texts = tmp_path / "t.txt"
    texts.write_text("a dog barks twice\n\nbirds sing at dawn\n")  # a blank line is an (empty) text
    wav = tmp_path / "a.wav"
    sf.write(wav, 0.1 * np.random.default_rng(2).standard_normal(5000), 8000)
    assert main(["embed", str(export), "--texts", str(texts), "--out", str(tmp_path / "T.npy")]) == 0
    assert main(["embed", str(export), "--audio", str(wav), str(wav), "--out", str(tmp_path / "A.npy")]) == 0
    enc = load_encoder(export)
    t, a = np.load(tmp_path / "T.npy"), np.load(tmp_path / "A.npy")
    assert t.shape == (3, 16) and t.dtype == np.float32
    assert np.abs(t - enc.texts(["a dog barks twice", "", "birds sing at dawn"])).max() < 1e-6
    assert a.shape == (2, 16) and np.abs(a - enc.files([wav, wav])).max() < 1e-6


def test_user_errors_are_one_line(export, tmp_path, capsys):
    from alm.cli import main

    assert main(["embed", str(export), "--audio", str(tmp_path / "missing.wav"), "--out", str(tmp_path / "x.npy")]) == 2
    assert "missing.wav: no such audio file" in capsys.readouterr().err
    assert main(["embed", str(tmp_path), "--texts", "x", "--out", str(tmp_path / "x.npy")]) == 2
    assert "not an alm export" in capsys.readouterr().err
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0), 8000)
    assert main(["embed", str(export), "--audio", str(empty), "--out", str(tmp_path / "x.npy")]) == 2
    assert "no audio samples" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists() and not list(tmp_path.glob(".x.npy*"))  # no partial file left


def test_rows_fill_a_given_array_and_clips_are_independent(export, tmp_path):
    """out= (the CLI's memory-mapped .npy) gets the same rows; an empty clip among others is named."""
    from alm.embed import load_encoder
    from alm.errors import UserError

    enc = load_encoder(export)
    g = np.random.default_rng(5)
    clips = [g.standard_normal(n).astype(np.float32) for n in (4000, 100, 8001, 3999, 12000, 1)]
    want = enc.audio(clips, batch_size=16)
    mm = np.lib.format.open_memmap(tmp_path / "rows.npy", mode="w+", dtype=np.float32, shape=want.shape)
    enc.audio(clips, batch_size=2, out=mm)
    mm.flush()
    assert np.abs(np.load(tmp_path / "rows.npy") - want).max() < 1e-5
    for i, c in enumerate(clips):  # each row is the clip embedded alone
        assert np.abs(enc.audio([c])[0] - want[i]).max() < 1e-5, i
    with pytest.raises(UserError, match="audio clip 2: no audio samples"):
        enc.audio([clips[0], clips[1], np.zeros(0, np.float32), clips[2]], batch_size=3)


def test_clap_score_embedder_takes_an_alm_clap_export(export, tmp_path):
    """alm eval audio's ClapEmbedder (CLAP score) on an alm export: the same rows as alm embed for
    texts and for windows no longer than the model's."""
    from alm.embed import load_encoder
    from alm.eval.embedders import ClapEmbedder, load_embedder

    emb, enc = ClapEmbedder(str(export)), load_encoder(export)
    assert emb.sample_rate == 8000 and emb.window_s == 0.5
    assert np.abs(emb.embed_texts(CAPTIONS[:3]) - enc.texts(CAPTIONS[:3])).max() < 1e-6
    clips = [np.random.default_rng(i).standard_normal(n).astype(np.float32) for i, n in enumerate((4000, 1500))]
    assert np.abs(emb.embed_windows(clips) - enc.audio(clips)).max() < 1e-5
    assert isinstance(load_embedder(str(export)), ClapEmbedder)  # a folder: by its config
