"""The safe restart policy: which stale units may be restarted, and how.

Rules (needrestart's ``override_rc`` and systemd practice):

- system services not on the deny-list → one batched ``systemctl try-restart`` (restarts only active units);
- units on the deny-list (dbus, display managers, networking, getty, ``user@``, logind, container and VM
  managers, oneshot maintenance jobs) → reported, never restarted: restarting them cuts sessions or networks;
- units with ``RefuseManualStop=yes`` → skipped (systemctl would fail on them);
- the units soswap itself and its ancestors run in (an apt hook run by a configuration agent's service) →
  skipped: stopping one kills soswap, and whatever called it, in the middle of their work;
- PID 1 (``/init.scope``, or systemd in ``/``) → ``systemctl daemon-reexec``, never a restart; another init in
  ``/`` is reported on its own;
- a user manager (``user@UID.service/init.scope``) → reported with the reexec command for it;
- login sessions, user units, containers and processes outside any unit → reported only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Pattern, Sequence, Tuple

from soswap.errors import SoswapError
from soswap.proc import procfs
from soswap.proc.cgroup import (
    KIND_MANAGER,
    KIND_SESSION,
    KIND_SYSTEM,
    KIND_USER,
    KIND_USER_MANAGER,
    parse,
)
from soswap.proc.model import StaleReport

#: Units never restarted automatically (regexes on the unit name; overridable).
DEFAULT_DENY: Tuple[str, ...] = (
    r"^dbus(-broker)?\.service$",
    r"^(gdm|gdm3|sddm|lightdm|xdm|lxdm|slim|kdm|nodm|wdm|display-manager)\.service$",
    r"^(NetworkManager(-dispatcher|-wait-online)?|network-manager|network|networking|systemd-networkd|systemd-resolved|"
    r"wpa_supplicant(-[^@.]+)?(@.*)?|openvpn.*|strongswan.*|.*swan|ipsec|frr|quagga|bird.*|ifup@.*|iwd|"
    r"tinc(@.*)?|wg-quick@.*|dhcpcd(@.*)?|openvswitch.*|ovsdb-server|ovs-vswitchd|tailscaled|zerotier-one)"
    r"\.service$",
    r"^(systemd-journald(@.*)?|zfs-fuse|mythtv-backend)\.service$",
    r"^(getty|serial-getty|container-getty|autovt)@.*\.service$",
    r"^user@\d+\.service$",
    r"^systemd-logind\.service$",
    r"^(emergency|rescue)\.service$",
    r"^(apt-daily|apt-daily-upgrade|unattended-upgrades|cron-.*|rc-local)\.service$",
    r"^(libvirtd|libvirt-guests|virtqemud|lxc(@.*|-net|-monitord)?|lxcfs|lxd|snap\.lxd\..*|incus.*|docker|"
    r"containerd|podman|systemd-nspawn@.*|xendomains|systemd-machined)\.service$",
)


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


@dataclass(frozen=True)
class Member:
    """A stale process that justifies an action (re-checked by PID + start time before acting)."""

    pid: int
    starttime: int


@dataclass(frozen=True)
class RestartPlan:
    restart: Tuple[str, ...]  #: system units for one ``systemctl try-restart``
    reexec_manager: bool  #: PID 1 runs stale code: ``systemctl daemon-reexec``
    user_managers: Tuple[int, ...]  #: uids whose ``systemd --user`` runs stale code (reported, with a command)
    skipped: Tuple[Skipped, ...]  #: units not restarted and why
    sessions: Tuple[str, ...]  #: "uid N session S"
    containers: Tuple[str, ...]
    processes: Tuple[int, ...]  #: stale processes outside any unit
    members: Dict[str, Tuple[Member, ...]]  #: unit -> processes that made it stale

    @property
    def empty(self) -> bool:
        return not (self.restart or self.reexec_manager)


class Policy:
    """Which units of a :class:`StaleReport` to restart. ``own``: the system units never restarted because soswap
    runs in them (default: :func:`own_units`, read when a plan is made)."""

    def __init__(self, deny: Sequence[str] = DEFAULT_DENY, extra_deny: Sequence[str] = (),
                 own: Optional[FrozenSet[str]] = None) -> None:
        self.deny: List[Pattern[str]] = [re.compile(p) for p in (*deny, *extra_deny)]
        self.own = own

    def denied(self, unit: str) -> bool:
        return any(p.search(unit) for p in self.deny)

    def plan(self, report: StaleReport) -> RestartPlan:
        own = self.own if self.own is not None else own_units()
        restart: List[str] = []
        skipped: Dict[str, Skipped] = {}
        sessions, containers, processes, user_managers = [], [], [], []
        members: Dict[str, List[Member]] = {}
        reexec = False
        for proc in report.processes:
            unit = proc.unit
            member = Member(proc.pid, proc.starttime)
            if proc.container is not None:  # a container under a service too: reported only, as it is grouped
                _add(containers, proc.container)
                continue
            if unit is None:
                if proc.pid == 1 and proc.comm == "systemd":  # another init (tini, sysvinit) has no re-exec
                    reexec = True
                    members.setdefault("init.scope", []).append(member)
                else:
                    _add(processes, proc.pid)
                continue
            if unit.kind == KIND_MANAGER:
                reexec = True
                members.setdefault(unit.name, []).append(member)
            elif unit.kind == KIND_USER_MANAGER:
                if unit.uid is not None:
                    _add(user_managers, unit.uid)
            elif unit.kind == KIND_SESSION:
                _add(sessions, f"uid {unit.uid} session {unit.session}")
            elif unit.kind == KIND_USER:
                skipped.setdefault(unit.name, Skipped(f"{unit.name} (uid {unit.uid})",
                                                      "user unit: reported only"))
            elif unit.kind == KIND_SYSTEM:
                members.setdefault(unit.name, []).append(member)
                if unit.name in own:
                    skipped.setdefault(unit.name, Skipped(unit.name, "soswap runs in it: restart it once soswap "
                                                                     "and what started it have ended"))
                elif self.denied(unit.name):
                    skipped.setdefault(unit.name, Skipped(unit.name, "on the deny-list"))
                elif unit.name.endswith(".scope"):
                    skipped.setdefault(unit.name, Skipped(unit.name, "a scope cannot be restarted"))
                else:
                    _add(restart, unit.name)
            else:  # pragma: no cover - every kind is handled above
                _add(processes, proc.pid)
        return RestartPlan(tuple(sorted(restart)), reexec, tuple(sorted(user_managers)),
                           tuple(skipped[k] for k in sorted(skipped)), tuple(sessions), tuple(sorted(containers)),
                           tuple(processes), {k: tuple(v) for k, v in members.items()})


def own_units(pid: Optional[int] = None) -> FrozenSet[str]:
    """The system units process ``pid`` (default: this one) and its ancestors run in, from ``/proc/PID/cgroup``
    up the parent chain (``/proc/PID/stat``). Whatever cannot be read ends the walk."""
    units = set()
    pid = os.getpid() if pid is None else pid
    for _ in range(4096):  # a parent chain is never that long; a loop in what /proc says ends here
        if pid <= 1:
            break
        try:
            unit = parse(procfs.read_file(pid, "cgroup")).unit
            ppid = procfs.read_stat(pid).ppid
        except (SoswapError, OSError):
            break
        if unit is not None and unit.kind == KIND_SYSTEM:
            units.add(unit.name)
        pid = ppid
    return frozenset(units)


def _add(items: list, value: object) -> None:
    if value not in items:
        items.append(value)


def default_policy(extra_deny: Optional[Sequence[str]] = None) -> Policy:
    return Policy(extra_deny=tuple(extra_deny or ()))
