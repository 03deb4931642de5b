"""Fixtures of the loader tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support.build import have_m32


@pytest.fixture
def m32() -> None:
    """Skip unless gcc can build 32-bit objects (gcc-multilib)."""
    if not have_m32():
        pytest.skip("gcc -m32 does not work here (gcc-multilib missing)")
