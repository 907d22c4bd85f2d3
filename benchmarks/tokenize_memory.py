"""Peak memory of codec tokenization: a 1-minute vs a 20-minute file, per codec.

Each case runs `tokenize_codec_shards` (the `alm tokenize codec` path: read the shard, decode the
FLAC, encode in windows batched by audio length) in a fresh subprocess, which reports its own peak
RSS (VmHWM; see peak_rss_mib) and the time of the tokenize call alone. The codecs are a tiny random
transformers EnCodec (alm.tokenizers.codec.make_tiny_codec, 16 kHz, hop 320) and the demo codec
(fitted here on a few seconds of the same kind of audio). The audio is made here: tones under a
moving envelope plus noise, 16-bit FLAC in a one-sample shard per duration.

With chunking, the peak should hardly grow with the file: the ratio 20-min / 1-min peak RSS is
printed per codec (goal <= 1.3), with tokens/s (frames x levels per second of the tokenize call).
`--whole` adds the old way for comparison: the file encoded in one forward (alm.tokenizers.codec.encode).

    python benchmarks/tokenize_memory.py [--minutes 1 20] [--whole] [--batch-seconds 30]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RATE = 16000


def write_audio_shard(path: Path, minutes: float, seed: int = 0) -> None:
    """A shard with one FLAC sample of `minutes`, written block by block (the parent stays small)."""
    import soundfile as sf

    from alm.data.shards import TarShard, json_bytes

    rng = np.random.default_rng(seed)
    total, block = int(minutes * 60 * RATE), 10 * RATE
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", RATE, 1, format="FLAC", subtype="PCM_16") as f:
        for start in range(0, total, block):
            t = np.arange(start, min(start + block, total)) / RATE
            env = 0.5 + 0.4 * np.sin(2 * np.pi * t / 7.0)
            x = env * 0.3 * np.sin(2 * np.pi * (220 + 120 * np.sin(t / 3.0)) * t) + 0.03 * rng.standard_normal(len(t))
            f.write(x.astype(np.float32))
    with TarShard(path) as shard:
        shard.write({"__key__": "long", "flac": buf.getvalue(), "json": json_bytes({"id": "long", "minutes": minutes})})


def make_codecs(root: Path) -> dict[str, str]:
    from alm.tokenizers.codec import make_tiny_codec
    from alm.tokenizers.demo_codec import DemoCodecConfig, fit_demo_codec

    fit = root / "fit.tar"
    write_audio_shard(fit, 0.1, seed=1)
    from alm.tokenizers.demo_codec import read_clips

    demo = fit_demo_codec(read_clips(str(fit), RATE), DemoCodecConfig(kmeans_iters=5))
    demo.save_pretrained(root / "demo_codec")
    return {"encodec (tiny random)": make_tiny_codec(root / "tiny_encodec"), "demo codec": str(root / "demo_codec")}


def child(args) -> None:
    """Tokenize one shard; print one JSON line: peak RSS (MiB), seconds, frames, levels."""
    import torch

    from alm.tokenizers.codec import encode, load_codec, tokenize_codec_shards

    torch.set_num_threads(1)
    codec = load_codec(args.codec)
    t0 = time.perf_counter()
    if args.whole:  # the old way: the whole file in one forward
        from alm.data.audio import load_mono
        from alm.data.shards import read_shard

        sample = next(iter(read_shard(args.shard)))
        wav = load_mono(sample["flac"], int(codec.config.sampling_rate))[0]
        codes = encode(codec, torch.from_numpy(wav)[None])[0]
        frames, levels = codes.shape[-1], codes.shape[0]
    else:
        from alm.data.shards import npy_load, read_shard

        out = Path(args.out)
        summary = tokenize_codec_shards(args.shard, out, codec, batch_size=1, batch_seconds=args.batch_seconds,
                                        progress=False)
        if summary["errors"]:
            raise SystemExit(f"tokenize failed: {summary['errors']}")
        codes = npy_load(next(iter(read_shard(summary["shards"][0])))["codes.npy"])
        levels, frames = codes.shape
    seconds = time.perf_counter() - t0
    print(json.dumps({"peak_mib": peak_rss_mib(), "seconds": seconds, "frames": int(frames), "levels": int(levels)}))


def peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM from /proc/self/status on Linux (getrusage's ru_maxrss of a child
    keeps its parent's RSS at fork across exec there), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def run_case(codec: str, shard: Path, out: Path, whole: bool, batch_seconds: float) -> dict:
    cmd = [sys.executable, __file__, "--child", "--codec", codec, "--shard", str(shard), "--out", str(out),
           "--batch-seconds", str(batch_seconds)] + (["--whole"] if whole else [])
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if p.returncode != 0:
        raise SystemExit(f"case {codec} {shard.name} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs=2, default=[1.0, 20.0], metavar=("SHORT", "LONG"))
    ap.add_argument("--batch-seconds", type=float, default=30.0,
                    help="audio per encoder forward; at most the short file's length, so both files fill a batch "
                         "and the ratio shows what the file's length adds")
    ap.add_argument("--whole", action="store_true", help="also measure the whole file in one forward (the old way)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--codec", help=argparse.SUPPRESS)
    ap.add_argument("--shard", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        codecs = make_codecs(root)
        shards = {}
        for m in args.minutes:
            shards[m] = root / f"audio-{m:g}min.tar"
            write_audio_shard(shards[m], m)
        modes = [False, True] if args.whole else [False]
        for name, path in codecs.items():
            for whole in modes:
                label = f"{name}, {'whole file in one forward' if whole else 'chunked'}"
                got = {}
                for m in args.minutes:
                    got[m] = run_case(path, shards[m], root / f"out-{len(list(root.iterdir()))}", whole, args.batch_seconds)
                    r = got[m]
                    tps = r["frames"] * r["levels"] / max(r["seconds"], 1e-9)
                    print(f"{label}: {m:g} min: peak RSS {r['peak_mib']:.0f} MiB, {r['seconds']:.1f} s, "
                          f"{tps:,.0f} tokens/s ({r['frames']} frames x {r['levels']} levels, "
                          f"{m * 60 / max(r['seconds'], 1e-9):.0f}x real time)")
                short, long_ = (got[m]["peak_mib"] for m in args.minutes)
                print(f"{label}: peak RSS ratio {args.minutes[1]:g} min / {args.minutes[0]:g} min = {long_ / short:.2f}")


if __name__ == "__main__":
    main()
