"""The process environment the loader would see: ``LD_LIBRARY_PATH``, ``LD_PRELOAD``, ``LD_BIND_NOW``, the
working directory, secure (AT_SECURE) mode and the CPU features ``GLIBC_TUNABLES`` turns off."""

from __future__ import annotations

import os
import stat
from typing import Mapping, NamedTuple, Optional, Tuple

from soswap.loader.cpu import tunable_disabled_flags


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
    #: sorted (the repr is part of kept results' keys)
    cpu_disabled: Tuple[str, ...] = ()
    #: The real and effective user/group IDs of the caller, to decide AT_SECURE for set-ID programs.
    uid: int = 0
    gid: int = 0
    euid: int = 0
    egid: int = 0

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
        )

    def replace(self, **changes: object) -> Environment:
        return self._replace(**changes)  # type: ignore[arg-type]

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
