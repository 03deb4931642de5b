"""How many CPUs this process may use: what ``-j auto`` and the worker pools size themselves by.

``os.cpu_count()`` is the machine's count. A process pinned to some CPUs (``taskset``, a systemd unit's
``CPUAffinity=``, a container's cpuset) may run on fewer: its affinity mask (``sched_getaffinity``). A cgroup's
CPU quota (``docker --cpus=1``, ``CPUQuota=100%``) limits it further without changing the mask: the kernel's
CFS bandwidth control throttles the whole group once it has used ``quota`` µs of CPU per ``period``
(cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), on this cgroup or any ancestor.
Forking more workers than that only adds their duplicated work.
"""

from __future__ import annotations

import math
import os
from typing import Iterator, List, Optional, Tuple

_CGROUP_ROOT = "/sys/fs/cgroup"


def usable_cpus(proc_cgroup: str = "/proc/self/cgroup", cgroup_root: str = _CGROUP_ROOT) -> int:
    """The CPUs this process can keep busy: its affinity mask, capped by its cgroups' CPU quota (rounded up);
    at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(proc_cgroup, cgroup_root)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def cgroup_cpu_quota(proc_cgroup: str = "/proc/self/cgroup", cgroup_root: str = _CGROUP_ROOT) -> Optional[float]:
    """The smallest CPU quota (in CPUs: quota / period) of this process's cgroup and its ancestors, v2 and v1;
    None when none is set or nothing can be read."""
    best: Optional[float] = None
    for directory, v2 in _cgroup_dirs(proc_cgroup, cgroup_root):
        for d in _up_to(directory, cgroup_root):
            limit = _v2_limit(d) if v2 else _v1_limit(d)
            if limit is not None and (best is None or limit < best):
                best = limit
    return best


def _cgroup_dirs(proc_cgroup: str, cgroup_root: str) -> Iterator[Tuple[str, bool]]:
    """(directory, is v2) of the cgroups that can hold this process's CPU quota."""
    try:
        with open(proc_cgroup, "rb") as f:
            data = f.read(65536)
    except OSError:
        return
    for raw in data.splitlines():
        line = raw.decode("utf-8", "replace")
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        _hier, controllers, path = parts
        rel = path.strip("/")
        if controllers == "":  # cgroup v2: the unified hierarchy, at the root or beside v1 ("unified")
            for base in (cgroup_root, os.path.join(cgroup_root, "unified")):
                if os.path.exists(os.path.join(base, "cgroup.controllers")):
                    yield os.path.join(base, rel) if rel else base, True
                    break
        elif "cpu" in controllers.split(","):
            names: List[str] = [controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"]
            for name in dict.fromkeys(names):
                base = os.path.join(cgroup_root, name)
                if os.path.exists(os.path.join(base, "cpu.cfs_quota_us")):
                    yield os.path.join(base, rel) if rel else base, False
                    break


def _up_to(directory: str, cgroup_root: str) -> Iterator[str]:
    """``directory`` and its parents while they lie under ``cgroup_root``."""
    d = os.path.normpath(directory)
    root = os.path.normpath(cgroup_root)
    while d.startswith(root + "/") or d == root:
        yield d
        if d == root:
            return
        d = os.path.dirname(d)


def _read_small(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return f.read(256).decode("ascii", "replace").strip()
    except OSError:
        return None


def _v2_limit(directory: str) -> Optional[float]:
    """``cpu.max``: "QUOTA PERIOD" or "max PERIOD"."""
    text = _read_small(os.path.join(directory, "cpu.max"))
    if not text:
        return None
    fields = text.split()
    try:
        quota, period = int(fields[0]), int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return None  # "max": no limit
    return quota / period if quota > 0 and period > 0 else None


def _v1_limit(directory: str) -> Optional[float]:
    """``cpu.cfs_quota_us`` (-1: no limit) over ``cpu.cfs_period_us``."""
    quota_text = _read_small(os.path.join(directory, "cpu.cfs_quota_us"))
    period_text = _read_small(os.path.join(directory, "cpu.cfs_period_us"))
    try:
        quota, period = int(quota_text or ""), int(period_text or "")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None
