"""Captioning metrics as pycocoevalcap (the DCASE / COCO caption evaluation code) computes them.

Both sides are first normalised with alm.eval.normalize.basic: lower-case, every character that is
not a word character (Python's Unicode \\w) or whitespace deleted, whitespace collapsed. This stands
in for the PTB tokenizer of the Java tools (not run here): it deletes what the PTB tokenizer
would remove as punctuation tokens, but keeps "don't" and "dog's" as one word ("dont", "dogs").

    bleu_1..bleu_4  pycocoevalcap Bleu(4): corpus BLEU over all captions, brevity penalty against the
                    'closest' reference length, no smoothing beyond its tiny constants
    rouge_l         pycocoevalcap Rouge: mean over ids of the best-reference LCS F-measure, beta 1.2
    cider_d         pycocoevalcap Cider: CIDEr-D (1..4-grams, tf-idf with document frequencies from the
                    evaluated set's references, clipped hypothesis counts, Gaussian length penalty
                    sigma 6, x10), mean over ids
    meteor          pycocoevalcap Meteor (its bundled meteor-1.5.jar, -l en -norm): needs `java` on PATH
    spice, spider   not computed: SPICE needs the Stanford CoreNLP 3.6.0 jars, which pycocoevalcap
                    downloads at first use (no download here)
    fense           not computed: needs FENSE's sentence-BERT and error-detector weights
Metrics not computed are absent from results.json; the table says why, one line each.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from importlib.metadata import version

from alm.eval.normalize import basic

NOT_COMPUTED = {
    "spice": "needs the Stanford CoreNLP 3.6.0 jars (pycocoevalcap downloads them at first use; not supported here)",
    "spider": "the mean of cider_d and spice; spice is not computed",
    "fense": "needs FENSE's sentence-BERT and error-detector weights (not supported here)",
}


def add_arguments(p) -> None:
    p.add_argument("--no-meteor", action="store_true",
                   help="caption only: skip METEOR (computed whenever `java` is on PATH; the JVM takes ~10 s to start)")


def check_arguments(a) -> None:
    from alm.errors import UserError

    if a.no_meteor and a.task != "caption":
        raise UserError(f"--no-meteor applies to --task caption only (got --task {a.task})")


def _coco_inputs(hyps: list[str], refs: list[list[str]]) -> tuple[dict, dict]:
    """pycocoevalcap's (gts, res): {index: [normalised reference, ...]}, {index: [normalised hypothesis]}."""
    gts = {i: [basic(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [basic(h)] for i, h in enumerate(hyps)}
    return gts, res


def coco_metrics(hyps: list[str], refs: list[list[str]]) -> dict[str, float]:
    """bleu_1..bleu_4, rouge_l, cider_d of pycocoevalcap on the normalised captions."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = _coco_inputs(hyps, refs)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints its intermediate counts
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        rouge, _ = Rouge().compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
    out = {f"bleu_{n}": float(b) for n, b in enumerate(bleu, 1)}
    out.update(rouge_l=float(rouge), cider_d=float(cider))
    return out


def meteor(hyps: list[str], refs: list[list[str]]) -> float:
    """pycocoevalcap's METEOR 1.5 (Java) on the normalised captions."""
    from pycocoevalcap.meteor.meteor import Meteor

    gts, res = _coco_inputs(hyps, refs)
    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(gts, res)
    finally:
        scorer.__del__()  # stops the JVM now, not whenever the object is collected (a second call is a no-op)
    return float(score)


def caption_metrics(hyps: list[str], refs: list[list[str]], a) -> tuple[dict, dict, dict]:
    """(metrics, {absent metric: why}, config) for --task caption."""
    metrics = coco_metrics(hyps, refs)
    absent = {}
    if a.no_meteor:
        absent["meteor"] = "--no-meteor"
    elif shutil.which("java") is None:
        absent["meteor"] = "needs a Java runtime (`java` on PATH) for pycocoevalcap's meteor-1.5.jar"
    else:
        metrics["meteor"] = meteor(hyps, refs)
    absent.update(NOT_COMPUTED)
    config = {"normalize": "basic", "pycocoevalcap": version("pycocoevalcap")}
    return metrics, absent, config
