"""AudioPaLM on real speech: the tiny recipe, with only data.* (and the step count) overridden, overfits 12
espeak-ng utterances of tests/fixtures/speech (LibriSpeech layout, upper-case transcripts) tokenized by a
log-mel k-means fitted here, trained on ASR and TTS together. Greedy `alm generate audiopalm --task asr`
then transcribes every utterance exactly (WER 0 by `alm eval text`), and the same model speaks: its TTS
semantic tokens for a transcript are those of the utterance it was trained on."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import REPO, alm, losses

pytestmark = pytest.mark.slow
SPEECH = REPO / "tests" / "fixtures" / "speech" / "LibriSpeech"
RECIPE = str(REPO / "recipes" / "tiny" / "audiopalm.yaml")
SPEAKERS = ("1001", "1002")  # 12 utterances of 1.9-2.8 s


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from alm.tokenizers.semantic import SemanticTokenizerConfig, run

    root = tmp_path_factory.mktemp("speech")
    for spk in SPEAKERS:
        shutil.copytree(SPEECH / "train-clean-100" / spk, root / "LibriSpeech" / "train-clean-100" / spk)
    alm("prep", "librispeech", "--src", str(root / "LibriSpeech"), "--out", str(root / "prep"))
    run(str(root / "prep"), str(root / "tok"), SemanticTokenizerConfig(features="logmel", n_clusters=64), progress=False)
    alm("train", RECIPE, f"run_dir={root / 'run'}", f"data.train_shards={root}/prep/train-*.tar + {root}/tok/train-*.tar",
        "data.val_shards=null", f"data.tokenizer={root / 'tok' / 'tokenizer'}", "data.tasks=[asr, tts]",
        "data.batch_size=12", "data.shuffle_buffer=12", "data.num_workers=0", "optim.lr=0.003", "optim.warmup_steps=10",
        "trainer.max_steps=150", "trainer.ckpt_every_n_steps=150", "trainer.val_every_n_steps=0",
        "trainer.progress_bar=false", "trainer.threads=2", "wandb.enabled=false", timeout=1200)
    alm("export", str(root / "run"), "--out", str(root / "export"))
    return root


def test_greedy_asr_transcribes_every_training_utterance_exactly(trained, tmp_path):
    flacs = sorted(str(p) for spk in SPEAKERS for p in (SPEECH / "train-clean-100" / spk).rglob("*.flac"))
    refs = [line.split(" ", 1) for spk in SPEAKERS for f in sorted((SPEECH / "train-clean-100" / spk).rglob("*.trans.txt"))
            for line in f.read_text().splitlines()]
    (tmp_path / "refs.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in refs))
    p = alm("generate", "audiopalm", str(trained / "export"), "--task", "asr", "--audio", *flacs,
            "--out", str(tmp_path / "hyps.jsonl"))
    print(p.stdout)
    alm("eval", "text", "--task", "asr", "--hyps", str(tmp_path / "hyps.jsonl"), "--refs", str(tmp_path / "refs.jsonl"),
        "--out", str(tmp_path / "results.json"))
    results = json.loads((tmp_path / "results.json").read_text())
    print(json.dumps(results, indent=1)[:1500])
    flat = json.dumps(results)
    assert len(refs) == 12 and '"wer": 0.0' in flat, flat[:2000]
    train = losses(trained / "run")
    assert train[149] < 0.05 * train[0], (train[0], train[149])


def test_alm_eval_run_asr_scores_the_export_on_prep_shards(trained, tmp_path):
    """`alm eval run EXPORT --task asr --shards` transcribes every clip of the (explicitly named) training
    shards with the export's own semantic tokenizer and scores WER against the shards' transcripts."""
    out = tmp_path / "results.json"
    alm("eval", "run", str(trained / "export"), "--task", "asr", "--shards", f"{trained}/prep/train-*.tar",
        "--save-hyps", str(tmp_path / "hyps.jsonl"), "--out", str(out))
    res = json.loads(out.read_text())
    assert res["task"] == "asr" and res["n"] == 12 and res["metrics"]["wer"] == 0.0, res
    assert res["config"]["stage"] == "audiopalm" and res["config"]["no_reference"] == 0
    hyps = [json.loads(line) for line in (tmp_path / "hyps.jsonl").read_text().splitlines()]
    assert len(hyps) == 12 and all(h["text"] == h["reference"] for h in hyps)
    p = alm("eval", "run", str(trained / "export"), "--task", "help", "--shards", "x")
    assert "asr" in p.stdout and "ast" in p.stdout


def test_the_same_model_speaks_the_utterances_it_heard(trained):
    """TTS direction: greedy semantic tokens for a training transcript match that utterance's own tokens."""
    from alm.data.shards import expand_shards, npy_load, read_shard
    from alm.generate_audiopalm import Export, speak

    texts = {}
    for f in sorted((SPEECH / "train-clean-100").rglob("*.trans.txt")):
        texts.update(dict(line.split(" ", 1) for line in f.read_text().splitlines()))
    units = {s["__key__"]: npy_load(s["semantic.npy"]) for u in expand_shards(str(trained / "tok" / "train-*.tar"))
             for s in read_shard(u)}
    ex = Export(str(trained / "export"))
    scores = []
    for key in sorted(units)[:3]:
        want = units[key].astype(np.int64)
        got = speak(ex, texts[key])
        n = min(len(got), len(want))
        scores.append(float((got[:n] == want[:n]).mean()) * n / max(len(got), len(want)))
    print("TTS token agreement per utterance:", [round(s, 3) for s in scores])
    assert min(scores) >= 0.9, scores
