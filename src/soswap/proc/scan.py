"""The stale-code scan: one pass over /proc, a cheap filter per process, an exact check for the few suspects.

Pass 1 (every process): the process's executable file mappings — through the ``PROCMAP_QUERY`` ioctl
(vmaquery.py, Linux >= 6.11), else from the ``maps`` text with the address field cut off — are looked up in a
verdict cache shared by the whole scan, so a library mapped by 2,000 processes is stat()ed once. A mapping is
*suspect* when it is "(deleted)", when the path now names another inode, when the journal lists its inode, or
when the file changed after the boot (then the process's start time decides).

An interpreter is suspect only when its argv names a script whose file changed since the boot (or cannot be
judged cheaply). A process's set of mappings is judged once per distinct set (processes of one program share it).

Pass 2 (suspects only): open ``maps``, then read ``stat`` (comm, start time), the maps text, ``exe``,
``cmdline`` and the rest, classify every mapped file against the path as the process sees it (view.py), and
finally check that the address space the maps descriptor was opened on still runs
(procfs.same_address_space) and that the start time did not change. A process that exec()ed meanwhile
(CVE-2024-48991 class) is read again (up to three times, then counted as unstable), one whose PID was reused
is dropped: a report never pairs one program's files with another program's exe, argv or comm.
"""

from __future__ import annotations

import errno
import os
import stat
import stat as stat_mod
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from soswap.errors import AccessDenied, ProcessGone
from soswap.proc import cgroup as cgroup_mod
from soswap.proc import procfs, scripts
from soswap.proc.ignore import DEFAULT_IGNORE, IgnoreList
from soswap.proc.maps import (
    DELETED_SUFFIX,
    Mapping,
    line_tail,
    line_tails,
    parse_line,
    parse_maps,
    parse_tail,
    split_deleted,
    tail_identity,
    unescape,
)
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
from soswap.proc.timebase import Clock, scan_clock
from soswap.proc.view import HOST, NETWORK_FS, FileView, RootContext
from soswap.proc.vmaquery import Vma, VmaQuery
from soswap.tuples import NamedTuple

#: Name suffixes of renamed-away files (``mv lib lib.bak`` then a new file at ``lib``).
BACKUP_SUFFIXES = (b".bak", b".old", b".orig", b"~", b".dpkg-old", b".dpkg-bak", b".dpkg-dist", b".rpmsave",
                   b".rpmorig", b".save")

# Pass-1 verdicts: these sentinels, an int mtime (ns) of a file changed since the boot, or (_INTERP, mtime or 0)
# for an interpreter executable (its script must be looked at).
_OK = object()
_SUSPECT = object()
_INTERP = object()

#: Attempts of the exact check of one process before it counts as unstable (it exec()s faster than we read).
ATTEMPTS = 3

#: Default bound of the --ignore-identical SHA-256 comparison (bytes); soswap.proc.identical.DEFAULT_MAX_BYTES.
IDENTICAL_MAX_BYTES = 64 << 20


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
    ignore_identical: bool = False  #: do not report deleted/replaced files whose new version is identical
    identical_max_bytes: int = IDENTICAL_MAX_BYTES  #: files above this are not hashed (build-ids still compared)
    clock: Optional[Clock] = None  #: the time base (default: the system clocks plus the per-boot offset record)
    vma_query: bool = True  #: use the PROCMAP_QUERY ioctl for pass 1 when the kernel has it


class _Scanner:
    def __init__(self, options: ScanOptions) -> None:
        self.o = options
        self.view = FileView(stat_timeout=options.stat_timeout, guarded_fstypes=options.guarded_fstypes)
        self.clock = options.clock if options.clock is not None else scan_clock()
        self.ignore = options.ignore
        # Pass-1 caches, all keyed by the root context first (None: our own view).
        self.fast: Dict[tuple, object] = {}  # (root, dev, inode, raw path) -> verdict
        self.verdicts: Dict[tuple, object] = {}  # (root, maps line without its address) -> verdict
        self.summaries: Dict[tuple, Tuple[int, bool]] = {}  # (root, set of tails or files) -> summary
        self.tail_ids: Dict[bytes, object] = {}  # pass 2: maps line tail -> (dev, inode, raw path) or None
        #: (pid, comm) of the processes the kernel refused to show (comm empty when its stat is refused too)
        self.refused: List[Tuple[int, str]] = []
        self.unverifiable = 0
        self.scanned = 0
        self.unstable = 0
        self.identical = 0
        journal = options.journal
        if journal is not None and journal.replaced_records:
            journal = journal._replace(replaced=journal.replaced | frozenset(journal.replaced_records))
        self.journal = journal
        self.journal_inodes = frozenset(i for _, i in journal.replaced) if journal else frozenset()
        self.query = VmaQuery() if options.vma_query and not options.include_data else None
        self.comparer = None
        if options.ignore_identical:
            from soswap.proc.identical import ContentComparer

            self.comparer = ContentComparer(options.identical_max_bytes, journal, self.view.guarded)
        self.prefixes = tuple(os.fsencode(p.rstrip("/") or "/") for p in options.path_prefixes)
        self.self_pid = os.getpid()
        self.own_pid_ns = procfs.own_ns_inode("pid")
        self.page = os.sysconf("SC_PAGE_SIZE") if "SC_PAGE_SIZE" in os.sysconf_names else 4096

    # -- pass 1 --------------------------------------------------------------------------------------------
    def _fast_verdict(self, ctx: RootContext, dev: int, inode: int, raw: bytes, escaped: bool,
                      where: Callable[[], Tuple[Optional[int], int]]) -> object:
        """_OK, _SUSPECT, an int mtime (ns) of a matching file changed after boot, or for an interpreter
        executable ``(_INTERP, mtime or 0)`` (its script must be looked at).

        ``raw``: the path as maps (``escaped``: with ``\\012`` escapes) or PROCMAP_QUERY shows it, " (deleted)"
        included; ``where()``: the address range of one mapping of it (for map_files)."""
        path, deleted = split_deleted(raw)
        if escaped:
            path = unescape(path)
        if self.ignore.match(path) is not None:
            return _OK
        if deleted or (escaped and b"\\" in raw):
            return _SUSPECT  # a "\\012" in maps is ambiguous: the exact check asks map_files for the name
        if inode in self.journal_inodes or path.endswith(BACKUP_SUFFIXES):
            return _SUSPECT
        st = self.view.stat(ctx, path, dev)
        if isinstance(st, int):
            return _SUSPECT  # not visible from this root (another mount namespace, most likely)
        if st.st_ino != inode:
            return _SUSPECT
        if st.st_dev != dev:
            if os.major(dev) != 0 and os.major(st.st_dev) != 0:
                return _SUSPECT
            start, end = where()
            # The pid is only needed to reach map_files; the result is cached per (dev, inode).
            if start is not None and not self.view.same_file(self._pid, dev, inode, start, end, st):
                return _SUSPECT
        changed = st.st_mtime_ns if st.st_mtime_ns > self.clock.earliest_boot_ns else 0
        if self.o.scripts and scripts.family(path) is not None:
            return (_INTERP, changed)
        return changed or _OK

    def _tail_verdict(self, ctx: RootContext, tail: bytes, data: bytes) -> object:
        """The pass-1 verdict of one maps line (address cut off) in one root."""
        parsed = parse_tail(tail)
        if parsed is None:
            return _OK
        x, dev_b, ino_b, raw = parsed
        if x != b"x" and not self.o.include_data:
            return _OK
        major, _, minor = dev_b.partition(b":")
        dev = os.makedev(int(major, 16), int(minor, 16))
        inode = int(ino_b)
        key = (ctx.key, dev, inode, raw)
        verdict = self.fast.get(key)
        if verdict is None:
            verdict = self._fast_verdict(ctx, dev, inode, raw, True, lambda: _first_range(data, dev_b, ino_b))
            if verdict is not _SUSPECT:
                self.fast[key] = verdict
        return verdict

    def _fold(self, verdicts: Iterable[object]) -> Optional[Tuple[int, bool]]:
        """A process's summary from its files' verdicts: None (suspect) or (newest mtime changed since boot,
        0 if none; whether it runs an interpreter)."""
        newest = 0
        interp = False
        for verdict in verdicts:
            if verdict is _OK:
                continue
            if verdict is _SUSPECT:
                return None
            if type(verdict) is tuple:
                interp = True
                verdict = verdict[1]  # type: ignore[index]
            if verdict > newest:  # type: ignore[operator]
                newest = verdict  # type: ignore[assignment]
        return newest, interp

    def _summarize(self, ctx: RootContext, tails: frozenset, data: bytes) -> Optional[Tuple[int, bool]]:
        """The summary (see :meth:`_fold`) of a maps text's set of line tails, cached per (root, set)."""
        key = (ctx.key, tails)
        summary = self.summaries.get(key)
        if summary is not None:
            return summary
        verdicts = self.verdicts

        def each() -> Iterable[object]:
            for tail in tails:
                vkey = (ctx.key, tail)
                verdict = verdicts.get(vkey)
                if verdict is None:
                    verdict = self._tail_verdict(ctx, tail, data)
                    if verdict is not _SUSPECT:
                        verdicts[vkey] = verdict
                yield verdict

        summary = self._fold(each())
        if summary is not None:  # a suspect set is not cached: the exact check runs for every such process
            self.summaries[key] = summary
        return summary

    def _summarize_vmas(self, ctx: RootContext, key: frozenset, vmas: List[Vma]) -> Optional[Tuple[int, bool]]:
        """:meth:`_summarize` for the executable file mappings PROCMAP_QUERY returned."""
        skey = (ctx.key, key)
        summary = self.summaries.get(skey)
        if summary is not None:
            return summary
        fast = self.fast

        def each() -> Iterable[object]:
            for start, end, dev, inode, raw in vmas:
                if not inode or not raw.startswith(b"/"):
                    continue  # anon_inode:..., pseudo names
                fkey = (ctx.key, dev, inode, raw)
                verdict = fast.get(fkey)
                if verdict is None:
                    verdict = self._fast_verdict(ctx, dev, inode, raw, False, lambda s=start, e=end: (s, e))
                    if verdict is not _SUSPECT:
                        fast[fkey] = verdict
                yield verdict

        summary = self._fold(each())
        if summary is not None:
            self.summaries[skey] = summary
        return summary

    def _decide(self, pid: int, summary: Optional[Tuple[int, bool]],
                again: Callable[[RootContext], Optional[Tuple[int, bool]]]) -> bool:
        # Decided first in our own view (no syscall to learn the process's namespace); on a mismatch, again in
        # the process's own root (containers), cached per (root, set) as well.
        if summary is None:
            ctx = self.view.root_of(pid)
            if ctx.key is not None:
                summary = again(ctx)
        if summary is None:
            return True
        newest, interp = summary
        # False (older than the start) or None (a file time in the unexplained future: the exact check counts it
        # as unverifiable): only a certain "not after the start" clears the process.
        if newest and self.clock.judge(newest, procfs.read_starttime(pid)) is not False:
            return True
        return interp and self._script_may_be_stale(pid)

    def _script_may_be_stale(self, pid: int) -> bool:
        """Pass 1 for an interpreter: is there a script, and did anything at its path change since boot?

        A script whose file was neither created nor written since the boot is the one every interpreter
        started since then runs (one that was replaced has a newer file at the path, or none)."""
        try:
            exe = procfs.read_link(pid, "exe")
        except ProcessGone:
            return False
        fam = scripts.family(exe)
        if fam is None:
            return False  # maps an interpreter binary without being one
        arg = scripts.script_argument(fam, procfs.read_cmdline(pid))
        if not arg:
            return False  # -c, -m, -e, stdin, interactive
        if not arg.startswith(b"/"):
            return True  # relative: resolved against /proc/PID/cwd by the exact check
        path = os.path.normpath(self.view.kernel_path(pid, arg))
        if self.ignore.match(path) is not None or not self._wanted(path):
            return False
        st = self.view.stat(self.view.root_of(pid), path)
        if isinstance(st, int):
            return True  # not visible: the exact check counts it as unverifiable
        boot = self.clock.earliest_boot_ns
        return st.st_ctime_ns > boot or st.st_mtime_ns > boot

    def _suspect(self, pid: int) -> Optional[bool]:
        """Pass 1 for one process: does it need the exact check? None: no address space (kernel thread,
        zombie). A process whose main thread ended while others run is read through a live thread."""
        try:
            verdict = self._suspect_once(pid)
        except ProcessGone:
            if not procfs.adopt_live_thread(pid):
                raise
            return self._suspect_once(pid)
        if verdict is None and procfs.adopt_live_thread(pid):
            return self._suspect_once(pid)
        return verdict

    def _suspect_once(self, pid: int) -> Optional[bool]:
        query = self.query
        if query is not None and query.supported:
            vmas = query.file_vmas(pid)
            if vmas is not None:
                self.scanned += 1
                # Processes of one program map the same files: the set is judged once.
                key = frozenset([(dev, inode, raw) for _, _, dev, inode, raw in vmas])
                return self._decide(pid, self._summarize_vmas(HOST, key, vmas),
                                    lambda ctx: self._summarize_vmas(ctx, key, vmas))
        data = procfs.read_file(pid, "maps")
        if not data:
            return None  # kernel thread or zombie: no address space
        self.scanned += 1
        # Processes of one program have the same lines once the addresses are cut off: decided once per set.
        tails = line_tails(data)
        return self._decide(pid, self._summarize(HOST, tails, data),
                            lambda ctx: self._summarize(ctx, tails, data))

    # -- pass 2 --------------------------------------------------------------------------------------------
    def _exact(self, pid: int) -> Optional[StaleProcess]:
        """The exact check of one process, read again when it exec()ed meanwhile (see the module doc)."""
        for _ in range(ATTEMPTS):
            counters = (self.unverifiable, self.identical)
            self.view.forget_root(pid)
            # maps is opened first: its descriptor pins the address space, and everything read after the open
            # (stat's comm and start time included) is checked against it at the end.
            fd = procfs.open_entry(pid, "maps")
            try:
                s1 = procfs.read_stat(pid)
                if s1.kernel_thread or s1.zombie:
                    return None
                try:
                    proc = self._exact_once(pid, fd, s1)
                except ProcessGone:
                    # A mapping or an fd vanished under us. Gone for good, or exec()ed (read it again)?
                    if not check_pid_alive(pid, s1.starttime):
                        raise
                    proc = None
                    raced = True
                else:
                    # Everything read so far belongs to the program whose maps were read only if that address
                    # space still runs (and the PID still is the process that started at s1.starttime).
                    raced = not procfs.same_address_space(fd)
                if not raced:
                    if procfs.read_starttime(pid) != s1.starttime:
                        raise ProcessGone(pid, "PID reused during the scan")
                    return proc
            finally:
                os.close(fd)
            self.unverifiable, self.identical = counters  # the attempt's counts are discarded with it
        self.unstable += 1
        return None

    def _exact_once(self, pid: int, maps_fd: int, s1: procfs.ProcStat) -> Optional[StaleProcess]:
        """One attempt: every /proc entry is read once, after ``maps``; the caller checks the address space."""
        data = procfs.read_fd(maps_fd, pid, "maps")
        if not data:
            return None  # exited or exec()ed since the open: the caller's check tells which
        ctx = self.view.root_of(pid)
        mappings = self._mappings_to_check(ctx, data)
        try:
            exe = procfs.read_link(pid, "exe")
        except ProcessGone:
            exe = b""
        cmdline = procfs.read_cmdline(pid)
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
            f = self._script(pid, ctx, s1.starttime, exe, cmdline)
            if f is not None:
                files.append(f)
        if self.o.include_fds:
            files.extend(self._open_files(pid, ctx, {(f.dev, f.inode) for f in files}))
        if not files:
            return None
        return self._describe(pid, s1, exe, cmdline, files)

    def _mappings_to_check(self, ctx: RootContext, data: bytes) -> List[Mapping]:
        """The file-backed mappings of a maps text, without the lines of files pass 1 found unchanged since
        the boot (same inode at the path, not deleted, mtime before the boot: nothing the exact check could
        report), which are most lines of most suspects."""
        fast = self.fast
        if not fast:
            return parse_maps(data)  # --pid: no pass 1 ran
        ids = self.tail_ids
        key = ctx.key
        out = []
        for line in data.split(b"\n"):
            tail = line_tail(line)
            ident = ids.get(tail, _OK)
            if ident is _OK:
                ident = ids[tail] = tail_identity(tail)
            if ident is None or fast.get((key, *ident)) is _OK:
                continue
            m = parse_line(line)
            if m is not None:
                out.append(m)
        return out

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
        journal = self.journal
        view = self.view
        old_link = procfs.entry_path(pid, procfs.map_files_name(first.start, first.end))
        if deleted:
            # A live file literally named "x (deleted)" shows the same suffix: check that name first.
            literal = view.stat(ctx, path + DELETED_SUFFIX, dev)
            if not isinstance(literal, int) and view.same_file(pid, dev, inode, first.start, first.end, literal):
                deleted = False
                path += DELETED_SUFFIX
                name = os.fsdecode(path)
        if deleted:
            now = view.stat(ctx, path, dev)
            if not isinstance(now, int) and now.st_nlink > 0 and view.same_file(pid, dev, inode, first.start,
                                                                                 first.end, now):
                # the mapped inode is at its name again, under a new dentry (a rollback renamed it back): the
                # kernel's d_path still says "(deleted)" for the dentry it was mapped through. (With no link
                # left it is only a bind mount's source, deleted: still reported.)
                deleted = False
        if deleted:
            if not isinstance(now, int) and stat.S_ISDIR(now.st_mode):
                # d_path of a file whose mount was detached in the process's namespace (its bind mount gone
                # when the file under it was replaced) is "/": the name it was mapped under is not known
                there = "the name it was mapped under is unknown (its mount was detached: maps says '/')"
            else:
                there = (f"a new file (inode {now.st_ino}) is at the path" if not isinstance(now, int)
                         else "nothing is at the path now")
            mf = view.map_file_stat(pid, dev, inode, first.start, first.end)
            if mf is not None and mf.st_nlink > 0:
                f = StaleFile(name, REPLACED, role, f"unlinked from this name but alive under another (hard link, "
                              f"{mf.st_nlink} left); {there}", dev, inode)
            elif journal is not None and _in_journal(journal, dev, inode, mf):
                f = StaleFile(name, REPLACED, role, f"recorded as replaced by soswap; {there}", dev, inode)
            else:
                f = StaleFile(name, DELETED, role, f"the mapped file was deleted; {there}", dev, inode)
            return self._unless_identical(f, old_link, ctx, path)
        st = view.stat(ctx, path, dev)
        if isinstance(st, int):
            self.unverifiable += 1
            return None
        if not view.same_file(pid, dev, inode, first.start, first.end, st) and (
                stat.S_ISDIR(st.st_mode) or (st.st_dev != dev and view.detached(pid, dev))):
            # the name was printed relative to a detached mount (umount -l; "/" for a detached file mount):
            # it does not lead to the mapped file, whatever it names now
            self.unverifiable += 1
            return None
        if not view.same_file(pid, dev, inode, first.start, first.end, st):
            if st.st_ino == inode:  # the same number on another file system (a mount over the directory)
                detail = (f"the path now names inode {inode} of device {_dev_text(st.st_dev)}; the mapped inode "
                          f"{inode} of device {_dev_text(dev)} lives on elsewhere")
            else:
                detail = f"the path now names inode {st.st_ino}; the mapped inode {inode} lives on elsewhere"
            return self._unless_identical(StaleFile(name, REPLACED, role, detail, dev, inode), old_link, ctx, path)
        if journal is not None and _in_journal(journal, dev, inode, st):
            return self._unless_identical(StaleFile(
                name, REPLACED, role, "recorded as a replaced old version by soswap", dev, inode), old_link, ctx, None)
        copied = view.overlay_copy(path, st.st_dev) if ctx.key is None and os.major(st.st_dev) == 0 else None
        detail = self._copy_up(copied[0], starttime, st.st_mtime_ns) if copied is not None else None
        if copied is not None and detail is not None:
            return self._unless_identical(StaleFile(name, REPLACED, role, detail, dev, inode),
                                          os.fsdecode(copied[1]), ctx, copied[0])
        if path.endswith(BACKUP_SUFFIXES):
            renamed = self._renamed_away(ctx, path, dev, st)
            if renamed is not None:
                return self._unless_identical(StaleFile(
                    name, REPLACED, role, f"renamed away: {os.fsdecode(renamed)} now holds another file", dev, inode),
                    old_link, ctx, renamed)
        limit = -(-st.st_size // self.page) * self.page
        over = [m for m in ms if m.accessible and m.offset + (m.end - m.start) > limit]
        # A file cut short since the start (truncate always moves ctime), whose mapping past the end is one a
        # finished load makes: ld.so first maps the whole span of a library's segments from its first offset and
        # then maps each segment over it (_dl_map_segments; the kernel's load_elf_binary does the same for the
        # exe), so a process caught inside dlopen() or exec() briefly maps an intact file past its end.
        if over and self.clock.judge(st.st_ctime_ns, starttime) and not self._loader_transient(ctx, path, dev, over):
            needed = max(m.offset + (m.end - m.start) for m in over)
            return StaleFile(name, TRUNCATED, role,
                             f"the file is {st.st_size} bytes, the mapping needs {needed}: access faults (SIGBUS)",
                             dev, inode)
        after = self.clock.judge(st.st_mtime_ns, starttime)
        if after is None:
            self.unverifiable += 1  # a file time in the unexplained future: the clock cannot tell
            return None
        if after:
            if journal is not None:
                rec = journal.installed.get((st.st_dev, st.st_ino))
                if rec is not None and rec.size == st.st_size and rec.mtime_ns == st.st_mtime_ns:
                    return None  # exactly the content soswap installed: it was loaded after the install
            return StaleFile(name, MODIFIED, role, "same inode, written after the process started "
                             "(in-place change: old and new code mixed in memory)", dev, inode)
        return None

    def _copy_up(self, upper: bytes, starttime: int, mtime_ns: int) -> Optional[str]:
        """Why a file whose overlay copy is ``upper`` (a host path) counts as replaced, or None. The copy's
        creation (statx birth time, else ctime) after the start: the process maps the lower file the copy hides.
        Within a tick of the start, and written after it: the lower file, or the copy written in place; either
        way the copy began as the lower file's bytes, so comparing it with the lower file tells whether the code
        changed."""
        from soswap.proc.statx import birth_time_ns

        try:
            born = birth_time_ns(upper) or os.stat(upper).st_ctime_ns
        except OSError:
            return None
        if self.clock.judge(born, starttime):
            return ("overlayfs: written through the overlay after the process started (copied up into its upper "
                    "layer); the process maps the lower layer's file it now hides")
        if self.clock.around_start(born, starttime) and self.clock.judge(mtime_ns, starttime):
            return ("overlayfs: copied up into its upper layer as the process started and written after it; the "
                    "process maps the lower layer's file it now hides, or the copy written in place")
        return None

    def _loader_transient(self, ctx: RootContext, path: bytes, dev: int, over: List[Mapping]) -> bool:
        """True when no mapping in ``over`` (all past the end of the ELF file at ``path``) lies within one
        PT_LOAD segment's page-rounded file range: none is a segment of a finished load, so the loader is
        half-way through mapping the file (see the truncation rule). False when the file is not a readable ELF
        file (data mapped past its end by the program itself) or could hang (network filesystem)."""
        if self.view.guarded(dev):
            return False
        from soswap.elf.file import ElfFile
        from soswap.errors import ElfError

        full = ctx.host(path)
        if full is None:
            return False
        try:
            with ElfFile.open(full) as elf:
                loads = [seg for seg in elf.segments if seg.type == 1]  # PT_LOAD
        except ElfError:
            return False
        page = self.page
        ranges = [(seg.offset - seg.offset % page, -(-(seg.offset + seg.filesz) // page) * page) for seg in loads]
        for m in over:
            end = m.offset + (m.end - m.start)
            if any(lo <= m.offset and end <= hi for lo, hi in ranges):
                return False
        return True

    def _unless_identical(self, f: StaleFile, old_link: str, ctx: RootContext,
                          new_path: Optional[bytes]) -> Optional[StaleFile]:
        """With --ignore-identical: None when the old version (opened through ``old_link``) has the same
        content as the file now at ``new_path``; else ``f``, its detail saying what the comparison found."""
        if self.comparer is None:
            return f
        if new_path is None:
            return f._replace(detail=f"{f.detail}; not compared: the new version's name is unknown")
        full = ctx.host(new_path)
        if full is None:
            return f._replace(detail=f"{f.detail}; not compared: the new version is outside the process's root")
        verdict = self.comparer.compare(old_link, f.dev, f.inode, full)
        if verdict.same:
            self.identical += 1
            return None
        return f._replace(detail=f"{f.detail}; {verdict.how}")

    def _renamed_away(self, ctx: RootContext, path: bytes, dev: int, st: os.stat_result) -> Optional[bytes]:
        for suffix in BACKUP_SUFFIXES:
            if path.endswith(suffix):
                original = path[: -len(suffix)]
                other = self.view.stat(ctx, original, dev)
                if not isinstance(other, int) and (other.st_dev, other.st_ino) != (st.st_dev, st.st_ino) \
                        and stat_mod.S_ISREG(other.st_mode):
                    return original
        return None

    def _script(self, pid: int, ctx: RootContext, starttime: int, exe: bytes,
                cmdline: Tuple[bytes, ...]) -> Optional[StaleFile]:
        fam = scripts.family(exe)
        if fam is None:
            return None
        arg = scripts.script_argument(fam, cmdline)
        if not arg:
            return None
        path = arg
        if not path.startswith(b"/"):
            cwd = split_deleted(procfs.read_link(pid, "cwd"))[0]
            path = cwd.rstrip(b"/") + b"/" + path
        else:  # its argv is in its own root; cwd, maps and exe are printed as the kernel sees them from ours
            path = self.view.kernel_path(pid, path)
        path = os.path.normpath(path)
        if self.ignore.match(path) is not None or not self._wanted(path):
            return None
        name = os.fsdecode(path)
        st_now = self.view.stat(ctx, path)
        # The interpreter may keep the script open (bash: fd 255, dash: fd 10, perl with __DATA__).
        held = self._held_fd(pid, path)
        if held is not None:
            fd, fd_st, fd_deleted = held
            old_link = procfs.entry_path(pid, f"fd/{fd}")
            if fd_deleted:
                kind = REPLACED if fd_st.st_nlink > 0 else DELETED
                there = "a new file is at the path" if not isinstance(st_now, int) else "nothing is at the path now"
                return self._unless_identical(StaleFile(
                    name, kind, ROLE_SCRIPT, f"the script the interpreter holds open was "
                    f"{'unlinked from this name' if kind == REPLACED else 'deleted'}; {there}",
                    fd_st.st_dev, fd_st.st_ino), old_link, ctx, path)
            if isinstance(st_now, int):
                self.unverifiable += 1
                return None
            if (st_now.st_dev, st_now.st_ino) != (fd_st.st_dev, fd_st.st_ino):
                return self._unless_identical(StaleFile(
                    name, REPLACED, ROLE_SCRIPT, "the path now names another file", fd_st.st_dev, fd_st.st_ino),
                    old_link, ctx, path)
            after = self.clock.judge(fd_st.st_mtime_ns, starttime)
            if after is None:
                self.unverifiable += 1
            elif after:
                return StaleFile(name, MODIFIED, ROLE_SCRIPT, "written after the process started",
                                 fd_st.st_dev, fd_st.st_ino)
            return None
        if isinstance(st_now, int):
            self.unverifiable += 1  # e.g. an interpreter that chrooted (wsdd): unknown, not stale
            return None
        created_after = self.clock.judge(st_now.st_ctime_ns, starttime)
        if created_after:
            # ctime also moves on chmod/touch: ask for the birth time (statx) — only here, since a file born
            # after the start has a ctime after it too, and statx costs the ctypes import.
            from soswap.proc.statx import birth_time_ns

            # (not on a network filesystem: the stat above answered, a second call may not)
            full = ctx.host(path)
            born = None if self.view.guarded(st_now.st_dev) or full is None else birth_time_ns(full)
            if born is not None:  # else ctime stands in for it (documented)
                created_after = self.clock.judge(born, starttime)
        written_after = self.clock.judge(st_now.st_mtime_ns, starttime)
        if created_after:
            f = StaleFile(name, REPLACED, ROLE_SCRIPT, "the file at this path was created after the "
                          "interpreter started: it runs an older script", st_now.st_dev, st_now.st_ino)
            # The old version is gone from every view we have: nothing to compare it with.
            return self._unless_identical(f, "", ctx, None)
        if written_after:
            return StaleFile(name, MODIFIED, ROLE_SCRIPT, "the script was written after the interpreter started",
                             st_now.st_dev, st_now.st_ino)
        if created_after is None or written_after is None:
            self.unverifiable += 1
        return None

    def _held_fd(self, pid: int, path: bytes) -> Optional[Tuple[str, os.stat_result, bool]]:
        """(fd number, stat of the open file, whether its name ends in " (deleted)") of an fd naming ``path``."""
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
                st = self.view.stat_open_file(pid, fd)
                return None if isinstance(st, int) else (fd, st, deleted)
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

    def _open_files(self, pid: int, ctx: RootContext, seen: set) -> List[StaleFile]:
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
                st = os.stat(procfs.entry_path(pid, f"fd/{fd}"))
            except OSError:
                continue
            if not stat_mod.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen or st.st_nlink > 0:
                continue
            seen.add((st.st_dev, st.st_ino))
            f = self._unless_identical(StaleFile(os.fsdecode(path), DELETED, ROLE_OPEN,
                                                 f"deleted file held open as fd {fd}", st.st_dev, st.st_ino),
                                       procfs.entry_path(pid, f"fd/{fd}"), ctx, path)
            if f is not None:
                out.append(f)
        return out

    def _describe(self, pid: int, s1: procfs.ProcStat, exe: bytes, cmdline: Tuple[bytes, ...],
                  files: List[StaleFile]) -> StaleProcess:
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
        pids = list(dict.fromkeys(self.o.pids)) if self.o.pids is not None else procfs.list_pids()  # once each
        found: List[StaleProcess] = []
        explicit = self.o.pids is not None
        for pid in pids:
            if pid == self.self_pid:
                continue
            self._pid = pid
            try:
                if explicit:
                    st = procfs.read_stat(pid)
                    if st.kernel_thread or st.zombie:
                        continue  # no address space
                    self.scanned += 1
                else:
                    suspect = self._suspect(pid)
                    if suspect is None:
                        continue  # kernel thread or zombie: no address space
                    if not (suspect or (self.o.include_fds and self._has_deleted_fd(pid))):
                        continue
                proc = self._exact(pid)
            except ProcessGone:
                continue
            except AccessDenied:
                self.refused.append((pid, procfs.comm_of(pid)))
                continue
            if proc is not None:
                found.append(proc)
        kernel = None
        if self.o.kernel:
            from soswap.proc import kernel as kernel_mod

            kernel = kernel_mod.check(self.o.boot_dir)
        return StaleReport(
            processes=tuple(found),
            partial=bool(self.refused),
            scanned=self.scanned,
            unreadable=len(self.refused),
            unverifiable=self.unverifiable,
            kernel=kernel,
            scan_time=started,
            unstable=self.unstable,
            identical=self.identical,
            refused=tuple(self.refused),
        )


def _dev_text(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


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
