import math

import pytest
import torch

from alm.models.soundstorm import SoundStorm, SoundStormConfig

Q, V, K = 3, 16, 8  # levels, codebook size, semantic vocab


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(conv_kernel: int = 0, **kw) -> SoundStorm:
    torch.manual_seed(0)
    cfg = SoundStormConfig(n_q=Q, codebook_size=V, semantic_vocab=K, d_model=32, n_layer=2, n_head=2,
                           max_frames=64, conv_kernel=conv_kernel, window_s=1.0, **kw)
    return SoundStorm(cfg).eval()


def batch(B: int = 2, T: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, Q, T), generator=g), torch.randint(0, K, (B, T), generator=g)


@pytest.mark.parametrize("conv_kernel", [0, 3])
def test_shapes_and_padding_is_ignored(conv_kernel):
    model = tiny(conv_kernel)
    codes, sem = batch(2, 10)
    logits = model(codes, sem, torch.tensor([10, 10]))
    assert logits.shape == (2, Q, 10, V)
    # the same examples padded to 15 frames with garbage (even ids no embedding has) give the same logits
    pad_codes = torch.cat([codes, torch.full((2, Q, 5), -7)], dim=2)
    pad_sem = torch.cat([sem, torch.full((2, 5), 999)], dim=1)
    padded = model(pad_codes, pad_sem, torch.tensor([10, 10]))
    torch.testing.assert_close(padded[:, :, :10], logits, rtol=1e-5, atol=1e-5)
    # in a batch, one example's padding does not touch its valid frames; other examples are unaffected
    short = model(codes, sem, torch.tensor([10, 6]))
    alone = model(codes[1:, :, :6], sem[1:, :6])
    torch.testing.assert_close(short[1:, :, :6], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(short[0], logits[0], rtol=1e-5, atol=1e-5)
    # bidirectional: a later frame changes earlier logits
    other = codes.clone()
    other[:, 0, 9] = (other[:, 0, 9] + 1) % V
    assert not torch.allclose(model(other, sem)[:, :, 0], logits[:, :, 0])


def test_training_mask_scheme():
    model = tiny()
    B, T = 3000, 40
    codes = torch.randint(0, V, (B, Q, T))
    lengths = torch.randint(1, T + 1, (B,))
    m = model.training_mask(codes, lengths, torch.Generator().manual_seed(1))
    mask_id = model.cfg.mask_id
    t = torch.arange(T)
    valid = t < lengths[:, None]
    todo = valid & (t >= m.prompt_len[:, None])  # non-prompt frames
    assert (m.prompt_len >= 0).all() and (m.prompt_len < (lengths // 2).clamp(min=1)).all()
    assert set(m.level.tolist()) == set(range(Q))
    for b in range(0, B, 7):
        q, inp = int(m.level[b]), m.inputs[b]
        assert torch.equal(inp[:q], codes[b, :q])  # coarser levels untouched
        later = inp[q + 1 :]
        assert (later[:, todo[b]] == mask_id).all() and torch.equal(later[:, ~todo[b]], codes[b, q + 1 :, ~todo[b]])
        is_masked = inp[q] == mask_id
        assert torch.equal(is_masked, m.targets[b])  # loss exactly where level q is masked
        assert m.targets[b].sum() >= 1 and not (m.targets[b] & ~todo[b]).any()  # never in prompt / padding
        assert torch.equal(inp[q][~is_masked], codes[b, q][~is_masked])
    # masked fraction of the non-prompt frames follows p = cos(u*pi/2): mean 2/pi (+ rounding up)
    frac = (m.targets.sum(-1) / todo.sum(-1)).float()
    long = todo.sum(-1) >= 20
    assert abs(frac[long].mean().item() - 2 / math.pi) < 0.04
    assert frac[long].min() < 0.15 and frac[long].max() == 1.0


def test_loss_only_on_masked_level_q():
    model = tiny()
    codes, sem = batch(4, 12)
    lengths = torch.tensor([12, 9, 1, 0])  # an empty example adds nothing (and no NaN)
    loss, n = model.training_loss(codes, sem, lengths, torch.Generator().manual_seed(5))
    m = model.training_mask(codes, lengths, torch.Generator().manual_seed(5))  # the same draw
    logits = model(m.inputs, sem, lengths)
    terms = [torch.nn.functional.cross_entropy(logits[b, m.level[b], m.targets[b]], codes[b, m.level[b], m.targets[b]],
                                               reduction="sum") for b in range(4)]
    assert int(n) == int(m.targets.sum())
    torch.testing.assert_close(loss, sum(terms) / n)
    assert not m.targets[3].any() and m.targets[:3].any(-1).all()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    grad_rows = model.heads.weight.grad.abs().sum(dim=(1, 2)) > 0
    assert torch.equal(grad_rows, torch.isin(torch.arange(Q), m.level[:3]))  # only the trained levels' heads


def test_generate_pass_count_schedule_and_valid_codes():
    model = tiny(conv_kernel=3)
    _, sem = batch(2, 20)
    lengths = torch.tensor([20, 13])
    steps = [5, 3, 1]
    seen = []  # the codes each forward pass was given
    inner = model.hidden

    def counting(codes, semantic, lens):
        seen.append(codes.clone())
        return inner(codes, semantic, lens)

    model.hidden = counting
    g = torch.Generator().manual_seed(0)
    out = model.generate(sem, lengths, steps, temperature=1.0, generator=g, choice_temperature=1.0)
    assert len(seen) == sum(steps) == model.last_forward_passes
    still_masked = [(c == model.cfg.mask_id).sum(-1) for c in seen]  # (B, Q) per pass
    for a, b in zip(seen, seen[1:] + [out]):  # a decided token is never revisited
        decided = a != model.cfg.mask_id
        assert torch.equal(a[decided], b[decided])
    assert out.shape == (2, Q, 20) and out.min() >= 0 and out.max() < V
    assert (out[1, :, 13:] == 0).all()  # padding comes back as 0
    # masked count at the start of step s of level q: N, then floor(N cos(pi/2 s/S)), at least one fewer each step
    i = 0
    for q, S in enumerate(steps):
        expect = lengths.clone()
        for s in range(S):
            if s:
                expect = torch.minimum((lengths * math.cos(math.pi / 2 * s / S)).floor().long(), expect - 1)
            assert torch.equal(still_masked[i][:, q], expect)
            assert (still_masked[i][:, q + 1 :] == lengths[:, None]).all() and (still_masked[i][:, :q] == 0).all()
            i += 1


def test_generate_keeps_prompt_and_is_reproducible():
    model = tiny()
    codes, sem = batch(2, 16)
    prompt = codes[:, :, :5]
    runs = [model.generate(sem, steps_per_level=[4, 2, 2], prompt_codes=prompt, top_k=5,
                           generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0][:, :, :5], prompt)
    assert model.last_forward_passes == 8
    assert runs[0].min() >= 0 and runs[0].max() < V
    with pytest.raises(ValueError, match="steps_per_level"):
        model.generate(sem, steps_per_level=[4, 1])


def test_overfits_two_examples_and_decodes_them_greedily():
    model = tiny(conv_kernel=3)
    model.train()
    codes, sem = batch(2, 12, seed=4)
    lengths = torch.tensor([10, 10])  # equal: only the semantic tokens tell the two examples apart
    codes[:, :, 10:] = 0  # padding comes back as 0
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        loss, _ = model.training_loss(codes.repeat(8, 1, 1), sem.repeat(8, 1), lengths.repeat(8), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1
    out = model.generate(sem, lengths, steps_per_level=[4, 1, 1], temperature=0.0)
    assert torch.equal(out, codes)
    # the semantic tokens choose the output: swap them, the decoded codes swap too
    swapped = model.generate(sem.flip(0), lengths, steps_per_level=[4, 1, 1], temperature=0.0)
    assert torch.equal(swapped, codes.flip(0))
    assert model.training  # generate restores the mode


def test_config_validation_names_keys():
    good = dict(n_q=2, codebook_size=8, semantic_vocab=4, d_model=32, n_head=2)
    SoundStormConfig(**good).validate()
    for key, bad in [("n_q", 0), ("semantic_vocab", 0), ("codebook_size", 1), ("d_model", 30),
                     ("conv_kernel", 4), ("conv_kernel", -1), ("dropout", 1.0), ("max_frames", 0), ("mlp_ratio", 0)]:
        with pytest.raises(ValueError, match=f"model.{key}"):
            SoundStormConfig(**{**good, key: bad}).validate()
    with pytest.raises(ValueError, match="max_frames"):
        tiny()(torch.zeros(1, Q, 65, dtype=torch.long), torch.zeros(1, 65, dtype=torch.long))
