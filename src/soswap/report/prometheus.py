"""Prometheus text exposition for ``soswap stale --prometheus FILE`` (node_exporter textfile collector).

Gauges only, no client-side timestamps (they make the collector skip the whole file), names prefixed
``soswap_`` in base units. The file is written atomically: a temporary file in the same directory (its name
does not end in ``.prom``, so the collector never reads it half-written), fsync, chmod 0644, rename.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

from soswap.proc.cgroup import KIND_MANAGER, KIND_SESSION, KIND_SYSTEM, KIND_USER, KIND_USER_MANAGER
from soswap.proc.model import KINDS, ROLES, StaleReport


def _escape(value: str) -> str:
    # Label values are UTF-8: undecodable path bytes (surrogate escapes) become U+FFFD.
    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[Tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _unit_type(p) -> Tuple[str, str]:  # type: ignore[no-untyped-def]
    unit = p.unit
    if p.container is not None and (unit is None or unit.kind not in (KIND_SYSTEM, KIND_MANAGER)):
        return "container", p.container
    if unit is None:
        return "process", f"{p.comm}[{p.pid}]"
    if unit.kind in (KIND_SYSTEM, KIND_MANAGER):
        return "service", unit.name
    if unit.kind == KIND_SESSION:
        return "session", unit.name
    if unit.kind in (KIND_USER, KIND_USER_MANAGER):
        return "user", f"{unit.name} (uid {unit.uid})"
    return "container", unit.name


def render(report: StaleReport) -> str:
    out: List[str] = []

    def metric(name: str, help_text: str, samples: List[Tuple[Dict[str, str], float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            text = repr(float(value)) if not float(value).is_integer() else str(int(value))
            out.append(f"{name}{_labels(sorted(labels.items()))} {text}")

    metric("soswap_stale_processes", "Processes running deleted, replaced, modified or truncated code.",
           [({}, len(report.processes))])
    units: Dict[Tuple[str, str], int] = {}
    for p in report.processes:
        key = _unit_type(p)
        units[key] = units.get(key, 0) + 1
    by_type = {t: 0 for t in ("service", "session", "user", "container", "process")}
    for (t, _), _n in units.items():
        by_type[t] += 1
    metric("soswap_stale_units", "Units (services, sessions, user units, containers, loose processes) with "
           "stale processes.", [({"type": t}, n) for t, n in sorted(by_type.items())])
    metric("soswap_stale_unit_processes", "Stale processes per unit.",
           [({"type": t, "unit": name}, n) for (t, name), n in sorted(units.items())])
    files: Dict[Tuple[str, str], int] = {(k, r): 0 for k in KINDS for r in ROLES}
    for p in report.processes:
        for f in p.files:
            files[(f.kind, f.role)] = files.get((f.kind, f.role), 0) + 1
    metric("soswap_stale_files", "Stale (process, file) pairs by kind and role.",
           [({"kind": k, "role": r}, n) for (k, r), n in sorted(files.items())])
    k = report.kernel
    if k is not None:
        metric("soswap_kernel_status", "Kernel status: 0 unknown, 1 current, 2 ABI upgrade, 3 version upgrade.",
               [({"current": k.running, "expected": k.expected or ""}, k.status)])
    metric("soswap_stale_scan_partial", "1 when some processes could not be read.", [({}, int(report.partial))])
    metric("soswap_stale_scanned_processes", "Processes examined by the last scan.", [({}, report.scanned)])
    metric("soswap_stale_unreadable_processes", "Processes the kernel refused to show.", [({}, report.unreadable)])
    metric("soswap_stale_unstable_processes", "Processes that exec()ed during every attempt to read them.",
           [({}, report.unstable)])
    metric("soswap_stale_identical_files", "Deleted or replaced files not reported: identical content "
           "(--ignore-identical).", [({}, report.identical)])
    metric("soswap_stale_last_scan_timestamp_seconds", "When the last scan started (Unix time).",
           [({}, round(report.scan_time, 3))])
    return "\n".join(out) + "\n"
