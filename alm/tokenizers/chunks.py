"""Long audio in overlapping windows on an encoder's frame grid, and batches by total audio length.

An encoder here (EnCodec, the demo codec, an SSL model's conv stack, log-mel) maps audio (T,) to
frames on a grid: frame f starts at sample f * hop and reads up to `span` samples from there.
    codec:    span = None  -> F = ceil(T / hop)            (the last frame is padded)
    SSL/mel:  span = 400   -> F = (T - span) // hop + 1    (whole frames only)
Encoding a file whole needs memory proportional to its length (for 16 twenty-minute files in one
padded EnCodec forward, ~59 GB in the first conv alone); encoding it in windows needs memory
proportional to the window.

A window is a slice of the file that starts on the grid (a multiple of hop), so its frame j is the
file's frame `first + j`, computed from the same samples. Each window keeps only its `keep` frames,
which have at least `context` frames of the file on both sides inside the window, or the file's
own edge: what a window's artificial edges change (padding, an LSTM's start-up, attention's reach)
is trimmed away. The keeps tile the file's frames once, in order.

    file frames   |0 ........................................................... F|
    window 0      [====keep====)ctx-ctx]
    window 1            [ctx-ctx(====keep====)ctx-ctx]
    last window                                [ctx-ctx(====keep==========)]  ends where the file ends

Every window of a file but its last has the same length (core + 2 context frames; the last one ends
at the file's end, like the file), so windows batch without padding: `length_batches` groups equal
lengths, up to a budget of samples per batch. (Padding a window would change its last frames:
EnCodec reflects the signal at a real end, zeros at a padded one.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class Window:
    start: int  # first sample, a multiple of hop
    end: int  # one past the last sample
    first: int  # the file's frame index of the window's frame 0 (start // hop)
    keep_start: int  # file frames [keep_start, keep_end) are taken from this window
    keep_end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def frame_count(n_samples: int, hop: int, span: int | None = None) -> int:
    """Frames of `n_samples` samples: ceil(n / hop) (span None), else (n - span) // hop + 1 (0 when n < span)."""
    if span is None:
        return -(-int(n_samples) // hop)
    return max(0, (int(n_samples) - span) // hop + 1)


def plan(n_samples: int, hop: int, core: int, context: int, span: int | None = None) -> list[Window]:
    """Windows covering a file of `n_samples`: `core` frames kept per window (the last keeps up to
    core + context), `context` frames on each side. A file of at most core + 2 * context frames is one
    window, the whole file."""
    if hop < 1 or core < 1 or context < 0:
        raise ValueError(f"chunk plan: need hop >= 1, core >= 1 frame, context >= 0 frames; got {hop}, {core}, {context}")
    F = frame_count(n_samples, hop, span)
    W = core + 2 * context  # frames per window
    if F <= W:
        return [Window(0, int(n_samples), 0, 0, F)]

    def end_sample(frame_end: int) -> int:  # one past the last sample frames [.., frame_end) read
        if frame_end == F:
            return int(n_samples)  # as the whole file: the same samples past the last frame
        return frame_end * hop if span is None else (frame_end - 1) * hop + span

    windows = []
    for a in range(0, F, core):
        start = max(0, a - context)
        if start + W >= F:  # this window reaches the file's end: it keeps the rest
            start = F - W
            windows.append(Window(start * hop, end_sample(F), start, a, F))
            break
        windows.append(Window(start * hop, end_sample(start + W), start, a, min(a + core, F)))
    return windows


def length_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices of `lengths` in batches of one length each, at most `budget` samples per batch (a longer
    item alone), in first-seen order of the lengths."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(int(n), []).append(i)
    out = []
    for n, idx in groups.items():
        per = max(1, budget // max(n, 1))
        out.extend(idx[k : k + per] for k in range(0, len(idx), per))
    return out


BatchFn = Callable[[torch.Tensor], torch.Tensor]  # audio (B, W) -> (B, frames of W, ...) frames on axis 1


def encode_windowed(
    files: Iterable[tuple[object, np.ndarray]],
    batch_fn: BatchFn,
    hop: int,
    core: int,
    context: int,
    budget: int,
    span: int | None = None,
) -> Iterator[tuple[object, np.ndarray]]:
    """Encode (key, mono audio (T,)) files in windows, batched across files by total length; yields
    (key, output (F, ...)) per file, each the concatenation of its windows' kept frames, in order.

    Memory: windows are views of the decoded audio; a batch is copied once into a (B, W) tensor.
    Pending windows are encoded as soon as they reach `budget` samples, so what is held is the
    output so far, the files with pending windows (at most `budget` samples of audio plus one file)
    and one batch.
    """
    pending: list[tuple[object, np.ndarray, list[Window]]] = []  # whole files: (key, audio, windows)
    held = 0

    def flush() -> Iterator[tuple[object, np.ndarray]]:
        flat = [(f, j, w) for f, (_, _, windows) in enumerate(pending) for j, w in enumerate(windows)]
        parts: list[list] = [[None] * len(windows) for _, _, windows in pending]
        for idx in length_batches([w.length for _, _, w in flat], budget):
            batch = [flat[i] for i in idx]
            x = torch.from_numpy(np.stack([pending[f][1][w.start : w.end] for f, _, w in batch]))  # (B, W)
            out = batch_fn(x)  # (B, frames of W, ...)
            for row, (f, j, w) in enumerate(batch):
                parts[f][j] = out[row, w.keep_start - w.first : w.keep_end - w.first].cpu().numpy()
        for (key, _, _), got in zip(pending, parts):
            yield key, (np.concatenate(got) if len(got) > 1 else got[0])
        pending.clear()

    for key, audio in files:
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        windows = plan(len(audio), hop, core, context, span)
        pending.append((key, audio, windows))
        held += sum(w.length for w in windows)
        if held >= budget:
            yield from flush()
            held = 0
    if pending:
        yield from flush()
