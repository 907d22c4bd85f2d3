"""Golden loss curves: the four tiny stages (and one ZeRO-3 2-rank run) train with exactly the
per-step losses stored in tests/golden/stage_losses.json (made by tests/scripts/golden_losses.py
from the pre-[spine2] code). A refactor of the spine, the stage contract or the data stream that
changes what or how a stage trains fails here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "scripts"))

import golden_losses  # noqa: E402

GOLDEN = json.loads((REPO / "tests" / "golden" / "stage_losses.json").read_text())

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_stage_losses_unchanged(name, tmp_path):
    got = {str(k): v for k, v in golden_losses.run(name, tmp_path / name).items()}
    assert got == GOLDEN[name], f"{name}: per-step losses changed\n got {got}\nwant {GOLDEN[name]}"
