"""`alm eval audio`: FAD statistics and distance, KLD, CLAP score, the embedders, the CLI.

Models are tiny random transformers models saved in the test (ClapModel, EncodecModel,
ASTForAudioClassification) and a TorchScript file: nothing is downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from alm.cli import main
from alm.errors import UserError
from alm.eval import fad, kld
from alm.eval.embedders import read_windows

RATE = 8000


# ---- FAD ----------------------------------------------------------------------------------------

def test_streaming_stats_equal_numpy_cov_for_any_chunking(monkeypatch):
    rng = np.random.default_rng(0)
    x = 1e3 + rng.normal(size=(1000, 6)) @ rng.normal(size=(6, 6))  # far-from-zero mean: a naive sum-of-squares loses digits
    monkeypatch.setattr(fad, "CHUNK_ROWS", 37)  # update() itself splits into chunks, too
    stats = fad.FrameStats()
    for a, b in ((0, 1), (1, 8), (8, 400), (400, 401), (401, 1000)):
        stats.update(x[a:b])
    assert stats.n == 1000
    np.testing.assert_allclose(stats.mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)


def _gaussian_set(rng, n, mu, var):
    """n rows whose sample mean is exactly mu and sample covariance exactly diag(var)."""
    z = rng.normal(size=(n, len(mu)))
    q, _ = np.linalg.qr(z - z.mean(0))  # orthonormal, zero-mean columns
    return mu + q * np.sqrt((n - 1) * np.asarray(var))


def _stats(x):
    s = fad.FrameStats()
    s.update(x)
    return s


def test_fad_of_a_set_against_itself_is_zero():
    x = np.random.default_rng(1).normal(size=(500, 16))
    assert abs(fad.fad(_stats(x), _stats(x))) < 1e-8


def test_fad_of_shifted_scaled_gaussians_equals_the_closed_form():
    rng = np.random.default_rng(2)
    d = 8
    mu1, s1 = rng.normal(size=d), rng.uniform(0.5, 2.0, size=d)
    mu2, s2 = mu1 + rng.normal(size=d), s1 * rng.uniform(0.2, 3.0, size=d)
    a, b = _gaussian_set(rng, 300, mu1, s1), _gaussian_set(rng, 200, mu2, s2)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert fad.fad(_stats(a), _stats(b)) == pytest.approx(closed, rel=1e-9)
    assert closed > 1  # the two sets do differ


def test_fad_retries_with_eps_when_the_root_is_not_finite(monkeypatch):
    import scipy.linalg

    calls = []
    real = scipy.linalg.sqrtm

    def sqrtm(m):
        calls.append(m.copy())
        return np.full_like(m, np.nan) if len(calls) == 1 else real(m)

    monkeypatch.setattr(scipy.linalg, "sqrtm", sqrtm)
    s = np.diag([1.0, 4.0])
    value = fad.frechet_distance(np.zeros(2), s, np.zeros(2), s, eps=1e-6)
    np.testing.assert_allclose(calls[1], (s + 1e-6 * np.eye(2)) @ (s + 1e-6 * np.eye(2)))
    assert abs(value) < 1e-5


def test_fad_refuses_a_root_with_an_imaginary_diagonal(monkeypatch):
    import scipy.linalg

    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda m: m + 0.1j * np.eye(len(m)))
    with pytest.raises(UserError, match="imaginary component"):
        fad.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))


def test_stats_round_trip_through_npz(tmp_path):
    x = np.random.default_rng(3).normal(size=(50, 4))
    fad.save_stats(tmp_path / "ref.npz", _stats(x), "clap:some/model")
    back = fad.load_stats(tmp_path / "ref.npz")
    np.testing.assert_array_equal(back.mu, _stats(x).mu)
    np.testing.assert_array_equal(back.sigma, _stats(x).sigma)
    assert (back.n, back.embedder) == (50, "clap:some/model")
    np.save(tmp_path / "other.npy", x)
    with pytest.raises(UserError, match="not a readable .npz"):
        fad.load_stats(tmp_path / "other.npy")


# ---- KLD ----------------------------------------------------------------------------------------

def test_kld_of_identical_distributions_is_zero():
    p = {"a": np.array([0.2, 0.3, 0.5]), "b": np.array([1.0, 0.0, 0.0])}
    out = kld.kld(p, dict(p))
    assert set(out) == {"kld", "kld_pq", "kld_qp", "kld_both"}
    assert all(abs(v) < 1e-5 for v in out.values())


def test_kld_two_classes_by_hand():
    gen, ref = {"x": np.array([0.9, 0.1])}, {"x": np.array([0.5, 0.5])}
    out = kld.kld(gen, ref)
    pq = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)  # KL(reference || generated)
    qp = 0.9 * np.log(0.9 / 0.5) + 0.1 * np.log(0.1 / 0.5)
    assert out["kld_pq"] == pytest.approx(pq, abs=1e-5) and out["kld"] == out["kld_pq"]
    assert out["kld_qp"] == pytest.approx(qp, abs=1e-5)
    assert out["kld_both"] == pytest.approx(pq + qp, abs=1e-5)


def test_kld_agrees_with_audiocrafts_torch_expression():
    import torch

    gen = torch.softmax(3 * torch.randn(40, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), -1)
    ref = torch.softmax(3 * torch.randn(40, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), -1)
    ref[0, :5] = 0  # 0 log 0 = 0, as torch's kl_div has it
    ref[0] /= ref[0].sum()

    def audiocraft(pred, target):  # audiocraft/metrics/kld.py: kl_div((pred + 1e-6).log(), target).sum(-1)
        return torch.nn.functional.kl_div((pred + 1e-6).log(), target, reduction="none").sum(-1).mean().item()

    out = kld.kld({str(i): gen[i].numpy() for i in range(40)}, {str(i): ref[i].numpy() for i in range(40)})
    assert out["kld_pq"] == pytest.approx(audiocraft(gen, ref), rel=1e-12)
    assert out["kld_qp"] == pytest.approx(audiocraft(ref, gen), rel=1e-12)


def test_kld_names_the_files_without_a_partner():
    with pytest.raises(UserError, match=r"only generated: b; only reference: c"):
        kld.pair_by_name({"a": 1, "b": 2}, {"a": 1, "c": 3})


# ---- audio reading ------------------------------------------------------------------------------

def _wav(path: Path, seconds: float, freq: float = 440.0, rate: int = RATE, seed: int = 0, stereo: bool = False) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * np.random.default_rng(seed).normal(size=len(t))
    if stereo:
        x = np.stack([x, 0.5 * x], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, rate, subtype="FLOAT" if path.suffix == ".wav" else "PCM_24")
    return path


def test_windows_read_one_at_a_time_equal_the_whole_file(tmp_path):
    path = _wav(tmp_path / "a.wav", 2.5, stereo=True)
    windows = list(read_windows(path, RATE, 1.0))
    assert [len(w) for w in windows] == [RATE, RATE, RATE // 2]
    whole, _ = sf.read(path, dtype="float32")
    np.testing.assert_array_equal(np.concatenate(windows), whole.mean(axis=1))
    short_tail = _wav(tmp_path / "b.wav", 2.1)  # a 0.1 s tail is dropped, as audiocraft drops it
    assert [len(w) for w in read_windows(short_tail, RATE, 1.0)] == [RATE, RATE]
    with pytest.raises(UserError, match=r"c.wav: shorter than 0.15 s"):
        list(read_windows(_wav(tmp_path / "c.wav", 0.1), RATE, 1.0))
    assert [len(w) for w in read_windows(path, RATE // 2, 1.0)] == [RATE // 2, RATE // 2, RATE // 4]  # resampled


def test_a_long_file_is_read_one_window_at_a_time(tmp_path, monkeypatch):
    requested = []
    real_read = sf.SoundFile.read

    def read(self, frames=-1, *args, **kwargs):
        requested.append(frames)
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", read)
    path = _wav(tmp_path / "long.wav", 30.0)
    assert sum(len(w) for w in read_windows(path, RATE, 2.0)) == 30 * RATE
    assert requested and all(0 < f <= 2 * RATE for f in requested)  # never the whole file (frames=-1)


class _Model:
    def __init__(self, any_length):
        self.sample_rate, self.window_s, self.any_length = RATE, 0.5, any_length


def test_batches_hold_every_window_once_and_equal_lengths_unless_any_length(tmp_path):
    from alm.eval.embedders import batched_windows

    files = {f"f{i}": _wav(tmp_path / f"f{i}.wav", 0.5 * (i % 3) + 0.2 + 0.1 * i, seed=i) for i in range(7)}
    want = sorted((n, len(w)) for n, p in files.items() for w in read_windows(p, RATE, 0.5))
    for any_length in (False, True):
        batches = list(batched_windows(files, _Model(any_length), batch_size=3))
        got = sorted((n, len(w)) for names, ws in batches for n, w in zip(names, ws))
        assert got == want
        assert all(len(ws) <= 3 for _, ws in batches)
        if not any_length:
            assert all(len({len(w) for w in ws}) == 1 for _, ws in batches)
    assert max(len(ws) for _, ws in batched_windows(files, _Model(True), batch_size=3)) == 3


# ---- the CLI on precomputed embeddings ----------------------------------------------------------

def _eval(*args: str) -> int:
    return main(["eval", "audio", *args])


def test_cli_on_precomputed_embeddings_and_cached_stats(tmp_path, capsys):
    rng = np.random.default_rng(4)
    gen, ref = rng.normal(size=(400, 5)), 0.5 + 2 * rng.normal(size=(300, 5))
    np.save(tmp_path / "gen.npy", gen.astype(np.float32))
    np.save(tmp_path / "ref.npy", ref.astype(np.float32))
    out = tmp_path / "results.json"
    assert _eval("--generated-embeddings", str(tmp_path / "gen.npy"), "--reference-embeddings", str(tmp_path / "ref.npy"),
                 "--save-stats", str(tmp_path / "ref.npz"), "--out", str(out)) == 0
    r = json.loads(out.read_text())
    assert set(r) == {"task", "metrics", "n", "config"} and r["task"] == "audio"
    want = fad.fad(_stats(gen.astype(np.float32)), _stats(ref.astype(np.float32)))
    assert r["metrics"] == {"fad": pytest.approx(want, rel=1e-9)}
    assert r["config"]["generated_frames"] == 400 and r["config"]["reference_frames"] == 300
    assert set(r["config"]["skipped"]) == {"kld", "clap_score"}
    # only the reference's statistics: an .npz and no results file
    assert _eval("--reference-embeddings", str(tmp_path / "ref.npy"), "--save-stats", str(tmp_path / "only.npz"),
                 "--out", str(tmp_path / "none.json")) == 0
    assert (tmp_path / "only.npz").is_file() and not (tmp_path / "none.json").exists()
    out2 = tmp_path / "results2.json"
    assert _eval("--generated-embeddings", str(tmp_path / "gen.npy"), "--reference-stats", str(tmp_path / "ref.npz"),
                 "--out", str(out2)) == 0
    assert json.loads(out2.read_text())["metrics"]["fad"] == pytest.approx(want, rel=1e-12)
    assert "fad" in capsys.readouterr().out


def test_non_finite_embeddings_are_an_error_naming_the_file(tmp_path, capsys):
    bad = np.ones((10, 3), np.float32)
    bad[7, 1] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    np.save(tmp_path / "ref.npy", np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32))
    assert _eval("--generated-embeddings", str(tmp_path / "bad.npy"), "--reference-embeddings", str(tmp_path / "ref.npy"),
                 "--out", str(tmp_path / "r.json")) == 2
    assert "bad.npy: non-finite (NaN / inf) frame embeddings" in capsys.readouterr().err


def test_cli_with_nothing_to_score_is_one_line_error(tmp_path, capsys):
    assert _eval("--out", str(tmp_path / "r.json")) == 2
    err = capsys.readouterr().err
    assert err.startswith("alm eval: nothing to score") and len(err.strip().splitlines()) == 1
    np.save(tmp_path / "ref.npy", np.ones((3, 2), np.float32))
    assert _eval("--generated-embeddings", str(tmp_path / "missing.npy"), "--reference-embeddings", str(tmp_path / "ref.npy")) == 2
    assert "--generated-embeddings " + str(tmp_path / "missing.npy") + ": no such file" in capsys.readouterr().err


def test_vggish_without_a_local_file_says_what_to_give(tmp_path, capsys):
    _wav(tmp_path / "g" / "a.wav", 0.5)
    assert _eval("--generated", str(tmp_path / "g"), "--reference", str(tmp_path / "g"), "--embedder", "vggish") == 2
    assert "--embedder vggish: its weights have no transformers class" in capsys.readouterr().err


# ---- tiny random models saved in the test --------------------------------------------------------

@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor,
                              ClapTextConfig, RobertaTokenizer)
    import torch

    d = tmp_path_factory.mktemp("clap")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["a dog barks", "rain falls on a roof", "a bell rings loudly", "soft music"] * 5,
                            vocab_size=300, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(d))
    tok = RobertaTokenizer.from_pretrained(str(d))
    audio = ClapAudioConfig(spec_size=64, num_mel_bins=16, window_size=4, patch_embeds_hidden_size=8, depths=[1, 1],
                            num_attention_heads=[1, 1], hidden_size=16, patch_stride=[4, 4], patch_size=4,
                            projection_dim=8, enable_fusion=False)
    text = ClapTextConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=80, projection_dim=8)
    torch.manual_seed(0)
    model = ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=8)).eval()
    fe = ClapFeatureExtractor(feature_size=16, sampling_rate=RATE, hop_length=80, max_length_s=1, fft_window_size=256,
                              truncation="rand_trunc", padding="repeatpad")
    model.save_pretrained(d)
    ClapProcessor(feature_extractor=fe, tokenizer=tok).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def audio_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    for i, name in enumerate(["dog", "rain", "sub/bell"]):
        _wav(root / "gen" / f"{name}.wav", 0.8, freq=300 + 100 * i, seed=i)
        _wav(root / "ref" / f"{name}.flac", 0.9, freq=320 + 150 * i, seed=10 + i)
    captions = {"dog": "a dog barks", "rain": "rain falls on a roof", "sub/bell": "a bell rings loudly"}
    (root / "captions.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in captions.items()))
    return root


def test_clap_score_equals_a_direct_transformers_computation(clap_dir, audio_dirs, tmp_path):
    import torch
    from transformers import ClapModel, ClapProcessor

    out = tmp_path / "results.json"
    assert _eval("--generated", str(audio_dirs / "gen"), "--captions", str(audio_dirs / "captions.jsonl"),
                 "--clap-model", str(clap_dir), "--device", "cpu", "--batch-size", "2", "--out", str(out)) == 0
    got = json.loads(out.read_text())["metrics"]["clap_score"]

    model, proc = ClapModel.from_pretrained(clap_dir).eval(), ClapProcessor.from_pretrained(clap_dir)
    captions = [json.loads(line) for line in (audio_dirs / "captions.jsonl").read_text().splitlines()]
    cos = []
    for c in captions:
        wav, rate = sf.read(audio_dirs / "gen" / f"{c['id']}.wav", dtype="float32")
        with torch.no_grad():
            a = model.get_audio_features(**proc.feature_extractor(wav, sampling_rate=rate, return_tensors="pt")).pooler_output
            t = model.get_text_features(**proc.tokenizer([c["text"]], return_tensors="pt")).pooler_output
        cos.append(torch.nn.functional.cosine_similarity(a, t).item())
    assert got == pytest.approx(np.mean(cos), abs=1e-5)
    assert abs(np.mean(cos)) > 1e-3  # a score that could be told apart from 0


def test_the_default_clap_model_offline_says_it_is_not_available(audio_dirs, capsys):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # tests/conftest.py
    assert _eval("--generated", str(audio_dirs / "gen"), "--reference", str(audio_dirs / "gen"), "--embedder", "clap",
                 "--device", "cpu") == 2
    err = capsys.readouterr().err.strip()
    assert "'laion/clap-htsat-unfused'" in err and "HF_HUB_OFFLINE=1" in err and len(err.splitlines()) == 1


def test_an_alm_export_of_another_stage_as_clap_model_is_refused(audio_dirs, tmp_path, capsys):
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.yaml").write_text("stage: semantic\n")
    assert _eval("--generated", str(audio_dirs / "gen"), "--captions", str(audio_dirs / "captions.jsonl"),
                 "--clap-model", str(export), "--device", "cpu") == 2
    assert "an alm export of stage 'semantic', not a clap export" in capsys.readouterr().err


def test_captions_must_match_the_generated_files(clap_dir, audio_dirs, tmp_path, capsys):
    bad = tmp_path / "captions.jsonl"
    bad.write_text(json.dumps({"id": "dog", "text": "a dog"}) + "\n" + json.dumps({"id": "cat", "text": "a cat"}) + "\n")
    assert _eval("--generated", str(audio_dirs / "gen"), "--captions", str(bad), "--clap-model", str(clap_dir)) == 2
    err = capsys.readouterr().err
    assert "without a caption: rain, sub/bell" in err and "without a generated file: cat" in err


def test_fad_with_the_clap_embedder_folder(clap_dir, audio_dirs, tmp_path):
    out = tmp_path / "results.json"
    assert _eval("--generated", str(audio_dirs / "gen"), "--reference", str(audio_dirs / "gen"), "--embedder", str(clap_dir),
                 "--device", "cpu", "--out", str(out)) == 0
    r = json.loads(out.read_text())
    assert abs(r["metrics"]["fad"]) < 1e-6 and r["config"]["generated_frames"] == 3  # one window per 0.8 s file
    assert r["config"]["embedder"] == f"clap:{clap_dir}"


def test_encodec_frames_fad_and_cached_reference_stats(audio_dirs, tmp_path):
    from transformers import EncodecConfig, EncodecModel
    import torch

    torch.manual_seed(0)
    codec = tmp_path / "encodec"
    EncodecModel(EncodecConfig(sampling_rate=RATE, audio_channels=1, num_filters=4, hidden_size=8, upsampling_ratios=[4, 4],
                               codebook_size=16, target_bandwidths=[1.0], num_lstm_layers=1)).save_pretrained(codec)
    args = ["--embedder", "encodec", "--embedder-model", str(codec), "--window-seconds", "0.5", "--device", "cpu"]
    out = tmp_path / "results.json"
    assert _eval("--generated", str(audio_dirs / "gen"), "--reference", str(audio_dirs / "ref"), *args,
                 "--save-stats", str(tmp_path / "ref.npz"), "--out", str(out)) == 0
    direct = json.loads(out.read_text())
    cached = tmp_path / "cached.json"  # and one window per model call: batching changes nothing but rounding
    assert _eval("--generated", str(audio_dirs / "gen"), "--reference-stats", str(tmp_path / "ref.npz"), *args,
                 "--batch-size", "1", "--out", str(cached)) == 0
    assert json.loads(cached.read_text())["metrics"]["fad"] == pytest.approx(direct["metrics"]["fad"], rel=1e-5)
    assert direct["metrics"]["fad"] > 0
    # 0.8 s at 8 kHz in 0.5 s windows: 4000 + 2400 samples -> 250 + 150 frames of 16 samples each, 3 files
    assert direct["config"]["generated_frames"] == 3 * (250 + 150)


def test_kld_through_a_tiny_audio_classifier_equals_a_direct_computation(audio_dirs, tmp_path):
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification
    import torch

    torch.manual_seed(0)
    clf = tmp_path / "ast"
    model = ASTForAudioClassification(ASTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                intermediate_size=32, num_mel_bins=16, max_length=32, patch_size=16,
                                                frequency_stride=8, time_stride=8, num_labels=3)).eval()
    model.save_pretrained(clf)
    fe = ASTFeatureExtractor(num_mel_bins=16, max_length=32, sampling_rate=RATE)
    fe.save_pretrained(clf)
    out = tmp_path / "results.json"
    args = ["--classifier", str(clf), "--window-seconds", "0.5", "--device", "cpu"]
    assert _eval("--generated", str(audio_dirs / "gen"), "--reference", str(audio_dirs / "ref"), *args, "--out", str(out)) == 0
    got = json.loads(out.read_text())["metrics"]

    def dist(path):  # softmax per 0.5 s segment, mean over the file's segments
        wav, rate = sf.read(path, dtype="float32")
        segs = [wav[i:i + rate // 2] for i in range(0, len(wav), rate // 2)]
        with torch.no_grad():
            probs = [torch.softmax(model(**fe(s, sampling_rate=rate, return_tensors="pt")).logits[0], -1).numpy()
                     for s in segs if len(s) > 0.15 * rate]
        return np.mean(probs, axis=0)

    names = ["dog", "rain", "sub/bell"]
    p = np.stack([dist(audio_dirs / "ref" / f"{n}.flac") for n in names])
    q = np.stack([dist(audio_dirs / "gen" / f"{n}.wav") for n in names])
    pq = np.mean(np.sum(p * (np.log(p) - np.log(q + 1e-6)), axis=1))
    assert got["kld_pq"] == pytest.approx(pq, rel=1e-4, abs=1e-7) and got["kld"] == got["kld_pq"]
    assert got["kld_both"] == pytest.approx(got["kld_pq"] + got["kld_qp"])
    same = tmp_path / "same.json"
    assert _eval("--generated", str(audio_dirs / "gen"), "--reference", str(audio_dirs / "gen"), *args, "--out", str(same)) == 0
    assert abs(json.loads(same.read_text())["metrics"]["kld_both"]) < 1e-5


def test_kld_file_mismatch_names_the_files_before_any_model_runs(audio_dirs, tmp_path, capsys):
    ref = tmp_path / "ref"
    _wav(ref / "dog.wav", 0.5)
    _wav(ref / "cat.wav", 0.5)
    assert _eval("--generated", str(audio_dirs / "gen"), "--reference", str(ref), "--classifier", str(tmp_path / "nope")) == 2
    err = capsys.readouterr().err
    assert "only generated: rain, sub/bell; only reference: cat" in err


def _frames_module():
    """A TorchScript-able embedder at 4 kHz: (1, samples) -> (frames, 4), mean |x| per 100 samples."""
    import torch

    class Frames(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sample_rate = 4000

        def forward(self, wave):
            n = wave.shape[1] // 400 * 400
            return wave[0, :n].abs().reshape(-1, 4, 100).mean(-1)

    return Frames()


def test_a_torchscript_embedder_file(audio_dirs, tmp_path):
    import torch

    path = tmp_path / "frames.pt"
    torch.jit.save(torch.jit.script(_frames_module()), str(path))
    out = tmp_path / "results.json"
    assert _eval("--generated", str(audio_dirs / "gen"), "--reference", str(audio_dirs / "ref"), "--embedder", "panns",
                 "--embedder-model", str(path), "--device", "cpu", "--out", str(out)) == 0
    r = json.loads(out.read_text())
    assert r["metrics"]["fad"] > 0 and r["config"]["embedder"] == f"panns:{path}"
    assert r["config"]["generated_frames"] == 3 * (3200 // 400)  # 0.8 s at 4 kHz, one window


def test_captions_file_errors_name_the_file_and_line(tmp_path):
    from alm.eval.audio import read_captions

    f = tmp_path / "captions.jsonl"
    f.write_text('{"id": "a", "text": "rain"}\n\n{"id": 7, "text": "wind"}\n')
    assert read_captions(str(f)) == {"a": "rain", "7": "wind"}
    f.write_text('{"id": "a", "text": "rain"}\n{"id": "b"}\n')
    with pytest.raises(UserError, match=r'captions.jsonl:2: a caption needs a "text" string \(id \'b\'\)'):
        read_captions(str(f))
    f.write_text('{"id": "a", "text": "rain"}\n{"id": "a", "text": "again"}\n')
    with pytest.raises(UserError, match="duplicate ids 'a'"):
        read_captions(str(f))
    with pytest.raises(UserError, match="--captions .*missing.jsonl: no such file"):
        read_captions(str(tmp_path / "missing.jsonl"))
