#!/usr/bin/env python3
"""How often a damaged new version of a library ends the process that reloads it with ``NativeReloader``.

    python bench/fuzz_hotload.py [--cases 300] [--seed 7] [--baseline REV]

Builds two versions of a small library (which needs libc, as real ones do), then for each case changes 1 to 4
random bytes of the second in its first 0x600 bytes (ELF and program headers, the GNU hash table, the dynamic
symbols and strings, the relocations), and in a child process loads the first version, renames the damaged
file over it and calls ``reload()``. Counts: loaded, refused (``ReloadError``, the old generation still in
service) and died (the child ended by a signal or by ld.so's exit 127): the last are the cases the reloader
exists to prevent. ``--baseline REV`` runs the same cases against the soswap of git revision REV (its ``src/``
extracted with ``git archive``), for a before/after figure from one run.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import os, shutil
from soswap.hotload import NativeReloader, ReloadError
shutil.copy("v1.so", "lib.so")
r = NativeReloader("lib.so")
os.replace("case.so", "lib.so")
try:
    r.reload()
    print("loaded")
except ReloadError:
    print("refused")
"""

LIBRARY = '#include <string.h>\nint version(const char *s) { return VERSION + (int)strlen(s); }\n'


def run(src: Path, work: Path, cases: int, seed: int) -> Dict[str, int]:
    rng = random.Random(seed)
    base = (work / "v2.so").read_bytes()
    counts: Dict[str, int] = collections.Counter()
    env = dict(os.environ, PYTHONPATH=str(src), TMPDIR=str(work))
    for _ in range(cases):
        b = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(0, 0x600)] = rng.randrange(256)
        (work / "case.so").write_bytes(b)
        r = subprocess.run([sys.executable, "-c", CHILD], cwd=work, env=env, capture_output=True, text=True,
                           timeout=60)
        counts[r.stdout.strip() if r.returncode == 0 else "died"] += 1
    return dict(counts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--baseline", metavar="REV", help="also run the soswap of this git revision")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fuzz-hotload-") as tmp:
        work = Path(tmp)
        (work / "v.c").write_text(LIBRARY)
        for v in (1, 2):
            subprocess.run(["gcc", "-shared", "-fPIC", f"-DVERSION={v}", "-o", str(work / f"v{v}.so"),
                            str(work / "v.c")], check=True)
        rows = [("now", ROOT / "src")]
        if args.baseline:
            base = work / "baseline"
            base.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "src"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
            rows.insert(0, (f"baseline {args.baseline}", base / "src"))
        print(f"{args.cases} damaged versions (seed {args.seed}), reload() in a child process each:")
        for label, src in rows:
            c = run(src, work, args.cases, args.seed)
            print(f"  {label:<24} loaded {c.get('loaded', 0):4}  refused {c.get('refused', 0):4}  "
                  f"died {c.get('died', 0):4}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
