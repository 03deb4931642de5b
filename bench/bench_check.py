"""Benchmark: ``soswap check`` of a system library (libc.so.6 by default) against every consumer on the system,
and the ``soswap install`` preflight, with the peer tools run in the same run on the same files.

    python bench/bench_check.py                          # libc.so.6; ldd -r on every consumer; abicompat on 20
    python bench/bench_check.py --library /usr/lib/x86_64-linux-gnu/libz.so.1 --ldd-sample 200
    python bench/bench_check.py --abicompat-sample 0     # skip abicompat
    python bench/bench_check.py --ldd-sample 100 --abicompat-sample 0   # quick (about 20 s)

NEW is a byte-identical copy of the library in a temporary directory, so every tool's answer is "compatible"
and the figures measure the work, not a failure path. The rdeps index lives in a temporary cache directory
(``SOSWAP_CACHE_DIR``): the first run builds it (cold), the others find it (warm). Rows:

* ``soswap rdeps`` with an empty cache (the cold index build), then ``soswap check`` with the index in place
  (warm, median of ``--repeat``), ``--full`` (every consumer bound, as when the diff cannot prove any consumer
  safe), and ``soswap rdeps`` alone (warm);
* the install preflight: ``soswap install`` of a library in a temporary directory that no system file and no
  process uses (warm; median of ``--install-repeat``), against ``soswap install --no-check`` (the same
  transaction without the preflight) and coreutils ``install(1)`` (no check, no fsync);
* ``ldd -r`` on every file consumer soswap found (programs and plugins), with NEW first on LD_LIBRARY_PATH:
  what a careful admin would run today (ld.so itself in trace mode, one process per file);
* ``abicompat APP OLD NEW`` (libabigail, ELF symbols only: no debug info here) on a sample of the programs,
  extrapolated to all of them (it checks one application against one library per run). The programs, OLD and
  NEW are given to it as copies without their debug links: abicompat 2.2 aborts (SIGABRT, std::logic_error)
  on Debian's binaries as installed, whose .gnu_debugaltlink names a file that is not installed.

Wall time around each child process; peak memory is the child's peak RSS (``/usr/bin/time -f %M``). The page
cache is not dropped: "cold" means no index, not cold disks. soswap's modules are byte-compiled first
(``compileall``), as an installed package is: with ``PYTHONDONTWRITEBYTECODE`` set and no ``__pycache__``, every
run would compile them again (about +40 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from machine_info import machine  # bench/, the script's own directory

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LIBRARY = "/usr/lib/x86_64-linux-gnu/libc.so.6"


class Run(NamedTuple):
    seconds: float
    peak_mb: Optional[float]
    status: int
    stdout: bytes


def run_child(argv: Sequence[str], env: Optional[Dict[str, str]] = None, timeout: float = 3600,
              measure_memory: bool = True) -> Run:
    """Run ``argv`` (never through a shell): wall time, and the child's peak RSS from ``/usr/bin/time``."""
    report = None
    cmd = list(argv)
    if measure_memory and os.access("/usr/bin/time", os.X_OK):
        fd, report = tempfile.mkstemp(prefix="bench-check-", suffix=".time")
        os.close(fd)
        cmd = ["/usr/bin/time", "-f", "%M", "-o", report, *cmd]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            env=env)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    elapsed = time.perf_counter() - start
    peak = None
    if report:
        try:
            peak = float(Path(report).read_text().split()[-1]) / 1024.0
        except (OSError, ValueError, IndexError):
            peak = None
        os.unlink(report)
    return Run(elapsed, peak, proc.returncode, out)


def soswap_env(cache: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["SOSWAP_CACHE_DIR"] = cache
    return env


def byte_compile() -> str:
    """Byte-compile soswap (as an installed package is): the note for the report."""
    r = subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "soswap")],
                       capture_output=True, timeout=300)
    return "byte-compiled" if r.returncode == 0 else "NOT byte-compiled (compileall failed)"


def median_run(argv: Sequence[str], env: Dict[str, str], n: int, before: Optional[Sequence[str]] = None) -> Run:
    """The median (by wall time) of ``n`` runs of ``argv``; ``before`` runs (untimed) before each."""
    runs = []
    for _ in range(max(1, n)):
        if before:
            subprocess.run(list(before), env=env, capture_output=True, timeout=600)
        runs.append(run_child(argv, env))
    runs.sort(key=lambda r: r.seconds)
    return runs[len(runs) // 2]


def preflight_rows(work: str, env: Dict[str, str], repeat: int) -> List[Tuple[str, str, float, Optional[float], str]]:
    """``soswap install`` of a library nothing uses (in a temporary directory), with and without the preflight,
    and coreutils install(1) of the same file."""
    lib = "/usr/lib/x86_64-linux-gnu/libz.so.1"
    if not os.path.isfile(lib):
        lib = DEFAULT_LIBRARY
    d = os.path.join(work, "unused")
    os.mkdir(d)
    src = os.path.join(d, "src.so")
    dest = os.path.join(d, "libunused.so.1")
    shutil.copyfile(lib, src)
    shutil.copyfile(lib, dest)
    state = os.path.join(work, "install-state")
    base = [sys.executable, "-m", "soswap", "install", "--state-dir", state, "--no-backup", "--no-report"]
    rows = []
    full = median_run([*base, src, dest], env, repeat)
    rows.append(("soswap install", "unused lib, warm", full.seconds, full.peak_mb,
                 f"exit {full.status}; preflight on: processes + {os.path.basename(lib)} copy in a temp dir"))
    dry = median_run([*base, "--dry-run", src, dest], env, repeat)
    rows.append(("soswap install", "--dry-run, warm", dry.seconds, dry.peak_mb, f"exit {dry.status}"))
    bare = median_run([*base, "--no-check", src, dest], env, repeat)
    rows.append(("soswap install", "--no-check", bare.seconds, bare.peak_mb,
                 f"exit {bare.status}; the same transaction without the preflight"))
    coreutils = median_run(["install", "-m", "0644", src, dest], env, repeat)
    rows.append(("install(1)", "coreutils", coreutils.seconds, coreutils.peak_mb,
                 f"exit {coreutils.status}; no check, no fsync, unlink + create"))
    return rows


def ldd_loop(files: List[str], newdir: str) -> Tuple[float, int, int]:
    """``ldd -r`` on each file with NEW first on LD_LIBRARY_PATH: (seconds, files, files with a problem)."""
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "LD_LIBRARY_PATH": newdir}
    bad = 0
    start = time.perf_counter()
    for f in files:
        try:
            r = subprocess.run(["ldd", "-r", f], capture_output=True, env=env, timeout=120,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            bad += 1
            continue
        text = r.stdout + r.stderr
        if b"undefined symbol" in text or b"not found" in text:
            bad += 1
    return time.perf_counter() - start, len(files), bad


def debuglink_free_copy(lib: str, out: str) -> str:
    """A copy of ``lib`` without .gnu_debuglink/.gnu_debugaltlink: abicompat 2.2 aborts (std::logic_error,
    "basic_string: construction from null") on Debian libraries that name an alternate debug file which is
    not installed. Falls back to a plain copy without objcopy."""
    if shutil.which("objcopy"):
        r = subprocess.run(["objcopy", "--remove-section=.gnu_debugaltlink", "--remove-section=.gnu_debuglink",
                            lib, out], capture_output=True, timeout=300)
        if r.returncode == 0:
            return out
    shutil.copyfile(lib, out)
    return out


def abicompat_sample(programs: List[str], old: str, new: str, n: int, work: str) -> Tuple[float, int, List[int]]:
    """``abicompat APP OLD NEW`` on ``n`` programs spread over the list (each given as a copy without debug
    links, made before the clock starts): (seconds of the abicompat runs, runs, exit statuses)."""
    if n <= 0 or not programs or shutil.which("abicompat") is None:
        return 0.0, 0, []
    step = max(1, len(programs) // n)
    sample = programs[::step][:n]
    statuses = []
    total = 0.0
    for i, p in enumerate(sample):
        app = debuglink_free_copy(p, os.path.join(work, f"app-{i}"))
        r = run_child(["abicompat", app, old, new], timeout=600, measure_memory=False)
        total += r.seconds
        statuses.append(r.status)
    return total, len(sample), statuses


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--library", default=DEFAULT_LIBRARY)
    ap.add_argument("--repeat", type=int, default=5, help="warm soswap check runs (median reported); default 5")
    ap.add_argument("--install-repeat", type=int, default=11, help="install runs (median reported); default 11")
    ap.add_argument("--ldd-sample", type=int, default=0, help="ldd -r on this many consumers (0: all)")
    ap.add_argument("--abicompat-sample", type=int, default=20, help="abicompat runs, extrapolated (0: none)")
    args = ap.parse_args(argv)
    lib = args.library
    if not os.path.isfile(lib):
        print(f"bench_check: {lib} is missing; pass --library", file=sys.stderr)
        return 2
    compiled = byte_compile()
    print(f"machine: {machine(processes=True)}")
    print(f"library: {lib} (soswap {compiled})")
    work = tempfile.mkdtemp(prefix="bench-check-")
    try:
        newdir = os.path.join(work, "new")
        os.mkdir(newdir)
        new = os.path.join(newdir, os.path.basename(lib))
        shutil.copyfile(lib, new)
        cache = os.path.join(work, "cache")
        env = soswap_env(cache)
        rows = []
        cold = run_child([sys.executable, "-m", "soswap", "rdeps", "--json", lib], env)
        cdoc = json.loads(cold.stdout)
        idx = cdoc["index"]
        rows.append(("soswap rdeps", "cold index (build)", cold.seconds, cold.peak_mb,
                     f"index built: {idx.get('files')} ELF files in {idx.get('dirs')} directories, "
                     f"{idx.get('probed')} files probed, {idx.get('trees')} trees"))
        time.sleep(2.1)  # the racy rule: what the cold run saw within 2 s of its reading is checked once more
        run_child([sys.executable, "-m", "soswap", "rdeps", "--json", lib], env)
        base = [sys.executable, "-m", "soswap", "check", "--json", new, lib]
        warm = median_run(base, env, args.repeat)
        wdoc = json.loads(warm.stdout)
        consumers = wdoc["consumers"]
        files = sorted({c["path"] for c in consumers if "pid" not in c})
        programs = sorted({c["path"] for c in consumers if c["role"] == "program" and "pid" not in c})
        procs = sum(1 for c in consumers if "pid" in c)
        windex = wdoc["discovery"]["index"]
        rows.append(("soswap check", "warm index", warm.seconds, warm.peak_mb,
                     f"exit {warm.status}; {len(files)} files + {procs} processes; "
                     f"{wdoc['discovery']['shortcuts']} proved safe by the diff; index: {windex['reread']} "
                     f"re-read, {windex['dirs_listed']} dirs listed, {windex['seconds']} s"))
        full = run_child([*base, "--full"], env)
        fdoc = json.loads(full.stdout)
        rows.append(("soswap check --full", "warm index", full.seconds, full.peak_mb,
                     f"exit {full.status}; every consumer bound, in -j workers ({os.cpu_count()} CPUs); "
                     f"{fdoc['summary']['broken']} already broken with OLD"))
        serial = run_child([*base, "--full", "-j", "1"], env)
        rows.append(("soswap check --full", "warm index, -j 1", serial.seconds, serial.peak_mb,
                     f"exit {serial.status}; the same in one process: {serial.seconds / full.seconds:.2f}x "
                     "the time of -j"))
        rd = median_run([sys.executable, "-m", "soswap", "rdeps", "--json", lib], env, args.repeat)
        rdoc = json.loads(rd.stdout)
        rows.append(("soswap rdeps", "warm index", rd.seconds, rd.peak_mb,
                     f"{sum(rdoc['summary'].values())} dependents {rdoc['summary']}; index "
                     f"{rdoc['index']['seconds']} s"))
        inst = preflight_rows(work, env, args.install_repeat)
        rows.extend(inst)
        ldd_files = files if args.ldd_sample <= 0 else files[:: max(1, len(files) // args.ldd_sample)]
        l_sec, l_n, l_bad = ldd_loop(ldd_files, newdir)
        l_all = l_sec * len(files) / max(1, l_n)
        note = "" if l_n == len(files) else f" (sample of {l_n}, extrapolated)"
        rows.append(("ldd -r", f"{l_n} files", l_all, None,
                     f"{l_bad} with 'undefined symbol' or 'not found' (host symbols of plugins){note}"))
        abi_old = debuglink_free_copy(lib, os.path.join(work, "abi-old.so"))
        abi_new = debuglink_free_copy(lib, os.path.join(work, "abi-new.so"))
        a_sec, a_n, a_status = abicompat_sample(programs, abi_old, abi_new, args.abicompat_sample, work)
        a_all = None
        if a_n:
            a_all = a_sec / a_n * len(programs)
            rows.append(("abicompat", f"{a_n} of {len(programs)} programs", a_all, None,
                         f"extrapolated from {a_sec:.1f} s for {a_n}; exits {sorted(set(a_status))}"))
        print()
        print(f"{'tool':<20} {'run':<22} {'wall s':>9} {'peak MB':>8}  notes")
        for tool, what, sec, peak, note in rows:
            peak_s = f"{peak:8.1f}" if peak is not None else f"{'-':>8}"
            print(f"{tool:<20} {what:<22} {sec:9.3f} {peak_s}  {note}")
        print()
        w_sec = warm.seconds
        print(f"consumers: {len(programs)} programs, {len(files) - len(programs)} plugins, {procs} processes; "
              f"verdict {wdoc['verdict']}")
        print(f"ldd -r over every file consumer / soswap check (warm): {l_all / w_sec:,.1f}x; "
              f"/ soswap check --full: {l_all / full.seconds:,.1f}x")
        if a_all is not None:
            print(f"abicompat over every program (extrapolated) / soswap check (warm): {a_all / w_sec:,.0f}x; "
                  f"/ --full: {a_all / full.seconds:,.0f}x")
        with_check, no_check, coreutils = inst[0][2], inst[2][2], inst[3][2]
        print(f"install preflight (warm, unused library): {1000 * (with_check - no_check):.0f} ms "
              f"(soswap install {with_check:.3f} s / --no-check {no_check:.3f} s = {with_check / no_check:.2f}x; "
              f"/ install(1) {with_check / coreutils:.1f}x)")
        print(f"targets: install with preflight < 0.3 s: {'met' if with_check < 0.3 else 'NOT met'}; "
              f"check of {os.path.basename(lib)} warm < 1 s: {'met' if w_sec < 1 else 'NOT met'}")
        print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"command: python bench/bench_check.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
