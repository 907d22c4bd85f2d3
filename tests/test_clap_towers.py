"""Pretrained transformers towers in alm's CLAP (model.audio_tower / model.text_tower): parity of the
pooled outputs with transformers on tiny random models, a short mixed-tower run exported and embedded,
and a 2-rank ZeRO-3 build with a pretrained tower (tests/scripts/clap_towers_zero3.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from alm.models.clap import ClapConfig

REPO = Path(__file__).resolve().parents[1]
WORDS = ("a dog barks rain falls on roof piano plays slow melody birds sing at dawn car passes by people talk in "
         "room bell rings wind the trees cat meows water drips sine tone rises noise bursts chord of three notes "
         "speech babble").split()


def make_towers(out: Path) -> dict[str, Path]:
    """Tiny random AST, RoBERTa and BERT folders (model + feature extractor / tokenizer, save_pretrained)
    and a tiny whole CLAP folder (its audio half: HTS-AT, its text half: ClapTextModel)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (ASTConfig, ASTFeatureExtractor, ASTModel, BertConfig, BertModel, BertTokenizer,
                              RobertaConfig, RobertaModel, RobertaTokenizer)

    from alm.models.clap_hf import TINY_CORPUS, make_tiny_hf_clap

    torch.manual_seed(0)
    dirs = {name: out / name for name in ("ast", "roberta", "bert")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    ast = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8,
                    num_mel_bins=32, max_length=48, frequency_stride=8, time_stride=8, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
    ASTModel(ast).eval().save_pretrained(dirs["ast"])
    ASTFeatureExtractor(num_mel_bins=32, max_length=48).save_pretrained(dirs["ast"])
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(TINY_CORPUS) * 4, vocab_size=400, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(dirs["roberta"]))
    rtok = RobertaTokenizer.from_pretrained(str(dirs["roberta"]), model_max_length=40)
    rtok.save_pretrained(dirs["roberta"])
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    RobertaModel(RobertaConfig(vocab_size=len(rtok), max_position_embeddings=42, **small),
                 add_pooling_layer=False).eval().save_pretrained(dirs["roberta"])
    (dirs["bert"] / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                                       *sorted(set(WORDS))]) + "\n")
    btok = BertTokenizer.from_pretrained(str(dirs["bert"]), model_max_length=40)
    btok.save_pretrained(dirs["bert"])
    BertModel(BertConfig(vocab_size=len(btok), max_position_embeddings=40, **small)).eval().save_pretrained(dirs["bert"])
    dirs["clap"] = make_tiny_hf_clap(out / "clap")
    return dirs


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> dict[str, Path]:
    return make_towers(tmp_path_factory.mktemp("towers"))


def tower_model(audio: str = "alm", text: str = "alm"):
    """A Clap with the given towers, configs resolved and pretrained weights loaded (what alm train does)."""
    from alm.models import hf_towers
    from alm.models.clap import Clap
    from alm.stages.clap import load_pretrained

    mc = ClapConfig(audio_tower=audio, text_tower=text, embed_dim=16, text_vocab_size=64, audio_dim=32, text_dim=32,
                    audio_layers=1, text_layers=1, max_seconds=0.5)
    for side, src in (("audio", audio), ("text", text)):
        if src != "alm":
            setattr(mc, f"{side}_hf_config", hf_towers.resolve_tower_config(src, side))
    model = Clap(mc)
    load_pretrained(model, SimpleNamespace(model=mc), hf_towers.no_gather)
    return model.eval(), mc


def clips(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [0.1 * rng.standard_normal(int(size * (0.4 + 0.6 * i / max(1, n - 1)))).astype(np.float32) for i in range(n)]


@pytest.mark.parametrize("family", ["ast", "clap"])
def test_audio_tower_pooled_output_equals_transformers(towers, family):
    """alm's pretrained audio tower before the projection == transformers' pooled output on the same
    features (AST: pooler_output, the mean of CLS and distillation; HTS-AT: pooler_output)."""
    from transformers import ASTModel, ClapModel

    from alm.models.hf_towers import audio_front_end

    model, mc = tower_model(audio=str(towers[family]))
    front = audio_front_end(mc)
    features, is_longer = front.batch(clips(3, front.window))
    with torch.no_grad():
        got = model.audio_pooled(features, is_longer)
        if family == "ast":
            want = ASTModel.from_pretrained(str(towers["ast"])).eval()(input_values=features).pooler_output
        else:
            ref = ClapModel.from_pretrained(str(towers["clap"])).eval()
            want = ref.audio_model(input_features=features, is_longer=is_longer).pooler_output
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    emb = model.encode_features(features, is_longer)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("family", ["roberta", "bert", "clap"])
def test_text_tower_pooled_output_equals_transformers(towers, family):
    """RoBERTa / BERT: the mean of the real tokens' last hidden states; ClapTextModel: its pooler_output."""
    from transformers import AutoModel, ClapModel

    from alm.models.hf_towers import text_front_end

    model, mc = tower_model(text=str(towers[family]))
    front = text_front_end(mc)
    texts = ["a dog barks", "rain falls on a roof while birds sing at dawn", "bell"]
    ids, mask = front.batch([front.ids(t) for t in texts])
    assert (ids[~mask] == front.pad_id).all() and mask.sum(1).tolist() != [mask.shape[1]] * 3
    with torch.no_grad():
        got = model.text_pooled(ids, mask)
        if family == "clap":
            ref = ClapModel.from_pretrained(str(towers["clap"])).eval()
            want = ref.text_model(input_ids=ids, attention_mask=mask.long()).pooler_output
        else:
            ref = AutoModel.from_pretrained(str(towers[family]), add_pooling_layer=False).eval()
            hidden = ref(input_ids=ids, attention_mask=mask.long()).last_hidden_state
            w = mask[..., None].float()
            want = (hidden * w).sum(1) / w.sum(1)
        alone = torch.cat([model.text_pooled(*front.batch([front.ids(t)])) for t in texts])
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert torch.allclose(got, alone, atol=1e-5)  # padding in a batch changes nothing


@pytest.mark.parametrize("audio,text,layers", [("ast", "roberta", 2 + 2), ("clap", "clap", None)])
def test_activation_checkpointing_wraps_the_pretrained_towers_layers(towers, audio, text, layers):
    """trainer.activation_checkpointing on pretrained towers: the innermost block lists (AST / RoBERTa
    encoder.layer, HTS-AT's per-stage blocks and ClapText's encoder.layer) are checkpointed, with the
    loss and gradients of the plain model."""
    from alm.models.hf_towers import audio_front_end, text_front_end
    from alm.stages.contrastive_loss import contrastive_loss
    from alm.training.module import block_lists, checkpoint_blocks

    def run(checkpointed: bool):
        torch.manual_seed(0)  # the same projections
        model, mc = tower_model(audio=str(towers[audio]), text=str(towers[text]))
        af, tf = audio_front_end(mc), text_front_end(mc)
        features, is_longer = af.batch(clips(3, af.window))
        ids, mask = tf.batch([tf.ids(t) for t in ("a dog barks", "rain on a roof", "a bell rings twice")])
        lists = block_lists(model)
        calls = []  # a module inside each list's first block: runs again in the backward pass when recomputed
        for blocks in lists:
            next(blocks[0].children()).register_forward_hook(lambda *_: calls.append(1))
        wrapped = checkpoint_blocks(model) if checkpointed else 0
        a, t = model.encode_features(features, is_longer), model.encode_text(ids, mask)
        loss = contrastive_loss(a, t, model.scale())
        loss.backward()
        return lists, wrapped, len(calls), loss.item(), {k: p.grad for k, p in model.named_parameters() if p.grad is not None}

    lists, _, plain_calls, plain_loss, plain_grads = run(False)
    _, n, calls, loss, grads = run(True)
    assert plain_calls == len(lists) and calls == 2 * len(lists)
    nested = [i for i, a in enumerate(lists) for j, b in enumerate(lists)
              if i != j and any(m is b for m in a.modules())]
    assert lists and not nested  # innermost lists only: no block is checkpointed inside another
    assert n == sum(len(x) for x in lists) and (layers is None or n == layers)
    assert loss == pytest.approx(plain_loss, abs=1e-6) and grads.keys() == plain_grads.keys()
    assert all(torch.allclose(grads[k], plain_grads[k], atol=1e-6) for k in grads)


def test_every_tower_parameter_is_loaded_and_config_errors_are_named(towers, tmp_path):
    from alm.errors import UserError
    from alm.models import hf_towers

    model, mc = tower_model(audio=str(towers["ast"]), text=str(towers["roberta"]))
    from safetensors.torch import load_file

    stored = load_file(str(towers["roberta"] / "model.safetensors"))
    ours = dict(model.text.model.named_parameters())
    key_map = hf_towers.tower_key_map(model.text, "text")
    assert {key_map(k) for k in stored} >= set(ours)
    for k, v in stored.items():
        if key_map(k) in ours:
            assert torch.equal(ours[key_map(k)], v), k
    with pytest.raises(UserError, match="not a supported audio tower"):
        hf_towers.resolve_tower_config(str(towers["roberta"]), "audio")
    with pytest.raises(ValueError, match="model.audio_hf_config"):
        ClapConfig(audio_tower=str(towers["ast"]), text_vocab_size=8).require_tower_configs()
    with pytest.raises(ValueError, match="model.tower=hf is a whole transformers CLAP"):
        ClapConfig(tower="hf", hf_config={"a": 1}, text_tower=str(towers["roberta"])).validate()


# the tiny recipe, smaller (tests/test_clap.py FAST_CLAP), few steps
FAST_TOWERS = ["trainer.progress_bar=false", "trainer.accelerator=cpu", "trainer.threads=1", "trainer.val_every_n_steps=4",
               "trainer.val_batches=1",
               "trainer.max_steps=4", "model.audio_layers=1", "model.text_layers=1", "model.audio_dim=32",
               "model.text_dim=32", "model.embed_dim=16", "data.batch_size=8", "data.shuffle_buffer=16",
               "data.num_workers=1", "trainer.ckpt_every_n_steps=4", "wandb.enabled=false"]


@pytest.mark.slow
def test_mixed_towers_train_export_and_embed(towers, tmp_path):
    """AST audio + alm text on the tiny recipe: trains 4 steps, validates (retrieval over the 24 held-out
    clips through the AST front end), exports (front end inside), and `alm embed` on the export gives
    L2-normalised rows in input order, each equal to its input embedded alone."""
    from helpers import alm, losses

    from alm.embed import load_encoder
    from alm.models.hf_towers import FRONTEND_DIR

    run, export = tmp_path / "run", tmp_path / "export"
    alm("train", str(REPO / "recipes" / "tiny" / "clap.yaml"), f"run_dir={run}", *FAST_TOWERS,
        f"model.audio_tower={towers['ast']}")
    assert sorted(losses(run)) == list(range(4)) and all(math.isfinite(v) for v in losses(run).values())
    from alm.training.loggers import read_metrics

    val = [m for m in read_metrics(run).values() if "val/heldout_clips" in m]  # validation through the AST front end
    assert len(val) == 1 and val[0]["val/heldout_clips"] == 24 and 0 < val[0]["val/text_to_audio/mean_rank"] <= 24
    recorded = (run / "config.yaml").read_text()
    assert "audio-spectrogram-transformer" in recorded  # the AST config travels in the run's config
    from alm.cli import main  # export and embed in this process: the same CLI code, two interpreter starts saved

    assert main(["export", str(run), "--out", str(export)]) == 0
    assert (export / FRONTEND_DIR["audio"] / "preprocessor_config.json").is_file()
    meta = json.loads((export / "export.json").read_text())
    assert meta["towers"]["audio"]["model_type"] == "audio-spectrogram-transformer"
    texts = ["a dog barks", "", "a bell rings"]
    import soundfile as sf

    wavs = []
    for i, clip in enumerate(clips(3, 24000, seed=3)):  # the last one is longer than the 0.5 s window
        wavs.append(str(tmp_path / f"{i}.wav"))
        sf.write(wavs[-1], clip, 16000)
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    hidden = towers["ast"].with_name("ast-hidden")
    towers["ast"].rename(hidden)  # the export alone: nothing read from the pretrained folder
    try:
        assert main(["embed", str(export), "--texts", str(tmp_path / "t.txt"), "--out", str(tmp_path / "t.npy")]) == 0
        assert main(["embed", str(export), "--audio", *wavs, "--out", str(tmp_path / "a.npy"), "--batch-size", "2"]) == 0
        enc = load_encoder(export)
    finally:
        hidden.rename(towers["ast"])
    t, a = np.load(tmp_path / "t.npy"), np.load(tmp_path / "a.npy")
    assert t.shape == (3, 16) and a.shape == (3, 16) and t.dtype == a.dtype == np.float32
    assert np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5) and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    for i, text in enumerate(texts):  # row i is text i, embedded alone
        assert np.allclose(t[i], enc.texts([text])[0], atol=1e-5)
    assert np.allclose(a[::-1], enc.files(wavs[::-1]), atol=1e-5)  # input order, independent of the others


@pytest.mark.slow
def test_zero3_two_ranks_partition_pretrained_towers_and_match_one_process(towers, tmp_path):
    """2 gloo ranks under DeepSpeed zero.Init: an AST + RoBERTa CLAP and a whole converted CLAP
    (model.tower=hf) are built partitioned (each rank holds about half the parameter bytes), loaded
    (pretrained towers / converted weights) and give the one-process embeddings and loss."""
    out = tmp_path / "z3"
    p = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "clap_towers_zero3.py"), str(towers["ast"]),
                        str(towers["roberta"]), str(towers["clap"]), str(out)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-4000:]
    for case in ("towers", "hf"):
        ranks = [json.loads(Path(f"{out}.{case}.rank{r}.json").read_text()) for r in range(2)]
        full = ranks[0]["full_bytes"]
        assert all(abs(r["local_bytes"] / full - 0.5) < 0.05 for r in ranks), (case, ranks)
        assert sum(r["local_bytes"] for r in ranks) >= full
        got = torch.load(f"{out}.{case}.emb.pt")
        want = torch.load(f"{out}.{case}.ref.pt")
        for k in ("audio", "text"):
            assert torch.allclose(got[k], want[k], atol=1e-5), (case, k, (got[k] - want[k]).abs().max())
        assert math.isclose(float(got["loss"]), float(want["loss"]), rel_tol=1e-5), (case, got["loss"], want["loss"])


def test_check_resolves_the_tower_configs_and_names_mismatches(towers, tmp_path):
    """The stage's check fills model.{audio,text}_hf_config from the towers' config.json (what the run's
    config.yaml records); stated keys win, and a front end that does not fit its tower is named."""
    from alm.config import load_recipe
    from alm.errors import UserError
    from alm.stages.clap import check

    def cfg(*overrides):
        return load_recipe(REPO / "recipes" / "tiny" / "clap.yaml",
                           [f"run_dir={tmp_path / 'run'}", "data.tokenizer=null", f"model.audio_tower={towers['ast']}",
                            f"model.text_tower={towers['roberta']}", *overrides])

    c = cfg()
    check(c)
    assert c.model.audio_hf_config["model_type"] == "audio-spectrogram-transformer"
    assert c.model.audio_hf_config["max_length"] == 48 and c.model.text_hf_config["hidden_size"] == 32
    stated = cfg()
    stated.model.audio_hf_config = {"model_type": "audio-spectrogram-transformer", "max_length": 64}
    with pytest.raises(UserError, match="the AST config has max_length=64, its feature extractor 48"):
        check(stated)
    stated = cfg()
    stated.model.text_hf_config = {"model_type": "bert"}
    with pytest.raises(UserError, match="model_type 'bert', but model.text_tower=.* is a 'roberta'"):
        check(stated)
    with pytest.raises(UserError, match="not a supported text tower"):
        check(cfg(f"model.text_tower={towers['ast']}"))
