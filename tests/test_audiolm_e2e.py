"""The AudioLM chain end to end on CPU: tiny semantic, coarse and fine stages trained under DDP and
DeepSpeed (2 processes), exported, then `alm generate audiolm` writes a wav of the requested length."""

import numpy as np
import pytest
import soundfile as sf

from helpers import TINY_COARSE, TINY_FINE, alm, losses, train

pytestmark = pytest.mark.slow


def test_chain_from_exports_writes_wav(tmp_path):
    train(tmp_path / "semantic", "trainer.max_steps=8", "trainer.ckpt_every_n_steps=8")
    train(tmp_path / "coarse", "trainer.max_steps=6", "trainer.ckpt_every_n_steps=6", "trainer.devices=2",
          recipe=TINY_COARSE)
    train(tmp_path / "fine", "trainer.max_steps=6", "trainer.ckpt_every_n_steps=6", "trainer.devices=2",
          "trainer.strategy=deepspeed", "trainer.zero_stage=2", recipe=TINY_FINE)
    for stage in ("semantic", "coarse", "fine"):
        assert sorted(losses(tmp_path / stage)) == list(range(8 if stage == "semantic" else 6))
        alm("export", str(tmp_path / stage), "--out", str(tmp_path / f"{stage}-export"))
    assert (tmp_path / "coarse-export" / "codec" / "config.json").is_file()  # the local codec travels
    out = tmp_path / "gen.wav"
    p = alm("generate", "audiolm", "--semantic", str(tmp_path / "semantic-export"), "--coarse",
            str(tmp_path / "coarse-export"), "--fine", str(tmp_path / "fine-export"), "--seconds", "1.5",
            "--out", str(out), "--temperature", "0.9")
    assert "wrote" in p.stdout
    audio, rate = sf.read(out)
    assert rate == 16000 and audio.ndim == 1 and len(audio) == 24000  # 1.5 s = 75 codec frames of 320 samples
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    # continuation of a recording: its semantic tokens (exported tokenizer) prefix the generated ones
    from alm.data.synthetic import make_clip

    sf.write(tmp_path / "prompt.wav", make_clip(3, 0, 16000, 1.0)[0], 16000)
    alm("generate", "audiolm", "--semantic", str(tmp_path / "semantic-export"), "--coarse",
        str(tmp_path / "coarse-export"), "--fine", str(tmp_path / "fine-export"), "--seconds", "1.0",
        "--prompt", str(tmp_path / "prompt.wav"), "--out", str(tmp_path / "cont.wav"))
    cont, _ = sf.read(tmp_path / "cont.wav")
    assert abs(len(cont) - 2 * 16000) <= 320  # 1 s of prompt (re-synthesised) + 1 s continuation
    from alm.generate import generate_audiolm, prompt_codes

    r = generate_audiolm(str(tmp_path / "semantic-export"), str(tmp_path / "coarse-export"),
                         str(tmp_path / "fine-export"), 1.0, str(tmp_path / "cont2.wav"), str(tmp_path / "prompt.wav"),
                         progress=False)
    own = prompt_codes(str(tmp_path / "coarse-export"), str(tmp_path / "prompt.wav"))
    k = min(own.shape[1], r["codes"].shape[1])
    assert k >= 45 and np.array_equal(r["codes"][:, :k], own[:4, :k])  # the prompt's own codes carry over


def test_acoustic_stages_other_strategies_with_audio_samples(tmp_path):
    """Coarse under ZeRO-3 and fine under DDP, 2 processes, with validation audio samples: every rank
    takes part in the sample's generation (ZeRO-3), rank 0 writes wavs and logs audio + spectrograms."""
    samples = ("trainer.val_every_n_steps=2", "trainer.val_batches=1", "trainer.audio_samples=1")
    train(tmp_path / "coarse", "trainer.max_steps=4", "trainer.devices=2", "trainer.strategy=deepspeed",
          "trainer.zero_stage=3", *samples, recipe=TINY_COARSE)
    train(tmp_path / "fine", "trainer.max_steps=4", "trainer.devices=2", *samples, recipe=TINY_FINE)
    for stage in ("coarse", "fine"):
        curve = losses(tmp_path / stage)
        assert sorted(curve) == [0, 1, 2, 3] and all(np.isfinite(v) and v > 0 for v in curve.values())
        wavs = sorted(p.name for p in (tmp_path / stage / "samples").glob("*.wav"))
        assert wavs == [f"step-{s:09d}-0-{k}.wav" for s in (2, 4) for k in ("generated", "reference")]
        audio, rate = sf.read(tmp_path / stage / "samples" / wavs[0])
        assert rate == 16000 and len(audio) == 50 * 320  # one 1 s window
        media = list((tmp_path / stage / "wandb").glob("offline-run-*/files/media/*/samples/*"))
        assert media and list((tmp_path / stage / "wandb").glob("offline-run-*/files/media/images/spectrograms/*.png"))


def test_soundstorm_trains_exports_and_decodes_in_parallel(tmp_path):
    from helpers import REPO

    recipe = str(REPO / "recipes" / "tiny" / "soundstorm.yaml")
    small = ("model.d_model=64", "model.n_head=2", "model.n_layer=2", "trainer.ckpt_every_n_steps=5", "trainer.max_steps=5")
    train(tmp_path / "ss_ddp", *small, "trainer.devices=2", recipe=recipe)
    train(tmp_path / "ss_zero2", *small, "trainer.devices=2", "trainer.strategy=deepspeed", "trainer.zero_stage=2",
          recipe=recipe)
    train(tmp_path / "semantic", "trainer.max_steps=3", "trainer.ckpt_every_n_steps=3")
    for run in ("ss_ddp", "ss_zero2", "semantic"):
        assert all(np.isfinite(v) for v in losses(tmp_path / run).values())
        alm("export", str(tmp_path / run), "--out", str(tmp_path / f"{run}-export"))
    out = tmp_path / "storm.wav"
    p = alm("generate", "soundstorm", "--semantic", str(tmp_path / "semantic-export"), "--soundstorm",
            str(tmp_path / "ss_zero2-export"), "--seconds", "1.6", "--steps", "6,1,1,1", "--out", str(out))
    assert "in 9 SoundStorm forward passes" in p.stdout  # one window: 6 + 1 + 1 + 1
    audio, rate = sf.read(out)
    assert rate == 16000 and len(audio) == 80 * 320  # 1.6 s = 80 frames
