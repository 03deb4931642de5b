"""Low-level readers of ``/proc/PID/*``, all as bytes, with typed races.

Every reader turns the kernel's answers into values or into one of two typed events:

- :class:`soswap.errors.ProcessGone` — the process exited (``ENOENT``/``ESRCH``) or its PID now belongs to
  another process (checked by the caller through the start time);
- :class:`soswap.errors.AccessDenied` — the kernel refused (``EACCES``/``EPERM``: another user's process without
  ``CAP_SYS_PTRACE``, a hardened PID 1, ``hidepid``).

Nothing here decodes text: paths stay bytes until a result is built (then ``os.fsdecode``).
"""

from __future__ import annotations

import errno
import os
from typing import Dict, List, Optional, Tuple

from soswap.errors import AccessDenied, ProcessGone
from soswap.tuples import NamedTuple

PROC = "/proc"

#: ``PF_KTHREAD`` in the flags field of /proc/PID/stat (include/linux/sched.h).
PF_KTHREAD = 0x00200000

_GONE = (errno.ENOENT, errno.ESRCH)
_DENIED = (errno.EACCES, errno.EPERM)


class ProcStat(NamedTuple):
    """The fields of ``/proc/PID/stat`` soswap uses."""

    pid: int
    comm: bytes
    state: bytes
    ppid: int
    flags: int
    starttime: int  #: clock ticks after boot (CLOCK_BOOTTIME), field 22

    @property
    def kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)

    @property
    def zombie(self) -> bool:
        return self.state in (b"Z", b"X", b"x")


def _raise(pid: int, what: str, exc: OSError) -> None:
    if exc.errno in _GONE:
        raise ProcessGone(pid, what) from None
    if exc.errno in _DENIED:
        raise AccessDenied(pid, what) from None
    raise exc


#: pid -> "task/TID": a process whose main thread ended (``pthread_exit``) while other threads run. Its leader
#: is a zombie that let go of what the threads share (``exit_mm``, ``exit_files``, ``exit_fs``,
#: ``exit_task_namespaces``): its maps, exe, cmdline, environ, fd, root, cwd and ns entries are empty or gone,
#: while a live thread's show them. Set by :func:`read_stat`.
_LIVE_THREAD: Dict[int, str] = {}
#: The entries that stay the leader's: the process's own start time and state, and its threads.
_OF_THE_LEADER = frozenset(("stat", "status", "task"))


def entry_path(pid: int, name: str) -> str:
    """``/proc/PID/name``, or the same entry of a live thread for a process whose main thread ended."""
    sub = _LIVE_THREAD.get(pid)
    if sub is not None and name.split("/", 1)[0] not in _OF_THE_LEADER:
        if name.startswith("map_files"):
            # a thread's own directory has no map_files (tid_base_stuff); /proc/TID, the thread looked up as a
            # process, has (tgid_base_stuff)
            return f"{PROC}/{sub[5:]}/{name}"
        return f"{PROC}/{pid}/{sub}/{name}"
    return f"{PROC}/{pid}/{name}"


def open_entry(pid: int, name: str) -> int:
    """Open ``/proc/PID/name`` read-only; the caller closes the descriptor."""
    try:
        return os.open(entry_path(pid, name), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        _raise(pid, name, exc)
        raise  # pragma: no cover - _raise always raises


def read_fd(fd: int, pid: int, name: str) -> bytes:
    """Read an open /proc entry to its end."""
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 17)
            if not chunk:
                break
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except OSError as exc:
        _raise(pid, name, exc)
        raise  # pragma: no cover - _raise always raises


def read_file(pid: int, name: str) -> bytes:
    """Read ``/proc/PID/name`` whole, as bytes."""
    fd = open_entry(pid, name)
    try:
        return read_fd(fd, pid, name)
    finally:
        os.close(fd)


def same_address_space(maps_fd: int) -> bool:
    """Does the address space an open ``/proc/PID/maps`` descriptor was opened on still run?

    The descriptor pins the ``mm`` it was opened on, not the process: once the process exec()s (or exits),
    that mm has no user left and reading it yields nothing (``m_start``: ``mmget_not_zero`` fails), ESRCH
    after the exit. So a non-empty read here, after reading ``exe``, ``cmdline``... means they describe the
    program whose maps were read (CVE-2024-48991 class: a process that exec()s while it is being scanned)."""
    try:
        return bool(os.pread(maps_fd, 1, 0))
    except OSError:
        return False


def read_link(pid: int, name: str) -> bytes:
    """``readlink /proc/PID/name`` as bytes (``exe``, ``cwd``, ``root``, ``fd/N``, ``map_files/A-B``)."""
    try:
        return os.readlink(os.fsencode(entry_path(pid, name)))
    except OSError as exc:
        _raise(pid, name, exc)
        raise  # pragma: no cover


def list_pids() -> List[int]:
    """Every numeric entry of /proc (processes only, not threads), ascending."""
    pids = []
    for name in os.listdir(PROC):
        if name.isdigit():
            pids.append(int(name))
    pids.sort()
    return pids


def parse_stat(pid: int, data: bytes) -> ProcStat:
    """Parse ``/proc/PID/stat``. The comm may hold spaces and ``)``: split after the **last** ``)``."""
    # do_task_stat prints "pid (comm) state ...": comm is free text up to 16 bytes.
    open_paren = data.find(b"(")
    close_paren = data.rfind(b")")
    if open_paren < 0 or close_paren < open_paren:
        raise ProcessGone(pid, "unreadable stat line")
    comm = data[open_paren + 1 : close_paren]
    rest = data[close_paren + 2 :].split()
    try:
        # rest[0] is field 3 (state); field N is rest[N - 3].
        return ProcStat(pid, comm, rest[0], int(rest[1]), int(rest[6]), int(rest[19]))
    except (IndexError, ValueError):
        raise ProcessGone(pid, "truncated stat line") from None


def read_small(pid: int, name: str) -> bytes:
    """Read a one-record /proc file (``stat``, ``comm``) with a single read: the kernel renders it whole."""
    path = f"{PROC}/{pid}/{name}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        _raise(pid, name, exc)
    try:
        return os.read(fd, 4096)
    except OSError as exc:
        _raise(pid, name, exc)
        raise  # pragma: no cover
    finally:
        os.close(fd)


def read_starttime(pid: int) -> int:
    """Field 22 of /proc/PID/stat only (the pass-1 hot path)."""
    data = read_small(pid, "stat")
    rest = data[data.rfind(b")") + 2 :].split(b" ", 20)
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        raise ProcessGone(pid, "truncated stat line") from None


def read_stat(pid: int) -> ProcStat:
    """``/proc/PID/stat``. A process whose main thread ended while others run (its leader a zombie) is alive:
    its state is a live thread's, and its address-space entries are read through that thread from now on
    (:func:`entry_path`); the start time stays the process's."""
    st = parse_stat(pid, read_small(pid, "stat"))
    if st.state not in (b"Z", b"X", b"x") or st.kernel_thread:
        _LIVE_THREAD.pop(pid, None)
        return st
    for tid in _threads(pid):
        try:
            thread = parse_stat(tid, read_small(pid, f"task/{tid}/stat"))
        except (ProcessGone, AccessDenied):
            continue
        if thread.state not in (b"Z", b"X", b"x"):
            _LIVE_THREAD[pid] = f"task/{tid}"
            return st._replace(state=thread.state)
    _LIVE_THREAD.pop(pid, None)
    return st


def comm_of(pid: int) -> str:
    """The comm of a process whose address space the kernel refused to show, or "": ``/proc/PID/stat`` needs no
    ptrace access (do_task_stat only blanks some fields), where ``maps`` does (mm_access)."""
    try:
        return os.fsdecode(read_stat(pid).comm)
    except (ProcessGone, AccessDenied):
        return ""


def _threads(pid: int) -> List[int]:
    """The other threads of ``pid`` (its ``task`` directory, the leader left out), the oldest first."""
    try:
        return sorted(int(t) for t in os.listdir(f"{PROC}/{pid}/task") if t.isdigit() and int(t) != pid)
    except OSError:
        return []


def adopt_live_thread(pid: int) -> bool:
    """For a process whose address-space entries came back empty or gone: did the way to read them change?
    True when it is one whose main thread ended while others run (read through a live thread from now on), or
    when it was read that way and is not any more (its PID now names another process): read it again."""
    before = _LIVE_THREAD.get(pid)
    try:
        read_stat(pid)
    except (ProcessGone, AccessDenied):
        return False
    return _LIVE_THREAD.get(pid) != before


def parse_status_ids(data: bytes) -> Tuple[Optional[int], Optional[int]]:
    """(effective uid, effective gid) from ``/proc/PID/status``."""
    uid = gid = None
    for line in data.split(b"\n"):
        if line.startswith(b"Uid:"):
            fields = line.split()
            if len(fields) > 2:
                uid = int(fields[2])
        elif line.startswith(b"Gid:"):
            fields = line.split()
            if len(fields) > 2:
                gid = int(fields[2])
            break
    return uid, gid


def read_uid(pid: int) -> Optional[int]:
    return parse_status_ids(read_file(pid, "status"))[0]


def read_tgid(pid: int) -> int:
    """The process (thread group) that ``pid`` belongs to: itself, or for a thread's ID (``/proc/TID`` exists,
    unlisted) its process's, from ``Tgid`` in ``/proc/PID/status``."""
    for line in read_file(pid, "status").split(b"\n"):
        if line.startswith(b"Tgid:"):
            fields = line.split()
            if len(fields) > 1 and fields[1].isdigit():
                return int(fields[1])
            break
    return pid


#: A run of this many NULs ends a process title written over argv (its padding), not empty arguments.
TITLE_PADDING = b"\0" * 4


def parse_cmdline(data: bytes) -> Tuple[bytes, ...]:
    """Split ``/proc/PID/cmdline`` on NULs (a trailing NUL ends the last argument). A process title written
    over argv leaves a run of NULs (:data:`TITLE_PADDING`): no trailing empty arguments then, as ps shows it."""
    if not data:
        return ()
    if data.endswith(TITLE_PADDING):
        data = data.rstrip(b"\0")
        if not data:
            return ()
    elif data.endswith(b"\0"):
        data = data[:-1]
    return tuple(data.split(b"\0"))


def read_cmdline(pid: int) -> Tuple[bytes, ...]:
    return parse_cmdline(read_file(pid, "cmdline"))


def ns_inode(pid: int, kind: str) -> Optional[int]:
    """The inode of ``/proc/PID/ns/<kind>`` (``mnt``, ``pid``...), or None if the kernel has no such namespace."""
    try:
        return os.stat(entry_path(pid, f"ns/{kind}")).st_ino
    except OSError as exc:
        if exc.errno in _GONE and os.path.exists(f"{PROC}/{pid}"):
            return None
        _raise(pid, f"ns/{kind}", exc)
        raise  # pragma: no cover


def own_ns_inode(kind: str) -> Optional[int]:
    try:
        return os.stat(f"{PROC}/self/ns/{kind}").st_ino
    except OSError:
        return None


def map_files_name(start: int, end: int) -> str:
    """The entry name in ``/proc/PID/map_files`` of a mapping (hex without leading zeros)."""
    # proc_map_files_readdir: "%lx-%lx"
    return f"map_files/{start:x}-{end:x}"


def stat_map_file(pid: int, start: int, end: int) -> os.stat_result:
    """``stat()`` the file behind a mapping through ``/proc/PID/map_files`` (needs CAP_SYS_ADMIN)."""
    try:
        return os.stat(entry_path(pid, map_files_name(start, end)))
    except OSError as exc:
        _raise(pid, "map_files", exc)
        raise  # pragma: no cover


def list_fds(pid: int) -> List[str]:
    try:
        return os.listdir(entry_path(pid, "fd"))
    except OSError as exc:
        _raise(pid, "fd", exc)
        raise  # pragma: no cover


def fd_inode(pid: int, fd: str) -> Optional[int]:
    """The inode number of what ``pid`` holds open as ``fd``, from ``/proc/PID/fdinfo/FD`` (its ``ino:`` line,
    Linux 5.14+): read without asking the file's filesystem. None when the kernel does not say."""
    for line in read_small(pid, f"fdinfo/{fd}").split(b"\n"):
        if line.startswith(b"ino:"):
            try:
                return int(line[4:])
            except ValueError:
                return None
    return None
