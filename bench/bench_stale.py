"""Benchmark of ``soswap stale`` against needrestart, checkrestart, an lsof scan and the /proc floor.

Starts N processes (default 2,000) of a small gcc-built program linked to three fixture libraries plus libm,
plants stale libraries in a few dozen of them (deleted, replaced with a surviving hard link, modified in place,
truncated), then times each tool in the same run and reports its recall on the planted processes::

    python bench/bench_stale.py [--processes 2000] [--planted 10] [--runs 5]

The two engine rows time the scan alone (no interpreter start, no imports, no output): with the PROCMAP_QUERY
reader of pass 1 (Linux >= 6.11; the default) and with the maps text reader older kernels use.

Then, on the same fleet, ``soswap users FILE`` against ``fuser FILE`` and ``lsof FILE`` (time on a library
every process maps; recall on it and on a library replaced under its name).

Every process is killed and reaped by PID at the end, also on Ctrl-C or an exception. Needs root (the peers
need it) and gcc. Results: bench/RESULTS-stale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

LIB_C = "int fix_%(n)s(void) { return %(v)d; }\n"
PROG_C = r"""
#include <math.h>
#include <stdlib.h>
#include <unistd.h>
int fix_a(void); int fix_b(void); int fix_c(void);
int main(int argc, char **argv) {
    volatile double x = sqrt((double)(fix_a() + fix_b() + fix_c()));
    (void)x;
    int fd = atoi(argv[1]);
    if (write(fd, "x", 1) != 1) return 1;
    close(fd);
    for (;;) pause();
}
"""

KINDS = ("deleted", "replaced", "modified", "truncated")


def cc(args: Sequence[str]) -> None:
    subprocess.run(["gcc", *args], check=True, capture_output=True)


def build(work: Path, packaged_mtimes: bool = True) -> Tuple[Path, Dict[str, Path]]:
    """One program directory per planted kind (plus "clean"), each with its own copies of the libraries.

    ``packaged_mtimes``: give the programs and libraries a modification time before the boot, as installed
    packages have (dpkg and rpm set the package's mtimes). With fresh mtimes (``--fresh-mtimes``) every library
    looks changed since the boot, and soswap must read /proc/PID/stat of every process to compare start times."""
    src = work / "src"
    src.mkdir()
    for n in "abc":
        (src / f"lib{n}.c").write_text(LIB_C % {"n": n, "v": 1})
        cc(["-shared", "-fPIC", "-o", str(src / f"libfix{n}.so"), str(src / f"lib{n}.c")])
    # the upgrade planted later: another build of libfixb (another build-id, as a real upgrade has)
    (src / "libb2.c").write_text(LIB_C % {"n": "b", "v": 2})
    cc(["-shared", "-fPIC", "-o", str(src / "libfixb.v2.so"), str(src / "libb2.c")])
    (src / "prog.c").write_text(PROG_C)
    dirs = {}
    for kind in ("clean", *KINDS):
        d = work / kind
        d.mkdir()
        for n in "abc":
            shutil.copy(src / f"libfix{n}.so", d / f"libfix{n}.so")
        cc(["-o", str(d / "prog"), str(src / "prog.c"), f"-L{d}", "-lfixa", "-lfixb", "-lfixc", "-lm",
            "-Wl,-rpath,$ORIGIN"])
        dirs[kind] = d
        if packaged_mtimes:
            old = _boot_time() - 30 * 86400
            for f in d.iterdir():
                os.utime(f, (old, old))
    return src, dirs


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return time.time() - 86400


class Fleet:
    """The started processes; ``stop()`` kills and reaps each by PID."""

    def __init__(self) -> None:
        self.procs: List[subprocess.Popen] = []
        self.by_kind: Dict[str, List[int]] = {}

    def start(self, kind: str, prog: Path, count: int) -> None:
        r, w = os.pipe()
        try:
            for _ in range(count):
                p = subprocess.Popen([str(prog), str(w)], pass_fds=(w,), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                self.procs.append(p)
                self.by_kind.setdefault(kind, []).append(p.pid)
            os.close(w)
            w = -1
            got = 0
            while got < count:  # each child writes one byte once the dynamic loader is done
                chunk = os.read(r, count - got)
                if not chunk:
                    raise RuntimeError(f"only {got} of {count} {kind} processes became ready")
                got += len(chunk)
        finally:
            if w >= 0:
                os.close(w)
            os.close(r)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        self.procs.clear()


def plant(dirs: Dict[str, Path], src: Path, fleet: Fleet) -> None:
    """Make each kind's library stale in the way its name says (after the processes started)."""
    time.sleep(0.05)  # a file changed > 1 tick after the newest start counts as "after the start"
    new = src / "libfixb.v2.so"
    # deleted: a new file renamed over the old one (the usual package upgrade).
    d = dirs["deleted"]
    shutil.copy(new, d / "libfixb.so.tmp")
    os.rename(d / "libfixb.so.tmp", d / "libfixb.so")
    # replaced: the same, but the old inode keeps a hard link elsewhere (nlink 1, not 0).
    d = dirs["replaced"]
    os.link(d / "libfixb.so", d / "libfixb.so.keep")
    shutil.copy(new, d / "libfixb.so.tmp")
    os.rename(d / "libfixb.so.tmp", d / "libfixb.so")
    # modified: written in place, same inode, same size (no " (deleted)" anywhere).
    d = dirs["modified"]
    data = (d / "libfixb.so").read_bytes()
    with open(d / "libfixb.so", "r+b") as f:
        f.write(data[:512])
    # truncated: cut short in place.
    os.truncate(dirs["truncated"] / "libfixb.so", 1000)


def timed(argv: Sequence[str], env: Optional[Dict[str, str]] = None, timeout: float = 1800) -> Tuple[float, str, str]:
    t0 = time.perf_counter()
    r = subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=timeout,
                       errors="replace", stdin=subprocess.DEVNULL)
    return time.perf_counter() - t0, r.stdout, r.stderr


def soswap_pids(out: str, err: str) -> Set[int]:
    return {p["pid"] for p in json.loads(out)["processes"]}


def needrestart_pids(out: str, err: str) -> Set[int]:
    # -v logs "[main] #PID uses obsolete binary|uses deleted ..." on stderr; -b prints only units/sessions.
    return {int(m) for m in re.findall(r"#(\d+) uses ", err)}


def checkrestart_pids(out: str, err: str) -> Set[int]:
    return {int(m) for m in re.findall(r"^\s*(\d+)\s", out, re.M)}


def lsof_pids(out: str, err: str) -> Set[int]:
    pids, pid = set(), None
    for line in out.splitlines():
        if line.startswith("p"):
            pid = int(line[1:])
        elif line == "fDEL" and pid is not None:
            pids.add(pid)
    return pids


def hook_pids(out: str, err: str) -> Set[int]:
    # soswap hook apt: "  processes: comm=PID,PID comm=PID" (the planted processes belong to no unit here)
    return {int(p) for line in out.splitlines() if line.startswith("  processes: ")
            for item in line.split()[1:] for p in item.rpartition("=")[2].split(",")}


def none(out: str, err: str) -> Set[int]:
    return set()


def users_pids(out: str, err: str) -> Set[int]:
    return {p["pid"] for p in json.loads(out)["processes"]}


def fuser_pids(out: str, err: str) -> Set[int]:
    # the PIDs go to stdout, the file name and the access letters to stderr
    return {int(m) for m in re.findall(r"\d+", out)}


def lsof_file_pids(out: str, err: str) -> Set[int]:
    return {int(line[1:]) for line in out.splitlines() if line.startswith("p")}


def users_bench(args: argparse.Namespace, env: Dict[str, str], dirs: Dict[str, Path], fleet: Fleet) -> None:
    """``soswap users FILE`` against fuser and lsof on the same fleet: a library every clean process maps (its
    current version), and the library the "deleted" processes still map under a name that now holds a new
    file (the old version: found by soswap through map_files and the name, invisible to tools that look the
    current inode up)."""
    current, old = dirs["clean"] / "libfixa.so", dirs["deleted"] / "libfixb.so"
    want = {"current": set(fleet.by_kind["clean"]), "old": set(fleet.by_kind["deleted"])}
    tools: List[Tuple[str, Callable[[Path], List[str]], Callable[[str, str], Set[int]]]] = [
        ("floor: cat /proc/[0-9]*/maps", lambda f: ["sh", "-c", "cat /proc/[0-9]*/maps > /dev/null 2>&1"], none),
        ("soswap users --json", lambda f: [args.python, "-m", "soswap", "users", "--json", str(f)], users_pids),
    ]
    if shutil.which("fuser"):
        tools.append(("fuser FILE", lambda f: ["fuser", str(f)], fuser_pids))
    if shutil.which("lsof"):
        tools.append(("lsof -n -F p FILE", lambda f: ["lsof", "-n", "-F", "p", str(f)], lsof_file_pids))
    print()
    print(f"soswap users: {len(want['current'])} processes map {current} (current version); "
          f"{len(want['old'])} map the old, deleted version of {old}")
    head = f"{'tool':<28} {'median s':>9} {'x floor':>8} {'x soswap':>9}  {'current':>11} {'old':>7}"
    print(head)
    print("-" * len(head))
    rows = []
    for name, cmd, parse in tools:
        times, found = [], {}
        for which, f in (("current", current), ("old", old)):
            for _ in range(args.runs if which == "current" else 1):
                t, out, err = timed(cmd(f), env)
                if which == "current":
                    times.append(t)
            found[which] = parse(out, err)
        rows.append((name, statistics.median(times), found))
    floor, soswap_t = rows[0][1], rows[1][1]
    for name, med, found in rows:
        recall = {k: "-" if name.startswith("floor") else f"{len(found[k] & want[k])}/{len(want[k])}"
                  for k in want}
        print(f"{name:<28} {med:>9.3f} {med / floor:>8.2f} {med / soswap_t:>9.2f}  {recall['current']:>11} "
              f"{recall['old']:>7}")


ENGINE_ONLY = ("import json, sys, time\nfrom soswap.proc import ScanOptions, scan_stale\n"
               "o = ScanOptions(vma_query=sys.argv[1] == 'query')\nt = time.perf_counter()\n"
               "r = scan_stale(o)\nt = time.perf_counter() - t\n"
               "print(json.dumps({'seconds': t, 'processes': [{'pid': p.pid} for p in r.processes]}))\n")


def engine_pids(out: str, err: str) -> Set[int]:
    return {p["pid"] for p in json.loads(out)["processes"]}


def engine_seconds(out: str) -> float:
    return float(json.loads(out)["seconds"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=2000)
    ap.add_argument("--planted", type=int, default=10, help="processes per planted kind")
    ap.add_argument("--fresh-mtimes", action="store_true",
                    help="leave the fixtures' mtimes at build time (after the boot) instead of a packaged, pre-boot "
                         "mtime: the worst case, every process's start time must be read")
    ap.add_argument("--runs", type=int, default=5, help="timed runs of the fast tools (median reported)")
    ap.add_argument("--slow-runs", type=int, default=1, help="timed runs of needrestart/checkrestart/lsof")
    ap.add_argument("--python", default="/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable,
                    help="interpreter that runs soswap (default: the system python3, as the installed script would)")
    ap.add_argument("--dir", default="/opt",
                    help="where the fixtures go (default /opt: needrestart and checkrestart ignore files under /tmp, "
                         "/var/tmp and /run by design, so fixtures there would be invisible to them)")
    ap.add_argument("--host-pidns", action="store_true",
                    help="run in the host's PID namespace (default: a private one, made with unshare -pf "
                         "--mount-proc, whose PID 1 is this benchmark: needrestart drops every process when it "
                         "cannot read PID 1, as on VMs and containers whose init is hidden)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_stale: needs root", file=sys.stderr)
        return 2
    if not args.host_pidns and os.getpid() != 1 and shutil.which("unshare"):
        # Re-run inside a private PID namespace (and /proc): every tool then sees the fleet and a readable PID 1.
        return subprocess.call(["unshare", "-pf", "--mount-proc", sys.executable, os.path.abspath(__file__),
                                *(argv if argv is not None else sys.argv[1:])])
    env = dict(os.environ, PYTHONPATH=str(SRC))
    # An installed soswap has its bytecode compiled (pip/dpkg do it); PYTHONDONTWRITEBYTECODE in the calling
    # environment would make every run recompile the sources, so compile once, as an install does.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([args.python, "-m", "compileall", "-q", str(SRC / "soswap")], env=env, check=False,
                   stdout=subprocess.DEVNULL)
    tools: List[Tuple[str, List[str], Callable[[str, str], Set[int]], bool]] = [
        ("floor: cat /proc/[0-9]*/maps", ["sh", "-c", "cat /proc/[0-9]*/maps > /dev/null 2>&1"], none, True),
        ("soswap stale --json", [args.python, "-m", "soswap", "stale", "--json"], soswap_pids, True),
        ("soswap hook apt (summary)", [args.python, "-m", "soswap", "hook", "apt", "--state-dir", "/nonexistent"],
         hook_pids, True),
        ("(soswap engine, in-process)", [args.python, "-c", ENGINE_ONLY, "query"], engine_pids, True),
        ("(engine, maps text reader)", [args.python, "-c", ENGINE_ONLY, "text"], engine_pids, True),
    ]
    if shutil.which("needrestart"):
        tools.append(("needrestart -b -v", ["needrestart", "-b", "-v"], needrestart_pids, False))
    if shutil.which("checkrestart"):
        tools.append(("checkrestart (lsof)", ["checkrestart"], checkrestart_pids, False))
    if shutil.which("lsof"):
        tools.append(("lsof -n -F pf (DEL)", ["lsof", "-n", "-F", "pf"], lsof_pids, False))

    fleet = Fleet()
    work = Path(tempfile.mkdtemp(prefix="soswap-bench-", dir=args.dir))
    # soswap keeps a per-boot record of clock offsets in its state directory: a private one, removed at the end.
    env["SOSWAP_STATE_DIR"] = str(work / "state")
    try:
        src, dirs = build(work, packaged_mtimes=not args.fresh_mtimes)
        clean = args.processes - args.planted * len(KINDS)
        fleet.start("clean", dirs["clean"] / "prog", clean)
        for kind in KINDS:
            fleet.start(kind, dirs[kind] / "prog", args.planted)
        plant(dirs, src, fleet)
        planted = {k: set(fleet.by_kind[k]) for k in KINDS}
        all_planted = set().union(*planted.values())
        n_proc = sum(1 for e in os.listdir("/proc") if e.isdigit())
        rows = []
        for name, cmd, parse, fast in tools:
            times, found = [], set()
            for _ in range(args.runs if fast else args.slow_runs):
                t, out, err = timed(cmd, env)
                if name.startswith("(soswap engine") or name.startswith("(engine"):
                    t = engine_seconds(out)  # the scan alone: no interpreter start, no imports, no output
                times.append(t)
                found = parse(out, err)
            clean_hits = found & set(fleet.by_kind["clean"])
            rows.append((name, statistics.median(times), min(times),
                         {k: len(found & planted[k]) for k in KINDS}, len(found & all_planted), len(clean_hits)))
        floor, floor_min = rows[0][1], rows[0][2]
        soswap_t = rows[1][1]
        print(f"{n_proc} processes in /proc, {len(all_planted)} planted ({args.planted} per kind), "
              f"load {os.getloadavg()[0]:.2f}, soswap run by {args.python}")
        head = f"{'tool':<28} {'median s':>9} {'min s':>7} {'x floor':>8} {'(min)':>6} {'x soswap':>9}  " + \
               " ".join(f"{k[:5]:>5}" for k in KINDS) + f"  {'recall':>7} {'false+':>6}"
        print(head)
        print("-" * len(head))
        for name, med, mn, per_kind, hits, false_pos in rows:
            recall = "-" if name.startswith("floor") else f"{hits}/{len(all_planted)}"
            kinds = " ".join(f"{per_kind[k]:>5}" if not name.startswith("floor") else f"{'-':>5}" for k in KINDS)
            print(f"{name:<28} {med:>9.3f} {mn:>7.3f} {med / floor:>8.2f} {mn / floor_min:>6.2f} "
                  f"{med / soswap_t:>9.2f}  "
                  f"{kinds}  "
                  f"{recall:>7} {false_pos:>6}")
        users_bench(args, env, dirs, fleet)
        return 0
    finally:
        fleet.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
