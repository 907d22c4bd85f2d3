"""The musicgen stage (alm/stages/musicgen.py): examples from codec-token shards with a caption drawn
per crop (or precomputed T5 states), the per-codebook loss over the pattern's valid cells, and a
tiny end-to-end run on the synthetic captioned set (T5 frozen and outside the checkpoint)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alm.data.shards import npy_bytes, npy_load
from alm.models.codebook_patterns import make_pattern
from alm.stages.musicgen import (TEXT_EMB, TEXT_EMB_LENGTHS, MusicGenStageConfig, codebook_ce, collate,
                                 make_example)


def cfg(**kw) -> MusicGenStageConfig:
    base = dict(dim=32, n_layer=1, n_head=2, ffn_dim=64, codebooks=4, card=16, cond_dim=8, max_seq_len=128,
                frame_rate=50.0, pattern="delay")
    return MusicGenStageConfig(**{**base, **kw})


def sample(T: int = 120, captions=("rain on a roof", "a slow piano melody"), seed: int = 0, n_q: int = 4) -> dict:
    codes = np.random.default_rng(seed).integers(0, 16, (n_q, T)).astype(np.int16)
    return {"__key__": f"clip{seed}", "codes.npy": npy_bytes(codes), "json": json.dumps({"captions": list(captions)}).encode()}


@pytest.mark.parametrize("pattern", ["delay", "parallel", "unroll", "coarse_first"])
def test_examples_are_pattern_crops_with_one_of_the_clips_captions(pattern):
    m = cfg(pattern=pattern)
    s = sample(T=130)
    codes = npy_load(s["codes.npy"]).astype(np.int64)
    out = make_example(s, np.random.default_rng(1), m, segment_seconds=1.0, every=True)
    assert len(out) == 2  # 130 frames = 2 windows of 50 (and 30 uncovered frames at a random offset)
    seen = set()
    for ex in out:
        p = make_pattern(pattern, 4, 50)
        crop = p.revert(torch.from_numpy(ex["seq"])[None])[0].numpy()
        # the crop is a contiguous span of the clip's codes
        starts = [f for f in range(130 - 50 + 1) if np.array_equal(codes[:, f : f + 50], crop)]
        assert starts, "the example's codes are not a crop of the clip"
        assert np.array_equal(ex["valid"], p.valid.numpy()) and ex["seq"].shape == (4, p.num_steps)
        assert bool((ex["seq"][~ex["valid"]] == m.card).all())
        seen.add(ex["text"])
    # every caption gets drawn over draws
    for seed in range(20):
        seen.add(make_example(s, np.random.default_rng(seed), m, segment_seconds=1.0)["text"])
    assert seen == {"rain on a roof", "a slow piano melody"}


def test_short_clips_pad_in_the_batch_and_bad_samples_say_why():
    m = cfg()
    a = make_example(sample(T=30), np.random.default_rng(0), m, segment_seconds=1.0)
    b = make_example(sample(T=80, seed=1), np.random.default_rng(0), m, segment_seconds=1.0)
    assert a["seq"].shape == (4, 34) and b["seq"].shape == (4, 54)
    batch = collate([a, b])
    assert batch["seq"].shape == (2, 4, 54) and batch["valid"].shape == (2, 4, 54)
    assert not bool(batch["valid"][0, :, 34:].any()) and bool((batch["seq"][0, :, 34:] == m.card).all())
    assert batch["_tokens"] == 4 * (30 + 50) and len(batch["text"]) == 2
    with pytest.raises(ValueError, match="no caption"):
        make_example(sample(captions=()), np.random.default_rng(0), m, segment_seconds=1.0)
    with pytest.raises(ValueError, match="needs 4 codebooks"):
        make_example(sample(n_q=2), np.random.default_rng(0), m, segment_seconds=1.0)
    with pytest.raises(ValueError, match=r"outside \[0, 8\)"):
        make_example(sample(), np.random.default_rng(0), cfg(card=8), segment_seconds=1.0)


def test_precomputed_text_embeddings_give_one_captions_states():
    m = cfg()
    rng = np.random.default_rng(0)
    embs = [rng.standard_normal((n, 8)).astype(np.float16) for n in (3, 5)]
    s = sample()
    s[TEXT_EMB] = npy_bytes(np.concatenate(embs))
    s[TEXT_EMB_LENGTHS] = npy_bytes(np.array([3, 5], dtype=np.int32))
    exs = [make_example(s, np.random.default_rng(i), m, segment_seconds=1.0) for i in range(12)]
    lengths = {len(e["cond"]) for e in exs}
    assert lengths == {3, 5}
    for e in exs:
        assert any(np.array_equal(e["cond"], x) for x in embs) and "text" not in e
    batch = collate(exs[:4])
    assert batch["cond"].dtype == torch.float32 and batch["cond"].shape[2] == 8
    assert batch["cond_mask"].sum(1).tolist() == [len(e["cond"]) for e in exs[:4]]


def test_loss_is_the_mean_over_codebooks_of_each_codebooks_mean_ce():
    g = torch.Generator().manual_seed(0)
    B, K, S, C = 3, 4, 12, 16
    logits = torch.randn(B, K, S, C, generator=g)
    seq = torch.randint(0, C + 1, (B, K, S), generator=g)
    valid = (torch.rand(B, K, S, generator=g) > 0.3) & (seq < C)
    per_k = []
    for k in range(K):
        terms = [-torch.log_softmax(logits[b, k, s - 1], -1)[seq[b, k, s]]
                 for b in range(B) for s in range(1, S) if valid[b, k, s]]
        per_k.append(torch.stack(terms).mean())
    assert torch.allclose(codebook_ce(logits, seq, valid), torch.stack(per_k).mean(), atol=1e-6)
