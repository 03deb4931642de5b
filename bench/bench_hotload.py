"""Benchmark of ``soswap.hotload.NativeReloader`` against the ways a Python program reloads a native library
with ctypes alone, in one run:

- ``ctypes.CDLL(path)`` again, the old handle kept: glibc finds the object already loaded (by name, then by
  device and inode: ``_dl_map_object``) and hands back the old code;
- ``dlclose`` then ``ctypes.CDLL(path)``: works while nothing else holds the object, but for a moment no
  version is loaded, and a new file that fails to load leaves none at all;
- ``NativeReloader.reload_if_changed()``: a private copy per generation, the new one loaded before the old one
  is closed, the unload verified.

The library file is replaced by rename (as ``soswap install`` does) before each reload, alternating two
versions whose ``version()`` returns 1 and 2; each reload is timed and the version the program sees afterwards
is checked. A third version that cannot be loaded (it needs a function nothing defines) then shows what each
way leaves behind when the new file is bad::

    python bench/bench_hotload.py [--cycles 500]

Results: bench/RESULTS.md.
"""

from __future__ import annotations

import _ctypes
import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from soswap.hotload import NativeReloader, ReloadError  # noqa: E402

LIB_C = "int version(void) { return %d; }\nint work(int x) { return x * %d; }\n"
# needs a function nothing defines: dlopen with RTLD_NOW (ctypes always adds it) fails with "undefined symbol"
BAD_C = "int missing_fn(void);\nint version(void) { return missing_fn(); }\n"


def build(work: Path) -> Tuple[Path, Path, Path]:
    out = []
    for name, text in (("v1", LIB_C % (1, 1)), ("v2", LIB_C % (2, 2)), ("bad", BAD_C)):
        src = work / f"{name}.c"
        src.write_text(text)
        lib = work / f"lib{name}.so"
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, capture_output=True)
        out.append(lib)
    return out[0], out[1], out[2]


def replace(path: Path, source: Path) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, path)


class Way:
    """One way of reloading: ``reload()`` after the file changed; ``version()`` as the program sees it."""

    name = ""

    def reload(self) -> None:
        raise NotImplementedError

    def version(self) -> Optional[int]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class CdllAgain(Way):
    name = "ctypes.CDLL(path) again"

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.libs = [ctypes.CDLL(self.path)]

    def reload(self) -> None:
        self.libs.append(ctypes.CDLL(self.path))

    def version(self) -> Optional[int]:
        return self.libs[-1].version()  # type: ignore[no-any-return]

    def close(self) -> None:
        for lib in self.libs:
            _ctypes.dlclose(lib._handle)


class CloseThenOpen(Way):
    name = "dlclose + ctypes.CDLL(path)"

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.lib: Optional[ctypes.CDLL] = ctypes.CDLL(self.path)

    def reload(self) -> None:
        if self.lib is not None:
            _ctypes.dlclose(self.lib._handle)
            self.lib = None
        self.lib = ctypes.CDLL(self.path)

    def version(self) -> Optional[int]:
        return self.lib.version() if self.lib is not None else None  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.lib is not None:
            _ctypes.dlclose(self.lib._handle)


class Reloader(Way):
    name = "soswap NativeReloader"

    def __init__(self, path: Path) -> None:
        # settle=0: each file is complete when renamed into place (by default reload_if_changed waits until a
        # file has not been written for 1 s, which would time the wait instead of the reload)
        self.r = NativeReloader(str(path), settle=0)

    def reload(self) -> None:
        self.r.reload_if_changed()
        self.r.function("version")  # resolve again, as the API asks; a missing symbol raises here

    def version(self) -> Optional[int]:
        return self.r.function("version")()  # type: ignore[no-any-return]

    def close(self) -> None:
        self.r.close()


def run_way(make: Callable[[Path], Way], lib: Path, v1: Path, v2: Path, bad: Path,
            cycles: int) -> Tuple[List[float], int, str]:
    replace(lib, v1)
    way = make(lib)
    times: List[float] = []
    right = 0
    seen: Set[Optional[int]] = set()
    try:
        for i in range(cycles):
            want = 2 if i % 2 == 0 else 1
            replace(lib, v2 if want == 2 else v1)
            t = time.perf_counter()
            way.reload()
            times.append(time.perf_counter() - t)
            seen.add(way.version())
            right += way.version() == want
        # a new file the program cannot use: what does the program run afterwards?
        replace(lib, bad)
        try:
            way.reload()
            after = f"reload went through; version() -> {way.version()}"
        except (OSError, AttributeError, ReloadError) as exc:
            still = way.version()
            after = (f"reload failed ({type(exc).__name__}); still serving version {still}" if still is not None
                     else f"reload failed ({type(exc).__name__}); no version loaded any more")
    finally:
        way.close()
    return times, right, f"versions seen {sorted(seen, key=str)}; then {after}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=500)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="soswap-bench-hotload-"))
    try:
        v1, v2, bad = build(work)
        rows = []
        for i, make in enumerate((CdllAgain, CloseThenOpen, Reloader)):
            lib = work / f"libplugin{i}.so"  # one name per way: glibc must not find another way's object
            times, right, after = run_way(make, lib, v1, v2, bad, args.cycles)
            rows.append((make.name, statistics.median(times), max(times), right, after))
        print(f"{args.cycles} reloads each, the file replaced by rename before each, Python {sys.version.split()[0]}")
        head = (f"{'way':<30} {'median ms':>9} {'max ms':>7} {'right version':>14}  "
                "versions seen; then a new file that cannot load")
        print(head)
        print("-" * len(head))
        for name, med, mx, right, after in rows:
            print(f"{name:<30} {med * 1e3:>9.3f} {mx * 1e3:>7.2f} {f'{right}/{args.cycles}':>14}  {after}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
