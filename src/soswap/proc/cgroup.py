"""From ``/proc/PID/cgroup`` to the systemd unit, login session or container a process belongs to.

The cgroup path is taken from the v1 ``N:name=systemd:`` line when there is one (legacy and hybrid layouts), else
from the v2 ``0::`` line (cgroups(7)). Its components are then read like systemd does (``cg_path_get_unit``,
``cg_path_get_session``, ``cg_path_get_user_unit``): slices are skipped, the first ``.service``/``.scope``
names the unit, and whatever a service created below itself (a delegated subtree) belongs to that service.
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

from soswap.tuples import NamedTuple

#: Unit kinds, in the order the human report lists them.
KIND_MANAGER = "manager"  # PID 1: /init.scope
KIND_SYSTEM = "system"  # a system service or scope
KIND_USER_MANAGER = "user-manager"  # systemd --user: user@UID.service/init.scope
KIND_USER = "user"  # a unit of a user manager
KIND_SESSION = "session"  # a login session scope
KIND_CONTAINER = "container"  # docker/podman/containerd/cri-o/lxc/nspawn/VM


class Unit(NamedTuple):
    """Where a process belongs. ``name`` is the systemd unit name (escapes such as ``\\x2d`` kept as is)."""

    kind: str
    name: str
    uid: Optional[int] = None  #: owner for user units, user managers and sessions
    session: Optional[str] = None  #: session id for sessions
    transient: bool = False  #: systemd-run's run-*.service / run-*.scope

    def label(self) -> str:
        if self.kind == KIND_SESSION:
            return f"session {self.session} (uid {self.uid})"
        if self.kind == KIND_USER:
            return f"user unit {self.name} (uid {self.uid})"
        if self.kind == KIND_USER_MANAGER:
            return f"user manager {self.name}"
        if self.kind == KIND_MANAGER:
            return "system manager (PID 1)"
        if self.kind == KIND_CONTAINER:
            return f"container {self.name}"
        return f"unit {self.name}"


class CgroupInfo(NamedTuple):
    path: str  #: the systemd-relevant cgroup path ("" when none)
    unit: Optional[Unit]
    container: Optional[str]  #: container id/name when the cgroup says so


# Expressions are kept as text and compiled by re on first use (its cache keeps them): most scans never need
# them, since only stale processes are grouped.
_USER_SLICE_RE = r"^user-(\d+)\.slice$"
_USER_MANAGER_RE = r"^user@(\d+)\.service$"
_SESSION_RE = r"^session-(.+)\.scope$"

# Container runtimes, by the component that carries the id.
_CONTAINER_PATTERNS = (
    (r"^docker-([0-9a-f]{12,})\.scope$", "docker"),
    (r"^libpod-(?:conmon-)?([0-9a-f]{12,})\.scope$", "podman"),
    (r"^cri-containerd-([0-9a-f]{12,})\.scope$", "containerd"),
    (r"^crio-(?:conmon-)?([0-9a-f]{12,})\.scope$", "cri-o"),
    (r"^machine-(.+)\.scope$", "machine"),
    (r"^lxc\.payload\.(.+)$", "lxc"),
)


def select_path(data: bytes) -> str:
    """The cgroup path systemd manages, from the whole /proc/PID/cgroup text ("" if none)."""
    v2 = None
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        hid, sep, rest = line.partition(":")
        if not sep:
            continue
        controllers, sep, path = rest.partition(":")
        if not sep:
            continue
        if controllers == "name=systemd":
            return path
        if hid == "0" and controllers == "":
            v2 = path
    return v2 or ""


def _container_of(parts: Tuple[str, ...]) -> Optional[str]:
    for comp in parts:
        for pattern, runtime in _CONTAINER_PATTERNS:
            m = re.match(pattern, comp)
            if m:
                return f"{runtime}:{m.group(1)}"
    for i, comp in enumerate(parts):
        # cgroupfs drivers: /docker/<id>, /lxc/<name>, /kubepods/.../<id>
        if comp in ("docker", "lxc", "libpod_parent") and i + 1 < len(parts):
            return f"{comp}:{parts[i + 1]}"
        if comp.startswith("kubepods") and i + 2 < len(parts):
            return f"kubernetes:{parts[-1]}"
    return None


def classify(path: str) -> CgroupInfo:
    """Classify a systemd cgroup path (see module doc)."""
    parts = tuple(p for p in path.split("/") if p)
    container = _container_of(parts)
    if parts == ("init.scope",):
        return CgroupInfo(path, Unit(KIND_MANAGER, "init.scope"), None)
    uid: Optional[int] = None
    i = 0
    while i < len(parts) and parts[i].endswith(".slice"):
        m = re.match(_USER_SLICE_RE, parts[i])
        if m:
            uid = int(m.group(1))
        i += 1
    if i >= len(parts):
        return CgroupInfo(path, None, container)
    first = parts[i]
    m = re.match(_USER_MANAGER_RE, first)
    if m:
        owner = int(m.group(1))
        rest = parts[i + 1 :]
        if not rest or rest == ("init.scope",):
            return CgroupInfo(path, Unit(KIND_USER_MANAGER, first, uid=owner), container)
        j = 0
        while j < len(rest) and rest[j].endswith(".slice"):
            j += 1
        if j < len(rest) and (rest[j].endswith(".service") or rest[j].endswith(".scope")):
            name = rest[j]
            return CgroupInfo(path, Unit(KIND_USER, name, uid=owner, transient=_transient(name)), container)
        return CgroupInfo(path, Unit(KIND_USER_MANAGER, first, uid=owner), container)
    m = re.match(_SESSION_RE, first)
    if m:
        return CgroupInfo(path, Unit(KIND_SESSION, first, uid=uid, session=m.group(1)), container)
    if container is not None and not first.endswith(".service"):
        return CgroupInfo(path, Unit(KIND_CONTAINER, container), container)
    if first.endswith(".service") or first.endswith(".scope"):
        return CgroupInfo(path, Unit(KIND_SYSTEM, first, transient=_transient(first)), container)
    if container is not None:
        return CgroupInfo(path, Unit(KIND_CONTAINER, container), container)
    return CgroupInfo(path, None, None)


def _transient(name: str) -> bool:
    # systemd-run names its units run-u<N>.service / run-r<hash>.scope (or run-<N>.service in old releases).
    return bool(re.match(r"^run-[ur]?[0-9a-f]+\.(service|scope)$", name))


def parse(data: bytes) -> CgroupInfo:
    """Classify the contents of /proc/PID/cgroup."""
    return classify(select_path(data))
