"""FENSE (Zhou et al., ICASSP 2022): Sentence-BERT similarity to the references, penalised when an error
detector says the caption is not fluent — as the reference implementation (github.com/blmoistawinde/fense,
fense/evaluator.py, corpus_score) computes it:

    sim_i      = mean over the references r of i of  <e(cand_i), e(r)>   e = SBERT, L2-normalised
    error_i    = sigmoid(echecker(cand_i))[-1] > 0.9                       (its last class: "error")
    fense      = mean_i  sim_i * (1 - 0.9 * error_i)
    sbert_sim  = mean_i  sim_i                                              (no penalty)

on the raw captions (no normalisation). Weights come from local paths or the HF cache, never downloaded
here: --fense-sbert (a sentence-transformers model folder or hub id: DCASE uses
paraphrase-TinyBERT-L6-v2) and --fense-echecker (FENSE's echecker_clotho_audiocaps_{base,tiny}.ckpt: a
torch file holding {"model_type", "num_classes", "state_dict"} of a BERT encoder + linear head over the
[CLS] state); the BERT it names (model_type: bert-base-uncased / prajjwal1/bert-tiny) gives its config
and tokenizer (--fense-echecker-base overrides it with a local folder). Without --fense-echecker only
sbert_sim is computed. The reference takes sigmoid(logits)[:, -1] only for batches above its batch
size (below, it compares every class with the threshold and fails to broadcast); alm always uses the
error class, as the paper defines it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alm.errors import UserError

ERROR_THRESHOLD = 0.9
PENALTY = 0.9
MAX_LEN = 64  # the reference's tokenizer max_length for the error detector


def add_arguments(p) -> None:
    p.add_argument("--fense-sbert", default=None, metavar="MODEL",
                   help="caption only: a sentence-transformers model (folder or cached hub id, e.g. "
                        "paraphrase-TinyBERT-L6-v2): computes sbert_sim, and fense with --fense-echecker")
    p.add_argument("--fense-echecker", default=None, metavar="CKPT",
                   help="caption only, with --fense-sbert: FENSE's error-detector checkpoint (echecker_*.ckpt)")
    p.add_argument("--fense-echecker-base", default=None, metavar="MODEL",
                   help="the BERT the echecker was trained from (default: the checkpoint's model_type), for its "
                        "config and tokenizer")


def check_arguments(a) -> None:
    sbert, echecker, base = (getattr(a, k, None) for k in ("fense_sbert", "fense_echecker", "fense_echecker_base"))
    for flag, value in (("--fense-sbert", sbert), ("--fense-echecker", echecker), ("--fense-echecker-base", base)):
        if value and a.task != "caption":
            raise UserError(f"{flag} applies to --task caption only (got --task {a.task})")
    if (echecker or base) and not sbert:
        raise UserError("--fense-echecker needs --fense-sbert (FENSE penalises the SBERT similarity)")
    if echecker and not Path(echecker).is_file():
        raise UserError(f"--fense-echecker {echecker}: no such file")


def sbert_similarities(sbert_source: str, hyps: list[str], refs: list[list[str]], batch_size: int = 32,
                       device: str = "cpu") -> np.ndarray:
    """(n,) mean cosine of each hypothesis's SBERT embedding with its references'."""
    from sentence_transformers import SentenceTransformer

    try:
        sbert = SentenceTransformer(sbert_source, device=device)
    except (OSError, ValueError) as exc:
        raise UserError(f"--fense-sbert {sbert_source}: cannot load it ({str(exc).splitlines()[0]})") from None
    flat = [r for rs in refs for r in rs]
    cand = sbert.encode(hyps, convert_to_tensor=True, normalize_embeddings=True, batch_size=batch_size)
    ref = sbert.encode(flat, convert_to_tensor=True, normalize_embeddings=True, batch_size=batch_size)
    out, start = [], 0
    for i, rs in enumerate(refs):
        out.append(float((cand[i] @ ref[start : start + len(rs)].T).mean()))
        start += len(rs)
    return np.asarray(out, np.float64)


def load_echecker(path: str, base: str | None = None, device: str = "cpu"):
    """(model, tokenizer): FENSE's BERTFlatClassifier rebuilt from its checkpoint (config from its base BERT)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    states = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(states, dict) or not {"model_type", "num_classes", "state_dict"} <= set(states):
        raise UserError(f"--fense-echecker {path}: not a FENSE echecker checkpoint "
                        "(expected {'model_type', 'num_classes', 'state_dict'})")
    source = base or states["model_type"]
    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise UserError(f"--fense-echecker: its base BERT {source!r} is not available here ({str(exc).splitlines()[0]}); "
                        "give a local folder with --fense-echecker-base") from None

    class Echecker(torch.nn.Module):  # FENSE's BERTFlatClassifier: BERT, dropout, linear over the [CLS] state
        def __init__(self):
            super().__init__()
            self.encoder = AutoModel.from_config(config)
            self.clf = torch.nn.Linear(config.hidden_size, int(states["num_classes"]))

        def forward(self, input_ids, attention_mask, token_type_ids):
            x = self.encoder(input_ids, attention_mask, token_type_ids).last_hidden_state[:, 0, :]
            return self.clf(x)

    model = Echecker()
    missing, unexpected = model.load_state_dict(states["state_dict"], strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise UserError(f"--fense-echecker {path}: weights do not fit {source!r}: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}")
    return model.to(device).eval(), tokenizer


def error_flags(model, tokenizer, hyps: list[str], batch_size: int = 32, device: str = "cpu") -> np.ndarray:
    """(n,) 1.0 where the error detector's "error" probability exceeds ERROR_THRESHOLD."""
    import torch

    probs = []
    for i in range(0, len(hyps), batch_size):
        batch = tokenizer(hyps[i : i + batch_size], truncation=True, padding="max_length", max_length=MAX_LEN,
                          return_tensors="pt")
        with torch.no_grad():
            logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                           batch.get("token_type_ids", torch.zeros_like(batch["input_ids"])).to(device))
        probs.append(torch.sigmoid(logits)[:, -1].cpu().numpy())
    return (np.concatenate(probs) > ERROR_THRESHOLD).astype(np.float64)


def fense_metrics(hyps: list[str], refs: list[list[str]], sbert: str, echecker: str | None = None,
                  echecker_base: str | None = None, device: str = "cpu") -> tuple[dict, dict]:
    """({sbert_sim[, fense]}, config)."""
    sim = sbert_similarities(sbert, hyps, refs, device=device)
    metrics = {"sbert_sim": float(sim.mean())}
    config = {"fense_sbert": sbert}
    if echecker:
        model, tokenizer = load_echecker(echecker, echecker_base, device)
        errors = error_flags(model, tokenizer, hyps, device=device)
        metrics["fense"] = float((sim * (1 - PENALTY * errors)).mean())
        config.update(fense_echecker=echecker, fense_error_rate=float(errors.mean()))
    return metrics, config
