"""FENSE on tiny random models built here (a Sentence-BERT folder and an echecker checkpoint in FENSE's
format): the similarity equals sentence-transformers' own cosine, the penalty applies exactly where the
error class passes 0.9, and `alm eval text --task caption --fense-sbert --fense-echecker` reports both."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import alm

HYPS = ["a dog barks loudly", "rain falls on the roof", "a car car car passes"]
REFS = [["a dog is barking", "dog barks"], ["heavy rain on a roof"], ["a car passes by", "a vehicle drives past", "car"]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(sbert dir, bert dir, echecker ckpt, the echecker module) — tiny, random, offline."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as st_models
    from tokenizers import Tokenizer, models as tk_models, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("fense")
    words = " ".join(HYPS + [r for rs in REFS for r in rs]).split()
    tok = Tokenizer(tk_models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(words)] * 4, trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    bert = root / "bert"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(bert)
    BertTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                      unk_token="[UNK]", mask_token="[MASK]").save_pretrained(bert)
    sbert = root / "sbert"
    SentenceTransformer(modules=[st_models.Transformer(str(bert)), st_models.Pooling(16, "mean")]).save(str(sbert))

    encoder = BertModel.from_pretrained(bert)
    clf = torch.nn.Linear(16, 5)
    with torch.no_grad():  # the "error" class (last) fires for the third caption's [CLS] state only
        cls = [encoder(**BertTokenizerFast.from_pretrained(bert)([h], return_tensors="pt")).last_hidden_state[0, 0]
               for h in HYPS]
    state = {**{f"encoder.{k}": v for k, v in encoder.state_dict().items()}, **{f"clf.{k}": v for k, v in clf.state_dict().items()}}
    ckpt = root / "echecker.ckpt"
    torch.save({"model_type": str(bert), "num_classes": 5, "state_dict": state}, ckpt)
    return sbert, bert, ckpt, cls


def test_sbert_similarity_equals_sentence_transformers(models):
    from sentence_transformers import SentenceTransformer

    from alm.eval.fense import sbert_similarities

    sbert = SentenceTransformer(str(models[0]))
    want = []
    for h, rs in zip(HYPS, REFS):
        e = sbert.encode([h] + rs, normalize_embeddings=True)
        want.append(float((e[0] @ e[1:].T).mean()))
    np.testing.assert_allclose(sbert_similarities(str(models[0]), HYPS, REFS), want, atol=1e-6)
    same = sbert_similarities(str(models[0]), ["a dog barks"], [["a dog barks", "a dog barks"]])
    assert same[0] == pytest.approx(1.0, abs=1e-5)


def test_the_penalty_applies_where_the_error_class_passes_the_threshold(models, tmp_path):
    from alm.eval import fense

    sbert, bert, ckpt, cls = models
    states = torch.load(ckpt, weights_only=True)
    # the last class's logit: large where we want an error (the third caption), very negative elsewhere
    w = torch.zeros(5, 16)
    direction = cls[2] - (cls[0] + cls[1]) / 2
    w[4] = 20 * direction / direction.norm() ** 2  # logit +10 at the third caption's state, -10 at the others' mean
    bias = torch.zeros(5)
    bias[4] = -float(w[4] @ ((cls[2] + (cls[0] + cls[1]) / 2) / 2))
    states["state_dict"]["clf.weight"], states["state_dict"]["clf.bias"] = w, bias
    torch.save(states, tmp_path / "e.ckpt")
    model, tokenizer = fense.load_echecker(str(tmp_path / "e.ckpt"))
    errors = fense.error_flags(model, tokenizer, HYPS)
    np.testing.assert_array_equal(errors, [0, 0, 1])
    metrics, config = fense.fense_metrics(HYPS, REFS, str(sbert), str(tmp_path / "e.ckpt"))
    sim = fense.sbert_similarities(str(sbert), HYPS, REFS)
    assert metrics["sbert_sim"] == pytest.approx(sim.mean())
    assert metrics["fense"] == pytest.approx((sim[0] + sim[1] + 0.1 * sim[2]) / 3)
    assert config["fense_error_rate"] == pytest.approx(1 / 3)


def test_alm_eval_text_caption_reports_fense(models, tmp_path):
    sbert, bert, ckpt, _ = models
    h, r = tmp_path / "h.jsonl", tmp_path / "r.jsonl"
    h.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(HYPS)))
    r.write_text("".join(json.dumps({"id": i, "texts": t}) + "\n" for i, t in enumerate(REFS)))
    out = tmp_path / "res.json"
    alm("eval", "text", "--task", "caption", "--hyps", str(h), "--refs", str(r), "--no-meteor", "--fense-sbert", str(sbert),
        "--fense-echecker", str(ckpt), "--out", str(out))
    res = json.loads(out.read_text())
    assert 0 < res["metrics"]["fense"] <= res["metrics"]["sbert_sim"] + 1e-9 and res["config"]["fense_sbert"] == str(sbert)
    p = alm("eval", "text", "--task", "caption", "--hyps", str(h), "--refs", str(r), "--no-meteor", "--fense-echecker",
            str(ckpt), "--out", str(out), check=False)
    assert p.returncode == 2 and "--fense-echecker needs --fense-sbert" in p.stderr
    p = alm("eval", "text", "--task", "asr", "--hyps", str(h), "--refs", str(r), "--fense-sbert", str(sbert),
            "--out", str(out), check=False)
    assert p.returncode == 2 and "applies to --task caption only" in p.stderr
