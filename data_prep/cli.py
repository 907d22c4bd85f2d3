"""`alm prep {audiocaps,clotho,musiccaps,librilight,librispeech_finetuning,librispeech,covost2,wavcaps,cvss} --src DIR
--out DIR [--sample-rate HZ] [--shard-size N] [--workers N] [--overwrite]` (wavcaps also `[--exclude-ids FILE]`,
covost2 also `[--source-lang XX] [--target-lang YY]`),
and `alm prep synthetic --out DIR`.

Also `python -m alm.data_prep.<dataset> --src DIR --out DIR ...` and `python -m alm.data_prep <dataset> ...`.
Exit status: 0 done (skipped samples are listed in manifest.json, not errors), 1 the run could
not be done (message on stderr), 2 bad command line.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from typing import Any

from alm.data_prep import DATASETS

HELP = {
    "audiocaps": "AudioCaps: SRC holds train/val/test.csv and audio/{split}/{ytid}_{start}.flac|wav "
                 "(also Y{ytid}, {ytid}, {audiocap_id} names)",
    "clotho": "Clotho v1/v2/v2.1: SRC holds clotho_captions_*.csv, clotho_metadata_*.csv, clotho_audio_*/",
    "musiccaps": "MusicCaps: SRC holds musiccaps-public.csv and music/[train/|eval/]{ytid}.wav "
                 "(also [{ytid}]-[{start}-{end}], {ytid}_{start}-{end} names)",
    "librilight": "LibriLight unlabelled: SRC is the root holding small/ medium/ large/ duplicate/",
    "librispeech_finetuning": "LibriLight labelled: SRC is librispeech_finetuning/ (holding 1h/ and 9h/)",
    "librispeech": "LibriSpeech: SRC is LibriSpeech/ (holding train-clean-100/, dev-clean/, test-clean/, ...) "
                   "or one subset folder",
    "covost2": "CoVoST 2: SRC is a Common Voice language folder (clips/*.mp3, validated.tsv) holding the "
               "covost_v2.{src}_{tgt}.{train,dev,test}.tsv (or the release's covost_v2.{src}_{tgt}.tsv)",
    "cvss": "CVSS-C / CVSS-T (target speech of CoVoST 2 clips): SRC holds {train,dev,test}.tsv "
            "(`clip<TAB>text`) and {train,dev,test}/<clip>.wav; keys = alm prep covost2's",
    "wavcaps": "WavCaps: SRC holds json_files/{AudioSet_SL,BBC_Sound_Effects,FreeSound,SoundBible}/*.json "
               "and Audio/{subset}/ flac files",
}
# dataset-specific flags, passed to its scan()
SCAN_OPTIONS = {"wavcaps": ("exclude_ids",), "covost2": ("source_lang", "target_lang"), "cvss": ("like",)}


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def build_parser(prog: str = "alm prep") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Convert a downloaded dataset into WebDataset shards.")
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name in DATASETS:
        p = sub.add_parser(name, help=HELP[name], description=HELP[name])
        p.add_argument("--src", required=True, metavar="DIR", help="dataset folder as downloaded")
        p.add_argument("--out", required=True, metavar="DIR",
                       help="output folder for {split}-NNNNNN.tar shards and manifest.json")
        p.add_argument("--sample-rate", type=_positive, default=None, metavar="HZ",
                       help="resample the shard audio to HZ (default: keep each file's native rate)")
        p.add_argument("--shard-size", type=_positive, default=None, metavar="N",
                       help="samples per shard (default: per dataset)")
        p.add_argument("--workers", type=_positive, default=min(os.cpu_count() or 1, 8), metavar="N",
                       help="decode/encode processes (output is identical for any value)")
        p.add_argument("--overwrite", action="store_true", help="replace shards and manifest in a non-empty --out")
        p.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
        if name == "wavcaps":
            p.add_argument("--exclude-ids", metavar="FILE", default=None,
                           help="leave these entries out (reason 'excluded'): a WavCaps blacklist json "
                                "(json_files/blacklist/*.json) or one id per line")
        if name == "covost2":
            p.add_argument("--source-lang", metavar="XX", default=None,
                           help="the pair's source language, as in the TSV names (en, fr, zh-CN); "
                                "needed only when SRC holds TSVs of several pairs")
            p.add_argument("--target-lang", metavar="YY", default=None, help="the pair's target language (de, en, ...)")
        if name == "cvss":
            p.add_argument("--like", metavar="COVOST2_OUT", default=None,
                           help="lay the shards out as this `alm prep covost2` output's (same file names, its keys)")
    from alm.data_prep import synthetic

    synthetic.add_arguments(sub.add_parser("synthetic", help="alm's generated captioned audio set (no download)",
                                           description=synthetic.__doc__.split("\n\n")[0]))
    return parser


def run(dataset: str, src, out, sample_rate: int | None = None, shard_size: int | None = None,
        workers: int = 1, overwrite: bool = False, quiet: bool = False, **options) -> dict[str, Any]:
    """Prepare one dataset (the programmatic form of the command); returns the manifest.

    `options` are the dataset's own flags (SCAN_OPTIONS, e.g. wavcaps' exclude_ids).
    Raises data_prep.common.PrepError for anything that stops the run.
    """
    from alm.data_prep.pipeline import prepare

    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    unknown = sorted(set(options) - set(SCAN_OPTIONS.get(dataset, ())))
    if unknown:
        raise ValueError(f"{dataset} takes no option {', '.join(unknown)}")
    module = importlib.import_module(f"alm.data_prep.{dataset}")  # not `data_prep.`: only the repo root has that
    # A scan builds millions of small dicts/lists for a large dataset and frees nothing until it
    # returns; Python's cyclic GC would re-traverse them again and again (measured at 200k rows:
    # 37 -> 20 us/row of CPU, i.e. linear again). They hold no reference cycles.
    collecting = gc.isenabled()
    gc.disable()
    try:
        scan = module.scan(src, **options)
    finally:
        if collecting:
            gc.enable()
    manifest = prepare(dataset, scan, out, sample_rate=sample_rate, shard_size=shard_size or module.DEFAULT_SHARD_SIZE,
                       workers=workers, overwrite=overwrite, quiet=quiet)
    finish = getattr(module, "finish", None)  # a dataset's own last step (cvss: --like's shard layout)
    return finish(out, manifest, **options) if finish else manifest


def main(argv: list[str] | None = None) -> int:
    from alm.data_prep.common import PrepError

    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse exits on --help / bad usage; return its status instead
        return int(exc.code or 0)
    if args.dataset == "synthetic":
        from alm.data_prep import synthetic

        try:
            synthetic.run(args)
        except OSError as exc:
            print(f"alm prep synthetic: error: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        options = {k: getattr(args, k) for k in SCAN_OPTIONS.get(args.dataset, ())}
        run(args.dataset, args.src, args.out, sample_rate=args.sample_rate, shard_size=args.shard_size,
            workers=args.workers, overwrite=args.overwrite, quiet=args.quiet, **options)
    except (PrepError, OSError) as exc:
        print(f"alm prep {args.dataset}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
