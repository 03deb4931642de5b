"""The parity contract: ``soswap tree --ldd [-r]`` prints byte for byte what ``ldd [-r]`` prints, and exits the
same, for every ELF file under /usr/bin and /usr/sbin. One soswap process model for all files; ldd once per file
(two at a time). The same sweep over /usr/lib runs in bench/bench_tree.py."""

from __future__ import annotations

import difflib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Tuple

import pytest

from loader.helpers import BASE_ENV, Outcome, make_loader, real_ldd
from soswap.loader.ldd import RELOCS_FUNCTION, RELOCS_NONE, LddModel

DIRS = ("/usr/bin", "/usr/sbin")


def elf_files(dirs=DIRS) -> List[str]:  # type: ignore[no-untyped-def]
    """Every file (symlinks followed) whose first bytes are the ELF magic."""
    out = []
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for n in names:
            p = os.path.join(d, n)
            try:
                with open(p, "rb") as f:
                    if f.read(4) == b"\x7fELF":
                        out.append(p)
            except OSError:
                continue
    return out


def _sweep(flag: str, relocs: str) -> Tuple[int, List[str]]:
    files = elf_files()
    assert len(files) > 50
    with ThreadPoolExecutor(max_workers=2) as pool:
        want: Dict[str, Outcome] = dict(zip(files, pool.map(lambda f: real_ldd(f, flag=flag or None), files)))
    model = LddModel(make_loader(cwd="/", env=BASE_ENV), relocs)
    diffs = []
    for f in files:
        so, se, ok = model.one(f)
        got = Outcome(so, se, 0 if ok else 1)
        w = want[f]
        if got != w:
            diff = "".join(difflib.unified_diff(w.stdout.splitlines(True), got.stdout.splitlines(True), "ldd",
                                                "soswap"))
            diffs.append(f"{f}: status {w.status}/{got.status} stderr {w.stderr!r}/{got.stderr!r}\n{diff}")
    return len(files), diffs


@pytest.mark.parametrize("flag, relocs", [("", RELOCS_NONE), ("-r", RELOCS_FUNCTION)], ids=["ldd", "ldd-r"])
def test_every_elf_in_usr_bin_and_sbin(flag: str, relocs: str) -> None:
    total, diffs = _sweep(flag, relocs)
    assert not diffs, f"{len(diffs)} of {total} differ:\n" + "\n".join(diffs[:10])
