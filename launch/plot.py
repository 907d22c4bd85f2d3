"""`alm runs --plot RUN_DIR`: train and validation loss over steps as a PNG, from the run's own
metrics.csv files (every attempt, later attempts winning on overlap) — for runs without W&B."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

from alm.errors import UserError

PLOT_NAME = "loss.png"


def loss_curves(metrics: dict[int, dict[str, float]]) -> dict[str, tuple[list[int], list[float]]]:
    """{'train/loss': (steps, values), 'val/loss': (...)} for the losses that were logged."""
    curves = {}
    for key in ("train/loss", "val/loss"):
        steps = [s for s, m in metrics.items() if key in m]
        if steps:
            curves[key] = (steps, [metrics[s][key] for s in steps])
    return curves


def plot_losses(run_dir: str | Path, out: Optional[str | Path] = None) -> Path:
    """Write the loss plot of `run_dir` (default RUN_DIR/loss.png); returns its path."""
    from alm.io import atomic_write_bytes
    from alm.training.loggers import read_metrics

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    if not list(run_dir.glob("logs/attempt-*/metrics.csv")):
        raise UserError(f"{run_dir}: no logs/attempt-*/metrics.csv (has this run logged a step yet?)")
    curves = loss_curves(read_metrics(run_dir))
    if not curves:
        raise UserError(f"{run_dir}: metrics.csv has no train/loss or val/loss values yet")

    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if "train/loss" in curves:
        ax.plot(*curves["train/loss"], label="train/loss", linewidth=1)
    if "val/loss" in curves:
        ax.plot(*curves["val/loss"], label="val/loss", marker="o", markersize=3, linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(str(run_dir))
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path = Path(out) if out else run_dir / PLOT_NAME
    atomic_write_bytes(path, buf.getvalue())
    return path
