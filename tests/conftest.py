"""Shared fixtures. Ray is started at most once per test session, and only by tests that ask for it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = Path(os.environ.get("LRAT_DATA", REPO.parent / "shared" / "data"))
REAL_TRAJECTORIES = SHARED_DATA / "lrat" / "trajectory_bm25"


@pytest.fixture(scope="session")
def real_trajectory_files() -> list[Path]:
    files = sorted(REAL_TRAJECTORIES.glob("*.json"), key=lambda p: int(p.stem))
    assert len(files) == 10, f"expected the 10 real LRAT trajectories in {REAL_TRAJECTORIES}"
    return files


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray for the whole session (2 CPUs, like the machines this runs on)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
