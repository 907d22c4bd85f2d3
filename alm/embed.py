"""`alm embed`: L2-normalised float32 embeddings of texts and audio from a CLAP export.

    alm embed EXPORT --texts FILE --out T.npy                 one text per line (blank lines kept as "")
    alm embed EXPORT --audio A.wav [B.flac ...] --out A.npy   one row per file, in the order given

    from alm.embed import load_encoder, encoder_for
    enc = load_encoder("exports/clap")   # or encoder_for(model, tokenizer_dir) over a live model
    enc.texts(["a dog barks"])          # (N, D) float32, unit rows, input order
    enc.audio([clip])                    # clips: mono float32 at enc.sample_rate
    enc.files(["a.wav", "b.flac"])       # read, mono (channel mean), resampled to enc.sample_rate

EXPORT is an `alm export` of stage clap: alm's own towers (model.tower: alm), pretrained transformers
towers mixed with them (model.audio_tower / text_tower; front ends in EXPORT/audio_frontend and
EXPORT/text_frontend) or a converted transformers CLAP (model.tower: hf, written by `alm convert clap`).

Windows. The model sees at most `enc.window` samples at once (alm towers: model.max_seconds; a
converted CLAP: its feature extractor's max_length_s). A clip no longer than that is embedded
whole, exactly as the model (for a converted CLAP: transformers' feature extractor +
get_audio_features) embeds it. A longer clip is cut into non-overlapping windows of `enc.window`
samples from its start, the last one shorter; its embedding is the mean of the windows'
normalised embeddings weighted by each window's length in samples, renormalised. No random crop,
no dependence on batch size or on the other clips of a batch.

Memory: `files` streams each file block by block (decode, downmix, streamed soxr resampling, equal
to resampling the whole file), so an hour-long file is held as one window at a time, never whole;
at most `batch_size` windows wait for the model, and only the clips with a window in that batch
keep a running sum. The rows go into `out` when given (the CLI writes them into a memory-mapped
.npy), so a million files cost their (N, D) float32 rows on disk, not in memory.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from alm.errors import UserError


class Encoder:
    """Texts and audio -> (N, D) float32 unit rows, from a backend that embeds one batch at a time.

    A backend has: sample_rate, window (samples), dim, embed_texts(list[str]) -> (B, D) and
    embed_windows(list[np.ndarray], each at most window samples) -> (B, D), both L2-normalised."""

    def __init__(self, backend, description: str):
        self.backend = backend
        self.sample_rate = int(backend.sample_rate)
        self.window = int(backend.window)
        self.dim = int(backend.dim)
        self.description = description

    def texts(self, texts: Sequence[str], batch_size: int = 64, out: np.ndarray | None = None) -> np.ndarray:
        """out: an (N, D) float32 array to fill (e.g. a np.lib.format.open_memmap), else one is made."""
        _check_batch(batch_size)
        rows = self._output(len(texts), out)
        for i in range(0, len(texts), batch_size):
            rows[i : i + batch_size] = self.backend.embed_texts([str(t) for t in texts[i : i + batch_size]])
        return rows

    def audio(self, clips: Sequence[np.ndarray], batch_size: int = 16, out: np.ndarray | None = None) -> np.ndarray:
        """Mono float32 clips at sample_rate (see the module docstring for clips longer than window)."""
        _check_batch(batch_size)
        for i, clip in enumerate(clips):
            if np.asarray(clip).ndim != 1:
                raise UserError(f"audio clip {i}: expected mono (samples,), got shape {np.asarray(clip).shape}")
        items = ((i, w) for i, clip in enumerate(clips) for w in windows(clip, self.window))
        return self._pooled(items, self._output(len(clips), out), batch_size, lambda i: f"audio clip {i}")

    def files(self, paths: Sequence[str | Path], batch_size: int = 16, out: np.ndarray | None = None) -> np.ndarray:
        """Audio files (any alm.data.audio format), each read block by block (see the module docstring)."""
        _check_batch(batch_size)
        for p in paths:
            if not Path(p).is_file():
                raise UserError(f"{p}: no such audio file")
        items = ((i, w) for i, p in enumerate(paths) for w in file_windows(p, self.sample_rate, self.window))
        return self._pooled(items, self._output(len(paths), out), batch_size, lambda i: str(paths[i]))

    def _output(self, n: int, out: np.ndarray | None) -> np.ndarray:
        if out is None:
            return np.zeros((n, self.dim), np.float32)
        if out.shape != (n, self.dim) or out.dtype != np.float32:
            raise ValueError(f"out: expected a float32 array of shape {(n, self.dim)}, got {out.dtype} {out.shape}")
        return out

    def _pooled(self, items: Iterable[tuple[int, np.ndarray]], rows: np.ndarray, batch_size: int, name) -> np.ndarray:
        """Length-weighted sums of each clip's window embeddings, renormalised, into rows (N, D). Items come
        clip after clip: only the clips with windows in the current batch are held (float64 sums)."""
        sums: dict[int, np.ndarray] = {}
        weight: dict[int, int] = {}
        owners: list[int] = []
        batch: list[np.ndarray] = []
        done = -1  # every clip up to here is finished and written

        def finish(upto: int) -> None:
            nonlocal done
            for i in range(done + 1, upto + 1):
                if i not in sums:
                    raise UserError(f"{name(i)}: no audio samples (empty)")
                total = sums.pop(i)
                weight.pop(i)
                rows[i] = total / max(np.linalg.norm(total), 1e-12)
            done = max(done, upto)

        def flush() -> None:
            emb = np.asarray(self.backend.embed_windows(batch), np.float64)
            for row, owner, w in zip(emb, owners, batch):
                sums[owner] = sums[owner] + len(w) * row if owner in sums else len(w) * row
                weight[owner] = weight.get(owner, 0) + len(w)
            finish(owners[-1] - 1)  # the last clip of the batch may have more windows to come
            owners.clear()
            batch.clear()

        for owner, w in items:
            if len(w) == 0:
                continue
            owners.append(owner)
            batch.append(w)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        finish(len(rows) - 1)
        return rows


def windows(clip: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Non-overlapping windows of `size` samples from the start, the last one shorter."""
    clip = np.ascontiguousarray(clip, dtype=np.float32)
    for start in range(0, len(clip), size):
        yield clip[start : start + size]


def file_windows(path: str | Path, rate: int, size: int) -> Iterator[np.ndarray]:
    """The windows of `windows(load_mono(path, rate), size)`, read block by block (one window held)."""
    from alm.data.audio import CorruptAudio, Resampler, UnsupportedFormat, check_length, open_audio, to_mono

    try:
        with open_audio(str(path)) as source:
            step = Resampler(source.sample_rate, rate) if source.sample_rate != rate else None
            buf = _WindowBuffer(size)
            frames = 0
            for block in source.blocks():
                frames += block.shape[1]
                mono = to_mono(block)
                yield from buf.put(step(mono) if step else mono)
            check_length(source, frames)
            if step:
                yield from buf.put(step(np.zeros(0, np.float32), last=True))
            yield from buf.rest()
    except (CorruptAudio, UnsupportedFormat) as exc:
        raise UserError(f"{path}: undecodable audio ({exc})") from exc


class _WindowBuffer:
    """Samples in, whole windows of `size` out; rest() yields the final shorter window (if any)."""

    def __init__(self, size: int):
        self.size = size
        self.parts: list[np.ndarray] = []
        self.held = 0

    def put(self, x: np.ndarray) -> Iterator[np.ndarray]:
        self.parts.append(np.asarray(x, np.float32))
        self.held += len(x)
        if self.held < self.size:
            return
        whole = np.concatenate(self.parts)
        n = len(whole) // self.size * self.size
        for start in range(0, n, self.size):
            yield whole[start : start + self.size]
        self.parts, self.held = [whole[n:].copy()], len(whole) - n

    def rest(self) -> Iterator[np.ndarray]:
        if self.held:
            yield np.concatenate(self.parts)


def _check_batch(batch_size: int) -> None:
    if int(batch_size) <= 0:
        raise UserError(f"batch_size must be > 0, got {batch_size}")


def _rows(parts: list[np.ndarray], dim: int) -> np.ndarray:
    if not parts:
        return np.zeros((0, dim), np.float32)
    return np.concatenate([np.asarray(p, np.float32) for p in parts])


# ---- backends -----------------------------------------------------------------------------------

def is_alm_export(path: str | Path) -> bool:
    """An alm export folder (config.yaml, no transformers config.json)."""
    p = Path(path)
    return p.is_dir() and (p / "config.yaml").is_file() and not (p / "config.json").is_file()


def export_stage(path: str | Path) -> str | None:
    """The `stage:` an export's config.yaml names (read without validating the rest), or None."""
    from omegaconf import OmegaConf

    f = Path(path) / "config.yaml"
    if not f.is_file():
        return None
    try:
        stage = OmegaConf.load(f).get("stage")
    except Exception:  # not YAML: load_config names the problem
        return None
    return None if stage is None else str(stage)


def load_encoder(export_dir: str | Path, device: str = "cpu") -> Encoder:
    """An Encoder over the CLAP export `export_dir` (see the module docstring)."""
    from alm.export import load_config, load_pretrained

    export_dir = Path(export_dir)
    stage = export_stage(export_dir)
    if stage is not None and stage != "clap":
        raise UserError(f"{export_dir}: an alm export of stage {stage!r}, not a clap export (CLAP embeddings need "
                        "stage clap: `alm export` of a clap run, or `alm convert clap`)")
    load_config(export_dir)  # a clear error for what is not an export
    model = load_pretrained(export_dir).float().to(device).eval()
    return encoder_for(model, export_dir / "tokenizer", device, f"clap:{export_dir}", export_dir=export_dir)


def encoder_for(model, tokenizer_dir: str | Path | None, device: str | None = None, description: str = "clap",
                export_dir: str | Path | None = None) -> Encoder:
    """An Encoder over a live clap-stage model (alm.models.clap.build_clap: Clap or HFClap), e.g. during
    validation: its front end from tokenizer_dir (alm towers: the sentencepiece dir; tower hf: the
    processor folder); pretrained towers (model.audio_tower / text_tower): their front ends from
    export_dir's audio_frontend/ and text_frontend/, else from the towers' sources. The model is used as
    it is: put it in eval mode first; inputs go to `device` (None: the device of its parameters)."""
    if device is None:
        device = str(next(model.parameters()).device)
    cfg = model.cfg
    if getattr(cfg, "tower", "alm") == "hf":
        from alm.models.clap_hf import HFClapBackend

        return Encoder(HFClapBackend(model, Path(tokenizer_dir), device), description)
    from alm.models.clap_front import TowersBackend  # alm's own towers, pretrained ones, or a mix

    tok = Path(tokenizer_dir) if tokenizer_dir else None
    return Encoder(TowersBackend(model, tok, device, Path(export_dir) if export_dir else None), description)


# ---- CLI ----------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("export", metavar="EXPORT", help="an alm export of stage clap (alm export / alm convert clap)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--texts", metavar="FILE", help="a UTF-8 text file, one text per line")
    what.add_argument("--audio", metavar="FILE", nargs="+", help="audio files (wav, flac, mp3, ogg, ...)")
    p.add_argument("--out", required=True, help="the .npy file to write: (N, D) float32, L2-normalised rows")
    p.add_argument("--batch-size", type=int, default=None, help="texts (default 64) or audio windows (default 16) per batch")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def read_texts(path: str) -> list[str]:
    f = Path(path)
    if not f.is_file():
        raise UserError(f"--texts {path}: no such file")
    try:
        text = f.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"--texts {path}: not UTF-8 text ({exc})") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":  # the final newline ends the last line; it is not an empty text
        lines = lines[:-1]
    lines = [line.rstrip("\r") for line in lines]
    if not lines:
        raise UserError(f"--texts {path}: empty (one text per line expected)")
    return lines


def run(a: argparse.Namespace) -> int:
    from alm.io import atomic_write_with

    if not str(a.out).endswith(".npy"):
        raise UserError(f"--out {a.out}: expected a .npy file name")
    enc = load_encoder(a.export, a.device)
    texts = read_texts(a.texts) if a.texts is not None else None
    n = len(texts) if texts is not None else len(a.audio)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    what = f"{n} texts" if texts is not None else f"{n} audio files"

    def write(tmp: str) -> None:  # rows straight into the .npy (memory-mapped), renamed into place when complete
        rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, enc.dim))
        if texts is not None:
            enc.texts(texts, a.batch_size or 64, out=rows)
        else:
            enc.files(a.audio, a.batch_size or 16, out=rows)
        rows.flush()
        del rows

    atomic_write_with(out, write)
    shape = (n, enc.dim)
    print(f"[alm] embedded {what} -> {out} {shape} float32")
    return 0
