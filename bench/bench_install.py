"""Benchmark ``soswap install`` against ``cp`` + ``sync FILE`` and ``install(1)``.

    python bench/bench_install.py [--dir DIR] [--size-mb 200] [--files 1000] [--runs 5]

1. One big file (default 200 MB) replacing an existing one: soswap (defaults: journal, fsync, hashes, backup
   link) and soswap --no-hash, against ``cp SRC DEST && sync DEST`` (in-place copy + fsync of the file: what a
   careful script does; it breaks running programs) and ``install -m755 SRC DEST`` (unlink + create, no fsync).
2. 1,000 small files (16 KiB) replacing existing ones: one soswap transaction against a shell loop of 1,000
   ``install`` calls, and (for reference) one ``install`` call with 1,000 sources.
3. Continuous load: a C loop starts a program that loads libfoo.so.1 as fast as it can while the library is
   replaced 500 times, by soswap (Python API) and by ``install(1)``; failed starts are counted (needs gcc).

Each command runs ``--runs`` times, interleaved; the table shows the median wall time and the ratio to the
baseline. Targets: big file ≤ 1.3x cp+sync; small files faster than the install loop. Everything is created
under a temporary directory (``--dir``, default the system's) and removed at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.starter import STARTER_C

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
#: The interpreter that runs the CLI: the system python3, as the installed console script would use.
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
#: What the ``soswap`` console script that pip installs runs (``python -m soswap`` adds runpy's ~4 ms).
CONSOLE_SCRIPT = "import sys; from soswap.cli import main; sys.exit(main())"


def write_random(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    chunk = 1 << 22
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(rng.randbytes(n))
            left -= n


def timed(argv, env: Dict[str, str], shell: bool = False) -> float:  # type: ignore[no-untyped-def]
    """Wall time of a command (argv list, or a shell string in argv[0]), or of a Python callable."""
    t0 = time.perf_counter()
    if callable(argv):
        argv()
        return time.perf_counter() - t0
    r = subprocess.run(argv if not shell else argv[0], env=env, shell=shell, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"benchmark command failed ({r.returncode}): {argv}\n{r.stderr.decode(errors='replace')}")
    return elapsed


def run_table(title: str, commands: List[Tuple[str, object, bool]], env: Dict[str, str], runs: int,
              baseline: str, before_each=None) -> List[Tuple[str, float]]:  # type: ignore[no-untyped-def]
    times: Dict[str, List[float]] = {name: [] for name, _, _ in commands}
    for _ in range(runs):
        for name, argv, shell in commands:
            if before_each:
                before_each(name)
            times[name].append(timed(argv, env, shell))
    medians = [(name, statistics.median(t)) for name, t in times.items()]
    base = dict(medians)[baseline]
    print(f"\n{title}  (median of {runs} runs; ratio = time / {baseline})")
    width = max(len(n) for n, _ in medians)
    print(f"  {'command'.ljust(width)}  {'seconds':>8}  {'ratio':>6}")
    for name, m in medians:
        print(f"  {name.ljust(width)}  {m:8.3f}  {m / base:6.2f}")
    return medians


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="where to create the files (default: the system temp directory)")
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--replacements", type=int, default=500, help="continuous-load test (default 500)")
    args = ap.parse_args()
    for tool in ("cp", "sync", "install", "sh"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found")
    work = Path(tempfile.mkdtemp(prefix="soswap-bench-", dir=args.dir))
    env = dict(os.environ, PYTHONPATH=SRC, SOSWAP_STATE_DIR=str(work / "state"),
               PYTHONPYCACHEPREFIX=str(work / "pycache"))  # compiled once, outside the checkout
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    py = [PYTHON, "-c", CONSOLE_SCRIPT]
    try:
        print(f"work directory: {work} ({_fstype(work)}); CLI run by {PYTHON}")
        # -- one big file ---------------------------------------------------------------------------------
        big = work / "big.new"
        write_random(big, args.size_mb << 20, 1)
        dests = {n: work / f"big.{n}" for n in ("soswap", "noreport", "nohash", "cp", "install")}
        for d in dests.values():
            write_random(d, args.size_mb << 20, 2)
        subprocess.run(["sync"], check=False)
        big_cmds = [
            ("cp+sync", [f"cp '{big}' '{dests['cp']}' && sync '{dests['cp']}'"], True),
            ("install(1)", ["install", "-m755", str(big), str(dests["install"])], False),
            ("soswap install", [*py, "install", "--no-check", "--keep", "1", str(big), str(dests["soswap"])], False),
            ("soswap install --no-report",
             [*py, "install", "--no-check", "--keep", "1", "--no-report", str(big), str(dests["noreport"])], False),
            ("soswap install --hash",
             [*py, "install", "--no-check", "--keep", "1", "--hash", str(big), str(dests["nohash"])], False),
        ]
        sys.path.insert(0, SRC)
        from soswap.replace import InstallOptions, Request, StateDir, install

        api_state = StateDir(str(work / "api-state"))
        for name, hashing in (("api", True), ("api-nohash", False)):
            dests[name] = work / f"big.{name}"
            write_random(dests[name], args.size_mb << 20, 2)
            big_cmds.append((f"engine in-process{' --hash' if hashing else ''} (no startup, no report)",
                             lambda d=dests[name], h=hashing: install([Request(str(big), str(d))],
                                                                      InstallOptions(keep=1, hash=h), api_state),
                             False))
        run_table(f"{args.size_mb} MB file replacing an existing one", big_cmds, env, args.runs, "cp+sync")
        for p in list(work.iterdir()):
            if p.name.startswith(("big", ".big")):
                p.unlink()
        # -- many small files -------------------------------------------------------------------------------
        src = work / "small-src"
        src.mkdir()
        for i in range(args.files):
            write_random(src / f"lib{i:04d}.so", 16 << 10, 1000 + i)
        dst = {n: work / f"small-{n}" for n in ("soswap", "loop", "one")}
        for d in dst.values():
            d.mkdir()
            for i in range(args.files):
                write_random(d / f"lib{i:04d}.so", 16 << 10, 5000 + i)
        subprocess.run(["sync"], check=False)
        loop = f"for f in '{src}'/*; do install -m755 \"$f\" '{dst['loop']}'/ || exit 1; done"
        small_cmds = [
            (f"{args.files} x install(1) (shell loop)", [loop], True),
            ("install(1), one call", [f"install -m755 '{src}'/* '{dst['one']}'/"], True),
            ("soswap install (1 transaction)",
             [f"{PYTHON} -c '{CONSOLE_SCRIPT}' install --no-check --keep 1 '{src}'/* '{dst['soswap']}'/"], True),
            ("soswap install (1 transaction) --no-report",
             [f"{PYTHON} -c '{CONSOLE_SCRIPT}' install --no-check --keep 1 --no-report '{src}'/* '{dst['soswap']}'/"],
             True),
        ]
        run_table(f"{args.files} files of 16 KiB replacing existing ones", small_cmds, env, max(1, args.runs // 2),
                  f"{args.files} x install(1) (shell loop)")
        print("\nnote: install(1) never fsyncs; cp+sync fsyncs the file only; soswap fsyncs each file, each "
              "directory and its journal.")
        # -- continuous load ------------------------------------------------------------------------------
        if shutil.which("gcc"):
            continuous_load(work / "load", args.replacements)
        else:
            print("\ncontinuous load: skipped (no gcc)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


LIB_V1 = "int foo_helper(int x) { return x * 3 - 2; }\nint foo_version(void) { return foo_helper(1); }\n"
LIB_V2 = "".join(f"int foo_filler{i}(int x) {{ return x * {i + 3}; }}\n" for i in range(16)) + \
    "int foo_helper(int x) { return x * 5 - 3; }\nint foo_version(void) { return foo_helper(1); }\n"
ONCE = "int foo_version(void);\nint main(void) { int v = foo_version(); return v == 1 || v == 2 ? 0 : 3; }\n"


def _cc(out: Path, source: str, *args: str) -> None:
    src = out.with_suffix(out.suffix + ".c")
    src.write_text(source)
    subprocess.run(["gcc", "-o", str(out), str(src), *args], check=True)


def continuous_load(d: Path, replacements: int) -> None:
    """A C loop starts a program that loads libfoo.so.1 as fast as it can while the library is replaced
    ``replacements`` times: by soswap (Python API, one process, --no-backup --no-hash) and by install(1)."""
    from soswap.replace import InstallOptions, Request, StateDir, install

    d.mkdir()
    v1, v2 = d / "v1" / "libfoo.so.1", d / "v2" / "libfoo.so.1"
    for lib, text in ((v1, LIB_V1), (v2, LIB_V2)):
        lib.parent.mkdir()
        _cc(lib, text, "-shared", "-fPIC", "-Wl,-soname,libfoo.so.1")
    app = d / "app"
    app.mkdir()
    shutil.copyfile(v1, app / "libfoo.so.1")
    _cc(app / "once", ONCE, str(v1), "-Wl,-rpath,$ORIGIN")
    starter = d / "starter"
    _cc(starter, STARTER_C)
    state = StateDir(str(d / "state"))
    opts = InstallOptions(backup=False, hash=False)
    rows = []
    for name in ("soswap install", "install(1)"):
        stop, ready = d / f"stop-{len(rows)}", d / f"ready-{len(rows)}"
        p = subprocess.Popen([str(starter), str(app / "once"), str(stop), str(ready)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
        while not ready.exists():
            time.sleep(0.005)
        t0 = time.perf_counter()
        for i in range(replacements):
            src = v2 if i % 2 == 0 else v1
            if name == "install(1)":
                subprocess.run(["install", "-m755", str(src), str(app / "libfoo.so.1")], check=True)
            else:
                install([Request(str(src), str(app / "libfoo.so.1"))], opts, state)
        elapsed = time.perf_counter() - t0
        stop.touch()
        out, _ = p.communicate(timeout=60)
        runs, fails = map(int, out.split())
        rows.append((name, replacements, elapsed, runs, fails))
    print(f"\ncontinuous load: a loop starts a program that loads the library while it is replaced "
          f"{replacements} times")
    print(f"  {'replacer':<16} {'replacements':>12} {'seconds':>8} {'starts':>8} {'failed starts':>14}")
    for name, n, el, runs, fails in rows:
        print(f"  {name:<16} {n:>12} {el:8.2f} {runs:>8} {fails:>14}")


def _fstype(path: Path) -> str:
    r = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    return r.stdout.strip() or "?"


if __name__ == "__main__":
    sys.exit(main())
