"""The MusicGen LM (alm/models/musicgen.py): shapes, the KV cache, classifier-free guidance, sampling."""

import pytest
import torch

from alm.models.codebook_patterns import make_pattern
from alm.models.musicgen import MusicGenConfig, MusicGenLM, drop_condition, guided_logits

pytestmark = pytest.mark.usefixtures("one_thread")

K, CARD = 4, 16


def tiny(mode: str = "cross", **kw) -> MusicGenLM:
    torch.manual_seed(0)
    cfg = MusicGenConfig(dim=32, n_layer=2, n_head=4, ffn_dim=64, codebooks=K, card=CARD, cond_dim=24,
                         cond_mode=mode, max_seq_len=64, dropout=0.0, **kw)
    model = MusicGenLM(cfg).eval()
    with torch.no_grad():  # make the condition matter (random init barely reads it)
        if model.cond_in is not None:
            model.cond_in.weight.mul_(20)
        for block in model.blocks:
            if block.cross:
                block.cross_attn.proj.weight.mul_(30)
    return model


def batch(B: int = 3, L: int = 5, S: int = 9, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, CARD + 1, (B, K, S), generator=g)
    cond = torch.randn(B, L, 24, generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 3:] = 0  # prompts of different lengths padded in one batch
    mask[2, 1:] = 0
    return codes, cond, mask


@pytest.mark.parametrize("mode", ["cross", "prefix"])
def test_shapes_and_causality(mode):
    model = tiny(mode)
    codes, cond, mask = batch()
    logits = model(codes, cond, mask)
    assert logits.shape == (3, K, 9, CARD)
    changed = codes.clone()
    changed[:, :, 6:] = (changed[:, :, 6:] + 1) % CARD
    later = model(changed, cond, mask)
    assert torch.allclose(logits[:, :, :6], later[:, :, :6], atol=1e-6)  # step s sees steps <= s only
    assert not torch.allclose(logits[:, :, 6:], later[:, :, 6:], atol=1e-3)


def test_padding_is_ignored_and_the_condition_matters():
    model = tiny()
    codes, cond, mask = batch()
    base = model(codes, cond, mask)
    noisy = cond.clone()
    noisy[mask == 0] = 100.0  # whatever sits under the padding
    assert torch.allclose(base, model(codes, noisy, mask), atol=1e-5)
    other = cond.clone()
    other[0, 0] += 1.0
    assert (base[0] - model(codes, other, mask)[0]).abs().max() > 1e-2


def test_nulled_condition_equals_no_condition():
    """Every key masked + zeroed states: the cross-attention adds exactly nothing."""
    model = tiny()
    codes, cond, mask = batch()
    nulled = model(codes, torch.zeros_like(cond), torch.zeros_like(mask))
    assert torch.allclose(nulled, model(codes), atol=1e-6)
    assert torch.equal(drop_condition(mask, 0.0), mask)
    dropped = drop_condition(mask, 0.5, torch.Generator().manual_seed(0))
    rows = dropped.sum(1) == 0
    assert torch.equal(dropped[~rows], mask[~rows])


@pytest.mark.parametrize("mode", ["cross", "prefix"])
def test_cache_equals_full_forward(mode):
    model = tiny(mode)
    codes, cond, mask = batch()
    full = model(codes, cond, mask)
    cache = model.new_cache(3, model.prefix_len(cond) + 9)
    parts = [model(codes[:, :, :4], cond, mask, cache)]  # a chunk, then one step at a time
    parts += [model(codes[:, :, s : s + 1], cond, mask, cache) for s in range(4, 9)]
    assert torch.allclose(torch.cat(parts, dim=2), full, atol=1e-5)


def test_cfg_scale_one_is_the_conditional_logits_and_the_formula():
    model = tiny()
    codes, cond, mask = batch()
    conditional = model(codes, cond, mask)
    assert torch.allclose(guided_logits(model, codes, cond, mask, 1.0), conditional, atol=1e-5)
    uncond = model(codes, torch.zeros_like(cond), torch.zeros_like(mask))
    want = uncond + 3.0 * (conditional - uncond)
    assert torch.allclose(guided_logits(model, codes, cond, mask, 3.0), want, atol=1e-4)


@pytest.mark.parametrize("mode", ["cross", "prefix"])
def test_generate_cache_and_batched_cfg_agree(mode):
    model = tiny(mode)
    _, cond, mask = batch()
    pat = make_pattern("delay", K, 6)
    kw = dict(valid=pat.valid, cond=cond, cond_mask=mask, cfg_scale=3.0, temperature=0.0)
    ref = model.generate(**kw)
    assert ref.shape == (3, K, pat.num_steps)
    assert torch.equal(ref[:, ~pat.valid], torch.full_like(ref[:, ~pat.valid], CARD))  # special outside codes
    assert (ref[:, pat.valid] < CARD).all()
    assert torch.equal(model.generate(**kw, use_cache=False), ref)
    assert torch.equal(model.generate(**kw, cfg_batched=False), ref)
    # sampled: the same generator seed gives the same codes with and without the cache
    kw.update(temperature=1.0, top_k=5, top_p=0.9)
    a = model.generate(**kw, generator=torch.Generator().manual_seed(3))
    b = model.generate(**kw, use_cache=False, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_generate_continues_a_prompt():
    model = tiny()
    _, cond, mask = batch()
    pat = make_pattern("delay", K, 6)
    ref = model.generate(pat.valid, cond, mask, temperature=0.0)
    cont = model.generate(pat.valid, cond, mask, prompt=ref[:, :, :5], temperature=0.0)
    assert torch.equal(cont, ref)


def test_melody_prefix_and_null_chroma():
    model = tiny("prefix", melody_dim=12, melody_len=7)
    codes, cond, mask = batch()
    melody = torch.rand(3, 3, 12)
    logits = model(codes, cond, mask, melody=melody)
    assert logits.shape == (3, K, 9, CARD)
    assert model.prefix_len(cond) == 7 + 5
    assert torch.allclose(model(codes, cond, mask), model(codes, cond, mask, melody=model.null_melody(3)))
    cache = model.new_cache(3, 12 + 9)
    steps = torch.cat([model(codes[:, :, :1], cond, mask, cache, melody)]
                      + [model(codes[:, :, s : s + 1], None, None, cache) for s in range(1, 9)], dim=2)
    assert torch.allclose(steps, logits, atol=1e-5)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="model.cond_mode"):
        MusicGenConfig(cond_mode="sideways").validate()
    with pytest.raises(ValueError, match="model.cond_proj"):
        MusicGenConfig(cond_proj=False, cond_dim=768, dim=1024).validate()
    with pytest.raises(ValueError, match=r"\(B, 4, S\)"):
        tiny()(torch.zeros(1, 3, 5, dtype=torch.long))


def test_lora_trains_only_adapters_and_merges_to_base_plus_delta():
    from alm.models.musicgen import LoRALinear, is_adapter, merge_lora

    base = tiny()
    lora = tiny(lora_rank=2, lora_alpha=4.0, lora_targets="self_attn.q,cross_attn.v,ffn.fc")
    missing, unexpected = lora.load_state_dict(base.state_dict(), strict=False)  # base weights load unchanged
    assert not unexpected and missing and all(is_adapter(k) for k in missing)
    codes, cond, mask = batch()
    assert torch.allclose(lora(codes, cond, mask), base(codes, cond, mask), atol=1e-6)  # B = 0: starts as the base
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable == {n for n in dict(lora.named_parameters()) if is_adapter(n)}
    assert len(trainable) == 2 * 2 * 3  # 2 layers x 3 sites x (A, B)
    before = {n: p.detach().clone() for n, p in lora.named_parameters()}
    opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    lora.train()
    for _ in range(3):
        logits = lora(codes, cond, mask)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 2), codes.clamp(max=CARD - 1).flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    lora.eval()
    for n, p in lora.named_parameters():
        assert torch.equal(p, before[n]) != is_adapter(n), n  # adapters moved, nothing else did
    merged = merge_lora(lora)
    assert merged.cfg.lora_rank == 0 and not any(isinstance(m, LoRALinear) for m in merged.modules())
    sd = merged.state_dict()
    for name, module in lora.named_modules():
        if isinstance(module, LoRALinear):
            want = base.state_dict()[f"{name}.weight"] + 2.0 * module.lora_b @ module.lora_a  # alpha / r = 2
            assert torch.allclose(sd[f"{name}.weight"], want, atol=1e-6), name
    with torch.no_grad():
        assert torch.allclose(merged(codes, cond, mask), lora(codes, cond, mask), atol=1e-5)
    with pytest.raises(ValueError, match="model.lora_targets"):
        MusicGenConfig(lora_rank=4, lora_targets="self_attn.q,mlp").validate()


def test_unconditional_generation_needs_a_batch_size():
    model = tiny()
    valid = make_pattern("delay", K, 3).valid
    with pytest.raises(ValueError, match="batch_size"):
        model.generate(valid)
    out = model.generate(valid, batch_size=2, temperature=0.0, cfg_scale=3.0)  # null vs null: guidance is a no-op
    assert out.shape == (2, K, 3 + K) and torch.equal(out[0], out[1])


@pytest.mark.slow
def test_two_ranks_ddp_and_zero3_train_the_same_losses_with_lora(tmp_path):
    """`alm train` of the tiny musicgen recipe with LoRA on 2 gloo ranks: DDP and DeepSpeed ZeRO-3 (a
    frozen base partitioned from construction) log the same per-step losses (without LoRA:
    tests/test_musicgen_stage.py's test of the same name)."""
    lora = 2
    import math

    from helpers import REPO, alm, losses

    common = [f"model.lora_rank={lora}", "model.dim=32", "model.n_layer=2", "model.n_head=2", "model.ffn_dim=64",
              "trainer.devices=2", "trainer.max_steps=3", "trainer.ckpt_every_n_steps=3", "trainer.val_every_n_steps=0",
              "trainer.progress_bar=false", "trainer.threads=1", "trainer.accelerator=cpu", "data.batch_size=4",
              "data.segment_seconds=0.5", "data.num_workers=0", "data.shuffle_buffer=8", "wandb.enabled=false"]
    recipe = str(REPO / "recipes" / "tiny" / "musicgen.yaml")
    alm("train", recipe, f"run_dir={tmp_path / 'ddp'}", *common, "trainer.strategy=ddp")
    alm("train", recipe, f"run_dir={tmp_path / 'z3'}", *common, "trainer.strategy=deepspeed", "trainer.zero_stage=3")
    ddp, z3 = losses(tmp_path / "ddp"), losses(tmp_path / "z3")
    assert sorted(ddp) == sorted(z3) == [0, 1, 2]
    for step in ddp:
        assert math.isclose(ddp[step], z3[step], rel_tol=1e-5), (step, ddp, z3)
    assert ddp[2] < ddp[0]
