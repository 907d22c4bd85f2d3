"""How well the demo codec reconstructs held-out synthetic clips, and why it is built the way it is.

    python benchmarks/demo_quality.py [--clips 240] [--val 24] [--iters 20] [--bins 200] [--codebook 64]
                                      [--levels 6] [--beam 8] [--refine 2] [--data DIR]

Writes a synthetic set (train + held-out val clips, 4 s each) into a temporary folder (or reads an
existing one with --data, e.g. the cache's synthetic-v1), fits the demo
codec on the train clips (timed: wall and CPU seconds; it runs on one thread), and prints the mean
reconstruction SI-SNR per kind on the val clips for 1, 2, ... all RVQ levels. The defaults are the
codec `alm demo` fits (alm.tokenizers.demo_codec.demo_config); `--codebook 32 --levels 4` is the
one `data.train_shards: synthetic` uses. Only the fit time depends on the machine's load.

    python benchmarks/demo_quality.py --demo OUT [--seeds 5] [--sampling 0.9:20,0.7:20] [--seconds 4]

instead generates from the exports of a finished `alm demo --out OUT`, once per seed and sampling
setting (temperature:top_k), and prints the generated wavs' spectral flatness within the codec's band
(what the demo reports) per seed and their median.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alm.audio_quality import si_snr  # noqa: E402
from alm.data.synthetic import write_synthetic  # noqa: E402
from alm.plots import kind_of, read_clips  # noqa: E402
from alm.tokenizers import codec as C  # noqa: E402
from alm.tokenizers.demo_codec import DemoCodecConfig, demo_config, fit_demo_codec  # noqa: E402


def table(codec, val, levels) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for wav, info in val:
        codes = C.encode(codec, torch.from_numpy(wav)[None], n_q=max(levels))  # fewer levels are a prefix
        out.setdefault(kind_of(info), []).append(
            [si_snr(wav, C.decode(codec, codes[:, :q])[0].numpy()) for q in levels])
    return {k: np.mean(v, axis=0).tolist() for k, v in sorted(out.items())}


def sampling_sweep(out: Path, seeds: int, settings: list[tuple[float, int]], seconds: float) -> None:
    import soundfile as sf

    from alm.audio_quality import spectral_flatness
    from alm.demo import codec_band
    from alm.generate import generate_audiolm

    band = 8000 * codec_band(out / "codec")
    exp = out / "exports"
    with tempfile.TemporaryDirectory() as tmp:
        for temperature, top_k in settings:
            flat = []
            for seed in range(seeds):
                wav = f"{tmp}/t{temperature}-k{top_k}-s{seed}.wav"
                generate_audiolm(str(exp / "semantic"), str(exp / "coarse"), str(exp / "fine"), seconds, wav,
                                 temperature=temperature, top_k=top_k, seed=seed, progress=False)
                audio, rate = sf.read(wav, dtype="float32")
                flat.append(spectral_flatness(audio, sample_rate=rate, max_hz=band))
            print(f"temperature {temperature} top_k {top_k}: flatness 0-{band / 1000:.0f} kHz per seed "
                  + " ".join(f"{f:.3f}" for f in flat) + f"; median {np.median(flat):.3f}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=240)
    p.add_argument("--val", type=int, default=24)
    demo = demo_config()
    p.add_argument("--iters", type=int, default=demo.kmeans_iters)
    p.add_argument("--bins", type=int, default=demo.bins)
    p.add_argument("--codebook", type=int, default=demo.codebook_size)
    p.add_argument("--levels", type=int, default=demo.num_quantizers)
    p.add_argument("--beam", type=int, default=demo.beam)
    p.add_argument("--refine", type=int, default=demo.refine)
    p.add_argument("--data", help="an existing synthetic set (train-*.tar + val-*.tar) instead of a new one")
    p.add_argument("--demo", help="a finished `alm demo --out` folder: measure its generated flatness instead")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--sampling", default="0.9:20", help="temperature:top_k settings, comma-separated")
    p.add_argument("--seconds", type=float, default=4.0)
    a = p.parse_args()
    if a.demo:
        settings = [(float(t), int(k)) for t, k in (x.split(":") for x in a.sampling.split(","))]
        sampling_sweep(Path(a.demo), a.seeds, settings, a.seconds)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        if a.data is None:
            write_synthetic(Path(tmp), num_clips=a.clips, val_clips=a.val)
        root = a.data or tmp
        train = [w for w, _ in read_clips(f"{root}/train-*.tar")]
        val = read_clips(f"{root}/val-*.tar")
    cfg = DemoCodecConfig(kmeans_iters=a.iters, bins=a.bins, codebook_size=a.codebook, num_quantizers=a.levels,
                          beam=a.beam, refine=a.refine)
    levels = list(range(1, cfg.num_quantizers + 1))
    t, cpu = time.time(), time.process_time()
    codec = fit_demo_codec(train, cfg)
    fit_s, fit_cpu = time.time() - t, time.process_time() - cpu
    print(f"codec: {cfg.num_quantizers} levels x {cfg.codebook_size} codes, bins {cfg.bins}, "
          f"{cfg.kmeans_iters} k-means iterations, beam {cfg.beam}, refine {cfg.refine}")
    print(f"demo codec fitted on {len(train)} clips ({codec.config.fitted_on['frames']} frames) in {fit_s:.1f} s "
          f"({fit_cpu:.1f} CPU s); train residual energy {codec.config.fitted_on['residual_energy']:.3f}")
    print("held-out SI-SNR (dB) per kind, levels " + " / ".join(map(str, levels)))
    for kind, row in table(codec, val, levels).items():
        print(f"  {kind:<8} " + " / ".join(f"{v:6.2f}" for v in row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
