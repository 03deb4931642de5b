"""Benchmark ``soswap tree`` against ldd, libtree and lddtree on every ELF file of /usr/bin and /usr/sbin, and
check the parity contract (``soswap tree --ldd [-r]`` == ``ldd [-r]``) on the same files and, with ``--lib``,
on every ELF file under /usr/lib.

    python bench/bench_tree.py [--runs N] [--lib] [--quick]

Every tool runs in this one invocation, on the same sorted file list, best of N runs (wall clock). The soswap
process is started the way the tests start it (``python -m soswap``) and, for the "isolated" row, with
``-S`` (no site-packages scan: what a packaged console script with a clean environment costs).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
ADDR = re.compile(rb" \(0x[0-9a-f]+\)")
ENV = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
ENV["PYTHONPATH"] = str(SRC)


def elf_files(dirs: Sequence[str], recursive: bool = False) -> List[str]:
    """Every file (symlinks followed) starting with the ELF magic, sorted."""
    out = []
    for d in dirs:
        if recursive:
            walk = ((root, files) for root, _dirs, files in os.walk(d))
        else:
            try:
                walk = iter([(d, os.listdir(d))])
            except OSError:
                continue
        for root, names in walk:
            for n in sorted(names):
                p = os.path.join(root, n)
                try:
                    with open(p, "rb") as f:
                        if f.read(4) == b"\x7fELF":
                            out.append(p)
                except OSError:
                    continue
    return sorted(out)


def timed(argv: Sequence[str], runs: int, stdin_files: Optional[List[str]] = None) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(list(argv), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        best = min(best, time.perf_counter() - t)
    return best


def shell_loop(tool: Sequence[str]) -> List[str]:
    """A /bin/sh loop running ``tool FILE`` once per file (the files follow as arguments)."""
    quoted = " ".join(tool)
    return ["/bin/sh", "-c", f'for f in "$@"; do {quoted} "$f"; done', "sh"]


def soswap_cmd(*args: str, isolated: bool = False) -> List[str]:
    return [sys.executable, *(["-S"] if isolated else []), "-m", "soswap", "tree", *args]


def parity(files: List[str], flag: str) -> Tuple[int, List[str]]:
    """(differences, report lines): ldd once per file (two at a time) against one soswap --ldd process."""
    def one(f: str) -> bytes:
        r = subprocess.run(["ldd", *([flag] if flag else []), f], env=ENV, capture_output=True, check=False)
        return ADDR.sub(b"", r.stdout) + b"\0" + r.stderr + b"\0" + str(r.returncode).encode()

    with ThreadPoolExecutor(max_workers=2) as pool:
        want = list(pool.map(one, files))
    sys.path.insert(0, str(SRC))
    from soswap.loader import Environment, Loader, Profile
    from soswap.loader.ldd import RELOCS_FUNCTION, RELOCS_NONE, LddModel

    model = LddModel(Loader(Profile.detect(), Environment.from_environ(ENV, cwd="/")),
                     RELOCS_FUNCTION if flag == "-r" else RELOCS_NONE)
    bad = []
    for f, w in zip(files, want):
        so, se, ok = model.one(f)
        got = so.encode("utf-8", "surrogateescape") + b"\0" + se.encode("utf-8", "surrogateescape") + b"\0" + (
            b"0" if ok else b"1")
        if got != w:
            bad.append(f)
    return len(bad), bad


def machine() -> str:
    lines = []
    if shutil.which("lscpu"):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
        lines += [ln for ln in out if ln.split(":")[0] in ("Model name", "CPU(s)", "Thread(s) per core")]
    lines.append(f"kernel {platform.release()}, Python {platform.python_version()}")
    with open("/proc/loadavg") as f:
        lines.append(f"load average at start: {' '.join(f.read().split()[:3])}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="best of N runs per command (default 3)")
    ap.add_argument("--lib", action="store_true", help="also check parity on every ELF file under /usr/lib")
    ap.add_argument("--quick", action="store_true", help="skip the slow per-file peers (lddtree, ldd -r loop)")
    args = ap.parse_args()
    files = elf_files(["/usr/bin", "/usr/sbin"])
    print(machine())
    print(f"{len(files)} ELF files under /usr/bin and /usr/sbin\n")
    rows: Dict[str, float] = {}
    rows["soswap tree (one process)"] = timed(soswap_cmd("-j", "1", *files), args.runs)
    rows["soswap tree, python -S"] = timed(soswap_cmd("-j", "1", *files, isolated=True), args.runs)
    rows["soswap tree, -j auto (workers)"] = timed(soswap_cmd(*files), args.runs)
    rows["soswap tree --ldd"] = timed(soswap_cmd("-j", "1", "--ldd", *files), args.runs)
    rows["ldd loop"] = timed(shell_loop(["ldd"]) + files, 1)
    if shutil.which("libtree"):
        rows["libtree (one process)"] = timed(["libtree", "-p", *files], args.runs)
        rows["libtree loop (per file)"] = timed(shell_loop(["libtree", "-p"]) + files, 1)
    if shutil.which("lddtree") and not args.quick:
        rows["lddtree (one process)"] = timed(["lddtree", *files], 1)
    rows["soswap tree -r (one process)"] = timed(soswap_cmd("-j", "1", "-r", *files), args.runs)
    rows["soswap tree -r, python -S"] = timed(soswap_cmd("-j", "1", "-r", *files, isolated=True), args.runs)
    rows["soswap tree -r, -j auto (workers)"] = timed(soswap_cmd("-r", *files), args.runs)
    if not args.quick:
        rows["ldd -r loop"] = timed(shell_loop(["ldd", "-r"]) + files, 1)
    width = max(map(len, rows))
    print(f"{'command':<{width}}  {'seconds':>8}")
    for name, sec in rows.items():
        print(f"{name:<{width}}  {sec:8.3f}")
    print()
    tree = rows["soswap tree (one process)"]
    if "libtree (one process)" in rows:
        lt = rows["libtree (one process)"]
        print(f"soswap tree / libtree (one process):       {tree / lt:6.1f}x   (target <= 3x)")
        print(f"soswap tree, -S / libtree (one process):   {rows['soswap tree, python -S'] / lt:6.1f}x")
        print(f"soswap tree, -j auto / libtree:            {rows['soswap tree, -j auto (workers)'] / lt:6.1f}x")
    print(f"ldd loop / soswap tree:                    {rows['ldd loop'] / tree:6.1f}x faster")
    if "lddtree (one process)" in rows:
        print(f"lddtree / soswap tree:                     {rows['lddtree (one process)'] / tree:6.1f}x faster")
    if "ldd -r loop" in rows:
        r = rows["soswap tree -r (one process)"]
        print(f"ldd -r loop / soswap tree -r:              {rows['ldd -r loop'] / r:6.1f}x faster   (target >= 20x)")
        print(f"ldd -r loop / soswap tree -r, -S:          "
              f"{rows['ldd -r loop'] / rows['soswap tree -r, python -S']:6.1f}x faster")
        print(f"ldd -r loop / soswap tree -r, -j auto:     "
              f"{rows['ldd -r loop'] / rows['soswap tree -r, -j auto (workers)']:6.1f}x faster")
    print()
    for flag in ("", "-r"):
        n, bad = parity(files, flag)
        print(f"parity ldd {flag or '  '} on /usr/bin+/usr/sbin: {len(files) - n}/{len(files)} identical"
              + (f"; differ: {bad[:10]}" if bad else ""))
    if args.lib:
        lib_files = elf_files(["/usr/lib"], recursive=True)
        for flag in ("", "-r"):
            n, bad = parity(lib_files, flag)
            print(f"parity ldd {flag or '  '} on /usr/lib: {len(lib_files) - n}/{len(lib_files)} identical"
                  + (f"; differ: {bad[:10]}" if bad else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
