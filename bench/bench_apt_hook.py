"""Benchmark: ``soswap hook apt-preinstall`` (apt's ``DPkg::Pre-Install-Pkgs``) on real pending upgrades.

    python bench/bench_apt_hook.py                   # the .deb files in apt's cache that upgrade an installed package
    python bench/bench_apt_hook.py --all-cached      # every cached .deb of an installed package (same version too)
    python bench/bench_apt_hook.py --debs a.deb b.deb --runs 5

Nothing is installed: the hook only reads the packages and checks them against what is installed and running.
Rows, in the same run:

* the floor: ``dpkg-deb --fsys-tarfile`` of every package, one per CPU at once, output thrown away. It is the
  cost of reading the packages, which dpkg pays again when it unpacks them;
* the hook with an empty cache directory (the rdeps index of the system is built first: the first apt run
  after soswap is installed);
* the hook with the index in place (median of ``--runs``).

No other tool checks packages against their consumers before dpkg unpacks them; the nearest manual equivalent,
``ldd -r`` of every consumer after the upgrade, is measured for ``soswap check`` in bench_check.py.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from machine_info import machine

SRC = Path(__file__).resolve().parents[1] / "src"


def _field(deb: str, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", deb, name], capture_output=True, text=True).stdout.strip()


def cached_debs(all_cached: bool) -> List[str]:
    """apt's cached .deb files of installed packages (only those that change the version, unless
    ``all_cached``)."""
    out = []
    for deb in sorted(glob.glob("/var/cache/apt/archives/*.deb")):
        package, version = _field(deb, "Package"), _field(deb, "Version")
        r = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Version}", package],
                           capture_output=True, text=True)
        if r.returncode != 0 or not r.stdout.startswith("ii "):
            continue
        if all_cached or r.stdout.split()[-1] != version:
            out.append(deb)
    return out


def floor(debs: Sequence[str]) -> float:
    def read(deb: str) -> None:
        subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.DEVNULL, check=True)

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(read, debs))
    return time.perf_counter() - t


def hook(debs: Sequence[str], env: Dict[str, str]) -> Tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "soswap", "hook", "apt-preinstall", "--timeout", "3600"],
                       input="".join(d + "\n" for d in debs), capture_output=True, text=True, env=env)
    took = time.perf_counter() - t
    if r.returncode != 0 or r.stderr:
        raise SystemExit(f"bench_apt_hook: the hook failed: {r.stderr.strip()}")
    return took, r.stdout.strip()


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--debs", nargs="+", help="these packages (default: apt's cached upgrades)")
    ap.add_argument("--all-cached", action="store_true", help="every cached .deb of an installed package")
    ap.add_argument("--runs", type=int, default=3, help="warm runs (median)")
    args = ap.parse_args(argv)
    debs = args.debs or cached_debs(args.all_cached)
    if not debs:
        print("bench_apt_hook: no package to check (give --debs)", file=sys.stderr)
        return 2
    env = dict(os.environ, PYTHONPATH=str(SRC))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(SRC / "soswap")], env=env,
                   stdout=subprocess.DEVNULL, check=False)
    print(machine())
    print(f"{len(debs)} packages, {sum(os.path.getsize(d) for d in debs) / 1e6:.1f} MB")
    with tempfile.TemporaryDirectory(prefix="soswap-bench-hook-") as work:
        env["SOSWAP_CACHE_DIR"] = os.path.join(work, "cache")
        env["SOSWAP_STATE_DIR"] = os.path.join(work, "state")
        t_floor = floor(debs)
        t_cold, said = hook(debs, env)
        warm = [hook(debs, env)[0] for _ in range(args.runs)]
    t_warm = statistics.median(warm)
    print(f"{'what':<58}{'seconds':>9}{'x floor':>9}")
    for name, t in (("floor: dpkg-deb --fsys-tarfile of every package", t_floor),
                    ("soswap hook apt-preinstall, empty cache (index built)", t_cold),
                    (f"soswap hook apt-preinstall, index in place (median of {args.runs})", t_warm)):
        print(f"{name:<58}{t:>9.2f}{t / t_floor:>9.1f}")
    print(said)
    return 0


if __name__ == "__main__":
    sys.exit(main())
