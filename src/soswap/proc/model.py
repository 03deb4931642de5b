"""Result values of the /proc engine (immutable, comparable, JSON-friendly through soswap.report).

NamedTuples rather than dataclasses: ``dataclasses`` imports ``inspect``, which costs more start-up time than
the whole scan of a small machine.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, FrozenSet, Mapping, Optional, Tuple

from soswap.tuples import NamedTuple

if TYPE_CHECKING:  # annotations only: keep the start-up of `soswap stale --no-kernel` lean
    from soswap.proc.cgroup import Unit
    from soswap.proc.kernel import KernelStatus

#: The four kinds of stale file.
DELETED = "deleted"  # the mapped inode was unlinked from its name (" (deleted)") and has no other name
REPLACED = "replaced"  # the mapped inode lives on under another name, or the name points to another inode
MODIFIED = "modified"  # same inode, content changed after the process started (in-place write)
TRUNCATED = "truncated"  # the file is now shorter than the mapping: SIGBUS on access
KINDS = (DELETED, REPLACED, MODIFIED, TRUNCATED)

#: Roles of a file in a process.
ROLE_EXE = "exe"
ROLE_LIBRARY = "library"  # mapped with PROT_EXEC
ROLE_MAPPED = "mapped"  # mapped without PROT_EXEC (data: locale-archive, caches, databases)
ROLE_SCRIPT = "script"  # the script an interpreter runs
ROLE_OPEN = "open"  # only held as an open file descriptor (--fds)
ROLES = (ROLE_EXE, ROLE_LIBRARY, ROLE_MAPPED, ROLE_SCRIPT, ROLE_OPEN)


class StaleFile(NamedTuple):
    """One stale file of one process."""

    path: str  #: as the process sees it (inside its own root), " (deleted)" removed
    kind: str  #: one of KINDS
    role: str  #: one of ROLES
    detail: str  #: one human sentence: what was observed
    dev: int  #: device of the mapped (old) inode, userspace encoding
    inode: int  #: the mapped (old) inode


class StaleProcess(NamedTuple):
    """A process that runs (or maps) stale code, with where it belongs."""

    pid: int
    ppid: int
    uid: Optional[int]
    starttime: int  #: clock ticks after boot: (pid, starttime) identifies the process across PID reuse
    comm: str
    exe: str
    cmdline: Tuple[str, ...]
    unit: Optional[Unit]
    container: Optional[str]  #: runtime:id from the cgroup, or "mntns:<inode>"/"pidns:<inode>" for bare namespaces
    cgroup: str
    files: Tuple[StaleFile, ...]

    @property
    def kinds(self) -> FrozenSet[str]:
        return frozenset(f.kind for f in self.files)


class StaleReport(NamedTuple):
    """The result of one scan."""

    processes: Tuple[StaleProcess, ...]
    partial: bool  #: some processes could not be read (EACCES): the report may miss some
    scanned: int  #: processes examined (kernel threads and zombies excluded)
    unreadable: int  #: processes the kernel refused to show
    unverifiable: int  #: mappings whose path could not be checked (other root not visible, stat refused/timed out)
    kernel: Optional[KernelStatus]
    scan_time: float = 0.0  #: wall-clock time of the scan, seconds (realtime, for the prometheus timestamp)
    unstable: int = 0  #: processes that exec()ed (or lost a mapping) during every attempt to read them
    identical: int = 0  #: deleted/replaced files not reported: identical content (--ignore-identical)
    #: (pid, comm) of each process counted in ``unreadable``, in scan order (comm "" when not readable either)
    refused: Tuple[Tuple[int, str], ...] = ()

    @property
    def stale(self) -> bool:
        return bool(self.processes)


class FileRecord(NamedTuple):
    """What soswap.replace records of a file it installed (the optional journal hook)."""

    size: int
    mtime_ns: int
    sha256: Optional[str] = None


class JournalView(NamedTuple):
    """Facts from a replace journal that the scan may consult; every field is optional.

    - ``replaced``: (st_dev, st_ino) of old inodes that a replacement superseded. A process still mapping one
      of them is ``replaced`` even when nothing else shows it (renamed away: ``mv lib lib.bak``).
    - ``installed``: (st_dev, st_ino) -> FileRecord of files soswap installed. A mapped inode whose size and
      mtime still match its record holds exactly the installed content, so a recent mtime is not a
      "modified" (it was loaded after the install, e.g. dlopen'ed later).
    - ``replaced_records``: (st_dev, st_ino) -> FileRecord of old inodes a replacement superseded (their keys
      count as ``replaced`` too). With ``--ignore-identical``, the SHA-256 of an old version (``install
      --hash``) and of the installed one are compared without reading either file.
    """

    replaced: FrozenSet[Tuple[int, int]] = frozenset()
    installed: Mapping[Tuple[int, int], FileRecord] = MappingProxyType({})
    replaced_records: Mapping[Tuple[int, int], FileRecord] = MappingProxyType({})


class FileUse(NamedTuple):
    """How one process uses one file (``soswap users``)."""

    pid: int
    starttime: int
    exe: str
    cmdline: Tuple[str, ...]
    how: Tuple[str, ...]  #: subset of ("exe", "mapped", "open")
    version: str  #: "current" (the inode now at the path) or "old"
    dev: int
    inode: int
    unit: Optional[Unit] = None
    container: Optional[str] = None


class UsersReport(NamedTuple):
    path: str
    exists: bool
    dev: Optional[int]
    inode: Optional[int]
    uses: Tuple[FileUse, ...]
    partial: bool
    #: (pid, comm) of the processes that could not be read (comm "" when not readable either)
    refused: Tuple[Tuple[int, str], ...] = ()
