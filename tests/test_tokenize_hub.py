"""Models named by hub id load from the HF cache offline; paths stay paths; the rest is a one-line error.

The hub is faked the way huggingface_hub lays out its cache (HF_HUB_CACHE/models--org--name/
snapshots/<commit>/..., refs/main), so nothing touches the network (HF_HUB_OFFLINE=1)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alm.errors import UserError
from alm.hub import resolve, split_revision

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_model(cache: Path, repo_id: str, save) -> Path:
    """Write a model into the HF cache layout as a download would: snapshot dir + refs/main."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    snap = root / "snapshots" / COMMIT
    save(snap)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    return snap


def run_alm(args, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("HF_HOME", None)
    return subprocess.run([sys.executable, "-m", "alm", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    from alm.tokenizers.codec import make_tiny_codec

    cache = tmp_path_factory.mktemp("hf-cache")

    def hubert(d):
        torch.manual_seed(0)
        cfg = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
        HubertModel(cfg).save_pretrained(d)
        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True).save_pretrained(d)

    fake_hub_model(cache, "tiny-org/tiny-hubert", hubert)
    fake_hub_model(cache, "tiny-org/tiny-codec", lambda d: make_tiny_codec(d, seed=0))
    return cache


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    from alm.data.synthetic import write_synthetic

    out = tmp_path_factory.mktemp("audio")
    write_synthetic(out, num_clips=4, val_clips=0, seconds=1.0, shard_size=4)
    return out


def test_semantic_and_codec_load_by_hub_id_offline(hub, audio, tmp_path):
    p = run_alm(["tokenize", "semantic", "--shards", str(audio), "--out", str(tmp_path / "sem"),
                 "--model", "tiny-org/tiny-hubert", "--layer", "1", "--clusters", "4"], hub)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "4 samples" in p.stdout
    assert json.loads((tmp_path / "sem" / "tokenizer" / "semantic_tokenizer.json").read_text())["model"] == \
        "tiny-org/tiny-hubert"
    p = run_alm(["tokenize", "codec", "--shards", str(audio), "--out", str(tmp_path / "codes"),
                 "--codec", f"tiny-org/tiny-codec@{COMMIT}", "--no-progress"], hub)  # a pinned revision
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((tmp_path / "codes" / "codec.json").read_text())["n_q"] == 4


def test_unknown_hub_id_is_one_line(hub, audio, tmp_path):
    p = run_alm(["tokenize", "semantic", "--shards", str(audio), "--out", str(tmp_path / "sem"),
                 "--model", "tiny-org/not-there", "--clusters", "4"], hub)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.strip().splitlines() if not ln.startswith("[alm.")]  # minus INFO log lines
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "'tiny-org/not-there'" in lines[0] and "HF_HUB_OFFLINE=1" in lines[0] and "cache" in lines[0]
    assert not (tmp_path / "sem").exists()  # nothing written before the model is loaded


def test_resolve_paths_and_ids(tmp_path):
    assert resolve("facebook/hubert-base-ls960") == ("facebook/hubert-base-ls960", None)
    assert split_revision("org/name@v1.0") == ("org/name", "v1.0")
    model = tmp_path / "org" / "name"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert resolve(str(model)) == (str(model), None)  # an existing path is a path, even shaped like an id
    with pytest.raises(UserError, match="not a model directory"):
        resolve(str(tmp_path / "org"))
    with pytest.raises(UserError, match="no such local path, and not a hub id"):
        resolve("/no/such/model")
    with pytest.raises(UserError, match="empty revision"):
        resolve("org/name@")
