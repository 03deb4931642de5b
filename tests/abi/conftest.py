"""Fixtures of the ABI tests: the cases T1–T34 are built once per session (about 4 s of gcc)."""

from __future__ import annotations

from typing import Dict

import pytest

from .cases import Case, build_all


@pytest.fixture(scope="session")
def abi_cases(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Case]:
    """Every case that can be built here, by id (T28 needs gcc-multilib, T34 a C++ compiler)."""
    return build_all(tmp_path_factory.mktemp("abi-cases"))


@pytest.fixture
def case(abi_cases: Dict[str, Case], request: pytest.FixtureRequest) -> Case:
    """The case named by the test's ``cid`` parameter (skipped when it could not be built here)."""
    cid = request.node.callspec.params["cid"]
    if cid not in abi_cases:
        pytest.skip(f"{cid} cannot be built on this machine")
    return abi_cases[cid]
