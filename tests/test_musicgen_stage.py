"""The musicgen stage (alm/stages/musicgen.py): examples from codec-token shards with a caption drawn
per crop (or precomputed T5 states), the per-codebook loss over the pattern's valid cells, and a
tiny end-to-end run on the synthetic captioned set (T5 frozen and outside the checkpoint)."""

from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pytest
import torch

from alm.data.shards import npy_bytes, npy_load
from alm.models.codebook_patterns import make_pattern
from alm.stages.musicgen import (TEXT_EMB, TEXT_EMB_LENGTHS, MusicGenStageConfig, codebook_ce, collate,
                                 make_example)


def cfg(**kw) -> MusicGenStageConfig:
    base = dict(dim=32, n_layer=1, n_head=2, ffn_dim=64, codebooks=4, card=16, cond_dim=8, max_seq_len=128,
                frame_rate=50.0, pattern="delay")
    return MusicGenStageConfig(**{**base, **kw})


def sample(T: int = 120, captions=("rain on a roof", "a slow piano melody"), seed: int = 0, n_q: int = 4) -> dict:
    codes = np.random.default_rng(seed).integers(0, 16, (n_q, T)).astype(np.int16)
    return {"__key__": f"clip{seed}", "codes.npy": npy_bytes(codes), "json": json.dumps({"captions": list(captions)}).encode()}


@pytest.mark.parametrize("pattern", ["delay", "parallel", "unroll", "coarse_first"])
def test_examples_are_pattern_crops_with_one_of_the_clips_captions(pattern):
    m = cfg(pattern=pattern)
    s = sample(T=130)
    codes = npy_load(s["codes.npy"]).astype(np.int64)
    out = make_example(s, np.random.default_rng(1), m, segment_seconds=1.0, every=True)
    assert len(out) == 2  # 130 frames = 2 windows of 50 (and 30 uncovered frames at a random offset)
    seen = set()
    for ex in out:
        p = make_pattern(pattern, 4, 50)
        crop = p.revert(torch.from_numpy(ex["seq"])[None])[0].numpy()
        # the crop is a contiguous span of the clip's codes
        starts = [f for f in range(130 - 50 + 1) if np.array_equal(codes[:, f : f + 50], crop)]
        assert starts, "the example's codes are not a crop of the clip"
        assert np.array_equal(ex["valid"], p.valid.numpy()) and ex["seq"].shape == (4, p.num_steps)
        assert bool((ex["seq"][~ex["valid"]] == m.card).all())
        seen.add(ex["text"])
    # every caption gets drawn over draws
    for seed in range(20):
        seen.add(make_example(s, np.random.default_rng(seed), m, segment_seconds=1.0)["text"])
    assert seen == {"rain on a roof", "a slow piano melody"}


def test_short_clips_pad_in_the_batch_and_bad_samples_say_why():
    m = cfg()
    a = make_example(sample(T=30), np.random.default_rng(0), m, segment_seconds=1.0)
    b = make_example(sample(T=80, seed=1), np.random.default_rng(0), m, segment_seconds=1.0)
    assert a["seq"].shape == (4, 34) and b["seq"].shape == (4, 54)
    batch = collate([a, b])
    assert batch["seq"].shape == (2, 4, 54) and batch["valid"].shape == (2, 4, 54)
    assert not bool(batch["valid"][0, :, 34:].any()) and bool((batch["seq"][0, :, 34:] == m.card).all())
    assert batch["_tokens"] == 4 * (30 + 50) and len(batch["text"]) == 2
    with pytest.raises(ValueError, match="no caption"):
        make_example(sample(captions=()), np.random.default_rng(0), m, segment_seconds=1.0)
    with pytest.raises(ValueError, match="needs 4 codebooks"):
        make_example(sample(n_q=2), np.random.default_rng(0), m, segment_seconds=1.0)
    with pytest.raises(ValueError, match=r"outside \[0, 8\)"):
        make_example(sample(), np.random.default_rng(0), cfg(card=8), segment_seconds=1.0)


def test_precomputed_text_embeddings_give_one_captions_states():
    m = cfg()
    rng = np.random.default_rng(0)
    embs = [rng.standard_normal((n, 8)).astype(np.float16) for n in (3, 5)]
    s = sample()
    s[TEXT_EMB] = npy_bytes(np.concatenate(embs))
    s[TEXT_EMB_LENGTHS] = npy_bytes(np.array([3, 5], dtype=np.int32))
    exs = [make_example(s, np.random.default_rng(i), m, segment_seconds=1.0) for i in range(12)]
    lengths = {len(e["cond"]) for e in exs}
    assert lengths == {3, 5}
    for e in exs:
        assert any(np.array_equal(e["cond"], x) for x in embs) and "text" not in e
    batch = collate(exs[:4])
    assert batch["cond"].dtype == torch.float32 and batch["cond"].shape[2] == 8
    assert batch["cond_mask"].sum(1).tolist() == [len(e["cond"]) for e in exs[:4]]


def test_loss_is_the_mean_over_codebooks_of_each_codebooks_mean_ce():
    g = torch.Generator().manual_seed(0)
    B, K, S, C = 3, 4, 12, 16
    logits = torch.randn(B, K, S, C, generator=g)
    seq = torch.randint(0, C + 1, (B, K, S), generator=g)
    valid = (torch.rand(B, K, S, generator=g) > 0.3) & (seq < C)
    per_k = []
    for k in range(K):
        terms = [-torch.log_softmax(logits[b, k, s - 1], -1)[seq[b, k, s]]
                 for b in range(B) for s in range(1, S) if valid[b, k, s]]
        per_k.append(torch.stack(terms).mean())
    assert torch.allclose(codebook_ce(logits, seq, valid), torch.stack(per_k).mean(), atol=1e-6)


FAST_MUSICGEN = ["trainer.progress_bar=false", "trainer.val_every_n_steps=0", "trainer.threads=1",
                 "trainer.accelerator=cpu", "model.dim=32", "model.n_layer=1", "model.ffn_dim=64",
                 "data.batch_size=4", "data.num_workers=0", "data.segment_seconds=1.0"]


def test_tiny_recipe_trains_exports_and_generates_with_t5_outside_the_lm(tmp_path, capsys):
    from helpers import REPO, alm, losses

    from alm.config import from_yaml_text
    from alm.models.musicgen import MusicGenLM

    recipe = str(REPO / "recipes" / "tiny" / "musicgen.yaml")
    run = tmp_path / "run"
    alm("train", recipe, f"run_dir={run}", "trainer.max_steps=4", "trainer.ckpt_every_n_steps=4", *FAST_MUSICGEN)
    got = losses(run)
    assert sorted(got) == [0, 1, 2, 3] and all(np.isfinite(v) for v in got.values())
    assert got[0] == pytest.approx(np.log(32), abs=0.5)  # starts near uniform over 32 codes
    # the frozen T5 is in neither the checkpoint nor the optimizer: exactly the LM's tensors
    ckpt = torch.load(next(run.glob("checkpoints/step-*/checkpoint.ckpt")), map_location="cpu", weights_only=False)
    lm = MusicGenLM(from_yaml_text((run / "config.yaml").read_text(), "run").model)
    assert sorted(ckpt["state_dict"]) == sorted(f"model.{k}" for k in lm.state_dict())
    assert sum(len(g["params"]) for g in ckpt["optimizer_states"][0]["param_groups"]) == len(list(lm.parameters()))

    exp = tmp_path / "exp"
    alm("export", str(run), "--out", str(exp))
    assert (exp / "text_encoder" / "config.json").is_file() and (exp / "codec").is_dir()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("heavy rain falling steadily\n\na slow rising piano melody in C major\n3 knocks on a wooden door\n")
    out = alm("generate", "musicgen", str(exp), "--prompts", str(prompts), "--seconds", "0.5", "--out",
              str(tmp_path / "wavs"), "--save-codes", str(tmp_path / "codes.npy"), "--batch-size", "2",
              "--greedy", "--no-progress")
    assert sorted(p.name for p in (tmp_path / "wavs").iterdir()) == ["000.wav", "001.wav", "002.wav"]
    codes = np.load(tmp_path / "codes.npy")
    assert codes.shape == (3, 4, 25) and codes.dtype == np.int64 and codes.min() >= 0 and codes.max() < 32
    assert "000.wav: 0.5 s at 16000 Hz (codes 4 x 25)" in out.stdout
    # one prompt -> OUT.wav; greedy is deterministic and batching does not change a prompt's codes
    from alm.cli import main

    assert main(["generate", "musicgen", str(exp), "--text", "a slow rising piano melody in C major", "--seconds",
                 "0.5", "--out", str(tmp_path / "one.wav"), "--save-codes", str(tmp_path / "one.npy"), "--greedy",
                 "--no-progress"]) == 0
    assert (tmp_path / "one.wav").is_file()
    assert np.array_equal(np.load(tmp_path / "one.npy")[0], codes[1])
    assert main(["generate", "musicgen", str(exp), "--text", "x", "--seconds", "0.5", "--out", str(tmp_path / "a.wav"),
                 "--melody", str(tmp_path / "one.wav")]) == 2
    assert "not a melody model" in capsys.readouterr().err
    # alm eval run EXPORT --task text_to_audio: the held-out clips' captions -> wavs -> FAD against those clips
    import json
    import os

    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    EncodecModel(EncodecConfig(sampling_rate=16000, audio_channels=1, num_filters=4, hidden_size=8, upsampling_ratios=[4, 4],
                               codebook_size=16, target_bandwidths=[1.0], num_lstm_layers=1)).save_pretrained(tmp_path / "enc")
    res_path = tmp_path / "t2a.json"
    assert main(["eval", "run", str(exp), "--task", "text_to_audio", "--shards", str(Path(os.environ["ALM_CACHE"]) / "synthetic-v1"),
                 "--limit", "3", "--seconds", "0.5", "--embedder", "encodec", "--embedder-model", str(tmp_path / "enc"),
                 "--window-seconds", "0.5", "--out", str(res_path)]) == 0
    res = json.loads(res_path.read_text())
    assert res["task"] == "text_to_audio" and res["n"] == 3 and res["metrics"]["fad"] >= 0, res
    work = tmp_path / "t2a-audio"
    assert sorted(p.stem for p in (work / "generated").iterdir()) == sorted(p.stem for p in (work / "reference").iterdir())
    assert len(list((work / "generated").iterdir())) == 3 and not (work / ".generating").exists()
    assert main(["eval", "run", str(exp), "--task", "text_to_audio", "--shards", "x"]) == 2
    assert "nothing to score" in capsys.readouterr().err


def test_melody_examples_carry_the_chroma_of_their_crop_and_train():
    from alm.data.audio import encode_flac
    from alm.models.musicgen import MusicGenLM
    from alm.stages.musicgen import loss

    m = cfg(cond_mode="prefix", melody_dim=12, melody_len=16)
    s = sample(T=100)  # 2 s of codes at 50 Hz
    t = np.arange(32000) / 16000
    s["flac"] = encode_flac(np.where(t < 1.0, 0.5 * np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 523.25 * t))
                            .astype(np.float32), 16000)
    out = make_example(s, np.random.default_rng(0), m, segment_seconds=1.0, every=True)
    assert len(out) == 2 and all(ex["melody"].shape == (8, 12) for ex in out)  # 1 s at 32 kHz, hop 4096
    assert [int(np.bincount(ex["melody"].argmax(-1)).argmax()) for ex in out] == [9, 0]  # A, then C
    batch = collate(out)
    batch["cond"], batch["cond_mask"] = torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.long)
    del batch["text"]
    value = loss(MusicGenLM(m), batch)
    assert value.ndim == 0 and torch.isfinite(value)


def test_a_tiny_model_overfit_on_two_captions_generates_each_captions_own_codes(tmp_path, one_thread):
    """Conditioning works: trained with the stage's loss (online T5, condition dropout 0.3) on two clips,
    greedy generation from each caption (with and without guidance) gives that clip's codes, in either order."""
    from alm.conditioners.t5 import make_tiny_t5
    from alm.models.musicgen import MusicGenLM
    from alm.stages.musicgen import _text_encoder, loss

    caps = ["heavy rain falling steadily", "a slow rising piano melody in C major"]
    t5_dir = make_tiny_t5(tmp_path / "t5", caps * 20, d_model=32, vocab_size=60)
    K, T, C = 4, 12, 16
    m = cfg(dim=64, n_layer=2, ffn_dim=128, card=C, cond_dim=32, dropout=0.0, cond_dropout=0.3, text_encoder=str(t5_dir))
    torch.manual_seed(0)
    codes = torch.randint(0, C, (2, K, T))
    samples = [{"__key__": f"k{i}", "codes.npy": npy_bytes(codes[i].numpy().astype(np.int16)),
                "json": json.dumps({"captions": [caps[i]]}).encode()} for i in range(2)]
    batch = collate([make_example(s, np.random.default_rng(0), m, segment_seconds=1.0) for s in samples] * 2)
    lm = MusicGenLM(m)
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(120):
        value = loss(lm, batch)
        opt.zero_grad()
        value.backward()
        opt.step()
    assert float(value.detach()) < 0.1
    t5 = _text_encoder(str(t5_dir), m.text_max_len)
    pattern = make_pattern("delay", K, T)
    for order in ([0, 1], [1, 0]):
        cond, mask = t5([caps[i] for i in order])
        for scale in (1.0, 3.0):
            seq = lm.generate(pattern.valid, cond, mask, cfg_scale=scale, temperature=0.0)
            assert torch.equal(pattern.revert(seq), codes[order]), (order, scale)


def test_precomputed_embeddings_of_another_width_are_refused(tmp_path):
    from alm.config import load_recipe
    from alm.errors import UserError
    from alm.stages.musicgen import check_text_embeddings
    from helpers import REPO

    emb, codes = tmp_path / "t5emb", tmp_path / "codes"
    for d in (emb, codes):
        d.mkdir()
        (d / "train-000000.tar").write_bytes(b"")
    (emb / "text_embeddings.json").write_text(json.dumps({"encoder": "google-t5/t5-base", "d_model": 768}))
    c = load_recipe(REPO / "recipes" / "tiny" / "musicgen.yaml",
                    [f"data.train_shards={codes}/train-*.tar + {emb}/train-*.tar", "data.val_shards=null"])
    with pytest.raises(UserError, match="model.cond_dim=32 but the text embeddings in .* d_model=768"):
        check_text_embeddings(c)


def test_generate_from_a_converted_export_gives_transformers_greedy_guided_codes(tmp_path, capsys):
    """alm convert musicgen (a tiny random transformers MusicGen) -> alm generate musicgen --greedy --cfg 3:
    the saved codes equal transformers' generate(do_sample=False, guidance_scale=3) on the same padded prompts."""
    from test_musicgen_parity import K, PROMPTS, captured_codes, load, make_source

    from alm.cli import main

    src = make_source(tmp_path)
    assert main(["convert", "musicgen", str(src), "--out", str(tmp_path / "exp")]) == 0
    hf, processor = load(src)
    new = 14
    ref = captured_codes(hf, **processor(text=PROMPTS, padding=True, return_tensors="pt"), do_sample=False,
                         guidance_scale=3.0, max_new_tokens=new)  # (3, K, 1 + new - K)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    frames = 1 + new - K
    assert main(["generate", "musicgen", str(tmp_path / "exp"), "--prompts", str(prompts), "--seconds",
                 str(frames / 50), "--cfg", "3.0", "--greedy", "--batch-size", "3", "--save-codes",
                 str(tmp_path / "codes.npy"), "--out", str(tmp_path / "wavs"), "--no-progress"]) == 0
    ours = torch.from_numpy(np.load(tmp_path / "codes.npy"))
    assert ours.shape == ref.shape == (3, K, frames)
    assert torch.equal(ours, ref)
    assert sorted(p.name for p in (tmp_path / "wavs").iterdir()) == ["000.wav", "001.wav", "002.wav"]
    # fine-tuning it (recipes/musicgen/finetune*.yaml): an empty model.text_encoder takes the export's own T5,
    # so the architecture check of init_from agrees
    from helpers import REPO

    from alm.config import load_recipe
    from alm.stages.musicgen import check
    from alm.training.init_from import check_compatible

    c = load_recipe(REPO / "recipes" / "tiny" / "musicgen.yaml", [
        f"init_from={tmp_path / 'exp'}", "model.text_encoder=''", "model.dim=32", "model.n_layer=2", "model.n_head=4",
        "model.ffn_dim=64", "model.card=16", "model.cond_dim=24", "model.max_seq_len=64", "model.text_max_len=256", "data.codec=null"])
    check(c)
    assert c.model.text_encoder == str((tmp_path / "exp" / "text_encoder").resolve())
    check_compatible(c, tmp_path / "exp")


def test_audio_samples_generate_as_many_frames_as_the_crop_from_its_condition():
    from alm.models.musicgen import MusicGenLM
    from alm.stages.musicgen import sample_codes

    m = cfg(pattern="delay")
    exs = [make_example(sample(T=t, seed=t), np.random.default_rng(0), m, segment_seconds=1.0) for t in (30, 50)]
    for e in exs:
        e["cond"] = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float16)
        del e["text"]
    batch = collate(exs)
    lm = MusicGenLM(m).train()
    gen, ref = sample_codes(lm, batch, 0, seed=1)
    assert gen.shape == ref.shape == (4, 30) and lm.training  # the mode is restored
    assert np.array_equal(ref, npy_load(sample(T=30, seed=30)["codes.npy"])[:, :30])
    assert gen.min() >= 0 and gen.max() < 16
    again, _ = sample_codes(lm, batch, 0, seed=1)
    assert np.array_equal(gen, again)  # seeded
    assert sample_codes(lm, batch, 1, seed=1)[0].shape == (4, 50)


def test_two_ranks_ddp_and_zero3_train_the_same_losses(tmp_path):
    """2 gloo ranks: DDP and DeepSpeed ZeRO-3 (LM parameters partitioned at construction; the frozen T5
    loaded per rank outside zero.Init) train the same curve on the tiny recipe."""
    from helpers import REPO, alm, losses

    recipe = str(REPO / "recipes" / "tiny" / "musicgen.yaml")
    common = [*FAST_MUSICGEN, "trainer.devices=2", "trainer.max_steps=3", "trainer.ckpt_every_n_steps=3",
              "data.num_workers=1", "wandb.enabled=false"]
    alm("train", recipe, f"run_dir={tmp_path / 'ddp'}", *common)
    alm("train", recipe, f"run_dir={tmp_path / 'z3'}", *common, "trainer.strategy=deepspeed", "trainer.zero_stage=3")
    ddp, z3 = losses(tmp_path / "ddp"), losses(tmp_path / "z3")
    print(f"musicgen 2 ranks: ddp {ddp}, zero-3 {z3}")
    assert sorted(ddp) == sorted(z3) == [0, 1, 2]
    assert max(abs(ddp[s] - z3[s]) for s in ddp) < 2e-4, (ddp, z3)
