"""Fréchet Audio Distance (Kilgour et al. 2019): whole-set statistics of frame embeddings.

    FrameStats        streaming mean / covariance of (frames, D) embeddings in float64: rows arrive in
                      chunks of any size (Chan et al.'s pairwise update), so 1M frames never sit in
                      memory; .mu / .sigma equal np.mean / np.cov(rowvar=False) of all rows at once
    frechet_distance  ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)) with scipy.linalg.sqrtm, retried
                      with eps*I added to both covariances when the product's root is not finite, and
                      an error when the root's diagonal has an imaginary part (atol 1e-3) -- as the
                      google-research and gudgud96 reference implementations do
    save_stats / load_stats   a set's (mu, sigma, n) as .npz, to score many runs against one reference
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from alm.errors import UserError
from alm.io import atomic_write_with

log = logging.getLogger("alm.eval")

CHUNK_ROWS = 65536  # rows per float64 update (CHUNK_ROWS x D x 8 bytes at a time)


class FrameStats:
    """Running count, mean and sum of centred outer products (float64) of embedding rows."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None  # (D,)
        self.m2: np.ndarray | None = None  # (D, D): sum over rows of (x - mean)(x - mean)^T

    @property
    def dim(self) -> int | None:
        return None if self.mean is None else len(self.mean)

    def update(self, frames: np.ndarray) -> None:
        """Add (k, D) rows (any float dtype; a memory-mapped array is read CHUNK_ROWS at a time)."""
        if frames.ndim != 2:
            raise ValueError(f"frame embeddings must be (frames, D), got shape {frames.shape}")
        for start in range(0, len(frames), CHUNK_ROWS):
            self._update_chunk(np.asarray(frames[start:start + CHUNK_ROWS], dtype=np.float64))

    def _update_chunk(self, x: np.ndarray) -> None:
        k = len(x)
        if k == 0:
            return
        if self.mean is not None and x.shape[1] != self.dim:
            raise ValueError(f"frame embeddings of dimension {x.shape[1]} after {self.dim}-dimensional ones")
        if not np.isfinite(x).all():
            raise ValueError(f"non-finite (NaN / inf) frame embeddings after {self.n} finite frames")
        mean_b = x.mean(axis=0)
        centred = x - mean_b
        m2_b = centred.T @ centred
        if self.mean is None:
            self.n, self.mean, self.m2 = k, mean_b, m2_b
            return
        n = self.n + k
        delta = mean_b - self.mean
        self.m2 = self.m2 + m2_b + np.outer(delta, delta) * (self.n * k / n)
        self.mean = self.mean + delta * (k / n)
        self.n = n

    @property
    def mu(self) -> np.ndarray:
        if self.mean is None:
            raise ValueError("no frames were added")
        return self.mean

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased covariance (divides by n - 1, as np.cov)."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 frames, got {self.n}")
        return self.m2 / (self.n - 1)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise UserError(f"FAD: embedding dimensions differ: {mu1.shape[0]} (generated) vs {mu2.shape[0]} (reference)")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        log.warning("FAD: sqrtm of the covariance product is not finite (singular product): adding %g to the "
                    "diagonal of both covariances", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise UserError(f"FAD: sqrtm of the covariance product has an imaginary component "
                            f"(max |imag| {np.max(np.abs(covmean.imag)):.3g}): the covariances are too ill-conditioned, "
                            f"often fewer frames than the {mu1.shape[0]} embedding dimensions")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fad(generated: FrameStats, reference: FrameStats) -> float:
    return frechet_distance(generated.mu, generated.sigma, reference.mu, reference.sigma)


def save_stats(path: str | Path, stats: FrameStats, embedder: str) -> None:
    """mu (D,), sigma (D, D), n and the embedder's description, as an .npz written atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, mu=stats.mu, sigma=stats.sigma, n=np.int64(stats.n), embedder=np.str_(embedder))

    atomic_write_with(Path(path), write)


class CachedStats:
    """Statistics read back from save_stats: the .mu / .sigma / .n that fad() reads."""

    def __init__(self, mu: np.ndarray, sigma: np.ndarray, n: int, embedder: str) -> None:
        self.mu, self.sigma, self.n, self.embedder = mu, sigma, n, embedder


def load_stats(path: str | Path) -> CachedStats:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--reference-stats {path}: no such file (write one with --save-stats)")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"--reference-stats {path}: not a readable .npz file ({exc})") from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise UserError(f"--reference-stats {path}: not a readable .npz file (a single array; write one with --save-stats)")
    with z:
        missing = [k for k in ("mu", "sigma", "n", "embedder") if k not in z.files]
        if missing:
            raise UserError(f"--reference-stats {path}: not an alm FAD statistics file (missing {', '.join(missing)}; "
                            "write one with --save-stats)")
        mu, sigma, n, embedder = z["mu"], z["sigma"], int(z["n"]), str(z["embedder"])
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise UserError(f"--reference-stats {path}: mu {mu.shape} and sigma {sigma.shape} do not fit (expected (D,) and (D, D))")
    return CachedStats(mu, sigma, n, embedder)
