"""Big models: ZeRO-3 partitions parameters at construction (measured per rank from DeepSpeed's own
tensors), init_from loads an export into a partitioned model, activation checkpointing and bf16."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import FAST, REPO, TINY, alm, env, losses, train

pytestmark = pytest.mark.slow
PROBE = str(REPO / "tests" / "scripts" / "probe_params.py")
ZERO3 = ["trainer.devices=2", "trainer.strategy=deepspeed", "trainer.zero_stage=3"]
BIG = ["model.n_layer=4", "model.d_model=128", "model.n_head=4"]  # ~0.8 M parameters


def probe(out, *overrides):
    cmd = [sys.executable, PROBE, TINY, str(out), f"run_dir={out}-run", *FAST, "data.num_workers=0",
           "trainer.max_steps=1", "wandb.enabled=false", *overrides]
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]


def test_zero3_each_rank_holds_half_the_parameters_from_construction(tmp_path):
    probe(tmp_path / "z3", *ZERO3, *BIG)
    ranks = [json.loads((tmp_path / f"z3.rank{r}.json").read_text()) for r in (0, 1)]
    full = ranks[0]["full_model"]
    assert full > 3_000_000  # fp32 bytes of the whole model
    for r in ranks:
        # partitions are padded to the world size: within 2% of exactly half
        assert math.isclose(r["after_configure_model"], full / 2, rel_tol=0.02), (r, full)
        assert math.isclose(r["engine_partition"], full / 2, rel_tol=0.02), (r, full)
    print(f"\nZeRO-3 2 ranks: resident parameter bytes per rank after configure_model "
          f"{ranks[0]['after_configure_model']} / {ranks[1]['after_configure_model']} of {full} "
          f"({ranks[0]['after_configure_model'] / full:.3f})")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("init_from")
    train(root / "run", "trainer.max_steps=3", "wandb.enabled=false", *BIG)
    alm("export", str(root / "run"), "--out", str(root / "export"))
    return root / "export"


@pytest.mark.parametrize("strategy", [[], ZERO3], ids=["single", "zero3"])
def test_init_from_an_export_starts_from_its_weights(tmp_path, export_dir, strategy):
    probe(tmp_path / "p", f"init_from={export_dir}", *strategy, *BIG)
    start = torch.load(tmp_path / "p.init.pt")
    exported = load_file(str(export_dir / "model.safetensors"))
    assert exported, "empty export"
    for name, tensor in exported.items():
        assert torch.equal(start[name], tensor.float()), name


def test_init_from_a_different_architecture_is_one_line_before_anything_starts(tmp_path, export_dir):
    p = alm("train", TINY, f"run_dir={tmp_path / 'run'}", *FAST, f"init_from={export_dir}", *BIG[:1],
            "model.d_model=64", "model.n_head=4", check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "model.d_model 128 -> 64" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_activation_checkpointing_under_zero3_keeps_the_golden_losses(tmp_path):
    sys.path.insert(0, str(REPO / "tests" / "scripts"))
    import golden_losses

    golden = json.loads((REPO / "tests" / "golden" / "stage_losses.json").read_text())["semantic-zero3"]
    run = tmp_path / "ac"
    alm("train", TINY, f"run_dir={run}", *golden_losses.COMMON, *golden_losses.RUNS["semantic-zero3"],
        "trainer.activation_checkpointing=true")
    assert {str(k): v for k, v in losses(run).items()} == golden


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_trains_on_cpu(tmp_path, precision):
    train(tmp_path / precision, "trainer.max_steps=4", f"trainer.precision={precision}", "wandb.enabled=false")
    got = losses(tmp_path / precision)
    assert len(got) == 4 and all(math.isfinite(v) and 0 < v < 20 for v in got.values()), got


def _unequal_val_set(out):
    """The synthetic coarse val set (semantic + codes, joined by key) with clips cut to unequal
    lengths (0.40 to 0.82 s), so ranks' first validation examples differ in length."""
    import glob

    import webdataset as wds

    from alm.config import load_recipe
    from alm.data.cache import resolve_synthetic
    from alm.data.shards import ShardWriter, npy_bytes, npy_load

    cfg = load_recipe(str(REPO / "recipes" / "tiny" / "coarse.yaml"))
    resolve_synthetic(cfg)
    specs = [s.strip() for s in cfg.data.val_shards.split(" + ")]
    for spec, member in zip(specs, ("semantic.npy", "codes.npy")):
        name = member.split(".")[0]
        with ShardWriter(out / name, "val", max_count=1000) as writer:
            for i, sample in enumerate(wds.WebDataset(sorted(glob.glob(spec)), shardshuffle=False)):
                n = 20 + 7 * (i % 4)  # 50 Hz frames
                arr = npy_load(sample[member])
                writer.write({"__key__": sample["__key__"], member: npy_bytes(arr[..., :n])})
    return f"{out / 'semantic'}/val-*.tar + {out / 'codes'}/val-*.tar"


def test_zero3_audio_samples_with_unequal_clips_run_the_same_forwards_on_every_rank(tmp_path):
    from helpers import TINY_COARSE

    val = _unequal_val_set(tmp_path / "val")
    run = tmp_path / "coarse"
    train(run, "trainer.max_steps=2", *ZERO3, "trainer.val_every_n_steps=2", "trainer.val_batches=1",
          "trainer.audio_samples=1", f"data.val_shards={val}", "data.batch_size=4", recipe=TINY_COARSE, timeout=300)
    wavs = sorted(p.name for p in (run / "samples").glob("*.wav"))
    assert wavs == ["step-000000002-0-generated.wav", "step-000000002-0-reference.wav"]


def test_a_transformers_model_loads_into_a_zero3_partitioned_build(tmp_path):
    """The loader future wrapper stages (AudioPaLM's LLM, MusicGen's T5) use: a tiny random Llama
    saved by transformers is loaded tensor by tensor into a Llama that zero.Init built partitioned
    on 2 gloo ranks; each rank holds half the bytes and the gathered weights equal the file's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    script = str(REPO / "tests" / "scripts" / "zero3_hf_load.py")
    p = subprocess.run([sys.executable, script, str(tmp_path / "llama"), str(tmp_path / "r")], cwd=REPO, env=env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"r.rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert math.isclose(r["local_bytes"], r["full_bytes"] / 2, rel_tol=0.02), r
    assert ranks[0]["compared"] > 10 and ranks[0]["mismatch"] == []
