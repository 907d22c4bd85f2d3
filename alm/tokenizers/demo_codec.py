"""The demo codec: alm's stand-in for EnCodec/SoundStream, fitted in seconds on the demo's own audio.

No pretrained codec weights are available offline, so `alm demo` (and `data.train_shards: synthetic`)
makes its own codec from its training clips. It is not a neural network: a fixed invertible
transform plus residual vector quantisation fitted by k-means.

    audio (B, T) --MDCT--> frames (B, F, hop) --keep the lowest `bins` coefficients--> (B, F, bins)
                 --conditional RVQ, n_q levels of codebook_size codes--> codes (B, n_q, F)

* MDCT: hop = sampling_rate / frame_rate samples per frame (320 at 16 kHz, 50 frames/s), a 2*hop
  sine window, each frame centred on its own block of hop samples, so T samples give exactly
  F = ceil(T / hop) frames; the two outer half-windows are steps, so the inverse is exact
  (time-domain aliasing cancels everywhere, edges included). Coefficients above `bins` are not coded.
* Conditional residual VQ: level 0 has one codebook; level q > 0 has one codebook per code of
  level q - 1 (codebook_size x codebook_size vectors), fitted by k-means on the residual left by
  the levels before it. Decoding any prefix of levels works, as with EnCodec's RVQ.
* Encoding is a beam search (`beam` paths per frame, level by level, all levels searched, then cut
  to the levels asked for, so fewer levels are still a prefix of more). After the greedy k-means fit,
  `refine` rounds encode the training frames with that search and set every code vector to the mean
  of what it has to add there (the frame minus the other levels' vectors).

Measured on the 24 held-out clips of the synthetic set (benchmarks/demo_quality.py, 4 levels x 32
codes at 50 Hz = 1 kbps): conditioning each level on the previous code lifts tonal clips from ~1 dB
SI-SNR (plain RVQ) to ~5.5 dB (chords 5.4, melody 6.2, siren 34.4, speech-like babble 2.6); the beam
search (8 paths) alone adds little (chords 5.5), with 2 refinement rounds it reaches chords 6.5,
melody 7.1, siren 40.8, babble 3.7. Tried and not kept: k-means++ starts (chords 4.5), 40 k-means
iterations (5.7), 128 or 256 coded bins (5.4 / 5.6), fitting on half-hop-shifted copies too (3.6).

Babble (a glottal pulse train of continuous, gliding pitch under formants: several harmonics of any
frequency and phase per frame) needs more bits than 4 x 32, not a better fit of them (held-out dB,
chords / melody / siren / babble): 4 or 6 refinement rounds 6.7 / 7.2 / 41 / 3.8; beam 16 6.6 / 7.2 / 41 / 3.8;
100 coded bins 6.9 / 7.0 / 40 / 3.8; a codec fitted on the babble clips alone reaches only 5.7 on babble;
quarter-hop-shifted copies 3.4 / 6.4 / 33 / 4.1. More bits: 6 levels x 32 10.2 / 8.6 / 41 / 4.8; 8 x 32
12.6 / 9.6 / 41 / 5.5; 100 Hz frames (100 bins) 6.5 / 7.4 / 40 / 6.0; 4 x 64 16.9 / 10.5 / 42 / 5.6;
5 x 64 20.1 / 11.3 / 42 / 6.0; 6 x 64 21.7 / 12.3 / 42 / 6.5; 4 x 128 27.7 / 15.0 / 42 / 6.8 (fit: 13, 19,
23, 18 CPU seconds for 4 x 32, 5 x 64, 6 x 64, 4 x 128 on one thread). `alm demo` fits 4 x 128
(`demo_config`): the best babble, the same 4 levels and frame rate (so the same token counts for the
stages), and levels 2+ drawn at random from the codes' conditional statistics (p(code | the code
before it) on the train clips, as a fine stage that learned only that would) keep held-out tonal
clips the most tonal: median in-band flatness 4 x 32 0.018, 4 x 128 0.007, 5 x 64 0.051, 6 x 64 0.054.
It is 38 MB of codebooks (3 x 128 x 128 x 200 floats), copied into each acoustic export's codec/.
A default `alm demo` with it (250 steps per stage, measured on a shared 2-core machine, load 1.6-5):
fit 22 s, generated in-band flatness 0.074 (10 seeds: median 0.064, one of 0.27), 386 s in all.
The DemoCodecConfig defaults stay 4 x 32: the shape `data.train_shards: synthetic` and the tiny
recipes use (with the tiny random EnCodec of the own-data path).

It speaks the interface of the transformers EnCodec path (alm.tokenizers.codec: load_codec / encode /
decode dispatch here for a directory whose config.json says model_type "alm_demo_codec"):
`.config` carries sampling_rate, hop_length, frame_rate, num_quantizers, codebook_size and
target_bandwidths; `.quantizer.get_num_quantizers_for_bandwidth`; the codebooks are (frozen)
parameters, so state_dict fingerprints and `.to(device)` work. On disk: config.json + codebooks.safetensors.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

MODEL_TYPE = "alm_demo_codec"
WEIGHTS = "codebooks.safetensors"


@dataclass
class DemoCodecConfig:
    sampling_rate: int = 16000
    frame_rate: int = 50
    num_quantizers: int = 4
    codebook_size: int = 32
    bins: int = 200  # MDCT coefficients coded per frame, lowest first (200 of 320: up to 5 kHz at 16 kHz)
    kmeans_iters: int = 20
    beam: int = 8  # encoder search: paths kept per frame over the levels (1 = greedy RVQ)
    refine: int = 2  # rounds after the greedy fit: encode (with the beam), then each code vector = the mean of its targets
    seed: int = 0
    fitted_on: dict = field(default_factory=dict)  # what the codebooks were fitted on (facts, for people)
    model_type: str = MODEL_TYPE
    # facts the EnCodec path checks (alm.tokenizers.codec._check_supported)
    audio_channels: int = 1
    chunk_length_s: None = None
    normalize: bool = False

    def __post_init__(self):
        if self.sampling_rate % self.frame_rate or (self.sampling_rate // self.frame_rate) % 2:
            raise ValueError(f"demo codec: sampling_rate {self.sampling_rate} / frame_rate {self.frame_rate} "
                             "must be an even whole number of samples")
        if not 1 <= self.bins <= self.hop_length:
            raise ValueError(f"demo codec: bins must be in 1..{self.hop_length}, got {self.bins}")
        if self.num_quantizers < 1 or self.codebook_size < 2:
            raise ValueError("demo codec: num_quantizers must be >= 1 and codebook_size >= 2")
        if self.beam < 1:
            raise ValueError(f"demo codec: beam must be >= 1, got {self.beam}")

    @property
    def hop_length(self) -> int:
        return self.sampling_rate // self.frame_rate

    @property
    def target_bandwidths(self) -> list[float]:
        per_q = math.log2(self.codebook_size) * self.frame_rate / 1000
        return [round(per_q * k, 6) for k in range(1, self.num_quantizers + 1)]


class _Quantizer:
    """What alm reads of EnCodec's quantizer: how many levels a bandwidth buys."""

    def __init__(self, config: DemoCodecConfig):
        self.config = config

    def get_num_quantizers_for_bandwidth(self, bandwidth: float) -> int:
        per_q = math.log2(self.config.codebook_size) * self.config.frame_rate
        return int(max(1, min(self.config.num_quantizers, math.floor(bandwidth * 1000 / per_q + 1e-9))))


@contextmanager
def one_thread():
    """Run torch on one intra-op thread: the codes and codebooks then do not depend on the machine's
    thread count (float sums in another order can flip a near tie of the nearest code), and on a busy
    2-core machine one thread was faster (fit: 9 s on one thread, 68 s on two under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def mdct_basis(hop: int) -> torch.Tensor:
    """(2*hop, hop) orthonormal MDCT basis: coefficients = (window * frame) @ basis."""
    n = torch.arange(2 * hop, dtype=torch.float64)[:, None]
    k = torch.arange(hop, dtype=torch.float64)[None, :]
    return (math.sqrt(2 / hop) * torch.cos(math.pi / hop * (n + 0.5 + hop / 2) * (k + 0.5))).float()


def frame_windows(hop: int, frames: int) -> torch.Tensor:
    """(F, 2*hop) analysis = synthesis windows: sine, with step outer halves at the signal's edges."""
    n = torch.arange(2 * hop, dtype=torch.float64)
    w = torch.sin(math.pi * (n + 0.5) / (2 * hop)).float()
    out = w.repeat(frames, 1)
    half = hop // 2
    out[0, :hop] = torch.cat([torch.zeros(half), torch.ones(hop - half)])
    out[-1, hop:] = torch.cat([torch.ones(hop - half), torch.zeros(half)])
    return out


class DemoCodec(torch.nn.Module):
    """MDCT + conditional residual VQ (see the module docstring). Build with `fit_demo_codec`."""

    def __init__(self, config: DemoCodecConfig):
        super().__init__()
        self.config = config
        self.quantizer = _Quantizer(config)
        self.name_or_path = ""
        K, D, Q = config.codebook_size, config.bins, config.num_quantizers
        self.first = torch.nn.Parameter(torch.zeros(K, D), requires_grad=False)  # level 0: (K, D)
        self.rest = torch.nn.Parameter(torch.zeros(Q - 1, K, K, D), requires_grad=False)  # [level-1, prev code]
        self.register_buffer("basis", mdct_basis(config.hop_length), persistent=False)

    # -- transform ---------------------------------------------------------------------------

    def analyse(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (B, T) -> coded MDCT coefficients (B, F, bins), F = ceil(T / hop)."""
        hop = self.config.hop_length
        B, T = audio.shape
        F = -(-T // hop)
        x = torch.nn.functional.pad(audio, (hop // 2, F * hop - T + hop - hop // 2))  # ((F + 1) * hop)
        frames = x.unfold(-1, 2 * hop, hop)[:, :F]  # (B, F, 2 hop)
        coeffs = (frames * frame_windows(hop, F).to(x)) @ self.basis  # (B, F, hop)
        return coeffs[..., : self.config.bins]

    def synthesise(self, coeffs: torch.Tensor) -> torch.Tensor:
        """coefficients (B, F, bins) -> audio (B, F * hop), the exact inverse of `analyse` for full bins."""
        hop = self.config.hop_length
        B, F, D = coeffs.shape
        full = torch.nn.functional.pad(coeffs, (0, hop - D))
        frames = (full @ self.basis.T) * frame_windows(hop, F).to(coeffs)  # (B, F, 2 hop)
        out = torch.nn.functional.fold(frames.transpose(1, 2), (1, (F + 1) * hop), (1, 2 * hop), stride=(1, hop))
        return out[:, 0, 0, hop // 2 : hop // 2 + F * hop]

    # -- quantiser ---------------------------------------------------------------------------

    def book(self, level: int, prev: int) -> torch.Tensor:
        """(K, bins) codebook of `level` after code `prev` at level - 1 (level 0: the one codebook)."""
        return self.first if level == 0 else self.rest[level - 1, prev]

    def quantise(self, coeffs: torch.Tensor, levels: int) -> torch.Tensor:
        """coefficients (M, bins) -> codes (M, levels): a beam search over all num_quantizers levels
        (config.beam paths kept per frame; 1 = greedy), cut to the first `levels`, so fewer levels
        are always a prefix of more."""
        chunks = [self.search(c, self.config.beam) for c in coeffs.split(4096)]  # bounded memory: 4096 x beam paths
        return torch.cat(chunks)[:, :levels] if chunks else coeffs.new_zeros(0, levels, dtype=torch.long)

    def search(self, coeffs: torch.Tensor, beam: int) -> torch.Tensor:
        """coefficients (M, bins) -> codes (M, num_quantizers) of the path with the least residual energy
        among the `beam` best kept level by level."""
        M, D = coeffs.shape
        K = self.config.codebook_size
        residual = coeffs[:, None, :]  # (M, W, D): W paths per frame, 1 before level 0
        paths = torch.zeros(M, 1, 0, dtype=torch.long, device=coeffs.device)
        for q in range(self.config.num_quantizers):
            W = residual.shape[1]
            flat = residual.reshape(M * W, D)
            err = torch.empty(M * W, K, dtype=coeffs.dtype, device=coeffs.device)  # |residual - c_k|^2 per path
            prev = paths[:, :, -1].reshape(-1) if q else torch.zeros(M * W, dtype=torch.long, device=coeffs.device)
            for p in prev.unique().tolist():
                rows = (prev == p).nonzero().flatten()
                book = self.book(q, p)
                err[rows] = (flat[rows] ** 2).sum(-1, keepdim=True) - 2 * flat[rows] @ book.T + (book * book).sum(-1)
            keep = min(beam, W * K)
            best = err.reshape(M, W * K).topk(keep, dim=-1, largest=False).indices  # (M, keep), best first
            w, k = best // K, best % K
            chosen = torch.gather(prev.reshape(M, W), 1, w)  # the previous code of each kept path
            books = self.first[k] if q == 0 else self.rest[q - 1][chosen, k]  # (M, keep, D)
            residual = torch.gather(residual, 1, w[..., None].expand(-1, -1, D)) - books
            paths = torch.cat([torch.gather(paths, 1, w[..., None].expand(-1, -1, paths.shape[2])), k[..., None]], -1)
        return paths[:, 0]  # topk sorts ascending: path 0 has the least residual energy

    def dequantise(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (M, levels) -> coefficients (M, bins)."""
        out = self.first[codes[:, 0]]
        for q in range(1, codes.shape[1]):
            out = out + self.rest[q - 1, codes[:, q - 1], codes[:, q]]
        return out

    @torch.no_grad()
    def encode_audio(self, audio: torch.Tensor, levels: int) -> torch.Tensor:
        """audio (B, T) -> codes (B, levels, ceil(T / hop))."""
        with one_thread():
            coeffs = self.analyse(audio.float())  # (B, F, bins)
            B, F, D = coeffs.shape
            return self.quantise(coeffs.reshape(B * F, D), levels).reshape(B, F, levels).permute(0, 2, 1)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, levels, F), all >= 0 -> audio (B, F * hop)."""
        B, L, F = codes.shape
        coeffs = self.dequantise(codes.permute(0, 2, 1).reshape(B * F, L)).reshape(B, F, -1)
        return self.synthesise(coeffs)

    # -- files -------------------------------------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        from alm.io import atomic_write_text

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({"first": self.first.detach().cpu().contiguous(), "rest": self.rest.detach().cpu().contiguous()},
                  str(path / WEIGHTS))
        atomic_write_text(path / "config.json", json.dumps(asdict(self.config), indent=1))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "DemoCodec":
        from safetensors.torch import load_file

        path = Path(path)
        cfg = read_config(path)
        if cfg is None:
            raise ValueError(f"{path / 'config.json'}: not a demo codec (model_type {MODEL_TYPE!r} expected)")
        if not (path / WEIGHTS).is_file():
            raise FileNotFoundError(f"{path}: demo codec without {WEIGHTS}")
        codec = cls(cfg)
        weights = load_file(str(path / WEIGHTS))
        for name in ("first", "rest"):
            if name not in weights or tuple(weights[name].shape) != tuple(getattr(codec, name).shape):
                raise ValueError(f"{path / WEIGHTS}: tensor {name!r} missing or of the wrong shape for its config.json")
            getattr(codec, name).data.copy_(weights[name])
        codec.name_or_path = str(path)
        return codec.eval()


def demo_config(**overrides) -> DemoCodecConfig:
    """The codec `alm demo` fits: 4 levels x 128 codes at 50 Hz (1.4 kbps). The DemoCodecConfig defaults
    (4 x 32, 1 kbps) stay the shape of `data.train_shards: synthetic`, which the tiny recipes share with
    the tiny random EnCodec of the own-data path; at 4 x 32 speech-like babble reconstructs at only 3.7 dB
    (see the module docstring)."""
    return DemoCodecConfig(**{"codebook_size": 128, **overrides})


def read_config(path: str | os.PathLike) -> DemoCodecConfig | None:
    """The DemoCodecConfig of a local directory, or None when it is not a demo codec."""
    f = Path(os.path.expanduser(str(path))) / "config.json"
    if not f.is_file():
        return None
    try:
        raw = json.loads(f.read_text())
    except ValueError:
        return None
    if not isinstance(raw, dict) or raw.get("model_type") != MODEL_TYPE:
        return None
    known = set(DemoCodecConfig.__dataclass_fields__)
    return DemoCodecConfig(**{k: v for k, v in raw.items() if k in known})


def is_demo_codec(codec: Any) -> bool:
    return isinstance(codec, DemoCodec)


# --------------------------------------------------------------------------------------------
# Fitting


def nearest(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N,) index of the nearest centre (K, D) to each row of x (N, D): argmin |c|^2 - 2 x.c (one matmul)."""
    return ((centres * centres).sum(-1) - 2 * x @ centres.T).argmin(-1)


def _kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    """(k, D) centres of x (N, D) by Lloyd's k-means from k random rows; fewer rows than k -> repeats."""
    if len(x) <= k:
        return x[torch.arange(k) % len(x)].clone()
    centres = x[torch.randperm(len(x), generator=gen)[:k]].clone()
    for _ in range(iters):
        assign = nearest(x, centres)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)  # an empty cluster keeps its centre
    return centres


@torch.no_grad()
def fit_demo_codec(clips: Sequence[np.ndarray], config: DemoCodecConfig | None = None) -> DemoCodec:
    """Fit the codebooks on mono clips at config.sampling_rate, level by level, on the residuals."""
    config = config or DemoCodecConfig()
    if not clips:
        raise ValueError("demo codec: no audio to fit on")
    with one_thread():
        return _fit(clips, config)


def _fit(clips: Sequence[np.ndarray], config: DemoCodecConfig) -> DemoCodec:
    codec = DemoCodec(config)
    gen = torch.Generator().manual_seed(config.seed)
    coeffs = torch.cat([codec.analyse(torch.as_tensor(np.asarray(c, np.float32))[None])[0] for c in clips])  # (M, D)
    K = config.codebook_size
    residual = coeffs.clone()
    codec.first.copy_(_kmeans(residual, K, config.kmeans_iters, gen))
    codes = nearest(residual, codec.first)
    residual -= codec.first[codes]
    for q in range(1, config.num_quantizers):
        new = torch.zeros_like(codes)
        for p in range(K):
            rows = (codes == p).nonzero().flatten()
            if not len(rows):  # a code never used at level q - 1: any codebook will do; fit one on all residuals
                codec.rest[q - 1, p] = _kmeans(residual, K, config.kmeans_iters, gen)
                continue
            book = _kmeans(residual[rows], K, config.kmeans_iters, gen)
            codec.rest[q - 1, p] = book
            new[rows] = nearest(residual[rows], book)
            residual[rows] -= book[new[rows]]
        codes = new
    for _ in range(config.refine):
        _refine(codec, coeffs)
    if config.refine:
        residual = coeffs - codec.dequantise(codec.quantise(coeffs, config.num_quantizers))
    codec.config.fitted_on = {**config.fitted_on, "clips": len(clips), "frames": len(coeffs),
                              "residual_energy": round(float((residual ** 2).sum() / (coeffs ** 2).sum().clamp(min=1e-12)), 4)}
    return codec.eval()


def _refine(codec: DemoCodec, coeffs: torch.Tensor) -> None:
    """One round of block coordinate descent: encode every frame, then level by level set each code
    vector to the mean of what it should add (the frame minus the other levels' vectors); a code no
    frame uses keeps its vector."""
    K, Q = codec.config.codebook_size, codec.config.num_quantizers
    codes = codec.quantise(coeffs, Q)  # (M, Q)
    total = codec.dequantise(codes)
    for q in range(Q):
        book = codec.first if q == 0 else codec.rest[q - 1].reshape(K * K, -1)
        index = codes[:, 0] if q == 0 else codes[:, q - 1] * K + codes[:, q]
        part = book[index]
        target = coeffs - (total - part)
        sums = torch.zeros_like(book).index_add_(0, index, target)
        counts = torch.bincount(index, minlength=len(book))[:, None]
        new = torch.where(counts > 0, sums / counts.clamp(min=1), book)
        if q == 0:
            codec.first.copy_(new)
        else:
            codec.rest[q - 1].copy_(new.reshape(K, K, -1))
        total = total - part + new[index]


def read_clips(shards_spec: str, sample_rate: int, limit: int | None = None) -> list[np.ndarray]:
    """Mono float32 clips at `sample_rate` of the audio members (flac/wav/ogg) of a shard set."""
    from alm.data.audio import load_mono, shard_audio_ext
    from alm.data.shards import expand_shards, read_shard

    clips = []
    for url in expand_shards(shards_spec):
        for sample in read_shard(url):
            ext = shard_audio_ext(sample)
            if ext is None:
                continue
            data = sample[ext]
            clips.append(load_mono(data, sample_rate)[0])
            if limit is not None and len(clips) >= limit:
                return clips
    return clips


def make_demo_codec(path: str | os.PathLike, shards_spec: str, config: DemoCodecConfig | None = None) -> str:
    """Fit a demo codec on the audio of `shards_spec` (e.g. the synthetic train shards) and save it under `path`."""
    config = config or DemoCodecConfig()
    clips = read_clips(shards_spec, config.sampling_rate)
    if not clips:
        raise FileNotFoundError(f"demo codec: no audio (flac/wav/ogg) in {shards_spec}")
    config.fitted_on = {"shards": str(shards_spec)}
    codec = fit_demo_codec(clips, config)
    codec.save_pretrained(path)
    return str(path)
