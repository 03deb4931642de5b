"""Cross-check the ELF reader against pyelftools on the ELF files of this system.

By default a fixed random sample (seed below) of /usr/bin, /usr/sbin and /usr/lib is checked; set
``SOSWAP_FULL_SWEEP=1`` to check every file (bench/bench_elf.py does the same sweep and times it).
"""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path
from typing import List

import pytest

pytest.importorskip("elftools")

from elf.oracle import read_with_pyelftools, read_with_soswap

ROOTS = ["/usr/bin", "/usr/sbin", "/usr/lib"]
SAMPLE = 250
MAX_SIZE_IN_SAMPLE = 30 * 1024 * 1024  # pyelftools needs seconds for the biggest libraries


def elf_files(roots: List[str]) -> List[str]:
    """Every regular ELF file under ``roots`` (symlinks not followed), sorted."""
    out = []
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                    if not stat.S_ISREG(st.st_mode) or st.st_size < 64:
                        continue
                    with open(p, "rb") as f:
                        if f.read(4) != b"\x7fELF":
                            continue
                except OSError:
                    continue
                out.append(p)
    return sorted(out)


def _selection() -> List[str]:
    files = elf_files(ROOTS)
    if os.environ.get("SOSWAP_FULL_SWEEP"):
        return files
    small = [p for p in files if os.path.getsize(p) <= MAX_SIZE_IN_SAMPLE]
    rng = random.Random(20261130)
    return sorted(rng.sample(small, min(SAMPLE, len(small))))


FILES = _selection()


@pytest.mark.parametrize("path", FILES, ids=[Path(p).name for p in FILES])
def test_same_as_pyelftools(path: str) -> None:
    try:
        expected = read_with_pyelftools(path)
    except Exception as exc:  # the oracle cannot read it (e.g. relocatable objects with odd sections)
        pytest.skip(f"pyelftools cannot read it: {exc}")
    if expected is None:
        pytest.skip("no dynamic section")
    got = read_with_soswap(path)
    assert got["needed"] == expected["needed"]
    assert got["soname"] == expected["soname"]
    assert got["rpath"] == expected["rpath"]
    assert got["runpath"] == expected["runpath"]
    assert len(got["symbols"]) == len(expected["symbols"])
    for mine, theirs in zip(got["symbols"], expected["symbols"]):
        assert mine == theirs
