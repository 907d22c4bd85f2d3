"""AudioLM stage 1: a decoder-only LM over semantic tokens (k-means ids of SSL features).

Data: token shards with a `semantic.npy` member (written by `alm tokenize semantic`).
Examples: [BOS] + a crop of at most data.max_len - 2 tokens + [EOS] if the crop reaches the end
of the clip; with data.windows=all (default) every non-overlapping crop of a long clip per epoch
(at a random offset), with data.windows=one a single random crop. Vocabulary: K cluster ids, then BOS = K, EOS = K + 1, so
model.vocab_size = K + 2. Loss: next-token cross-entropy over real (non-padding) positions.

MusicLM (model.condition_levels = L > 0): each example starts with the clip's L MuLan tokens (a joined
`mulan.npy` set, `alm tokenize mulan`), ids K + 2 + l * condition_codebook + code, before BOS; they are
conditioning (no loss). model.vocab_size = K + 2 + L * condition_codebook.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from alm.config import RunConfig
from alm.data.shards import npy_load
from alm.errors import UserError
from alm.models.acoustic_lm import aligned_windows
from alm.models.transformer import ConditionedLMConfig, TransformerLM
from alm.stages.lm import (ConditionedDataConfig, check_condition_tokenizer, collate, example_length,
                           export_condition_tokenizer, lm_loss)
from alm.stages.spec import Command, Stage, every_window
from alm.tokenizers.semantic import MEMBER, special_tokens


def clusters(m: ConditionedLMConfig) -> int:
    """K: the semantic cluster ids of a semantic LM's vocabulary (its BOS is K, EOS K + 1)."""
    return m.vocab_size - 2 - m.condition_vocab


def condition_prefix(m: ConditionedLMConfig, tokens: np.ndarray | None) -> np.ndarray:
    """The condition ids a conditioned semantic LM's sequences start with (empty when unconditioned)."""
    from alm.tokenizers.mulan import check_condition, condition_ids

    if not m.condition_levels:
        return np.zeros(0, np.int64)
    return condition_ids(check_condition(tokens, m.condition_levels, m.condition_codebook), clusters(m) + 2,
                         m.condition_codebook)


def make_example(sample: dict[str, Any], rng: np.random.Generator, max_len: int, model: ConditionedLMConfig,
                 every: bool = False) -> dict | list[dict] | None:
    """Raw shard sample -> {"tokens": int64 (T,), "n_prefix"} with BOS/EOS: a clip of at most max_len - 2
    tokens whole; a longer one cropped to max_len - 2 tokens, EOS only when the crop reaches the clip's end.
    every=False: one random crop; every=True: every non-overlapping crop at a random offset
    (alm.models.acoustic_lm.aligned_windows), as a list. A conditioned LM's crops start with the clip's
    condition ids (and hold L fewer semantic tokens)."""
    if MEMBER not in sample:
        raise KeyError(f"no {MEMBER} member (are these semantic token shards?)")
    ids = npy_load(sample[MEMBER]).astype(np.int64).reshape(-1)
    bos, eos = special_tokens(clusters(model) + 2)
    if ids.size == 0:
        return None
    if ids.min() < 0 or ids.max() >= bos:
        raise ValueError(f"token ids outside [0, {bos}) — tokenizer and model.vocab_size disagree")
    cond = np.zeros(0, np.int64)
    if model.condition_levels:
        from alm.tokenizers.mulan import sample_condition

        cond = condition_prefix(model, sample_condition(sample, model.condition_levels, model.condition_codebook))
    n_prefix = len(cond) + 1
    body = max_len - 2 - len(cond)  # room for the condition, BOS and EOS
    if ids.size <= body:
        return {"tokens": np.concatenate([cond, [bos], ids, [eos]]).astype(np.int64), "n_prefix": n_prefix}
    out = []
    for start, n, _, _ in aligned_windows(ids.size, 0, 1.0, 1.0, body, rng, every=every):
        tail = [eos] if start + n == ids.size else []
        out.append({"tokens": np.concatenate([cond, [bos], ids[start : start + n], tail]).astype(np.int64),
                    "n_prefix": n_prefix})
    return out if every else out[0]


def check(cfg: RunConfig) -> None:
    """model.vocab_size must be the tokenizer's K + 2 (BOS, EOS); examples must fit the context."""
    if cfg.data.max_len > cfg.model.max_seq_len:
        raise UserError(f"data.max_len={cfg.data.max_len} exceeds model.max_seq_len={cfg.model.max_seq_len}")
    check_condition_tokenizer(cfg)
    if not cfg.data.tokenizer:
        return
    path = Path(cfg.data.tokenizer) / "semantic_tokenizer.json"
    if not path.is_file():
        raise UserError(f"data.tokenizer={cfg.data.tokenizer}: no semantic_tokenizer.json inside (not a semantic tokenizer)")
    k = json.loads(path.read_text())["n_clusters"]
    m = cfg.model
    if m.vocab_size != k + 2 + m.condition_vocab:
        extra = f" + {m.condition_levels} x {m.condition_codebook} condition ids" if m.condition_vocab else ""
        raise UserError(f"model.vocab_size={m.vocab_size} but the tokenizer has {k} clusters: expected "
                        f"{k + 2 + m.condition_vocab} ({k} + BOS + EOS{extra})")


def examples(cfg: RunConfig):
    return functools.partial(make_example, max_len=cfg.data.max_len, model=cfg.model, every=every_window(cfg))


SYNTHETIC_AUDIO = "synthetic-v1"


def synthetic_semantic(root: Path, k: int) -> Path:
    """The synthetic audio set (cached) tokenized with the log-mel demo tokenizer with K clusters."""
    from alm.data.cache import cached
    from alm.data.synthetic import write_synthetic
    from alm.tokenizers.semantic import SemanticTokenizerConfig, run

    audio = cached(root / SYNTHETIC_AUDIO, lambda d: write_synthetic(d), "the synthetic audio dataset")
    tok_cfg = SemanticTokenizerConfig(features="logmel", n_clusters=k)

    def make(d: Path) -> None:
        run(str(audio), str(d), tok_cfg, fit_shards=str(audio / "train-*.tar"), progress=False)

    return cached(root / f"{SYNTHETIC_AUDIO}-semantic-logmel-k{k}", make, f"log-mel semantic tokens (K={k}, demo fallback)")


def synthetic_data(cfg: RunConfig, root: Path) -> dict[str, str]:
    """Synthetic semantic token shards for this stage, K = model.vocab_size - 2; a conditioned stage
    (MusicLM, model.condition_levels > 0) joins the set's MuLan tokens from a tiny trained CLAP
    (alm.tokenizers.mulan.synthetic_mulan)."""
    tokens = synthetic_semantic(root, clusters(cfg.model))
    made = {"train_shards": str(tokens / "train-*.tar"), "val_shards": str(tokens / "val-*.tar"),
            "tokenizer": str(tokens / "tokenizer")}
    if cfg.model.condition_levels:
        from alm.stages.lm import join_synthetic_mulan

        made = join_synthetic_mulan(cfg, root, made)
    return made


def _generate_arguments(p) -> None:
    p.add_argument("export_dir")
    p.add_argument("--tokens", type=int, default=100, help="tokens to sample")
    p.add_argument("--num", type=int, default=1, help="sequences to sample")
    p.add_argument("--out", default=None, help="save the token ids as .npy")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def _generate(a) -> int:
    from alm.generate import check_out_path, sample_semantic

    if a.out:
        check_out_path(a.out)
    tokens = sample_semantic(a.export_dir, a.tokens, a.num, a.temperature, a.top_k, a.top_p, a.seed, a.device)
    for row in tokens:
        print(" ".join(str(int(t)) for t in row))
    if a.out:
        np.save(a.out, tokens)
        print(f"[alm] saved {tokens.shape} token ids to {a.out}")
    return 0


STAGE = Stage(
    name="semantic",
    description="AudioLM stage 1: decoder-only LM over semantic tokens (k-means ids of SSL features)",
    model_config=ConditionedLMConfig,
    model=TransformerLM,
    make_example=examples,
    collate=collate,
    example_length=example_length,
    loss=lm_loss,
    check=check,
    data_config=ConditionedDataConfig,
    export_files=export_condition_tokenizer,
    synthetic_data=synthetic_data,
    commands=(Command("generate", "semantic", "sample semantic tokens from an exported semantic LM",
                      _generate_arguments, _generate),),
)
