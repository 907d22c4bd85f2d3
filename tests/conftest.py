"""Shared test setup: offline W&B, one synthetic-data cache per test session, pinned threads, and the
real-format dataset fixtures (built by tests/fixtures/datasets.py once per session, or $ALM_FIXTURES)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _session_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("alm-cache")
    saved = {k: os.environ.get(k) for k in ("ALM_CACHE", "WANDB_MODE", "WANDB_SILENT", "HF_HUB_OFFLINE")}
    os.environ.update({"ALM_CACHE": str(cache), "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"})
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def one_thread():
    """Tiny models: one torch thread is fastest, and immune to the other jobs sharing the CPU
    (a module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def dataset_fixtures(tmp_path_factory) -> Path:
    """A folder with audiocaps/, clotho/, musiccaps/, librilight/ in their real on-disk formats and
    expected.json (the outcome prep must reach). Built here by tests/fixtures/datasets.py; with
    $ALM_FIXTURES set, that folder instead (another fixture set with the same layout and rules)."""
    given = os.environ.get("ALM_FIXTURES")
    if given:
        root = Path(given)
        if not (root / "expected.json").is_file():  # a wrong path must fail, not skip
            raise FileNotFoundError(f"ALM_FIXTURES={given}: no expected.json there")
        return root
    from fixtures.datasets import build

    root = tmp_path_factory.mktemp("datasets")
    build(root)
    return root
