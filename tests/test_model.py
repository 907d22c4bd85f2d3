import pytest
import torch

from alm.models.sampling import sample_next
from alm.models.transformer import TransformerConfig, TransformerLM


def tiny(**kw) -> TransformerLM:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=40, n_layer=2, n_head=2, d_model=32, max_seq_len=64, **kw)
    return TransformerLM(cfg).eval()


def test_kv_cache_matches_full_forward_in_chunks():
    model = tiny()
    x = torch.randint(0, 40, (3, 30))
    full = model(x)
    cache = model.new_cache(3, 64)
    parts = [model(x[:, a:b], cache) for a, b in [(0, 9), (9, 10), (10, 22), (22, 30)]]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 30


def test_causal_future_does_not_change_past():
    model = tiny()
    x = torch.randint(0, 40, (1, 20))
    y = x.clone()
    y[0, 15:] = (y[0, 15:] + 1) % 40
    torch.testing.assert_close(model(x)[:, :15], model(y)[:, :15])
    assert not torch.allclose(model(x)[:, 15:], model(y)[:, 15:])


def test_generate_cache_equals_recompute_and_respects_allowed():
    model = tiny()
    prompt = torch.randint(0, 40, (2, 4))
    allowed = torch.ones(40, dtype=torch.bool)
    allowed[30:] = False
    runs = []
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(3)
        runs.append(model.generate(prompt, 25, temperature=1.0, top_k=10, generator=g, use_cache=use_cache, allowed=allowed))
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape == (2, 29) and torch.equal(runs[0][:, :4], prompt)
    assert int(runs[0][:, 4:].max()) < 30


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]]).repeat(500, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, top_k=2, generator=g).tolist()) == {3, 4}
    assert set(sample_next(logits, top_p=0.5, generator=g).tolist()) <= {3, 4}
    assert sample_next(logits, top_p=0.5, generator=g).eq(4).any()
    assert sample_next(logits, temperature=0).eq(4).all()
    many = sample_next(logits, temperature=1.0, generator=g)
    assert len(set(many.tolist())) == 5  # no filter: every token possible


def test_too_long_and_bad_config():
    model = tiny()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="model.d_model"):
        TransformerConfig(vocab_size=10, d_model=30, n_head=4).validate()
    with pytest.raises(ValueError, match="model.vocab_size"):
        TransformerConfig().validate()


def test_tied_embeddings_and_dropout_training_mode():
    model = tiny(dropout=0.5)
    assert model.lm_head.weight is model.embed.weight
    model.train()
    x = torch.randint(0, 40, (2, 10))
    assert not torch.allclose(model(x), model(x))  # dropout active in training
    model.eval()
    torch.testing.assert_close(model(x), model(x))
