"""LibriLight-style long recordings, prep to generated wav: the whole AudioLM path on chapters of
minutes, each command measured (wall time and its own peak RSS).

    python benchmarks/long_recordings.py [--minutes 10] [--chapters 3] [--steps 40] [--out DIR]

Builds `SRC/small/{speaker}/{book}/{stem}.flac` (+ a LibriLight-style json sidecar) of speech-like
synthetic audio (alm.data.synthetic's formant babble, 16 kHz), then runs, as a user would:
  alm prep librilight -> alm tokenize semantic (log-mel k-means, the CPU stand-in for HuBERT)
  -> the demo codec fitted on the prepared audio -> alm tokenize codec -> alm train semantic /
  coarse / fine (tiny recipes, the prepared shards) -> alm export x3 -> alm generate audiolm -> wav.
Prints one table: command, seconds, peak RSS of that command's process tree (MB), and what it
made; then the examples one epoch yields per stage (the windows of every chapter).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RATE = 16000

FAST = ["model.n_layer=2", "model.d_model=64", "model.n_head=2", "trainer.val_every_n_steps=0",
        "trainer.ckpt_every_n_steps=1000", "trainer.audio_samples=0", "data.val_shards=null",
        "trainer.accelerator=cpu", "trainer.progress_bar=false", "data.num_workers=1", "wandb.enabled=false"]


def measured(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run cmd in a fresh wrapper process so RUSAGE_CHILDREN is that command's alone:
    -> (seconds, peak RSS MB of its largest process)."""
    wrapper = ("import resource, subprocess, sys, json;"
               "rc = subprocess.run(sys.argv[1:]).returncode;"
               "print(json.dumps([rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.run([sys.executable, "-c", wrapper, *cmd], stdout=subprocess.PIPE, stderr=f, text=True)
    seconds = time.perf_counter() - t0
    rc, maxrss = json.loads(p.stdout.strip().splitlines()[-1])
    if rc != 0:
        sys.exit(f"failed (rc {rc}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return seconds, maxrss / 1024


def make_librilight(src: Path, chapters: int, minutes: float) -> float:
    """SRC/small/{speaker}/{book}/{stem}.flac + .json: -> seconds of audio written."""
    import soundfile as sf

    from alm.data.synthetic import speech

    total = 0.0
    for c in range(chapters):
        speaker, book = 100 + c, 2000 + c
        folder = src / "small" / str(speaker) / f"book_{book}"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"chapter_{c:02d}"
        rng = np.random.default_rng(c)
        pieces = []
        for _ in range(int(minutes * 6)):  # 10-second phrases with pauses, like read speech
            audio, _, _ = speech(rng, RATE, 9.0)
            pieces += [audio, np.zeros(RATE, np.float32)]
        wav = np.concatenate(pieces)[: int(minutes * 60 * RATE)]
        sf.write(folder / f"{stem}.flac", wav, RATE)
        sidecar = {"speaker": str(speaker), "book_meta": {"id": str(book)}, "snr": 20.0,
                   "voice_activity": [[0.0, len(wav) / RATE]]}
        (folder / f"{stem}.json").write_text(json.dumps(sidecar))
        total += len(wav) / RATE
    return total


def epoch_windows(codes_dir: Path, window_s: float = 1.0, frame_rate: float = 50.0) -> int:
    """Examples one epoch yields with data.windows=all: the stage's own windowing over every recording."""
    import io

    from alm.data.index import read_sample, shard_index
    from alm.models.acoustic_lm import aligned_windows

    total = 0
    for shard in sorted(codes_dir.glob("*.tar")):
        index = shard_index(str(shard))
        for i in range(len(index)):
            codes = np.load(io.BytesIO(read_sample(index, i)["codes.npy"]))
            total += len(aligned_windows(codes.shape[1], 0, frame_rate, frame_rate, int(window_s * frame_rate),
                                         np.random.default_rng(0)))
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="length of each chapter")
    p.add_argument("--chapters", type=int, default=3)
    p.add_argument("--steps", type=int, default=40, help="training steps per stage")
    p.add_argument("--out", default="/tmp/alm-long-recordings")
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    alm = [sys.executable, "-m", "alm"]
    rows = []

    def step(name: str, cmd: list[str], made: str = "") -> None:
        seconds, mb = measured(cmd, out / f"{name}.log")
        rows.append((name, seconds, mb, made))
        print(f"  {name:<16} {seconds:7.1f} s  {mb:7.0f} MB  {made}", flush=True)

    audio_s = make_librilight(out / "src", a.chapters, a.minutes)
    print(f"made {a.chapters} chapter(s) x {a.minutes:g} min = {audio_s / 60:.1f} min of audio in {out / 'src'}")
    step("prep", [*alm, "prep", "librilight", "--src", str(out / "src"), "--out", str(out / "audio"),
                  "--sample-rate", str(RATE), "--quiet"], "audio shards")
    step("tokenize-sem", [*alm, "tokenize", "semantic", "--shards", str(out / "audio"), "--out", str(out / "sem"),
                          "--features", "logmel", "--clusters", "64"], "log-mel k-means K=64")
    codec_py = ("import sys; from alm.tokenizers.demo_codec import make_demo_codec;"
                "print(make_demo_codec(sys.argv[1], sys.argv[2]))")
    step("fit-codec", [sys.executable, "-c", codec_py, str(out / "codec"), str(out / "audio")], "demo codec")
    step("tokenize-codec", [*alm, "tokenize", "codec", "--shards", str(out / "audio"), "--out", str(out / "codes"),
                            "--codec", str(out / "codec"), "--no-progress"], "codes")
    joined = f"{out / 'sem'} + {out / 'codes'}"
    data = {"semantic": [f"data.train_shards={out / 'sem'}", f"data.tokenizer={out / 'sem' / 'tokenizer'}"],
            "coarse": [f"data.train_shards={joined}", f"data.tokenizer={out / 'sem' / 'tokenizer'}",
                       f"data.codec={out / 'codec'}"],
            "fine": [f"data.train_shards={out / 'codes'}", f"data.codec={out / 'codec'}"]}
    for stage, overrides in data.items():
        run = out / "runs" / stage
        step(f"train-{stage}", [*alm, "train", str(REPO / "recipes" / "tiny" / f"{stage}.yaml"), f"run_dir={run}",
                                f"trainer.max_steps={a.steps}", *FAST, *overrides], f"{a.steps} steps")
        step(f"export-{stage}", [*alm, "export", str(run), "--out", str(out / "exports" / stage), "--overwrite"])
    print(f"  one epoch of the coarse stage (1 s windows): {epoch_windows(out / 'codes')} examples from "
          f"{a.chapters} recording(s) (data.windows=one would give {a.chapters})", flush=True)
    wav = out / "generated.wav"
    step("generate", [*alm, "generate", "audiolm", "--semantic", str(out / "exports" / "semantic"),
                      "--coarse", str(out / "exports" / "coarse"), "--fine", str(out / "exports" / "fine"),
                      "--seconds", "4", "--out", str(wav)], str(wav))
    print(f"\n{len(rows)} commands, {sum(r[1] for r in rows):.0f} s in all; the largest process peaked at "
          f"{max(r[2] for r in rows):.0f} MB (one chapter's 16 kHz float32 audio: "
          f"{a.minutes * 60 * RATE * 4 / 2**20:.0f} MB)")
    print(f"peak RSS of this benchmark process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
