"""Whole results of ``soswap tree`` kept between runs: what a file's tree printed, reused while nothing the
emulation read has changed. A warm run of a thousand programs is then a few thousand ``stat`` calls.

Unlike the binding results (:mod:`soswap.loader.bindstore`), these include the search, so a result holds
only while every fact the searches of the run that computed it saw still holds. Those facts are its
*witnesses*, gathered from the loader after the run:

* every directory a search listed (:meth:`Loader.listed_directories`), by ``(st_ino, st_ctime_ns)`` taken
  before the listing, or its absence: creating, removing or renaming an entry, and ``utime``, set the ctime;
* every path a search ``stat``-ed (:meth:`Loader.stat_witnesses`: candidates, absolute names, preloads), by
  ``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns, st_mode)`` or the errno it gave;
* every object of every result, by its file's ``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` (a file
  rewritten in place keeps its inode but not its ctime); ``ld.so.cache`` and ``ld.so.preload`` the same way;
* the mount table (a digest of ``/proc/self/mountinfo``): a remount noexec or nosuid, a bind mount over a
  directory, an unmount change what ld.so may map and leave every stat result as it was;
* each FILE itself, by the same key, and the ``$ORIGIN`` the program would get (``_dl_get_origin`` resolves
  symbolic links: a flipped ``current -> v2`` link changes it although the file may be the same inode).

The facts of one run form a *group*; a group whose witnesses all hold answers for every FILE it holds. A
group with a changed witness is dropped whole. Results are keyed by the settings too: soswap's code (the
size and mtime of every module), the options that change what is printed, the loader profile as detected
now (glibc version, directories, hwcaps levels), the environment (``LD_LIBRARY_PATH``, ``LD_PRELOAD``, the
working directory, the caller's IDs).

Secure mode (AT_SECURE) follows from the FILE's mode and owner (in its key), the caller's IDs (in the
settings), its capabilities (``setcap`` sets the ctime) and, for a set-ID file or a caller other than root,
whether its mount is ``nosuid``: that flag is kept with the FILE and compared too.

Not kept: results that depend on what the witnesses do not cover: a program of another loader ABI than the
host's (a 32-bit program on x86-64: its profile is derived from files not watched), errors, what-if
substitutions, and everything under ``--root`` (soswap maps a root's paths to host paths by resolving the
root's own links: a link changed there would leave every watched host path as it was).

Racy files: a run that saw a file or directory change less than :data:`RACY_NS` before it started keeps
nothing (git's "racily clean" rule: a second change within one timestamp tick could keep the ctime).

The file is ``trees.json`` in the cache directory, read and written by :mod:`soswap.cachefile` (checksums,
atomic replacement, only if owned by this user or root); nothing in it is evaluated, and every value is
type-checked before use.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from soswap import __version__
from soswap.cachefile import Part, Unusable, decode_part, read_document, write_document
from soswap.digest import sha256_hex
from soswap.loader import model as M
from soswap.tuples import NamedTuple

FORMAT = "soswap-trees"
VERSION = 1
FILE = "trees.json"
#: Groups kept (the most recently used first); groups beyond :data:`MAX_ENTRIES` results in all are dropped
#: too (a group of other settings, not decoded, counts one result per 512 bytes).
MAX_GROUPS = 8
MAX_ENTRIES = 20_000
#: A witness that changed less than this before the run started is not trusted to change its ctime again.
RACY_NS = 2_000_000_000

#: A witness: a stat key (list of ints) or an errno (int).
Witness = Any
#: A FILE's facts: its witness, its ``$ORIGIN``, whether its mount is ``nosuid`` (None: does not matter).
Facts = Tuple[Witness, Optional[str], Optional[bool]]


def stat_key(st: os.stat_result) -> List[int]:
    """What a stat result is compared by."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode]


def stat_witness(path: str) -> Witness:
    """The witness of ``path``: its :func:`stat_key`, or the errno ``stat`` gave."""
    try:
        return stat_key(os.stat(path))
    except OSError as exc:
        return exc.errno or 0
    except ValueError:  # an embedded NUL (only a forged file holds one): a fact that never holds
        return -1


def mounts_fingerprint() -> str:
    """A digest of this process's mount table (``/proc/self/mountinfo``): a remount (noexec, nosuid, ro), a
    bind mount over itself or an unmount changes what ld.so may map and no stat result shows it."""
    from soswap.textfile import read_regular

    try:
        raw = read_regular("/proc/self/mountinfo", 64 << 20)
    except OSError as exc:
        return f"unreadable: {exc.errno}"
    return sha256_hex(raw)


def code_fingerprint() -> str:
    """soswap's version and the (name, size, mtime, ctime) of every module of the package: a result is printed
    by the loader, the binding, the report and the command, so any change of code drops every result."""
    parts: List[object] = [__version__]
    pending = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    while pending:
        d = pending.pop()
        try:
            with os.scandir(d) as it:
                found = sorted(it, key=lambda e: e.name)
        except OSError:
            parts.append((d, None))
            continue
        for e in found:
            try:
                if e.name.endswith(".py"):
                    st = e.stat()
                    parts.append((d, e.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
                elif e.name != "__pycache__" and e.is_dir(follow_symlinks=False):
                    pending.append(e.path)
            except OSError:
                parts.append((d, e.name, None))
    return sha256_hex(repr(parts).encode("utf-8", "surrogateescape"))


class RunWitnesses:
    """The witnesses gathered while computing results (in this process, or sent by a worker)."""

    def __init__(self) -> None:
        self.dirs: Dict[str, Optional[Tuple[int, int]]] = {}
        self.probes: Dict[str, Witness] = {}
        self.members: Dict[str, Tuple[int, ...]] = {}
        self.newest_ns = 0
        #: add_result's answer by the scope tuple of the results of one shape (loading.py, _Template: they share
        #: their objects but the program's, so their members are added once); the tuple is kept with it
        self._shapes: Dict[int, Tuple[tuple, bool]] = {}

    def add_loader(self, loader: Any) -> None:
        """Everything the searches of ``loader`` listed and ``stat``-ed."""
        for d, ident, _names in loader.listed_directories():
            self.dirs[d] = ident
            if ident is not None:
                self.newest_ns = max(self.newest_ns, ident[1])
        for p, seen in loader.stat_witnesses():
            if isinstance(seen, int):
                self.probes[p] = seen
            else:
                self.probes[p] = stat_key(seen)
                self.newest_ns = max(self.newest_ns, seen.st_ctime_ns)

    def add_result(self, res: M.LoadResult) -> bool:
        """The objects of ``res`` as members, but the FILE itself (its own facts are kept with its result).
        False when one has no on-disk identity (nothing to watch)."""
        scope = res.scope
        hit = self._shapes.get(id(scope)) if scope else None  # () is one object for every empty scope
        if hit is not None and hit[0] is scope:
            return hit[1]
        ok = True
        for o in res.objects:
            elf = o.elf
            if elf is None or o.index == 0:
                continue
            fp = elf.fingerprint
            if fp is None:
                ok = False
                break
            self.members[elf.path] = fp
            self.newest_ns = max(self.newest_ns, fp[4])
        if scope:
            self._shapes[id(scope)] = (scope, ok)
        return ok

    def snapshot(self) -> Dict[str, Any]:
        """A plain value (a forked worker sends it to its parent)."""
        return {"dirs": self.dirs, "probes": self.probes, "members": self.members, "newest": self.newest_ns}

    def merge(self, snap: Dict[str, Any]) -> None:
        """Add what a worker's :meth:`snapshot` holds."""
        self.dirs.update(snap["dirs"])
        self.probes.update(snap["probes"])
        self.members.update(snap["members"])
        self.newest_ns = max(self.newest_ns, snap["newest"])


class Entry(NamedTuple):
    """One FILE's kept result: its own witness, and what the command printed for it."""

    file: Witness
    origin: Optional[str]
    nosuid: Optional[bool]
    status: int
    payload: Any
    error: str

    def facts(self) -> Tuple[Witness, Optional[str], Optional[bool]]:
        """What the FILE was when the result was computed: compared with what it is now."""
        return self.file, self.origin, self.nosuid


def _entry(value: Any, lines: List[str]) -> Optional[Entry]:
    """An entry read from a group: ``[file, origin, nosuid, status, payload, error]``, where a text payload
    is a list of indexes into the group's table of lines (the trees of a thousand programs have a few
    thousand different lines)."""
    if type(value) is not list or len(value) != 6:
        return None
    file, origin, nosuid, status, payload, error = value
    if not (type(file) is int or (type(file) is list and len(file) == 6 and all(type(x) is int for x in file))):
        return None
    if not (origin is None or type(origin) is str) or not (nosuid is None or type(nosuid) is bool):
        return None
    if type(status) is not int or type(error) is not str:
        return None
    if type(payload) is list:
        try:
            if payload and min(payload) < 0:
                return None
            payload = "".join([lines[i] for i in payload])
        except (IndexError, TypeError):
            return None
    return Entry(file, origin, nosuid, status, payload, error)


class ResultStore:
    """The kept results of one settings key (see the module documentation). ``file_facts(FILE)`` gives a
    FILE's facts as the run sees them (its witness, its ``$ORIGIN``, whether its mount is ``nosuid`` where
    that matters); ``payload_ok`` type-checks a kept payload."""

    def __init__(self, path: str, settings: Sequence[object], *, racy_ns: int = RACY_NS) -> None:
        self.path = path
        self.code = code_fingerprint()
        self.settings = sha256_hex(repr((self.code, *settings)).encode("utf-8", "surrogateescape"))
        self._mounts: Optional[str] = None
        self.racy_limit = time.time_ns() - racy_ns
        #: why the file could not be used or written, if it could not (never fatal)
        self.problem: Optional[str] = None
        self.witnesses = RunWitnesses()
        self._new: Dict[str, Entry] = {}
        #: the groups of these settings read, in file order (the most recently used first)
        self._groups: List[Dict[str, Any]] = []
        self._valid: Set[int] = set()
        #: groups of other settings written by this code: (settings, part), kept as they are (not decoded)
        self._others: List[Tuple[str, Part]] = []
        self._stats: Dict[str, Witness] = {}
        self.hits = 0

    @classmethod
    def in_cache_dir(cls, directory: Optional[str], settings: Sequence[object]) -> ResultStore:
        """The store of this user: ``trees.json`` in :func:`soswap.state.cache_dir` (``directory`` if given)."""
        from soswap.state import cache_dir

        return cls(os.path.join(cache_dir(directory), FILE), settings)

    # -- reading ----------------------------------------------------------------------------------------------

    def lookup(self, files: Sequence[str], file_facts: Callable[[str], Facts],
               payload_ok: Callable[[Any], bool]) -> Dict[int, Entry]:
        """The kept results of ``files`` (by position) whose group and own witness still hold."""
        self._read()
        out: Dict[int, Entry] = {}
        if not self._groups:
            return out
        for n, g in enumerate(self._groups):
            if self._holds(g):
                self._valid.add(n)
        if not self._valid:
            return out
        valid = [self._groups[n] for n in sorted(self._valid)]  # the most recently used first
        for i, f in enumerate(files):
            for g in valid:
                e = _entry(g["entries"].get(f), g["lines"])
                if e is None:
                    continue
                if e.facts() == file_facts(f) and payload_ok(e.payload):
                    out[i] = e
                break
        self.hits = len(out)
        return out

    def _read(self) -> None:
        """The index (part 0: each group's code and settings), then the groups of these settings only."""
        parts, problem = read_document(self.path, FORMAT, VERSION)
        if parts is None:
            self.problem = problem
            return
        try:
            index = decode_part(parts[0]).get("groups") if parts else None
        except Unusable as exc:
            self.problem = f"corrupt: {exc}"
            return
        if type(index) is not list or len(index) != len(parts) - 1:
            self.problem = "corrupt: bad index"
            return
        for row, part in zip(index, parts[1:]):
            if type(row) is not list or len(row) != 2 or row[0] != self.code or type(row[1]) is not str:
                continue  # written by other code: dropped
            if row[1] != self.settings:
                self._others.append((row[1], part))
                continue
            try:
                g = decode_part(part)
            except Unusable as exc:
                self.problem = f"corrupt: {exc}"
                continue
            if _group_ok(g):
                self._groups.append(g)

    def _stat(self, path: str) -> Witness:
        hit = self._stats.get(path)
        if hit is None:
            hit = self._stats[path] = stat_witness(path)
        return hit

    def mounts(self) -> str:
        """:func:`mounts_fingerprint`, read once per run."""
        if self._mounts is None:
            self._mounts = mounts_fingerprint()
        return self._mounts

    def _holds(self, g: Dict[str, Any]) -> bool:
        if g.get("mounts") != self.mounts():
            return False
        for d, ident in g["dirs"]:
            now = self._stat(d)
            if ident is None:
                if not isinstance(now, int):
                    return False
            elif isinstance(now, int) or (now[1], now[4]) != tuple(ident):
                return False
        for p, seen in g["probes"]:
            if self._stat(p) != seen:
                return False
        for p, fp in g["members"]:
            now = self._stat(p)
            if isinstance(now, int) or now[:5] != fp:
                return False
        return True

    # -- writing ----------------------------------------------------------------------------------------------

    def put(self, file: str, facts: Facts, status: int, payload: Any, error: str) -> None:
        """Keep the result computed for ``file`` in this run (its witnesses are in :attr:`witnesses`);
        ``facts`` were taken before it was computed."""
        fw = facts[0]
        if isinstance(fw, list):
            self.witnesses.newest_ns = max(self.witnesses.newest_ns, fw[4])
        self._new[file] = Entry(fw, facts[1], facts[2], status, payload, error)

    def save(self, extra: Iterable[Tuple[str, Witness]] = ()) -> Optional[str]:
        """Write the file when this run computed results it may keep; ``extra`` are more paths to watch (the
        ld.so.cache and ld.so.preload files). Returns None, or why it was not written."""
        w = self.witnesses
        if not self._new or w.newest_ns > self.racy_limit:
            return None
        probes = dict(w.probes)
        for p, seen in extra:
            probes[p] = seen
            if isinstance(seen, list) and seen[4] > self.racy_limit:
                return None
        table: Dict[str, int] = {}

        def encoded(e: Entry) -> List[Any]:
            v = list(e)
            if type(e.payload) is str:
                v[4] = [table.setdefault(line, len(table)) for line in e.payload.splitlines(True)]
            return v

        entries = {f: encoded(e) for f, e in self._new.items()}
        group = {"mounts": self.mounts(), "lines": list(table),
                 "dirs": [[d, list(i) if i is not None else None] for d, i in w.dirs.items()],
                 "probes": [[p, s] for p, s in probes.items()],
                 "members": [[p, list(fp)] for p, fp in w.members.items()],
                 "entries": entries}
        # this run's group first, then the groups of these settings that still hold, then those of other
        # settings (as read: not checked here, but their checksums); groups that no longer hold are dropped
        docs: List[Any] = [group] + [g for n, g in enumerate(self._groups) if n in self._valid]
        index = [[self.code, self.settings] for _ in docs]
        for settings, part in self._others:
            if part.intact():
                docs.append(part)
                index.append([self.code, settings])
        total = 0
        for n, g in enumerate(docs):
            total += len(g["entries"]) if isinstance(g, dict) else len(g.raw) // 512
            if n and (n >= MAX_GROUPS or total > MAX_ENTRIES):
                del docs[n:], index[n:]
                break
        self.problem = write_document(self.path, FORMAT, VERSION, [{"groups": index}, *docs])
        return self.problem


def _group_ok(g: Any) -> bool:
    """The shape of a group read from the file (entries are checked when used)."""
    if type(g) is not dict or type(g.get("entries")) is not dict:
        return False
    lines = g.get("lines")
    if type(lines) is not list or not all(type(x) is str for x in lines) or type(g.get("mounts")) is not str:
        return False
    try:  # what is printed must be printable: file names' undecodable bytes are the only surrogates
        "".join(lines).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    dirs, probes, members = g.get("dirs"), g.get("probes"), g.get("members")
    if type(dirs) is not list or type(probes) is not list or type(members) is not list:
        return False

    def ints(v: Any, n: int) -> bool:
        return type(v) is list and len(v) == n and all(type(x) is int for x in v)

    for row in dirs:
        if type(row) is not list or len(row) != 2 or type(row[0]) is not str or not (
                row[1] is None or ints(row[1], 2)):
            return False
    for row in probes:
        if type(row) is not list or len(row) != 2 or type(row[0]) is not str or not (
                type(row[1]) is int or ints(row[1], 6)):
            return False
    for row in members:
        if type(row) is not list or len(row) != 2 or type(row[0]) is not str or not ints(row[1], 5):
            return False
    return True
