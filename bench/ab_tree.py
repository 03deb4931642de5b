"""Two revisions of ``soswap tree`` on the ELF files of /usr/bin and /usr/sbin, run in turn (A, B, A, B, ...), so
that a machine whose speed drifts between runs (a shared VM: ±10–20 % here) weighs on both alike. Reports the
median and best wall clock, the median user and system time and minor page faults of each revision.

    python bench/ab_tree.py [--runs N] [--regular] REV_A [REV_B] -- [tree options]

``REV_B`` defaults to the work tree's ``src/``; each REV is extracted with ``git archive`` (nothing in the work
tree changes) and its bytecode compiled first. ``--regular`` leaves the symbolic links out. Example (the
bench/RESULTS-tree.md rows of 2026-12-02 13:59 UTC)::

    python bench/ab_tree.py --runs 10 a81b948 -- -r --no-cache
    python bench/ab_tree.py --runs 6 a81b948 -- -j 1 -r --no-cache
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tree import PYTHON, SRC, baseline_src, compile_bytecode, elf_files, env_for


def run_once(src: Path, argv: List[str]) -> Tuple[float, float, float, int]:
    """(wall, user, system, minor faults) of one ``soswap tree`` run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run([PYTHON, "-m", "soswap", "tree", *argv], env=env_for(src), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - t
    if proc.returncode not in (0, 1):  # 2: an error, not a time worth reporting
        raise SystemExit(f"ab_tree: soswap tree failed ({proc.returncode}) under {src}: "
                         f"{proc.stderr.decode(errors='replace').strip()[:300]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime,
            after.ru_minflt - before.ru_minflt)


def main() -> int:
    argv = sys.argv[1:]
    tree_args = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10, help="runs of each revision (default 10)")
    ap.add_argument("--regular", action="store_true", help="leave symbolic links out")
    ap.add_argument("revs", nargs="+", metavar="REV", help="one or two git revisions")
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    files = elf_files(["/usr/bin", "/usr/sbin"])
    if args.regular:
        files = [f for f in files if not os.path.islink(f)]
    with tempfile.TemporaryDirectory() as tmp:
        srcs: Dict[str, Path] = {}
        for n, rev in enumerate(args.revs[:2]):
            into = Path(tmp) / str(n)
            into.mkdir()
            srcs[rev] = baseline_src(rev, into)
        if len(srcs) == 1:
            srcs["work tree"] = SRC
        for src in srcs.values():
            compile_bytecode(src)
        samples: Dict[str, List[Tuple[float, float, float, int]]] = {k: [] for k in srcs}
        for _ in range(args.runs):
            for rev, src in srcs.items():
                samples[rev].append(run_once(src, [*tree_args, *files]))
    print(f"{len(files)} files, soswap tree {' '.join(tree_args)}, {args.runs} runs each, interleaved")
    for rev, v in samples.items():
        wall = [x[0] for x in v]
        print(f"{rev:12s} wall median {statistics.median(wall):.3f} s, best {min(wall):.3f} s; "
              f"user {statistics.median(x[1] for x in v):.3f} s, system {statistics.median(x[2] for x in v):.3f} s, "
              f"minor faults {statistics.median(x[3] for x in v):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
