"""Benchmark: ``soswap diff`` against ``abidiff`` (libabigail, ELF symbols only) on the same pair, in one run.

    python bench/bench_abi.py                      # libLLVM-14 vs libLLVM-15, abidiff included (~5 minutes)
    python bench/bench_abi.py --skip-abidiff       # reuse the recorded abidiff figure instead of running it
    python bench/bench_abi.py --old A.so --new B.so --repeat 5

Each tool runs as a child process; wall time is measured around it, peak memory is the child's peak RSS as
``/usr/bin/time -f %M`` reports it. soswap runs ``--repeat`` times (the median is reported), abidiff once.
The self-comparison (NEW against itself) is timed too: it is what libabigail is fast at.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

from machine_info import machine  # bench/, the script's own directory

ROOT = Path(__file__).resolve().parent.parent
LIBDIR = "/usr/lib/x86_64-linux-gnu"
DEFAULT_OLD = f"{LIBDIR}/libLLVM-14.so.1"
DEFAULT_NEW = f"{LIBDIR}/libLLVM-15.so.1"
#: abidiff 2.2 on libLLVM-14 vs libLLVM-15, from the reference notes (2-core AMD EPYC): used by --skip-abidiff.
RECORDED_ABIDIFF = {"seconds": 331.7, "peak_mb": 115.0, "source": "recorded (reference notes, abi.md §5)"}


class Run(NamedTuple):
    seconds: float
    peak_mb: float
    status: int
    stdout: bytes


def run_child(argv: Sequence[str], env: Optional[Dict[str, str]] = None, timeout: float = 3600) -> Run:
    """Run ``argv`` (never through a shell): wall time, and peak RSS measured by ``/usr/bin/time`` (its own
    small child, so the figure is not inflated by this Python process's memory at fork time)."""
    time_bin = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
    report = None
    cmd = list(argv)
    if time_bin:
        fd, report = tempfile.mkstemp(prefix="bench-abi-", suffix=".time")
        os.close(fd)
        cmd = [time_bin, "-f", "%M", "-o", report, *cmd]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    elapsed = time.perf_counter() - start
    # without /usr/bin/time: the largest peak of any child so far (an upper bound)
    peak_kb = float(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    if report:
        try:
            peak_kb = float(Path(report).read_text().split()[-1])
        except (OSError, ValueError, IndexError):
            pass
        os.unlink(report)
    return Run(elapsed, peak_kb / 1024.0, proc.returncode, out)


def soswap_argv(old: str, new: str) -> List[str]:
    return [sys.executable, "-m", "soswap", "diff", "--json", old, new]


def soswap_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def abidiff_version() -> str:
    try:
        return subprocess.run(["abidiff", "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        return "abidiff not installed"


def _abidiff_counts(text: str) -> str:
    m = re.findall(r"(Function|Variable) symbols changes summary: (\d+) Removed, (\d+) Added", text)
    return ", ".join(f"{kind.lower()}s -{rem} +{add}" for kind, rem, add in m) or "-"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", default=DEFAULT_OLD)
    p.add_argument("--new", default=DEFAULT_NEW)
    p.add_argument("--repeat", type=int, default=3, help="soswap runs (median reported); default 3")
    p.add_argument("--skip-abidiff", action="store_true",
                   help="do not run abidiff on the pair; use the recorded figure (or --abidiff-seconds)")
    p.add_argument("--abidiff-seconds", type=float, help="with --skip-abidiff: the figure to compare against")
    p.add_argument("--abidiff-timeout", type=float, default=1800)
    args = p.parse_args(argv)
    for f in (args.old, args.new):
        if not os.path.exists(f):
            print(f"bench_abi: {f} is missing; pass --old/--new (the largest related pair of libraries)",
                  file=sys.stderr)
            return 2

    print(f"machine: {machine()}")
    print(f"pair:    {args.old}  ->  {args.new}")
    print(f"tools:   soswap diff --json (this tree); {abidiff_version()} (no debug info: ELF symbols only)")
    print()

    rows = []
    env = soswap_env()
    runs = [run_child(soswap_argv(args.old, args.new), env) for _ in range(max(1, args.repeat))]
    doc = json.loads(runs[-1].stdout)
    ours = Run(statistics.median(r.seconds for r in runs), max(r.peak_mb for r in runs), runs[-1].status, b"")
    kinds: Dict[str, int] = {}
    for c in doc["changes"]:
        kinds[c["kind"]] = kinds.get(c["kind"], 0) + 1
    summary = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:4])
    rows.append(("soswap diff", "OLD vs NEW", ours.seconds, ours.peak_mb, f"exit {ours.status}; {summary}"))
    selfs = [run_child(soswap_argv(args.new, args.new), env) for _ in range(max(1, args.repeat))]
    rows.append(("soswap diff", "NEW vs NEW", statistics.median(r.seconds for r in selfs),
                 max(r.peak_mb for r in selfs), f"exit {selfs[-1].status}"))

    have_abidiff = shutil.which("abidiff") is not None
    abi_pair: Optional[float] = None
    if have_abidiff:
        s = run_child(["abidiff", args.new, args.new], timeout=args.abidiff_timeout)
        rows.append(("abidiff", "NEW vs NEW", s.seconds, s.peak_mb, f"exit {s.status}"))
    if have_abidiff and not args.skip_abidiff:
        a = run_child(["abidiff", args.old, args.new], timeout=args.abidiff_timeout)
        abi_pair = a.seconds
        rows.append(("abidiff", "OLD vs NEW", a.seconds, a.peak_mb,
                     f"exit {a.status}; {_abidiff_counts(a.stdout.decode(errors='replace'))}"))
    else:
        abi_pair = args.abidiff_seconds if args.abidiff_seconds is not None else RECORDED_ABIDIFF["seconds"]
        source = "--abidiff-seconds" if args.abidiff_seconds is not None else RECORDED_ABIDIFF["source"]
        peak = None if args.abidiff_seconds is not None else RECORDED_ABIDIFF["peak_mb"]
        rows.append(("abidiff", "OLD vs NEW", abi_pair, peak, f"not run: {source}"))

    print(f"{'tool':<12} {'pair':<11} {'wall s':>9} {'peak MB':>8}  notes")
    for tool, pair, sec, peak, note in rows:
        peak_s = f"{peak:8.1f}" if peak is not None else f"{'-':>8}"
        print(f"{tool:<12} {pair:<11} {sec:9.3f} {peak_s}  {note}")
    print()
    print(f"speed-up on OLD vs NEW: {abi_pair / ours.seconds:,.0f}x (abidiff {abi_pair:.1f} s / soswap "
          f"{ours.seconds:.3f} s, soswap median of {len(runs)})")
    print(f"soswap: {len(doc['changes'])} changes, verdict {doc['verdict']}, summary {doc['summary']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
