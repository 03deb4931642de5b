"""Benchmark: ``soswap check`` of a system library (libc.so.6 by default) against every consumer on the system,
with the peer tools run in the same run on the same consumers.

    python bench/bench_check.py                          # libc.so.6; ldd -r on every consumer; abicompat on 20
    python bench/bench_check.py --library /usr/lib/x86_64-linux-gnu/libz.so.1 --ldd-sample 200
    python bench/bench_check.py --abicompat-sample 0     # skip abicompat

NEW is a byte-identical copy of the library in a temporary directory, so every tool's answer is "compatible"
and the figures measure the work, not a failure path. Rows:

* ``soswap check`` with a fresh state directory (the rdeps index is built: cold), then with the index in place
  (warm, median of ``--repeat``), then ``--full`` (every consumer bound, as when the diff cannot prove any
  consumer safe), and ``soswap rdeps`` alone (warm);
* ``ldd -r`` on every file consumer soswap found (programs and plugins), with NEW first on LD_LIBRARY_PATH:
  what a careful admin would run today (ld.so itself in trace mode, one process per file);
* ``abicompat APP OLD NEW`` (libabigail, ELF symbols only: no debug info here) on a sample of the programs,
  extrapolated to all of them (it checks one application against one library per run). The programs, OLD and
  NEW are given to it as copies without their debug links: abicompat 2.2 aborts (SIGABRT, std::logic_error)
  on Debian's binaries as installed, whose .gnu_debugaltlink names a file that is not installed.

Wall time around each child process; peak memory is the child's peak RSS (``/usr/bin/time -f %M``). The page
cache is not dropped: "cold" means no index, not cold disks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

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


def soswap_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return (f"{cpu or platform.processor()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
            f"Python {platform.python_version()}, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


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
    ap.add_argument("--repeat", type=int, default=3, help="warm soswap runs (median reported); default 3")
    ap.add_argument("--ldd-sample", type=int, default=0, help="ldd -r on this many consumers (0: all)")
    ap.add_argument("--abicompat-sample", type=int, default=20, help="abicompat runs, extrapolated (0: none)")
    args = ap.parse_args(argv)
    lib = args.library
    if not os.path.isfile(lib):
        print(f"bench_check: {lib} is missing; pass --library", file=sys.stderr)
        return 2
    print(f"machine: {machine()}")
    print(f"library: {lib}")
    work = tempfile.mkdtemp(prefix="bench-check-")
    try:
        newdir = os.path.join(work, "new")
        os.mkdir(newdir)
        new = os.path.join(newdir, os.path.basename(lib))
        shutil.copyfile(lib, new)
        state = os.path.join(work, "state")
        env = soswap_env()
        base = [sys.executable, "-m", "soswap", "check", "--state-dir", state, "--json", new, lib]
        rows = []
        cold = run_child(base, env)
        doc = json.loads(cold.stdout)
        consumers = doc["consumers"]
        files = sorted({c["path"] for c in consumers if "pid" not in c})
        programs = sorted({c["path"] for c in consumers if c["role"] == "program" and "pid" not in c})
        procs = sum(1 for c in consumers if "pid" in c)
        idx = doc["discovery"]["index"] or {}
        rows.append(("soswap check", "cold index", cold.seconds, cold.peak_mb,
                     f"exit {cold.status}; {len(files)} files + {procs} processes; index: {idx.get('files')} "
                     f"ELF files, {idx.get('trees')} trees built"))
        warm = [run_child(base, env) for _ in range(max(1, args.repeat))]
        wdoc = json.loads(warm[-1].stdout)
        w_sec = statistics.median(r.seconds for r in warm)
        rows.append(("soswap check", "warm index", w_sec, max((r.peak_mb or 0) for r in warm),
                     f"exit {warm[-1].status}; {wdoc['discovery']['shortcuts']} proved safe by the diff, "
                     f"index reread {wdoc['discovery']['index']['reread']}"))
        full = run_child([*base, "--full"], env)
        fdoc = json.loads(full.stdout)
        rows.append(("soswap check --full", "warm index", full.seconds, full.peak_mb,
                     f"exit {full.status}; every consumer bound; {fdoc['summary']['broken']} already broken "
                     "with OLD"))
        rd = run_child([sys.executable, "-m", "soswap", "rdeps", "--state-dir", state, "--json", lib], env)
        rdoc = json.loads(rd.stdout)
        rows.append(("soswap rdeps", "warm index", rd.seconds, rd.peak_mb,
                     f"{sum(rdoc['summary'].values())} dependents {rdoc['summary']}"))
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
            print(f"{tool:<20} {what:<22} {sec:9.2f} {peak_s}  {note}")
        print()
        print(f"consumers: {len(programs)} programs, {len(files) - len(programs)} plugins, {procs} processes; "
              f"verdict {wdoc['verdict']}")
        print(f"ldd -r over every file consumer / soswap check (warm): {l_all / w_sec:,.1f}x; "
              f"/ soswap check --full: {l_all / full.seconds:,.1f}x")
        if a_all is not None:
            print(f"abicompat over every program (extrapolated) / soswap check (warm): {a_all / w_sec:,.0f}x; "
                  f"/ --full: {a_all / full.seconds:,.0f}x")
        print(f"command: python bench/bench_check.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
