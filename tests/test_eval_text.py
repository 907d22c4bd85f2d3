"""alm eval text's metrics: hand-computed small cases (the arithmetic is in each test) and agreement with
the reference libraries (jiwer, sacrebleu, pycocoevalcap) called directly on the same texts."""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil

import pytest

from alm.errors import UserError
from alm.eval import caption, jsonl
from alm.eval.normalize import basic, whisper_en
from alm.eval.text import asr_metrics, translation_metrics


# ---------- ASR ----------

def test_wer_counts_by_hand():
    # ref "the cat sat" (3 words), hyp "the cat sit down": sat->sit (S=1), +down (I=1), hits 2
    m = asr_metrics(["the cat sit down"], ["the cat sat"], "none")
    assert (m["substitutions"], m["deletions"], m["insertions"], m["hits"]) == (1, 0, 1, 2)
    assert m["wer"] == pytest.approx((1 + 0 + 1) / 3)
    # "the cat" -> "the bat": 1 substituted character of 7 (the space counts)
    assert asr_metrics(["the bat"], ["the cat"], "none")["cer"] == pytest.approx(1 / 7)


def test_wer_is_over_the_whole_set_not_a_mean_of_utterances():
    # errors 0 + 1 over 4 + 1 reference words = 0.2 (the mean of per-utterance WERs would be 0.5)
    m = asr_metrics(["a b c d", "x"], ["a b c d", "e"], "none")
    assert m["wer"] == pytest.approx(1 / 5)


def test_empty_hypothesis_is_all_deletions():
    m = asr_metrics(["", "a b"], ["a b", "a b"], "none")
    assert (m["deletions"], m["hits"], m["wer"]) == (2, 2, pytest.approx(2 / 4))


def test_normalize_modes():
    hyp, ref = ["hello world"], ["Hello, World!"]
    assert asr_metrics(hyp, ref, "none")["wer"] == 1.0  # "Hello," != "hello" and "World!" != "world": 2/2
    assert asr_metrics(hyp, ref, "basic")["wer"] == 0.0
    # Whisper's English normaliser: spelled-out numbers -> digits, British -> American spelling, contractions
    assert asr_metrics(["it is 25 colors"], ["It's twenty-five colours."], "whisper_en")["wer"] == 0.0
    # basic: ref "its twentyfive colours" (3 words), hyp 4 words: S=3, I=1 -> 4/3
    assert asr_metrics(["it is 25 colors"], ["It's twenty-five colours."], "basic")["wer"] == pytest.approx(4 / 3)


def test_basic_normalisation_exactly():
    assert basic("  Don't STOP,  well-known!\tdog's  ") == "dont stop wellknown dogs"
    assert basic("Ça coûte 5€ — café.") == "ça coûte 5 café"  # \w is Unicode: accented letters stay


SENTENCES = ["the quick brown fox jumps over the lazy dog", "Mr. Smith paid $20 million in the 1960s",
             "It's twenty-five past one", "hmm the colour of the centre", "she sells sea shells",
             "a b c d e f g", "", "um I think so", "please call stella", "ask her to bring these things"]


def _noisy(rng: random.Random, text: str) -> str:
    words = text.split()
    out = []
    for w in words:
        r = rng.random()
        if r < 0.15:
            continue  # deletion
        out.append(w.upper() if r < 0.25 else ("x" + w if r < 0.35 else w))
        if rng.random() < 0.1:
            out.append("inserted")
    return " ".join(out)


def test_wer_cer_agree_with_jiwer_on_raw_and_normalised_text():
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    rng = random.Random(0)
    refs = [s for s in SENTENCES if s] * 3
    hyps = [_noisy(rng, r) for r in refs]
    m = asr_metrics(hyps, refs, "none")
    assert m["wer"] == jiwer.wer(refs, hyps) and m["cer"] == jiwer.cer(refs, hyps)
    norm = EnglishTextNormalizer()
    m = asr_metrics(hyps, refs, "whisper_en")
    assert m["wer"] == jiwer.wer([norm(r) for r in refs], [norm(h) for h in hyps])
    print(f"\nwer vs jiwer: |diff| = 0 on {len(refs)} utterances (raw {asr_metrics(hyps, refs, 'none')['wer']:.4f}, "
          f"whisper_en {m['wer']:.4f})")


def test_chunked_jiwer_equals_whole_set():
    # jiwer runs 10k utterances at a time (bounded memory): the summed counts give jiwer's whole-set rates exactly
    import jiwer

    rng = random.Random(4)
    refs = [s for s in SENTENCES] * 3  # includes empty references
    hyps = [_noisy(rng, r) for r in refs]
    whole = asr_metrics(hyps, refs, "none", chunk=len(refs))
    assert whole["wer"] == jiwer.wer(refs, hyps) and whole["cer"] == jiwer.cer(refs, hyps)
    for chunk in (1, 4, 7):
        assert asr_metrics(hyps, refs, "none", chunk=chunk) == whole
    # no reference words at all: jiwer's edge case (WER = the number of insertions)
    for hyps in (["", ""], ["a b", "c"]):
        m = asr_metrics(hyps, ["", ""], "none", chunk=1)
        assert (m["wer"], m["cer"]) == (jiwer.wer(["", ""], hyps), jiwer.cer(["", ""], hyps))


def test_whisper_normaliser_agrees_with_transformers_copy():
    # transformers keeps its own copy of Whisper's English normaliser; given the same spelling map it must agree
    from importlib.resources import files

    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    spelling = json.loads(files("whisper_normalizer").joinpath("normalizers/english.json").read_text())
    theirs = EnglishTextNormalizer(spelling)
    texts = SENTENCES + ["I'd've paid £3.50, not 3 pounds 50", "the 21st of March, 2nd place", "He's gonna [inaudible] go",
                         "one oh one, two thousand and twenty", "Mrs. Dr. St. James Jr.", "The 1990s' organisation"]
    assert [whisper_en(t) for t in texts] == [theirs(t) for t in texts]


# ---------- translation ----------

def test_bleu_by_hand():
    # hyp "a b c d e" vs ref "a b c d f": n-gram precisions 4/5, 3/4, 2/3, 1/2; equal lengths: BP = 1
    scores, sig = translation_metrics(["a b c d e"], [["a b c d f"]], "13a")
    assert scores["bleu"] == pytest.approx(100 * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)
    # hyp "a b c d" vs ref "a b c d e f": all precisions 1, brevity penalty exp(1 - 6/4)
    scores, _ = translation_metrics(["a b c d"], [["a b c d e f"]], "13a")
    assert scores["bleu"] == pytest.approx(100 * math.exp(1 - 6 / 4))
    assert sig["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")


def test_chrf_by_hand():
    # "abcdefg" vs "abcdefh": at char order n, 8-n n-grams each side, 7-n match -> P = R = F_n = (7-n)/(8-n);
    # chrF = 100 * mean over n = 1..6
    scores, sig = translation_metrics(["abcdefg"], [["abcdefh"]], "13a")
    assert scores["chrf"] == pytest.approx(100 * sum((7 - n) / (8 - n) for n in range(1, 7)) / 6)
    assert sig["chrf"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")


def test_bleu_chrf_agree_with_sacrebleu_and_tokenize_passes_through():
    import sacrebleu

    rng = random.Random(1)
    refs = [s for s in SENTENCES if s] * 2
    hyps = [_noisy(rng, r) for r in refs]
    for tok in ("13a", "char", "intl", "none"):
        scores, sig = translation_metrics(hyps, [[r] for r in refs], tok)
        assert scores["bleu"] == sacrebleu.corpus_bleu(hyps, [refs], tokenize=tok).score
        assert f"tok:{tok}|" in sig["bleu"]
    assert scores["chrf"] == sacrebleu.corpus_chrf(hyps, [refs]).score
    assert translation_metrics(hyps, [[r] for r in refs], "char")[0]["bleu"] != \
        translation_metrics(hyps, [[r] for r in refs], "13a")[0]["bleu"]
    with pytest.raises(UserError, match="--tokenize 'nope'"):
        translation_metrics(hyps, [[r] for r in refs], "nope")


def test_chunked_sacrebleu_equals_whole_corpus_score():
    # the corpus is scored 10k segments at a time (bounded memory): the sums of integer statistics make it exact
    import sacrebleu

    rng = random.Random(2)
    refs = [[s] if i % 3 else [s, _noisy(rng, s)] for i, s in enumerate([s for s in SENTENCES if s] * 3)]
    hyps = [_noisy(rng, r[0]) for r in refs]
    whole, whole_sig = translation_metrics(hyps, refs, "13a", chunk=len(hyps))
    for chunk in (1, 3, 7):
        assert translation_metrics(hyps, refs, "13a", chunk=chunk) == (whole, whole_sig)
    streams = [[r[0] for r in refs], [r[1] if len(r) > 1 else None for r in refs]]
    assert whole["bleu"] == sacrebleu.corpus_bleu(hyps, streams).score and whole["chrf"] == sacrebleu.corpus_chrf(hyps, streams).score
    assert whole_sig["bleu"].startswith("nrefs:var|")  # chunks of 1 each see one count: var over the whole set


def test_several_references_of_varying_count():
    # padding an id's missing references with None must score as repeating one of its references does
    # (a repeated reference changes neither the clipped counts nor the closest length)
    hyps = ["the cat is on the mat", "there is a dog here"]
    refs = [["the cat sat on the mat", "a cat is on the mat"], ["a dog is here"]]
    scores, sig = translation_metrics(hyps, refs, "13a")
    repeated, _ = translation_metrics(hyps, [refs[0], refs[1] * 2], "13a")
    assert scores == pytest.approx(repeated)
    assert sig["bleu"].startswith("nrefs:var|")
    assert scores["bleu"] > translation_metrics(hyps, [refs[0][:1], refs[1]], "13a")[0]["bleu"]


# ---------- captioning ----------

def test_caption_bleu_rouge_by_hand():
    m = caption.coco_metrics(["A cat sits."], [["a cat sat"]])
    # 1-grams: 2 of 3 match; 2-grams: 1 of 2; lengths equal (BP 1); pycocoevalcap's tiny constants aside
    assert m["bleu_1"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["bleu_2"] == pytest.approx((2 / 3 * 1 / 2) ** 0.5, abs=1e-6)
    # ROUGE-L: hyp "a cat sits on mat" (5) vs ref "a cat sat on the mat" (6): LCS "a cat on mat" = 4,
    # P = 4/5, R = 4/6, F = (1 + 1.2^2) P R / (R + 1.2^2 P)
    p, r = 4 / 5, 4 / 6
    m = caption.coco_metrics(["a cat sits on mat"], [["A cat sat on the mat!"]])
    assert m["rouge_l"] == pytest.approx((1 + 1.44) * p * r / (r + 1.44 * p))
    # several references: the best precision and the best recall over them
    m = caption.coco_metrics(["a cat sits on mat"], [["a cat sat on the mat", "cat sits"]])
    p, r = max(4 / 5, 2 / 5), max(4 / 6, 2 / 2)
    assert m["rouge_l"] == pytest.approx((1 + 1.44) * p * r / (r + 1.44 * p))


def test_cider_d_by_hand():
    # 2 ids -> idf of an n-gram found in one id's references = log 2 - log 1 = log 2 (an n-gram in none: df taken as 1).
    # id 2: "c d" == its reference: cosine 1 for n = 1, 2; no 3-, 4-grams (0); 10 * (1 + 1 + 0 + 0) / 4 = 5
    assert caption.coco_metrics(["a b", "c d"], [["a b"], ["c d"]])["cider_d"] == pytest.approx(5.0)
    # id 1: hyp "a b b" vs ref "a b". n=1: hyp tf-idf (a: 1, b: 2) log2, ref (a: 1, b: 1) log2; clipped dot
    # min(1,1)*1 + min(2,1)*1 = 2, norms sqrt(5), sqrt(2) -> 2/sqrt(10). n=2: hyp (ab, bb), ref (ab): 1/sqrt(2).
    # length penalty exp(-(3-2)^2 / (2 * 6^2)); 10 * (2/sqrt(10) + 1/sqrt(2)) * penalty / 4
    id1 = 10 * (2 / math.sqrt(10) + 1 / math.sqrt(2)) * math.exp(-1 / 72) / 4
    m = caption.coco_metrics(["A b, b.", "c d"], [["a b"], ["c d"]])
    assert m["cider_d"] == pytest.approx((id1 + 5.0) / 2)
    # an n-gram in every id's references has idf log 2 - log 2 = 0: "a" contributes nothing, so id 2 ("a d" vs
    # "a c") scores 0 while id 1 ("a b" == "a b") scores 5
    assert caption.coco_metrics(["a b", "a d"], [["a b"], ["a c"]])["cider_d"] == pytest.approx(2.5)


def test_empty_caption_hypothesis_is_scored():
    refs = [["a cat meows"], ["a dog barks loudly"]]
    m = caption.coco_metrics(["", "a dog barks"], refs)
    # ROUGE-L: id 1 scores 0; id 2 P = 3/3, R = 3/4 -> F = 2.44 * 1 * 0.75 / (0.75 + 1.44 * 1)
    assert m["rouge_l"] == pytest.approx((0 + 2.44 * 0.75 / (0.75 + 1.44)) / 2)
    # CIDEr-D: the empty caption scores 0, as a caption sharing nothing with its references does
    assert m["cider_d"] > 0 and m["cider_d"] == pytest.approx(caption.coco_metrics(["zzz", "a dog barks"], refs)["cider_d"])


CAPTIONS = [
    (["A dog barks while cars pass by.", "a dog is barking near a busy road", "Traffic noise and a barking dog"],
     "a dog barks as cars drive past"),
    (["Rain falls on a tin roof.", "heavy rain is falling on a metal roof"], "rain falling on a roof"),
    (["A man speaks, then a door slams.", "a man talks and a door closes loudly"], "a man is speaking"),
    (["Birds chirp in the distance.", "birds are singing outside"], "birds chirping and singing"),
    (["An engine idles and revs up.", "a car engine revving"], "an engine is running"),
    (["Water trickles from a tap.", "water running from a faucet"], ""),
]


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR runs pycocoevalcap's meteor-1.5.jar: needs java")
def test_meteor_with_java_and_identical_captions_score_1():
    # every word matched exactly (P = R = 1) in one chunk that is the whole caption: METEOR 1.5 applies no
    # fragmentation penalty -> 1.0 (after normalisation: case and punctuation differ)
    metrics, absent, _ = caption.caption_metrics(["A dog barks at cars."], [["a dog barks at cars"]],
                                                 argparse.Namespace(no_meteor=False))
    assert metrics["meteor"] == 1.0 and "meteor" not in absent


def test_meteor_absent_without_java(monkeypatch):
    monkeypatch.setattr(caption.shutil, "which", lambda name: None)
    metrics, absent, _ = caption.caption_metrics(["a"], [["a"]], argparse.Namespace(no_meteor=False))
    assert "meteor" not in metrics and absent["meteor"].startswith("needs a Java runtime")


def test_caption_metrics_agree_with_pycocoevalcap():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    hyps = [h for _, h in CAPTIONS]
    refs = [r for r, _ in CAPTIONS]
    ours = caption.coco_metrics(hyps, refs)
    gts = {f"clip{i}": [basic(x) for x in r] for i, r in enumerate(refs)}
    res = {f"clip{i}": [basic(h)] for i, h in enumerate(hyps)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    theirs = {f"bleu_{n}": b for n, b in enumerate(bleu, 1)}
    theirs["rouge_l"] = Rouge().compute_score(gts, res)[0]
    theirs["cider_d"] = Cider().compute_score(gts, res)[0]
    assert ours == theirs
    print("\ncaption metrics vs pycocoevalcap: |diff| = 0:", {k: round(v, 4) for k, v in ours.items()})


# ---------- files and ids ----------

def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ids_match_in_any_order(tmp_path):
    h = _write(tmp_path / "h.jsonl", [{"id": 2, "text": "b"}, {"id": "x", "text": ""}, {"id": 1, "text": "a"}])
    r = _write(tmp_path / "r.jsonl", [{"id": 1, "text": "A"}, {"id": 2, "texts": ["B", "b2"]}, {"id": "x", "text": "X"}])
    ids, hyps, refs = jsonl.match(jsonl.read_hypotheses(h), jsonl.read_references(r), h, r)
    assert ids == [1, 2, "x"] and hyps == ["a", "b", ""] and refs == [["A"], ["B", "b2"], ["X"]]


def test_missing_ids_on_either_side_are_named(tmp_path):
    h = _write(tmp_path / "h.jsonl", [{"id": f"u{i}", "text": "t"} for i in range(3, 20)] + [{"id": "extra", "text": "t"}])
    r = _write(tmp_path / "r.jsonl", [{"id": f"u{i}", "text": "t"} for i in range(20)])
    with pytest.raises(UserError) as e:
        jsonl.match(jsonl.read_hypotheses(h), jsonl.read_references(r), h, r)
    msg = str(e.value)
    assert f"ids in {r} missing from {h}: 'u0', 'u1', 'u2'" in msg
    assert f"ids in {h} missing from {r}: 'extra'" in msg
    h = _write(tmp_path / "h.jsonl", [{"id": "u0", "text": "t"}])
    with pytest.raises(UserError, match=r"'u1', 'u2', 'u3', 'u4', 'u5', \.\.\. \(19 in all\)"):
        jsonl.match(jsonl.read_hypotheses(h), jsonl.read_references(r), h, r)


def test_duplicate_and_malformed_lines_are_errors(tmp_path):
    h = _write(tmp_path / "h.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}])
    with pytest.raises(UserError, match=r"h.jsonl: duplicate ids 'a'"):
        jsonl.read_hypotheses(h)
    bad = [({"id": "a"}, 'needs a "text" string'), ({"text": "x"}, 'no "id" key'), ({"id": 1.5, "text": "x"}, "string or an integer"),
           ({"id": "a", "text": 3}, '"text" must be a string')]
    for row, message in bad:
        with pytest.raises(UserError, match=message):
            jsonl.read_hypotheses(_write(tmp_path / "h.jsonl", [row]))
    (tmp_path / "h.jsonl").write_text('{"id": "a", "text": "x"}\nnot json\n')
    with pytest.raises(UserError, match=r"h.jsonl:2: not JSON"):
        jsonl.read_hypotheses(tmp_path / "h.jsonl")
    for row, message in [({"id": "a", "text": "x", "texts": ["y"]}, "not both"), ({"id": "a"}, "not neither"),
                         ({"id": "a", "texts": []}, "non-empty list")]:
        with pytest.raises(UserError, match=message):
            jsonl.read_references(_write(tmp_path / "r.jsonl", [row]))
    with pytest.raises(FileNotFoundError, match="missing.jsonl: no such file"):
        jsonl.read_references(tmp_path / "missing.jsonl")


def test_results_do_not_depend_on_line_order(tmp_path, capsys):
    # the same pairs in another order on either side: equal metrics (refs reordered: float sums may differ in the last bit)
    from alm.eval.cli import main

    rng = random.Random(3)
    refs = [{"id": f"c{i}", "texts": r} for i, (r, _) in enumerate(CAPTIONS)] + \
           [{"id": i, "text": s} for i, s in enumerate(SENTENCES) if s]
    hyps = [{"id": r["id"], "text": _noisy(rng, r.get("text") or r["texts"][0])} for r in refs]
    asr_refs = [{"id": r["id"], "text": r.get("text") or r["texts"][0]} for r in refs]
    for task, rows in (("asr", asr_refs), ("translation", refs), ("caption", refs)):
        runs = []
        for order in range(3):
            h, r = list(hyps), list(rows)
            if order:
                rng.shuffle(h)
            if order == 2:
                rng.shuffle(r)
            _write(tmp_path / "h.jsonl", h), _write(tmp_path / "r.jsonl", r)
            extra = ["--no-meteor"] if task == "caption" else []
            assert main(["text", "--task", task, "--hyps", str(tmp_path / "h.jsonl"), "--refs", str(tmp_path / "r.jsonl"),
                         "--out", str(tmp_path / "res.json"), *extra]) == 0
            runs.append(json.loads((tmp_path / "res.json").read_text())["metrics"])
        assert runs[1] == runs[0] and runs[2] == pytest.approx(runs[0], rel=1e-12), task
    capsys.readouterr()


STAND_IN_SPICE = r"""
package edu.anu.spice;
import java.nio.file.*;
import java.util.regex.*;
// A stand-in for SPICE 1.0's scorer (the real one needs the CoreNLP jars, not available offline): it checks the
// command line alm builds and scores each caption by its word count / 10 (NaN for an empty caption).
public class SpiceScorer {
  public static void main(String[] args) throws Exception {
    String cp = System.getProperty("java.class.path"), out = null;
    for (int i = 1; i < args.length; i++) if (args[i].equals("-out")) out = args[i + 1];
    if (!cp.contains("corenlp") || !java.util.Arrays.asList(args).contains("-subset") || out == null) System.exit(3);
    Matcher m = Pattern.compile("\"image_id\": (\\d+), \"test\": \"([^\"]*)\"").matcher(Files.readString(Path.of(args[0])));
    StringBuilder sb = new StringBuilder("[");
    while (m.find()) {
      String test = m.group(2).trim();
      String f = test.isEmpty() ? "NaN" : Double.toString(test.split(" ").length / 10.0);
      sb.append(sb.length() > 1 ? "," : "").append("{\"image_id\": " + m.group(1) + ", \"scores\": {\"All\": {\"f\": " + f + "}}}");
    }
    Files.writeString(Path.of(out), sb.append("]").toString());
  }
}
"""


@pytest.mark.skipif(shutil.which("javac") is None or shutil.which("java") is None, reason="needs a JDK (javac)")
def test_spice_and_spider_with_corenlp_dir(tmp_path):
    import subprocess
    import zipfile

    src = tmp_path / "src" / "edu" / "anu" / "spice"
    src.mkdir(parents=True)
    (src / "SpiceScorer.java").write_text(STAND_IN_SPICE)
    subprocess.run(["javac", "-d", str(tmp_path / "classes"), str(src / "SpiceScorer.java")], check=True)
    jar = tmp_path / "spice" / "spice-1.0.jar"
    jar.parent.mkdir()
    with zipfile.ZipFile(jar, "w") as z:
        z.write(tmp_path / "classes/edu/anu/spice/SpiceScorer.class", "edu/anu/spice/SpiceScorer.class")
    corenlp = tmp_path / "corenlp"
    corenlp.mkdir()
    a = argparse.Namespace(no_meteor=True, corenlp_dir=str(corenlp), spice_jar=str(jar), task="caption")
    with pytest.raises(UserError, match="no stanford-corenlp-3.6.0.jar, stanford-corenlp-3.6.0-models.jar there"):
        caption.check_arguments(a)
    for name in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar"):
        zipfile.ZipFile(corenlp / name, "w").close()
    caption.check_arguments(a)
    hyps, refs = ["A dog barks.", "rain falls on a tin roof"], [["a dog barks"], ["rain on a roof"]]
    metrics, absent, config = caption.caption_metrics(hyps, refs, a, ["d", "r"])
    assert metrics["spice"] == pytest.approx((3 / 10 + 6 / 10) / 2)  # the stand-in's word counts / 10, mean over ids
    assert metrics["spider"] == pytest.approx((metrics["cider_d"] + metrics["spice"]) / 2)
    assert "spice" not in absent and config["spice_jar"] == str(jar)
    metrics, absent, _ = caption.caption_metrics(["", "rain"], refs, a, ["d", "r"])
    assert "spice" not in metrics and "spider" not in metrics and absent["spice"] == "SPICE gave no score (NaN) for ids 'd'"
