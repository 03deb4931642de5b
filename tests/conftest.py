"""Shared pytest fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.procs import ProcessPool


def _session_dir(variable: str, prefix: str, factory: pytest.TempPathFactory) -> Iterator[str]:
    """Point ``variable`` at a directory of this test session (a value set by the caller is kept)."""
    given = os.environ.get(variable)
    if given:
        yield given
        return
    path = str(factory.mktemp(prefix))
    os.environ[variable] = path
    try:
        yield path
    finally:
        os.environ.pop(variable, None)


@pytest.fixture(scope="session", autouse=True)
def soswap_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The rdeps index of every soswap run by the tests (in process or as a child) lives in a directory of this
    session, never in /var/cache/soswap: built once (the first check or install), then warm."""
    yield from _session_dir("SOSWAP_CACHE_DIR", "soswap-cache", tmp_path_factory)


@pytest.fixture(scope="session", autouse=True)
def soswap_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Journals and the clock record of every soswap run by the tests go to a directory of this session, never
    to /var/lib/soswap (tests that need their own state directory set SOSWAP_STATE_DIR or --state-dir)."""
    yield from _session_dir("SOSWAP_STATE_DIR", "soswap-state", tmp_path_factory)


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
