"""Data throughput, measured in one run:

  1. loader headroom: samples/s the training stream delivers (2 workers) vs samples/s a tiny
     semantic-LM training step consumes — for token shards and for raw flac audio shards;
  2. a 2-second-window acoustic stage (the tiny coarse recipe, model.window_s=2): samples/s an
     8-worker loader delivers from its token shards, and from mp3 / m4a audio shards decoded in the
     loader (2 s crop), vs samples/s its training step consumes (headroom = loader / step);
  3. decode speed per audio format (x realtime, one process, 30 s of 44.1 kHz stereo, 48 kHz for
     Opus): decode alone, and prep's whole conversion (decode, downmix, soxr to 24 kHz, FLAC);
  4. prep throughput: audio-hours per minute of `alm prep librilight` on a generated LibriLight layout.

    python benchmarks/loader_throughput.py [--workers 2] [--acoustic-workers 8] [--batches 60] [--clips 240 ...]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alm.config import load_recipe  # noqa: E402
from alm.data.audio import decode_audio, encode_flac, load_mono  # noqa: E402
from alm.data.shards import ShardWriter, npy_bytes  # noqa: E402
from alm.data.stream import ShardStream, make_loader, resolve_shard_sets  # noqa: E402
from alm.data.synthetic import make_clip, write_synthetic  # noqa: E402
from alm.stages.lm import collate, lm_loss  # noqa: E402
from alm.stages import acoustic  # noqa: E402
from alm.stages.semantic import make_example  # noqa: E402
from alm.models.acoustic_lm import AcousticLM  # noqa: E402
from alm.models.transformer import TransformerLM  # noqa: E402
from alm.tokenizers.semantic import SemanticTokenizerConfig, run as tokenize  # noqa: E402
from alm.training.optim import configure_optimizers  # noqa: E402


def loader_rate(stream: ShardStream, workers: int, batches: int) -> float:
    loader = make_loader(stream, workers)
    it = iter(loader)
    for _ in range(1 + 4 * workers):  # workers started and the batches they prefetched (4 each) drained
        next(it)
    t, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(it)["_n"])
    return n / (time.perf_counter() - t)


def audio_example(sample, rng, seconds=4.0, sr=16000):
    audio, _ = load_mono(sample["flac"], sr)
    n = int(seconds * sr)
    start = int(rng.integers(0, max(1, len(audio) - n + 1)))
    return {"audio": audio[start : start + n]}


def audio_collate(examples):
    longest = max(len(e["audio"]) for e in examples)
    x = np.zeros((len(examples), longest), np.float32)
    for i, e in enumerate(examples):
        x[i, : len(e["audio"])] = e["audio"]
    return {"audio": torch.from_numpy(x), "_n": [0] * len(examples)}


def tokens_collate(examples):
    b = collate(examples)
    b["_n"] = [0] * len(examples)
    return b


def step_rate(cfg, batch, steps: int = 20, model_cls=TransformerLM, warmup: int = 3) -> float:
    torch.manual_seed(0)
    model = model_cls(cfg.model)
    opt = configure_optimizers(model, cfg)["optimizer"]
    for i in range(steps + warmup):
        if i == warmup:
            t = time.perf_counter()
        loss = lm_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * batch["inputs"].shape[0] / (time.perf_counter() - t)


def write_av(path: Path, x: np.ndarray, rate: int, container: str, codec: str) -> None:
    """Encode (frames, channels) float audio with PyAV (its FFmpeg inside the wheel)."""
    import av

    layout = {1: "mono", 2: "stereo"}[x.shape[1]]
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        for i in range(0, len(x), 4096):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[i : i + 4096].T), format="fltp", layout=layout)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def soundfile_writer(fmt: str, subtype: str):
    import soundfile as sf

    return lambda path, x, rate: sf.write(str(path), x, rate, format=fmt, subtype=subtype)


# name: (extension, rate, writer(path, (frames, channels) audio, rate))
FORMATS = {
    "flac": (".flac", 44100, soundfile_writer("FLAC", "PCM_16")),
    "wav": (".wav", 44100, soundfile_writer("WAV", "PCM_16")),
    "mp3": (".mp3", 44100, soundfile_writer("MP3", "MPEG_LAYER_III")),
    "ogg/vorbis": (".ogg", 44100, soundfile_writer("OGG", "VORBIS")),
    "opus": (".opus", 48000, soundfile_writer("OGG", "OPUS")),
    "m4a/aac": (".m4a", 44100, lambda p, x, r: write_av(p, x, r, "ipod", "aac")),
    "aac (adts)": (".aac", 44100, lambda p, x, r: write_av(p, x, r, "adts", "aac")),
    "webm/opus": (".webm", 48000, lambda p, x, r: write_av(p, x, r, "webm", "libopus")),
}


def stereo_clip(index: int, rate: int, seconds: float) -> np.ndarray:
    """(frames, 2): two synthetic clips (melody, chords, babble, noise) as left/right."""
    return np.stack([make_clip(1, index, rate, seconds)[0], make_clip(1, index + 1, rate, seconds)[0]], axis=1)


def decode_rates(root: Path, seconds: float) -> dict[str, tuple[str, float, float]]:
    """{format: (decoder, x realtime of decode_audio, x realtime of prep's process to 24 kHz)}."""
    from alm.data.audio import decoder_for
    from alm.data_prep.decode import process

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (ext, rate, write) in FORMATS.items():
        path = root / f"clip{ext}"
        write(path, stereo_clip(0, rate, seconds), rate)
        decode_audio(str(path))  # warm (imports, page cache)
        t = time.perf_counter()
        audio, got = decode_audio(str(path))
        dec = (audio.shape[1] / got) / (time.perf_counter() - t)
        t = time.perf_counter()
        status, facts, _ = process((str(path), 24000))
        assert status == "ok", (name, facts)
        prep = (facts["num_frames"] / facts["sample_rate"]) / (time.perf_counter() - t)
        out[name] = (decoder_for(str(path)), dec, prep)
    return out


def acoustic_token_shards(root: Path, model, clips: int, seconds: float) -> str:
    """Parallel semantic + codes shards shaped like `alm tokenize` output for the coarse model."""
    rng = np.random.default_rng(0)
    sem_w, codes_w = ShardWriter(root / "semantic", "train", 20), ShardWriter(root / "codes", "train", 20)
    levels = model.prefix_levels + model.target_levels
    for i in range(clips):
        key = f"clip{i:05d}"
        sem = rng.integers(0, model.semantic_vocab, int(seconds * model.semantic_rate)).astype(np.int16)
        codes = rng.integers(0, model.codebook_size, (levels, int(seconds * model.frame_rate))).astype(np.int16)
        sem_w.write({"__key__": key, "semantic.npy": npy_bytes(sem)})
        codes_w.write({"__key__": key, "codes.npy": npy_bytes(codes)})
    sem_w.close(), codes_w.close()
    return f"{root}/semantic/train-*.tar + {root}/codes/train-*.tar"


def compressed_audio_shards(root: Path, fmt: str, clips: int, seconds: float, sr: int = 44100) -> str:
    """Audio shards whose member is `fmt` (mp3 / m4a) bytes of 44.1 kHz mono clips."""
    ext, _, write = FORMATS[fmt]
    member = ext[1:]
    root.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(root, "train", 20)
    tmp = root / f"one{ext}"
    for i in range(clips):
        write(tmp, make_clip(1, i, sr, seconds)[0][:, None], sr)
        writer.write({"__key__": f"clip{i:05d}", member: tmp.read_bytes()})
    writer.close()
    tmp.unlink()
    return str(root / "train-*.tar")


def audio_window_example(sample, rng, member: str, seconds=2.0, sr=24000):
    """Decode the whole clip, resample to the codec rate (24 kHz, EnCodec's), crop a 2 s window."""
    audio, _ = load_mono(sample[member], sr)
    n = int(seconds * sr)
    start = int(rng.integers(0, max(1, len(audio) - n + 1)))
    return {"audio": audio[start : start + n]}


def librilight_layout(root: Path, files: int, seconds: float) -> float:
    """A LibriLight-like tree of flac chapters + json sidecars; returns its hours of audio."""
    sr = 16000
    for i in range(files):
        d = root / "small" / str(100 + i % 5) / f"book_{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        audio = np.concatenate([make_clip(1, i * 10 + k, sr, 4.0)[0] for k in range(int(seconds / 4))])
        (d / f"chapter_{i:04d}.flac").write_bytes(encode_flac(audio, sr))
        (d / f"chapter_{i:04d}.json").write_text(json.dumps({"speaker": str(100 + i % 5), "snr": float("nan")}))
    return files * seconds / 3600


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--acoustic-workers", type=int, default=8)
    p.add_argument("--acoustic-steps", type=int, default=5, help="timed steps of the 2 s coarse stage")
    p.add_argument("--decode-seconds", type=float, default=30.0, help="length of each format's test file")
    p.add_argument("--clips", type=int, default=240, help="synthetic clips of the token / flac shards")
    p.add_argument("--acoustic-clips", type=int, default=200, help="10 s clips of the acoustic token shards")
    p.add_argument("--compressed-clips", type=int, default=120, help="10 s clips per compressed format")
    p.add_argument("--librilight-files", type=int, default=24, help="60 s files of the generated LibriLight layout")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_recipe(REPO / "recipes" / "tiny" / "semantic.yaml", ["data.train_shards=unused", "data.tokenizer=null"])
    bs = cfg.data.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        audio_dir, tok_dir = tmp / "audio", tmp / "tokens"
        write_synthetic(audio_dir, num_clips=a.clips, val_clips=8, shard_size=30)
        tokenize(str(audio_dir), str(tok_dir), SemanticTokenizerConfig(features="logmel", n_clusters=64),
                 fit_shards=str(audio_dir / "train-*.tar"), progress=False)


        ex = functools.partial(make_example, max_len=cfg.data.max_len, model=cfg.model)
        tok_stream = ShardStream(resolve_shard_sets(str(tok_dir / "train-*.tar")), ex, tokens_collate, bs, seed=0,
                                 shuffle_buffer=200, rank_world=(0, 1))
        aud_stream = ShardStream(resolve_shard_sets(str(audio_dir / "train-*.tar")), audio_example, audio_collate, bs,
                                 seed=0, shuffle_buffer=200, rank_world=(0, 1))
        tok_rate = loader_rate(tok_stream, a.workers, a.batches)
        aud_rate = loader_rate(aud_stream, a.workers, a.batches)
        batch = next(iter(make_loader(tok_stream, 0)))
        consume = step_rate(cfg, batch)
        print(f"tiny semantic-LM training step consumes   {consume:9.1f} samples/s  (batch {bs} x {cfg.data.max_len} tokens, {a.threads} threads)")
        print(f"loader, token shards, {a.workers} workers:        {tok_rate:9.1f} samples/s  -> headroom {tok_rate / consume:6.1f}x")
        print(f"loader, flac audio shards (decode + 4 s crop): {aud_rate:9.1f} samples/s  -> headroom {aud_rate / consume:6.1f}x")

        # 2-second-window acoustic stage (tiny coarse recipe), 8-worker loader vs its training step
        acfg = load_recipe(REPO / "recipes" / "tiny" / "coarse.yaml",
                           ["data.train_shards=unused", "data.tokenizer=null", "data.codec=null",
                            "model.window_s=2.0", "model.max_seq_len=512"])
        abs_ = acfg.data.batch_size
        spec = acoustic_token_shards(tmp / "acoustic", acfg.model, clips=a.acoustic_clips, seconds=10.0)
        ac_stream = ShardStream(resolve_shard_sets(spec), acoustic.examples(acfg), tokens_collate, abs_, seed=0,
                                shuffle_buffer=100, rank_world=(0, 1))
        ac_rate = loader_rate(ac_stream, a.acoustic_workers, a.batches)
        ac_batch = next(iter(make_loader(ac_stream, 0)))
        ac_consume = step_rate(acfg, ac_batch, steps=a.acoustic_steps, model_cls=AcousticLM, warmup=1)
        tokens = ac_batch["inputs"].shape[1] + 1
        print(f"tiny coarse step, 2 s window ({tokens} tokens), consumes {ac_consume:9.1f} samples/s"
              f"  (batch {abs_}, {a.threads} threads)")
        print(f"loader, acoustic token shards, {a.acoustic_workers} workers: {ac_rate:9.1f} samples/s"
              f"  -> headroom {ac_rate / ac_consume:6.1f}x")
        for fmt in ("mp3", "m4a/aac"):
            shards = compressed_audio_shards(tmp / fmt.replace("/", "-"), fmt, clips=a.compressed_clips, seconds=10.0)
            member = FORMATS[fmt][0][1:]
            ex_fn = functools.partial(audio_window_example, member=member)
            st = ShardStream(resolve_shard_sets(shards), ex_fn, audio_collate, abs_, seed=0, shuffle_buffer=100,
                             rank_world=(0, 1))
            rate = loader_rate(st, a.acoustic_workers, a.batches)
            print(f"loader, {member} audio shards (decode 10 s 44.1 kHz, soxr to 24 kHz, 2 s crop), "
                  f"{a.acoustic_workers} workers: {rate:9.1f} samples/s"
                  f"  = {rate * 10.0 / a.acoustic_workers:6.0f}x realtime per worker"
                  f"  -> headroom {rate / ac_consume:6.1f}x over the 2 s coarse step")

        print(f"decode speed, {a.decode_seconds:.0f} s stereo clip, one process (x realtime):")
        print(f"  {'format':<12} {'decoder':<10} {'decode':>9} {'prep to 24 kHz flac':>20}")
        for name, (decoder, dec, prep_rate) in decode_rates(tmp / "formats", a.decode_seconds).items():
            print(f"  {name:<12} {decoder:<10} {dec:8.0f}x {prep_rate:19.0f}x")

        from alm.data_prep.cli import run as prep

        src = tmp / "librilight"
        hours = librilight_layout(src, files=a.librilight_files, seconds=60.0)
        t = time.perf_counter()
        prep("librilight", src, tmp / "prepped", workers=a.workers, quiet=True)
        minutes = (time.perf_counter() - t) / 60
        print(f"alm prep librilight ({hours * 60:.0f} min of 16 kHz flac, {a.workers} workers): {hours / minutes:.2f} audio-hours/minute")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
