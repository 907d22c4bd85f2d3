"""`alm eval SUBCOMMAND ...`: score outputs the way the papers' reference libraries do.

    alm eval audio      FAD, KLD, CLAP score of generated audio          (alm/eval/audio.py)
    alm eval retrieval  R@k, mAP@10, ranks from precomputed embeddings   (alm/eval/retrieval.py)

Each subcommand module gives NAME, HELP, add_arguments(parser) and run(args); every one writes
results.json as {"task", "metrics", "n", "config"} and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from alm.eval import audio, retrieval
from alm.io import atomic_write_text

SUBCOMMANDS = (audio, retrieval)


def main(argv: list[str]) -> int:
    from alm.cli_format import DefaultsFormatter

    p = argparse.ArgumentParser(prog="alm eval", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    for module in SUBCOMMANDS:
        sp = sub.add_parser(module.NAME, help=module.HELP, description=module.__doc__,
                            formatter_class=DefaultsFormatter)
        module.add_arguments(sp)
        sp.set_defaults(run=module.run)
    a = p.parse_args(argv)
    return a.run(a)


def _flat(metrics: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for k, v in metrics.items():
        if isinstance(v, dict):
            rows += _flat(v, f"{prefix}{k}/")
        else:
            rows.append((prefix + k, v))
    return rows


def write_results(out: str | Path, task: str, metrics: dict, n: int, config: dict) -> dict:
    """results.json = {"task", "metrics", "n", "config"} (written atomically) and a table on stdout."""
    results = {"task": task, "metrics": metrics, "n": n, "config": config}
    atomic_write_text(Path(out), json.dumps(results, indent=2, allow_nan=False) + "\n")
    rows = _flat(metrics)
    width = max((len(k) for k, _ in rows), default=6)
    print(f"{'metric':<{width}}  value")
    for k, v in rows:
        shown = f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else str(v)
        print(f"{k:<{width}}  {shown}")
    print(f"n = {n}; results: {out}")
    return results
