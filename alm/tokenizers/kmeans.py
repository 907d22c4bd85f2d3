"""k-means for semantic tokens: a uniform, seeded sample of frames from a stream, then clustering.

    frames of every fit sample, in shard order -> FrameReservoir(size, seed) -> (size, D) uniform sample
    -> fit_kmeans(backend) -> centroids (K, D) + report {inertia, cluster usage}

FrameReservoir is reservoir sampling (Vitter's Algorithm R, one draw per frame, vectorised per
array): after t frames every one of them is in the sample with probability size / t, whichever
shard it came from; memory is size x D floats whatever the stream's length. The first `size`
frames fill it in order, so a stream shorter than `size` is kept whole and in order.

Backends, same call and same report: `sklearn` (MiniBatchKMeans, n_init=3, max_iter=100, batch 4096;
always installed), `faiss` (faiss.Kmeans, Lloyd iterations over the whole sample, on a GPU when
faiss sees one: `pip install faiss-cpu`, or a faiss GPU build from conda), `auto`: faiss when it
imports, else sklearn. The report is computed the same way for both: inertia = sum over the sample
of the squared distance to the nearest centroid; usage = sampled frames per cluster.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from alm.errors import UserError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "faiss", "sklearn")
FAISS_ITERATIONS = 50
FAISS_RESTARTS = 3  # best of 3 random starts, as sklearn's n_init=3 (one start can merge two clusters)


class FrameReservoir:
    """A uniform random sample of at most `size` rows of a stream of (n, D) arrays, seeded.

    `add(rows, tag)` feeds rows (tag: e.g. the shard's position, kept per sampled row);
    `rows` / `tags` are the sample, `seen` the stream's length so far."""

    def __init__(self, size: int, seed: int = 0):
        if size < 1:
            raise ValueError(f"reservoir size must be >= 1, got {size}")
        self.size = size
        self.seen = 0
        self._rng = np.random.default_rng(seed)
        self._rows: np.ndarray | None = None  # (size, D) float32
        self._tags = np.zeros(size, dtype=np.int64)

    def add(self, rows: np.ndarray, tag: int = 0) -> None:
        rows = np.asarray(rows, dtype=np.float32)
        if rows.ndim != 2:
            raise ValueError(f"expected (n, D) frames, got shape {rows.shape}")
        if self._rows is None:
            self._rows = np.empty((self.size, rows.shape[1]), dtype=np.float32)
        elif rows.shape[1] != self._rows.shape[1]:
            raise ValueError(f"frames of dimension {rows.shape[1]} after {self._rows.shape[1]}")
        fill = min(max(self.size - self.seen, 0), len(rows))  # the reservoir is not full yet: keep in order
        if fill:
            self._rows[self.seen : self.seen + fill] = rows[:fill]
            self._tags[self.seen : self.seen + fill] = tag
        rest = rows[fill:]
        if len(rest):
            t = self.seen + fill + np.arange(len(rest))  # 0-based stream positions of these rows
            slot = self._rng.integers(0, t + 1)  # Algorithm R: row t replaces slot j ~ U{0..t} if j < size
            hit = np.nonzero(slot < self.size)[0]
            if len(hit):  # several rows of this array may hit one slot: the latest wins, as one by one
                slots_rev = slot[hit][::-1]
                _, last = np.unique(slots_rev, return_index=True)
                pick = hit[::-1][last]
                self._rows[slot[pick]] = rest[pick]
                self._tags[slot[pick]] = tag
        self.seen += len(rows)

    @property
    def rows(self) -> np.ndarray:
        n = min(self.seen, self.size)
        return self._rows[:n] if self._rows is not None else np.empty((0, 0), dtype=np.float32)

    @property
    def tags(self) -> np.ndarray:
        return self._tags[: min(self.seen, self.size)]


def column_mean_std(x: np.ndarray, block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std of x (n, D), each column summed along contiguous memory (numpy's pairwise
    summation: accurate over 200k frames), `block` columns at a time (extra memory n x block, not n x D).
    Bit-identical to the statistics of the F-ordered log-mel arrays that tokenizers were fitted on before
    the reservoir (so the tiny recipes' synthetic tokens, and their golden losses, are unchanged)."""
    mean, std = np.empty(x.shape[1], dtype=x.dtype), np.empty(x.shape[1], dtype=x.dtype)
    for j in range(0, x.shape[1], block):
        cols = np.ascontiguousarray(x[:, j : j + block].T)  # (block, n)
        mean[j : j + block], std[j : j + block] = cols.mean(1), cols.std(1)
    return mean, std


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise UserError(f"--kmeans-backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "faiss" if faiss_available() else "sklearn"
    if backend == "faiss" and not faiss_available():
        raise UserError("--kmeans-backend faiss: faiss is not installed (pip install faiss-cpu, or a faiss GPU build); "
                        "or use --kmeans-backend sklearn")
    return backend


def _fit_sklearn(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=4096, n_init=3, max_iter=100)
    km.fit(x)
    return km.cluster_centers_.astype(np.float32)


def _fit_faiss(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, bool]:
    import faiss

    gpu = faiss.get_num_gpus() > 0 if hasattr(faiss, "get_num_gpus") else False
    km = faiss.Kmeans(x.shape[1], k, niter=FAISS_ITERATIONS, nredo=FAISS_RESTARTS, seed=seed, gpu=gpu, verbose=False,
                      max_points_per_centroid=-(-len(x) // k) + 1)  # use every sampled frame (no subsampling)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return np.asarray(km.centroids, dtype=np.float32), gpu


def nearest(x: np.ndarray, centroids: np.ndarray, chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """(labels (n,), squared distances (n,)) of each row's nearest centroid, in chunks of rows."""
    c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))
    labels, dist2 = [], []
    for start in range(0, len(x), chunk):
        d = torch.cdist(torch.from_numpy(np.ascontiguousarray(x[start : start + chunk], dtype=np.float32)), c)
        m = d.min(dim=-1)
        labels.append(m.indices.numpy())
        dist2.append(m.values.double().numpy() ** 2)
    if not labels:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(labels), np.concatenate(dist2)


def usage_report(labels: np.ndarray, k: int) -> dict[str, Any]:
    counts = np.bincount(labels, minlength=k)
    return {"min": int(counts.min()), "median": float(np.median(counts)), "max": int(counts.max()),
            "empty": int((counts == 0).sum())}


def fit_kmeans(x: np.ndarray, k: int, seed: int = 0, backend: str = "sklearn") -> tuple[np.ndarray, dict[str, Any]]:
    """Cluster the rows of x (n, D) into k centroids -> (centroids (k, D) float32, report).

    report: backend, gpu, frames, inertia (sum of squared distances to the nearest centroid),
    inertia_per_frame, usage {min, median, max, empty} of frames per cluster."""
    name = choose_backend(backend)
    if len(x) < k:
        raise UserError(f"only {len(x)} feature frames to fit {k} clusters: give more audio (--fit-shards)")
    gpu = False
    if name == "faiss":
        centroids, gpu = _fit_faiss(x, k, seed)
    else:
        centroids = _fit_sklearn(x, k, seed)
    labels, dist2 = nearest(x, centroids)
    inertia = float(dist2.sum())
    report = {"backend": name, "gpu": gpu, "frames": int(len(x)), "inertia": inertia,
              "inertia_per_frame": inertia / len(x), "usage": usage_report(labels, k)}
    return centroids, report


def report_line(report: dict[str, Any]) -> str:
    u = report["usage"]
    sampled = f"{report['frames']} frames"
    if "seen_frames" in report:
        sampled += f" sampled uniformly from {report['seen_frames']} in {report['shards']} shard(s)"
        if report.get("fraction", 1) < 1:
            sampled += f" ({report['samples']} samples embedded: --fit-fraction {report['fraction']:g})"
    return (f"k-means ({report['backend']}{' on GPU' if report.get('gpu') else ''}): {sampled}; inertia "
            f"{report['inertia']:.6g} ({report['inertia_per_frame']:.4g} per frame); frames per cluster min {u['min']} / "
            f"median {u['median']:g} / max {u['max']}, {u['empty']} empty cluster(s)")
