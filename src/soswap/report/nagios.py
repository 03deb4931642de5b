"""Nagios/Icinga plugin output for ``soswap stale --nagios`` (monitoring-plugins developer guidelines).

First line: ``STALE <STATUS> - <text> | <perfdata>``; perfdata items ``'label'=value;warn;crit;min;max``;
following lines list the units. The exit status is the worst category: 0 OK, 1 WARNING, 2 CRITICAL,
3 UNKNOWN. Severities follow needrestart's defaults: a pending kernel is CRITICAL, stale services, containers,
sessions and loose processes are WARNING. A partial scan by a non-root user is UNKNOWN (it cannot see other
users' processes); a root scan that could not read a few processes keeps its status and says so.
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

from soswap.proc.cgroup import KIND_MANAGER, KIND_SESSION, KIND_SYSTEM, KIND_USER, KIND_USER_MANAGER
from soswap.proc.model import StaleReport

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS_WORDS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}

SEVERITY = {"kernel": CRITICAL, "services": WARNING, "containers": WARNING, "sessions": WARNING,
            "processes": WARNING}


def _categories(report: StaleReport) -> Tuple[List[str], List[str], List[str], List[str]]:
    services: List[str] = []
    containers: List[str] = []
    sessions: List[str] = []
    processes: List[str] = []
    for p in report.processes:
        unit = p.unit
        if p.container is not None and (unit is None or unit.kind not in (KIND_SYSTEM, KIND_MANAGER)):
            bucket, name = containers, p.container
        elif unit is None:
            bucket, name = processes, f"{p.comm}[{p.pid}]"
        elif unit.kind in (KIND_SYSTEM, KIND_MANAGER):
            bucket, name = services, unit.name
        elif unit.kind in (KIND_SESSION, KIND_USER, KIND_USER_MANAGER):
            bucket, name = sessions, unit.label()
        else:
            bucket, name = containers, unit.name
        if name not in bucket:
            bucket.append(name)
    return sorted(services), sorted(containers), sorted(sessions), sorted(processes)


def _mark(count: int, severity: int) -> str:
    if not count:
        return "none"
    return f"{count} ({'!!' if severity == CRITICAL else '!'})"


def render(report: StaleReport, euid: Optional[int] = None) -> Tuple[str, int]:
    """(plugin output, exit status)."""
    euid = os.geteuid() if euid is None else euid
    services, containers, sessions, processes = _categories(report)
    status = OK
    parts = []
    perf = []
    k = report.kernel
    if k is not None:
        if k.status == 0:
            kstr, kperf = "unknown", "U"
        elif k.needs_reboot:
            kstr, kperf = f"{k.running}!={k.expected} (!!)", str(k.status - 1)
            status = max(status, SEVERITY["kernel"])
        else:
            kstr, kperf = k.running, "0"
        parts.append(f"Kernel: {kstr}")
        perf.append(f"'kernel'={kperf};;1;0;2")
    for label, items in (("Services", services), ("Containers", containers), ("Sessions", sessions),
                         ("Processes", processes)):
        sev = SEVERITY[label.lower()]
        if items:
            status = max(status, sev)
        parts.append(f"{label}: {_mark(len(items), sev)}")
        warn, crit = ("0", "") if sev == WARNING else ("", "0")
        perf.append(f"'{label.lower()}'={len(items)};{warn};{crit};0;")
    if report.partial:
        parts.append(f"Unreadable: {report.unreadable}")
        perf.append(f"'unreadable'={report.unreadable};;;0;")
        if euid != 0:
            status = UNKNOWN
    text = ", ".join(parts)
    lines = [f"STALE {STATUS_WORDS[status]} - {text} | {' '.join(perf)}"]
    if report.partial and euid != 0:
        lines.append("not run as root: other users' processes could not be checked")
    for label, items in (("Services", services), ("Containers", containers), ("Sessions", sessions),
                         ("Processes", processes)):
        if items:
            lines.append(f"{label}:")
            lines.extend(f"- {_clean(i)}" for i in items)
    if report.refused:
        lines.append("Unreadable:")
        lines.extend(f"- pid {pid}" + (f" ({_clean(comm)})" if comm else "") for pid, comm in report.refused)
    return "\n".join(lines) + "\n", status


def _clean(text: str) -> str:
    # '|' would start the perfdata of a long-output line; control characters break the protocol.
    return "".join("?" if (ord(ch) < 0x20 or ch == "|" or 0xDC80 <= ord(ch) <= 0xDCFF) else ch for ch in text)
