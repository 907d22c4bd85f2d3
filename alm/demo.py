"""`alm demo`: the whole AudioLM path on a CPU in a few minutes, on data it makes itself.

  1. a synthetic captioned audio set (melodies, chords, speech-like babble, noise events) -> shards
  2. tokens: semantic = k-means on log-mel frames (the demo's stand-in for HuBERT features);
     acoustic = the demo codec (the demo's stand-in for EnCodec/SoundStream: MDCT frames + residual VQ
     fitted by k-means on the demo's own training clips, alm/tokenizers/demo_codec.py; no pretrained
     weights offline), its reconstruction SI-SNR measured per kind on the held-out clips
  3. three tiny stages — semantic, coarse, fine — trained with the same Trainer, checkpoints and
     loggers as any run, each exported to safetensors
  4. generation from the exports: semantic tokens -> coarse -> fine -> codec -> a wav, its spectral
     flatness, and pictures: its spectrogram beside the closest training clip's, the loss curves
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from alm.config import build_config

# The embedded default recipes: one shared body + each stage's model (complete once merged).
BASE = """
run_dir: ???
seed: 0
resume: auto
trainer:
  accelerator: cpu
  devices: 1
  num_nodes: 1
  strategy: ddp
  zero_stage: 2
  offload: false
  precision: 32-true
  max_steps: ???
  accumulate_grad_batches: 1
  gradient_clip_val: 1.0
  ckpt_every_n_steps: 100
  keep_last_k: 2
  val_every_n_steps: 100
  val_batches: 4
  log_every_n_steps: 1
  progress_bar: true
  audio_samples: 0
  threads: 0
data:
  train_shards: ???
  val_shards: ???
  batch_size: 16
  max_tokens: 0
  max_len: 128
  num_workers: 2
  shuffle_buffer: 200
  tokenizer: null
  codec: null
optim:
  lr: 0.002
  weight_decay: 0.1
  betas: [0.9, 0.95]
  eps: 1.0e-08
  warmup_steps: 20
  min_lr_ratio: 0.1
wandb:
  enabled: true
  project: alm-demo
  entity: null
  mode: offline
  name: null
"""
TRANSFORMER = """
  n_layer: 4
  n_head: 4
  d_model: 128
  mlp_ratio: 4.0
  max_seq_len: 256
  dropout: 0.1
  bias: false
  rope_theta: 10000.0
  tie_embeddings: true
"""
CLUSTERS = 64
COARSE_LEVELS = 2  # the coarse stage predicts the codec's first levels, the fine stage the rest


def stage_models(levels: int, codebook: int) -> dict[str, str]:
    """The three stages' model keys for a demo codec of `levels` RVQ levels x `codebook` codes at 50 Hz."""
    acoustic = """  codebook_size: {codebook}
  prefix_levels: {prefix}
  target_levels: {target}
  semantic_rate: 50.0
  frame_rate: 50.0
  window_s: 1.0
"""  # coarse: 2 + 50 semantic + 50 x 2 codes = 152 tokens; fine (4 levels): 2 + 50 x 4 = 202
    return {
        "semantic": f"model:\n  vocab_size: {CLUSTERS + 2}" + TRANSFORMER,  # clusters + BOS + EOS
        "coarse": f"model:\n  vocab_size: {CLUSTERS + COARSE_LEVELS * codebook + 3}" + TRANSFORMER
                  + f"  semantic_vocab: {CLUSTERS}\n"
                  + acoustic.format(codebook=codebook, prefix=0, target=COARSE_LEVELS),
        "fine": f"model:\n  vocab_size: {levels * codebook + 3}" + TRANSFORMER + "  semantic_vocab: 0\n"
                + acoustic.format(codebook=codebook, prefix=COARSE_LEVELS, target=levels - COARSE_LEVELS),
    }


def demo_recipe(stage: str):
    from alm.tokenizers.demo_codec import demo_config

    c = demo_config()
    model = stage_models(c.num_quantizers, c.codebook_size)[stage]
    return OmegaConf.merge(OmegaConf.create(BASE), OmegaConf.create(f"stage: {stage}\n" + model))


def say(msg: str) -> None:
    print(f"\n[alm demo] {msg}", flush=True)


def train_stage(stage: str, out: Path, steps: int, overrides: list[str]) -> dict:
    """Train one embedded tiny stage, export it; -> {"first", "last", "val", "run", "export"}."""
    from alm.export import export
    from alm.training.loggers import read_metrics
    from alm.training.trainer import train

    run_dir, exp = out / "runs" / stage, out / "exports" / stage
    cfg = build_config(demo_recipe(stage), f"alm demo (embedded {stage} recipe)",
                       [f"run_dir={run_dir}", f"trainer.max_steps={steps}", *overrides])
    train(cfg)
    export(run_dir, exp, overwrite=True)  # the demo's own folder: a rerun refreshes it
    metrics = read_metrics(run_dir)
    loss = [m["train/loss"] for m in metrics.values() if "train/loss" in m]
    val = [m["val/loss"] for m in metrics.values() if "val/loss" in m]
    return {"first": float(np.mean(loss[:10])), "last": float(np.mean(loss[-10:])), "val": val[-1] if val else None,
            "run": run_dir, "export": exp}


def codec_quality(codec_dir: Path, audio_dir: Path) -> dict[str, float]:
    """Mean reconstruction SI-SNR (dB) per kind of the demo codec on the held-out (val) clips."""
    import torch

    from alm.audio_quality import si_snr
    from alm.plots import kind_of, read_clips
    from alm.tokenizers.codec import decode, encode, load_codec

    codec = load_codec(codec_dir)
    per_kind: dict[str, list[float]] = {}
    for wav, info in read_clips(str(audio_dir / "val-*.tar")):
        recon = decode(codec, encode(codec, torch.from_numpy(wav)[None]))[0].numpy()
        per_kind.setdefault(kind_of(info), []).append(si_snr(wav, recon))
    return {k: float(np.mean(v)) for k, v in sorted(per_kind.items())}


def draw_pictures(out: Path, wav: Path, audio_dir: Path, stages: dict) -> dict:
    """generated.png (the generated wav's spectrogram over the closest training clip's) and losses.png
    (the three stages' training losses); -> their paths, the kind of that clip and both flatnesses."""
    import soundfile as sf

    from alm.audio_quality import spectral_flatness
    from alm.plots import closest_clip, kind_of, loss_curves_png, read_clips, spectrograms_png
    from alm.training.loggers import read_metrics

    generated, rate = sf.read(str(wav), dtype="float32")
    ref, info = closest_clip(generated, rate, read_clips(str(audio_dir / "train-*.tar"), rate))
    caption = (info.get("captions") or [""])[0]
    spec = spectrograms_png(out / "generated.png", [(f"generated ({wav.name})", generated, rate),
                                                    (f"closest training clip ({kind_of(info)}): {caption}", ref, 16000)])
    curves = {}
    for stage, s in stages.items():
        m = read_metrics(s["run"])
        steps = [k for k, v in m.items() if "train/loss" in v]
        curves[stage] = (steps, [m[k]["train/loss"] for k in steps])
    losses = loss_curves_png(out / "losses.png", curves, "alm demo: training loss of the three stages")
    band = 16000 / 2 * codec_band(out / "codec")  # the band the codec codes: flatness there too
    return {"spectrogram": spec, "losses": losses, "kind": kind_of(info), "flatness": spectral_flatness(generated),
            "reference_flatness": spectral_flatness(ref), "band_hz": band,
            "band_flatness": spectral_flatness(generated, sample_rate=rate, max_hz=band),
            "reference_band_flatness": spectral_flatness(ref, max_hz=band)}


def log_pictures_to_wandb(run_dir: Path, pictures: dict) -> str:
    """Log the two pictures into the fine stage's W&B run (resumed by its id; offline unless
    WANDB_MODE=online, as the demo's recipes log) -> a line saying where they went."""
    import os

    from alm.training.loggers import wandb_run_id

    mode = os.environ.get("WANDB_MODE") or OmegaConf.create(BASE).wandb.mode
    if mode == "disabled":
        return "W&B disabled (WANDB_MODE=disabled): pictures not logged there"
    try:
        import wandb

        run = wandb.init(project=OmegaConf.create(BASE).wandb.project, id=wandb_run_id(run_dir), resume="allow",
                         dir=str(run_dir), mode=mode, name=run_dir.name)
        run.log({"demo/spectrograms": wandb.Image(pictures["spectrogram"]), "demo/loss_curves": wandb.Image(pictures["losses"])})
        run.finish()
    except Exception as exc:  # the pictures are on disk anyway: say why W&B did not get them
        return f"W&B did not get the pictures ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return f"pictures logged to the fine stage's W&B run ({mode}, {run_dir / 'wandb'})"


def check_existing_codec(codec_dir: Path, want) -> None:
    """A rerun reuses OUT/codec (and the codes and runs made with it) only when it is the codec this demo fits."""
    from alm.errors import UserError
    from alm.tokenizers.demo_codec import read_config

    if not (codec_dir / "config.json").is_file():
        return
    have = read_config(codec_dir)
    fields = [k for k in want.__dataclass_fields__ if k != "fitted_on"]
    same = have is not None and all(getattr(have, k) == getattr(want, k) for k in fields)
    if not same:
        shape = f"{have.num_quantizers} levels x {have.codebook_size} codes" if have is not None else "not a demo codec"
        raise UserError(f"{codec_dir}: made by another alm demo ({shape}); this one fits {want.num_quantizers} levels x "
                        f"{want.codebook_size} codes: give a new --out (or delete {codec_dir.parent})")


def codec_band(codec_dir: Path) -> float:
    """The fraction of the spectrum the demo codec codes (bins / hop); 1.0 for another codec."""
    from alm.tokenizers.demo_codec import read_config

    cfg = read_config(codec_dir)
    return cfg.bins / cfg.hop_length if cfg is not None else 1.0


AUDIOLM_STEPS = 250  # steps per AudioLM stage (alm demo)
MUSICGEN_STEPS = 300  # the tiny MusicGen's steps (alm demo --model musicgen): about 2.5 min on 2 cores


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="alm demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="alm-demo", help="where data, runs, exports and samples go")
    p.add_argument("--steps", type=int, default=None, help=f"training steps per stage (default {AUDIOLM_STEPS}; "
                                                           f"--model musicgen: {MUSICGEN_STEPS})")
    p.add_argument("--clips", type=int, default=240, help="synthetic training clips (4 s each)")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds of audio to generate at the end")
    p.add_argument("--model", choices=("audiolm", "musicgen"), default="audiolm",
                   help="audiolm: semantic -> coarse -> fine; musicgen: the text-to-music LM (alm/demo_musicgen.py, "
                        f"{MUSICGEN_STEPS} steps unless --steps)")
    a = p.parse_args(argv)
    if a.model == "musicgen":
        from alm.demo_musicgen import run

        return run(Path(a.out).resolve(), a.steps or MUSICGEN_STEPS, a.seconds)
    a.steps = a.steps or AUDIOLM_STEPS
    t0 = time.time()
    out = Path(a.out).resolve()

    from alm.data.synthetic import write_synthetic
    from alm.tokenizers.codec import tokenize_codec_shards
    from alm.tokenizers.demo_codec import demo_config, make_demo_codec
    from alm.tokenizers.semantic import SemanticTokenizerConfig, run as tokenize

    audio, sem, codes, codec = out / "data" / "audio", out / "data" / "semantic", out / "data" / "codes", out / "codec"
    want = demo_config()
    check_existing_codec(codec, want)
    if not (audio / "manifest.json").is_file():
        say(f"1/4 making a synthetic captioned audio dataset ({a.clips} clips of 4 s) -> {audio}")
        manifest = write_synthetic(audio, num_clips=a.clips)
        print(f"  {sum(s['num_samples'] for s in manifest['splits'].values())} clips in "
              f"{sum(len(s['shards']) for s in manifest['splits'].values())} shards")
    else:
        say(f"1/4 synthetic dataset already in {audio}")
    say(f"2/4 tokens: semantic = k-means (K={CLUSTERS}) on log-mel frames (demo stand-in for HuBERT) -> {sem}\n"
        f"           acoustic = the demo codec (stand-in for EnCodec: MDCT + residual VQ fitted on the training clips),\n"
        f"           {want.num_quantizers} RVQ levels x {want.codebook_size} codes at {want.frame_rate} Hz -> {codes}")
    if not list(sem.glob("val-*.tar")):
        tokenize(str(audio), str(sem), SemanticTokenizerConfig(features="logmel", n_clusters=CLUSTERS),
                 fit_shards=str(audio / "train-*.tar"))
    if not (codec / "config.json").is_file():
        t = time.time()
        make_demo_codec(codec, str(audio / "train-*.tar"), want)
        print(f"  demo codec fitted on the training clips in {time.time() - t:.0f} s -> {codec}")
    quality = codec_quality(codec, audio)
    print("  codec reconstruction SI-SNR on held-out clips: "
          + ", ".join(f"{kind} {db:.1f} dB" for kind, db in quality.items()))
    if not list(codes.glob("val-*.tar")):
        tokenize_codec_shards(str(audio), codes, str(codec))

    def data(split_sets: str) -> list[str]:
        return [f"data.train_shards={split_sets.format(split='train')}", f"data.val_shards={split_sets.format(split='val')}"]

    stages = {}
    plan = {
        "semantic": data(f"{sem}/{{split}}-*.tar") + [f"data.tokenizer={sem}/tokenizer"],
        "coarse": data(f"{sem}/{{split}}-*.tar + {codes}/{{split}}-*.tar") + [f"data.tokenizer={sem}/tokenizer", f"data.codec={codec}"],
        "fine": data(f"{codes}/{{split}}-*.tar") + [f"data.codec={codec}"],
    }
    for i, (stage, overrides) in enumerate(plan.items()):
        say(f"3/4 training stage {i + 1}/3: tiny {stage} LM ({a.steps} steps on CPU) -> {out / 'runs' / stage}")
        stages[stage] = train_stage(stage, out, a.steps, overrides)

    say(f"4/4 generating {a.seconds:.0f} s: semantic -> coarse -> fine (KV cache) -> codec decoder")
    from alm.generate import generate_audiolm

    wav = out / "generated.wav"
    r = generate_audiolm(str(stages["semantic"]["export"]), str(stages["coarse"]["export"]), str(stages["fine"]["export"]),
                         a.seconds, str(wav), temperature=0.9, top_k=20, seed=0)
    np.save(out / "generated_codes.npy", r["codes"])
    pictures = draw_pictures(out, wav, audio, stages)
    print(f"  {log_pictures_to_wandb(stages['fine']['run'], pictures)}")
    print(f"  generated wav: median spectral flatness {pictures['flatness']:.3f} (0 = tonal, ~0.5 = white noise; "
          f"the closest training clip, a {pictures['kind']} clip: {pictures['reference_flatness']:.3f}); "
          f"within the coded band 0-{pictures['band_hz'] / 1000:.0f} kHz: {pictures['band_flatness']:.3f} "
          f"(that clip: {pictures['reference_band_flatness']:.3f})")

    lines = [f"\n[alm demo] done in {time.time() - t0:.0f} s"]
    for stage, s in stages.items():
        val = f", val {s['val']:.3f}" if s["val"] is not None else ""
        lines.append(f"  {stage:<8} train loss {s['first']:.3f} (first 10 steps) -> {s['last']:.3f} (last 10){val}")
    lines += [
        f"  audio shards    {audio}",
        f"  token shards    {sem}  and  {codes}",
        f"  runs            {out / 'runs'}/{{semantic,coarse,fine}}  (config.yaml, checkpoints/, logs/attempt-*/metrics.csv, wandb/)",
        f"  exports         {out / 'exports'}/{{semantic,coarse,fine}}  (model.safetensors, config.yaml, tokenizer/, codec/)",
        f"  generated audio {wav}  ({r['seconds']:.2f} s at {r['sample_rate']} Hz, decoded by the demo codec;",
        "                  use a pretrained EnCodec for real sound)",
        f"  spectrograms    {pictures['spectrogram']}  (generated vs the closest training clip, a {pictures['kind']} clip)",
        f"  loss curves     {pictures['losses']}",
        f"  load a model:   python -c \"import alm; print(alm.load_pretrained('{out / 'exports' / 'semantic'}'))\"",
    ]
    lines += next_steps(out, wav)
    print("\n".join(lines))
    return 0


def suggested_commands(out: Path) -> dict[str, str]:
    """The commands the demo's closing notes suggest, with the demo's real paths."""
    from alm.recipes_index import shipped_recipes_dir

    exp = out / "exports"
    return {
        "generate": f"alm generate audiolm --semantic {exp / 'semantic'} --coarse {exp / 'coarse'} "
                    f"--fine {exp / 'fine'} --seconds 8 --top-k 20 --out {out / 'more.wav'}",
        "tokens": f"alm generate semantic {exp / 'semantic'} --tokens 200 --out {out / 'tokens.npy'}",
        "samples": f"alm train {shipped_recipes_dir() / 'tiny' / 'coarse.yaml'} run_dir={out / 'runs' / 'coarse-samples'}",
        "slurm": "alm launch slurm recipes/audiolm/pipeline.yaml --cluster example --dry-run",
    }


def next_steps(out: Path, wav: Path) -> list[str]:
    """The closing "what now" of the demo."""
    c = suggested_commands(out)
    pad = " " * 22
    return [
        "\n[alm demo] next steps",
        f"  1. listen:          {wav}",
        f"  2. generate more:   {c['generate']}",
        f"{pad}{c['tokens']}",
        f"  3. hear training:   {c['samples']}",
        f"{pad}(trainer.audio_samples=1: each validation writes RUN_DIR/samples/step-000000100-0-generated.wav",
        f"{pad}and -reference.wav, also logged to W&B)",
        "  4. your own data:   README section \"Train on your own data\": alm prep -> alm tokenize -> "
        "alm train RECIPE data.train_shards=... ;",
        f"{pad}alm recipes lists the shipped recipes, alm train --help the override keys",
        f"  5. on a cluster:    {c['slurm']}",
        f"{pad}(in the alm clone; see launch/README.md)",
    ]
