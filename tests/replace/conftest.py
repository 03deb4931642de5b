"""Fixtures of the replace tests."""

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
