"""An :class:`ElfCache` keeps a bounded number of descriptors open, however many files it holds and however
often their lazy parts reopen them (a cold rdeps index over /usr ran out of descriptors at `ulimit -n 1024`)."""

from __future__ import annotations

import gc
import os
import resource
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import pytest

from soswap.elf import ElfCache
from support.build import shared_lib

LIBZ = "/usr/lib/x86_64-linux-gnu/libz.so.1"
pytestmark = pytest.mark.skipif(not os.path.exists(LIBZ), reason="no system libz.so.1")
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_reopened_files_count_against_the_limit(tmp_path: Path) -> None:
    copies = []
    for n in range(40):
        p = tmp_path / f"libz{n}.so"
        shutil.copyfile(os.path.realpath(LIBZ), p)
        copies.append(str(p))
    cache = ElfCache(open_files=8)
    before = _open_fds()
    elves = [cache.get(p) for p in copies]  # headers only: the first 32 are closed again
    assert _open_fds() <= before + 8
    for elf in elves:  # lazy parts: each closed file reopens
        assert elf.version_definitions
        assert elf.symbols
    assert _open_fds() <= before + 8
    cache.close()
    assert _open_fds() <= before


def test_a_dropped_cache_frees_its_files_at_once(tmp_path: Path) -> None:
    """No reference cycle holds a parsed file (its string table, its reopen hook): a dropped cache frees them by
    reference counting, not in one long pass of the cyclic collector at the end of a large run."""
    lib = tmp_path / "libz.so.1"
    shutil.copyfile(os.path.realpath(LIBZ), lib)
    cache = ElfCache(open_files=1)
    elf = cache.get(str(lib))
    assert elf.dynamic.soname == "libz.so.1"
    cache.get(LIBZ)  # closes the first file (one descriptor kept open)...
    assert elf.symbols  # ...which reads again through its reopen hook
    refs = [weakref.ref(o) for o in (elf, elf.dynamic.strtab, elf.source)]
    was = gc.isenabled()
    gc.disable()
    try:
        del elf, cache
        assert [r() for r in refs] == [None, None, None]
    finally:
        if was:
            gc.enable()


def test_check_builds_a_cold_index_under_a_low_descriptor_limit(tmp_path: Path) -> None:
    """`soswap check --no-index` over a scope of 300 programs at `ulimit -n 64`: the run completes."""
    scope = tmp_path / "scope"
    scope.mkdir()
    prog = shutil.which("curl") or "/usr/bin/curl"
    if not os.path.exists(prog):
        pytest.skip("no curl")
    for n in range(300):
        shutil.copyfile(prog, scope / f"prog{n}")
    new = shared_lib(tmp_path / "libz.so.1", "const char *zlibVersion(void) { return \"1.2.13\"; }\n",
                     soname="libz.so.1", version_script="ZLIB_1.2.0 { global: zlibVersion; local: *; };\n")

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    env = {**os.environ, "PYTHONPATH": SRC, "SOSWAP_STATE_DIR": str(tmp_path / "state"),
           "SOSWAP_CACHE_DIR": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "soswap", "check", str(new), LIBZ, "--scope", str(scope),
                        "--no-index"], capture_output=True, text=True, env=env, timeout=300, preexec_fn=low_limit)
    assert "Too many open files" not in r.stderr
    assert r.returncode == 1, r.stderr
    assert "NEW breaks 300 of 300 consumers" in r.stdout  # every copy was checked
