"""AudioLM acoustic stages: token layout, windows, examples, and conditioning that really works."""

import numpy as np
import pytest
import torch

from alm.data.shards import npy_bytes
from alm.models.acoustic_lm import AcousticLM, AcousticLMConfig, TokenLayout, aligned_window, semantic_per_frame
from alm.stages.acoustic import make_example
from alm.stages.lm import IGNORE, collate, lm_loss


def coarse_cfg(**kw) -> AcousticLMConfig:
    base = dict(vocab_size=64 + 2 * 16 + 3, n_layer=2, n_head=2, d_model=64, max_seq_len=128, semantic_vocab=64,
                codebook_size=16, prefix_levels=0, target_levels=2, semantic_rate=50.0, frame_rate=50.0, window_s=0.4)
    base.update(kw)
    return AcousticLMConfig(**base)


def fine_cfg(**kw) -> AcousticLMConfig:
    base = dict(vocab_size=4 * 16 + 3, n_layer=2, n_head=2, d_model=64, max_seq_len=128, semantic_vocab=0,
                codebook_size=16, prefix_levels=2, target_levels=2, frame_rate=50.0, window_s=0.4)
    base.update(kw)
    return AcousticLMConfig(**base)


def test_layout_offsets_roundtrip_and_masks():
    lay = TokenLayout(semantic_vocab=10, codebook_size=4, levels=3)
    codes = np.array([[0, 1, 2], [3, 0, 1], [2, 2, 3]])  # (q=3, T=3)
    ids = lay.flatten(codes, first_level=0)
    assert ids.tolist() == [10, 17, 20, 11, 14, 20, 12, 15, 21]  # frame-major, level offsets 10/14/18
    assert np.array_equal(lay.unflatten(ids, 0, 3), codes)
    assert torch.equal(lay.unflatten(torch.as_tensor(ids)[None], 0, 3)[0], torch.as_tensor(codes))
    assert lay.flatten(codes[1:], first_level=1).min() >= 14
    masks = lay.level_masks(first_level=1, q=2, frames=2)  # positions: (t0,l1) (t0,l2) (t1,l1) (t1,l2)
    assert masks.shape == (4, lay.size)
    assert masks[0].nonzero().flatten().tolist() == [14, 15, 16, 17] and masks[1, 18:22].all()
    assert (lay.bos, lay.sep, lay.eos, lay.size) == (22, 23, 24, 25)


def test_config_validation_names_keys():
    with pytest.raises(ValueError, match="model.vocab_size': must be 99"):
        coarse_cfg(vocab_size=7).validate()
    with pytest.raises(ValueError, match="model.window_s"):
        coarse_cfg(window_s=5.0).validate()
    with pytest.raises(ValueError, match="model.prefix_levels"):
        coarse_cfg(prefix_levels=1, vocab_size=64 + 3 * 16 + 3).validate()


def test_aligned_window_keeps_streams_in_step():
    cfg = coarse_cfg(frame_rate=75.0, max_seq_len=512, window_s=1.0)  # EnCodec 24 kHz vs 50 Hz semantic
    rng = np.random.default_rng(0)
    for _ in range(50):
        f0, n, s0, ns = aligned_window(750, 500, 75.0, 50.0, cfg.frames(cfg.window_s), rng)
        assert n == 75 and ns == 50 and f0 % 3 == 0 and abs(f0 / 75 - s0 / 50) < 1e-9 and s0 + ns <= 500
    f0, n, s0, ns = aligned_window(30, 20, 75.0, 50.0, 75, rng)  # a clip shorter than the window: all of it
    assert (f0, n, s0, ns) == (0, 30, 0, 20)


def test_examples_and_loss_mask():
    rng = np.random.default_rng(1)
    codes = np.arange(4 * 40).reshape(4, 40) % 16
    sem = np.arange(40) % 64
    sample = {"__key__": "k", "codes.npy": npy_bytes(codes.astype(np.int16)), "semantic.npy": npy_bytes(sem.astype(np.int16))}
    c = coarse_cfg()
    ex = make_example(sample, rng, c)
    lay = c.layout
    assert ex["n_prefix"] == 2 + 20 and len(ex["tokens"]) == 22 + 20 * 2
    assert ex["tokens"][0] == lay.bos and ex["tokens"][21] == lay.sep
    s0 = int(ex["tokens"][1])
    assert np.array_equal(lay.unflatten(ex["tokens"][22:], 0, 2), codes[:2, s0 : s0 + 20])  # same window
    f = fine_cfg()
    fx = make_example(sample, rng, f)
    body = fx["tokens"]
    f0 = int(np.where(codes[0] == f.layout.unflatten(body[1:41], 0, 2)[0][0])[0][0])
    assert np.array_equal(f.layout.unflatten(body[42:], 2, 2), codes[2:, f0 : f0 + 20])
    batch = collate([ex, {"tokens": ex["tokens"][:30], "n_prefix": 22}])
    t = batch["targets"]
    assert (t[:, :21] == IGNORE).all() and (t[0, 21:] != IGNORE).all()  # no loss on the conditioning
    assert (t[1, 21:29] != IGNORE).all() and (t[1, 29:] == IGNORE).all()
    with pytest.raises(ValueError, match="RVQ levels"):
        make_example({"codes.npy": npy_bytes(codes[:1]), "semantic.npy": sample["semantic.npy"]}, rng, f)
    with pytest.raises(KeyError, match="semantic"):
        make_example({"codes.npy": sample["codes.npy"]}, rng, c)


def test_coarse_lm_reproduces_training_codes_from_the_semantic_prefix():
    """Overfit 4 clips whose codes depend on their semantic tokens; greedy generation from each
    semantic prefix must give back that clip's codes — the conditioning is wired, not just shaped."""
    torch.manual_seed(0)
    cfg = coarse_cfg(window_s=0.2, d_model=96)  # 10 frames x 2 levels after 10 semantic tokens
    model = AcousticLM(cfg)
    rng = np.random.default_rng(0)
    clips = []
    for _ in range(4):
        sem = rng.integers(0, 64, 10)
        codes = np.stack([(sem * 5 + 3) % 16, (sem * 7 + rng.integers(0, 16)) % 16])  # (2, 10), level 1 has a per-clip twist
        clips.append((sem, codes))
    examples = [{"tokens": np.concatenate([model.prefix_ids(semantic=s), cfg.layout.flatten(c, 0)]), "n_prefix": 12}
                for s, c in clips]
    batch = collate(examples)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(300):
        loss = lm_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    model.eval()
    for sem, codes in clips:
        got = model.generate_codes(torch.as_tensor(model.prefix_ids(semantic=sem))[None], 10, temperature=0)
        assert np.array_equal(got[0].numpy(), codes)


def test_semantic_per_frame():
    sem = np.array([5, 6, 7, 8])  # 50 Hz
    assert semantic_per_frame(sem, 6, 75.0, 50.0).tolist() == [5, 5, 6, 7, 7, 8]
    assert semantic_per_frame(sem, 4, 50.0, 50.0).tolist() == [5, 6, 7, 8]
