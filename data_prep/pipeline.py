"""From a dataset Scan to shards: output-dir handling, ordered decode/encode, shard writing,
manifest.json (written last, atomically) and the printed summary table.

Determinism: samples are written split by split (splits sorted by name) and, within a split,
sorted by id (code-point order); workers only decode/encode and results come back in that
order, so shards and manifest are byte-identical whatever --workers is. No timestamps, absolute
paths or worker counts end up in the output.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from alm.data.shards import ShardWriter, json_bytes, key_from_id, safe_split_name
from alm.io import atomic_write_text
from alm.data_prep.common import REASONS, Entry, PrepError, Scan, Skip
from alm.data_prep.decode import process
from alm.data_prep.pool import ordered_map

MANIFEST = "manifest.json"


def prepare_out_dir(out: Path, src: Path, overwrite: bool) -> None:
    """Refuse OUT inside the dataset folder (a later scan would see it) and a non-empty OUT unless
    `overwrite`; then remove only what a previous run wrote: the manifest first (an interrupted
    re-run never leaves a manifest naming stale shards), then `*.tar` and our temporary files."""
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r or src_r in out_r.parents:
        raise PrepError(f"output folder {str(out)!r} is inside the source folder {str(src)!r}; choose another --out")
    if out.exists() and not out.is_dir():
        raise PrepError(f"output path {str(out)!r} exists and is not a directory")
    names = sorted(os.listdir(out)) if out.is_dir() else []
    if names and not overwrite:
        raise PrepError(
            f"output folder {str(out)!r} is not empty ({len(names)} entries, e.g. {names[0]!r}); "
            "pass --overwrite to replace its shards and manifest"
        )
    out.mkdir(parents=True, exist_ok=True)
    if MANIFEST in names:
        (out / MANIFEST).unlink()
    for name in names:
        if name.endswith(".tar") or (name.startswith(".") and name.endswith(".tmp")):
            path = out / name
            if path.is_file():
                path.unlink()


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Atomically (temporary file, fsync, rename), so a manifest never names half-written shards."""
    text = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_text(path, text)


def _check_ids(entries: list[Entry]) -> None:
    seen: dict[tuple[str, str], str] = {}
    prefixes: dict[str, str] = {}
    for e in entries:
        if (e.split, e.id) in seen:
            first = seen[(e.split, e.id)]
            raise PrepError(f"sample id {e.id!r} appears twice in split {e.split!r}: {first} and {e.path}")
        seen[(e.split, e.id)] = e.path
        prefix = safe_split_name(e.split)
        if prefixes.setdefault(prefix, e.split) != e.split:
            raise PrepError(f"splits {prefixes[prefix]!r} and {e.split!r} both map to shard prefix {prefix!r}")


def _sample_json(dataset: str, entry: Entry, facts: dict[str, Any]) -> dict[str, Any]:
    rate, frames = facts["sample_rate"], facts["num_frames"]
    return {
        **entry.fields,
        "id": entry.id,
        "dataset": dataset,
        "split": entry.split,
        "audio_path": entry.path,
        "duration_s": round(frames / rate, 6),
        "sample_rate": rate,
        "channels": facts["channels"],
        "num_frames": frames,
    }


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, unit="file", disable=None, file=sys.stderr)


def prepare(
    dataset: str,
    scan: Scan,
    out: str | os.PathLike,
    sample_rate: int | None = None,
    shard_size: int = 1000,
    workers: int = 1,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Write `{out}/{split}-{index:06d}.tar` shards and `{out}/manifest.json`; return the manifest."""
    if shard_size <= 0:
        raise PrepError("--shard-size must be a positive number of samples")
    if sample_rate is not None and sample_rate <= 0:
        raise PrepError("--sample-rate must be a positive number of Hz")
    out = Path(out)
    prepare_out_dir(out, scan.root, overwrite)
    entries = sorted(scan.entries, key=lambda e: (e.split, e.id))
    _check_ids(entries)
    skips = list(scan.skips)
    splits: dict[str, dict[str, Any]] = {}
    for s in [e.split for e in entries] + [s.split for s in skips if s.split is not None]:
        splits.setdefault(s, {"shards": [], "num_samples": 0, "hours": 0.0})

    tasks = [(str(scan.root / e.path), sample_rate) for e in entries]
    results = ordered_map(process, tasks, workers, on_crash=lambda t: ("corrupt_audio", "decoder crashed", None))
    bar = _progress(len(tasks), dataset) if not quiet else None
    writer: ShardWriter | None = None
    current: str | None = None
    seconds: dict[str, float] = {}
    try:
        for entry, (status, info, flac) in zip(entries, results):
            if entry.split != current:
                if writer is not None:
                    splits[current]["shards"] = [os.path.basename(p) for p in writer.close()]
                writer = ShardWriter(out, safe_split_name(entry.split), max_count=shard_size)
                current = entry.split
            if bar is not None:
                bar.update(1)
            if status != "ok":
                skips.append(Skip(entry.id, entry.split, status, entry.path, info))
                continue
            meta = _sample_json(dataset, entry, info)
            writer.write({"__key__": key_from_id(entry.id), "flac": flac, "json": json_bytes(meta)})
            splits[entry.split]["num_samples"] += 1
            seconds[entry.split] = seconds.get(entry.split, 0.0) + info["num_frames"] / info["sample_rate"]
        if writer is not None:
            splits[current]["shards"] = [os.path.basename(p) for p in writer.close()]
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
        results.close()
    for split, secs in seconds.items():
        splits[split]["hours"] = round(secs / 3600.0, 6)
    skips.sort(key=lambda s: (s.split or "", s.id, s.reason, s.path))
    manifest = {
        "dataset": dataset,
        "sample_rate": sample_rate,
        "splits": splits,
        "skipped": [
            {"id": s.id, "split": s.split, "reason": s.reason, "path": s.path, "detail": s.detail} for s in skips
        ],
    }
    write_manifest(out / MANIFEST, manifest)
    if not quiet:
        print(summary_table(manifest, out))
    return manifest


def summary_table(manifest: dict[str, Any], out: Path | str = "") -> str:
    """Kept samples, hours and skips by reason, per split, plus a total row."""
    counts: dict[str, dict[str, int]] = {}
    for s in manifest["skipped"]:
        split = s["split"] if s["split"] is not None else "(no split)"
        counts.setdefault(split, {}).setdefault(s["reason"], 0)
        counts[split][s["reason"]] += 1
    names = sorted(set(manifest["splits"]) | set(counts))
    head = ["split", "kept", "hours"] + list(REASONS)
    rows = []
    for name in names:
        info = manifest["splits"].get(name, {"num_samples": 0, "hours": 0.0})
        c = counts.get(name, {})
        rows.append([name, str(info["num_samples"]), f"{info['hours']:.3f}"] + [str(c.get(r, 0)) for r in REASONS])
    total = ["total", str(sum(int(r[1]) for r in rows)), f"{sum(float(r[2]) for r in rows):.3f}"]
    total += [str(sum(int(r[3 + i]) for r in rows)) for i in range(len(REASONS))]
    rows.append(total)
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths)))
    lines = [f"{manifest['dataset']} -> {out}" if out else manifest["dataset"], fmt(head)]
    lines += [fmt(r) for r in rows]
    if manifest["skipped"]:
        lines.append(f"{len(manifest['skipped'])} skipped sample(s) listed in {MANIFEST} with their reason")
    return "\n".join(lines)
