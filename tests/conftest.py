"""Shared fixtures. Real data comes from ../shared/data (never copied into the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get("RECSWEEP_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The real MovieLens 100K release folder (u.data, u.item, u1..u5/ua/ub)."""
    path = SHARED_DATA / "ml-100k"
    if not (path / "u.data").exists():
        pytest.fail(f"the real MovieLens 100K is expected at {path} (set RECSWEEP_SHARED_DATA)")
    return path
