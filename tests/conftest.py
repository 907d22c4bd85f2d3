"""Shared test setup: offline W&B, one synthetic-data cache per test session, pinned threads."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


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


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable
