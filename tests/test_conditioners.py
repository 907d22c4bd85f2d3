"""Conditioners (alm/conditioners/): the frozen T5 text encoder on a tiny random T5 with a
sentencepiece tokenizer made here, and the chroma of a wav against transformers' MusicGen-Melody
feature extractor's own post-processing on an independent numpy spectrogram."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from alm.conditioners.chroma import HOP, N_FFT, SAMPLE_RATE, chroma, chroma_filters, frames_for
from alm.conditioners.t5 import T5Conditioner, make_tiny_t5
from alm.errors import UserError

CAPTIONS = ["heavy rain falling steadily", "a slow rising piano melody in C major",
            "organ chords playing a I-IV-V-I progression", "3 knocks on a wooden door",
            "a high-pitched voice babbling the vowels a-e-i", "a siren wailing up and down"]


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    return make_tiny_t5(tmp_path_factory.mktemp("t5"), CAPTIONS * 10, d_model=32, vocab_size=80)


def test_t5_states_and_mask_are_the_encoder_of_each_text_alone(tiny_t5):
    from transformers import T5EncoderModel

    t5 = T5Conditioner(tiny_t5)
    texts = ["heavy rain", "a slow rising piano melody in C major"]
    states, mask = t5(texts)
    assert states.shape[0] == 2 and states.shape[2] == t5.dim == 32 and mask.shape == states.shape[:2]
    lengths = mask.sum(1).tolist()
    assert lengths[0] < lengths[1] == states.shape[1]  # right padding to the longest
    assert bool((states[0, lengths[0]:] == 0).all())  # zero at padding
    ref = T5EncoderModel.from_pretrained(tiny_t5).eval()
    for i, text in enumerate(texts):
        ids = t5.tokenizer(text, return_tensors="pt")["input_ids"]
        assert ids.shape[1] == lengths[i] and int(ids[0, -1]) == 1  # ends with </s>
        with torch.no_grad():
            alone = ref(input_ids=ids).last_hidden_state[0]
        assert torch.allclose(states[i, : lengths[i]], alone, atol=1e-5)


def test_t5_is_frozen(tiny_t5):
    t5 = T5Conditioner(tiny_t5)
    assert all(not p.requires_grad for p in t5.encoder.parameters())
    assert not isinstance(t5, torch.nn.Module)  # cannot be registered into an LM's parameters
    t5.encoder.train()  # a caller's train() must not turn dropout on
    a, _ = t5(CAPTIONS)
    b, _ = t5(CAPTIONS)
    assert not a.requires_grad and torch.equal(a, b)


def test_t5_truncates_and_names_a_bad_source(tiny_t5, tmp_path):
    t5 = T5Conditioner(tiny_t5, max_length=4)
    _, mask = t5([" ".join(CAPTIONS)])
    assert mask.shape == (1, 4)
    with pytest.raises(UserError, match="T5 text encoder"):
        T5Conditioner(tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="non-empty list of texts"):
        t5("one string, not a list")


def numpy_power_spectrogram(wav: np.ndarray) -> torch.Tensor:
    """torchaudio.transforms.Spectrogram(n_fft, hop, power=2, center=True, pad_mode='reflect',
    normalized=True) written out in numpy: (B, F, frames)."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    out = []
    for x in np.atleast_2d(wav).astype(np.float64):
        x = np.pad(x, N_FFT // 2, mode="reflect")
        frames = [x[s : s + N_FFT] * window for s in range(0, len(x) - N_FFT + 1, HOP)]
        spec = np.abs(np.fft.rfft(np.stack(frames), axis=1)) ** 2 / (window ** 2).sum()
        out.append(spec.T)
    return torch.from_numpy(np.stack(out)).float()


def transformers_chroma(wav: np.ndarray) -> torch.Tensor:
    """MusicgenMelodyFeatureExtractor's own chroma code with the numpy spectrogram above."""
    from transformers.models.musicgen_melody.feature_extraction_musicgen_melody import (
        MusicgenMelodyFeatureExtractor,
    )

    fake = SimpleNamespace(n_fft=N_FFT, chroma_filters=chroma_filters(),
                           spectrogram=lambda w: numpy_power_spectrogram(w.numpy()))
    return MusicgenMelodyFeatureExtractor._torch_extract_fbank_features(fake, torch.as_tensor(wav)[None].float())


def test_chroma_equals_musicgen_melody_feature_extraction():
    rng = np.random.default_rng(0)
    t = np.arange(int(2.5 * SAMPLE_RATE)) / SAMPLE_RATE
    # a melody: A4, C5, E5 over 2.5 s, plus a little noise
    f = np.where(t < 0.8, 440.0, np.where(t < 1.6, 523.25, 659.25))
    wav = (0.5 * np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
    ours = chroma(wav)
    ref = transformers_chroma(wav)[0]
    assert ours.shape == ref.shape == (frames_for(2.5), 12) == (1 + len(wav) // HOP, 12)
    assert torch.equal(ours, ref)
    assert bool((ours.sum(-1) == 1).all())
    # A = bin 9, C = bin 0, E = bin 4 in the middle of each note
    assert [int(ours[i].argmax()) for i in (3, 9, 17)] == [9, 0, 4]
    assert frames_for(30.0) == 235  # MusicGen-Melody's chroma_length


def test_chroma_short_silent_and_batched():
    short = np.sin(2 * np.pi * 440 * np.arange(8000) / SAMPLE_RATE).astype(np.float32)  # 0.25 s < n_fft
    assert torch.equal(chroma(short), transformers_chroma(short)[0])
    silent = chroma(np.zeros(SAMPLE_RATE, dtype=np.float32))
    assert bool((silent[:, 0] == 1).all())  # silence -> bin 0, like the null melody
    batch = np.stack([short, np.zeros_like(short)])
    assert torch.equal(chroma(batch)[0], chroma(short))
    with pytest.raises(ValueError, match="non-empty mono wav"):
        chroma(np.zeros(0, dtype=np.float32))


def test_text_embeddings_shards_hold_every_captions_states(tiny_t5, tmp_path):
    import json

    from alm.data.shards import ShardWriter, json_bytes, npy_load, read_shard
    from alm.stages.musicgen import caption_embeddings
    from alm.tokenizers.text_embeddings import META_FILE, embed_caption_shards, main

    src = tmp_path / "codes"
    with ShardWriter(src, "train", max_count=2) as w:
        for i, caps in enumerate([CAPTIONS[:2], CAPTIONS[2:3], [], CAPTIONS[3:6]]):
            w.write({"__key__": f"k{i}", "json": json_bytes({"id": f"k{i}", "captions": caps})})
    t5 = T5Conditioner(tiny_t5)
    out = tmp_path / "t5emb"
    summary = embed_caption_shards(str(src / "train-*.tar"), out, t5, batch_size=3, progress=False)
    assert summary["samples"] == 3 and summary["errors_total"] == 1  # the caption-less sample, listed
    assert json.loads((out / "errors.json").read_text())[0]["key"] == "k2"
    meta = json.loads((out / META_FILE).read_text())
    assert meta["d_model"] == 32 and meta["dtype"] == "float16"
    got = {s["__key__"]: s for shard in sorted(out.glob("train-*.tar")) for s in read_shard(str(shard))}
    assert sorted(got) == ["k0", "k1", "k3"]
    for key, caps in (("k0", CAPTIONS[:2]), ("k3", CAPTIONS[3:6])):
        per_caption = caption_embeddings(got[key])
        assert len(per_caption) == len(caps) and per_caption[0].dtype == np.float16
        for caption, emb in zip(caps, per_caption):
            alone, mask = t5([caption])
            assert emb.shape == (int(mask.sum()), 32)
            assert np.allclose(emb.astype(np.float32), alone[0].numpy(), atol=2e-3)
        assert json.loads(got[key]["json"])["captions"] == caps  # the json travels for the join
    assert npy_load(got["k1"]["text_emb_lengths.npy"]).tolist() == [len(caption_embeddings(got["k1"])[0])]
    # another encoder into the same directory is refused; the CLI says so in one line
    other = make_tiny_t5(tmp_path / "other", CAPTIONS * 10, d_model=32, vocab_size=80, seed=1)
    assert main(["--shards", str(src / "train-*.tar"), "--t5", str(other), "--out", str(out), "--no-progress"]) == 2
