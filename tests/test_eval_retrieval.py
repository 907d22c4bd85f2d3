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


# ---- hand-computed cases: 5 captions per clip, a clip outside the top 10, ties ------------------

def test_five_captions_per_clip_by_hand():
    """3 clips x 5 captions (rows 5a..5a+4 describe clip a). Audio -> text: clip 0's captions rank 1, 2,
    4, 6, 7 -> AP (1/1 + 2/2 + 3/4 + 4/6 + 5/7) / 5; text -> audio: each caption is a query of its own."""
    n_audio, n_text = 3, 15
    sim = np.zeros((n_text, n_audio))
    clip0 = [0.9, 0.8, 0.3, 0.1, 0.05]  # clip 0's scores for its own captions 0..4
    sim[:5, 0] = clip0
    sim[5:, 0] = [0.7, 0.2, 0.0, -0.1, -0.2, -0.3, -0.4, -0.5, -0.6, -0.7]  # others: 0.7 ranks 3rd, 0.2 5th
    sim[:, 1] = np.where(np.arange(n_text) // 5 == 1, 0.5, -1.0)
    sim[:, 2] = np.where(np.arange(n_text) // 5 == 2, 0.5, -1.0)
    pairs = [(t, t // 5) for t in range(n_text)]
    m = retrieval_metrics(sim, pairs)
    a2t = m["audio_to_text"]
    ap0 = (1 / 1 + 2 / 2 + 3 / 4 + 4 / 6 + 5 / 7) / 5
    assert a2t["mAP@10"] == pytest.approx((ap0 + 1 + 1) / 3)  # clips 1, 2: their 5 captions rank 1..5
    assert a2t["R@1"] == 1.0 and a2t["mean_rank"] == 1.0
    # text -> audio: only caption 5 (clip 1's first) scores another clip higher (clip 0: 0.7 > 0.5): rank 2
    t2a = m["text_to_audio"]
    assert t2a["R@1"] == pytest.approx(14 / 15) and t2a["R@5"] == 1.0
    assert t2a["mAP@10"] == pytest.approx((14 + 1 / 2) / 15) and t2a["mean_rank"] == pytest.approx(16 / 15)


def test_a_clip_with_no_caption_in_the_top_10_earns_nothing():
    """12 clips x 5 captions; clip 0's captions all score below 11 other captions -> its audio ->
    text AP@10 is 0 and it misses R@10; every other clip ranks its 5 captions first (AP 1)."""
    n_audio = 12
    pairs = [(t, t // 5) for t in range(5 * n_audio)]
    sim = np.where(np.arange(5 * n_audio)[:, None] // 5 == np.arange(n_audio)[None], 1.0, 0.0)
    sim[:5, 0] = -1.0  # clip 0's own captions: last
    sim[5:16, 0] = 0.5  # 11 captions of other clips ahead of them
    m = retrieval_metrics(sim, pairs)["audio_to_text"]
    assert m["R@10"] == pytest.approx(11 / 12) and m["R@1"] == pytest.approx(11 / 12)
    assert m["mAP@10"] == pytest.approx(11 / 12)  # clip 0 contributes 0, the others 1
    assert m["mean_rank"] == pytest.approx((1 * 11 + 56) / 12)  # clip 0's best caption ranks 56 (55 others >= -1)


def test_ties_do_not_depend_on_row_order():
    """With ties, LAION's unstable argsort makes ranks depend on row order; here they do not: any
    permutation of the clips and captions gives the same metrics (W ranks == 1 rank)."""
    rng = np.random.default_rng(5)
    n_audio = 20
    pairs = [(t, t // 3) for t in range(3 * n_audio)]
    sim = rng.integers(0, 3, size=(3 * n_audio, n_audio)).astype(float)  # many ties
    base = retrieval_metrics(sim, pairs)
    pa, pt = rng.permutation(n_audio), rng.permutation(3 * n_audio)
    inv_a, inv_t = np.argsort(pa), np.argsort(pt)
    permuted = sim[pt][:, pa]
    moved = [(int(inv_t[t]), int(inv_a[a])) for t, a in pairs]
    assert retrieval_metrics(permuted, moved) == base


# ---- alm eval retrieval EXPORT --shards, alm eval zeroshot --------------------------------------

@pytest.fixture(scope="module")
def clap_export(tmp_path_factory):
    """A tiny random alm CLAP export (8 kHz, 0.25 s window) + prep shards: 9 test clips and 4 val
    clips with 1-5 captions and a class at metadata.kind."""
    import sys
    from pathlib import Path

    import torch

    from alm.config import load_recipe
    from alm.data.audio import encode_flac
    from alm.data.shards import ShardWriter, json_bytes, key_from_id
    from alm.data.synthetic import make_clip
    from alm.export import write_export
    from alm.models.clap import Clap
    from alm.tokenizers.text import train_text_tokenizer

    root = tmp_path_factory.mktemp("clapeval")
    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "tests"))
    from test_clap_val import TINY_MODEL, VARIANTS

    shards = root / "shards"
    for split, offset, n in (("test", 0, 9), ("val", 100, 4)):
        with ShardWriter(shards, split, max_count=4) as w:
            for i in range(offset, offset + n):
                audio, caption, meta = make_clip(3, i, 16000, 0.6)
                w.write({"__key__": key_from_id(f"c{i}"), "flac": encode_flac(audio, 16000),
                         "json": json_bytes({"id": f"c{i}", "captions": [caption + v for v in VARIANTS[: 1 + i % 5]],
                                             "metadata": meta})})
    train_text_tokenizer(str(shards / "*.tar"), root / "spm", 64)
    cfg = load_recipe(repo / "recipes" / "tiny" / "clap.yaml",
                      [f"run_dir={root / 'run'}", f"data.tokenizer={root / 'spm'}", *TINY_MODEL])
    torch.manual_seed(0)
    return write_export(Clap(cfg.model), cfg, root / "export"), shards


@pytest.mark.slow
def test_eval_retrieval_of_an_export_equals_the_precomputed_path(clap_export, tmp_path):
    """`alm eval retrieval EXPORT --shards DIR` (the directory: its test split) == `alm embed` of the
    same clips and captions scored by `alm eval retrieval --audio-embeddings ...`."""
    import soundfile as sf

    from alm.data.audio import load_mono
    from alm.eval.heldout import clips

    export, shards = clap_export
    out = tmp_path / "export.json"
    assert main(["eval", "retrieval", str(export), "--shards", str(shards), "--out", str(out), "--batch-size", "3"]) == 0
    r = json.loads(out.read_text())
    assert r["task"] == "retrieval" and r["n"] == 9 and r["config"]["n_audio"] == 9  # test split only
    test = sorted(str(p) for p in shards.glob("test-*.tar"))
    every = list(clips(test))
    assert r["config"]["n_text"] == sum(len(c.texts) for c in every) == 25
    wavs, lines, pairs = [], [], []
    for a, c in enumerate(every):
        wav = tmp_path / f"{a}.wav"
        sf.write(wav, load_mono(c.audio)[0], 16000, subtype="FLOAT")
        wavs.append(str(wav))
        for t in c.texts:
            pairs.append(json.dumps({"text": len(lines), "audio": a}))
            lines.append(t)
    (tmp_path / "captions.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "P.jsonl").write_text("\n".join(pairs) + "\n")
    assert main(["embed", str(export), "--audio", *wavs, "--out", str(tmp_path / "A.npy")]) == 0
    assert main(["embed", str(export), "--texts", str(tmp_path / "captions.txt"), "--out", str(tmp_path / "T.npy")]) == 0
    assert main(["eval", "retrieval", "--audio-embeddings", str(tmp_path / "A.npy"), "--text-embeddings",
                 str(tmp_path / "T.npy"), "--pairs", str(tmp_path / "P.jsonl"), "--out", str(tmp_path / "pre.json")]) == 0
    pre = json.loads((tmp_path / "pre.json").read_text())
    for direction in ("text_to_audio", "audio_to_text"):
        assert r["metrics"][direction] == pytest.approx(pre["metrics"][direction])
        assert {"R@1", "R@5", "R@10", "mAP@10"} <= set(r["metrics"][direction])
        assert all(0 <= r["metrics"][direction][k] <= 1 for k in ("R@1", "R@5", "R@10", "mAP@10"))
    # an explicit glob means every sample it matches; alm eval run's retrieval task is the same scorer
    assert main(["eval", "run", str(export), "--task", "retrieval", "--shards", str(shards / "val-*.tar"),
                 "--out", str(tmp_path / "run.json")]) == 0
    assert json.loads((tmp_path / "run.json").read_text())["n"] == 4


def test_eval_retrieval_export_mode_errors(clap_export, tmp_path, capsys):
    export, shards = clap_export
    assert main(["eval", "retrieval", str(export), "--out", str(tmp_path / "r.json")]) == 2
    assert "needs --shards SPEC" in capsys.readouterr().err
    assert main(["eval", "retrieval", str(export), "--shards", str(shards), "--pairs", "P.jsonl"]) == 2
    assert "drop --pairs" in capsys.readouterr().err
    assert main(["eval", "retrieval", "--pairs", "P.jsonl"]) == 2
    assert "give EXPORT --shards SPEC, or all of" in capsys.readouterr().err
    assert main(["eval", "retrieval", str(export), "--shards", f"{shards}/test-*.tar + {shards}/test-*.tar"]) == 2
    assert "not parallel sets" in capsys.readouterr().err


def test_zeroshot_scores_label_prompts(clap_export, tmp_path):
    """top-1 / top-5 of `alm eval zeroshot` == the prompts' and clips' alm embed rows scored by hand."""
    from alm.data.audio import load_mono
    from alm.embed import load_encoder
    from alm.eval.heldout import clips

    export, shards = clap_export
    test = sorted(str(p) for p in shards.glob("test-*.tar"))
    every = list(clips(test))
    kinds = sorted({c.meta["metadata"]["kind"] for c in every})
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(kinds + ["a made-up class", "thunder", "a choir", "an engine"]) + "\n")
    out = tmp_path / "zs.json"
    assert main(["eval", "zeroshot", str(export), "--shards", str(shards), "--labels", str(labels),
                 "--label-key", "metadata.kind", "--template", "a recording of {label}", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["task"] == "zeroshot" and r["n"] == 9 and set(r["metrics"]) == {"top1", "top5"}
    names = labels.read_text().split("\n")[:-1]
    enc = load_encoder(export)
    scores = enc.audio([load_mono(c.audio, enc.sample_rate)[0] for c in every]) @ enc.texts(
        [f"a recording of {n}" for n in names]).T
    want = zeroshot_accuracy(scores, [names.index(c.meta["metadata"]["kind"]) for c in every])
    assert r["metrics"] == pytest.approx(want)
    assert sum(r["config"]["per_class"].values()) == 9 and r["config"]["n_classes"] == len(names)


def test_zeroshot_errors_name_the_clip_and_key(clap_export, tmp_path, capsys):
    export, shards = clap_export
    labels = tmp_path / "labels.txt"
    labels.write_text("rain\nsiren\n")
    assert main(["eval", "zeroshot", str(export), "--shards", str(shards), "--labels", str(labels)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("alm eval")]  # not the INFO log lines
    assert len(errors) == 1 and "has no 'label' in its json" in errors[0] and "--label-key" in errors[0]
    assert main(["eval", "zeroshot", str(export), "--shards", str(shards), "--labels", str(labels),
                 "--label-key", "metadata.kind"]) == 2
    assert "which is not a label of" in capsys.readouterr().err
    labels.write_text("rain\nrain\n")
    assert main(["eval", "zeroshot", str(export), "--shards", str(shards), "--labels", str(labels)]) == 2
    assert "listed twice: rain" in capsys.readouterr().err
    assert main(["eval", "zeroshot", str(export), "--shards", str(shards), "--labels", str(labels),
                 "--template", "no slot"]) == 2
