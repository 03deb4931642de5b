"""needrestart's batch format (``needrestart -b``, the apt-dater protocol) for ``soswap stale --batch``.

Every line is ``KEY: value`` so that existing parsers (needrestart_info.py, apt-dater, Ansible roles grepping
``NEEDRESTART-KSTA: 3``) keep working:

- ``NEEDRESTART-VER``: the producer's version (``soswap-<version>``);
- ``NEEDRESTART-KCUR``/``-KEXP``/``-KSTA``: running kernel, newest installed, status 0-3;
- ``NEEDRESTART-SVC``: one line per system unit (``systemd-manager`` for PID 1, as needrestart prints);
- ``NEEDRESTART-CONT``: one per container;
- ``NEEDRESTART-SESS``: ``<user> @ session #<id>`` or ``<user> @ user manager service`` (user units too);
- ``NEEDRESTART-PID``: ``<comm>=<pid>,<pid>`` for processes outside any unit.
"""

from __future__ import annotations

from typing import Dict, List

from soswap import __version__
from soswap.proc.cgroup import KIND_MANAGER, KIND_SESSION, KIND_SYSTEM, KIND_USER, KIND_USER_MANAGER
from soswap.proc.model import StaleReport
from soswap.tuples import NamedTuple


def _user_name(uid: object) -> str:
    if not isinstance(uid, int):
        return "?"
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)


def _clean(text: str) -> str:
    # One line per record: no control characters, no undecodable bytes.
    return "".join(ch if 0x20 <= ord(ch) < 0x7F else "?" for ch in text)


class RestartTargets(NamedTuple):
    """What needs a restart, in needrestart's four groups (sorted, printable)."""

    services: List[str]  #: system units; ``systemd-manager`` for PID 1
    containers: List[str]
    sessions: List[str]  #: ``<user> @ session #<id>`` or ``<user> @ user manager service``
    loose: Dict[str, List[int]]  #: comm -> PIDs of processes outside any unit


def restart_targets(report: StaleReport) -> RestartTargets:
    """The stale processes of ``report`` grouped as needrestart groups them."""
    services: List[str] = []
    containers: List[str] = []
    sessions: List[str] = []
    loose: Dict[str, List[int]] = {}
    for p in sorted(report.processes, key=lambda p: p.pid):
        unit = p.unit
        if p.container is not None and (unit is None or unit.kind not in (KIND_SYSTEM, KIND_MANAGER)):
            entry = _clean(p.container)
            if entry not in containers:
                containers.append(entry)
        elif unit is None:
            if p.pid == 1 and p.comm == "systemd":  # another init in / is a process of its own
                entry = "systemd-manager"
                if entry not in services:
                    services.append(entry)
            else:
                # "=" and "," separate the fields of the PID line: a name holding them would read as more PIDs
                loose.setdefault(_clean(p.comm).replace("=", "?").replace(",", "?") or "?", []).append(p.pid)
        elif unit.kind == KIND_MANAGER:
            if "systemd-manager" not in services:
                services.append("systemd-manager")
        elif unit.kind == KIND_SYSTEM:
            entry = _clean(unit.name)
            if entry not in services:
                services.append(entry)
        elif unit.kind == KIND_SESSION:
            entry = f"{_clean(_user_name(unit.uid))} @ session #{_clean(unit.session or '?')}"
            if entry not in sessions:
                sessions.append(entry)
        elif unit.kind in (KIND_USER_MANAGER, KIND_USER):
            entry = f"{_clean(_user_name(unit.uid))} @ user manager service"
            if entry not in sessions:
                sessions.append(entry)
        else:  # container-kind unit without a container id cannot happen; keep it visible anyway
            containers.append(_clean(unit.name))
    return RestartTargets(sorted(services), sorted(containers), sorted(sessions), dict(sorted(loose.items())))


def render(report: StaleReport) -> str:
    lines = [f"NEEDRESTART-VER: soswap-{__version__}"]
    k = report.kernel
    if k is not None:
        lines.append(f"NEEDRESTART-KCUR: {_clean(k.running)}")
        if k.expected is not None:
            lines.append(f"NEEDRESTART-KEXP: {_clean(k.expected)}")
        lines.append(f"NEEDRESTART-KSTA: {k.status}")
    t = restart_targets(report)
    lines.extend(f"NEEDRESTART-SVC: {s}" for s in t.services)
    lines.extend(f"NEEDRESTART-CONT: {c}" for c in t.containers)
    lines.extend(f"NEEDRESTART-SESS: {s}" for s in t.sessions)
    lines.extend(f"NEEDRESTART-PID: {name}={','.join(str(p) for p in pids)}" for name, pids in t.loose.items())
    return "\n".join(lines) + "\n"
