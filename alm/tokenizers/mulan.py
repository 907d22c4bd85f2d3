"""MuLan tokens (MusicLM's conditioning): a CLAP / MuLan embedding quantised by residual VQ.

    clip audio -> CLAP export's audio tower (alm.embed) -> unit vector (D,) -> residual VQ with
    L levels of K codes -> ids (L,)            (MusicLM: L = 12 levels x K = 1024, the default)

Training conditions the semantic and coarse stages on the tokens of the clip's own AUDIO; generation
uses the tokens of the TEXT prompt's embedding in the same joint space (MusicLM's trick: music without
captions trains, text steers at inference). The RVQ is fitted level by level with k-means on the
residuals of a uniform random sample of training-clip embeddings (alm/tokenizers/kmeans.py), so the
levels refine each other; assignment is greedy nearest centroid per level.

    alm tokenize mulan CLAP_EXPORT --shards SPEC --out DIR [--levels 12] [--codebook 1024]
                       [--fit-shards SPEC] [--fit-samples N] [--batch-size B] [--device D]

writes DIR/<the input shards' names>.tar with `mulan.npy` (L,) int64 per sample (and the json
member), DIR/mulan_tokenizer/ (mulan_tokenizer.json: levels, codebook, dim, the CLAP export's fingerprint,
the fit's report; rvq.safetensors: codebooks (L, K, D)), DIR/errors/<shard>.json + DIR/errors.json for
samples whose audio could not be read (counted, never dropped silently). A rerun skips finished
shards; --fit-only stops after the tokenizer; --num-shards/--shard-index (or a SLURM array task)
encode a share of the shards with a tokenizer fitted before.

Cost: one CLAP forward per clip (windows of the tower's length, mean-pooled: alm.embed) in the fit
pass over --fit-samples clips of the fit shards and one per clip when encoding; memory is the fit
sample (N x D float32) plus one clip; the fit needs N >= K embeddings (K-means per level).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alm.errors import UserError

MEMBER = "mulan.npy"
TOKENIZER_DIR = "mulan_tokenizer"  # in the output (not `tokenizer/`: that names the semantic tokenizer of a joined set)
CONFIG = "mulan_tokenizer.json"
WEIGHTS = "rvq.safetensors"


def export_fingerprint(export_dir: str | Path) -> str:
    """sha256 of a CLAP export's config.yaml + export.json: the tokens are valid only with that model."""
    h = hashlib.sha256()
    for name in ("config.yaml", "export.json"):
        f = Path(export_dir) / name
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def fit_rvq(x: np.ndarray, levels: int, codebook: int, seed: int = 0, backend: str = "sklearn") -> tuple[np.ndarray, list]:
    """Residual VQ of rows x (N, D): level l is k-means on the residual after levels < l ->
    (codebooks (levels, codebook, D) float32, per-level k-means reports)."""
    from alm.tokenizers.kmeans import fit_kmeans, nearest

    x = np.asarray(x, np.float32)
    if len(x) < codebook:
        raise UserError(f"only {len(x)} embeddings to fit codebooks of {codebook} codes: give more clips "
                        f"(--fit-shards / --fit-samples) or a smaller --codebook")
    books, reports, residual = [], [], x.copy()
    for level in range(levels):
        centroids, report = fit_kmeans(residual, codebook, seed=seed + level, backend=backend)
        ids, _ = nearest(residual, centroids)
        residual = residual - centroids[ids]
        books.append(centroids.astype(np.float32))
        reports.append({"level": level, "inertia_per_embedding": report["inertia_per_frame"],
                        "empty_codes": report["usage"]["empty"]})
    return np.stack(books), reports


def quantize(x: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Greedy residual assignment of rows x (N, D) -> ids (N, levels) int64."""
    from alm.tokenizers.kmeans import nearest

    residual = np.asarray(x, np.float32).copy()
    out = np.zeros((len(residual), len(codebooks)), np.int64)
    for level, book in enumerate(codebooks):
        ids, _ = nearest(residual, book)
        out[:, level] = ids
        residual = residual - book[ids]
    return out


@dataclass
class MulanTokenizer:
    codebooks: np.ndarray  # (levels, codebook, D)
    meta: dict

    @property
    def levels(self) -> int:
        return int(self.codebooks.shape[0])

    @property
    def codebook(self) -> int:
        return int(self.codebooks.shape[1])

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        return quantize(embeddings, self.codebooks)

    def save(self, directory: str | Path) -> None:
        from safetensors.numpy import save_file

        from alm.io import atomic_write_text, atomic_write_with

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_with(d / WEIGHTS, lambda tmp: save_file({"codebooks": self.codebooks}, str(tmp)))
        atomic_write_text(d / CONFIG, json.dumps({**self.meta, "levels": self.levels, "codebook": self.codebook,
                                                  "dim": int(self.codebooks.shape[2])}, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> "MulanTokenizer":
        from safetensors.numpy import load_file

        d = Path(directory)
        if not (d / CONFIG).is_file() or not (d / WEIGHTS).is_file():
            raise UserError(f"{d}: not a MuLan tokenizer (no {CONFIG} / {WEIGHTS}): made by `alm tokenize mulan`")
        return cls(load_file(str(d / WEIGHTS))["codebooks"], json.loads((d / CONFIG).read_text()))


def condition_ids(tokens: np.ndarray, base: int, codebook: int) -> np.ndarray:
    """MuLan ids (L,) -> LM vocabulary ids: level l's code c is base + l * codebook + c, so each
    level has its own embeddings (the stage's vocabulary holds L x codebook condition ids from base)."""
    tokens = np.asarray(tokens, np.int64).reshape(-1)
    return base + np.arange(len(tokens)) * codebook + tokens


def check_condition(tokens, levels: int, codebook: int, where: str = "condition") -> np.ndarray:
    """(levels,) int64 MuLan ids in [0, codebook), or a ValueError saying what disagrees."""
    if tokens is None:
        raise KeyError(f"no {MEMBER} member: a conditioned stage (model.condition_levels={levels}) needs MuLan "
                       f"tokens joined to its shards ('... + MULAN/train-*.tar', from `alm tokenize mulan`)")
    t = np.asarray(tokens, np.int64).reshape(-1)
    if len(t) < levels:
        raise ValueError(f"{where}: {len(t)} MuLan levels, the model is conditioned on {levels} (model.condition_levels)")
    t = t[:levels]  # RVQ is greedy: the first levels of more-level tokens are the fewer-level tokens
    if t.min() < 0 or t.max() >= codebook:
        raise ValueError(f"{where}: MuLan ids outside [0, {codebook}) — tokenizer and model.condition_codebook disagree")
    return t


def sample_condition(sample: dict, levels: int, codebook: int) -> np.ndarray:
    """The (levels,) MuLan tokens of a raw joined sample (its mulan.npy member)."""
    from alm.data.shards import npy_load

    raw = sample.get(MEMBER)
    return check_condition(None if raw is None else npy_load(raw), levels, codebook, f"sample {sample.get('__key__')!r}")


# ---- the shard pass -----------------------------------------------------------------------------

def _sample_audio(sample: dict, rate: int) -> np.ndarray:
    from alm.data.audio import load_mono, shard_audio_ext

    ext = shard_audio_ext(sample)
    if ext is None:
        raise KeyError(f"sample {sample.get('__key__')!r} has no audio member")
    return load_mono(sample[ext], rate)[0]


def embed_samples(encoder, samples: list[dict]) -> list[np.ndarray | None]:
    """CLAP audio embeddings (D,) of raw shard samples; None for a sample whose audio cannot be read."""
    out: list[np.ndarray | None] = []
    clips, where = [], []
    for i, s in enumerate(samples):
        try:
            clips.append(_sample_audio(s, encoder.sample_rate))
            where.append(i)
        except (KeyError, ValueError, OSError, UserError) as exc:
            print(f"[alm tokenize mulan] sample {s.get('__key__')!r}: {exc}", file=sys.stderr)
        out.append(None)
    if clips:
        for i, row in zip(where, encoder.audio(clips)):
            out[i] = row
    return out


def fit(encoder, fit_spec: str, levels: int, codebook: int, max_samples: int, seed: int, batch_size: int,
        progress: bool = True) -> tuple[np.ndarray, dict]:
    """Embeddings of a uniform random sample of at most max_samples fit clips -> fitted RVQ."""
    from tqdm import tqdm

    from alm.data.shards import expand_shards, read_shard
    from alm.tokenizers.kmeans import FrameReservoir

    reservoir = FrameReservoir(max_samples, seed)
    failed = 0
    for url in tqdm(expand_shards(fit_spec), desc="mulan fit", unit="shard", disable=not progress):
        batch: list[dict] = []
        for sample in list(read_shard(url)) + [None]:
            if sample is not None:
                batch.append(sample)
            if batch and (sample is None or len(batch) >= batch_size):
                rows = embed_samples(encoder, batch)
                failed += sum(r is None for r in rows)
                good = [r for r in rows if r is not None]
                if good:
                    reservoir.add(np.stack(good))
                batch = []
    books, reports = fit_rvq(reservoir.rows, levels, codebook, seed)
    return books, {"fit_embeddings": int(len(reservoir.rows)), "fit_seen": int(reservoir.seen),
                   "fit_unreadable": failed, "levels_report": reports}


def tokenize_mulan_shards(export_dir: str, shards: str, out: str, levels: int = 12, codebook: int = 1024,
                          fit_shards: str | None = None, fit_samples: int = 100_000, seed: int = 0,
                          batch_size: int = 16, device: str = "cpu", progress: bool = True, fit_only: bool = False,
                          num_shards: int = 1, shard_index: int = 0) -> dict:
    from alm.data.shards import expand_shards, map_shards, npy_bytes
    from alm.data.splits import resolve_split_spec
    from alm.embed import load_encoder

    encoder = load_encoder(export_dir, device)
    tok_dir = Path(out) / TOKENIZER_DIR
    fingerprint = export_fingerprint(export_dir)
    if (tok_dir / CONFIG).is_file():
        tok = MulanTokenizer.load(tok_dir)
        if tok.meta.get("clap_fingerprint") != fingerprint:
            raise UserError(f"{tok_dir}: fitted with another CLAP export ({tok.meta.get('clap_export')}); "
                            f"use a new --out for {export_dir}")
        if (tok.levels, tok.codebook) != (levels, codebook):
            raise UserError(f"{tok_dir}: has {tok.levels} levels x {tok.codebook} codes, asked for {levels} x {codebook}")
    else:
        if num_shards > 1:
            raise UserError(f"{tok_dir}: no tokenizer yet: fit it once with --fit-only before array tasks encode shares")
        books, report = fit(encoder, resolve_split_spec(fit_shards or shards, "fit"), levels, codebook, fit_samples,
                            seed, batch_size, progress)
        tok = MulanTokenizer(books, {"clap_export": str(Path(export_dir).resolve()), "clap_fingerprint": fingerprint,
                                     "clap_dim": encoder.dim, "seed": seed, **report})
        tok.save(tok_dir)
    if fit_only:
        return {"tokenizer": str(tok_dir), "samples": 0, "errors": [], "busy": [], "shards": [], "existing": [],
                "errors_total": 0, "done_total": 0, "total": 0}

    def members(samples: list[dict]) -> list[dict | None]:
        rows = embed_samples(encoder, samples)
        return [None if r is None else {MEMBER: npy_bytes(tok(r[None])[0])} for r in rows]

    urls = expand_shards(shards)  # every split: the held-out clips get tokens too
    summary = map_shards(urls, out, members, batch_size=batch_size, desc="mulan", progress=progress,
                         num_shards=num_shards, shard_index=shard_index)
    return {**summary, "tokenizer": str(tok_dir)}


SYNTHETIC_VERSION = "v1"
# the tiny CLAP recipe, smaller: 1 x 64-wide towers, 80 steps on 1 s crops
SYNTHETIC_CLAP = ("trainer.max_steps=80", "model.audio_layers=1", "model.text_layers=1", "model.audio_dim=64",
                  "model.text_dim=64", "model.embed_dim=64", "model.max_seconds=1.0", "data.batch_size=16",
                  "data.shuffle_buffer=64", "optim.lr=0.002", "optim.warmup_steps=10", "trainer.threads=1")
CHILD_ENV_DROP = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                  "NODE_RANK", "TORCHELASTIC_RUN_ID")


def synthetic_clap(root: Path) -> Path:
    """A MuLan stand-in for the tiny MusicLM twins (recipes/tiny/musiclm_*.yaml): recipes/tiny/clap.yaml
    made smaller (SYNTHETIC_CLAP) and trained on alm's synthetic captioned set, exported; made once under
    the cache root -> the export's folder (~20 s on 2 CPU cores). Measured on the 24 held-out clips:
    R@1 0.46 text->audio, 0.25 audio->text (chance 0.04); with a 4 x 16 RVQ a caption's first MuLan
    code equals its clip's for 62.5 % (chance 1/16). Trained in a
    child process with no launcher variables, so a multi-rank parent does not make it distributed."""
    import os
    import shutil
    import subprocess
    import tempfile

    from alm.data.cache import cached
    from alm.recipes_index import shipped_recipes_dir

    def make(out: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in CHILD_ENV_DROP and not k.startswith("SLURM_")}
        env["ALM_CACHE"] = str(root)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            run = Path(tmp) / "run"
            recipe = shipped_recipes_dir() / "tiny" / "clap.yaml"
            for argv in (["train", str(recipe), f"run_dir={run}", "trainer.accelerator=cpu", "trainer.devices=1",
                          "trainer.progress_bar=false", "trainer.val_every_n_steps=0", "wandb.enabled=false",
                          *SYNTHETIC_CLAP],
                         ["export", str(run), "--out", str(Path(tmp) / "export")]):
                p = subprocess.run([sys.executable, "-m", "alm", *argv], env=env, capture_output=True, text=True)
                if p.returncode:
                    raise RuntimeError(f"the synthetic MuLan's CLAP: `alm {' '.join(argv)}` failed:\n{p.stderr[-3000:]}")
            for f in (Path(tmp) / "export").iterdir():
                shutil.move(str(f), out / f.name)

    return cached(root / f"synthetic-mulan-clap-{SYNTHETIC_VERSION}", make,
                  "a tiny CLAP trained on the synthetic captioned set (the tiny MusicLM's MuLan)")


def synthetic_mulan(root: Path, levels: int, codebook: int) -> Path:
    """The synthetic captioned set's MuLan tokens (levels x codebook RVQ fitted on its training clips)
    from synthetic_clap's export: DIR/{train,val}-*.tar (`mulan.npy`) + DIR/mulan_tokenizer/."""
    from alm.data.cache import cached
    from alm.data.synthetic import write_synthetic

    clap = synthetic_clap(root)
    audio = cached(root / "synthetic-v1", lambda d: write_synthetic(d), "the synthetic audio dataset")

    def make(out: Path) -> None:
        summary = tokenize_mulan_shards(str(clap), str(audio / "*.tar"), str(out), levels, codebook,
                                        fit_shards=str(audio / "train-*.tar"), progress=False)
        if summary["errors_total"]:
            raise RuntimeError(f"the synthetic MuLan tokens: {summary['errors_total']} clips failed ({out}/errors.json)")

    return cached(root / f"synthetic-mulan-{SYNTHETIC_VERSION}-{levels}x{codebook}", make,
                  f"the synthetic set's MuLan tokens ({levels} x {codebook})")


def main(argv: list[str] | None = None) -> int:
    from alm.cli_format import DefaultsFormatter
    from alm.tokenizers import array_job

    p = argparse.ArgumentParser(prog="alm tokenize mulan", formatter_class=DefaultsFormatter,
                                description="MuLan / CLAP embeddings of a shard set's audio, quantised by residual VQ "
                                            "(MusicLM's conditioning tokens): a parallel shard set with mulan.npy")
    p.add_argument("export", help="a CLAP export (alm export of stage clap, or alm convert clap)")
    p.add_argument("--shards", required=True, help="audio shards to encode (prep shards: dir, glob, '::'-joined)")
    p.add_argument("--out", required=True)
    p.add_argument("--levels", type=int, default=12, help="RVQ levels (MusicLM: 12)")
    p.add_argument("--codebook", type=int, default=1024, help="codes per level (MusicLM: 1024)")
    p.add_argument("--fit-shards", default=None, help="shards the RVQ is fitted on (default: the training split of --shards)")
    p.add_argument("--fit-samples", type=int, default=100_000, help="clips sampled (uniformly, seeded) for the fit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--fit-only", action="store_true", help="fit and save OUT/mulan_tokenizer/, encode nothing")
    p.add_argument("--no-progress", action="store_true")
    array_job.add_arguments(p)
    a = p.parse_args(argv)
    if a.levels < 1 or a.codebook < 2 or a.fit_samples < 1 or a.batch_size < 1:
        p.error("--levels >= 1, --codebook >= 2, --fit-samples >= 1 and --batch-size >= 1")
    num_shards, shard_index, share = array_job.resolve(a.num_shards, a.shard_index)
    try:
        r = tokenize_mulan_shards(a.export, a.shards, a.out, a.levels, a.codebook, a.fit_shards, a.fit_samples, a.seed,
                                  a.batch_size, a.device, not a.no_progress, a.fit_only, num_shards, shard_index)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"alm tokenize mulan: error: {exc}", file=sys.stderr)
        return 2
    if a.fit_only:
        print(f"[alm] MuLan tokenizer at {r['tokenizer']}")
        return 0
    print(f"{array_job.summary_line(r, num_shards, shard_index, a.out)}; tokenizer {r['tokenizer']}")
    return 1 if r["busy"] else 0
