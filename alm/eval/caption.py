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
    spice           with --corenlp-dir DIR (the Stanford CoreNLP 3.6.0 jar and models jar, which pycocoevalcap
                    downloads at first use; nothing downloads here): pycocoevalcap's spice-1.0.jar (or
                    --spice-jar) run on the normalised captions, mean of the ids' "All" F-scores (alm/eval/spice.py)
    spider          (cider_d + spice) / 2, with spice
    sbert_sim       with --fense-sbert MODEL: FENSE's Sentence-BERT similarity, no penalty (alm/eval/fense.py)
    fense           with --fense-sbert and --fense-echecker CKPT: the similarity penalised where FENSE's error
                    detector flags the caption (alm/eval/fense.py), on the raw captions
Metrics not computed are absent from results.json; the table says why, one line each.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from importlib.metadata import version

from alm.eval.normalize import basic

NO_SPICE = {
    "spice": "needs --corenlp-dir (stanford-corenlp-3.6.0.jar and -models.jar; pycocoevalcap would download them)",
    "spider": "the mean of cider_d and spice: needs spice",
}
NO_FENSE = {"sbert_sim": "needs --fense-sbert (a sentence-transformers model, local or cached)",
            "fense": "needs --fense-sbert and --fense-echecker (FENSE's error-detector checkpoint, local)"}


def add_arguments(p) -> None:
    p.add_argument("--no-meteor", action="store_true",
                   help="caption only: skip METEOR (computed whenever `java` is on PATH; the JVM takes ~10 s to start)")
    p.add_argument("--corenlp-dir", default=None, metavar="DIR",
                   help="caption only: a folder with stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar: "
                        "computes spice and spider (needs java)")
    p.add_argument("--spice-jar", default=None, metavar="PATH",
                   help="caption only, with --corenlp-dir: the SPICE 1.0 jar, its lib/ beside it (default: pycocoevalcap's)")
    from alm.eval import fense

    fense.add_arguments(p)


def check_arguments(a) -> None:
    from alm.errors import UserError

    for flag, value in (("--no-meteor", a.no_meteor), ("--corenlp-dir", a.corenlp_dir), ("--spice-jar", a.spice_jar)):
        if value and a.task != "caption":
            raise UserError(f"{flag} applies to --task caption only (got --task {a.task})")
    if a.spice_jar and not a.corenlp_dir:
        raise UserError("--spice-jar needs --corenlp-dir (SPICE parses with Stanford CoreNLP)")
    if a.corenlp_dir:
        from alm.eval.spice import check_paths

        check_paths(a.corenlp_dir, a.spice_jar)
    from alm.eval import fense

    fense.check_arguments(a)


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


def caption_metrics(hyps: list[str], refs: list[list[str]], a, ids: list | None = None) -> tuple[dict, dict, dict]:
    """(metrics, {absent metric: why}, config) for --task caption; `ids` name the captions in messages."""
    metrics = coco_metrics(hyps, refs)
    absent = {}
    config = {"normalize": "basic", "pycocoevalcap": version("pycocoevalcap")}
    if a.no_meteor:
        absent["meteor"] = "--no-meteor"
    elif shutil.which("java") is None:
        absent["meteor"] = "needs a Java runtime (`java` on PATH) for pycocoevalcap's meteor-1.5.jar"
    else:
        metrics["meteor"] = meteor(hyps, refs)
    if getattr(a, "corenlp_dir", None):
        from alm.eval.jsonl import name_ids
        from alm.eval.spice import check_paths, spice

        jar, corenlp_dir = check_paths(a.corenlp_dir, a.spice_jar)
        value, nan_at = spice(*_coco_inputs(hyps, refs), jar, corenlp_dir)
        config.update(spice_jar=str(jar), corenlp_dir=str(corenlp_dir))
        if nan_at:
            named = name_ids([ids[i] for i in nan_at] if ids else nan_at)
            absent.update(spice=f"SPICE gave no score (NaN) for ids {named}", spider="the mean of cider_d and spice: needs spice")
        else:
            metrics.update(spice=value, spider=(metrics["cider_d"] + value) / 2)
    else:
        absent.update(NO_SPICE)
    if getattr(a, "fense_sbert", None):
        from alm.eval.fense import fense_metrics

        values, fense_config = fense_metrics(hyps, refs, a.fense_sbert, getattr(a, "fense_echecker", None),
                                             getattr(a, "fense_echecker_base", None))
        metrics.update(values)
        config.update(fense_config)
        if "fense" not in values:
            absent["fense"] = NO_FENSE["fense"]
    else:
        absent.update(NO_FENSE)
    return metrics, absent, config
