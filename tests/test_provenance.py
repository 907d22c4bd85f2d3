"""Shards carry what made them; the recipe's tokenizer/codec must be those, or are taken from the shards."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from alm.config import load_recipe
from alm.data.cache import cache_root
from alm.data.provenance import resolve_provenance
from alm.errors import UserError

TINY = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "semantic.yaml")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    from alm.data.cache import cached
    from alm.data.synthetic import write_synthetic
    from alm.stages.acoustic import TINY_CODEC
    from alm.tokenizers.codec import load_codec, make_tiny_codec, tokenize_codec_shards
    from alm.tokenizers.semantic import SemanticTokenizerConfig, run

    root = tmp_path_factory.mktemp("prov")
    audio = root / "audio"
    write_synthetic(audio, num_clips=4, val_clips=2, seconds=1.0, shard_size=2)
    for name, k in (("semA", 4), ("semB", 5)):
        run(str(audio), str(root / name), SemanticTokenizerConfig(features="logmel", n_clusters=k), progress=False)
    tiny = cached(cache_root() / TINY_CODEC, lambda d: make_tiny_codec(d, seed=0), "the tiny codec")  # shared
    shutil.copytree(tiny, root / "codecA")
    other = load_codec(tiny)
    with torch.no_grad():  # another codec: the same architecture, other weights
        other.quantizer.layers[0].codebook.embed.mul_(1.5)
    other.save_pretrained(root / "codecB")
    for name in ("codecA", "codecB"):
        tokenize_codec_shards(str(audio), root / f"codes{name[-1]}", str(root / name), progress=False)
    return root


def cfg(**data):
    c = load_recipe(TINY, ["run_dir=unused"])
    c.data.tokenizer = c.data.codec = c.data.val_shards = None
    for k, v in data.items():
        setattr(c.data, k, v)
    return c


def test_tokenizer_taken_from_the_shards_or_checked(sets):
    c = cfg(train_shards=f"{sets}/semA/train-*.tar", val_shards=f"{sets}/semA/val-*.tar")
    lines = resolve_provenance(c)
    assert c.data.tokenizer == str(sets / "semA" / "tokenizer") and "taken from the shards" in lines[0]
    c = cfg(train_shards=str(sets / "semA"), tokenizer=str(sets / "semA" / "tokenizer"))
    assert "is the tokenizer that made the shards" in resolve_provenance(c)[0]
    copy = sets / "copy-of-A"  # the same files elsewhere (e.g. an export's tokenizer/) are the same tokenizer
    shutil.copytree(sets / "semA" / "tokenizer", copy, dirs_exist_ok=True)
    resolve_provenance(cfg(train_shards=str(sets / "semA"), tokenizer=str(copy)))
    with pytest.raises(UserError, match=r"data.tokenizer=.*semB/tokenizer \(.*n_clusters=5.*is not the tokenizer .*semA"):
        resolve_provenance(cfg(train_shards=str(sets / "semA"), tokenizer=str(sets / "semB" / "tokenizer")))
    with pytest.raises(UserError, match="no such directory"):
        resolve_provenance(cfg(train_shards=str(sets / "semA"), tokenizer=str(sets / "nope")))


def test_sets_of_different_tokenizers_or_codecs_do_not_join(sets):
    with pytest.raises(UserError, match="data.train_shards: joins shard sets made by different tokenizers"):
        resolve_provenance(cfg(train_shards=f"{sets}/semA/train-*.tar::{sets}/semB/val-*.tar"))
    with pytest.raises(UserError, match="data.val_shards were made by the tokenizer"):
        resolve_provenance(cfg(train_shards=f"{sets}/semA/train-*.tar", val_shards=f"{sets}/semB/val-*.tar"))
    with pytest.raises(UserError, match="joins shard sets made by different codecs"):
        resolve_provenance(cfg(train_shards=f"{sets}/codesA/train-*.tar + {sets}/codesB/train-*.tar"))
    with pytest.raises(UserError, match="different tokenizers"):
        resolve_provenance(cfg(train_shards=f"{sets}/semA/train-*.tar + {sets}/semB/train-*.tar"))


def test_codec_taken_from_the_shards_or_checked(sets):
    meta = json.loads((sets / "codesA" / "codec.json").read_text())
    assert meta["path"] == str((sets / "codecA").resolve()) and len(meta["files_sha256"]) == 64
    c = cfg(train_shards=f"{sets}/semA/train-*.tar + {sets}/codesA/train-*.tar")
    resolve_provenance(c)
    assert c.data.codec == str((sets / "codecA").resolve()) and c.data.tokenizer == str(sets / "semA" / "tokenizer")
    c = cfg(train_shards=str(sets / "codesA"), codec=str(sets / "codecA"))
    assert "is the codec that made the codes" in resolve_provenance(c)[0]
    with pytest.raises(UserError, match=r"data.codec=.*codecB is not the codec that made the codes .*codesA/codec.json"):
        resolve_provenance(cfg(train_shards=str(sets / "codesA"), codec=str(sets / "codecB")))
    # a codec re-saved elsewhere (other files, same weights) is still the same codec
    from alm.tokenizers.codec import load_codec

    load_codec(sets / "codecA").save_pretrained(sets / "resaved")
    resolve_provenance(cfg(train_shards=str(sets / "codesA"), codec=str(sets / "resaved")))


def test_user_shards_with_synthetic_leftovers(sets):
    fake = Path(cache_root()) / "synthetic-v1-fake"  # what resolve_synthetic puts in: paths into the cache
    shutil.copytree(sets / "semB", fake, dirs_exist_ok=True)
    with pytest.raises(UserError, match="data.val_shards is still the synthetic demo set .* data.val_shards=null"):
        resolve_provenance(cfg(train_shards=str(sets / "semA"), val_shards=f"{fake}/val-*.tar",
                               tokenizer=str(fake / "tokenizer")))
    c = cfg(train_shards=str(sets / "semA"), tokenizer=str(fake / "tokenizer"))
    assert "the synthetic demo tokenizer) taken from the shards" in resolve_provenance(c)[0]
    assert c.data.tokenizer == str(sets / "semA" / "tokenizer")
    c = cfg(train_shards=str(sets / "codesA"), val_shards=str(sets / "codesA"), codec="synthetic")
    resolve_provenance(c)  # both shard sets overridden, data.codec left `synthetic`: the codes' own codec
    assert c.data.codec == str((sets / "codecA").resolve())
    with pytest.raises(UserError, match="data.tokenizer is still the synthetic demo tokenizer .* data.tokenizer=null"):
        resolve_provenance(cfg(train_shards=str(sets / "codesA"), tokenizer="synthetic"))
    # all-synthetic data is consistent by construction and passes
    c = cfg(train_shards=f"{fake}/train-*.tar", val_shards=f"{fake}/val-*.tar", tokenizer=str(fake / "tokenizer"))
    resolve_provenance(c)
    assert os.path.samefile(c.data.tokenizer, fake / "tokenizer")
