"""`alm prep synthetic --out DIR`: alm's generated captioned audio set (see alm.data.synthetic).

Melodies, chord progressions, speech-like babble and noise events, each with a caption that
describes its structure; deterministic for a seed; written with the same shard/manifest contract
as the real datasets, so every stage and test can run without a download.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "synthetic"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for shards and manifest.json")
    p.add_argument("--clips", type=int, default=240, help="training clips")
    p.add_argument("--val-clips", type=int, default=24, help="validation clips")
    p.add_argument("--seconds", type=float, default=4.0, help="clip length")
    p.add_argument("--sample-rate", type=int, default=16000, metavar="HZ")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=40, metavar="N")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")


def run(args: argparse.Namespace) -> dict:
    from alm.data.synthetic import write_synthetic

    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"output folder {str(out)!r} is not empty; pass --overwrite")
    if out.is_dir() and args.overwrite:
        for p in list(out.glob("*.tar")) + list(out.glob("manifest.json")):
            p.unlink()
    manifest = write_synthetic(out, num_clips=args.clips, seconds=args.seconds, sample_rate=args.sample_rate,
                               seed=args.seed, shard_size=args.shard_size, val_clips=args.val_clips)
    for split, info in manifest["splits"].items():
        print(f"{split:>6}: {info['num_samples']} clips in {len(info['shards'])} shard(s), {info['hours']:.3f} h")
    print(f"wrote {out}/manifest.json")
    return manifest


def main(argv: list[str] | None = None) -> int:
    from alm.data_prep.cli import main as cli_main

    return cli_main([NAME, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
