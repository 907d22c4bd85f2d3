"""Semantic tokens (AudioLM stage 1): k-means ids of self-supervised speech features.

    audio (16 kHz mono) -> SSL model (HuBERT / w2v-BERT via transformers) -> hidden states of
    layer L, (frames, D) at ~50 Hz -> standardise -> nearest of K k-means centroids -> ids (frames,)

k-means (alm/tokenizers/kmeans.py) is fitted on a uniform random sample of frames from ALL fit
shards (reservoir sampling, seeded: memory = sample size x D), with faiss when installed (CPU or GPU)
else scikit-learn's MiniBatchKMeans (`--kmeans-backend auto|faiss|sklearn`); inertia and frames per
cluster are printed and kept in semantic_tokenizer.json ("kmeans"); `--fit-fraction p` embeds only a
seeded share p of the fit samples (the sample stays uniform). Assigning ids needs only the
centroids (torch argmin), so an exported tokenizer works without scikit-learn or faiss.

Fit once, then encode in as many jobs as you like: `--fit-only` writes OUT/tokenizer/ and stops;
`--num-shards N --shard-index I` (or a SLURM array task) then encodes input shard i in job i % N
with that tokenizer (alm/tokenizers/array_job.py).

`features: logmel` replaces the SSL model by 64-band log-mel frames at the same 50 Hz frame rate.
It is a CHEAP FALLBACK FOR THE TINY CPU DEMO ONLY (no pretrained weights needed): log-mel clusters
capture spectra, not the phonetic content that makes SSL tokens "semantic".

Long audio: features are computed in windows on the model's frame grid (chunk_seconds kept,
context_seconds each side, trimmed; FrameEncoder), and ids assigned per window batch. log-mel frames
are exact; SSL frames differ slightly from one whole-file forward (global attention; HuBERT-base's
first-layer GroupNorm uses the whole file's statistics, computed first), see tests/test_tokenize_chunked.py.

A tokenizer directory holds `semantic_tokenizer.json` (features, model, layer, K, rates, and the
k-means fit's report under "kmeans") and `kmeans.safetensors` (centroids, feature mean/std).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from alm.data.audio import load_mono
from alm.data.shards import expand_shards, map_shards, npy_bytes, read_shard
from alm.errors import UserError
from alm.io import atomic_write_text, atomic_write_with
from alm.tokenizers import array_job
from alm.tokenizers.kmeans import FrameReservoir, column_mean_std, fit_kmeans, report_line

log = logging.getLogger(__name__)

CONFIG_FILE = "semantic_tokenizer.json"
CENTROIDS_FILE = "kmeans.safetensors"
MEMBER = "semantic.npy"  # the token member written into token shards


def special_tokens(vocab_size: int) -> tuple[int, int]:
    """(bos, eos) of a semantic LM vocabulary: the K cluster ids come first, then BOS = K, EOS = K + 1."""
    return vocab_size - 2, vocab_size - 1


CONTEXT_SECONDS = 2.0  # audio each side of a window's kept frames (SSL), trimmed away
BATCH_SECONDS = 120.0  # audio per SSL forward


@dataclass
class SemanticTokenizerConfig:
    features: str = "ssl"  # ssl | logmel (demo fallback)
    model: str = ""  # SSL model: hub id or local path (features=ssl)
    layer: int = 6  # hidden layer whose output is clustered (0 = the embeddings' output)
    n_clusters: int = 500
    sample_rate: int = 16000
    frame_rate: float = 50.0
    chunk_seconds: float = 30.0  # long audio is embedded in windows keeping this much each (FrameEncoder)
    context_seconds: float = CONTEXT_SECONDS  # audio each side of a window's kept frames, trimmed away

    def validate(self) -> None:
        if self.features not in ("ssl", "logmel"):
            raise ValueError(f"features: expected 'ssl' or 'logmel', got {self.features!r}")
        if self.features == "ssl" and not self.model:
            raise ValueError("features=ssl needs a model (hub id or local path)")
        if self.n_clusters < 2:
            raise ValueError(f"n_clusters must be >= 2, got {self.n_clusters}")


FeatureFn = Callable[[np.ndarray], np.ndarray]  # audio (frames,) at cfg.sample_rate -> (n, D)


class FrameEncoder:
    """audio (T,) -> features (F, D), computed in windows on the encoder's frame grid, batched by total
    audio length (alm/tokenizers/chunks.py), so memory is bounded by the batch, not the file's length.

    `batch`: audio (B, W) float32 -> (B, frames of W, D); frame f reads samples [f * hop, f * hop + span).
    `normalise`: whole-file audio statistics applied to every window (an SSL extractor's per-utterance
    zero-mean unit-variance normalisation, done once for the file, not per window).
    `map(audio, head)` applies `head` to each batch's features (e.g. nearest centroid -> ids), so a long
    file's (F, D) features are never held at once."""

    def __init__(self, batch, hop: int, span: int, core: int, context: int, budget: int, normalise: bool = False,
                 before_file=None):
        self.batch, self.hop, self.span, self.core, self.context, self.budget = batch, hop, span, core, context, budget
        self.normalise = normalise
        self.before_file = before_file  # f(audio, shift, scale): whole-file statistics the batches then use; f(None, ..) forgets them

    def map(self, audio: np.ndarray, head=None) -> np.ndarray:
        from alm.tokenizers.chunks import encode_windowed, frame_count

        audio = np.ascontiguousarray(audio, dtype=np.float32)
        shift, scale = 0.0, 1.0
        if self.normalise:  # as Wav2Vec2FeatureExtractor's do_normalize, over the whole file
            shift = float(audio.mean(dtype=np.float64))
            scale = float(1.0 / np.sqrt(audio.var(dtype=np.float64) + 1e-7))

        if self.before_file is not None:
            self.before_file(audio, shift, scale)

        def fn(x: torch.Tensor) -> torch.Tensor:
            feats = self.batch((x - shift) * scale if self.normalise else x)  # (B, Fw, D)
            want = frame_count(x.shape[1], self.hop, self.span)
            if want > 0 and feats.shape[1] != want:  # (shorter audio: whole, as the encoder pads it)
                raise RuntimeError(f"feature encoder gave {feats.shape[1]} frames for {x.shape[1]} samples, expected "
                                   f"{want} (hop {self.hop}, span {self.span}): its frame grid is not the one assumed")
            return feats if head is None else head(feats)

        try:
            return next(encode_windowed([(0, audio)], fn, self.hop, self.core, self.context, self.budget, self.span))[1]
        finally:
            if self.before_file is not None:
                self.before_file(None, 0.0, 1.0)  # forget this file's statistics

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        return self.map(audio)


def _window_frames(seconds: float, sample_rate: int, hop: int) -> int:
    return max(0, round(seconds * sample_rate / hop))


def logmel_features(sample_rate: int, n_mels: int = 64, chunk_seconds: float = 30.0,
                    context_seconds: float = CONTEXT_SECONDS, batch_seconds: float = BATCH_SECONDS) -> FeatureFn:
    """Log-mel frames, 25 ms window, 20 ms hop (50 Hz). Demo fallback, see module docstring.
    Each frame reads its own 512 samples only, so windowed frames equal whole-file frames."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    n_fft, hop = int(0.025 * sample_rate), int(0.02 * sample_rate)
    fft_len = 1 << (n_fft - 1).bit_length()
    mel = mel_filter_bank(fft_len // 2 + 1, n_mels, 20.0, sample_rate / 2, sample_rate, mel_scale="htk")
    window = window_function(n_fft, "hann", frame_length=fft_len)

    def one(audio: np.ndarray) -> np.ndarray:
        if len(audio) < n_fft:
            audio = np.pad(audio, (0, n_fft - len(audio)))
        spec = spectrogram(
            audio.astype(np.float64), window, frame_length=fft_len, hop_length=hop, fft_length=fft_len,
            power=2.0, center=False, mel_filters=mel, log_mel="log10", mel_floor=1e-10,
        )  # (n_mels, frames)
        return spec.T.astype(np.float32)

    def batch(x: torch.Tensor) -> torch.Tensor:  # (B, W) -> (B, frames, n_mels)
        return torch.from_numpy(np.stack([one(row) for row in x.numpy()]))

    return FrameEncoder(batch, hop, fft_len, max(1, _window_frames(chunk_seconds, sample_rate, hop)),
                        _window_frames(context_seconds, sample_rate, hop), int(batch_seconds * sample_rate))


def _conv_grid(config) -> tuple[int, int]:
    """(hop, span) in samples of a wav2vec2-style conv feature encoder (HuBERT, wav2vec 2.0, WavLM)."""
    hop, span = 1, 1
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        span += (kernel - 1) * hop
        hop *= stride
    return hop, span


def ssl_features(model_id: str, layer: int, sample_rate: int, chunk_seconds: float, device: str = "cpu",
                 context_seconds: float = CONTEXT_SECONDS, batch_seconds: float = BATCH_SECONDS) -> FeatureFn:
    """Hidden states of `layer` of a transformers SSL speech model (HuBERT, wav2vec 2.0, w2v-BERT).

    `model_id`: a local directory or a hub id `org/name[@revision]` (see alm.hub). Long audio goes
    through the model in windows of `chunk_seconds` kept frames with `context_seconds` each side
    (FrameEncoder), up to `batch_seconds` of audio per forward. The conv front end's frames are the
    whole file's; attention is global, so kept frames differ slightly from a whole-file forward
    (agreement measured in tests/test_tokenize_chunked.py)."""
    from transformers import AutoFeatureExtractor, AutoModel

    from alm.hub import from_pretrained, resolve

    model = from_pretrained(AutoModel, model_id, what="SSL model").to(device).eval()
    source, revision = resolve(model_id)
    try:
        extractor = AutoFeatureExtractor.from_pretrained(source, **({"revision": revision} if revision else {}))
    except (OSError, ValueError):
        extractor = None  # raw waveform input, normalised below
    n_layers = getattr(model.config, "num_hidden_layers", None)
    if n_layers is not None and not 0 <= layer <= n_layers:
        raise UserError(f"--layer {layer} out of range: {model_id} has {n_layers} layers (0..{n_layers})")
    waveform_in = extractor is None or "input_values" in getattr(extractor, "model_input_names", ["input_values"])
    if hasattr(model.config, "conv_kernel"):
        hop, span = _conv_grid(model.config)
    elif hasattr(extractor, "stride"):  # w2v-BERT: 25 ms / 10 ms fbank frames stacked `stride` at a time
        shift, length = sample_rate // 100, sample_rate * 25 // 1000
        hop, span = shift * extractor.stride, length + shift * (extractor.stride - 1)
    else:
        raise UserError(f"{model_id}: unknown frame grid (no conv_kernel in its config, no stacking stride in its "
                        "feature extractor): use a HuBERT / wav2vec 2.0 / WavLM / w2v-BERT model")
    normalise = waveform_in and (extractor is None or getattr(extractor, "do_normalize", False))
    before_file = _file_group_norm(model, device) if getattr(model.config, "feat_extract_norm", "") == "group" else None
    fbank_stats: dict[str, torch.Tensor] = {}
    if not waveform_in:  # w2v-BERT: fbank normalised per mel bin over the whole file, not per window
        before_file = _file_fbank_norm(extractor, sample_rate, fbank_stats)

    @torch.no_grad()
    def batch(x: torch.Tensor) -> torch.Tensor:  # (B, W) -> (B, frames, D)
        if waveform_in:
            inputs = {"input_values": x}
        else:  # fbank features of each window (B, frames, stride * mels), normalised with the file's statistics
            inputs = extractor(list(x.numpy()), sampling_rate=sample_rate, return_tensors="pt",
                               do_normalize_per_mel_bins=not fbank_stats)
            feats = inputs["input_features"]
            if fbank_stats:
                reps = feats.shape[-1] // fbank_stats["mean"].shape[0]
                feats = (feats - fbank_stats["mean"].repeat(reps)) / fbank_stats["std"].repeat(reps)
            inputs = {"input_features": feats}
        inputs = {k: v.to(device) for k, v in inputs.items()}
        return model(**inputs, output_hidden_states=True).hidden_states[layer].float().cpu()

    core = max(1, _window_frames(chunk_seconds, sample_rate, hop))
    return FrameEncoder(batch, hop, span, core, _window_frames(context_seconds, sample_rate, hop),
                        int(batch_seconds * sample_rate), normalise=normalise, before_file=before_file)


def _file_fbank_norm(extractor, sample_rate: int, stats: dict, block_seconds: float = 10.0):
    """w2v-BERT's extractor normalises each mel bin over its input: over a window, not the file. Returns
    before_file(audio, ..), which fills `stats` (mean, std per mel bin, ddof 1 as the extractor) from the
    file's fbank frames, computed in blocks on the 10 ms grid (frames are local: the same frames; the
    odd last frame a block's stacking drops is left out of the statistics)."""
    shift, length = sample_rate // 100, sample_rate * 25 // 1000
    step = extractor.stride * shift * max(1, round(block_seconds * 100 / extractor.stride))  # an even number of frames

    def before_file(audio: np.ndarray | None, shift_: float, scale: float) -> None:
        stats.clear()
        if audio is None or len(audio) < length:
            return
        total = square = None
        n = 0
        for start in range(0, len(audio) - length + 1, step):
            piece = audio[start : start + step + length - shift]
            f = extractor(piece, sampling_rate=sample_rate, do_normalize_per_mel_bins=False,
                          return_tensors="np")["input_features"][0]
            f = f.reshape(-1, f.shape[-1] // extractor.stride).astype(np.float64)  # (fbank frames, mels)
            total = f.sum(0) if total is None else total + f.sum(0)
            square = (f * f).sum(0) if square is None else square + (f * f).sum(0)
            n += len(f)
        if n < 2:
            return
        mean = total / n
        var = (square - n * mean * mean).clip(min=0) / (n - 1)
        stats["mean"] = torch.from_numpy(mean).float()
        stats["std"] = torch.from_numpy(np.sqrt(var + 1e-7)).float()

    return before_file


def _file_group_norm(model, device: str, block: int = 80_000):
    """HuBERT-base's first conv layer normalises each channel over the whole input (GroupNorm, one group
    per channel): a window would use its own statistics. Returns before_file(audio, shift, scale), which
    computes the file's statistics of that conv's output in blocks (the conv is local: exact) and makes
    the layer use them for every window of the file."""
    first = model.feature_extractor.conv_layers[0]
    conv, norm = first.conv, first.layer_norm
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    block -= block % stride
    stats: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def before_file(audio: np.ndarray | None, shift: float, scale: float) -> None:
        stats.clear()
        if audio is None:
            return
        total = torch.zeros(conv.out_channels, dtype=torch.float64)
        square = torch.zeros_like(total)
        n = 0
        for start in range(0, max(1, len(audio) - kernel + 1), block):  # conv frames start at multiples of stride
            piece = torch.from_numpy(audio[start : start + block + kernel - stride])
            y = conv(((piece - shift) * scale)[None, None].to(device))[0].double().cpu()  # (C, frames)
            total += y.sum(-1)
            square += (y * y).sum(-1)
            n += y.shape[-1]
        mean = total / max(n, 1)
        stats["mean"] = mean.float().to(device)
        stats["std"] = (square / max(n, 1) - mean * mean).clamp(min=0).add(norm.eps).sqrt().float().to(device)

    def use_file_stats(module, inputs, output):  # (B, C, L) conv output -> normalised with the file's stats
        if not stats:  # not inside FrameEncoder.map: the layer as it is (the input's own statistics)
            return output
        x = inputs[0]
        y = (x - stats["mean"][None, :, None]) / stats["std"][None, :, None]
        return y * module.weight[None, :, None] + module.bias[None, :, None]

    norm.register_forward_hook(use_file_stats)
    return before_file


def feature_fn(cfg: SemanticTokenizerConfig, device: str = "cpu") -> FeatureFn:
    if cfg.features == "logmel":
        return logmel_features(cfg.sample_rate, chunk_seconds=cfg.chunk_seconds, context_seconds=cfg.context_seconds)
    return ssl_features(cfg.model, cfg.layer, cfg.sample_rate, cfg.chunk_seconds, device, cfg.context_seconds)


class SemanticTokenizer:
    """audio -> semantic token ids, from a fitted tokenizer directory."""

    def __init__(self, cfg: SemanticTokenizerConfig, centroids: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 device: str = "cpu", features: FeatureFn | None = None, fit_report: dict | None = None):
        cfg.validate()
        self.cfg = cfg
        self.fit_report = fit_report  # how the k-means was fitted (kmeans.fit_kmeans' report), saved with it
        self.centroids, self.mean, self.std = centroids.float(), mean.float(), std.float()
        self.features = features or feature_fn(cfg, device)

    @property
    def vocab_size(self) -> int:
        return self.cfg.n_clusters

    def assign(self, feats: np.ndarray) -> np.ndarray:
        """(n, D) features -> (n,) nearest-centroid ids."""
        x = (torch.from_numpy(feats).float() - self.mean) / self.std
        return torch.cdist(x, self.centroids).argmin(dim=-1).numpy().astype(np.int16 if self.cfg.n_clusters < 32768 else np.int32)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """audio (frames,) mono at cfg.sample_rate -> token ids (n,), window batch by window batch when the
        features come in windows (the file's (n, D) features are never held at once)."""
        if not hasattr(self.features, "map"):
            return self.assign(self.features(audio))
        dtype = np.int16 if self.cfg.n_clusters < 32768 else np.int32

        def nearest(feats: torch.Tensor) -> torch.Tensor:  # (B, n, D) -> (B, n)
            x = (feats.float() - self.mean) / self.std
            return torch.stack([torch.cdist(row, self.centroids).argmin(dim=-1) for row in x])

        return self.features.map(audio, nearest).astype(dtype)

    def save(self, out_dir: str | os.PathLike) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = {"centroids": self.centroids.contiguous(), "mean": self.mean, "std": self.std}
        atomic_write_with(out_dir / CENTROIDS_FILE, lambda tmp: save_file(tensors, tmp))
        extra = {"kmeans": self.fit_report} if self.fit_report is not None else {}
        atomic_write_text(out_dir / CONFIG_FILE, json.dumps({**asdict(self.cfg), **extra}, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> "SemanticTokenizer":
        path = Path(path)
        if not (path / CONFIG_FILE).is_file() or not (path / CENTROIDS_FILE).is_file():
            raise FileNotFoundError(f"{path}: not a semantic tokenizer directory (needs {CONFIG_FILE} and {CENTROIDS_FILE})")
        fields = json.loads((path / CONFIG_FILE).read_text())
        report = fields.pop("kmeans", None)
        cfg = SemanticTokenizerConfig(**fields)
        t = load_file(str(path / CENTROIDS_FILE))
        return cls(cfg, t["centroids"], t["mean"], t["std"], device, fit_report=report)


def _sample_audio(sample: dict, sample_rate: int) -> np.ndarray:
    from alm.data.audio import SHARD_AUDIO, shard_audio_ext

    ext = shard_audio_ext(sample)
    if ext is None:
        raise KeyError(f"sample {sample['__key__']} has no audio member ({'/'.join(SHARD_AUDIO)})")
    return load_mono(sample[ext], sample_rate)[0]


def _chosen(seed: int, shard: str, key: str, fraction: float) -> bool:
    """A seeded, reproducible coin with P(True) = fraction for one sample."""
    digest = hashlib.sha256(f"{seed}\0{shard}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def fit_tokenizer(
    cfg: SemanticTokenizerConfig,
    samples: Iterable[dict],
    max_frames: int = 200_000,
    seed: int = 0,
    device: str = "cpu",
    backend: str = "sklearn",
    fraction: float = 1.0,
) -> SemanticTokenizer:
    """Fit k-means on a uniform random sample of `max_frames` feature frames of ALL `samples` (raw shard
    samples; reservoir sampling seeded by `seed`), standardised by the sample's mean/std.

    `backend`: sklearn | faiss | auto (kmeans.choose_backend). The Python default is sklearn, so the
    repository's own callers (tiny recipes' synthetic tokens, the demo) give the same tokens whether or
    not faiss is installed; the CLI's default is auto.
    `fraction` < 1: only that share of the samples (chosen by a seeded hash of shard name and key, so the
    same for a rerun) is decoded and embedded: the fit costs `fraction` of a pass over the audio, and the
    frames are still a uniform sample (each frame is kept with the same probability).
    The tokenizer's fit_report: kmeans.fit_kmeans' report plus seen_frames, shards, samples (embedded),
    skipped_samples (unreadable), fraction, seed."""
    if not 0 < fraction <= 1:
        raise UserError(f"--fit-fraction must be in (0, 1], got {fraction}")
    cfg.validate()
    extract = feature_fn(cfg, device)
    reservoir = FrameReservoir(max_frames, seed)
    shards: dict[str, int] = {}
    skipped = used = 0
    for sample in samples:
        url = str(sample.get("__url__", ""))
        tag = shards.setdefault(url, len(shards))
        if fraction < 1 and not _chosen(seed, os.path.basename(url), sample["__key__"], fraction):
            continue
        used += 1
        try:
            feats = extract(_sample_audio(sample, cfg.sample_rate))
        except (ValueError, KeyError) as exc:
            log.warning("k-means fit: skipping %s: %s", sample.get("__key__"), exc)
            skipped += 1
            continue
        reservoir.add(feats, tag)
    x = reservoir.rows
    if len(x) < cfg.n_clusters:
        raise UserError(f"only {len(x)} feature frames to fit {cfg.n_clusters} clusters: give more audio (--fit-shards)")
    mean, std = column_mean_std(x)
    std = std + 1e-5
    centroids, report = fit_kmeans((x - mean) / std, cfg.n_clusters, seed, backend)
    report.update(seen_frames=int(reservoir.seen), shards=len(shards), samples=used - skipped, skipped_samples=skipped,
                  fraction=fraction, seed=seed)
    return SemanticTokenizer(cfg, torch.from_numpy(centroids), torch.from_numpy(mean), torch.from_numpy(std),
                             device, features=extract, fit_report=report)


def tokenize_shards(tokenizer: SemanticTokenizer, shards: list[str], out_dir: str | os.PathLike, progress: bool = True,
                    num_shards: int = 1, shard_index: int = 0, member: str = MEMBER) -> dict:
    """Write token shards (member `semantic.npy`, or `member`, e.g. `target_semantic.npy` for S2ST target
    speech; same names and keys) into out_dir: input shards i with i % num_shards == shard_index (all by default).
    Another `member` is a set to join beside the source's prep + tokens: it carries no copy of its input's
    json, which in a join would replace the source prep's (later sets' members win)."""
    sr = tokenizer.cfg.sample_rate

    def fn(batch: list[dict]) -> list[dict | None]:
        out = []
        for sample in batch:
            if member != MEMBER:
                sample.pop("json", None)  # map_shards copies what is left in the input sample
            try:
                out.append({member: npy_bytes(tokenizer(_sample_audio(sample, sr)))})
            except (ValueError, KeyError) as exc:
                log.warning("semantic tokens: skipping %s: %s", sample["__key__"], exc)
                out.append(None)
        return out

    return map_shards(shards, out_dir, fn, batch_size=8, desc="semantic tokens", progress=progress,
                      num_shards=num_shards, shard_index=shard_index)


FIT_FIELDS = ("features", "model", "layer", "n_clusters")  # what makes two tokenizers different


def _fit_config(path: Path) -> dict:
    """The SemanticTokenizerConfig fields of a tokenizer dir's json (without the fit's "kmeans" report)."""
    fields = json.loads((path / CONFIG_FILE).read_text())
    fields.pop("kmeans", None)
    return fields


def _differences(have: dict, asked: dict) -> str:
    return ", ".join(f"{k}={have.get(k)!r} (asked {asked[k]!r})" for k in FIT_FIELDS if have.get(k) != asked[k])


def check_existing_out(out_dir: Path, cfg: SemanticTokenizerConfig | None, tokenizer_dir: str | None) -> bool:
    """May `out_dir` receive these tokens? -> True when it already holds shards of the same tokenizer
    (the run continues: finished shards are kept). Another tokenizer's shards there -> UserError."""
    from alm.data.provenance import dir_fingerprint

    old = out_dir / "tokenizer"
    if not (old / CONFIG_FILE).is_file():
        if any(out_dir.glob("*.tar")):
            raise UserError(f"--out {out_dir} holds .tar shards but no tokenizer/: not a semantic token set; "
                            "use another --out directory")
        return False
    have = _fit_config(old)
    if tokenizer_dir:
        if not (Path(tokenizer_dir) / CONFIG_FILE).is_file():
            raise UserError(f"--tokenizer {tokenizer_dir}: not a semantic tokenizer directory (needs {CONFIG_FILE})")
        if dir_fingerprint(tokenizer_dir) != dir_fingerprint(old):
            raise UserError(f"--out {out_dir} holds token shards made by another tokenizer ({old}: "
                            f"{', '.join(f'{k}={have.get(k)!r}' for k in FIT_FIELDS)}) than --tokenizer {tokenizer_dir}: "
                            "use another --out directory, or delete it to re-tokenize")
    elif cfg is not None:
        differ = _differences(have, asdict(cfg))
        if differ:
            raise UserError(f"--out {out_dir} holds token shards made with {differ}: use another --out directory, "
                            "or delete it to re-tokenize")
    return True


def run(shards: str, out: str, cfg: SemanticTokenizerConfig | None = None, tokenizer_dir: str | None = None,
        fit_shards: str | None = None, max_fit_frames: int = 200_000, seed: int = 0, device: str = "cpu",
        progress: bool = True, num_shards: int = 1, shard_index: int = 0, fit_only: bool = False,
        kmeans_backend: str = "sklearn", fit_fraction: float = 1.0, member: str = MEMBER) -> dict:
    """Fit (or load) a tokenizer, then tokenize `shards` into `out`; the tokenizer goes to out/tokenizer.

    An `out` that already holds token shards continues (finished shards are kept) only with the same
    tokenizer: the one in out/tokenizer, given again as `tokenizer_dir` or asked for by the same `cfg`
    (features, model, layer, n_clusters); anything else is refused (UserError).
    `fit_only`: fit and write out/tokenizer, tokenize nothing (already there with the same settings: kept).
    `num_shards`/`shard_index`: tokenize only input shards i with i % num_shards == shard_index; with
    num_shards > 1 the tokenizer must exist already (out/tokenizer from a `fit_only` run, or
    `tokenizer_dir`): the jobs of an array never fit, each their own.
    Returns map_shards' summary plus "tokenizer" and "fit" (the k-means report when this call fitted)."""
    urls = expand_shards(shards)
    out_dir = Path(out)
    if tokenizer_dir:
        tok_cfg = _fit_config(Path(tokenizer_dir)) if (Path(tokenizer_dir) / CONFIG_FILE).is_file() else None
        if tok_cfg is not None and cfg is not None and _differences(tok_cfg, asdict(cfg)):
            raise UserError(f"--tokenizer {tokenizer_dir} was fitted with {_differences(tok_cfg, asdict(cfg))}: "
                            "drop the fitting flags or use that tokenizer's settings")
    continuing = check_existing_out(out_dir, cfg, tokenizer_dir)
    fit = None
    if tokenizer_dir:
        tok = SemanticTokenizer.load(tokenizer_dir, device)
    elif continuing:
        log.info("continuing into %s with its tokenizer", out_dir)
        tok = SemanticTokenizer.load(out_dir / "tokenizer", device)
    elif num_shards > 1:
        raise UserError(f"shard index {shard_index} of {num_shards}: {out_dir}/tokenizer does not exist; fit the tokenizer "
                        f"once first (alm tokenize semantic --shards ... --out {out_dir} --fit-only ...), or pass "
                        "--tokenizer DIR, so the jobs of the array share one tokenizer")
    else:
        if cfg is None:
            raise ValueError("no tokenizer to load and no config to fit one")
        from alm.data.splits import resolve_split_spec

        # fitting takes the training split(s) of a directory (a test split only by explicit glob)
        fit_urls = expand_shards(resolve_split_spec(fit_shards or shards, "fit"))
        samples = (s for u in fit_urls for s in read_shard(u))
        tok = fit_tokenizer(cfg, samples, max_fit_frames, seed, device, kmeans_backend, fit_fraction)
        fit = tok.fit_report
    if tokenizer_dir and not continuing:  # the same files: the same fingerprint (alm.data.provenance)
        (out_dir / "tokenizer").mkdir(parents=True, exist_ok=True)
        for name in (CENTROIDS_FILE, CONFIG_FILE):  # the config last: its presence means complete
            data = (Path(tokenizer_dir) / name).read_bytes()
            atomic_write_with(out_dir / "tokenizer" / name, lambda tmp, data=data: Path(tmp).write_bytes(data))
    elif not continuing:
        tok.save(out_dir / "tokenizer")
    if fit_only:
        return {"tokenizer": str(out_dir / "tokenizer"), "fit": fit}
    result = tokenize_shards(tok, urls, out_dir, progress, num_shards, shard_index, member)
    result["tokenizer"] = str(out_dir / "tokenizer")
    result["fit"] = fit
    return result


def main(argv: list[str] | None = None) -> int:
    from alm.cli_format import DefaultsFormatter

    d = SemanticTokenizerConfig()
    again = "or as in OUT/tokenizer when OUT already holds one"
    p = argparse.ArgumentParser(prog="alm tokenize semantic", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsFormatter,
                                epilog="writes OUT/<the input shards' names>.tar (semantic.npy per sample), "
                                       "OUT/tokenizer/, OUT/errors/<shard>.json per shard with failed samples and "
                                       "OUT/errors.json (all of them). Many jobs: fit once with --fit-only, then run "
                                       "--num-shards N --shard-index I (or SLURM array tasks) into the same OUT")
    p.add_argument("--shards", required=True, help="audio shards (dir, glob or brace pattern)")
    p.add_argument("--out", required=True, help="output dir: token shards + tokenizer/")
    p.add_argument("--model", default=None, help="SSL model: hub id (org/name[@revision]) or local path "
                                                 "(required with --features ssl)")
    p.add_argument("--layer", type=int, default=None, help=f"hidden layer to cluster (default: {d.layer}, {again})")
    p.add_argument("--clusters", type=int, default=None, help=f"k-means clusters K (default: {d.n_clusters}, {again}); "
                                                              "a stage's model.vocab_size is K + 2")
    p.add_argument("--features", choices=["ssl", "logmel"], default=None,
                   help=f"ssl = the --model's hidden states; logmel = demo-only fallback, no model needed "
                        f"(default: {d.features}, {again})")
    p.add_argument("--tokenizer", default=None, help="reuse a fitted tokenizer dir instead of fitting "
                                                     "(e.g. the train set's, for its validation set)")
    p.add_argument("--member", default=MEMBER, help="the token member's name in the output shards, e.g. "
                   "target_semantic.npy for S2ST target speech (with --tokenizer: the source's tokenizer)")
    p.add_argument("--fit-shards", default=None, help="shards to fit k-means on (default: the training split(s) of --shards)")
    p.add_argument("--fit-frames", type=int, default=200_000,
                   help="feature frames sampled uniformly (reservoir) from all fit shards to fit k-means")
    p.add_argument("--fit-fraction", type=float, default=1.0,
                   help="embed only this share of the fit samples (seeded by --seed): the fit costs that share of a "
                        "pass over the audio; the frame sample stays uniform")
    p.add_argument("--fit-only", action="store_true", help="fit the tokenizer into OUT/tokenizer and stop (before an array "
                                                           "of --num-shards jobs)")
    p.add_argument("--kmeans-backend", choices=["auto", "faiss", "sklearn"], default="auto",
                   help="auto = faiss when installed (pip install faiss-cpu; GPU builds use the GPU), else scikit-learn")
    p.add_argument("--seed", type=int, default=0, help="seed of the frame sample and of k-means")
    p.add_argument("--device", default="cpu", help="where the SSL model runs: cpu, cuda, cuda:1, ...")
    array_job.add_arguments(p)
    a = p.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_-]+\.npy", a.member):
        p.error(f"--member {a.member!r}: expected NAME.npy (letters, digits, _ or -; one dot: shard members split there)")
    if a.fit_frames < 1:
        p.error("--fit-frames must be >= 1")
    if not 0 < a.fit_fraction <= 1:
        p.error(f"--fit-fraction must be in (0, 1], got {a.fit_fraction}")
    if a.fit_only and (a.tokenizer or a.num_shards is not None or a.shard_index is not None):
        p.error("--fit-only fits a tokenizer: it takes no --tokenizer, --num-shards or --shard-index")
    if a.fit_only and "SLURM_ARRAY_TASK_ID" in os.environ and array_job.resolve(None, None)[0] > 1:
        raise UserError("--fit-only in a SLURM array task: every task would fit its own k-means into the same OUT; "
                        "fit once in a job (or pipeline stage) before the array")
    num_shards, shard_index, share = (1, 0, "") if a.fit_only else array_job.resolve(a.num_shards, a.shard_index)
    if num_shards > 1:
        print(f"alm tokenize semantic: shard index {shard_index} of {num_shards} ({share})", file=sys.stderr)
    asked = {k: v for k, v in (("features", a.features), ("model", a.model), ("layer", a.layer),
                                ("n_clusters", a.clusters)) if v is not None}
    if a.tokenizer:  # fitting flags, if any, must agree with the tokenizer's
        cfg = SemanticTokenizerConfig(**{**_fit_config(Path(a.tokenizer)), **asked}) if asked and \
            (Path(a.tokenizer) / CONFIG_FILE).is_file() else None
    else:
        old = Path(a.out) / "tokenizer"
        base = {k: _fit_config(old)[k] for k in FIT_FIELDS} if (old / CONFIG_FILE).is_file() else {}
        cfg = SemanticTokenizerConfig(**{**base, **asked})  # flags not given: as in an existing --out
        try:
            cfg.validate()
        except ValueError as exc:
            p.error(str(exc))
    try:
        r = run(a.shards, a.out, cfg, a.tokenizer, a.fit_shards, a.fit_frames, a.seed, a.device,
                num_shards=num_shards, shard_index=shard_index, fit_only=a.fit_only, kmeans_backend=a.kmeans_backend,
                fit_fraction=a.fit_fraction, member=a.member)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    if r["fit"] is not None:
        print(report_line(r["fit"]))
    if a.fit_only:
        print(f"tokenizer: {r['tokenizer']}" + ("" if r["fit"] is not None else " (already there, kept)"))
        return 0
    print(array_job.summary_line(r, num_shards, shard_index, a.out))
    print(f"tokenizer: {r['tokenizer']}")
    return 1 if r["busy"] else 0  # an unfinished share must not satisfy a pipeline's afterok
