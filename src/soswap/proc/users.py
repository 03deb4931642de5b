"""Who uses a file: processes that execute, map or hold open a path or an inode, in one /proc pass.

This is the engine of ``soswap users`` and the API other packages call:

- :func:`find_users` — for each path, every process using its current inode or an older version still alive
  (a mapping or fd that shows the same name, " (deleted)" or not, but another inode);
- :func:`processes_using_inodes` — which processes map or execute any of these (st_dev, st_ino) pairs (the
  replaced old inodes a journal recorded);
- :func:`processes_mapping` — which running processes map file X (any version).

Each process's maps text is first searched for the target names and inode numbers with a bytes ``in`` test;
only the lines that hold one are parsed, so the cost stays close to reading every maps file once, even when
every process maps the file.
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from soswap.errors import AccessDenied, ProcessGone, SoswapError
from soswap.proc import cgroup as cgroup_mod
from soswap.proc import procfs
from soswap.proc.maps import DELETED_SUFFIX, file_of, lines_containing, maps_form, split_deleted, unescape
from soswap.proc.model import FileUse, UsersReport
from soswap.proc.view import FileView, PathGuard
from soswap.tuples import NamedTuple

#: Attempts to read one process before it counts as unreadable (it exec()s faster than we read it).
ATTEMPTS = 3

HOW_EXE = "exe"
HOW_MAPPED = "mapped"
HOW_OPEN = "open"


class _Target(NamedTuple):
    path: str
    names: Tuple[bytes, ...]  #: the path as given and its resolved form
    identity: Optional[Tuple[int, int]]  #: (st_dev, st_ino) now at the path

    @property
    def shown(self) -> Tuple[bytes, ...]:
        """The names as a maps line shows them."""
        return tuple(maps_form(n) for n in self.names)


class _Pass:
    """One pass over /proc for a set of targets."""

    def __init__(self, targets: Sequence[_Target], inodes: Iterable[Tuple[int, int]] = (),
                 fds: bool = True, pids: Optional[Sequence[int]] = None) -> None:
        self.targets = targets
        self.inode_pairs = frozenset(inodes) | frozenset(t.identity for t in targets if t.identity)
        self._target_inodes = frozenset(t.identity[1] for t in targets if t.identity)
        #: what a maps line of a target shows: its name (maps form) or " INODE " (the inode field)
        # (and a target's file name: a process in another mount namespace names it from its own root)
        self.needles = (tuple({maps_form(n) for t in targets for n in t.names})
                        + tuple({maps_form(b"/" + os.path.basename(n)) for t in targets for n in t.names})
                        + tuple({b" %d " % ino for _, ino in self.inode_pairs}))
        self.fds = fds
        self.pids = pids
        self.view = FileView()
        #: ("dev", "inode", "path" fields of a maps line) -> (st_dev, inode, unescaped path), or () when the
        #: line names no file
        self._files: Dict[Tuple[bytes, bytes, bytes], Tuple[int, ...]] = {}
        #: (pid, comm) of the processes that could not be read (the report is partial)
        self.refused: List[Tuple[int, str]] = []
        self.self_pid = os.getpid()

    def run(self) -> Dict[int, List[FileUse]]:
        """{target index (or -1 for bare inode pairs): uses}"""
        out: Dict[int, List[FileUse]] = {}
        pids = list(dict.fromkeys(self.pids)) if self.pids is not None else procfs.list_pids()
        for pid in pids:
            if pid == self.self_pid:
                continue
            try:
                for _ in range(ATTEMPTS):
                    try:
                        found = self._one(pid)
                    except ProcessGone:
                        # read through a thread that ended (its main thread gone too), or the PID now names
                        # another process: the way to read it changed, read it again; else gone for good
                        if not procfs.adopt_live_thread(pid):
                            raise
                        continue
                    if found is not None:
                        for idx, use in found:
                            out.setdefault(idx, []).append(use)
                        break
                else:
                    self.refused.append((pid, procfs.comm_of(pid)))  # exec()ed during every attempt: not read
            except ProcessGone:
                continue
            except AccessDenied:
                self.refused.append((pid, procfs.comm_of(pid)))
        return out

    def _same(self, pid: int, dev: int, ino: int, start: int, end: int, pair: Tuple[int, int]) -> bool:
        if ino != pair[1]:
            return False
        if dev == pair[0]:
            return True
        if os.major(dev) != 0 and os.major(pair[0]) != 0:
            return False
        mf = self.view.map_file_stat(pid, dev, ino, start, end)
        return mf is None or (mf.st_dev, mf.st_ino) == pair

    def _one(self, pid: int) -> Optional[List[Tuple[int, FileUse]]]:
        """The uses of one process, or None when it exec()ed while it was read (read it again)."""
        fd = procfs.open_entry(pid, "maps")
        try:
            data = procfs.read_fd(fd, pid, "maps")
            if not data:
                st = procfs.read_stat(pid)  # ProcessGone if it exited
                return [] if st.zombie or st.kernel_thread else None  # no address space, or exec()ed
            self.view.forget_root(pid)
            found = self._uses(pid, data)
            # The exe, argv and cgroup read after maps belong to the same program only if the address space
            # the maps descriptor pins still runs (procfs.same_address_space; CVE-2024-48991 class).
            return found if procfs.same_address_space(fd) else None
        finally:
            os.close(fd)

    def _uses(self, pid: int, data: bytes) -> List[Tuple[int, FileUse]]:
        # target index -> (how, version, dev, ino); a bare inode pair (index -1) is keyed by the pair: a process
        # may map several replaced files, each one use
        hits: Dict[object, Tuple[Set[str], str, int, int]] = {}
        exe_link: Optional[bytes] = None  # read once, when first needed
        # only the lines that name a target or carry one of the inode numbers can match
        lines = lines_containing(data, self.needles)
        if lines:
            foreign = self.view.foreign_mount_ns(pid) is not None
            exe_link = _read_exe(pid)
            exe = split_deleted(exe_link)[0]
            for m_dev, m_ino, m_path, start, end, shown in self._mapped_files(lines):
                for idx, pair in self._match(pid, m_dev, m_ino, start, end, m_path, foreign, shown):
                    # idx -1: a bare inode pair, which callers pass for *old* versions. It is named as the
                    # caller gave it (stat's st_dev): on btrfs and overlayfs the maps device differs.
                    first = "old" if (pair is None or idx < 0) else "current"
                    named = pair if idx < 0 and pair is not None else (m_dev, m_ino)
                    key = (idx, named) if idx < 0 else idx
                    how, version, dev, ino = hits.setdefault(key, (set(), first, *named))
                    how.add(HOW_EXE if m_path == exe else HOW_MAPPED)
                    if first == "old" and version == "current":
                        hits[key] = (how, "old", m_dev, m_ino)
        if self.fds:
            self._fds(pid, hits)
        if not hits:
            return []
        s1 = procfs.read_stat(pid)
        exe_s = os.fsdecode(exe_link if exe_link is not None else _read_exe(pid))
        cmdline = tuple(os.fsdecode(a) for a in procfs.read_cmdline(pid))
        try:
            cg = cgroup_mod.parse(procfs.read_file(pid, "cgroup"))
        except AccessDenied:
            cg = cgroup_mod.CgroupInfo("", None, None)
        if procfs.read_stat(pid).starttime != s1.starttime:
            raise ProcessGone(pid, "PID reused")
        out = []
        for key, (how, version, dev, ino) in hits.items():
            idx = key[0] if isinstance(key, tuple) else key
            ordered = tuple(h for h in (HOW_EXE, HOW_MAPPED, HOW_OPEN) if h in how)
            out.append((idx, FileUse(pid, s1.starttime, exe_s, cmdline, ordered, version, dev, ino, cg.unit,
                                     cg.container)))
        return out

    def _mapped_files(self, lines: bytes) -> List[Tuple[int, int, bytes, int, int, bytes]]:
        """(st_dev, inode, path, start, end, path field) of each distinct file among these maps lines, in file
        order, with the range of its first line (the path field as the line shows it: escaped, " (deleted)"
        kept). A library's segments are several lines that differ only in address, permissions and offset; the
        "dev inode path" part is parsed once per pass (every process that maps the library shows the same)."""
        out = []
        seen = set()
        files = self._files
        for line in lines.split(b"\n"):
            parts = line.split(None, 5)  # the path (parts[5]) keeps its own spaces
            if len(parts) < 6:
                continue
            key = (parts[3], parts[4], parts[5])
            if key in seen:
                continue
            seen.add(key)
            ident = files.get(key)
            if ident is None:
                ident = files[key] = file_of(*key)
            if ident:
                start, _, end = parts[0].partition(b"-")
                out.append((*ident, int(start, 16), int(end, 16), parts[5]))
        return out

    def _match(self, pid: int, dev: int, ino: int, start: int, end: int, path: bytes,
               foreign: bool, shown: bytes = b"") -> List[Tuple[int, Optional[Tuple[int, int]]]]:
        """[(target index, matched identity or None for "same name, other inode")]. ``shown``: the path field
        of the maps line (the kernel escapes a newline as ``\012`` and leaves a backslash alone, so a name
        holding ``\012`` itself is matched in that form too)."""
        found = []
        bare, deleted = split_deleted(shown)
        for idx, t in enumerate(self.targets):
            if t.identity is not None and self._same(pid, dev, ino, start, end, t.identity):
                found.append((idx, t.identity))
            elif (path in t.names or (b"\\" in bare and bare in t.shown)) and not foreign:
                if deleted and self._literally_deleted(pid, dev, ino, start, end, bare):
                    continue  # a live file named "... (deleted)": not the target at all
                if t.identity is not None and t.identity[0] != dev and self.view.detached(pid, dev):
                    continue  # the name is relative to a detached mount (umount -l): not the target's
                found.append((idx, None))
            elif foreign and t.identity is not None and any(path.endswith(b"/" + os.path.basename(n))
                                                            for n in t.names) and self._names(pid, path, t):
                found.append((idx, None))  # its name for the file is where the target is now, in its root
        return self._or_inodes(found, pid, dev, ino, start, end)

    def _literally_deleted(self, pid: int, dev: int, ino: int, start: int, end: int, bare: bytes) -> bool:
        """The mapped file is a live one whose name ends in " (deleted)" (stat()ed first, as ``stale`` does)."""
        st = self.view.stat(self.view.root_of(pid), unescape(bare) + DELETED_SUFFIX)
        return not isinstance(st, int) and self._same(pid, dev, ino, start, end, (st.st_dev, st.st_ino))

    def _names(self, pid: int, path: bytes, t: _Target) -> bool:
        """In another mount namespace a path names another file than ours: does ``path``, resolved in the
        process's own root, lead to the target's current file?"""
        st = self.view.stat(self.view.root_of(pid), path)
        return not isinstance(st, int) and (st.st_dev, st.st_ino) == t.identity

    def _or_inodes(self, found: List[Tuple[int, Optional[Tuple[int, int]]]], pid: int, dev: int, ino: int,
                   start: int, end: int) -> List[Tuple[int, Optional[Tuple[int, int]]]]:
        if not self.targets or len(found) == 0:
            for pair in self.inode_pairs:
                if self._same(pid, dev, ino, start, end, pair):
                    found.append((-1, pair))
                    break
        return found

    def _fds(self, pid: int, hits: Dict[object, Tuple[Set[str], str, int, int]]) -> None:
        if not self.targets:
            return
        try:
            fds = procfs.list_fds(pid)
        except (ProcessGone, AccessDenied):
            return
        for fd in fds:
            try:
                link = procfs.read_link(pid, f"fd/{fd}")
            except (ProcessGone, AccessDenied):
                continue
            if not link.startswith(b"/"):
                continue
            name, _deleted = split_deleted(link)
            st = None
            for idx, t in enumerate(self.targets):
                named = name in t.names
                if not named and t.identity is None:
                    continue
                if st is None:  # one stat per descriptor, only when some target may be it
                    st = self._open_file_stat(pid, fd, named)
                    if st is None:
                        break
                # by name, or by inode as fuser does (a hard link, a bind mount: another name, the same file)
                if not named and t.identity != (st.st_dev, st.st_ino):
                    continue
                version = "current" if t.identity == (st.st_dev, st.st_ino) else "old"
                how, old_version, _dev, _ino = hits.setdefault(idx, (set(), version, st.st_dev, st.st_ino))
                how.add(HOW_OPEN)
                if version == "old" and old_version == "current":
                    hits[idx] = (how, "old", st.st_dev, st.st_ino)


    def _open_file_stat(self, pid: int, fd: str, named: bool) -> Optional[os.stat_result]:
        """The stat of the file ``pid`` holds open as ``fd``, or None. Where the process's namespace has a network
        or FUSE mount, an fd that names no target is first matched by its inode number from fdinfo (which asks
        no filesystem: a dead server's would hang), and a stat that may reach one goes through the helper."""
        try:
            guarded = self.view.namespace_guarded(self.view.root_of(pid))
        except (ProcessGone, AccessDenied):
            return None
        if not guarded:
            try:
                return os.stat(procfs.entry_path(pid, f"fd/{fd}"))
            except OSError:
                return None
        if not named:
            try:
                ino = procfs.fd_inode(pid, fd)
            except (ProcessGone, AccessDenied):
                return None
            if ino is not None and ino not in self._target_inodes:
                return None
        st = self.view.stat_open_file(pid, int(fd))
        return None if isinstance(st, int) else st


def _read_exe(pid: int) -> bytes:
    try:
        return procfs.read_link(pid, "exe")
    except ProcessGone:
        return b""  # /proc/PID/exe of a process whose mm is going away


def _target(path: str, guard: PathGuard) -> _Target:
    raw = os.fsencode(os.path.abspath(path))
    names = {raw}
    try:
        st = guard.stat(os.path.abspath(path))  # first: on a dead server's mount, the realpath below would wait
        identity: Optional[Tuple[int, int]] = (st.st_dev, st.st_ino)
    except TimeoutError:
        raise SoswapError(f"{path}: no answer from its filesystem (a network or FUSE server that is down?)") from None
    except OSError:
        identity = None
    try:
        names.add(os.fsencode(os.path.realpath(path)))
    except (OSError, ValueError):
        pass
    return _Target(path, tuple(sorted(names)), identity)


def find_users(paths: Sequence[str], *, fds: bool = True, pids: Optional[Sequence[int]] = None) -> List[UsersReport]:
    """For each path: every process that executes, maps or holds it open (current inode or an older one)."""
    guard = PathGuard()
    targets = [_target(p, guard) for p in paths]
    scan = _Pass(targets, fds=fds, pids=pids)
    found = scan.run()
    reports = []
    for idx, t in enumerate(targets):
        uses = tuple(sorted(found.get(idx, []), key=lambda u: u.pid))
        reports.append(UsersReport(t.path, t.identity is not None, t.identity[0] if t.identity else None,
                                   t.identity[1] if t.identity else None, uses, bool(scan.refused),
                                   tuple(scan.refused)))
    return reports


def processes_using_inodes(pairs: Iterable[Tuple[int, int]], *, pids: Optional[Sequence[int]] = None) -> List[FileUse]:
    """Processes that map or execute any (st_dev, st_ino) in ``pairs`` (e.g. old inodes a replacement recorded).

    One /proc pass; ``version`` is "old" and ``dev``/``inode`` name the matched pair."""
    wanted = frozenset(pairs)
    if not wanted:
        return []
    scan = _Pass((), inodes=wanted, fds=False, pids=pids)
    found = scan.run().get(-1, [])
    return sorted(found, key=lambda u: u.pid)


def processes_mapping(path: str, *, pids: Optional[Sequence[int]] = None) -> List[FileUse]:
    """Processes that map or execute ``path`` (its current inode, or an older version under the same name)."""
    report = find_users([path], fds=False, pids=pids)[0]
    return list(report.uses)

