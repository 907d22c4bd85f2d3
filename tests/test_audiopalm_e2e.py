"""AudioPaLM end to end: the tiny recipe trains on a fresh cache (synthetic data + a tiny random LM made
once), `alm export` holds a transformers folder that AutoModelForCausalLM / AutoTokenizer load, and
its greedy decoding of a prompt is what `alm generate audiopalm --task asr` wrote."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import REPO, alm, losses

pytestmark = pytest.mark.slow
RECIPE = str(REPO / "recipes" / "tiny" / "audiopalm.yaml")
QUICK = ["trainer.val_every_n_steps=0", "trainer.progress_bar=false", "trainer.threads=1", "trainer.accelerator=cpu",
         "data.num_workers=0", "wandb.enabled=false", "data.batch_size=8", "data.shuffle_buffer=16"]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("audiopalm")
    alm("train", RECIPE, f"run_dir={root / 'run'}", "trainer.max_steps=6", "trainer.ckpt_every_n_steps=6", *QUICK)
    assert sorted(losses(root / "run")) == list(range(6))
    alm("export", str(root / "run"), "--out", str(root / "export"))
    return root / "export"


def test_the_export_holds_a_transformers_folder_that_loads(export_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alm.export import load_pretrained

    hf_dir = export_dir / "transformers"
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["vocab_size"] == 456 and config["tie_word_embeddings"]
    meta = json.loads((export_dir / "export.json").read_text())
    assert meta["transformers"]["vocabulary"] == {"text": 384, "audio_start": 384, "audio": 64, "tag_start": 448,
                                                  "tags": ["[ASR English]", "[TTS English]", "[Continuation English]"],
                                                  "total": 456}
    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    assert tok.convert_tokens_to_ids("<a_63>") == 447 and tok.convert_tokens_to_ids("[TTS English]") == 449
    ours = load_pretrained(export_dir)  # alm rebuilds the same model from config.yaml alone
    ids = torch.tensor([[0, 448, 390, 400, 20, 30]])
    with torch.no_grad():
        assert torch.equal(hf(input_ids=ids).logits, ours(ids))
    assert (hf_dir / "model.safetensors").stat().st_ino == (export_dir / "model.safetensors").stat().st_ino  # a hard link


def test_alm_generate_asr_writes_what_transformers_greedy_decodes(export_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alm.tokenizers.semantic import SemanticTokenizer

    t = np.arange(16000 * 2) / 16000
    wavs = []
    for i, hz in enumerate((220, 330)):
        wavs.append(tmp_path / f"clip{i}.wav")
        sf.write(wavs[-1], 0.3 * np.sin(2 * np.pi * hz * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2, 16000)
    out = tmp_path / "hyps.jsonl"
    alm("generate", "audiopalm", str(export_dir), "--task", "asr", "--audio", *map(str, wavs), "--out", str(out),
        "--max-new-tokens", "12")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["clip0", "clip1"]
    hf = AutoModelForCausalLM.from_pretrained(str(export_dir / "transformers")).eval()
    tok = AutoTokenizer.from_pretrained(str(export_dir / "transformers"))
    semantic = SemanticTokenizer.load(export_dir / "tokenizer")
    not_text = list(range(384, 456))  # ASR output: text ids (EOS = 0 among them) only
    for wav, row in zip(wavs, rows):
        units, _ = sf.read(wav)
        prompt = [0, tok.convert_tokens_to_ids("[ASR English]")] + [384 + int(u) for u in semantic(units.astype(np.float32))]
        x = torch.tensor([prompt])
        with torch.no_grad():
            y = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False,
                            suppress_tokens=not_text, eos_token_id=0, pad_token_id=0)[0, len(prompt):].tolist()
        y = y[: y.index(0)] if 0 in y else y
        assert row["text"] == tok.decode(y, skip_special_tokens=True).strip(), (row, y)


def test_alm_generate_tts_speaks_through_a_soundstorm_export(export_dir, tmp_path):
    """TTS: semantic tokens from the LM (EOS held back for 25 tokens), acoustic codes from a tiny SoundStorm
    trained on the same synthetic semantic tokenizer, a wav from its codec."""
    alm("train", str(REPO / "recipes" / "tiny" / "soundstorm.yaml"), f"run_dir={tmp_path / 'ss'}", "trainer.max_steps=2",
        "model.n_layer=2", "model.d_model=64", "model.n_head=2", "data.batch_size=4", *QUICK)
    alm("export", str(tmp_path / "ss"), "--out", str(tmp_path / "ss-export"))
    wav = tmp_path / "y.wav"
    p = alm("generate", "audiopalm", str(export_dir), "--task", "tts", "--text", "a slow piano melody",
            "--soundstorm", str(tmp_path / "ss-export"), "--out", str(wav), "--min-new-tokens", "25",
            "--max-new-tokens", "40")
    n = int(p.stdout.split("[alm] ")[-1].split()[0])
    assert 25 <= n <= 40, p.stdout
    audio, rate = sf.read(wav)
    assert abs(len(audio) / rate - n / 50.0) < 0.05 and np.isfinite(audio).all()  # 50 Hz semantic tokens


def test_generate_refuses_what_it_cannot_do(export_dir, tmp_path):
    p = alm("generate", "audiopalm", str(export_dir), "--task", "asr", "--out", str(tmp_path / "h.jsonl"), check=False)
    assert p.returncode == 2 and "--task asr needs --audio" in p.stderr
    p = alm("generate", "audiopalm", str(export_dir), "--task", "tts", "--text", "x", "--out", str(tmp_path / "y.wav"),
            check=False)
    assert p.returncode == 2 and "--soundstorm EXPORT" in p.stderr
