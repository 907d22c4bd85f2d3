"""Neural-codec (EnCodec) tokenization: audio <-> residual-VQ codes, and the shard pass.

We use transformers' `EncodecModel` (no torchaudio needed). A codec is named by a short name
(`encodec_24khz`, `encodec_32khz`), a Hugging Face hub id, or a local directory written by
`save_pretrained` (e.g. the tiny test codec from `make_tiny_codec`). A local directory whose
config.json says model_type "alm_demo_codec" is the demo's stand-in for EnCodec (MDCT + residual VQ
fitted on the demo's own audio, alm/tokenizers/demo_codec.py): load_codec / encode / decode take
it through the same calls, so tokenize, export, audio samples and generate treat both alike.

Shapes used throughout:
    audio  (B, T)        mono float32 at the codec's sample rate, zero-padded to the longest
    codes  (B, n_q, F)   int64 codebook indices; F = ceil(T / hop_length)

Residual VQ is greedy, level by level, so the first k levels of n_q-level codes are exactly the
k-level codes: storing more levels than a model uses costs only disk.

Padding: in a padded batch, frames past a sample's true length are set to `pad_value` (-1), so
they cannot be mistaken for codes. Codes are deterministic for the same batch, but a sample in a
padded batch is encoded as if followed by silence: EnCodec pads each convolution by reflection
at the sequence end (and, for very short inputs, at the start too), so the last frame (all
frames of clips under ~7 frames; a few more for the non-causal encodec_32khz) can differ from
encoding the sample alone. Measured on the causal tiny codec: a 29-frame clip batched with a
50-frame one differs only in its last frame.

Files of any length (`encode_files`, used by the shard pass): windows of CHUNK_SECONDS kept frames
with CONTEXT_SECONDS of audio each side, on the frame grid, batched without padding up to
BATCH_SECONDS of audio per forward (alm/tokenizers/chunks.py), so memory does not grow with a
file's length. The demo codec's chunked codes equal its whole-file codes; EnCodec's agree on
>= 99.9% of frames for the tiny codecs (tests/test_tokenize_chunked.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

CODEC_NAMES = {
    "encodec_24khz": "facebook/encodec_24khz",
    "encodec_32khz": "facebook/encodec_32khz",
}
CODES_MEMBER = "codes.npy"


# --------------------------------------------------------------------------------------------
# Loading and describing a codec


def load_codec(name_or_path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load an EnCodec model in eval mode on `device`.

    `name_or_path`: 'encodec_24khz' / 'encodec_32khz' (-> facebook/encodec_*), an existing local
    directory holding `config.json` + weights (as written by `save_pretrained`), or a hub id
    (`org/name[@revision]`, from the HF cache or the hub: see alm.hub).
    """
    from transformers import EncodecModel

    from alm.hub import from_pretrained
    from alm.tokenizers.demo_codec import DemoCodec, read_config

    name = str(name_or_path)
    if read_config(name) is not None:  # the demo codec (a local directory)
        return DemoCodec.from_pretrained(os.path.expanduser(name)).to(device).eval()
    codec = from_pretrained(EncodecModel, CODEC_NAMES.get(name, name), what="codec")
    _check_supported(codec, name)
    return codec.to(device).eval()


def _check_supported(codec, name: str) -> None:
    cfg = codec.config
    if cfg.chunk_length_s is not None or cfg.normalize:
        raise ValueError(
            f"codec {name!r}: chunked or normalising EnCodec models (e.g. encodec_48khz) are not supported; "
            "use a non-chunked mono codec such as encodec_24khz or encodec_32khz"
        )
    if cfg.audio_channels != 1:
        raise ValueError(f"codec {name!r}: has {cfg.audio_channels} audio channels; only mono codecs are supported")


def codec_info(codec) -> dict[str, Any]:
    """{name, sample_rate, hop_length, frame_rate, n_q (levels the codec has), codebook_size}."""
    cfg = codec.config
    frame_rate = cfg.sampling_rate / cfg.hop_length
    return {
        "name": getattr(codec, "name_or_path", "") or "",
        "sample_rate": int(cfg.sampling_rate),
        "hop_length": int(cfg.hop_length),
        "frame_rate": int(frame_rate) if frame_rate == int(frame_rate) else frame_rate,
        "n_q": int(cfg.num_quantizers),
        "codebook_size": int(cfg.codebook_size),
    }


def weights_fingerprint(codec) -> str:
    """sha256 over the codec's state dict (names, shapes and values): identifies the weights."""
    h = hashlib.sha256()
    for key, value in sorted(codec.state_dict().items()):
        t = value.detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def resolve_n_q(codec, n_q: int | None = None, bandwidth: float | None = None) -> int:
    """Number of RVQ levels for `n_q` or `bandwidth` (kbps); neither -> all levels of the codec."""
    if n_q is not None and bandwidth is not None:
        raise ValueError("give n_q or bandwidth, not both")
    total = int(codec.config.num_quantizers)
    if bandwidth is not None:
        if bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0 kbps, got {bandwidth}")
        n_q = codec.quantizer.get_num_quantizers_for_bandwidth(float(bandwidth))
    if n_q is None:
        return total
    if not 1 <= n_q <= total:
        what = f"bandwidth {bandwidth} kbps needs n_q={n_q}" if bandwidth is not None else f"n_q={n_q}"
        raise ValueError(f"{what}, but the codec has {total} levels (1..{total})")
    return int(n_q)


def bandwidth_for(codec, n_q: int) -> float:
    """kbps of `n_q` levels: n_q * log2(codebook_size) * frame_rate / 1000."""
    cfg = codec.config
    return n_q * math.log2(cfg.codebook_size) * cfg.sampling_rate / cfg.hop_length / 1000


def num_frames(codec, n_samples: int) -> int:
    """Code frames for `n_samples` audio samples: ceil(n_samples / hop_length)."""
    return -(-int(n_samples) // int(codec.config.hop_length))


# --------------------------------------------------------------------------------------------
# Encode / decode


def _device(codec) -> torch.device:
    return next(codec.parameters()).device


def is_demo_codec(codec) -> bool:
    from alm.tokenizers.demo_codec import DemoCodec

    return isinstance(codec, DemoCodec)


def codec_facts(path: str | os.PathLike) -> dict[str, Any]:
    """{codebook_size, n_q, frame_rate} of a local codec directory from its config.json alone
    (EnCodec or the demo codec); {} when `path` is not a local codec directory."""
    from alm.tokenizers.demo_codec import read_config

    if not (Path(os.path.expanduser(str(path))) / "config.json").is_file():
        return {}
    demo = read_config(path)
    if demo is not None:
        return {"codebook_size": demo.codebook_size, "n_q": demo.num_quantizers, "frame_rate": demo.frame_rate}
    from transformers import EncodecConfig

    c = EncodecConfig.from_pretrained(os.path.expanduser(str(path)))
    return {"codebook_size": c.codebook_size, "n_q": c.num_quantizers, "frame_rate": c.frame_rate}


@torch.no_grad()
def encode(
    codec,
    audio: torch.Tensor,
    lengths: torch.Tensor | Sequence[int] | None = None,
    n_q: int | None = None,
    bandwidth: float | None = None,
    pad_value: int = -1,
) -> torch.Tensor:
    """Encode a padded batch of mono audio.

    audio: (B, T) float at the codec's sample rate, zero-padded; lengths: (B,) true lengths in
    samples (None: all T). Returns codes (B, n_q, F) int64 on the codec's device,
    F = ceil(max(lengths) / hop); frames past sample b's `num_frames(codec, lengths[b])` hold
    `pad_value`.
    """
    if audio.ndim != 2:
        raise ValueError(f"audio must be (B, T) mono, got shape {tuple(audio.shape)}")
    B, T = audio.shape
    lengths = torch.full((B,), T, dtype=torch.long) if lengths is None else torch.as_tensor(lengths, dtype=torch.long)
    if lengths.shape != (B,) or int(lengths.min()) < 1 or int(lengths.max()) > T:
        raise ValueError(f"lengths must be (B,) in 1..{T}, got {lengths.tolist()}")
    levels = resolve_n_q(codec, n_q, bandwidth)
    if is_demo_codec(codec):
        return _encode_demo(codec, audio, lengths, levels, pad_value)
    # transformers only accepts one of config.target_bandwidths; RVQ levels are prefix-consistent,
    # so encode at the smallest listed bandwidth with enough levels and keep the first `levels`.
    quantizer = codec.quantizer
    supported = sorted(codec.config.target_bandwidths)
    enc_bw = next((bw for bw in supported if quantizer.get_num_quantizers_for_bandwidth(bw) >= levels), supported[-1])

    T_used = int(lengths.max())
    device = _device(codec)
    x = audio[:, :T_used].to(device=device, dtype=torch.float32)
    mask = torch.arange(T_used, device=device)[None, :] < lengths.to(device)[:, None]  # (B, T)
    x = x * mask
    out = codec.encode(x[:, None, :], padding_mask=mask[:, None, :], bandwidth=enc_bw, return_dict=True)
    codes = out.audio_codes[0, :, :levels].long()  # (B, n_q, F)
    frames = -(-lengths.to(device) // int(codec.config.hop_length))  # (B,)
    if codes.shape[-1] != int(frames.max()):
        raise RuntimeError(f"codec produced {codes.shape[-1]} frames, expected {int(frames.max())}")
    pad = torch.arange(codes.shape[-1], device=device)[None, None, :] >= frames[:, None, None]
    return codes.masked_fill(pad, pad_value)


def _encode_demo(codec, audio: torch.Tensor, lengths: torch.Tensor, levels: int, pad_value: int) -> torch.Tensor:
    """The demo codec: each sample encoded alone (no cross-sample effects), padded to the longest."""
    device = _device(codec)
    hop = int(codec.config.hop_length)
    frames = -(-lengths // hop)
    codes = torch.full((audio.shape[0], levels, int(frames.max())), pad_value, dtype=torch.long, device=device)
    from alm.tokenizers.demo_codec import one_thread

    x = audio.to(device=device, dtype=torch.float32)
    with one_thread():  # codes independent of the thread count
        coeffs = [codec.analyse(x[b : b + 1, :n])[0] for b, n in enumerate(lengths.tolist())]  # (F_b, bins) each
        flat = codec.quantise(torch.cat(coeffs), levels)  # (sum F_b, levels): one pass over the batch
    for b, part in enumerate(flat.split([len(c) for c in coeffs])):
        codes[b, :, : len(part)] = part.T
    return codes


# --------------------------------------------------------------------------------------------
# Long files: windows on the frame grid, batched by total audio length (alm/tokenizers/chunks.py)

CHUNK_SECONDS = 20.0  # frames kept per window
CONTEXT_SECONDS = 1.0  # audio on each side of the kept frames, trimmed away (EnCodec's LSTM warms up in it)
BATCH_SECONDS = 240.0  # audio per encoder forward


def receptive_field(codec) -> int:
    """Samples one frame of EnCodec's convolution stack reads (the LSTM's reach is unbounded: see
    `context_frames`); the demo codec's frames read 2 * hop."""
    if is_demo_codec(codec):
        return 2 * int(codec.config.hop_length)
    from transformers.models.encodec.modeling_encodec import EncodecConv1d

    field, jump = 1, 1
    for module in codec.encoder.modules():
        if isinstance(module, EncodecConv1d):
            conv = module.conv
            field += (conv.kernel_size[0] - 1) * conv.dilation[0] * jump
            jump *= conv.stride[0]
    return field


def context_frames(codec, context_seconds: float = CONTEXT_SECONDS) -> int:
    """Frames of context on each side of a window's kept frames: the demo codec's frames overlap only
    their neighbours (1 frame is exact); EnCodec's: the conv stack's receptive field, and at least
    `context_seconds` for its LSTM, which carries state from the window's start."""
    hop = int(codec.config.hop_length)
    if is_demo_codec(codec):
        return 1
    if context_seconds < 0:
        raise ValueError(f"context_seconds must be >= 0, got {context_seconds}")
    return max(-(-receptive_field(codec) // hop), math.ceil(context_seconds * codec.config.sampling_rate / hop))


def encode_files(
    codec,
    files,
    n_q: int | None = None,
    bandwidth: float | None = None,
    chunk_seconds: float = CHUNK_SECONDS,
    context_seconds: float = CONTEXT_SECONDS,
    batch_seconds: float = BATCH_SECONDS,
):
    """Encode (key, mono float32 audio (T,) at the codec's rate) pairs in windows of `chunk_seconds`
    kept frames with `context_seconds` each side, batched across files up to `batch_seconds` of audio
    per forward; yields (key, codes (n_q, ceil(T / hop)) int64 numpy) per file, in input order.

    Memory is bounded by the batch and the decoded files awaiting their windows, not by a file's
    length. The demo codec's chunked codes equal its whole-file codes; EnCodec's differ only where
    its LSTM state at a window's start has not converged (see CONTEXT_SECONDS; measured in
    tests/test_tokenize_chunked.py)."""
    from alm.tokenizers.chunks import encode_windowed

    levels = resolve_n_q(codec, n_q, bandwidth)
    rate, hop = int(codec.config.sampling_rate), int(codec.config.hop_length)
    if chunk_seconds <= 0 or batch_seconds <= 0:
        raise ValueError(f"chunk_seconds and batch_seconds must be > 0, got {chunk_seconds}, {batch_seconds}")
    core = max(1, round(chunk_seconds * rate / hop))

    def batch_fn(x: torch.Tensor) -> torch.Tensor:  # (B, W) -> (B, frames, n_q)
        return encode(codec, x, n_q=levels).permute(0, 2, 1)

    windowed = encode_windowed(files, batch_fn, hop, core, context_frames(codec, context_seconds),
                               budget=int(batch_seconds * rate))
    for key, codes in windowed:
        yield key, np.ascontiguousarray(codes.T)  # (n_q, F)


def encode_file(codec, audio: np.ndarray, n_q: int | None = None, bandwidth: float | None = None, **chunking) -> np.ndarray:
    """One mono file (T,) at the codec's rate -> codes (n_q, ceil(T / hop)), in windows (see encode_files)."""
    return next(encode_files(codec, [(0, np.asarray(audio, dtype=np.float32))], n_q, bandwidth, **chunking))[1]


@torch.no_grad()
def decode(codec, codes: torch.Tensor) -> torch.Tensor:
    """Decode codes (B, n_q, F) (any n_q up to the codec's levels; negative = padding, a suffix
    per sample) -> audio (B, F * hop_length) float32 on the codec's device, zero past each
    sample's frames."""
    if codes.ndim != 3:
        raise ValueError(f"codes must be (B, n_q, F), got shape {tuple(codes.shape)}")
    B, levels, F = codes.shape
    if levels > codec.config.num_quantizers:
        raise ValueError(f"codes have {levels} levels; the codec has {codec.config.num_quantizers}")
    device = _device(codec)
    codes = torch.as_tensor(codes, dtype=torch.long).to(device)
    if int(codes.max()) >= codec.config.codebook_size:
        raise ValueError(f"code {int(codes.max())} out of range for codebook size {codec.config.codebook_size}")
    valid = codes[:, 0, :] >= 0  # (B, F)
    frames = valid.long().sum(-1)  # padding is a suffix -> valid frame count
    hop = int(codec.config.hop_length)
    if is_demo_codec(codec):
        audio = codec.decode_codes(codes.clamp(min=0))  # (B, F * hop)
    else:
        audio = codec.decode(codes.clamp(min=0)[None], [None], return_dict=True).audio_values
        audio = audio[:, 0, : F * hop].float()  # (B, F * hop)
    keep = torch.arange(audio.shape[-1], device=device)[None, :] < (frames * hop)[:, None]
    return audio * keep


# --------------------------------------------------------------------------------------------
# Shard pass


def tokenize_codec_shards(
    shards_spec,
    out_dir: str | os.PathLike,
    codec,
    n_q: int | None = None,
    bandwidth: float | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
    source_name: str | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    batch_seconds: float = BATCH_SECONDS,
    chunk_seconds: float = CHUNK_SECONDS,
    context_seconds: float = CONTEXT_SECONDS,
) -> dict[str, Any]:
    """Write `out_dir/<shard>.tar` with a `codes.npy` member (n_q, F) per sample (int16 when
    the codebook fits, else int32) beside the copied `json`, plus `out_dir/codec.json`.

    `codec`: a loaded model or a name/path for `load_codec`. Audio (`flac`/`wav`/`ogg`, mono or
    downmixed) is resampled to the codec's rate. codec.json records the codec's name, facts and
    weights_sha256 (and, for a local codec directory, its absolute path and files_sha256), which
    training checks against data.codec (alm.data.provenance). Undecodable or empty audio -> the sample is
    left out and listed in `out_dir/errors/<shard>.json` and `out_dir/errors.json`. Finished shards
    are skipped on a rerun; a rerun with a different codec or n_q into the same directory is refused.
    `num_shards`/`shard_index`: write only input shards i with i % num_shards == shard_index (one job
    of an array; every job writes the same codec.json).
    `batch_size` samples are read at a time and decoded one by one; their audio is encoded in windows
    of `chunk_seconds` (+ `context_seconds` each side), up to `batch_seconds` of audio per forward
    (encode_files), so memory does not grow with a file's length. Returns map_shards' summary.
    """
    from alm.data.audio import SHARD_AUDIO, load_mono, shard_audio_ext
    from alm.data.shards import expand_shards, map_shards, npy_bytes
    from alm.io import atomic_write_text

    if isinstance(codec, (str, os.PathLike)):
        source_name = source_name or str(codec)
        codec = load_codec(codec, device or "cpu")
    elif device is not None:
        codec = codec.to(device)
    codec.eval()
    levels = resolve_n_q(codec, n_q, bandwidth)
    info = codec_info(codec)
    rate = info["sample_rate"]
    dtype = np.int16 if info["codebook_size"] <= 32767 else np.int32
    urls = expand_shards(shards_spec)
    out_dir = Path(out_dir)

    meta = {
        **info,
        "name": source_name or info["name"],
        "codec_n_q": info["n_q"],
        "n_q": levels,
        "bandwidth_kbps": round(bandwidth_for(codec, levels), 6),
        "dtype": np.dtype(dtype).name,
        "member": CODES_MEMBER,
        "weights_sha256": weights_fingerprint(codec),
        "source": shards_spec if isinstance(shards_spec, str) else list(shards_spec),
    }
    local = Path(os.path.expanduser(meta["name"])) if meta["name"] else None
    if local is not None and local.is_dir():  # a local codec: where it is and a hash of its files
        from alm.data.provenance import dir_fingerprint

        meta["path"], meta["files_sha256"] = str(local.resolve()), dir_fingerprint(local)
    meta_path = out_dir / "codec.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        for field in ("weights_sha256", "n_q", "sample_rate", "codebook_size", "dtype"):
            if old.get(field) != meta[field]:
                raise ValueError(
                    f"{meta_path}: existing codes were made with {field}={old.get(field)!r}, this run has "
                    f"{meta[field]!r}; use another --out directory (or delete it) to re-tokenize"
                )
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta_path, json.dumps(meta, indent=1, ensure_ascii=False))

    def decoded(samples: list[dict[str, Any]]):  # (index, mono audio) one at a time: one decoded file held
        for i, sample in enumerate(samples):
            where = f"{sample.get('__url__', '?')}:{sample['__key__']}"
            ext = shard_audio_ext(sample)
            data = sample.pop(ext) if ext else None  # the compressed bytes go once decoded (map_shards copies only json)
            if data is None:
                log.warning("%s: no audio member (%s)", where, "/".join(SHARD_AUDIO))
                continue
            try:
                wav, _ = load_mono(data, rate)
            except ValueError as exc:
                log.warning("%s: %s", where, exc)
                continue
            finally:
                del data
            if wav.size == 0 or not np.isfinite(wav).all():
                log.warning("%s: empty or non-finite audio", where)
                continue
            yield i, wav

    def fn(samples: list[dict[str, Any]]) -> list[dict[str, bytes] | None]:
        results: list[dict[str, bytes] | None] = [None] * len(samples)
        for i, codes in encode_files(codec, decoded(samples), levels, chunk_seconds=chunk_seconds,
                                     context_seconds=context_seconds, batch_seconds=batch_seconds):
            results[i] = {CODES_MEMBER: npy_bytes(codes.astype(dtype))}  # (n_q, F_i)
        return results

    return map_shards(urls, out_dir, fn, batch_size=batch_size, desc=f"codec {meta['name']}", progress=progress,
                      num_shards=num_shards, shard_index=shard_index)


# --------------------------------------------------------------------------------------------
# Tiny random codec for tests and the CPU demo


def _synthetic_audio(n: int, length: int, sample_rate: int, gen: torch.Generator) -> torch.Tensor:
    """(n, length) varied test signals: a few random tones under a random envelope, plus noise."""
    t = torch.arange(length) / sample_rate
    out = torch.zeros(n, length)
    for k in range(n):
        for _ in range(3):
            freq, amp, phase = torch.rand(3, generator=gen)
            out[k] += amp * torch.sin(2 * math.pi * (60 + freq * sample_rate / 4) * t + 2 * math.pi * phase)
        env = torch.linspace(float(torch.rand(1, generator=gen)), float(torch.rand(1, generator=gen)), length)
        out[k] = out[k] * env + 0.05 * torch.randn(length, generator=gen)
    return 0.3 * out / out.abs().amax(dim=-1, keepdim=True).clamp(min=1e-6)


def _scale_conv(module: torch.nn.Module, factor: float) -> None:
    """Multiply the (weight-normed) kernel of an EncodecConv1d by `factor` (bias is zero)."""
    conv = module.conv
    if hasattr(conv, "parametrizations"):
        conv.parametrizations.weight.original0.mul_(factor)  # weight norm's magnitude g
    elif hasattr(conv, "weight_g"):
        conv.weight_g.mul_(factor)
    else:
        conv.weight.mul_(factor)


@torch.no_grad()
def _fit_codebooks(codec, gen: torch.Generator, iters: int = 8) -> None:
    """Make a random EnCodec a usable (if poor) tokenizer.

    Random init leaves every codebook zero (all codes 0: EnCodec fills them by k-means on its
    first training batch), and random biases make the encoder's output depend mostly on the
    frame position (LSTM start-up) rather than the audio. So: zero all biases (output now
    driven by the input), scale the encoder output to unit std, fill each RVQ level by k-means
    on the residual of synthetic audio, and scale the decoder output to the input's level.
    """
    for name, param in codec.named_parameters():
        if name.endswith("bias") or ".bias_" in name:
            param.zero_()
    cfg = codec.config
    audio = _synthetic_audio(16, cfg.sampling_rate, cfg.sampling_rate, gen)  # (N, T)
    emb = codec.encoder(audio[:, None, :])  # (N, D, F)
    _scale_conv(codec.encoder.layers[-1], 1.0 / float(emb.std().clamp(min=1e-12)))
    emb = codec.encoder(audio[:, None, :])
    residual = emb.permute(0, 2, 1).reshape(-1, emb.shape[1])  # (N * F, D)
    K = cfg.codebook_size
    for layer in codec.quantizer.layers:
        book = layer.codebook
        pick = torch.randperm(residual.shape[0], generator=gen)[:K]
        centers = residual[pick].clone()
        if centers.shape[0] < K:  # fewer vectors than codes: jitter copies
            extra = centers[torch.randint(len(centers), (K - len(centers),), generator=gen)]
            centers = torch.cat([centers, extra + 0.01 * torch.randn(extra.shape, generator=gen)])
        for _ in range(iters):
            assign = torch.cdist(residual, centers).argmin(-1)
            for k in range(K):
                members = residual[assign == k]
                if len(members):
                    centers[k] = members.mean(0)
        book.embed.copy_(centers)
        book.embed_avg.copy_(centers)
        book.cluster_size.fill_(1.0)
        book.inited.fill_(1.0)
        residual = residual - centers[torch.cdist(residual, centers).argmin(-1)]
    quantized = codec.quantizer.decode(codec.quantizer.encode(emb))  # (N, D, F)
    recon = codec.decoder(quantized)  # (N, 1, T')
    _scale_conv(codec.decoder.layers[-1], float(audio.std()) / float(recon.std().clamp(min=1e-12)))


def make_tiny_codec(
    path: str | os.PathLike,
    seed: int = 0,
    sample_rate: int = 16000,
    n_q: int = 4,
    codebook_size: int = 32,
    causal: bool = True,
) -> str:
    """Build a tiny random EnCodec (~170k parameters, hop 320, 50 frames/s at 16 kHz, `n_q`
    levels of `codebook_size` codes, codebooks fitted so codes vary; causal convolutions as
    encodec_24khz, or centred ones as encodec_32khz), save it with its feature extractor under
    `path`, and return the path (load it with `load_codec(path)`)."""
    from transformers import EncodecConfig, EncodecFeatureExtractor, EncodecModel

    hop = 320
    bits = math.log2(codebook_size)
    if bits != int(bits):
        raise ValueError(f"codebook_size must be a power of 2, got {codebook_size}")
    per_q = bits * sample_rate / hop / 1000  # kbps per level
    config = EncodecConfig(
        sampling_rate=sample_rate,
        audio_channels=1,
        num_filters=4,
        hidden_size=16,
        num_residual_layers=1,
        num_lstm_layers=1,
        upsampling_ratios=[8, 5, 4, 2],
        codebook_size=codebook_size,
        target_bandwidths=[round(per_q * k, 6) for k in range(1, n_q + 1)],
        use_causal_conv=causal,
    )
    if config.num_quantizers != n_q:
        raise ValueError(f"tiny codec: got {config.num_quantizers} levels, wanted {n_q}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        codec = EncodecModel(config).eval()
        gen = torch.Generator().manual_seed(seed)
        _fit_codebooks(codec, gen)
    path = Path(path)
    codec.save_pretrained(path)
    EncodecFeatureExtractor(feature_size=1, sampling_rate=sample_rate, padding_value=0.0).save_pretrained(path)
    return str(path)


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    """`alm tokenize codec --shards SPEC --out DIR --codec NAME|PATH [--n-q N | --bandwidth KBPS]`."""
    from alm.cli_format import DefaultsFormatter
    from alm.tokenizers import array_job

    parser = argparse.ArgumentParser(
        prog="alm tokenize codec",
        description="Encode the audio of a shard set into EnCodec codes (a parallel shard set with codes.npy).",
        formatter_class=DefaultsFormatter,
        epilog="writes OUT/<the input shards' names>.tar (codes.npy (n_q, frames) per sample), OUT/codec.json "
               "(which codec made them), OUT/errors/<shard>.json per shard with failed samples and OUT/errors.json "
               "(all of them). With --num-shards N --shard-index I (or in a SLURM array task) only input shards "
               "i with i % N == I; a rerun skips finished shards",
    )
    parser.add_argument("--shards", required=True, help="input audio shards: dir, glob, brace pattern, '::'-joined")
    parser.add_argument("--out", required=True, help="output directory for the parallel code shards")
    parser.add_argument("--codec", required=True, help="encodec_24khz | encodec_32khz | hub id | local directory")
    levels = parser.add_mutually_exclusive_group()
    levels.add_argument("--n-q", type=int, default=None, help="RVQ levels to keep (default: all the codec has)")
    levels.add_argument("--bandwidth", type=float, default=None, help="target bandwidth in kbps (sets n_q)")
    parser.add_argument("--batch-size", type=int, default=16, help="samples read at a time (decoded one by one)")
    parser.add_argument("--batch-seconds", type=float, default=BATCH_SECONDS,
                        help="audio per encoder forward (windows of all files in a read batch)")
    parser.add_argument("--chunk-seconds", type=float, default=CHUNK_SECONDS,
                        help="seconds of codes each window keeps (long files are encoded in windows)")
    parser.add_argument("--context-seconds", type=float, default=CONTEXT_SECONDS,
                        help="audio each side of a window's kept part, encoded and trimmed away")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    array_job.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if not (args.batch_seconds > 0 and args.chunk_seconds > 0 and args.context_seconds >= 0):
        parser.error("--batch-seconds and --chunk-seconds must be > 0, --context-seconds >= 0")
    num_shards, shard_index, share = array_job.resolve(args.num_shards, args.shard_index)
    if num_shards > 1:
        print(f"alm tokenize codec: shard index {shard_index} of {num_shards} ({share})", file=sys.stderr)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        codec = load_codec(args.codec, args.device)
        summary = tokenize_codec_shards(
            args.shards, args.out, codec, n_q=args.n_q, bandwidth=args.bandwidth, batch_size=args.batch_size,
            progress=not args.no_progress, source_name=args.codec, num_shards=num_shards, shard_index=shard_index,
            batch_seconds=args.batch_seconds, chunk_seconds=args.chunk_seconds, context_seconds=args.context_seconds,
        )
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"alm tokenize codec: error: {exc}", file=sys.stderr)
        return 2
    meta = json.loads((Path(args.out) / "codec.json").read_text())
    print(f"{array_job.summary_line(summary, num_shards, shard_index, args.out)}; "
          f"n_q={meta['n_q']} at {meta['frame_rate']} frames/s")
    return 1 if summary["busy"] else 0  # an unfinished share must not satisfy a pipeline's afterok


if __name__ == "__main__":
    raise SystemExit(main())
