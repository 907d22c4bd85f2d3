"""AudioPaLM S2ST end to end on the committed fixtures: `alm prep covost2` (source speech, transcript,
translation) and `alm prep cvss` (the French target speech) of the same 7 clips, both tokenized with ONE
semantic tokenizer (the target set through `alm tokenize semantic --tokenizer ... --member
target_semantic.npy`), joined three ways, and the tiny recipe (only data.*, model.task_tags, the lr and the
step count overridden) overfits s2st on the 6 training pairs in 80 steps. Greedy s2st then emits the target
speech tokens of every training pair, and `alm generate audiopalm --task s2st --voice` writes a wav
through a tiny SoundStorm of the same tokenizer (the voice prompt's frames cut from it).

The source recordings given to the model are the prep shards' flac (what it trained on): reading the
Common Voice mp3 directly decodes to samples whose tokens differ from the prep's in 2-8 % of frames.

The tokenizer is the synthetic set's log-mel k-means (K = 64, cached once per test session) so that the
tiny SoundStorm trained on the synthetic set shares it (alm checks the fingerprints)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from helpers import REPO, alm, losses

pytestmark = pytest.mark.slow
SPEECH = REPO / "tests" / "fixtures" / "speech"
RECIPE = str(REPO / "recipes" / "tiny" / "audiopalm.yaml")
TAGS = '["[S2ST English French]","[ASR AST English French]","[ASR AST S2ST English French]"]'
STEPS = 80
QUICK = ["trainer.val_every_n_steps=0", "trainer.progress_bar=false", "trainer.threads=2", "trainer.accelerator=cpu",
         "data.num_workers=0", "wandb.enabled=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from alm.data.cache import cache_root
    from alm.data_prep.cli import run as prep
    from alm.stages.semantic import synthetic_semantic
    from alm.tokenizers.semantic import run as tokenize

    root = tmp_path_factory.mktemp("s2st")
    prep("covost2", SPEECH / "covost2", root / "covost", quiet=True)
    prep("cvss", SPEECH / "cvss", root / "cvss", quiet=True)
    tok = synthetic_semantic(cache_root(), 64) / "tokenizer"
    tokenize(str(root / "covost"), str(root / "src-tok"), tokenizer_dir=str(tok), progress=False)
    alm("tokenize", "semantic", "--shards", str(root / "cvss"), "--tokenizer", str(tok), "--member",
        "target_semantic.npy", "--out", str(root / "tgt-tok"))
    shards = " + ".join(f"{root}/{d}/train-*.tar" for d in ("covost", "src-tok", "tgt-tok"))
    alm("train", RECIPE, f"run_dir={root / 'run'}", f"data.train_shards={shards}", "data.val_shards=null",
        f"data.tokenizer={root / 'src-tok' / 'tokenizer'}", "data.tasks=[s2st]", f"model.task_tags={TAGS}",
        "data.batch_size=6", "data.shuffle_buffer=6", "optim.lr=0.005", "optim.warmup_steps=10",
        f"trainer.max_steps={STEPS}", f"trainer.ckpt_every_n_steps={STEPS}", *QUICK, timeout=1200)
    alm("export", str(root / "run"), "--out", str(root / "export"))
    from alm.data.shards import read_shard

    (root / "flac").mkdir()
    for shard in sorted((root / "covost").glob("train-*.tar")):
        for s in read_shard(str(shard)):
            (root / "flac" / f"{s['__key__']}.flac").write_bytes(s["flac"])
    return root


def test_the_target_tokens_are_the_source_tokenizers_under_their_own_member(trained):
    from alm.data.shards import read_shard

    (shard,) = sorted((trained / "tgt-tok").glob("train-*.tar"))
    sample = next(iter(read_shard(str(shard))))
    assert set(sample) - {"__key__", "__url__", "__local_path__"} == {"target_semantic.npy"}
    fingerprints = [json.loads((trained / d / "tokenizer" / "semantic_tokenizer.json").read_text())
                    for d in ("src-tok", "tgt-tok")]
    assert fingerprints[0] == fingerprints[1]


def test_greedy_s2st_speaks_the_target_tokens_of_every_training_pair(trained):
    from alm.data.shards import npy_load, read_shard
    from alm.generate_audiopalm import Export, translate

    target = {s["__key__"]: npy_load(s["target_semantic.npy"]) for p in sorted((trained / "tgt-tok").glob("train-*.tar"))
              for s in read_shard(str(p))}
    ex = Export(str(trained / "export"))
    scores = []
    for key in sorted(target):
        want = target[key].astype(np.int64)
        got = translate(ex, str(trained / "flac" / f"{key}.flac"), "s2st")["semantic"]
        n = min(len(got), len(want))
        scores.append(float((got[:n] == want[:n]).mean()) * n / max(len(got), len(want)))
    train = losses(trained / "run")
    print("S2ST target-token agreement per pair:", [round(s, 3) for s in scores],
          f"loss {train[0]:.3f} -> {train[STEPS - 1]:.3f}")
    assert len(scores) == 6 and min(scores) >= 0.9, scores


def random_export(recipe: str, out) -> str:
    """An export of a tiny stage recipe with random weights, on its synthetic data's tokenizer and codec
    (the acoustic side of the decode path, not its quality, is under test)."""
    import torch

    from alm.config import load_recipe
    from alm.data.cache import cache_root
    from alm.export import build_model, write_export
    from alm.stages import get_stage

    path = REPO / "recipes" / "tiny" / recipe
    cfg = load_recipe(path, [f"run_dir={out}-run"])
    made = get_stage(cfg.stage).synthetic_data(cfg, cache_root())
    cfg = load_recipe(path, [f"run_dir={out}-run", f"data.tokenizer={made['tokenizer']}", f"data.codec={made['codec']}"])
    torch.manual_seed(0)
    return str(write_export(build_model(cfg).eval(), cfg, out))


@pytest.mark.parametrize("acoustic", ["soundstorm", "coarse+fine"])
def test_alm_generate_s2st_writes_a_wav_through_the_acoustic_stages(trained, tmp_path, acoustic):
    if acoustic == "soundstorm":
        stages = ["--soundstorm", random_export("soundstorm.yaml", tmp_path / "ss")]
    else:
        stages = ["--coarse", random_export("coarse.yaml", tmp_path / "coarse"),
                  "--fine", random_export("fine.yaml", tmp_path / "fine")]
    wav = tmp_path / "y.wav"
    voice = SPEECH / "cvss" / "dev" / "common_voice_en_7000007.mp3.wav"  # 1.9 s of the French voice
    p = alm("generate", "audiopalm", str(trained / "export"), "--task", "s2st", "--audio",
            str(trained / "flac" / "common_voice_en_7000001.flac"), *stages, "--voice", str(voice), "--out", str(wav))
    n = int(p.stdout.split("[alm] ")[-1].split()[0])
    audio, rate = sf.read(wav)
    assert abs(n - 123) <= 3 and np.isfinite(audio).all(), p.stdout  # the pair's 123 target tokens (see above)
    assert abs(len(audio) / rate - n / 50.0) < 0.05, (len(audio) / rate, n)  # 50 Hz tokens; the prompt's cut
    if acoustic == "soundstorm":
        p = alm("generate", "audiopalm", str(trained / "export"), "--task", "s2st", "--audio", str(wav),
                "--out", str(tmp_path / "z.wav"), check=False)
        assert p.returncode == 2 and "--soundstorm EXPORT or --coarse EXPORT --fine EXPORT" in p.stderr


def test_asr_ast_s2st_decoding_keeps_to_text_then_speech(trained):
    """The combined task's mask: text or audio ids until the first audio id, then only audio ids (and EOS).
    Sampled hot (temperature 5: close to uniform over the 384 text + 64 audio ids) from a tag this model never
    trained on, so only the mask can keep the order."""
    from alm.generate_audiopalm import Export, decode

    ex = Export(str(trained / "export"))
    a = ex.layout.audio_start
    prompt = ex.prompt("asr_ast_s2st", list(ex.semantic(str(trained / "flac" / "common_voice_en_7000001.flac")) + a))
    seen_switch = 0
    for seed in range(4):
        ids = decode(ex, "asr_ast_s2st", prompt, decoding="sample", temperature=5.0, max_new_tokens=40,
                     min_new_tokens=40, seed=seed)
        kinds = ["audio" if a <= t < a + ex.layout.audio else "text" if t < a else "other" for t in ids]
        assert "other" not in kinds, ids  # never a tag or filler
        first = kinds.index("audio") if "audio" in kinds else len(kinds)
        assert set(kinds[first:]) <= {"audio"}, kinds
        seen_switch += 0 < first < len(kinds)
    assert seen_switch >= 1  # some samples did switch from text to speech


def test_alm_eval_run_asr_ast_scores_transcripts_and_translations(trained, tmp_path):
    """`alm eval run --task asr_ast`: one combined decoding per clip, WER of its transcript part and BLEU of its
    translation part against the covost2 json (this model never trained the combined task: the scores are
    whatever they are; what is checked is that both are made from the split output)."""
    out = tmp_path / "results.json"
    alm("eval", "run", str(trained / "export"), "--task", "asr_ast", "--shards", f"{trained}/covost/train-*.tar",
        "--limit", "2", "--max-new-tokens", "30", "--save-hyps", str(tmp_path / "hyps.jsonl"), "--out", str(out))
    res = json.loads(out.read_text())
    assert res["task"] == "asr_ast" and res["n"] == 2 and {"wer", "cer", "bleu", "chrf"} <= set(res["metrics"]), res
    hyps = [json.loads(line) for line in (tmp_path / "hyps.jsonl").read_text().splitlines()]
    assert [h["transcript_reference"] for h in hyps] == ["The cat sat on the mat by the door.",
                                                         "She opened the window to let in the air."]
    assert hyps[0]["reference"] == "le chat était assis sur le tapis près de la porte"
    assert all(set(h) == {"id", "transcript", "text", "transcript_reference", "reference"} for h in hyps)
