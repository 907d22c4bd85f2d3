"""`alm eval text --task asr|translation|caption --hyps H.jsonl --refs R.jsonl`: text metrics.

    asr          wer, cer (fractions, jiwer's definitions over the whole set), and the word-level
                 substitutions, deletions, insertions, hits counts; after --normalize (default
                 whisper_en; none = jiwer on the raw text). One reference per id.
    translation  bleu, chrf: sacrebleu corpus scores (0-100) on the raw, cased, detokenised text (BLEU's
                 tokenisation --tokenize, default 13a; chrF with sacrebleu's defaults: chrF2, char
                 order 6, no word n-grams); results["signature"] is BLEU's sacrebleu signature
                 string, results["chrf_signature"] chrF's. Several references per id ("texts") allowed.
    caption      bleu_1..bleu_4, rouge_l, cider_d as pycocoevalcap computes them (alm/eval/caption.py).

The files are described in alm/eval/jsonl.py; the results layout in alm/eval/results.py.
"""

from __future__ import annotations

from importlib.metadata import version

from alm.errors import UserError
from alm.eval import jsonl, results
from alm.eval.normalize import NORMALIZERS, normalizer

NAME = "text"
HELP = "ASR (WER/CER), translation (sacreBLEU BLEU/chrF) and captioning (BLEU, ROUGE-L, CIDEr-D, ...) metrics"
TASKS = ("asr", "translation", "caption")
DEFAULT_NORMALIZE = "whisper_en"
DEFAULT_TOKENIZE = "13a"


def add_arguments(p) -> None:
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--hyps", required=True, help='hypotheses, JSON lines {"id": ..., "text": ...}')
    p.add_argument("--refs", required=True,
                   help='references, JSON lines {"id": ..., "text": ...} or {"id": ..., "texts": [...]}')
    p.add_argument("--normalize", choices=NORMALIZERS, default=None,
                   help=f"asr only: text normalisation of both sides (default {DEFAULT_NORMALIZE}; "
                        "basic = lower-case, punctuation deleted, spaces collapsed; none = raw text)")
    p.add_argument("--tokenize", default=None,
                   help=f"translation only: sacrebleu's BLEU tokenizer (default {DEFAULT_TOKENIZE}; e.g. intl, zh, char, none)")
    from alm.eval import caption

    caption.add_arguments(p)
    results.add_report_arguments(p)


JIWER_CHUNK = 10_000  # utterances jiwer aligns at once (it keeps every utterance's tokens and alignment: ~5.6 KB each)


def _jiwer_counts(process, refs: list[str], hyps: list[str], chunk: int) -> dict[str, int]:
    """Summed hits/substitutions/deletions/insertions of jiwer's `process` (process_words or
    process_characters) over chunks of the set, and the reference length (hits + subs + dels)."""
    counts = dict.fromkeys(("hits", "substitutions", "deletions", "insertions"), 0)
    for i in range(0, len(refs), chunk):
        out = process(refs[i:i + chunk], hyps[i:i + chunk])
        for k in counts:
            counts[k] += getattr(out, k)
    return counts


def _jiwer_rate(c: dict[str, int]) -> float:
    """jiwer's WER/CER from the summed counts: (S + D + I) / (H + S + D); with no reference tokens at
    all, jiwer's edge case: the number of insertions."""
    ref_len = c["hits"] + c["substitutions"] + c["deletions"]
    if ref_len == 0:
        return c["insertions"]
    return float(c["substitutions"] + c["deletions"] + c["insertions"]) / float(ref_len)


def asr_metrics(hyps: list[str], refs: list[str], normalize: str, chunk: int = JIWER_CHUNK) -> dict:
    """wer, cer and word-level edit counts of jiwer over the whole set, after `normalize`. jiwer runs on
    `chunk` utterances at a time; the counts are sums, so the rates equal jiwer's on the whole set."""
    import jiwer

    norm = normalizer(normalize)
    refs = [norm(r) for r in refs]
    hyps = [norm(h) for h in hyps]
    words = _jiwer_counts(jiwer.process_words, refs, hyps, chunk)
    chars = _jiwer_counts(jiwer.process_characters, refs, hyps, chunk)
    return {"wer": _jiwer_rate(words), "cer": _jiwer_rate(chars), **{k: words[k] for k in
            ("substitutions", "deletions", "insertions", "hits")}}


SACREBLEU_CHUNK = 10_000  # segments whose reference n-grams are held at once (~14 KB each for BLEU + chrF)


def _chunked_corpus_score(metric, hyps: list[str], streams: list[list], chunk: int):
    """metric.corpus_score(hyps, streams), computed `chunk` segments at a time. A sacrebleu corpus score is a
    function of the sum of its segments' integer statistics (n-gram matches and totals, lengths), so summing
    per chunk is exact; but corpus_score holds every reference's n-gram counts at once (~2.8 GB measured for
    100k segments with 1.5 references each), which this bounds to one chunk's."""
    from sacrebleu.utils import sum_of_lists

    totals = [sum_of_lists(metric._extract_corpus_statistics(hyps[i:i + chunk], [s[i:i + chunk] for s in streams]))
              for i in range(0, len(hyps), chunk)]
    counts = {sum(s[i] is not None for s in streams) for i in range(len(hyps))}
    metric.num_refs = counts.pop() if len(counts) == 1 else -1  # as corpus_score sets it over the whole set: -1 = var
    return metric._aggregate_and_compute(totals)


def translation_metrics(hyps: list[str], refs: list[list[str]], tokenize: str,
                        chunk: int = SACREBLEU_CHUNK) -> tuple[dict, dict]:
    """({bleu, chrf}, {bleu: signature, chrf: signature}) of sacrebleu's corpus scores. Ids with
    fewer references than the most any id has are padded with None (sacrebleu's way of saying
    'no reference here'; the signature then says nrefs:var)."""
    from sacrebleu.metrics import BLEU, CHRF

    if tokenize not in BLEU.TOKENIZERS:
        raise UserError(f"--tokenize {tokenize!r}: sacrebleu's BLEU tokenizers are {', '.join(BLEU.TOKENIZERS)}")
    most = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(most)]
    bleu, chrf = BLEU(tokenize=tokenize), CHRF()
    scores = {"bleu": _chunked_corpus_score(bleu, hyps, streams, chunk).score,
              "chrf": _chunked_corpus_score(chrf, hyps, streams, chunk).score}
    return scores, {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())}


def _only_for(a, flag: str, value, task: str) -> None:
    if value is not None and a.task != task:
        raise UserError(f"{flag} applies to --task {task} only (got --task {a.task})")


def run(a) -> int:
    from alm.eval import caption

    _only_for(a, "--normalize", a.normalize, "asr")
    _only_for(a, "--tokenize", a.tokenize, "translation")
    caption.check_arguments(a)
    if a.run is not None:
        results.check_run_dir(a.run)
    ids, hyps, refs = jsonl.match(jsonl.read_hypotheses(a.hyps), jsonl.read_references(a.refs), a.hyps, a.refs)
    config = {"hyps": str(a.hyps), "refs": str(a.refs)}
    extra, absent = {}, {}
    if a.task == "asr":
        several = [i for i, r in zip(ids, refs) if len(r) != 1]
        if several:
            raise UserError(f"{a.refs}: --task asr takes one reference per id; several \"texts\" for ids "
                            f"{jsonl.name_ids(several)}")
        normalize = a.normalize or DEFAULT_NORMALIZE
        metrics = asr_metrics(hyps, [r[0] for r in refs], normalize)
        config.update(normalize=normalize, jiwer=version("jiwer"))
        if normalize == "whisper_en":
            config["whisper_normalizer"] = version("whisper-normalizer")
    elif a.task == "translation":
        tokenize = a.tokenize or DEFAULT_TOKENIZE
        metrics, signatures = translation_metrics(hyps, refs, tokenize)
        # "the sacrebleu signature" is BLEU's (the string papers quote); chrF's has its own parameters
        extra.update(signature=signatures["bleu"], chrf_signature=signatures["chrf"])
        config.update(tokenize=tokenize, sacrebleu=version("sacrebleu"))
    else:
        metrics, absent, caption_config = caption.caption_metrics(hyps, refs, a, ids)
        config.update(caption_config)
    results.report(results.results(a.task, metrics, len(ids), config, **extra), a.out, a.run, absent)
    return 0
