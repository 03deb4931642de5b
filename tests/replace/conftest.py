"""Fixtures of the replace tests."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replace.helpers import Libfoo


@pytest.fixture(scope="session")
def libfoo(tmp_path_factory: pytest.TempPathFactory) -> Libfoo:
    """libfoo.so.1 v1/v2 (different code layout), ``loop`` and ``once``, built once per session."""
    return Libfoo(tmp_path_factory.mktemp("libfoo"))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A private state directory for the CLI and the API."""
    return tmp_path / "state"


@pytest.fixture(scope="session")
def warm_index(soswap_cache_dir: str) -> str:
    """The session's rdeps index (tests/conftest.py) brought up to date for the system's directories, in
    this process: the preflight of an install run under ``strace -f`` then only ``lstat``s (building the
    index under ptrace costs seconds). Returns the cache directory."""
    from soswap.abi.rdeps import environment_for_index, open_index
    from soswap.abi.sysdirs import system_tops
    from soswap.loader import Profile

    profile = Profile.detect()
    index = open_index(soswap_cache_dir, profile, environment_for_index(os.environ))
    index.update(system_tops(profile))
    index.save()
    return soswap_cache_dir
