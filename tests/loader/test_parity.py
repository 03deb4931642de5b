"""The parity contract: ``soswap tree --ldd [-r]`` prints byte for byte what ``ldd [-r]`` prints, and exits the
same, for every ELF file under /usr/bin and /usr/sbin. One soswap process model for all files; ldd once per file
(two at a time). The same sweep over /usr/lib runs in bench/bench_tree.py."""

from __future__ import annotations

import difflib
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Tuple

import pytest

from loader.helpers import BASE_ENV, Outcome, make_loader, real_ldd
from soswap.loader.bindstore import BindStore
from soswap.loader.ldd import RELOCS_FUNCTION, RELOCS_NONE, LddModel
from support.systemfiles import elf_files


def _sweep(flag: str, relocs: str, store_dir: str) -> Tuple[int, List[str]]:
    """Every file against ldd twice: binding afresh (the results kept in a store), then from that store (with
    relocations: plain ldd binds afresh both times)."""
    files = elf_files()
    assert len(files) > 50
    with ThreadPoolExecutor(max_workers=2) as pool:
        want: Dict[str, Outcome] = dict(zip(files, pool.map(lambda f: real_ldd(f, flag=flag or None), files)))
    diffs: List[str] = []
    cold = BindStore.in_cache_dir(store_dir)
    _compare(files, want, cold, relocs, diffs)
    assert cold.hits == 0 and cold.save() is None
    warm = BindStore.in_cache_dir(store_dir)
    _compare(files, want, warm, relocs, diffs)
    if relocs == RELOCS_NONE:  # the version check alone is not kept (it costs less than its key)
        assert warm.hits == warm.misses == 0
    else:
        assert warm.hits >= len(files) // 2, (warm.hits, warm.misses)
    return len(files), diffs


def _compare(files: List[str], want: Dict[str, Outcome], store: BindStore, relocs: str, diffs: List[str]) -> None:
    loader = make_loader(cwd="/", env=BASE_ENV)
    loader.bind_store = store
    model = LddModel(loader, relocs)
    for f in files:
        so, se, ok = model.one(f)
        got = Outcome(so, se, 0 if ok else 1)
        w = want[f]
        if got != w:
            diff = "".join(difflib.unified_diff(w.stdout.splitlines(True), got.stdout.splitlines(True), "ldd",
                                                "soswap"))
            warm = "warm" if store.hits else "cold"
            diffs.append(f"{f} ({warm}): status {w.status}/{got.status} stderr {w.stderr!r}/{got.stderr!r}\n{diff}")


@pytest.mark.parametrize("flag, relocs", [("", RELOCS_NONE), ("-r", RELOCS_FUNCTION)], ids=["ldd", "ldd-r"])
def test_every_elf_in_usr_bin_and_sbin(flag: str, relocs: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    total, diffs = _sweep(flag, relocs, str(tmp_path))
    assert not diffs, f"{len(diffs)} of {total} differ:\n" + "\n".join(diffs[:10])
