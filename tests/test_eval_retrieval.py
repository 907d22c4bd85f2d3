"""Retrieval and zero-shot metrics (alm/eval/retrieval.py) on hand-made matrices, and `alm eval retrieval`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alm.cli import main
from alm.errors import UserError
from alm.eval.retrieval import correct_ranks, retrieval_metrics, zeroshot_accuracy


def test_two_clips_two_captions_each_by_hand():
    # texts 0, 1 describe clip 0; texts 2, 3 clip 1; text 3 ties between the clips
    sim = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.5, 0.5]])
    m = retrieval_metrics(sim, [(0, 0), (1, 0), (2, 1), (3, 1)])
    t2a, a2t = m["text_to_audio"], m["audio_to_text"]
    # text -> audio ranks 1, 2, 1, 2 (the tie counts against text 3)
    assert t2a == {"R@1": 0.5, "R@5": 1.0, "R@10": 1.0, "mAP@10": 0.75, "median_rank": 1.0, "mean_rank": 1.5}
    # clip 0: its captions rank 1 and 4 -> AP (1/1 + 2/4) / 2; clip 1: ranks 2 and 3 -> AP (1/2 + 2/3) / 2
    assert a2t["R@1"] == 0.5 and a2t["R@5"] == 1.0 and a2t["mean_rank"] == 1.5 and a2t["median_rank"] == 1.0
    assert a2t["mAP@10"] == pytest.approx(((1 + 2 / 4) / 2 + (1 / 2 + 2 / 3) / 2) / 2)


def test_a_clip_whose_caption_is_outside_the_top_10():
    n = 12
    sim = np.eye(n)
    sim[0, 0] = -1.0  # text 0 and clip 0 now rank each other last
    m = retrieval_metrics(sim, [(i, i) for i in range(n)])
    for direction in ("text_to_audio", "audio_to_text"):
        assert m[direction]["R@10"] == pytest.approx(11 / 12)
        assert m[direction]["mAP@10"] == pytest.approx(11 / 12)  # rank 12 earns nothing
        assert m[direction]["mean_rank"] == pytest.approx((11 + 12) / 12)


def test_ties_count_against_the_query():
    assert correct_ranks(np.zeros(5), [2]).tolist() == [5]
    m = retrieval_metrics(np.ones((4, 4)), [(i, i) for i in range(4)])
    assert m["text_to_audio"]["R@1"] == 0.0 and m["audio_to_text"]["median_rank"] == 4.0
    # two correct items tied with each other: positions 1 and 2, no incorrect item ahead
    assert correct_ranks(np.array([0.5, 0.5, 0.1]), [0, 1]).tolist() == [1, 2]


def _argsort_reference(sim, correct):
    """Ranks by a full sort, as LAION's evaluation does (scores without ties)."""
    best, ap = [], []
    for q, items in enumerate(correct):
        order = np.argsort(-sim[q])
        ranks = np.sort([int(np.flatnonzero(order == i)[0]) + 1 for i in items])
        best.append(ranks[0])
        ap.append(sum((k + 1) / r for k, r in enumerate(ranks) if r <= 10) / len(ranks))
    best = np.array(best)
    return {"R@1": np.mean(best <= 1), "R@5": np.mean(best <= 5), "R@10": np.mean(best <= 10),
            "mAP@10": np.mean(ap), "median_rank": np.floor(np.median(best)), "mean_rank": best.mean()}


def test_agrees_with_a_full_sort_on_random_scores_with_five_captions_per_clip():
    rng = np.random.default_rng(0)
    n_audio = 30
    pairs = [(5 * a + j, a) for a in range(n_audio) for j in range(5)]
    sim = rng.normal(size=(5 * n_audio, n_audio)) + 0.8 * np.repeat(np.eye(n_audio), 5, axis=0)
    m = retrieval_metrics(sim, pairs)
    by_text = [np.array([t // 5]) for t in range(5 * n_audio)]
    by_audio = [np.arange(5 * a, 5 * a + 5) for a in range(n_audio)]
    for got, want in ((m["text_to_audio"], _argsort_reference(sim, by_text)),
                      (m["audio_to_text"], _argsort_reference(sim.T, by_audio))):
        assert got == pytest.approx(want, abs=1e-12)
    assert 0 < m["text_to_audio"]["R@1"] < 1  # neither trivial nor impossible


def test_rows_without_a_pair_are_an_error_naming_them():
    with pytest.raises(UserError, match="audio rows without any pair: 2"):
        retrieval_metrics(np.zeros((2, 3)), [(0, 0), (1, 1)])
    with pytest.raises(UserError, match="outside"):
        retrieval_metrics(np.zeros((2, 2)), [(0, 0), (1, 5)])


def test_zeroshot_accuracy_by_hand():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    assert zeroshot_accuracy(scores, [0, 0, 1]) == {"top1": pytest.approx(1 / 3)}  # right, wrong, tie = miss
    six = np.tile(np.arange(6.0), (2, 1))  # class 5 best, class 0 worst
    assert zeroshot_accuracy(six, [5, 0]) == {"top1": 0.5, "top5": 0.5}


def test_cli_writes_results_json(tmp_path, capsys):
    rng = np.random.default_rng(1)
    audio = rng.normal(size=(6, 8)).astype(np.float32)
    text = np.repeat(audio, 2, axis=0) + 0.01 * rng.normal(size=(12, 8)).astype(np.float32)  # 2 captions per clip
    np.save(tmp_path / "A.npy", audio)
    np.save(tmp_path / "T.npy", text)
    (tmp_path / "P.jsonl").write_text("".join(json.dumps({"text": t, "audio": t // 2}) + "\n" for t in range(12)))
    out = tmp_path / "results.json"
    assert main(["eval", "retrieval", "--audio-embeddings", str(tmp_path / "A.npy"), "--text-embeddings",
                 str(tmp_path / "T.npy"), "--pairs", str(tmp_path / "P.jsonl"), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r) == {"task", "metrics", "n", "config"} and r["task"] == "retrieval" and r["n"] == 6
    assert r["metrics"]["text_to_audio"]["R@1"] == 1.0 and r["metrics"]["audio_to_text"]["mAP@10"] == 1.0
    assert set(r["metrics"]["audio_to_text"]) == {"R@1", "R@5", "R@10", "mAP@10", "median_rank", "mean_rank"}
    assert r["config"]["n_text"] == 12
    assert "text_to_audio/R@1" in capsys.readouterr().out


def test_cli_bad_pairs_line_is_one_line_error(tmp_path, capsys):
    np.save(tmp_path / "A.npy", np.ones((2, 4), np.float32))
    np.save(tmp_path / "T.npy", np.ones((2, 4), np.float32))
    (tmp_path / "P.jsonl").write_text('{"text": 0, "audio": 0}\n{"text": 1}\n')
    assert main(["eval", "retrieval", "--audio-embeddings", str(tmp_path / "A.npy"), "--text-embeddings",
                 str(tmp_path / "T.npy"), "--pairs", str(tmp_path / "P.jsonl"), "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "P.jsonl line 2" in err and len(err.strip().splitlines()) == 1
