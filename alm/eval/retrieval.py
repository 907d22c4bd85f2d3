"""Audio-text retrieval and zero-shot classification metrics, as LAION CLAP / DCASE task 6b report them.

    retrieval_metrics(sim, pairs)     sim: (n_text, n_audio) similarities; pairs: (text_row, audio_row)
                                      ground truth (several captions per clip) ->
                                      {"text_to_audio": {...}, "audio_to_text": {...}}, each with
                                      R@1, R@5, R@10, mAP@10 (fractions in [0, 1]), median_rank, mean_rank
    zeroshot_accuracy(scores, labels) scores: (n_audio, n_class) -> {"top1", "top5" (n_class > 5 only)}

Definitions (LAION CLAP's evaluate_clotho_audiocaps, which follows Mei et al.'s audio-text_retrieval):
every query is scored against every item; the ranks of its correct items are 1-based, best first.
R@k: the fraction of queries whose best-ranked correct item is within the top k (text -> audio: each
caption is its own query, all 5 captions of a clip included; audio -> text: the best of the clip's
captions). mAP@10: per query, sum over its correct items ranked <= 10 of (their position among the
correct items) / (rank), divided by its number of correct items, then the mean over queries (one
correct item: 1/rank within the top 10, else 0). median_rank / mean_rank: of the best-ranked correct
item (median floored, as LAION reports it). LAION's loop takes the clip's caption ranks in caption
order, not sorted; here they are sorted, as its docstring and Mei et al. state.
Ties: LAION ranks with torch.argsort(descending=True), whose order among equal scores is left to
the sort (measured here on CPU: it differs from a stable sort from 17 items on), so its tie result
depends on the row order. alm counts ties against the query instead: an incorrect item with the
same score ranks ahead of the correct one. That is independent of row order (so W ranks gather
the metrics of 1), and a model scoring everything equally gets no credit. Without ties (real
float embeddings) both give the same ranks.

    alm eval retrieval EXPORT --shards SPEC [--out results.json]
        every clip of SPEC with its captions (prep shards: audio + json `captions`), embedded by the
        CLAP export through alm/embed.py (resampled to its rate; a clip longer than the model's
        window: the length-weighted mean of its windows). SPEC: a directory gives its test split,
        else its validation split (alm.data.splits.resolve_eval_spec); a glob means every sample it
        matches. A clip without captions is left out and counted (config.no_caption).
    alm eval retrieval --audio-embeddings A.npy --text-embeddings T.npy --pairs P.jsonl [--out results.json]
        cosine similarities of precomputed embeddings (rows as `alm embed` writes them); P.jsonl lines
        are {"text": ROW, "audio": ROW} (0-based rows of T.npy and A.npy); every row of each side must
        appear in a pair.

results.json: {"task": "retrieval", "metrics": {"text_to_audio": {"R@1", "R@5", "R@10", "mAP@10",
"median_rank", "mean_rank"}, "audio_to_text": {...}}, "n": clips, "config": {..., "n_audio", "n_text"}}.
The same `retrieval` task runs as `alm eval run EXPORT --task retrieval --shards SPEC` (stage clap).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from alm.errors import UserError
from alm.eval.results import add_report_arguments

NAME = "retrieval"
HELP = "audio-text retrieval R@1/5/10, mAP@10, ranks: of a CLAP export on shards, or of precomputed embeddings"
KS = (1, 5, 10)


def correct_ranks(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """1-based ranks of the correct items of one query, ascending; ties counted against them.

    scores: (n_items,); correct: indices of the query's correct items. The k-th best correct item
    (k = 1, 2, ...) ranks k + the number of incorrect items scoring at least as high."""
    scores = np.asarray(scores, np.float64)
    mask = np.zeros(len(scores), bool)
    mask[correct] = True
    incorrect = np.sort(scores[~mask])
    good = np.sort(scores[mask])[::-1]
    ahead = len(incorrect) - np.searchsorted(incorrect, good, side="left")  # incorrect items >= each
    return np.arange(1, len(good) + 1) + ahead


def _per_query(sim: np.ndarray, correct: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """sim: (n_query, n_item) -> (best rank (n_query,) int64, AP@10 (n_query,) float64) of each query."""
    best = np.empty(len(correct), np.int64)
    ap = np.empty(len(correct), np.float64)
    for q, items in enumerate(correct):
        ranks = correct_ranks(sim[q], items)
        best[q] = ranks[0]
        top = ranks <= 10
        ap[q] = float((np.arange(1, len(ranks) + 1)[top] / ranks[top]).sum() / len(ranks))
    return best, ap


def _summary(best: np.ndarray, ap: np.ndarray) -> dict[str, float]:
    out = {f"R@{k}": float(np.mean(best <= k)) for k in KS}
    out["mAP@10"] = float(ap.mean())
    out["median_rank"] = float(np.floor(np.median(best)))
    out["mean_rank"] = float(best.mean())
    return out


def _direction(sim: np.ndarray, correct: list[np.ndarray]) -> dict[str, float]:
    return _summary(*_per_query(sim, correct))


def _groups(pairs: Iterable[tuple[int, int]], n_text: int, n_audio: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    by_text: list[set[int]] = [set() for _ in range(n_text)]
    by_audio: list[set[int]] = [set() for _ in range(n_audio)]
    for t, a in pairs:
        if not (0 <= t < n_text and 0 <= a < n_audio):
            raise UserError(f"retrieval pair (text {t}, audio {a}) is outside the {n_text} texts x {n_audio} audio clips")
        by_text[t].add(a)
        by_audio[a].add(t)
    for side, groups in (("text", by_text), ("audio", by_audio)):
        lonely = [i for i, g in enumerate(groups) if not g]
        if lonely:
            shown = ", ".join(map(str, lonely[:10])) + (f" and {len(lonely) - 10} more" if len(lonely) > 10 else "")
            raise UserError(f"retrieval: {side} rows without any pair: {shown} (every row must be the ground truth of a pair)")
    return ([np.array(sorted(g)) for g in by_text], [np.array(sorted(g)) for g in by_audio])


def retrieval_metrics(sim: np.ndarray, pairs: Iterable[tuple[int, int]]) -> dict[str, dict[str, float]]:
    """sim: (n_text, n_audio) -> {"text_to_audio": {...}, "audio_to_text": {...}} (see the module docstring)."""
    sim = np.asarray(sim)
    if sim.ndim != 2:
        raise ValueError(f"similarity matrix must be (n_text, n_audio), got shape {sim.shape}")
    by_text, by_audio = _groups(pairs, *sim.shape)
    return {"text_to_audio": _direction(sim, by_text), "audio_to_text": _direction(sim.T, by_audio)}


def embedding_retrieval(text: np.ndarray, audio: np.ndarray, pairs: Iterable[tuple[int, int]],
                        block: int = 1024) -> dict[str, dict[str, float]]:
    """retrieval_metrics(text @ audio.T, pairs) for unit-norm embeddings text (n_text, D) and audio
    (n_audio, D), computed `block` queries at a time: memory O(block x max(n_text, n_audio)), never
    the whole similarity matrix. Equal to the whole-matrix result up to the float32 rounding of the products."""
    text, audio = np.asarray(text, np.float32), np.asarray(audio, np.float32)
    if text.ndim != 2 or audio.ndim != 2 or text.shape[1] != audio.shape[1]:
        raise ValueError(f"embeddings must be (n, D) with one D: text {text.shape}, audio {audio.shape}")
    by_text, by_audio = _groups(pairs, len(text), len(audio))
    out = {}
    for name, queries, items, correct in (("text_to_audio", text, audio, by_text), ("audio_to_text", audio, text, by_audio)):
        parts = [_per_query(queries[i : i + block] @ items.T, correct[i : i + block]) for i in range(0, len(queries), block)]
        out[name] = _summary(np.concatenate([b for b, _ in parts]), np.concatenate([a for _, a in parts]))
    return out


def zeroshot_accuracy(scores: np.ndarray, labels: Iterable[int]) -> dict[str, float]:
    """scores: (n_audio, n_class), labels: the true class of each clip -> top-1 (and top-5 when n_class > 5)
    accuracy as fractions; a tie with the true class counts as a miss."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(list(labels), np.int64)
    if scores.ndim != 2 or len(labels) != len(scores):
        raise ValueError(f"zero-shot: scores {scores.shape} need one label per row, got {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise UserError(f"zero-shot: labels must be class indices in [0, {scores.shape[1]}), got {labels.min()}..{labels.max()}")
    true = scores[np.arange(len(labels)), labels]
    rank = (scores >= true[:, None]).sum(1)  # 1 + the other classes scoring at least as high
    out = {"top1": float(np.mean(rank <= 1))}
    if scores.shape[1] > 5:
        out["top5"] = float(np.mean(rank <= 5))
    return out


# ---- alm eval retrieval ------------------------------------------------------------------------

def add_arguments(p) -> None:
    p.add_argument("export", nargs="?", metavar="EXPORT", help="a CLAP export (alm export of a clap run, or alm convert clap)")
    p.add_argument("--shards", metavar="SPEC", help="with EXPORT: prep shards with captions (a directory: its test "
                   "split, else validation; a glob: every sample it matches)")
    p.add_argument("--batch-size", type=int, default=16, help="with EXPORT: clips per forward")
    p.add_argument("--audio-embeddings", metavar="A.npy", help="without EXPORT: (n_audio, D) audio embeddings")
    p.add_argument("--text-embeddings", metavar="T.npy", help="without EXPORT: (n_text, D) text embeddings")
    p.add_argument("--pairs", metavar="P.jsonl",
                   help='without EXPORT: ground truth, one {"text": ROW, "audio": ROW} per line (0-based rows)')
    add_report_arguments(p)  # --out results.json, --run RUN_DIR (W&B)


def export_retrieval(export: str, spec: str, batch_size: int = 16, limit: int = 0) -> tuple[dict, int, dict]:
    """Retrieval metrics of a CLAP export on the clips of `spec` and all their captions -> (metrics,
    clips, config)."""
    from alm.embed import load_encoder
    from alm.eval.heldout import embed_clips, heldout_shards

    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be >= 1")
    urls = heldout_shards(spec, evaluation=True)
    encoder = load_encoder(export)
    audio, kept, no_caption = embed_clips(encoder, urls, keep=lambda c: bool(c.texts), batch_size=batch_size,
                                          limit=limit)
    if not kept:
        raise UserError(f"--shards {spec}: no clip with captions in {len(urls)} shard(s) (expected prep shards "
                        "whose json has `captions`)")
    captions = [t for c in kept for t in c.texts]
    pairs = [(t, a) for t, a in enumerate(a for a, c in enumerate(kept) for _ in c.texts)]  # (caption row, clip row)
    text = encoder.texts(captions)
    metrics = embedding_retrieval(text, audio, pairs)
    config = {"export": export, "shards": spec, "n_shards": len(urls), "n_audio": len(audio), "n_text": len(text),
              "no_caption": no_caption, "similarity": "cosine", "audio": encoder.description,
              "window_samples": encoder.window, "sample_rate": encoder.sample_rate}
    return metrics, len(audio), config


def task_run(export: str, spec: str, args) -> tuple[dict, int, dict]:
    """The clap stage's `retrieval` task of `alm eval run` (alm/stages/spec.py EvalTask)."""
    return export_retrieval(export, spec, getattr(args, "batch_size", 16), getattr(args, "limit", 0))


def task_arguments(p) -> None:
    p.add_argument("--batch-size", type=int, default=16, help="clips per forward")


def load_embeddings(path: str, flag: str) -> np.ndarray:
    """(N, D) float rows of an .npy file, L2-normalised (cosine similarity)."""
    if not Path(path).is_file():
        raise UserError(f"{flag} {path}: no such file")
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{flag} {path}: not a readable .npy file ({exc})") from exc
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"{flag} {path}: expected (N, D) float embeddings, got {x.dtype} {x.shape}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if (norm == 0).any():
        raise UserError(f"{flag} {path}: row {int(np.flatnonzero(norm[:, 0] == 0)[0])} is all zeros")
    return (x / norm).astype(np.float32)


def read_pairs(path: str) -> list[tuple[int, int]]:
    if not Path(path).is_file():
        raise UserError(f"--pairs {path}: no such file")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                t, a = row["text"], row["audio"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f'--pairs {path} line {i}: expected {{"text": ROW, "audio": ROW}}, got {line.strip()[:80]!r}') from None
            if not (isinstance(t, int) and isinstance(a, int)) or isinstance(t, bool) or isinstance(a, bool):
                raise UserError(f"--pairs {path} line {i}: text and audio must be integer rows, got {t!r}, {a!r}")
            pairs.append((t, a))
    if not pairs:
        raise UserError(f"--pairs {path}: no pairs")
    return pairs


def run(a) -> int:
    from alm.eval.results import report, results

    precomputed = [f for f, v in (("--audio-embeddings", a.audio_embeddings), ("--text-embeddings", a.text_embeddings),
                                  ("--pairs", a.pairs)) if v is not None]
    if a.export is not None:
        if precomputed:
            raise UserError(f"alm eval retrieval EXPORT scores the export's own embeddings: drop {', '.join(precomputed)}")
        if not a.shards:
            raise UserError("alm eval retrieval EXPORT needs --shards SPEC (prep shards with captions)")
        if not Path(a.export).is_dir():
            raise UserError(f"{a.export}: no such export directory")
        metrics, n, config = export_retrieval(a.export, a.shards, a.batch_size)
        report(results(NAME, metrics, n, config), a.out, a.run)
        return 0
    if len(precomputed) < 3:
        raise UserError("alm eval retrieval: give EXPORT --shards SPEC, or all of --audio-embeddings, "
                        "--text-embeddings and --pairs")
    audio = load_embeddings(a.audio_embeddings, "--audio-embeddings")
    text = load_embeddings(a.text_embeddings, "--text-embeddings")
    if audio.shape[1] != text.shape[1]:
        raise UserError(f"embedding dimensions differ: {a.audio_embeddings} has {audio.shape[1]}, "
                        f"{a.text_embeddings} has {text.shape[1]}")
    pairs = read_pairs(a.pairs)
    metrics = retrieval_metrics(text @ audio.T, pairs)  # (n_text, n_audio) cosine similarities
    config = {"audio_embeddings": a.audio_embeddings, "text_embeddings": a.text_embeddings, "pairs": a.pairs,
              "n_audio": len(audio), "n_text": len(text), "n_pairs": len(set(pairs)), "similarity": "cosine"}
    report(results(NAME, metrics, len(audio), config), a.out, a.run)
    return 0
