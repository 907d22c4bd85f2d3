"""Precomputed text conditioning: every caption of a shard set through a frozen T5, once.

    alm tokenize text-embeddings --shards SPEC --t5 NAME|DIR --out DIR [--batch-size 64] [--max-length 256]

writes a parallel shard set (same shard names, keys and copied json, so the musicgen stage joins it
by key: data.train_shards='CODES/train-*.tar + DIR/train-*.tar'):

    DIR/<shard>.tar               per sample: text_emb.npy (sum of the captions' token counts, D) float16 —
                                  every caption's last hidden states, concatenated, no padding —
                                  and text_emb_lengths.npy (n_captions,) int32
    DIR/text_embeddings.json      the encoder (name, d_model, weights_sha256), max_length, dtype
    DIR/errors/<shard>.json, DIR/errors.json    samples without a caption (left out, listed)

Cost and saving: D x 2 bytes per caption token, so t5-base (D = 768) stores 1.5 KiB per token:
~30 KiB for a 20-token caption (MusicCaps' 5.5k captions: ~170 MB; AudioCaps' ~50k: ~1.5 GB).
Training then reads these instead of running the encoder: per step it saves one T5 forward over
the batch's captions (t5-base's ~85M matmul parameters x 2 FLOPs x tokens: 192 captions x 20 tokens
~ 0.65 TFLOP, against ~730 TFLOP for musicgen-small's forward + backward over 192 x 1504 steps, so
~0.1% of the compute), the encoder's weights in GPU memory (~0.4 GB fp32) and the tokenizer's CPU
time in the loop; the cost is the disk above and a fixed caption set and truncation.
Precomputed states fix the truncation (--max-length) and the caption set; the stage still draws one
caption per crop. Shards already written are skipped on a rerun; one made by another encoder is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

META_FILE = "text_embeddings.json"
TEXT_EMB = "text_emb.npy"
TEXT_EMB_LENGTHS = "text_emb_lengths.npy"


def embed_caption_shards(shards_spec, out_dir: str | os.PathLike, t5, batch_size: int = 64,
                         progress: bool = True, num_shards: int = 1, shard_index: int = 0) -> dict[str, Any]:
    """Write OUT/<shard>.tar with every caption's T5 states per sample (see the module docstring).
    `t5`: an alm.conditioners.t5.T5Conditioner. Returns map_shards' summary."""
    from alm.data.shards import expand_shards, map_shards, npy_bytes
    from alm.io import atomic_write_text
    from alm.stages.musicgen import captions_of
    from alm.tokenizers.codec import weights_fingerprint

    out_dir = Path(out_dir)
    meta = {"encoder": t5.source, "d_model": t5.dim, "max_length": t5.max_length, "dtype": "float16",
            "member": TEXT_EMB, "lengths_member": TEXT_EMB_LENGTHS,
            "weights_sha256": weights_fingerprint(t5.encoder),
            "source": shards_spec if isinstance(shards_spec, str) else list(shards_spec)}
    meta_path = out_dir / META_FILE
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        for field in ("weights_sha256", "max_length", "d_model"):
            if old.get(field) != meta[field]:
                raise ValueError(f"{meta_path}: existing embeddings were made with {field}={old.get(field)!r}, this "
                                 f"run has {meta[field]!r}; use another --out directory (or delete it)")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta_path, json.dumps(meta, indent=1, ensure_ascii=False))

    def fn(samples: list[dict[str, Any]]) -> list[dict[str, bytes] | None]:
        captions: list[list[str]] = []
        for s in samples:
            try:
                captions.append(captions_of(s))
            except (KeyError, ValueError) as exc:
                log.warning("%s:%s: %s", s.get("__url__", "?"), s.get("__key__"), exc)
                captions.append([])
        flat = [c for caps in captions for c in caps]
        states: list[np.ndarray] = []
        for i in range(0, len(flat), batch_size):
            emb, mask = t5(flat[i : i + batch_size])
            lengths = mask.sum(1).tolist()
            states += [emb[j, :n].cpu().numpy().astype(np.float16) for j, n in enumerate(lengths)]
        results: list[dict[str, bytes] | None] = []
        at = 0
        for s, caps in zip(samples, captions):
            if not caps:
                log.warning("%s:%s: no caption", s.get("__url__", "?"), s.get("__key__"))
                results.append(None)
                continue
            mine = states[at : at + len(caps)]
            at += len(caps)
            results.append({TEXT_EMB: npy_bytes(np.concatenate(mine)),
                            TEXT_EMB_LENGTHS: npy_bytes(np.array([len(x) for x in mine], dtype=np.int32))})
        return results

    return map_shards(expand_shards(shards_spec), out_dir, fn, batch_size=batch_size, desc=f"text-embeddings {t5.source}",
                      progress=progress, num_shards=num_shards, shard_index=shard_index)


def main(argv: list[str] | None = None) -> int:
    """`alm tokenize text-embeddings --shards SPEC --t5 NAME|DIR --out DIR`."""
    from alm.cli_format import DefaultsFormatter
    from alm.conditioners.t5 import DEFAULT_MAX_LENGTH, T5Conditioner
    from alm.errors import UserError
    from alm.tokenizers import array_job

    parser = argparse.ArgumentParser(
        prog="alm tokenize text-embeddings",
        description="Run a frozen T5 encoder over every caption of a shard set once (a parallel shard set of "
                    "text_emb.npy), so musicgen training need not run it every step.",
        formatter_class=DefaultsFormatter,
        epilog="writes OUT/<the input shards' names>.tar (text_emb.npy (tokens, D) float16 + text_emb_lengths.npy "
               "per sample), OUT/text_embeddings.json (which encoder made them), OUT/errors.json (samples without "
               "a caption). Join with the codes by key: data.train_shards='CODES/train-*.tar + OUT/train-*.tar'",
    )
    parser.add_argument("--shards", required=True, help="shards whose json members hold the captions (prep or "
                                                        "codec shards): dir, glob, brace pattern, '::'-joined")
    parser.add_argument("--t5", required=True, help="T5 / Flan-T5 encoder: hub id (e.g. t5-base) or save_pretrained folder")
    parser.add_argument("--out", required=True, help="output directory for the parallel embedding shards")
    parser.add_argument("--batch-size", type=int, default=64, help="captions per encoder forward (and samples read at a time)")
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="caption tokens kept (truncation)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    array_job.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.max_length < 1:
        parser.error("--batch-size and --max-length must be >= 1")
    num_shards, shard_index, share = array_job.resolve(args.num_shards, args.shard_index)
    if num_shards > 1:
        print(f"alm tokenize text-embeddings: shard index {shard_index} of {num_shards} ({share})", file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        t5 = T5Conditioner(args.t5, device=args.device, max_length=args.max_length)
        summary = embed_caption_shards(args.shards, args.out, t5, batch_size=args.batch_size,
                                       progress=not args.no_progress, num_shards=num_shards, shard_index=shard_index)
    except (FileNotFoundError, ValueError, OSError, UserError) as exc:
        print(f"alm tokenize text-embeddings: error: {exc}", file=sys.stderr)
        return 2
    print(f"{array_job.summary_line(summary, num_shards, shard_index, args.out)}; d_model={t5.dim}, float16")
    return 1 if summary["busy"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
