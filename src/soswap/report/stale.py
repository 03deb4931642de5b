"""Human text and JSON for ``soswap stale`` and ``soswap users`` (renderers only; no decisions).

JSON schemas: docs/json-stale.md. Paths keep non-UTF-8 bytes as ``\\udcXX`` surrogate escapes (ensure_ascii).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from soswap.proc.cgroup import (
    KIND_CONTAINER,
    KIND_MANAGER,
    KIND_SESSION,
    KIND_SYSTEM,
    KIND_USER,
    KIND_USER_MANAGER,
)
from soswap.proc.model import StaleProcess, StaleReport, UsersReport
from soswap.report.output import json_text, one_line

STALE_SCHEMA = "soswap.stale/1"
USERS_SCHEMA = "soswap.users/1"

_KIND_ORDER = {KIND_MANAGER: 0, KIND_SYSTEM: 1, KIND_USER_MANAGER: 2, KIND_USER: 3, KIND_SESSION: 4,
               KIND_CONTAINER: 5}


def _printable(text: str) -> str:
    """One-line form of a path or argv for a terminal: control characters and undecodable bytes escaped."""
    if text.isprintable():
        return text
    return one_line("".join(f"\\x{ord(ch) - 0xDC00:02x}" if 0xDC80 <= ord(ch) <= 0xDCFF else ch for ch in text))


def group_key(proc: StaleProcess) -> Tuple:
    unit = proc.unit
    return (proc.container or "", _KIND_ORDER.get(unit.kind, 9) if unit else 10, unit.name if unit else "",
            proc.pid)


def groups(report: StaleReport) -> List[Tuple[Optional[str], str, List[StaleProcess]]]:
    """[(container, heading, processes)] in display order: forked workers of one unit are one group."""
    out: List[Tuple[Optional[str], str, List[StaleProcess]]] = []
    index: Dict[Tuple[Optional[str], str], int] = {}
    for proc in sorted(report.processes, key=group_key):
        heading = proc.unit.label() if proc.unit else "no unit"
        key = (proc.container, heading)
        if key not in index:
            index[key] = len(out)
            out.append((proc.container, heading, []))
        out[index[key]][2].append(proc)
    return out


def render_text(report: StaleReport, restart: Any = None) -> str:
    lines: List[str] = []
    if not report.processes:
        lines.append("No process runs stale code.")
    else:
        n_groups = len(groups(report))
        n = len(report.processes)
        lines.append(f"{n} process{'es run' if n != 1 else ' runs'} stale code "
                     f"({n_groups} group{'s' if n_groups != 1 else ''}):")
    current_container: Optional[str] = "\0"
    for container, heading, procs in groups(report):
        if container != current_container:
            current_container = container
            lines.append("")
            lines.append(f"container {container}:" if container else "host:")
        lines.append(f"  {heading}" + (f" ({len(procs)} processes)" if len(procs) > 1 else ""))
        for p in procs:
            argv = " ".join(_printable(a) for a in p.cmdline) or f"[{p.comm}]"
            if len(argv) > 100:
                argv = argv[:97] + "..."
            lines.append(f"    pid {p.pid} (uid {p.uid}) {_printable(p.exe)}: {argv}")
            for f in p.files:
                lines.append(f"      {f.role:<8} {f.kind:<9} {_printable(f.path)}")
                lines.append(f"      {'':<8} {'':<9}   {f.detail}")
    lines.append("")
    summary = f"scanned {report.scanned} process{'es' if report.scanned != 1 else ''}"
    if report.partial:
        hint = "run as root to see them" if os.geteuid() != 0 else "not even as root: another namespace or an LSM"
        who = refused_text(report.refused)
        summary += f"; PARTIAL: {report.unreadable} could not be read ({hint})" + (f": {who}" if who else "")
    if report.unverifiable:
        summary += (f"; {report.unverifiable} mapped path{'s' if report.unverifiable != 1 else ''} could not be "
                    "checked")
    if report.unstable:
        summary += (f"; {report.unstable} process{'es' if report.unstable != 1 else ''} exec()ed during every "
                    "attempt to read them (not checked)")
    if report.identical:
        summary += (f"; {report.identical} file{'s' if report.identical != 1 else ''} not reported: "
                    "reinstalled with identical content")
    lines.append(summary)
    if report.kernel is not None:
        k = report.kernel
        lines.append(f"kernel: {k.name} ({k.reason})")
    if restart is not None:
        lines.extend(render_restart(restart))
    return "\n".join(lines) + "\n"


#: At most this many refused processes are named in a text line (all of them are in the JSON).
_NAMED_REFUSED = 5


def refused_text(refused: Sequence[Tuple[int, str]], limit: int = _NAMED_REFUSED) -> str:
    """``pid 1 (systemd), pid 812 (sshd) and 3 more``: the processes that could not be read, for one line."""
    named = [f"pid {pid} ({_printable(comm)})" if comm else f"pid {pid}" for pid, comm in refused[:limit]]
    if len(refused) > limit:
        named.append(f"{len(refused) - limit} more")
    return f"{', '.join(named[:-1])} and {named[-1]}" if len(named) > 1 else "".join(named)


def _refused_json(refused: Sequence[Tuple[int, str]]) -> List[Dict[str, Any]]:
    return [{"pid": pid, "comm": comm or None} for pid, comm in refused]


def render_restart(outcome: Any) -> List[str]:
    lines = ["", "restart (dry run):" if outcome.dry_run else "restart:"]
    for note in outcome.notes:
        lines.append(f"  note: {note}")
    if not outcome.commands:
        lines.append("  nothing to restart")
    for c in outcome.commands:
        lines.append(f"  {c.describe(outcome.dry_run)}: {' '.join(c.argv)}    # {c.why}")
    for s in outcome.skipped:
        lines.append(f"  not restarted: {s.name}: {s.reason}")
    return lines


def render_summary(report: StaleReport, restart: Any = None) -> str:
    """A few lines for a package manager's output (``soswap hook apt``): what needs a restart, by group."""
    from soswap.report.batch import restart_targets

    n = len(report.processes)
    lines: List[str] = []
    partial = ""
    if report.partial:
        hint = "run as root" if os.geteuid() != 0 else "another namespace or an LSM"
        partial = (f" (partial: {report.unreadable} process{'es' if report.unreadable != 1 else ''} could not be "
                   f"read; {hint})")
    if not n:
        lines.append(f"soswap: no process runs old code{partial or '.'}")
    else:
        t = restart_targets(report)
        lines.append(f"soswap: {n} process{'es run' if n != 1 else ' runs'} old code (details: soswap stale){partial}")
        if t.services:
            hint = "" if restart is not None else "   (soswap stale --restart)"
            lines.append(f"  services: {' '.join(t.services)}{hint}")
        if t.sessions:
            lines.append(f"  user sessions: {', '.join(t.sessions)}")
        if t.containers:
            lines.append(f"  containers: {' '.join(t.containers)}")
        if t.loose:
            lines.append("  processes: " + " ".join(f"{name}={','.join(map(str, pids))}"
                                                    for name, pids in t.loose.items()))
    k = report.kernel
    if k is not None and k.needs_reboot:
        lines.append(f"soswap: reboot to run kernel {k.expected or '?'} (running {k.running}: {k.reason})")
    if restart is not None:
        lines.extend(line for line in render_restart(restart) if line)
    return "\n".join(lines) + "\n"


def process_json(p: StaleProcess) -> Dict[str, Any]:
    unit = p.unit
    return {
        "pid": p.pid,
        "ppid": p.ppid,
        "uid": p.uid,
        "starttime": p.starttime,
        "comm": p.comm,
        "exe": p.exe,
        "cmdline": list(p.cmdline),
        "unit": unit.name if unit else None,
        "unit_type": unit.kind if unit else None,
        "session": unit.session if unit else None,
        "container": p.container,
        "cgroup": p.cgroup,
        "files": [
            {"path": f.path, "kind": f.kind, "role": f.role, "detail": f.detail, "dev": f.dev, "inode": f.inode}
            for f in p.files
        ],
    }


def report_json(report: StaleReport, restart: Any = None) -> Dict[str, Any]:
    k = report.kernel
    doc: Dict[str, Any] = {
        "schema": STALE_SCHEMA,
        "processes": [process_json(p) for p in sorted(report.processes, key=lambda p: p.pid)],
        "partial": report.partial,
        "scanned": report.scanned,
        "unreadable": report.unreadable,
        "unreadable_processes": _refused_json(report.refused),
        "unverifiable": report.unverifiable,
        "unstable": report.unstable,
        "identical": report.identical,
        "kernel": None if k is None else {
            "status": k.status, "state": k.name, "running": k.running, "running_build": k.running_build,
            "expected": k.expected, "reason": k.reason,
        },
    }
    if restart is not None:
        doc["restart"] = {
            "dry_run": restart.dry_run,
            "systemd": restart.systemd,
            "commands": [{"argv": list(c.argv), "why": c.why, "run": c.run, "returncode": c.returncode,
                          "error": c.error} for c in restart.commands],
            "skipped": [{"unit": s.name, "reason": s.reason} for s in restart.skipped],
            "notes": list(restart.notes),
        }
    return doc


def render_json(report: StaleReport, restart: Any = None) -> str:
    return json_text(report_json(report, restart)) + "\n"


# -- soswap users ----------------------------------------------------------------------------------------------
def users_json(report: UsersReport) -> Dict[str, Any]:
    return {
        "path": report.path,
        "exists": report.exists,
        "dev": report.dev,
        "inode": report.inode,
        "partial": report.partial,
        "unreadable_processes": _refused_json(report.refused),
        "processes": [
            {"pid": u.pid, "exe": u.exe, "cmdline": list(u.cmdline), "how": list(u.how), "version": u.version,
             "dev": u.dev, "inode": u.inode, "unit": u.unit.name if u.unit else None, "container": u.container}
            for u in report.uses
        ],
    }


def render_users_json(reports: Sequence[UsersReport]) -> str:
    if len(reports) == 1:
        doc: Any = users_json(reports[0])
    else:
        doc = [users_json(r) for r in reports]
    return json_text(doc) + "\n"


def render_users_text(reports: Sequence[UsersReport]) -> str:
    lines: List[str] = []
    for r in reports:
        where = f"inode {r.inode}" if r.exists else "no file at this path now"
        lines.append(f"{_printable(r.path)} ({where}):")
        if not r.uses:
            lines.append("  no process uses it")
        for u in r.uses:
            argv = " ".join(_printable(a) for a in u.cmdline)
            if len(argv) > 80:
                argv = argv[:77] + "..."
            unit = f" [{u.unit.name}]" if u.unit else ""
            lines.append(f"  pid {u.pid:<7} {','.join(u.how):<16} {u.version:<7} {argv}{unit}")
        if r.partial:
            who = refused_text(r.refused)
            lines.append("  (partial: some processes could not be read" + (f": {who})" if who else ")"))
    return "\n".join(lines) + "\n"
