"""Shared pytest fixtures."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator, List

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.procs import ProcessPool

#: Where soswap keeps its files as root by default: no test may create them (the session fails if one does).
SYSTEM_DIRS = ("/var/cache/soswap", "/var/lib/soswap")
_MADE: List[str] = []
_PREEXISTING: List[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Before any test module is imported (helpers copy os.environ at import time): every soswap the tests
    run, in process or as a child, keeps its cache (rdeps index, binding results) and its state (journals,
    the clock record) in directories of this session, never in /var/cache/soswap or /var/lib/soswap. A value
    the caller set is kept."""
    for variable, prefix in (("SOSWAP_CACHE_DIR", "soswap-cache-"), ("SOSWAP_STATE_DIR", "soswap-state-")):
        if not os.environ.get(variable):
            path = tempfile.mkdtemp(prefix=prefix)
            os.environ[variable] = path
            _MADE.append(path)
    _PREEXISTING[:] = [d for d in SYSTEM_DIRS if os.path.lexists(d)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaked = [d for d in SYSTEM_DIRS if os.path.lexists(d) and d not in _PREEXISTING]
    if leaked:
        for d in leaked:
            shutil.rmtree(d, ignore_errors=True)
        sys.stderr.write(f"\nFAILED: the tests created {', '.join(leaked)} (removed)\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in _MADE:
        shutil.rmtree(path, ignore_errors=True)
    _MADE.clear()


@pytest.fixture(scope="session")
def soswap_cache_dir() -> str:
    """The cache directory of every soswap run by the tests (the rdeps index: built once, then warm)."""
    return os.environ["SOSWAP_CACHE_DIR"]


@pytest.fixture(scope="session")
def soswap_state_dir() -> str:
    """The state directory of every soswap run by the tests (tests that need their own set SOSWAP_STATE_DIR
    or --state-dir)."""
    return os.environ["SOSWAP_STATE_DIR"]


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
