"""AudioPaLM stage, unit level: the vocabulary extension leaves the pretrained text logits as they were
(1 process, and 2 gloo ranks under ZeRO-3), tied weights stay tied, the prompt carries no loss, packing
equals separate forwards, the recipe checks."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from alm.config import load_recipe
from alm.data.shards import npy_bytes
from alm.errors import UserError
from alm.models.audiopalm import AudioPalmConfig, AudioPalmLM, extended_tokenizer, layout_of, resolved_config
from alm.stages import audiopalm as stage
from alm.training.module import gathered_for_init
from helpers import REPO, env

pytestmark = pytest.mark.usefixtures("one_thread")
RECIPE = REPO / "recipes" / "tiny" / "audiopalm.yaml"
V, K = 320, 16


def save_tokenizer(path, vocab: int = V) -> None:
    """A byte-level BPE tokenizer (GPT-2 style, <|endoftext|> = BOS = EOS) fitted in the test."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab - 20, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["HELLO WORLD", "THE QUICK BROWN FOX", "a slow piano melody"] * 20, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>").save_pretrained(path)


def make_lm(path, family: str = "llama", tied: bool = True):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                           bos_token_id=0, eos_token_id=0))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                             tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0))
    model.save_pretrained(path)
    save_tokenizer(path)
    return model.eval()


def config_for(path, new_rows: str = "sample") -> AudioPalmConfig:
    config = resolved_config(json.loads((path / "config.json").read_text()), {})
    return AudioPalmConfig(pretrained=str(path), config=config, audio_tokens=K, new_rows=new_rows)


def extended(path, new_rows: str = "sample", seed: int = 0) -> AudioPalmLM:
    model = AudioPalmLM(config_for(path, new_rows))
    stage.load_pretrained(model, SimpleNamespace(model=config_for(path, new_rows), seed=seed), gathered_for_init(model))
    return model.eval()


def text_ids(n: int = 2, t: int = 12) -> torch.Tensor:
    return torch.randint(0, V, (n, t), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family, tied", [("llama", True), ("llama", False), ("gpt2", True)],
                         ids=["llama-tied", "llama-untied", "gpt2"])
def test_the_extension_leaves_text_logits_and_rows_as_they_were(tmp_path, family, tied):
    ref = make_lm(tmp_path, family, tied)
    model = extended(tmp_path)
    layout = model.layout
    assert (layout.text, layout.audio, layout.total) == (V, K, 344)  # 320 + 16 + 3 tags = 339 -> 344
    ids = text_ids()
    with torch.no_grad():
        want = ref(input_ids=ids).logits
        got = model(ids)
    assert got.shape == (2, 12, 344)
    assert torch.equal(got[..., :V], want), (got[..., :V] - want).abs().max()
    matrices = dict(model.vocab_matrices())
    for name, p in matrices.items():
        assert torch.equal(p[:V], ref.state_dict()[name]), name
        new = p[V:]
        assert torch.isfinite(new).all() and len({tuple(r.tolist()) for r in new}) == len(new)  # drawn, distinct
    emb, head = model.hf.get_input_embeddings().weight, model.hf.get_output_embeddings().weight
    assert (emb is head) == tied
    assert len(matrices) == (1 if tied else 2)


def test_new_rows_follow_the_mean_and_covariance_of_the_text_rows():
    from alm.models.audiopalm import new_rows

    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 8, generator=g)
    rows = torch.randn(4000, 8, generator=g) @ a + 3.0  # mean 3, covariance a.T a
    drawn = new_rows(rows, 20000, "sample", torch.Generator().manual_seed(1))
    assert torch.allclose(drawn.mean(0), rows.mean(0), atol=0.15)
    assert torch.allclose(torch.cov(drawn.T), torch.cov(rows.T), rtol=0.1, atol=0.15)
    mean = new_rows(rows, 3, "mean", torch.Generator())
    assert torch.allclose(mean, rows.mean(0).expand(3, 8), atol=1e-5)


def test_mean_rows_and_seeds(tmp_path):
    make_lm(tmp_path)
    a, b, c = extended(tmp_path, seed=0), extended(tmp_path, seed=0), extended(tmp_path, seed=1)
    ea, eb, ec = (m.hf.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(ea, eb) and not torch.equal(ea[V:], ec[V:]) and torch.equal(ea[:V], ec[:V])
    m = extended(tmp_path, new_rows="mean").hf.get_input_embeddings().weight
    assert torch.allclose(m[V:], m[:V].mean(0).expand(m.shape[0] - V, -1), atol=1e-6)


def test_zero3_two_ranks_extends_the_partitioned_model_exactly_as_one_process(tmp_path):
    """2 gloo ranks, zero.Init: each rank holds half the bytes from construction; the gathered model's
    text logits equal the unextended model's and its whole state (new rows included) the 1-process build's."""
    ref = make_lm(tmp_path / "lm")
    ids = text_ids()
    torch.save(ids, str(tmp_path / "r") + ".ids.pt")
    script = str(REPO / "tests" / "scripts" / "audiopalm_zero3.py")
    p = subprocess.run([sys.executable, script, str(tmp_path / "lm"), str(K), "0", str(tmp_path / "r")], cwd=REPO,
                       env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    for r in (0, 1):
        rec = json.loads((tmp_path / f"r.rank{r}.json").read_text())
        assert math.isclose(rec["local_bytes"], rec["full_bytes"] / 2, rel_tol=0.02), rec
    logits = torch.load(tmp_path / "r.logits.pt")
    with torch.no_grad():
        want = ref(input_ids=ids).logits
    assert torch.equal(logits[..., :V], want), (logits[..., :V] - want).abs().max()
    one = extended(tmp_path / "lm").state_dict()
    state = torch.load(tmp_path / "r.state.pt")
    assert state.keys() == one.keys()
    assert all(torch.equal(state[k], one[k]) for k in one), [k for k in one if not torch.equal(state[k], one[k])]


# ------------------------------------------------------------------ examples, labels, packing


@pytest.fixture
def run_cfg(tmp_path):
    make_lm(tmp_path / "lm")
    cfg = load_recipe(RECIPE, [f"model.pretrained={tmp_path / 'lm'}", f"model.audio_tokens={K}", "data.max_len=64",
                               "data.tasks=[asr, tts, continuation]"])
    stage.resolve_model_config(cfg)
    return cfg


def sample(key: str, units: list[int], text: str) -> dict:
    return {"__key__": key, "json": json.dumps({"transcript": text}).encode(), "semantic.npy": npy_bytes(np.array(units))}


def one_task(cfg, task: str):
    cfg.data.tasks = [task]
    return stage.examples(cfg)


def test_examples_are_tag_source_target_eos(run_cfg):
    layout = layout_of(run_cfg.model)
    tok = stage.base_tokenizer(run_cfg.model)
    words = tok.encode("HELLO WORLD", add_special_tokens=False)
    units = [3, 1, 4, 1, 5]
    rng = np.random.default_rng(0)
    asr = one_task(run_cfg, "asr")(sample("a", units, "HELLO WORLD"), rng)
    audio = [layout.audio_start + u for u in units]
    assert asr["tokens"].tolist() == [0, layout.tag_id("[ASR English]"), *audio, *words, 0]
    assert asr["n_prompt"] == 2 + len(units)
    tts = one_task(run_cfg, "tts")(sample("a", units, "HELLO WORLD"), rng)
    assert tts["tokens"].tolist() == [0, layout.tag_id("[TTS English]"), *words, *audio, 0]
    assert tts["n_prompt"] == 2 + len(words)
    cont = one_task(run_cfg, "continuation")(sample("a", units * 4, "x"), rng)
    t, p = cont["tokens"].tolist(), cont["n_prompt"]
    assert t[:2] == [0, layout.tag_id("[Continuation English]")] and t[2:-1] == audio * 4 and t[-1] == 0
    assert 2 + 5 <= p <= 2 + 15
    too_long = one_task(run_cfg, "asr")(sample("b", list(range(16)) * 5, "HELLO"), rng)
    assert too_long is None  # 80 audio tokens > data.max_len=64: skipped (and counted)


def test_the_prompt_carries_no_loss_and_packing_equals_separate_forwards(run_cfg):
    """Packed rows: targets are -100 on every prompt position and on padding, the next token elsewhere;
    the stage's loss equals the mean cross-entropy over the target tokens of separate, unpacked forwards."""
    rng = np.random.default_rng(0)
    make = stage.examples(run_cfg)
    exs = [make(sample(f"k{i}", list(rng.integers(0, K, size=n)), text), rng)
           for i, (n, text) in enumerate([(9, "HELLO WORLD"), (20, "THE FOX"), (5, "HELLO"), (14, "THE QUICK BROWN")])]
    batch = stage.collate(exs)
    assert batch["inputs"].shape[0] < len(exs)  # several examples share a row
    assert batch["inputs"].shape[1] <= run_cfg.data.max_len - 1
    targets = batch["targets"]
    n_target = sum(len(e["tokens"]) - e["n_prompt"] for e in exs)
    assert int((targets != -100).sum()) == n_target
    # every non-ignored target is a target-part token, in order, example by example
    assert sorted(targets[targets != -100].tolist()) == sorted(t for e in exs for t in e["tokens"][e["n_prompt"]:].tolist())
    model = AudioPalmLM(run_cfg.model)
    stage.load_pretrained(model, run_cfg, gathered_for_init(model))
    model.eval()
    with torch.no_grad():
        packed = stage.loss(model, batch)
        total, count = 0.0, 0
        for e in exs:
            t, p = torch.as_tensor(e["tokens"]), e["n_prompt"]
            logits = model(t[None, :-1])[0]
            ce = torch.nn.functional.cross_entropy(logits[p - 1 :], t[p:], reduction="sum")
            total, count = total + float(ce), count + len(t) - p
    assert math.isclose(float(packed), total / count, rel_tol=1e-5), (float(packed), total / count)


def test_pack_fills_rows_first_fit_longest_first():
    exs = [{"tokens": np.zeros(n), "n_prompt": 1, "row": 10} for n in (6, 5, 4, 3, 2)]
    rows = stage.pack(exs, 10)  # inputs 5, 4, 3, 2, 1 into rows of 9
    assert rows == [[0, 1], [2, 3, 4]]
    assert all(sum(len(exs[i]["tokens"]) - 1 for i in r) <= 9 for r in rows)


# ------------------------------------------------------------------ checks, tokenizer


def test_check_names_the_key(run_cfg, tmp_path):
    tok_dir = tmp_path / "semtok"
    tok_dir.mkdir()
    (tok_dir / "semantic_tokenizer.json").write_text(json.dumps({"n_clusters": K + 1}))
    run_cfg.data.tokenizer = str(tok_dir)
    with pytest.raises(UserError, match=r"model.audio_tokens=16 but the tokenizer .* has 17 clusters"):
        stage.check(run_cfg)
    (tok_dir / "semantic_tokenizer.json").write_text(json.dumps({"n_clusters": K}))
    run_cfg.data.language = "French"
    with pytest.raises(UserError, match=r"\[ASR French\].*not in model.task_tags"):
        stage.check(run_cfg)
    run_cfg.data.language = "English"
    run_cfg.data.task_weights = [1.0]
    with pytest.raises(UserError, match=r"data.task_weights \[1.0\]: expected 3"):
        stage.check(run_cfg)
    run_cfg.data.task_weights = [1, 2, 1]
    stage.check(run_cfg)
    run_cfg.data.max_len = 1000
    with pytest.raises(UserError, match=r"data.max_len=1000 exceeds the LM's context \(128"):
        stage.check(run_cfg)


def test_extended_tokenizer_puts_audio_tokens_and_tags_at_the_layout_ids(run_cfg):
    layout = layout_of(run_cfg.model)
    tok = extended_tokenizer(stage.base_tokenizer(run_cfg.model), layout)
    assert len(tok) == layout.text + layout.audio + len(layout.tags)  # fillers up to V, then ours
    ids = tok.encode("[TTS English]HELLO<a_3><a_15>", add_special_tokens=False)
    assert ids[0] == layout.tag_id("[TTS English]") and ids[-2:] == [layout.audio_start + 3, layout.audio_start + 15]
    assert tok.decode(ids, skip_special_tokens=True) == "HELLO"


def test_recipe_counts_parameters_without_files():
    from alm.recipes_index import count_parameters

    n = count_parameters(RECIPE)  # on the meta device, from the recipe alone (model.synthetic)
    cfg = load_recipe(RECIPE)
    layout = layout_of(cfg.model)
    assert layout.total == 456 and n > layout.total * 128


def test_init_weights_reinitialises_through_gathered_params():
    """What configure_model calls when ZeRO-3 built the model partitioned (the pass in __init__ wrote
    into empty partitions): transformers' own init, module by module inside gathered(...)."""
    import contextlib

    model = AudioPalmLM(load_recipe(RECIPE).model)
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    seen = set()
    model.init_weights(lambda params: (seen.update(map(id, params)), contextlib.nullcontext())[1])
    assert seen == {id(p) for p in model.parameters()}  # every parameter was inside a gathered()
    emb = model.hf.get_input_embeddings().weight
    assert 0.01 < float(emb.detach().std()) < 0.04 and float(model.model.norm.weight.detach().mean()) == 1.0


def test_ast_examples_translate_and_a_sample_draws_only_tasks_it_has_data_for(run_cfg):
    run_cfg.model.task_tags = [*run_cfg.model.task_tags, "[AST English French]"]
    run_cfg.data.tasks, run_cfg.data.task_weights = ["asr", "ast"], [0.0, 1.0]
    make = stage.examples(run_cfg)
    layout = layout_of(run_cfg.model)
    tok = stage.base_tokenizer(run_cfg.model)
    units = [2, 7, 1]
    with_translation = {"__key__": "t", "json": json.dumps({"transcript": "HELLO", "translation": "BONJOUR"}).encode(),
                        "semantic.npy": npy_bytes(np.array(units))}
    ex = make(with_translation, np.random.default_rng(0))
    words = tok.encode("BONJOUR", add_special_tokens=False)
    assert ex["tokens"].tolist() == [0, layout.tag_id("[AST English French]"), *[layout.audio_start + u for u in units],
                                     *words, 0]
    # no translation: AST (weight 1) is impossible, ASR (weight 0) is the only task left -> None, not a wrong pair
    assert make(sample("u", units, "HELLO"), np.random.default_rng(0)) is None
    run_cfg.data.task_weights = [1.0, 1.0]
    ex = stage.examples(run_cfg)(sample("u", units, "HELLO"), np.random.default_rng(0))
    assert ex["tokens"][1] == layout.tag_id("[ASR English]")
