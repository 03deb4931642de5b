"""The process environment the loader would see: ``LD_LIBRARY_PATH``, ``LD_PRELOAD``, ``LD_BIND_NOW``, the
working directory, secure (AT_SECURE) mode and the CPU features ``GLIBC_TUNABLES`` turns off."""

from __future__ import annotations

import functools
import os
import stat
from typing import FrozenSet, Mapping, Optional, Tuple

from soswap.loader.cpu import tunable_disabled_flags, tunables_effect
from soswap.tuples import NamedTuple


class Environment(NamedTuple):
    """What the loader reads from the process. ``None`` means "unset" for the variables."""

    library_path: Optional[str] = None
    preload: Optional[str] = None
    bind_now: bool = False
    cwd: str = "/"
    #: AT_SECURE: True/False to force it, None to decide per program from its set-ID bits and the caller.
    secure: Optional[bool] = None
    origin_path: Optional[str] = None
    inhibit_cache: bool = False
    use_preload_file: bool = True
    #: ``--glibc-hwcaps-mask``: only these glibc-hwcaps subdirectories (None: all active ones).
    hwcaps_mask: Optional[Tuple[str, ...]] = None
    #: ``LD_DYNAMIC_WEAK``: a weak definition loses to a later strong one.
    dynamic_weak: bool = False
    #: /proc/cpuinfo flags ``GLIBC_TUNABLES=glibc.cpu.hwcaps=-NAME`` turns off (``cpu.tunable_disabled_flags``),
    #: sorted (the repr is part of kept results' keys); never in secure mode (:meth:`cpu_disabled_for`)
    cpu_disabled: Tuple[str, ...] = ()
    #: The real and effective user/group IDs of the caller, to decide AT_SECURE for set-ID programs.
    uid: int = 0
    gid: int = 0
    euid: int = 0
    egid: int = 0
    #: The text of ``GLIBC_TUNABLES`` (None: unset or not known), for the rules of the release that reads it
    #: (``cpu.tunables_effect``: glibc >= 2.39 ignores a malformed one, >= 2.40 knows
    #: ``glibc.rtld.enable_secure``).
    tunables: Optional[str] = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, cwd: Optional[str] = None,
                     secure: Optional[bool] = None) -> Environment:
        """The environment of a process started with ``environ`` in ``cwd`` (default: ours).

        ``LD_BIND_NOW`` counts when set to a non-empty value (``_dl_non_dynamic_init``/``process_envvars``).
        """
        return cls(
            library_path=environ.get("LD_LIBRARY_PATH"),
            preload=environ.get("LD_PRELOAD"),
            bind_now=bool(environ.get("LD_BIND_NOW")),
            cwd=cwd if cwd is not None else _getcwd(),
            secure=secure,
            origin_path=environ.get("LD_ORIGIN_PATH"),
            dynamic_weak=bool(environ.get("LD_DYNAMIC_WEAK")),
            cpu_disabled=tuple(sorted(tunable_disabled_flags(environ.get("GLIBC_TUNABLES")))),
            uid=os.getuid(),
            gid=os.getgid(),
            euid=os.geteuid(),
            egid=os.getegid(),
            tunables=environ.get("GLIBC_TUNABLES"),
        )

    def replace(self, **changes: object) -> Environment:
        return self._replace(**changes)  # type: ignore[arg-type]

    def cpu_disabled_for(self, glibc: Tuple[int, int]) -> FrozenSet[str]:
        """The CPU features ld.so of release ``glibc`` turns off for ``GLIBC_TUNABLES`` in a process the kernel
        did not start in secure mode (an AT_SECURE one never reads ``glibc.cpu.hwcaps``): ``cpu_disabled``, or
        none when that release ignores the whole text (``cpu.tunables_effect``)."""
        if not self.cpu_disabled or not tunables_effect(self.tunables, glibc)[0]:
            return frozenset()
        return frozenset(self.cpu_disabled)

    def tunables_secure(self, glibc: Tuple[int, int]) -> bool:
        """``GLIBC_TUNABLES`` holds ``glibc.rtld.enable_secure=1`` and ld.so of release ``glibc`` (>= 2.40) reads
        it: every run is in secure mode, ``ld.so --list`` too."""
        return tunables_effect(self.tunables, glibc)[1]

    def is_secure_for(self, st: Optional[os.stat_result], path: Optional[str] = None) -> bool:
        """AT_SECURE for a program with stat result ``st`` (at host ``path``) started by this caller (``secure``
        forces it): set when the exec changes the effective user or group ID (a set-ID bit and a different
        owner), or gives a caller other than root file capabilities (``cap_bprm_creds_from_file``). A
        ``nosuid`` mount disables both."""
        if self.secure is not None:
            return self.secure
        if st is None:
            return False
        if path is not None and mount_nosuid(path):
            return self.euid != self.uid or self.egid != self.gid
        euid = st.st_uid if st.st_mode & stat.S_ISUID else self.euid
        egid = st.st_gid if st.st_mode & stat.S_ISGID else self.egid
        if euid != self.uid or egid != self.gid:
            return True
        return path is not None and self.uid != 0 and _file_capabilities(path)

    def may_execute(self, st: os.stat_result, path: str) -> bool:
        """This caller may execute the file with stat result ``st`` at host ``path`` (``do_open_execat`` →
        ``may_open`` → ``inode_permission(MAY_EXEC)``). For our own identity the kernel is asked (``faccessat``
        with AT_EACCESS: ACLs and dropped capabilities count); for another, the mode bits: root needs any execute
        bit (``generic_permission``), anyone else the owner's, the group's or the others' bit that applies."""
        if (self.uid, self.euid, self.gid, self.egid) == _own_ids():
            try:
                return os.access(path, os.X_OK, effective_ids=os.access in os.supports_effective_ids)
            except (OSError, ValueError):
                return True  # not known: execve is not predicted to fail
        return mode_allows_execute(st, self.euid, self.egid)


@functools.lru_cache(maxsize=1)
def _own_ids() -> Tuple[int, int, int, int]:
    """(uid, euid, gid, egid) of this process, read once (soswap never changes them)."""
    return os.getuid(), os.geteuid(), os.getgid(), os.getegid()


def mode_allows_execute(st: os.stat_result, euid: int, egid: int) -> bool:
    """The mode bits of ``st`` let a process with these effective IDs execute the file (``generic_permission``:
    root, with CAP_DAC_OVERRIDE, needs any execute bit; anyone else the owner's, the group's or the others' bit,
    whichever class it is in; supplementary groups and ACLs are not known here)."""
    mode = st.st_mode
    if euid == 0:
        return bool(mode & 0o111)
    if st.st_uid == euid:
        return bool(mode & stat.S_IXUSR)
    if st.st_gid == egid:
        return bool(mode & stat.S_IXGRP)
    return bool(mode & stat.S_IXOTH)


def mount_nosuid(path: str) -> bool:
    """The file at ``path`` is on a ``nosuid`` mount (set-ID bits and file capabilities do nothing there)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_NOSUID)
    except OSError:
        return False


def _file_capabilities(path: str) -> bool:
    """The file grants permitted capabilities (its ``security.capability`` attribute, struct vfs_cap_data)."""
    try:
        data = os.getxattr(path, "security.capability")
    except (OSError, AttributeError):
        return False
    if len(data) < 12:
        return False
    permitted = int.from_bytes(data[4:8], "little")
    if len(data) >= 20:
        permitted |= int.from_bytes(data[12:16], "little") << 32
    return permitted != 0


def _getcwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return "/"
