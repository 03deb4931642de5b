"""The stale-code scan: one pass over /proc, a cheap filter per process, an exact check for the few suspects.

Pass 1 (every process): read ``maps`` once, take its distinct file-backed rows (one regex ``findall``) and look
each row up in a verdict cache shared by the whole scan, so a library mapped by 2,000 processes is stat()ed
once. A row is *suspect* when it is "(deleted)", when the path now names another inode, when the journal lists
its inode, or when the file changed after the boot (then the process's start time decides).

Pass 2 (suspects only): read ``stat`` (start time), re-read ``maps`` and ``exe``, classify every mapped file
against the path as the process sees it (view.py), then read ``cmdline``/``status``/``cgroup`` and read
``stat`` again: if the start time changed, the PID was reused and the process is dropped (gone).
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
from typing import Dict, FrozenSet, List, NamedTuple, Optional, Sequence, Tuple

from soswap.errors import AccessDenied, ProcessGone
from soswap.proc import cgroup as cgroup_mod
from soswap.proc import procfs, scripts
from soswap.proc.ignore import DEFAULT_IGNORE, IgnoreList
from soswap.proc.maps import DELETED_SUFFIX, Mapping, line_tails, parse_maps, parse_tail, split_deleted, unescape
from soswap.proc.model import (
    DELETED,
    MODIFIED,
    REPLACED,
    ROLE_EXE,
    ROLE_LIBRARY,
    ROLE_MAPPED,
    ROLE_OPEN,
    ROLE_SCRIPT,
    TRUNCATED,
    JournalView,
    StaleFile,
    StaleProcess,
    StaleReport,
)
from soswap.proc.timebase import Clock
from soswap.proc.view import HOST, NETWORK_FS, FileView, RootContext

#: Name suffixes of renamed-away files (``mv lib lib.bak`` then a new file at ``lib``).
BACKUP_SUFFIXES = (b".bak", b".old", b".orig", b"~", b".dpkg-old", b".dpkg-bak", b".dpkg-dist", b".rpmsave",
                   b".rpmorig", b".save")

# Pass-1 verdicts (sentinels; any other cached value is an int mtime in ns).
_OK = object()
_SUSPECT = object()
_INTERP = object()  # the file is an interpreter executable: its script must be checked


class ScanOptions(NamedTuple):
    """What to scan and report."""

    pids: Optional[Sequence[int]] = None  #: only these processes (default: all)
    path_prefixes: Sequence[str] = ()  #: only files under these prefixes
    ignore: IgnoreList = DEFAULT_IGNORE
    include_data: bool = False  #: also report non-executable mappings (role "mapped")
    include_fds: bool = False  #: also report deleted files held only as open fds (role "open")
    scripts: bool = True  #: check the scripts of python/perl/ruby/shell processes
    journal: Optional[JournalView] = None
    kernel: bool = True
    boot_dir: str = "/boot"
    stat_timeout: float = 2.0  #: seconds a stat() on a network filesystem may take
    guarded_fstypes: FrozenSet[str] = NETWORK_FS  #: filesystems whose stats run in a worker with that timeout


class _Scanner:
    def __init__(self, options: ScanOptions) -> None:
        self.o = options
        self.view = FileView(stat_timeout=options.stat_timeout, guarded_fstypes=options.guarded_fstypes)
        self.clock = Clock()
        self.ignore = options.ignore
        # Pass-1 caches, all keyed by the root context first (None: our own view).
        self.fast: Dict[tuple, object] = {}  # (root, dev, inode, path) -> verdict
        self.verdicts: Dict[tuple, object] = {}  # (root, maps line without its address) -> verdict
        self.summaries: Dict[tuple, int] = {}  # (root, frozenset of line tails) -> 0 / newest mtime
        self.unreadable = 0
        self.unverifiable = 0
        self.scanned = 0
        journal = options.journal
        self.journal_inodes = frozenset(i for _, i in journal.replaced) if journal else frozenset()
        self.prefixes = tuple(os.fsencode(p.rstrip("/") or "/") for p in options.path_prefixes)
        self.self_pid = os.getpid()
        self.own_pid_ns = procfs.own_ns_inode("pid")
        self.page = os.sysconf("SC_PAGE_SIZE") if "SC_PAGE_SIZE" in os.sysconf_names else 4096

    # -- pass 1 --------------------------------------------------------------------------------------------
    def _fast_verdict(self, ctx: RootContext, dev_b: bytes, ino_b: bytes, raw: bytes, data: bytes) -> object:
        """_OK, _SUSPECT, _INTERP, or an int mtime (ns) of a matching file changed after boot."""
        path, deleted = split_deleted(raw)
        path = unescape(path)
        if self.ignore.match(path) is not None:
            return _OK
        interp = scripts.family(path) is not None and self.o.scripts
        if deleted or b"\\" in raw:
            return _SUSPECT
        inode = int(ino_b)
        if inode in self.journal_inodes or path.endswith(BACKUP_SUFFIXES):
            return _SUSPECT
        major, _, minor = dev_b.partition(b":")
        dev = os.makedev(int(major, 16), int(minor, 16))
        st = self.view.stat(ctx, path, dev)
        if isinstance(st, int):
            return _SUSPECT  # not visible from this root (another mount namespace, most likely)
        if st.st_ino != inode:
            return _SUSPECT
        if st.st_dev != dev:
            if os.major(dev) != 0 and os.major(st.st_dev) != 0:
                return _SUSPECT
            start, end = _first_range(data, dev_b, ino_b)
            # The pid is only needed to reach map_files; the result is cached per (dev, inode).
            if start is not None and not self.view.same_file(self._pid, dev, inode, start, end, st):
                return _SUSPECT
        if interp:
            return _INTERP
        if st.st_mtime_ns > self.clock.boot_realtime_ns:
            return st.st_mtime_ns
        return _OK

    def _tail_verdict(self, ctx: RootContext, tail: bytes, data: bytes) -> object:
        """The pass-1 verdict of one maps line (address cut off) in one root."""
        parsed = parse_tail(tail)
        if parsed is None:
            return _OK
        x, dev_b, ino_b, raw = parsed
        if x != b"x" and not self.o.include_data:
            return _OK
        key = (ctx.key, dev_b, ino_b, raw)
        verdict = self.fast.get(key)
        if verdict is None:
            verdict = self._fast_verdict(ctx, dev_b, ino_b, raw, data)
            if verdict is not _SUSPECT:
                self.fast[key] = verdict
        return verdict

    def _summarize(self, ctx: RootContext, tails: frozenset, data: bytes) -> int:
        """-1 (suspect), 0 (fine) or the newest mtime (ns) the process's start must precede."""
        key = (ctx.key, tails)
        summary = self.summaries.get(key)
        if summary is not None:
            return summary
        newest = 0
        for tail in tails:
            vkey = (ctx.key, tail)
            verdict = self.verdicts.get(vkey)
            if verdict is None:
                verdict = self._tail_verdict(ctx, tail, data)
                if verdict is not _SUSPECT:
                    self.verdicts[vkey] = verdict
            if verdict is _OK:
                continue
            if verdict is _SUSPECT or verdict is _INTERP:
                return -1  # not cached: the exact check runs for every such process
            if verdict > newest:  # type: ignore[operator]
                newest = verdict  # type: ignore[assignment]
        self.summaries[key] = newest
        return newest

    def _suspect(self, pid: int, data: bytes) -> bool:
        """Pass 1 for one process: does it need the exact check?"""
        # Processes of one program have the same lines once the addresses are cut off: decide once per set,
        # first in our own view (no syscall to learn the process's namespace), then, if that finds a
        # mismatch, in the process's own root (containers), cached per (root, set) as well.
        tails = line_tails(data)
        summary = self._summarize(HOST, tails, data)
        if summary < 0:
            ctx = self.view.root_of(pid)
            if ctx.key is not None:
                summary = self._summarize(ctx, tails, data)
        if summary < 0:
            return True
        if summary:
            return self.clock.changed_after_start(summary, procfs.read_starttime(pid))
        return False

    # -- pass 2 --------------------------------------------------------------------------------------------
    def _exact(self, pid: int) -> Optional[StaleProcess]:
        s1 = procfs.read_stat(pid)
        if s1.kernel_thread or s1.zombie:
            return None
        mappings = parse_maps(procfs.read_file(pid, "maps"))
        try:
            exe = procfs.read_link(pid, "exe")
        except ProcessGone:
            exe = b""
        ctx = self.view.root_of(pid)
        exe_path = split_deleted(exe)[0]
        files: List[StaleFile] = []
        groups: Dict[Tuple[int, int, bytes, bool], List[Mapping]] = {}
        for m in mappings:
            groups.setdefault((m.dev, m.inode, m.path, m.deleted), []).append(m)
        for (dev, inode, path, deleted), ms in groups.items():
            f = self._classify(pid, ctx, s1.starttime, dev, inode, path, deleted, ms, exe_path)
            if f is not None:
                files.append(f)
        if self.o.scripts and scripts.family(exe) is not None:
            f = self._script(pid, ctx, s1.starttime, exe)
            if f is not None:
                files.append(f)
        if self.o.include_fds:
            files.extend(self._open_files(pid, {(f.dev, f.inode) for f in files}))
        if not files:
            return None
        return self._describe(pid, s1, exe, files)

    def _wanted(self, path: bytes) -> bool:
        if not self.prefixes:
            return True
        return any(path == p or path.startswith(p + b"/") or p == b"/" for p in self.prefixes)

    def _classify(self, pid: int, ctx: RootContext, starttime: int, dev: int, inode: int, path: bytes,
                  deleted: bool, ms: List[Mapping], exe_path: bytes) -> Optional[StaleFile]:
        if self.ignore.match(path) is not None:
            return None
        first = ms[0]
        if b"\\" in first.raw_path:
            # "\012" is ambiguous in maps (a backslash is not escaped): ask map_files for the exact name.
            try:
                path, deleted = split_deleted(procfs.read_link(pid, procfs.map_files_name(first.start, first.end)))
            except (AccessDenied, ProcessGone):
                pass
        if path == exe_path:
            role = ROLE_EXE
        elif any(m.executable for m in ms):
            role = ROLE_LIBRARY
        else:
            role = ROLE_MAPPED
            if not self.o.include_data:
                return None
        if not self._wanted(path):
            return None
        name = os.fsdecode(path)
        journal = self.o.journal
        view = self.view
        if deleted:
            # A live file literally named "x (deleted)" shows the same suffix: check that name first.
            literal = view.stat(ctx, path + DELETED_SUFFIX, dev)
            if not isinstance(literal, int) and view.same_file(pid, dev, inode, first.start, first.end, literal):
                deleted = False
                path += DELETED_SUFFIX
                name = os.fsdecode(path)
        if deleted:
            now = view.stat(ctx, path, dev)
            there = (f"a new file (inode {now.st_ino}) is at the path" if not isinstance(now, int)
                     else "nothing is at the path now")
            mf = view.map_file_stat(pid, dev, inode, first.start, first.end)
            if mf is not None and mf.st_nlink > 0:
                return StaleFile(name, REPLACED, role,
                                 f"unlinked from this name but alive under another (hard link, {mf.st_nlink} "
                                 f"left); {there}", dev, inode)
            if journal is not None and _in_journal(journal, dev, inode, mf):
                return StaleFile(name, REPLACED, role, f"recorded as replaced by soswap; {there}", dev, inode)
            return StaleFile(name, DELETED, role, f"the mapped file was deleted; {there}", dev, inode)
        st = view.stat(ctx, path, dev)
        if isinstance(st, int):
            self.unverifiable += 1
            return None
        if not view.same_file(pid, dev, inode, first.start, first.end, st):
            return StaleFile(name, REPLACED, role,
                             f"the path now names inode {st.st_ino}; the mapped inode {inode} lives on elsewhere",
                             dev, inode)
        if journal is not None and _in_journal(journal, dev, inode, st):
            return StaleFile(name, REPLACED, role, "recorded as a replaced old version by soswap", dev, inode)
        if path.endswith(BACKUP_SUFFIXES):
            renamed = self._renamed_away(ctx, path, dev, st)
            if renamed is not None:
                return StaleFile(name, REPLACED, role,
                                 f"renamed away: {os.fsdecode(renamed)} now holds another file", dev, inode)
        limit = -(-st.st_size // self.page) * self.page
        for m in ms:
            needed = m.offset + (m.end - m.start)
            if m.accessible and needed > limit:
                return StaleFile(name, TRUNCATED, role,
                                 f"the file is {st.st_size} bytes, the mapping needs {needed}: access faults (SIGBUS)",
                                 dev, inode)
        if self.clock.changed_after_start(st.st_mtime_ns, starttime):
            if journal is not None:
                rec = journal.installed.get((st.st_dev, st.st_ino))
                if rec is not None and rec.size == st.st_size and rec.mtime_ns == st.st_mtime_ns:
                    return None  # exactly the content soswap installed: it was loaded after the install
            return StaleFile(name, MODIFIED, role, "same inode, written after the process started "
                             "(in-place change: old and new code mixed in memory)", dev, inode)
        return None

    def _renamed_away(self, ctx: RootContext, path: bytes, dev: int, st: os.stat_result) -> Optional[bytes]:
        for suffix in BACKUP_SUFFIXES:
            if path.endswith(suffix):
                original = path[: -len(suffix)]
                other = self.view.stat(ctx, original, dev)
                if not isinstance(other, int) and (other.st_dev, other.st_ino) != (st.st_dev, st.st_ino) \
                        and stat_mod.S_ISREG(other.st_mode):
                    return original
        return None

    def _script(self, pid: int, ctx: RootContext, starttime: int, exe: bytes) -> Optional[StaleFile]:
        fam = scripts.family(exe)
        if fam is None:
            return None
        arg = scripts.script_argument(fam, procfs.read_cmdline(pid))
        if not arg:
            return None
        path = arg
        if not path.startswith(b"/"):
            cwd = split_deleted(procfs.read_link(pid, "cwd"))[0]
            path = cwd.rstrip(b"/") + b"/" + path
        path = os.path.normpath(path)
        if self.ignore.match(path) is not None or not self._wanted(path):
            return None
        name = os.fsdecode(path)
        st_now = self.view.stat(ctx, path)
        # The interpreter may keep the script open (bash: fd 255, dash: fd 10, perl with __DATA__).
        held = self._held_fd(pid, path)
        if held is not None:
            fd_st, fd_deleted = held
            if fd_deleted:
                kind = REPLACED if fd_st.st_nlink > 0 else DELETED
                there = "a new file is at the path" if not isinstance(st_now, int) else "nothing is at the path now"
                return StaleFile(name, kind, ROLE_SCRIPT, f"the script the interpreter holds open was "
                                 f"{'unlinked from this name' if kind == REPLACED else 'deleted'}; {there}",
                                 fd_st.st_dev, fd_st.st_ino)
            if isinstance(st_now, int):
                self.unverifiable += 1
                return None
            if (st_now.st_dev, st_now.st_ino) != (fd_st.st_dev, fd_st.st_ino):
                return StaleFile(name, REPLACED, ROLE_SCRIPT, "the path now names another file",
                                 fd_st.st_dev, fd_st.st_ino)
            if self.clock.changed_after_start(fd_st.st_mtime_ns, starttime):
                return StaleFile(name, MODIFIED, ROLE_SCRIPT, "written after the process started",
                                 fd_st.st_dev, fd_st.st_ino)
            return None
        if isinstance(st_now, int):
            self.unverifiable += 1  # e.g. an interpreter that chrooted (wsdd): unknown, not stale
            return None
        from soswap.proc.statx import birth_time_ns

        full = os.fsencode(ctx.prefix) + path if ctx.prefix else path
        born = birth_time_ns(full)
        if born is None:
            born = st_now.st_ctime_ns  # no birth time: ctime, which chmod also moves (documented)
        if self.clock.changed_after_start(born, starttime):
            return StaleFile(name, REPLACED, ROLE_SCRIPT, "the file at this path was created after the "
                             "interpreter started: it runs an older script", st_now.st_dev, st_now.st_ino)
        if self.clock.changed_after_start(st_now.st_mtime_ns, starttime):
            return StaleFile(name, MODIFIED, ROLE_SCRIPT, "the script was written after the interpreter started",
                             st_now.st_dev, st_now.st_ino)
        return None

    def _held_fd(self, pid: int, path: bytes) -> Optional[Tuple[os.stat_result, bool]]:
        try:
            fds = procfs.list_fds(pid)
        except (AccessDenied, ProcessGone):
            return None
        for fd in fds:
            try:
                target = procfs.read_link(pid, f"fd/{fd}")
            except (AccessDenied, ProcessGone):
                continue
            name, deleted = split_deleted(target)
            if name == path:
                try:
                    return os.stat(f"{procfs.PROC}/{pid}/fd/{fd}"), deleted
                except OSError:
                    return None
        return None

    def _has_deleted_fd(self, pid: int) -> bool:
        """Pass 1 with --fds: does any fd name a deleted file?"""
        try:
            fds = procfs.list_fds(pid)
        except (AccessDenied, ProcessGone):
            return False
        for fd in fds:
            try:
                target = procfs.read_link(pid, f"fd/{fd}")
            except (AccessDenied, ProcessGone):
                continue
            if target.startswith(b"/") and target.endswith(DELETED_SUFFIX):
                return True
        return False

    def _open_files(self, pid: int, seen: set) -> List[StaleFile]:
        out: List[StaleFile] = []
        try:
            fds = procfs.list_fds(pid)
        except (AccessDenied, ProcessGone):
            return out
        for fd in fds:
            try:
                target = procfs.read_link(pid, f"fd/{fd}")
            except (AccessDenied, ProcessGone):
                continue
            if not target.startswith(b"/") or not target.endswith(DELETED_SUFFIX):
                continue
            path = target[: -len(DELETED_SUFFIX)]
            if self.ignore.match(path) is not None or not self._wanted(path):
                continue
            try:
                st = os.stat(f"{procfs.PROC}/{pid}/fd/{fd}")
            except OSError:
                continue
            if not stat_mod.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen or st.st_nlink > 0:
                continue
            seen.add((st.st_dev, st.st_ino))
            out.append(StaleFile(os.fsdecode(path), DELETED, ROLE_OPEN, f"deleted file held open as fd {fd}",
                                 st.st_dev, st.st_ino))
        return out

    def _describe(self, pid: int, s1: procfs.ProcStat, exe: bytes, files: List[StaleFile]) -> Optional[StaleProcess]:
        cmdline = procfs.read_cmdline(pid)
        uid = procfs.read_uid(pid)
        try:
            cg = cgroup_mod.parse(procfs.read_file(pid, "cgroup"))
        except AccessDenied:
            cg = cgroup_mod.CgroupInfo("", None, None)
        container = cg.container
        if container is None:
            pidns = procfs.ns_inode(pid, "pid")
            mnt = self.view.foreign_mount_ns(pid)
            if pidns is not None and self.own_pid_ns is not None and pidns != self.own_pid_ns:
                container = f"pidns:{pidns}"
            elif mnt is not None:
                container = f"mntns:{mnt}"
        s2 = procfs.read_stat(pid)
        if s2.starttime != s1.starttime:
            raise ProcessGone(pid, "PID reused during the scan")
        order = {ROLE_EXE: 0, ROLE_SCRIPT: 1, ROLE_LIBRARY: 2, ROLE_MAPPED: 3, ROLE_OPEN: 4}
        files.sort(key=lambda f: (order.get(f.role, 9), f.path))
        return StaleProcess(
            pid=pid,
            ppid=s1.ppid,
            uid=uid,
            starttime=s1.starttime,
            comm=os.fsdecode(s1.comm),
            exe=os.fsdecode(exe),
            cmdline=tuple(os.fsdecode(a) for a in cmdline),
            unit=cg.unit,
            container=container,
            cgroup=cg.path,
            files=tuple(files),
        )

    # -- driver --------------------------------------------------------------------------------------------
    def run(self) -> StaleReport:
        import time

        started = time.time()
        pids = list(self.o.pids) if self.o.pids is not None else procfs.list_pids()
        found: List[StaleProcess] = []
        explicit = self.o.pids is not None
        for pid in pids:
            if pid == self.self_pid:
                continue
            self._pid = pid
            try:
                data = procfs.read_file(pid, "maps")
                if not data:
                    continue  # kernel thread or zombie: no address space
                self.scanned += 1
                if not (explicit or self._suspect(pid, data)
                        or (self.o.include_fds and self._has_deleted_fd(pid))):
                    continue
                proc = self._exact(pid)
            except ProcessGone:
                continue
            except AccessDenied:
                self.unreadable += 1
                continue
            if proc is not None:
                found.append(proc)
        kernel = None
        if self.o.kernel:
            from soswap.proc import kernel as kernel_mod

            kernel = kernel_mod.check(self.o.boot_dir)
        return StaleReport(
            processes=tuple(found),
            partial=self.unreadable > 0,
            scanned=self.scanned,
            unreadable=self.unreadable,
            unverifiable=self.unverifiable,
            kernel=kernel,
            scan_time=started,
        )


def _in_journal(journal: JournalView, dev: int, inode: int, st: Optional[os.stat_result]) -> bool:
    if (dev, inode) in journal.replaced:
        return True
    return st is not None and (st.st_dev, st.st_ino) in journal.replaced


def _first_range(data: bytes, dev_b: bytes, ino_b: bytes) -> Tuple[Optional[int], int]:
    """The address range of the first maps line with this dev and inode."""
    needle = b" " + dev_b + b" " + ino_b + b" "
    at = data.find(needle)
    if at < 0:
        return None, 0
    line_start = data.rfind(b"\n", 0, at) + 1
    addr = data[line_start : data.find(b" ", line_start)]
    start, _, end = addr.partition(b"-")
    try:
        return int(start, 16), int(end, 16)
    except ValueError:
        return None, 0


def scan_stale(options: Optional[ScanOptions] = None) -> StaleReport:
    """Scan every process (or ``options.pids``) for stale code; see the module doc and docs/stale.md."""
    return _Scanner(options or ScanOptions()).run()


def check_pid_alive(pid: int, starttime: int) -> bool:
    """True when ``pid`` still is the process that started at ``starttime`` (PID reuse safe)."""
    try:
        return procfs.read_stat(pid).starttime == starttime
    except (ProcessGone, AccessDenied):
        return False
    except OSError as exc:  # pragma: no cover - unexpected /proc error
        return exc.errno not in (errno.ENOENT, errno.ESRCH)
