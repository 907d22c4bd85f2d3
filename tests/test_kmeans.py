"""k-means for semantic tokens: the seeded reservoir sample of frames spans every fit shard, the
backends (scikit-learn, faiss when installed) agree, and the fit's report is printed and kept."""

import json

import numpy as np
import pytest

from alm.data.shards import read_shard
from alm.data.synthetic import write_synthetic
from alm.errors import UserError
from alm.tokenizers import kmeans
from alm.tokenizers.kmeans import FrameReservoir, fit_kmeans, usage_report
from alm.tokenizers.semantic import SemanticTokenizer, SemanticTokenizerConfig, fit_tokenizer, logmel_features, main


def _stream(sizes, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, dim)).astype(np.float32) + 10 * i for i, n in enumerate(sizes)]


def test_reservoir_spans_all_shards_in_proportion_to_their_frames():
    sizes = [4000, 12000, 2000, 8000, 14000]  # the last "shard" is the biggest: a first-N sample never sees it
    reservoir = FrameReservoir(4000, seed=3)
    for tag, frames in enumerate(_stream(sizes)):
        for start in range(0, len(frames), 700):  # fed in pieces, like one file at a time
            reservoir.add(frames[start : start + 700], tag)
    assert reservoir.seen == sum(sizes) and reservoir.rows.shape == (4000, 4)
    share = np.bincount(reservoir.tags, minlength=len(sizes)) / 4000
    expected = np.array(sizes) / sum(sizes)
    assert share[-1] > 0.25  # frames from the last shard are there, in proportion
    np.testing.assert_allclose(share, expected, atol=0.03)  # binomial sd here is <= 0.008
    # each sampled row is a row of the shard its tag names (tags travel with their rows)
    assert (np.abs(reservoir.rows.mean(1) - 10 * reservoir.tags) < 3).all()


def test_reservoir_deterministic_and_independent_of_how_the_stream_is_cut():
    (x,) = _stream([5000])
    whole = FrameReservoir(300, seed=7)
    whole.add(x)
    pieces = FrameReservoir(300, seed=7)
    for start in range(0, len(x), 37):
        pieces.add(x[start : start + 37])
    one_by_one = FrameReservoir(300, seed=7)
    for row in x:
        one_by_one.add(row[None])
    assert np.array_equal(whole.rows, pieces.rows) and np.array_equal(whole.rows, one_by_one.rows)
    other = FrameReservoir(300, seed=8)
    other.add(x)
    assert not np.array_equal(whole.rows, other.rows)
    short = FrameReservoir(10_000, seed=7)  # a stream shorter than the sample is kept whole, in order
    short.add(x[:100])
    short.add(x[100:250])
    assert np.array_equal(short.rows, x[:250])


def test_reservoir_includes_every_position_with_equal_probability():
    x = np.arange(100, dtype=np.float32)[:, None]
    counts = np.zeros(100)
    for seed in range(400):
        r = FrameReservoir(10, seed=seed)
        r.add(x[:30])
        r.add(x[30:])
        counts[r.rows[:, 0].astype(int)] += 1
    # each of 100 positions is kept with p = 0.1: 40 expected in 400 draws (sd 6); early and late alike
    assert abs(counts[:50].sum() - counts[50:].sum()) < 120 and counts.min() > 15 and counts.max() < 70


def _blobs(seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=np.float32)
    return (centers[rng.integers(0, 4, 800)] + rng.normal(scale=0.5, size=(800, 2))).astype(np.float32), centers


def _sorted_rows(a):
    key = np.round(a)  # blob centres are integers: their rounding gives a stable order to sort by
    return a[np.lexsort(key.T[::-1])]


def test_sklearn_report_inertia_and_usage():
    x, centers = _blobs()
    cents, report = fit_kmeans(x, 4, seed=0, backend="sklearn")
    np.testing.assert_allclose(_sorted_rows(cents), _sorted_rows(centers), atol=0.2)
    labels, dist2 = kmeans.nearest(x, cents)
    assert report["backend"] == "sklearn" and report["frames"] == 800
    assert report["inertia"] == pytest.approx(float(dist2.sum())) and 0.3 < report["inertia_per_frame"] < 0.7
    u = report["usage"]
    assert u["empty"] == 0 and u["min"] > 150 and u["max"] < 250 and u["min"] <= u["median"] <= u["max"]
    assert usage_report(np.array([0, 0, 2, 2, 2]), 5) == {"min": 0, "median": 0.0, "max": 3, "empty": 3}
    with pytest.raises(UserError, match="only 3 feature frames to fit 4 clusters"):
        fit_kmeans(x[:3], 4)


def test_faiss_and_sklearn_agree_on_a_toy_clustering():
    pytest.importorskip("faiss", reason="faiss not installed (optional: pip install faiss-cpu)")
    x, _ = _blobs(1)
    a, ra = fit_kmeans(x, 4, seed=0, backend="sklearn")
    b, rb = fit_kmeans(x, 4, seed=0, backend="faiss")
    assert rb["backend"] == "faiss" and kmeans.choose_backend("auto") == "faiss"
    np.testing.assert_allclose(_sorted_rows(a), _sorted_rows(b), atol=0.05)
    la, lb = kmeans.nearest(x, a)[0], kmeans.nearest(x, b)[0]
    pairs = set(zip(la.tolist(), lb.tolist()))
    assert len(pairs) == 4  # the same partition, up to the clusters' numbering
    assert rb["inertia"] == pytest.approx(ra["inertia"], rel=1e-3) and rb["usage"] == ra["usage"]


def test_backend_choice(monkeypatch):
    monkeypatch.setattr(kmeans, "faiss_available", lambda: False)
    assert kmeans.choose_backend("auto") == "sklearn"
    with pytest.raises(UserError, match="pip install faiss-cpu"):
        kmeans.choose_backend("faiss")
    with pytest.raises(UserError, match="expected one of auto, faiss, sklearn"):
        kmeans.choose_backend("kmeans++")


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    out = tmp_path_factory.mktemp("audio")
    write_synthetic(out, num_clips=12, val_clips=2, seconds=1.0, shard_size=3)  # 4 train shards, 49 log-mel frames a clip
    return out


def test_fit_tokenizer_samples_frames_of_every_fit_shard(audio):
    shards = sorted(str(p) for p in audio.glob("train-*.tar"))
    samples = lambda: (s for u in shards for s in read_shard(u))  # noqa: E731
    cfg = SemanticTokenizerConfig(features="logmel", n_clusters=4)
    feats = logmel_features(cfg.sample_rate)
    from alm.data.audio import load_mono

    per_shard = [np.concatenate([feats(load_mono(s["flac"], 16000)[0]) for s in read_shard(u)]) for u in shards]
    total = sum(len(f) for f in per_shard)
    tok = fit_tokenizer(cfg, samples(), max_frames=total // 4, seed=0)
    r = tok.fit_report
    assert r["seen_frames"] == total and r["frames"] == total // 4 and r["shards"] == 4 and r["skipped_samples"] == 0
    # the sample's mean (the tokenizer's standardisation) is the whole set's, not the first shard's
    whole, first = np.concatenate(per_shard).mean(0), per_shard[0].mean(0)
    err_sample = np.abs(tok.mean.numpy() - whole).mean()
    assert err_sample < 0.25 * np.abs(first - whole).mean()


def test_cli_prints_and_keeps_the_fit_report(audio, tmp_path, capsys):
    out = tmp_path / "sem"
    assert main(["--shards", str(audio), "--out", str(out), "--features", "logmel", "--clusters", "4",
                 "--fit-frames", "200", "--kmeans-backend", "sklearn", "--fit-only"]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "tokenizer" / "semantic_tokenizer.json").read_text())
    k = saved["kmeans"]
    assert k["backend"] == "sklearn" and k["frames"] == 200 and k["seen_frames"] == 12 * 49 and k["shards"] == 4
    assert (f"k-means (sklearn): 200 frames sampled uniformly from 588 in 4 shard(s); inertia {k['inertia']:.6g}" in printed
            and f"median {k['usage']['median']:g} / max {k['usage']['max']}" in printed)
    assert not list(out.glob("*.tar"))  # --fit-only writes no tokens
    assert SemanticTokenizer.load(out / "tokenizer").fit_report == k


def test_fit_fraction_embeds_a_seeded_share_of_the_samples(audio):
    from alm.tokenizers.semantic import _chosen

    picked = sum(_chosen(0, "train-000000.tar", f"key{i}", 0.1) for i in range(20_000))
    assert abs(picked - 2000) < 200  # P = fraction (binomial sd 42)
    shards = sorted(str(p) for p in audio.glob("train-*.tar"))
    cfg = SemanticTokenizerConfig(features="logmel", n_clusters=2)
    fit = lambda seed: fit_tokenizer(cfg, (s for u in shards for s in read_shard(u)), 10_000, seed,  # noqa: E731
                                     fraction=0.5).fit_report
    a, b = fit(0), fit(1)
    assert 0 < a["samples"] < 12 and a["seen_frames"] == 49 * a["samples"] and a["shards"] == 4 and a["fraction"] == 0.5
    assert fit(0)["seen_frames"] == a["seen_frames"]  # the same share again for the same seed
    assert (a["samples"], a["inertia"]) != (b["samples"], b["inertia"])
    with pytest.raises(UserError, match="--fit-fraction must be in"):
        fit_tokenizer(cfg, iter([]), fraction=0)


def test_column_statistics_are_pairwise_sums_along_each_column():
    x = (np.random.default_rng(0).normal(size=(20_000, 70)) * 3 + 100).astype(np.float32)  # C-ordered
    mean, std = kmeans.column_mean_std(x, block=16)
    f = np.asfortranarray(x)  # each column contiguous: numpy sums it pairwise
    assert np.array_equal(mean, f.mean(0)) and np.array_equal(std, f.std(0))
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, x.astype(np.float64).std(0), rtol=1e-5)
