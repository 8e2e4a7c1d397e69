"""Shared fixtures. ``shared_data`` finds ../shared/data: tests that need it fail in CI when it is
absent (CI always has it) and skip elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TURNOUT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI=true but the shared datasets are missing at {SHARED_DATA}")
        pytest.skip(f"shared datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def configs_dir() -> Path:
    return REPO / "configs"
