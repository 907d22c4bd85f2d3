"""`alm demo --model musicgen`: the embedded default for text-to-music, on CPU in a few minutes.

It trains (300 steps by default) the tiny MusicGen recipe (recipes/tiny/musicgen.yaml: a text-conditioned LM over the 4
codebooks of alm's demo codec, delay pattern, cross-attention to a tiny random T5 — the stand-ins for
EnCodec 32 kHz and T5-base, made once into $ALM_CACHE with the synthetic captioned set), exports it,
and generates one wav per caption with classifier-free guidance. Validation writes audio samples for
fixed validation clips (their captions as prompts) to RUN_DIR/samples/ and W&B. Pictures: each wav's
spectrogram over the closest training clip's, and the loss curve.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

CAPTIONS = ("a slow melody on a soft synthesizer", "people talking in a crowded room")


def run(out: Path, steps: int, seconds: float, captions: tuple[str, ...] = CAPTIONS) -> int:
    from alm.audio_quality import spectral_flatness
    from alm.config import load_recipe
    from alm.data.cache import resolve_synthetic
    from alm.demo import say
    from alm.export import export
    from alm.plots import loss_curves_png, plot_generated
    from alm.recipes_index import shipped_recipes_dir
    from alm.stages.musicgen_generate import generate_musicgen
    from alm.training.loggers import read_metrics
    from alm.training.trainer import train

    t0 = time.time()
    out = Path(out).resolve()
    run_dir, exp = out / "runs" / "musicgen", out / "exports" / "musicgen"
    recipe = shipped_recipes_dir() / "tiny" / "musicgen.yaml"
    say(f"1/3 training the tiny MusicGen ({steps} steps on CPU; synthetic captioned clips as demo-codec codes, "
        f"a tiny random T5, both made once into the cache) -> {run_dir}")
    cfg = load_recipe(recipe, [f"run_dir={run_dir}", f"trainer.max_steps={steps}",
                               f"trainer.val_every_n_steps={max(1, steps // 2)}"])
    resolve_synthetic(cfg)  # the synthetic captioned set, demo codec and tiny T5 (made once)
    train(cfg)
    export(run_dir, exp, overwrite=True)
    metrics = read_metrics(run_dir)
    loss = [(s, m["train/loss"]) for s, m in sorted(metrics.items()) if "train/loss" in m]
    val = [(s, m["val/loss"]) for s, m in sorted(metrics.items()) if "val/loss" in m]

    say(f"2/3 generating {seconds:g} s for each of {len(captions)} captions (KV cache, CFG 3.0, top-k 250)")
    wav_dir = out / "generated"
    r = generate_musicgen(str(exp), list(captions), seconds, str(wav_dir), cfg_scale=3.0, seed=0, progress=False)

    say("3/3 pictures")
    import soundfile as sf

    from alm.demo import codec_band

    band = r["sample_rate"] / 2 * codec_band(exp / "codec")  # the band the demo codec codes (flatness there)
    lines = []
    for caption, wav in zip(captions, r["wavs"]):
        audio, rate = sf.read(wav, dtype="float32")
        pic = plot_generated(wav, exp)
        lines.append(f"  {wav}  <- {caption!r}: median spectral flatness within the coded band 0-{band / 1000:.0f} kHz "
                     f"{spectral_flatness(audio, sample_rate=rate, max_hz=band):.3f} (0 = tonal, ~0.5 = noise); "
                     f"spectrogram {pic['png']} (beside the closest training clip, a {pic['kind']} clip)")
    losses = loss_curves_png(out / "musicgen_losses.png",
                             {"musicgen": ([s for s, _ in loss], [v for _, v in loss])}) if loss else None

    first, last = float(np.mean([v for _, v in loss[:10]])), float(np.mean([v for _, v in loss[-10:]]))
    print(f"\n[alm demo --model musicgen] done in {time.time() - t0:.0f} s")
    print(f"  musicgen train loss {first:.3f} (first 10 steps) -> {last:.3f} (last 10)"
          + (f", val {val[-1][1]:.3f}" if val else ""))
    print("\n".join(lines))
    print(f"  loss curve      {losses}")
    print(f"  validation audio {run_dir / 'samples'}  (fixed validation clips' captions as prompts; also in W&B)")
    print(f"  export          {exp}  (model.safetensors, text_encoder/, codec/)")
    print("\n[alm demo --model musicgen] next steps")
    print(f"  generate:  alm generate musicgen {exp} --text \"a fast arpeggio\" --seconds 4 --out {out / 'more.wav'}")
    print("  real weights: alm convert musicgen facebook/musicgen-small --out exports/musicgen-small "
          "(then recipes/musicgen/finetune_lora.yaml)")
    print("  your data: alm tokenize codec --shards YOUR_PREP --codec encodec_32khz --out CODES; "
          "alm train recipes/musicgen/small.yaml data.train_shards='CODES/train-*.tar'")
    return 0
