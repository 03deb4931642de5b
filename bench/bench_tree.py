"""Benchmark ``soswap tree`` against ldd, libtree and lddtree on the ELF files of /usr/bin and /usr/sbin, and
check the parity contract (``soswap tree --ldd [-r]`` == ``ldd [-r]``) on the same files and, with ``--lib``,
on every ELF file under /usr/lib.

    python bench/bench_tree.py [--runs N] [--lib] [--quick] [--baseline REV] [--profile]

Two file sets: the regular ELF files (symbolic links left out: each program once) and every ELF file
(symbolic links followed, as ldd and the parity sweep see them). Every tool runs in this one invocation, on
the same sorted file lists, best of N runs (wall clock; the slow per-file loops run once). The soswap process
is started the way a user starts it (``python -m soswap``), after compiling its bytecode (this environment
sets PYTHONDONTWRITEBYTECODE), and, for the ``python -S`` rows, without the site-packages scan. The
interpreter is the system's ``/usr/bin/python3`` (what soswap runs on on a server; ``--python`` picks
another): this sandbox's pyenv Python imports ``certifi`` from a ``.pth`` file at every start (30 ms that
no server pays), and the first row says what a bare start of the interpreter costs.

Warm rows: "warm result cache" reuses whole results (docs/tree.md, "Result cache"); "warm binding cache"
keeps only binding results (the result cache is made unusable: ``trees.json`` is a directory there).

``--baseline REV`` also times the soswap of git revision REV (its ``src/`` extracted with ``git archive``,
nothing in the work tree changes), for before/after figures from one run. ``--profile`` prints where the
time goes inside one soswap process (phases timed around the loader's functions, cyclic GC off as in the
command).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
ADDR = re.compile(rb" \(0x[0-9a-f]+\)")
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}


def env_for(src: Path) -> Dict[str, str]:
    env = dict(BASE_ENV)
    env["PYTHONPATH"] = str(src)
    return env


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


PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def compile_bytecode(src: Path) -> None:
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(src)], stdout=subprocess.DEVNULL, check=False)


def baseline_src(rev: str, into: Path) -> Path:
    """``src/`` of git revision ``rev``, extracted under ``into`` (``git archive``: read-only)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


class RunFailed(Exception):
    """A timed command died (a traceback, a signal, or a shell's 126/127): its time means nothing."""


def timed(argv: Sequence[str], runs: int, env: Optional[Dict[str, str]] = None) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        proc = subprocess.run(list(argv), env=env or BASE_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              check=False)
        best = min(best, time.perf_counter() - t)
        if proc.returncode < 0 or proc.returncode in (126, 127) or b"Traceback (most recent call last)" in proc.stderr:
            last = (proc.stderr.strip().splitlines() or [b"no message"])[-1].decode(errors="replace")
            raise RunFailed(f"{os.path.basename(argv[0])} failed (status {proc.returncode}): {last}")
    return best


def script_cmd(tool: str) -> List[str]:
    """``tool`` as the system runs it, except that a Python script runs on PYTHON: pax-utils' lddtree says
    ``#!/usr/bin/env python3``, which finds whatever ``python3`` is first on PATH (here a pyenv interpreter
    without the pyelftools it imports)."""
    path = shutil.which(tool) or tool
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except OSError:
        return [path]
    return [PYTHON, path] if first.startswith(b"#!") and b"python" in first else [path]


def warm(argv: Sequence[str], runs: int, env: Dict[str, str]) -> float:
    """``timed`` after one untimed run that fills the binding cache (docs/tree.md, "Binding cache")."""
    timed(argv, 1, env)
    return timed(argv, runs, env)


def first(argv: Sequence[str], runs: int, env: Dict[str, str], tmp: Path) -> float:
    """``timed`` with an empty cache directory at every run: what a user's first run costs, the caches written
    (``--no-cache`` rows leave that out)."""
    best = float("inf")
    for n in range(runs):
        cache = tmp / f"first-{n}"
        best = min(best, timed(argv, 1, dict(env, SOSWAP_CACHE_DIR=str(cache))))
        shutil.rmtree(cache, ignore_errors=True)
    return best


def shell_loop(tool: Sequence[str]) -> List[str]:
    """A /bin/sh loop running ``tool FILE`` once per file (the files follow as arguments)."""
    quoted = " ".join(tool)
    return ["/bin/sh", "-c", f'for f in "$@"; do {quoted} "$f"; done', "sh"]


def soswap_cmd(*args: str, isolated: bool = False) -> List[str]:
    return [PYTHON, *(["-S"] if isolated else []), "-m", "soswap", "tree", *args]


def parity(files: List[str], flag: str) -> Tuple[int, List[str]]:
    """(differences, differing files): ldd once per file (two at a time) against one soswap --ldd model."""
    def one(f: str) -> bytes:
        r = subprocess.run(["ldd", *([flag] if flag else []), f], env=BASE_ENV, capture_output=True, check=False)
        return ADDR.sub(b"", r.stdout) + b"\0" + r.stderr + b"\0" + str(r.returncode).encode()

    with ThreadPoolExecutor(max_workers=2) as pool:
        want = list(pool.map(one, files))
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    from soswap.loader import Environment, Loader, Profile
    from soswap.loader.ldd import RELOCS_FUNCTION, RELOCS_NONE, LddModel

    model = LddModel(Loader(Profile.detect(), Environment.from_environ(BASE_ENV, cwd="/")),
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
    version = subprocess.run([PYTHON, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, check=False).stdout.strip()
    lines.append(f"kernel {platform.release()}, Python {version} ({PYTHON})")
    with open("/proc/loadavg") as f:
        lines.append(f"load average at start: {' '.join(f.read().split()[:3])}")
    return "\n".join(lines)


# -- where the time goes inside one process ----------------------------------------------------------------

_PROFILE_CHILD = r'''
import gc, os, sys, time
t0 = time.perf_counter()
gc.disable()
from soswap.elf import ElfCache
from soswap.loader import Environment, Loader, Profile
from soswap.report.tree import render_text
t_import = time.perf_counter() - t0
symbols = sys.argv[2] == "1"
files = open(sys.argv[1]).read().split("\n")
acc = {}

def wrap(owner, name, label):
    f = getattr(owner, name)
    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            acc[label] = acc.get(label, 0.0) + time.perf_counter() - t
    setattr(owner, name, timed)

from soswap.elf import file, notes, versions
from soswap.loader import binding, loading
wrap(file.ElfFile, "__init__", "elf: open (header, program headers)")
wrap(file, "decode_dynamic", "elf: dynamic section")
wrap(versions, "decode_versions", "elf: version tables")  # imported by ElfFile where first needed
wrap(notes, "decode_notes", "elf: notes (ISA level)")
wrap(loading, "_run", "load: sessions (search, BFS, init order, freeze)")
wrap(binding, "version_check", "bind: version check (incl. its ELF decoding)")
if symbols:
    from soswap.loader import lookup
    wrap(binding.BindCache, "symbols", "-r: symbol tables read (ObjectSymbols)")
    wrap(lookup.ObjectSymbols, "_decode_table", "-r: references decoded (relocations)")
    orig = binding.Binder.unresolved
    def unresolved(self, i, t):
        t1 = time.perf_counter()
        try:
            return orig(self, i, t)
        finally:
            label = "-r: resolve the " + ("program's" if i == self.main else "libraries'") + " references"
            acc[label] = acc.get(label, 0.0) + time.perf_counter() - t1
    binding.Binder.unresolved = unresolved
t1 = time.perf_counter()
loader = Loader(Profile.detect("/"), Environment.from_environ(os.environ, cwd="/"), cache=ElfCache())
t_setup = time.perf_counter() - t1
tl = tb = tr = 0.0
for f in files:
    a = time.perf_counter()
    res = loader.load(f)
    b = time.perf_counter()
    bound = loader.bind(res, relocate=symbols)
    c = time.perf_counter()
    render_text(res, bound, symbols=symbols)
    tl += b - a
    tb += c - b
    tr += time.perf_counter() - c
print(f"imports\t{t_import:.3f}")
print(f"profile + loader setup\t{t_setup:.3f}")
print(f"load (Loader.load)\t{tl:.3f}")
print(f"bind (Loader.bind{'' if symbols else ', version check and ISA level only'})\t{tb:.3f}")
print(f"render (text)\t{tr:.3f}")
print(f"total\t{time.perf_counter() - t0:.3f}")
for k, v in sorted(acc.items()):
    print(f"  {k}\t{v:.3f}")
'''


# -- the floor of a CPython process: read what libtree reads, nothing more ----------------------------------------

_FLOOR_CHILD = r'''
import os, struct, sys
EH = struct.Struct("<16sHHIQQQIHHHHHH")
PH = struct.Struct("<IIQQQQQQ")
n = 0
for f in sys.argv[1:]:
    try:
        fd = os.open(f, os.O_RDONLY)
    except OSError:
        continue
    try:
        head = os.pread(fd, 4096, 0)
        if head[:6] != b"\x7fELF\x02\x01":
            continue  # ELF64 little-endian only: the floor, not a reader
        e = EH.unpack_from(head)
        phs = [PH.unpack_from(head, e[5] + 56 * i) for i in range(e[9])]
        dyn = [p for p in phs if p[0] == 2]
        if not dyn:
            continue
        raw = os.pread(fd, dyn[0][5], dyn[0][2])
        tags = list(struct.iter_unpack("<qQ", raw[:len(raw) - len(raw) % 16]))
        strtab = next(v for t, v in tags if t == 5)
        strsz = next(v for t, v in tags if t == 10)
        seg = next(p for p in phs if p[0] == 1 and p[3] <= strtab < p[3] + p[5])
        s = os.pread(fd, strsz, strtab - seg[3] + seg[2])
        n += len([s[v:s.index(b"\0", v)].decode() for t, v in tags if t == 1])
    except (StopIteration, ValueError, struct.error, OSError):
        continue
    finally:
        os.close(fd)
print(n)
'''


#: The file of the one-file rows: a small program every Debian system has.
ONE_FILE = "/usr/bin/ls"


def floor_cmd(files: List[str]) -> List[str]:
    """A ``python -S`` process that reads each file's ELF header, program headers, dynamic section and
    DT_NEEDED strings, and does nothing else: no search, no versions, no output. What any CPython tree costs
    at least."""
    return [PYTHON, "-S", "-c", _FLOOR_CHILD, *files]


def profile(src: Path, files: List[str], symbols: bool) -> List[Tuple[str, float]]:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as lst:
        lst.write("\n".join(files))
    try:
        r = subprocess.run([PYTHON, "-S", "-c", _PROFILE_CHILD, lst.name, "1" if symbols else "0"],
                           env=env_for(src), capture_output=True, text=True, check=True)
    finally:
        os.unlink(lst.name)
    return [(ln.split("\t")[0], float(ln.split("\t")[1])) for ln in r.stdout.splitlines() if "\t" in ln]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="best of N runs per command (default 3)")
    ap.add_argument("--lib", action="store_true", help="also check parity on every ELF file under /usr/lib")
    ap.add_argument("--quick", action="store_true", help="skip the slow per-file peers (lddtree, ldd -r loop)")
    ap.add_argument("--baseline", metavar="REV", help="also time the soswap of this git revision (before/after)")
    ap.add_argument("--profile", action="store_true", help="print where the time goes inside one process")
    ap.add_argument("--python", default=PYTHON, help=f"the interpreter soswap runs on (default {PYTHON})")
    args = ap.parse_args()
    globals()["PYTHON"] = args.python
    files = elf_files(["/usr/bin", "/usr/sbin"])
    regular = [f for f in files if not os.path.islink(f)]
    print(machine())
    print(f"{len(files)} ELF files under /usr/bin and /usr/sbin (symlinks followed), {len(regular)} regular\n")
    compile_bytecode(SRC)
    tmp = Path(tempfile.mkdtemp(prefix="bench_tree."))
    env = env_for(SRC)
    env["SOSWAP_CACHE_DIR"] = str(tmp / "cache")  # the caches of the warm rows; the cold rows pass --no-cache
    bind_env = dict(env, SOSWAP_CACHE_DIR=str(tmp / "bind-only"))
    os.makedirs(tmp / "bind-only" / "trees.json")  # unusable: only the binding cache works there
    base_env: Optional[Dict[str, str]] = None
    if args.baseline:
        base = baseline_src(args.baseline, tmp)
        compile_bytecode(base)
        base_env = env_for(base)
    rows: Dict[str, float] = {}
    r = args.runs
    try:
        rows["interpreter start (python -c pass)"] = timed([PYTHON, "-c", "pass"], max(r, 10))
        # the interactive case: start-up (imports, the profile, ld.so.cache) against one file's work
        for flag in ("", "-r"):
            label = f"one file ({ONE_FILE}): soswap tree{' ' + flag if flag else ''}"
            rows[label] = timed(soswap_cmd(*([flag] if flag else []), "--no-cache", ONE_FILE), max(r, 10), env)
            if base_env is not None:
                rows[f"one file: baseline {args.baseline}: soswap tree{' ' + flag if flag else ''}"] = timed(
                    soswap_cmd(*([flag] if flag else []), "--no-cache", ONE_FILE), max(r, 10), base_env)
            rows[f"one file: ldd{' ' + flag if flag else ''}"] = timed(["ldd", *([flag] if flag else []), ONE_FILE],
                                                                       max(r, 10))
        if shutil.which("libtree"):
            rows["one file: libtree"] = timed(["libtree", "-p", ONE_FILE], max(r, 10))
        for label, fl in (("regular", regular), ("all", files)):
            rows[f"{label}: soswap tree (one process)"] = timed(soswap_cmd("-j", "1", "--no-cache", *fl), r, env)
            rows[f"{label}: soswap tree, python -S"] = timed(
                soswap_cmd("-j", "1", "--no-cache", *fl, isolated=True), r, env)
            rows[f"{label}: soswap tree, -j auto (workers)"] = timed(soswap_cmd("--no-cache", *fl), r, env)
            rows[f"{label}: soswap tree, first run (empty cache, -j auto)"] = first(soswap_cmd(*fl), r, env, tmp)
            rows[f"{label}: soswap tree, warm result cache"] = warm(soswap_cmd(*fl), r, env)
            if base_env is not None:
                rows[f"{label}: baseline {args.baseline}: soswap tree (one process)"] = timed(
                    soswap_cmd("-j", "1", "--no-cache", *fl), r, base_env)
                rows[f"{label}: baseline {args.baseline}: soswap tree, -j auto"] = timed(
                    soswap_cmd("--no-cache", *fl), r, base_env)
                rows[f"{label}: baseline {args.baseline}: soswap tree, first run (empty cache, -j auto)"] = first(
                    soswap_cmd(*fl), r, base_env, tmp)
            if shutil.which("libtree"):
                rows[f"{label}: libtree (one process)"] = timed(["libtree", "-p", *fl], r)
            rows[f"{label}: floor: python -S reading DT_NEEDED only"] = timed(floor_cmd(fl), r)
        # the machine-readable form: results encoded in the workers, the parent writes them
        rows["all: soswap tree --json, -j auto"] = timed(soswap_cmd("--json", "--no-cache", *files), r, env)
        rows["all: soswap tree --json, warm result cache"] = warm(soswap_cmd("--json", *files), r, env)
        if base_env is not None:
            rows[f"all: baseline {args.baseline}: soswap tree --json, -j auto"] = timed(
                soswap_cmd("--json", "--no-cache", *files), r, base_env)
        rows["all: soswap tree --ldd"] = timed(soswap_cmd("-j", "1", "--no-cache", "--ldd", *files), r, env)
        rows["all: ldd loop"] = timed(shell_loop(["ldd"]) + files, 1)
        if shutil.which("libtree"):
            rows["all: libtree loop (per file)"] = timed(shell_loop(["libtree", "-p"]) + files, 1)
        if shutil.which("lddtree") and not args.quick:
            try:
                rows["all: lddtree (one process)"] = timed(script_cmd("lddtree") + files, 1)
            except RunFailed as exc:  # reported, not timed
                print(f"lddtree: {exc}")
        for label, fl in (("regular", regular), ("all", files)):
            rows[f"{label}: soswap tree -r (one process)"] = timed(soswap_cmd("-j", "1", "-r", "--no-cache", *fl),
                                                                   r, env)
            rows[f"{label}: soswap tree -r, python -S"] = timed(
                soswap_cmd("-j", "1", "-r", "--no-cache", *fl, isolated=True), r, env)
            rows[f"{label}: soswap tree -r, -j auto (workers)"] = timed(soswap_cmd("-r", "--no-cache", *fl), r, env)
            rows[f"{label}: soswap tree -r, first run (empty cache, -j auto)"] = first(soswap_cmd("-r", *fl), r, env,
                                                                                      tmp)
            rows[f"{label}: soswap tree -r, warm binding cache (one process)"] = warm(
                soswap_cmd("-j", "1", "-r", *fl), r, bind_env)
            rows[f"{label}: soswap tree -r, warm binding cache, -j auto"] = warm(soswap_cmd("-r", *fl), r, bind_env)
            rows[f"{label}: soswap tree -r, warm result cache"] = warm(soswap_cmd("-r", *fl), r, env)
            if base_env is not None:
                rows[f"{label}: baseline {args.baseline}: soswap tree -r (one process)"] = timed(
                    soswap_cmd("-j", "1", "-r", "--no-cache", *fl), r, base_env)
                rows[f"{label}: baseline {args.baseline}: soswap tree -r, -j auto"] = timed(
                    soswap_cmd("-r", "--no-cache", *fl), r, base_env)
        if not args.quick:
            rows["regular: ldd -r loop"] = timed(shell_loop(["ldd", "-r"]) + regular, 1)
            rows["all: ldd -r loop"] = timed(shell_loop(["ldd", "-r"]) + files, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    width = max(map(len, rows))
    print(f"{'command':<{width}}  {'seconds':>8}")
    for name, sec in rows.items():
        print(f"{name:<{width}}  {sec:8.3f}")
    print()
    b = rows.get(f"all: baseline {args.baseline}: soswap tree --json, -j auto")
    if b:
        ratio = b / rows["all: soswap tree --json, -j auto"]
        print(f"all: baseline / now (soswap tree --json, -j auto):   {ratio:6.2f}x faster")
    for flag in ("", " -r"):
        one = rows[f"one file ({ONE_FILE}): soswap tree{flag}"]
        ratio = one / rows[f"one file: ldd{flag}"]
        print(f"one file: soswap tree{flag} / ldd{flag}:{' ' * (30 - 2 * len(flag))}{ratio:6.1f}x slower")
        b = rows.get(f"one file: baseline {args.baseline}: soswap tree{flag}")
        if b:
            print(f"one file: baseline / now (soswap tree{flag}):{' ' * (21 - len(flag))}{b / one:6.2f}x faster")
    for label in ("regular", "all"):
        tree = rows[f"{label}: soswap tree (one process)"]
        lt = rows.get(f"{label}: libtree (one process)")
        if lt:
            print(f"{label}: soswap tree / libtree (one process):     {tree / lt:6.1f}x   (target <= 3x)")
            print(f"{label}: soswap tree, -S / libtree:               "
                  f"{rows[f'{label}: soswap tree, python -S'] / lt:6.1f}x")
            print(f"{label}: soswap tree, -j auto / libtree:          "
                  f"{rows[f'{label}: soswap tree, -j auto (workers)'] / lt:6.1f}x")
            print(f"{label}: soswap tree, first run / libtree:         "
                  f"{rows[f'{label}: soswap tree, first run (empty cache, -j auto)'] / lt:6.1f}x")
            print(f"{label}: soswap tree, warm result cache / libtree: "
                  f"{rows[f'{label}: soswap tree, warm result cache'] / lt:6.1f}x   (target <= 3x)")
            print(f"{label}: floor (CPython, DT_NEEDED only) / libtree: "
                  f"{rows[f'{label}: floor: python -S reading DT_NEEDED only'] / lt:6.1f}x")
        b = rows.get(f"{label}: baseline {args.baseline}: soswap tree (one process)")
        if b:
            print(f"{label}: baseline / now (soswap tree):            {b / tree:6.2f}x faster")
        for form in ("-j auto", "first run (empty cache, -j auto)"):
            b = rows.get(f"{label}: baseline {args.baseline}: soswap tree, {form}")
            now = rows.get(f"{label}: soswap tree, {form}" if form != "-j auto" else
                           f"{label}: soswap tree, -j auto (workers)")
            if b and now:
                print(f"{label}: baseline / now (soswap tree, {form}): {b / now:6.2f}x faster")
        ldd_r = rows.get(f"{label}: ldd -r loop")
        sr = rows[f"{label}: soswap tree -r (one process)"]
        if ldd_r:
            print(f"{label}: ldd -r loop / soswap tree -r (cold):     {ldd_r / sr:6.1f}x faster   (target >= 20x)")
            print(f"{label}: ldd -r loop / soswap tree -r, -S:        "
                  f"{ldd_r / rows[f'{label}: soswap tree -r, python -S']:6.1f}x faster")
            print(f"{label}: ldd -r loop / soswap tree -r, -j auto:   "
                  f"{ldd_r / rows[f'{label}: soswap tree -r, -j auto (workers)']:6.1f}x faster")
            print(f"{label}: ldd -r loop / soswap tree -r, first run:  "
                  f"{ldd_r / rows[f'{label}: soswap tree -r, first run (empty cache, -j auto)']:6.1f}x faster")
            print(f"{label}: ldd -r loop / soswap tree -r, warm bindings:      "
                  f"{ldd_r / rows[f'{label}: soswap tree -r, warm binding cache (one process)']:6.1f}x faster")
            print(f"{label}: ldd -r loop / soswap tree -r, warm bindings, -j:  "
                  f"{ldd_r / rows[f'{label}: soswap tree -r, warm binding cache, -j auto']:6.1f}x faster")
            print(f"{label}: ldd -r loop / soswap tree -r, warm results:       "
                  f"{ldd_r / rows[f'{label}: soswap tree -r, warm result cache']:6.1f}x faster   (target >= 20x)")
        b = rows.get(f"{label}: baseline {args.baseline}: soswap tree -r (one process)")
        if b:
            print(f"{label}: baseline / now (soswap tree -r):         {b / sr:6.2f}x faster")
        b = rows.get(f"{label}: baseline {args.baseline}: soswap tree -r, -j auto")
        if b:
            print(f"{label}: baseline / now (soswap tree -r, -j auto): "
                  f"{b / rows[f'{label}: soswap tree -r, -j auto (workers)']:6.2f}x faster")
    tree = rows["all: soswap tree (one process)"]
    print(f"all: ldd loop / soswap tree:                   {rows['all: ldd loop'] / tree:6.1f}x faster")
    if "all: lddtree (one process)" in rows:
        lddtree = rows["all: lddtree (one process)"]
        print(f"all: lddtree / soswap tree:                    {lddtree / tree:6.1f}x faster")
    print()
    if args.profile:
        for symbols in (False, True):
            print(f"where the time goes, soswap tree{' -r' if symbols else ''}, {len(files)} files, one process "
                  "(seconds; indented lines are parts of the lines above, timed by wrappers that add overhead):")
            for name, sec in profile(SRC, files, symbols):
                print(f"  {name:<58} {sec:7.3f}")
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
