"""Shared pytest fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.procs import ProcessPool


@pytest.fixture
def procs() -> Iterator[ProcessPool]:
    """Start processes with ``procs.start([...])``; all are killed and reaped by PID after the test."""
    pool = ProcessPool()
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture
def soswap_env(tmp_path: Path) -> dict:
    """An environment for running the ``soswap`` CLI in a subprocess with a private state directory."""
    env = dict(os.environ)
    env["SOSWAP_STATE_DIR"] = str(tmp_path / "soswap-state")
    return env
