"""The tiny MusicLM twins (recipes/tiny/musiclm_{semantic,coarse}.yaml) on a fresh clone: `synthetic` data
joins the synthetic set's MuLan tokens from a tiny CLAP alm trains once (alm.tokenizers.mulan.synthetic_mulan),
so text steers: a held-out caption's MuLan tokens share the first level with its clip's audio tokens."""

from __future__ import annotations

import glob
import json

import numpy as np

from alm.config import load_recipe
from alm.data.cache import cache_root, resolve_synthetic
from alm.stages import get_stage

from helpers import REPO

TWINS = {"semantic": REPO / "recipes" / "tiny" / "musiclm_semantic.yaml",
         "coarse": REPO / "recipes" / "tiny" / "musiclm_coarse.yaml"}


def test_tiny_musiclm_twins_resolve_their_mulan_tokens_and_text_lands_on_the_audio_codes(tmp_path):
    from alm.data.shards import npy_load, read_shard
    from alm.embed import load_encoder
    from alm.tokenizers.mulan import MEMBER, MulanTokenizer, synthetic_clap

    for stage, recipe in TWINS.items():
        cfg = load_recipe(recipe, [f"run_dir={tmp_path / stage}"])
        resolve_synthetic(cfg)
        assert cfg.data.train_shards.count(" + ") == (1 if stage == "semantic" else 2)
        assert cfg.data.train_shards.endswith("synthetic-mulan-v1-4x16/train-*.tar"), cfg.data.train_shards
        assert cfg.data.condition_tokenizer.endswith("synthetic-mulan-v1-4x16/mulan_tokenizer")
        get_stage(cfg.stage).check(cfg)  # the tokenizer has 4 levels x 16 codes, the vocabulary fits them
    mulan = cache_root() / "synthetic-mulan-v1-4x16"
    tok = MulanTokenizer.load(mulan / "mulan_tokenizer")
    captions, audio = [], []
    for url in sorted(glob.glob(str(mulan / "val-*.tar"))):
        for sample in read_shard(url):
            captions.append(json.loads(sample["json"])["captions"][0])
            audio.append(npy_load(sample[MEMBER]))
    text = tok(load_encoder(str(synthetic_clap(cache_root()))).texts(captions))
    agree = float((np.stack(audio)[:, 0] == text[:, 0]).mean())
    assert len(captions) == 24 and agree >= 4 / 16, agree  # measured 0.625; chance ~ 1/16
    # the semantic twin's joined samples make conditioned examples its model trains on
    from alm.eval.heldout import held_out_samples
    from alm.export import build_model
    from alm.stages.lm import collate, lm_loss
    from alm.stages.semantic import make_example

    cfg = load_recipe(TWINS["semantic"], [f"run_dir={tmp_path / 'run'}"])
    resolve_synthetic(cfg)
    rng = np.random.default_rng(0)
    examples = [make_example(s, rng, cfg.data.max_len, cfg.model) for s in held_out_samples(cfg.data.train_shards, 4)]
    assert all(e["n_prefix"] == 4 + 1 for e in examples)  # 4 MuLan ids, then BOS
    assert all(66 <= t < 130 for e in examples for t in e["tokens"][:4])  # the condition rows follow K + 2
    model = build_model(cfg)
    loss = lm_loss(model, collate(examples))
    loss.backward()
    assert np.isfinite(loss.item())
