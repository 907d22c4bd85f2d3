"""What every `alm eval` subcommand reports, in one layout.

results.json (written atomically):

    {"task": "asr", "metrics": {"wer": 0.052, ...}, "n": 2620, "config": {...}}

`metrics` maps a metric's name to a number, or to a dict of them (retrieval nests its metrics by
direction: metrics["text_to_audio"]["R@1"]). A subcommand may add top-level keys of its own (e.g.
translation's "signature"). The same values go to stdout as a table, metric names joined with "/"
where nested, with one line for each metric that was not computed and why; with `--run RUN_DIR`
they are logged into the run's W&B run (its id from RUN_DIR/wandb_id, as training wrote it) as
eval/<task>/<metric>.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from alm.errors import UserError
from alm.io import atomic_write_text


def add_report_arguments(p) -> None:
    """--out and --run, the options every subcommand shares."""
    p.add_argument("--out", default="results.json", help="where the results JSON goes")
    p.add_argument("--run", metavar="RUN_DIR", default=None,
                   help="an alm run directory: log the metrics into its W&B run as eval/<task>/<metric>")


def results(task: str, metrics: dict, n: int, config: dict, **extra) -> dict:
    return {"task": task, "metrics": metrics, "n": n, "config": config, **extra}


def flat_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """{"a": 1, "b": {"c": 2}} -> {"a": 1, "b/c": 2}."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            out.update(flat_metrics(value, f"{prefix}{name}/"))
        else:
            out[f"{prefix}{name}"] = value
    return out


def write_results(path: str | Path, res: dict) -> Path:
    path = Path(path)
    # allow_nan=False: a NaN would make a file that strict JSON readers refuse
    atomic_write_text(path, json.dumps(res, indent=1, allow_nan=False) + "\n")
    return path


def _format_value(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def format_table(res: dict, absent: dict[str, str] | None = None) -> str:
    """The stdout table: a header line, one line per metric, then extras (e.g. signature) and the
    metrics not computed with the reason."""
    rows = [(name, _format_value(value)) for name, value in flat_metrics(res["metrics"]).items()]
    extra = {k: v for k, v in res.items() if k not in ("task", "metrics", "n", "config")}
    for key, value in extra.items():
        if isinstance(value, dict):
            rows += [(f"{key} {k}", str(v)) for k, v in value.items()]
        else:
            rows.append((key, str(value)))
    rows += [(name, f"absent: {why}") for name, why in (absent or {}).items()]
    width = max((len(name) for name, _ in rows), default=0)
    lines = [f"{res['task']}: n={res['n']}"]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def _run_wandb_settings(run_dir: Path) -> dict:
    """project, entity, mode of the run's W&B logging, from RUN_DIR/config.yaml (WANDB_MODE wins)."""
    import yaml

    cfg_path = run_dir / "config.yaml"
    wandb_cfg = {}
    if cfg_path.is_file():
        wandb_cfg = (yaml.safe_load(cfg_path.read_text()) or {}).get("wandb") or {}
    enabled = wandb_cfg.get("enabled", True)
    mode = os.environ.get("WANDB_MODE") or (wandb_cfg.get("mode", "online") if enabled else "disabled")
    return {"project": wandb_cfg.get("project", "alm"), "entity": wandb_cfg.get("entity"), "mode": mode}


def check_run_dir(run_dir: str | Path) -> Path:
    """The run directory of --run, checked before any scoring: it must hold the W&B id training wrote."""
    run_dir = Path(run_dir)
    if not (run_dir / "wandb_id").is_file():
        raise UserError(f"--run {run_dir}: no {run_dir / 'wandb_id'} (expected an alm run directory that logged to W&B)")
    return run_dir


def log_to_wandb(run_dir: str | Path, res: dict) -> str:
    """Log the flat metrics as eval/<task>/<name> into the run's W&B run (resumed by its id, also in
    the run's summary) -> a line saying where they went."""
    run_dir = check_run_dir(run_dir)
    run_id = (run_dir / "wandb_id").read_text().strip()
    settings = _run_wandb_settings(run_dir)
    if settings["mode"] == "disabled":
        return f"W&B disabled for {run_dir}: metrics not logged there"
    import wandb

    values = {f"eval/{res['task']}/{name}": value for name, value in flat_metrics(res["metrics"]).items()}
    run = wandb.init(project=settings["project"], entity=settings["entity"], id=run_id, resume="allow",
                     dir=str(run_dir), mode=settings["mode"])
    try:
        run.log(values)
        run.summary.update(values)
    finally:
        run.finish()
    return f"logged {len(values)} metrics to W&B run {run_id} ({settings['mode']}, {run_dir / 'wandb'})"


def report(res: dict, out: str | Path, run: str | Path | None = None, absent: dict[str, str] | None = None) -> None:
    """Write results.json, print the table, log to W&B when a run is given."""
    path = write_results(out, res)
    print(format_table(res, absent))
    print(f"results: {path}")
    if run is not None:
        print(log_to_wandb(run, res))
