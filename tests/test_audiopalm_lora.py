"""AudioPaLM with LoRA on the pretrained body (model.lora_rank > 0): after training steps with AdamW (weight
decay on), the text rows [0, V) of the vocabulary matrices and every body weight are bit-equal to the
start while the new rows and the adapters moved (tied / untied Llama, GPT-2's Conv1D c_attn); the
export's transformers folder holds merged plain weights whose logits and greedy decoding match the
adapted model; init_from of a LoRA export (with or without adapters in the new run); bad targets."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch

from alm.config import load_recipe
from alm.errors import UserError
from alm.models.audiopalm import AudioPalmLM, merged_lm
from alm.models.lora import is_adapter
from alm.stages import audiopalm as stage
from alm.training.module import gathered_for_init
from alm.training.optim import param_groups
from test_audiopalm import RECIPE, V, config_for, make_lm

pytestmark = pytest.mark.usefixtures("one_thread")
TARGETS = {"llama": "q_proj,v_proj", "gpt2": "c_attn"}


def lora_model(path, family: str = "llama", rank: int = 4, **kw) -> AudioPalmLM:
    mc = dataclasses.replace(config_for(path), lora_rank=rank, lora_alpha=8.0, lora_targets=TARGETS[family], **kw)
    model = AudioPalmLM(mc)
    stage.load_pretrained(model, SimpleNamespace(model=mc, seed=0), gathered_for_init(model))
    return model


def batch(model: AudioPalmLM, n: int = 4, t: int = 16) -> torch.Tensor:
    """Rows mixing text and audio / tag ids: every vocabulary row gets a gradient without the hook."""
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, model.layout.total, (n, t), generator=g)


def train_steps(model: AudioPalmLM, steps: int = 3) -> None:
    cfg = load_recipe(RECIPE)  # optim: AdamW lr 1e-3, weight decay 0.1
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=1e-2, betas=(0.9, 0.95))
    ids = batch(model)
    model.train()
    for _ in range(steps):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()


@pytest.mark.parametrize("family, tied", [("llama", True), ("llama", False), ("gpt2", True)],
                         ids=["llama-tied", "llama-untied", "gpt2-conv1d"])
def test_lora_trains_only_adapters_and_new_rows(tmp_path, family, tied):
    make_lm(tmp_path, family, tied)
    model = lora_model(tmp_path, family)
    vocab = dict(model.vocab_matrices())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in dict(model.named_parameters()) if is_adapter(n)} | set(vocab)
    assert all(n.endswith(tuple(f"{t}.lora_{x}" for t in TARGETS[family].split(",") for x in "ab"))
               for n in trainable - set(vocab))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model)
    emb, head = model.hf.get_input_embeddings().weight, model.hf.get_output_embeddings().weight
    assert (emb is head) == tied
    for name, p in model.named_parameters():
        if name in vocab:
            assert torch.equal(p[:V], before[name][:V]), f"{name}: text rows moved"
            assert not torch.equal(p[V:], before[name][V:]), f"{name}: new rows did not train"
        elif name.endswith("lora_b"):
            assert not torch.equal(p, before[name]), name  # B starts at 0 and trains
        elif not is_adapter(name):
            assert torch.equal(p, before[name]), f"{name}: a frozen body weight moved"
    ids = batch(model)
    with torch.no_grad():  # merging folds each adapter in its base layout (GPT-2's Conv1D is (in, out))
        assert torch.allclose(merged_lm(model)(ids), model(ids), atol=1e-5)


def test_merged_weights_equal_the_adapted_model(tmp_path):
    make_lm(tmp_path, "llama", tied=True)
    model = lora_model(tmp_path, lora_dropout=0.1)
    train_steps(model)
    plain = merged_lm(model)
    assert not any(is_adapter(n) for n in plain.state_dict()) and plain.state_dict().keys() == \
        {k for k in model.state_dict() if not is_adapter(k)}
    assert plain.hf.get_output_embeddings().weight is plain.hf.get_input_embeddings().weight
    ids = batch(model)
    with torch.no_grad():
        assert torch.allclose(plain(ids), model(ids), atol=1e-5), (plain(ids) - model(ids)).abs().max()
        base = lora_model(tmp_path)
        assert not torch.allclose(base(ids)[..., :V], model(ids)[..., :V], atol=1e-3)  # the adapters did change it


def test_bad_targets_are_one_line_errors_naming_candidates(tmp_path):
    make_lm(tmp_path / "llama")
    make_lm(tmp_path / "gpt2", "gpt2")
    mc = config_for(tmp_path / "llama")
    with pytest.raises(UserError, match=r"'c_attn' matches no module .*candidates: q_proj, k_proj, v_proj, o_proj"):
        AudioPalmLM(dataclasses.replace(mc, lora_rank=2, lora_targets="q_proj,c_attn"))
    with pytest.raises(UserError, match=r"'self_attn' matches layers.0.self_attn \(LlamaAttention\), which is not"):
        AudioPalmLM(dataclasses.replace(mc, lora_rank=2, lora_targets="self_attn"))
    with pytest.raises(UserError, match=r"'q_proj' matches no module of the GPT2Model; candidates: c_attn, c_proj"):
        AudioPalmLM(dataclasses.replace(config_for(tmp_path / "gpt2"), lora_rank=2, lora_targets="q_proj"))
    with pytest.raises(UserError, match="model.lora_targets is empty"):
        AudioPalmLM(dataclasses.replace(mc, lora_rank=2, lora_targets=" , "))
    with pytest.raises(UserError, match="model.lora_rank=-1"):
        AudioPalmLM(dataclasses.replace(mc, lora_rank=-1))


def test_check_refuses_a_bad_target_before_training(tmp_path):
    make_lm(tmp_path / "lm", "gpt2")
    cfg = load_recipe(RECIPE, [f"model.pretrained={tmp_path / 'lm'}", "model.audio_tokens=16", "model.lora_rank=2",
                               "data.max_len=64"])
    (tmp_path / "semtok").mkdir()
    (tmp_path / "semtok" / "semantic_tokenizer.json").write_text(json.dumps({"n_clusters": 16}))
    cfg.data.tokenizer = str(tmp_path / "semtok")
    with pytest.raises(UserError, match=r"model.lora_targets: 'q_proj' matches no module .*candidates: c_attn"):
        stage.check(cfg)  # the recipe's Llama targets on a GPT-2
    cfg.model.lora_targets = "c_attn"
    stage.check(cfg)


# ------------------------------------------------------------------ export and init_from


@pytest.fixture
def lora_export(tmp_path):
    """A trained LoRA model of a tiny untied Llama written by `alm export`'s writer -> (export dir, model, cfg)."""
    from alm.export import write_export

    make_lm(tmp_path / "lm", "llama", tied=False)
    cfg = load_recipe(RECIPE, [f"model.pretrained={tmp_path / 'lm'}", "model.audio_tokens=16", "model.lora_rank=4",
                               "model.lora_alpha=8.0", "data.tokenizer=null"])
    stage.resolve_model_config(cfg)
    model = AudioPalmLM(cfg.model)
    stage.load_pretrained(model, cfg, gathered_for_init(model))
    train_steps(model)
    return write_export(model, cfg, tmp_path / "export"), model, cfg


def test_export_transformers_folder_is_merged_and_decodes_as_alm_generate(lora_export):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from alm.export import load_pretrained
    from alm.generate_audiopalm import Export, decode

    out, model, cfg = lora_export
    hf_dir = out / "transformers"
    with safe_open(str(hf_dir / "model.safetensors"), "pt") as f:
        assert not any(is_adapter(k) for k in f.keys())
    with safe_open(str(out / "model.safetensors"), "pt") as f:  # alm's own weights keep the adapters
        assert any(is_adapter(k) for k in f.keys())
    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    ours = load_pretrained(out)  # rebuilt adapted (config.yaml: model.lora_rank=4)
    assert ours.lora and json.loads((hf_dir / "config.json").read_text())["vocab_size"] == model.layout.total
    ids = batch(model)
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=ids).logits, ours(ids), atol=1e-5)
    ex = Export(str(out))
    layout = ex.layout
    prompt = ex.prompt("asr", [layout.audio_start + u for u in (3, 1, 4, 1, 5, 9, 2, 6)])
    got = decode(ex, "asr", prompt, max_new_tokens=10)
    x = torch.tensor([prompt])
    with torch.no_grad():
        want = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=10, do_sample=False,
                           suppress_tokens=list(range(V, layout.total)), eos_token_id=0, pad_token_id=0)[0, len(prompt):]
    want = want.tolist()
    assert got == (want[: want.index(0)] if 0 in want else want) and len(got) > 0


@pytest.mark.parametrize("rank", [4, 0], ids=["same-adapters", "no-adapters"])
def test_init_from_a_lora_export(lora_export, rank):
    """init_from=<LoRA export>: a run with the same adapters loads them as they are; a run without
    adapters (or with others) gets them folded into its base weights. Either starts as the export."""
    from alm.training.init_from import load_export_weights

    out, model, cfg = lora_export
    new = dataclasses.replace(cfg, init_from=str(out))
    new.model = dataclasses.replace(cfg.model, lora_rank=rank)
    fresh = AudioPalmLM(new.model)
    load_export_weights(fresh, new, gathered_for_init(fresh))
    ids = batch(model)
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(ids), model(ids), atol=1e-5)
    if rank:
        assert torch.equal(fresh.model.layers[0].self_attn.q_proj.lora_b, model.model.layers[0].self_attn.q_proj.lora_b)


# ------------------------------------------------------------------ 2 gloo ranks, ZeRO-3


@pytest.mark.slow
def test_zero3_two_ranks_keeps_text_rows_and_body_bit_equal(tmp_path):
    """`alm train` of the tiny recipe with LoRA on 2 gloo ranks under DeepSpeed ZeRO-3 (every parameter
    partitioned from construction, the grad hook on the partitioned matrices): in the consolidated
    checkpoint the text rows and the body equal the one-process start bit for bit; the new rows and
    the adapters' B (0 at the start) trained."""
    from alm.export import consolidated_state_dict, find_checkpoint
    from alm.training.trainer import config_from_checkpoint
    from helpers import alm

    run = tmp_path / "run"
    alm("train", str(RECIPE), f"run_dir={run}", "model.lora_rank=4", "trainer.devices=2", "trainer.strategy=deepspeed",
        "trainer.zero_stage=3", "trainer.max_steps=2", "trainer.ckpt_every_n_steps=2", "trainer.val_every_n_steps=0",
        "trainer.progress_bar=false", "trainer.threads=1", "trainer.accelerator=cpu", "data.num_workers=0",
        "data.batch_size=4", "data.shuffle_buffer=8", "wandb.enabled=false")
    step_dir = find_checkpoint(run)
    trained = consolidated_state_dict(step_dir)
    cfg = config_from_checkpoint(step_dir)
    start = AudioPalmLM(cfg.model)
    stage.load_pretrained(start, cfg, gathered_for_init(start))  # new rows: seeded by cfg.seed, as in the run
    first = start.state_dict()
    v = start.layout.text
    ids = {id(p) for _, p in start.vocab_matrices()}
    vocab = {n for n, p in start.named_parameters(remove_duplicate=False) if id(p) in ids}  # tied: both names
    assert trained.keys() == first.keys()
    for name, t in trained.items():
        if name in vocab:
            assert torch.equal(t[:v], first[name][:v]), f"{name}: text rows moved"
            assert not torch.equal(t[v:], first[name][v:]), f"{name}: new rows did not train"
        elif name.endswith("lora_b"):
            assert t.abs().sum() > 0, name
        elif not is_adapter(name):
            assert torch.equal(t, first[name]), f"{name}: a frozen body weight moved"
