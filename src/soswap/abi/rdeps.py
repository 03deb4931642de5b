"""The reverse-dependency index: for every ELF file under a set of directories, the objects ld.so would load
with it (its resolved tree, from :mod:`soswap.loader`), so that "who loads this library?" is a lookup.

It is a cache of facts about the installed system, kept in the cache directory (:func:`soswap.state.cache_dir`,
file ``rdeps-index.json``) and shared by every state directory and every soswap command. It is brought up to
date incrementally; what a warm update costs is one ``lstat`` per indexed directory and per ELF file, and one
``stat`` per library the trees load:

* a directory is keyed by ``(st_ino, st_ctime_ns)``. Adding, removing or renaming an entry changes its mtime,
  hence its ctime (and so does ``utime``, which can set the mtime back, as ``tar`` and ``rsync -t`` do): a
  directory whose key did not change has the same entries and is not listed again;
* an ELF file is keyed by ``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` and ``lstat``-ed on every
  update: a file rewritten in place (same name, same inode) is read again. The ctime catches a rewrite that
  restores the old size and mtime (``cp -p``, ``rsync -t``);
* files that are not ELF files (scripts, data, Python modules: about 95 % of the files) are opened once when
  their directory is listed and not looked at again until it changes. **Not seen**: such a file turned into
  an ELF file in place (``cp`` onto an existing non-ELF file of the same name): its directory does not change.
  ``--no-index`` (or deleting the cache) sees it;
* a regular file that cannot be opened (``EACCES``: a 0700 program of root, for a user) may be an ELF file: it
  is kept with the ELF files (type ``other``, error ``unreadable: ...``, no tree, not counted) under its key
  and ``lstat``-ed on every update like them, so that ``chmod``, which sets its ctime but not its directory's,
  has it opened again;
* what an update could not read is listed (:meth:`RdepsIndex.unreadable`: a directory that cannot be listed, a
  file that cannot be opened or looked up, with the reason): it may hold programs or plugins, and no answer of
  the index speaks for them. They are the errors the walk meets anyway: nothing is looked at for them alone;
* a tree is computed again only when its root changed, one of its members changed (members are ``stat``-ed
  wherever they are, so a library replaced by rename is seen), a name it requested appeared or disappeared in
  an indexed directory, in a watched directory or in ld.so.cache, or the loader profile,
  ``/etc/ld.so.preload`` or the environment (``LD_LIBRARY_PATH``, ``LD_PRELOAD``: one environment per index)
  changed;
* the *watched* directories are every directory the trees' searches listed (:meth:`Loader.listed_directories`:
  RUNPATH directories elsewhere, system directories, their hwcaps subdirectories, absent ones too), with the
  inode and ctime taken before the listing and the names the search saw. One ``stat`` each per update; a
  changed one is listed again and the names that appeared or vanished count as above (a library that now
  comes first in a search is seen wherever it appears);
* the *probed* paths are every path the trees' searches ``stat``-ed (:meth:`Loader.stat_witnesses`), with the
  key or the errno seen: one ``stat`` each per update; a path that gives something else now counts its name
  as changed (a candidate changed in place: replaced under the same name, a link's target created, made
  readable; a missing absolute name or preload that appears);
* a watched directory or probed path is kept only while a computed tree may depend on it. The trees of one
  indexed directory computed in one update share a :class:`Loader` (one per directory and update), whose
  searches share their listings and ``stat`` results: together they form a *group* (:class:`_Groups`), which
  depends on everything that loader listed or ``stat``-ed, and on nothing else. Each file records its group;
  when the index is written, what no group with a computed tree left holds is dropped (a scope deleted or not
  asked for any more, trees recomputed since). A tree that is not computed needs nothing: it is computed again
  before it answers. An indexed directory keeps at most :data:`MAX_GROUPS` groups: when its trees are
  computed, those of its smallest groups beyond are computed again with them (exact, never merged);
* a tree affected by a change is marked whatever directory it lies in, so that an update of other
  directories, which records the change as seen, does not hide it from the next update of its own;
* a key whose ctime is less than :data:`RACY_NS` old when it is read is not trusted next time (the racy-git
  rule: a second change within the same timestamp tick would go unseen).

The file is written only when something changed. An unreadable, corrupt or foreign index file is rebuilt,
never an error; a cache directory that cannot be written leaves the answer right (the index stays in memory).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import posixpath
import re
import stat
import time
from typing import Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

from soswap.abi.index_codec import (
    F_DIRECT,
    F_ERR,
    F_FATAL,
    F_KEY,
    F_REQ,
    F_SONAME,
    F_TREE,
    F_TYPE,
    LIBRARY,
    OTHER,
    PROGRAM,
    W_ABSENT,
    W_CTIME,
    W_INO,
    W_NAMES,
    W_RELIST,
    W_UNREADABLE,
    IndexData,
    Key,
    decode_core,
    decode_extras,
    encode,
    ldcache_digest,
    pack,
    unpack,
)
from soswap.abi.sysdirs import Top, canonical_tops, under
from soswap.cachefile import Part, Unusable, decode_part, read_document, write_document
from soswap.elf import ElfCache
from soswap.elf import constants as C
from soswap.errors import ResourceError, SoswapError, raise_if_exhausted
from soswap.loader import Environment, Loader, Profile
from soswap.loader.candidates import UNLISTABLE, FileSystem
from soswap.loader.model import TUNABLES
from soswap.state import cache_dir
from soswap.tuples import NamedTuple

INDEX_FILE = "rdeps-index.json"
FORMAT = "soswap-rdeps-index"
VERSION = 6
#: A timestamp this close to the time it was read may change again unseen (same tick): re-check next time.
RACY_NS = 2_000_000_000
#: Directories nobody asked for in this long are dropped from the index.
TOP_TTL_S = 30 * 86400
#: How stale the "last asked for" time of a directory may get before it is written back (one write a day).
_USED_RESOLUTION_S = 86400
#: Groups (the trees one loader computed: those of one indexed directory in one update) kept per indexed
#: directory: beyond, the trees of its smallest groups are computed again with its next group
#: (:meth:`RdepsIndex._consolidate`).
MAX_GROUPS = 8
#: The error recorded for a file that could not be opened when its directory was listed (it is kept with the
#: ELF files and looked at again when its key changes: ``chmod`` sets its ctime, not its directory's).
UNREADABLE = "unreadable: "

PLUGIN = "plugin"
__all__ = ["LIBRARY", "OTHER", "PLUGIN", "PROGRAM", "Dependent", "FileInfo", "RdepsIndex", "UpdateStats",
           "classify", "environment_for_index", "index_path", "key_of", "open_index"]

Identity = Tuple[int, int]

_ELF_MAGIC = b"\x7fELF"
#: soswap's own staged files and backups (``.NAME.new-TXID``, ``.NAME.bak-TXID``: soswap.replace.naming, which
#: this layer cannot import): nothing loads them, so they are not indexed (a backup is the old version of a
#: library, not a plugin of its dependencies).
_SOSWAP_HIDDEN = re.compile(r"\..+\.(?:new|bak)-[0-9]{8}-[0-9]{6}-[0-9]{6}\Z", re.S)
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
#: open() errors that say "not for you" about a file that may well be an ELF file
_DENIED = frozenset({errno.EACCES, errno.EPERM})
#: errors that say a path is gone (removed while it was walked): nothing is left unread there
_GONE = frozenset({errno.ENOENT, errno.ENOTDIR})
#: what could not be done to an unreadable path (:meth:`RdepsIndex.unreadable`)
CANNOT_LIST = "cannot list the directory"
CANNOT_OPEN = "cannot open the file"
CANNOT_STAT = "cannot look it up"


class Dependent(NamedTuple):
    """A file whose resolved tree contains the library."""

    path: str
    #: ``program``; ``plugin`` (a shared library no other indexed file loads: a dlopen'ed module, or unused);
    #: ``library`` (a shared library that other indexed files load: checked through them).
    role: str
    #: The library is one of its own DT_NEEDED entries (else it comes in through another library).
    direct: bool
    soname: Optional[str] = None
    #: ld.so would fail to start it (a missing library...): the message, else None.
    fatal: Optional[str] = None


class FileInfo(NamedTuple):
    """What the index knows of one ELF file (:meth:`RdepsIndex.info`)."""

    path: str
    #: ``program``, ``library`` or ``other`` (relocatable objects, core files, ELF files that could not be parsed,
    #: files that could not be opened: error ``unreadable: ...``)
    type: str
    soname: Optional[str]
    #: the objects ld.so loads with it (paths as the loader resolved them), None when not computed
    tree: Optional[Tuple[str, ...]]
    #: the members that are its own DT_NEEDED entries
    direct: Tuple[str, ...]
    #: ld.so would fail to start it: the message
    fatal: Optional[str]
    #: the file or its tree could not be read: why
    error: Optional[str]


class UpdateStats:
    """What one update did (for reports and tests)."""

    def __init__(self) -> None:
        #: ELF files under the directories asked for
        self.files = 0
        #: directories checked (one lstat each), and those listed again (new or changed)
        self.dirs = 0
        self.dirs_listed = 0
        #: ELF files read again (new or changed key), in walk order
        self.reread: List[str] = []
        #: regular files opened to look for the ELF magic (new, changed, or in a changed directory)
        self.probed = 0
        #: roots whose tree was computed again
        self.trees: List[str] = []
        #: why the whole index was rebuilt ("missing", "corrupt: ...", "version ..."), or None
        self.rebuilt: Optional[str] = None
        #: the index file is up to date (written now, or nothing changed); ``written``: it was written now
        self.saved = False
        self.written = False
        self.save_error: Optional[str] = None
        self.seconds = 0.0

    def as_dict(self) -> Dict[str, Any]:
        return {"files": self.files, "dirs": self.dirs, "dirs_listed": self.dirs_listed,
                "reread": len(self.reread), "probed": self.probed, "trees": len(self.trees),
                "rebuilt": self.rebuilt, "saved": self.saved, "written": self.written,
                "save_error": self.save_error, "seconds": round(self.seconds, 3)}


def index_path(explicit_cache_dir: Optional[str] = None) -> str:
    """Where the index of this user lives (see :func:`soswap.state.cache_dir`)."""
    return os.path.join(cache_dir(explicit_cache_dir), INDEX_FILE)


def key_of(st: os.stat_result) -> Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def classify(elf: Any, mode: Optional[int] = None) -> str:
    """``program`` (ET_EXEC, a PIE, or an executable ET_DYN file with an interpreter and no SONAME: a PIE linked
    before DF_1_PIE existed), ``library`` (another ET_DYN), else ``other`` (relocatable objects, core files).
    ``mode``: the file's st_mode (read from the file when not given). A module with an interpreter that no
    one can execute (pam_cap.so, mode 0644) is a library: it is only ever dlopen()ed."""
    if elf.type == C.ET_EXEC:
        return PROGRAM if elf.is_dynamic or elf.interpreter else OTHER
    if elf.type != C.ET_DYN:
        return OTHER
    try:
        flags_1 = elf.dynamic.flags_1 if elf.is_dynamic else 0
        soname = elf.soname if elf.is_dynamic else None
    except SoswapError:
        return OTHER
    if flags_1 & C.DF_1_PIE:
        return PROGRAM
    if elf.interpreter and soname is None:
        if mode is None:
            try:
                mode = os.stat(elf.path).st_mode
            except (OSError, TypeError, ValueError):
                mode = 0o755
        if mode & 0o111:  # execve needs an execute bit, even for root
            return PROGRAM
    return LIBRARY


def env_fingerprint(env: Environment) -> str:
    """What in the environment changes a tree: the search path, preloads, the cwd they may be relative to, and the
    CPU features GLIBC_TUNABLES turns off (they choose the glibc-hwcaps subdirectories) with the text that says
    whether a release applies them."""
    parts: List[Any] = [env.library_path, env.preload, env.origin_path, env.inhibit_cache,
                        env.use_preload_file, list(env.hwcaps_mask) if env.hwcaps_mask is not None else None]
    if env.cpu_disabled:
        parts.append(list(env.cpu_disabled))
    if env.tunables is not None and (env.cpu_disabled or "enable_secure" in env.tunables):
        parts.append(env.tunables)  # whether a release reads them (cpu.tunables_effect): a malformed string, secure
    if env.library_path is not None or env.preload is not None:
        parts.append(env.cwd)
    return json.dumps(parts)


def profile_fingerprint(profile: Profile) -> str:
    """What in the loader profile changes every tree (and the preload file, which every program loads)."""
    try:
        st = os.stat(profile.fs.host(profile.preload_path))
        preload: Any = list(key_of(st))
    except OSError:
        preload = None
    return json.dumps([VERSION, profile.root, profile.abi.name, list(profile.glibc_version), profile.interpreter,
                       list(profile.system_dirs), profile.platform, list(profile.hwcaps_subdirs),
                       list(profile.legacy_subdirs), preload])


#: A file that is empty, short or zeros and changed less than this long ago may still be being written.
_YOUNG_NS = 600 * 10**9


class _ExtrasUnusable(Exception):
    """The extras part of the index file turned out unusable in the middle of an update: start again."""


class RdepsIndex:
    """The index in one cache directory. ``update(tops)`` brings the given directories up to date,
    ``dependents(path, tops)`` answers the query, ``save()`` writes it back atomically if it changed.

    ``path=None`` keeps the index in memory only (``--no-index``). ``racy_ns``: how old a ctime must be to be
    trusted next time (:data:`RACY_NS`; tests that just wrote their files pass 0)."""

    def __init__(self, path: Optional[str], profile: Profile, env: Optional[Environment] = None, *,
                 elf_cache: Optional[ElfCache] = None, racy_ns: int = RACY_NS) -> None:
        self.path = path
        self.racy_ns = racy_ns
        self.profile = profile
        self.env = env if env is not None else Environment(cwd="/")
        self.elf_cache = elf_cache if elf_cache is not None else ElfCache()
        self.stats = UpdateStats()
        self.data = IndexData()
        self._loaded = False
        #: something differs from the file: save() writes it
        self._dirty = False
        self._path_guard: Optional[Any] = None
        #: the roots of the last update, for the query that follows it
        self._roots_tops: Optional[List[Top]] = None
        self._roots: List[str] = []
        #: the tops of the update in progress
        self._walked_tops: List[Top] = []
        #: what the last update could not read: {path: why} (:meth:`unreadable`)
        self._unread: Dict[str, str] = {}
        #: members stat-ed during this update
        self._checked: Set[int] = set()
        #: the stored extras part (decoded on demand) and how many directory rows came from the file
        self._extras: Optional[Part] = None
        #: what dependents() reads, for the index as it is now (dropped whenever it changes)
        self._query: Optional[_Query] = None
        self._canonical: Dict[tuple, List[Top]] = {}
        self._stored_dirs = 0
        #: which trees' searches listed and stat-ed which watched directories and probed paths
        self._groups = _Groups()

    # -- persistence --------------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the index file (once). A missing, corrupt or foreign file leaves the index empty (rebuilt)."""
        if self._loaded:
            return
        self._loaded = True
        if self.path is None:
            self.stats.rebuilt = "not kept (no index file)"
            return
        with _gc_paused():
            parts, problem = read_document(self.path, FORMAT, VERSION)
            if parts is None:
                self._rebuild("missing" if problem is None else problem)
                return
            try:
                if len(parts) != 2:
                    raise ValueError(f"{len(parts)} parts")
                core = decode_part(parts[0])
                self.data = decode_core(core, parts[1].raw, parts[1].sha256)
                self._query = None
                self._groups.load(core, self.data)
            except Unusable as exc:
                self._rebuild(f"corrupt: {exc}")
                return
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                self._rebuild(f"corrupt: {type(exc).__name__}: {exc}")
                return
            self._extras = parts[1]
            self._stored_dirs = len(self.data.dirs.path)

    def _rebuild(self, why: str) -> None:
        self.data = IndexData()
        self._groups.forget_stored()
        self._query = None
        self._extras = None
        self._stored_dirs = 0
        self.stats.rebuilt = why[:200]
        self._dirty = True

    def _need_extras(self) -> None:
        """Decode the extras part (the names of non-ELF files, the names trees requested, ld.so.cache) the
        first time something changed."""
        pending, self.data.pending = self.data.pending, None
        part, self._extras = self._extras, None
        if pending is None or part is None:
            return
        try:
            decode_extras(self.data, decode_part(part), pending[2], self._stored_dirs, pending[3])
        except Unusable as exc:
            raise _ExtrasUnusable(f"corrupt: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise _ExtrasUnusable(f"corrupt: {type(exc).__name__}: {exc}") from None

    def save(self) -> None:
        """Write the index back (atomically) if it changed. A failure is recorded in ``stats.save_error``, not
        raised: the answer computed in memory is still right."""
        if self.path is None:
            return
        if not self._dirty:
            self.stats.saved = True
            return
        try:
            self._need_extras()
        except _ExtrasUnusable as exc:
            # found only now (nothing changed in the directories): the names the file lacks cannot be written
            # back; remove it, the next run builds the index again
            self.stats.save_error = f"not saved: the index file's extras are {exc}; it is rebuilt next time"
            try:
                os.unlink(self.path)
            except OSError:
                pass
            return
        now = time.time()
        tops = self.data.tops
        doomed = [t for t, v in tops.items() if now - v[1] > TOP_TTL_S or not os.path.isdir(t)]
        for t, recursive in [(t, tops.pop(t)[0]) for t in doomed]:
            self._drop_top(Top(t, recursive))
        with _gc_paused():
            live = self._prune()
            core, extras, order = encode(self.data)
            core["groups"] = self._groups.encode(core, order, live, self.data)
            problem = write_document(self.path, FORMAT, VERSION, (core, extras))
        self.stats.saved = self.stats.written = problem is None
        self.stats.save_error = problem
        if problem is None:
            self._dirty = False

    def _prune(self) -> Dict[GroupKey, List[str]]:
        """Drop the watched directories and probed paths that no computed tree depends on (those only the
        searches of trees since deleted, changed or dropped with their directory listed or ``stat``-ed); the
        groups that still hold a computed tree, with those trees (see :class:`_Groups`)."""
        data = self.data
        live = self._groups.live(data.files)
        watched, probed = self._groups.needed(live, data)
        for d in [d for d in data.watched if d not in watched]:
            del data.watched[d]
        for p in [p for p in data.probed if p not in probed]:
            del data.probed[p]
        return live

    # -- update -------------------------------------------------------------------------------------------

    def update(self, tops: Sequence[Top]) -> UpdateStats:
        """Bring the files under ``tops`` up to date (see the module docstring)."""
        start = time.monotonic()
        self.load()
        with _gc_paused():
            try:
                self._update(tops)
            except _ExtrasUnusable as exc:
                self.stats = UpdateStats()
                self._rebuild(str(exc))
                self._update(tops)
        self.stats.seconds = time.monotonic() - start
        return self.stats

    def _update(self, tops: Sequence[Top]) -> None:
        self._query = None
        self._canonical.clear()
        self._checked = set()
        self._unread = {}
        data = self.data
        tops = canonical_tops(tops)
        now_ns = time.time_ns()
        now = time.time()
        fp = profile_fingerprint(self.profile)
        env_fp = env_fingerprint(self.env)
        if fp != data.profile_fp or env_fp != data.env_fp:
            for e in data.files.values():
                e[F_TREE] = None
            data.profile_fp, data.env_fp = fp, env_fp
            self._dirty = True
        changed_names = self._refresh_ldcache()
        if self._refresh_watched(changed_names, now_ns):
            for e in data.files.values():
                e[F_TREE] = None
        self._refresh_probed(changed_names, now_ns)
        roots: List[str] = []
        per_top: List[List[str]] = []
        self._walked_tops = tops
        for top in tops:
            old = data.tops.get(top.path)
            if old is None or (top.recursive and not old[0]) or now - old[1] > _USED_RESOLUTION_S:
                data.tops[top.path] = [top.recursive or bool(old and old[0]), now]
                self._dirty = True
            per_top.append(self._walk(top, now_ns, changed_names))
            roots.extend(per_top[-1])
        self._roots_tops, self._roots = tops, roots
        self.stats.files = len(roots)
        changed_members = self._refresh_members(roots, now_ns)
        files = data.files
        if changed_names or changed_members:
            if changed_names:
                self._need_extras()  # the names each tree requested
            # every tree, not only this update's: what changed is recorded as seen now, so a later update of
            # another directory would not see it again
            for e in files.values():
                tree = e[F_TREE]
                if tree is not None and ((changed_members and not changed_members.isdisjoint(tree)) or (
                        changed_names and e[F_REQ] and not changed_names.isdisjoint(e[F_REQ].split("/")))):
                    e[F_TREE] = None
                    self._dirty = True
        live: Optional[Dict[GroupKey, List[str]]] = None
        for top_roots in per_top:
            todo = [p for p in top_roots if files[p][F_TYPE] != OTHER and files[p][F_TREE] is None]
            if todo:
                if live is None and self._groups.count() >= MAX_GROUPS:
                    live = self._groups.live(files)  # as before this update computed any tree
                if live is not None:
                    todo.extend(self._consolidate(top_roots, live))
                self._compute_trees(todo, now_ns)

    def _compute_trees(self, todo: Sequence[str], now_ns: int) -> None:
        """Compute the trees of ``todo`` (the files of one indexed directory) with a loader of their own: they
        form a group (:class:`_Groups`), which depends on what this loader's searches listed and ``stat``-ed,
        all of it watched from now on."""
        loader = Loader(self.profile, self.env, cache=self.elf_cache)
        group = self._groups.new_group()
        for p in todo:
            self._compute_tree(loader, p, now_ns)
            self._groups.add_tree(group, p)
        self._watch(loader.listed_directories(), now_ns, group)
        self._witness(loader.stat_witnesses(), now_ns, group)

    @staticmethod
    def _consolidate(top_roots: Sequence[str], live: Dict[GroupKey, List[str]]) -> List[str]:
        """The trees to compute again with the new group of an indexed directory (its files ``top_roots``, some
        of them being computed) so that it keeps at most :data:`MAX_GROUPS` groups: those of its smallest
        groups. Computed afresh, they depend on what the new loader lists and ``stat``-s: exactly what they
        need now (about 0.1 ms a tree), and their old groups go with what only they needed. Only done when the
        directory's trees are computed anyway: a directory nobody changes is never recomputed for this."""
        here = set(top_roots)
        smallest = sorted((len(trees), g) for g, trees in live.items() if trees[0] in here)
        again: List[str] = []
        for _count, g in smallest[:max(0, len(smallest) + 1 - MAX_GROUPS)]:
            again.extend(p for p in live[g] if p in here)
        return again

    def _refresh_watched(self, changed_names: Set[str], now_ns: int) -> bool:
        """List again the watched directories whose inode or ctime changed, adding the names that appeared or
        vanished there to ``changed_names``. True when every tree must be computed again (a directory that
        cannot be listed changed: which names it holds is unknown)."""
        watched = self.data.watched
        stale = []
        guard = self._guard()
        for d, row in watched.items():
            try:
                st = guard.stat(d)
            except TimeoutError:
                continue  # a dead network server: taken as unchanged (ld.so would wait there)
            except OSError:
                if row[W_CTIME] != W_ABSENT:
                    stale.append(d)
                continue
            if row[W_CTIME] < 0 or row[W_CTIME] != st.st_ctime_ns or row[W_INO] != st.st_ino:
                stale.append(d)
        if not stale:
            return False
        self._need_extras()  # the names the searches saw there
        fresh = FileSystem(self.profile, self.elf_cache)
        for d in stale:
            fresh.listing(d)
        everything = False
        for d, ident, names in fresh.listed_directories():
            old = watched[d][W_NAMES]
            row = _watched_row(ident, names, now_ns, self.racy_ns)
            if W_UNREADABLE in (old, row[W_NAMES]):
                everything = True
            else:
                changed_names.update(set(_split(old or "")) ^ set(_split(row[W_NAMES])))
            watched[d] = row
        self._dirty = True
        return everything

    def _refresh_probed(self, changed_names: Set[str], now_ns: int) -> None:
        """``stat`` every probed path again: one that now gives another file, or another error, or that was
        unknown, adds its name to ``changed_names`` (a candidate replaced, a dangling link's target created, a
        library made readable)."""
        probed = self.data.probed
        guard = self._guard()
        for path, old in list(probed.items()):
            try:
                new: Any = key_of(guard.stat(path))
            except TimeoutError:
                continue  # as in _refresh_watched
            except OSError as exc:
                new = exc.errno or errno.ENOENT
            if old is None or new != old:
                changed_names.add(posixpath.basename(path))
                probed[path] = self._trusted(new, now_ns)
                self._dirty = True

    def _guard(self) -> Any:
        """The :class:`soswap.proc.view.PathGuard` of this update (made once): the watched directories and probed
        paths of the searches can be anywhere, a dead NFS or FUSE server's mount included."""
        if self._path_guard is None:
            from soswap.proc.view import PathGuard

            self._path_guard = PathGuard()
        return self._path_guard

    def _witness(self, seen: Iterable[Tuple[str, Any]], now_ns: int, group: _NewGroup) -> None:
        """Record what the searches of the trees just computed (``group``) saw at each path they ``stat``-ed."""
        probed = self.data.probed
        for path, st in seen:
            if not path.startswith("/"):
                continue  # relative to a working directory: not kept
            group.probed.add(path)
            value = self._trusted(st if isinstance(st, int) else key_of(st), now_ns)
            if probed.get(path, False) != value:
                probed[path] = value
                self._dirty = True

    def _trusted(self, key: Any, now_ns: int) -> Any:
        """``key`` as it can be kept: None for a file key whose ctime is too recent to be told apart from a
        second change in the same tick (checked again next time); an errno or None as it is."""
        if type(key) is tuple and now_ns - key[4] < self.racy_ns:
            return None
        return key

    def _watch(self, listed: Iterable[Tuple[str, Optional[Tuple[int, int]], Optional[FrozenSet[str]]]],
               now_ns: int, group: _NewGroup) -> None:
        """Watch every directory the searches of the trees just computed (``group``) listed, with what they saw
        there."""
        watched = self.data.watched
        for d, ident, names in listed:
            if not d.startswith("/"):
                continue  # a relative directory (LD_LIBRARY_PATH element): not stored, the working directory varies
            group.watched.add(d)
            row = _watched_row(ident, names, now_ns, self.racy_ns)
            if watched.get(d) != row:
                watched[d] = row
                self._dirty = True

    def _refresh_ldcache(self) -> Set[str]:
        try:
            entries = self.profile.ldcache.entries
        except SoswapError:
            entries = ()
        current: Dict[str, List[str]] = {}
        for e in entries:
            current.setdefault(e.key, []).append(e.value)
        digest = ldcache_digest(current)
        if digest == self.data.ldcache_digest:
            return set()
        self._need_extras()
        old = self.data.ldcache or {}
        changed = {k for k in set(current) | set(old) if current.get(k) != old.get(k)}
        self.data.ldcache, self.data.ldcache_digest = current, digest
        self._dirty = True
        return changed

    def _walk(self, top: Top, now_ns: int, changed_names: Set[str]) -> List[str]:
        """Bring the directories and ELF files under ``top`` up to date; returns the ELF files (in walk order).
        Names that appeared or disappeared are added to ``changed_names`` (they may change how a tree
        resolves)."""
        roots: List[str] = []
        try:
            top_dev = os.stat(top.path).st_dev
        except OSError as exc:
            self._refused(top.path, CANNOT_STAT, exc)
            self._drop_top(top)
            return roots
        dirs = self.data.dirs
        index, ctimes, inos, subs, elves = dirs.index, dirs.ctime, dirs.ino, dirs.subs, dirs.elves
        lstat = os.lstat
        S_ISDIR = stat.S_ISDIR
        seen: Set[str] = set()
        seen_add = seen.add
        changed = False
        recursive = top.recursive
        stack = [top.path]
        pop, extend = stack.pop, stack.extend
        while stack:
            d = pop()
            try:
                st = lstat(d)
            except OSError as exc:
                self._refused(d, CANNOT_STAT, exc)  # a directory whose parent can be listed, not searched
                changed = True
                continue
            if st.st_dev != top_dev or not S_ISDIR(st.st_mode):
                changed = True
                continue  # not followed: symlinked directories, other file systems
            seen_add(d)
            i = index.get(d)
            # create, unlink and rename set the directory's mtime and ctime (inode_set_ctime_current), and
            # utime sets the ctime too (notify_change): same ctime and inode, same entries
            if i is not None and ctimes[i] == st.st_ctime_ns and inos[i] == st.st_ino:
                if elves[i]:
                    self._recheck_files(d, i, now_ns, changed_names, roots)
                names = subs[i]
            else:
                changed = changed or i is not None  # a known directory changed: some below may be gone
                names = self._list_dir(d, st, i, now_ns, changed_names, roots)
            if recursive and names:
                prefix = d + "/" if d != "/" else "/"
                extend([prefix + s for s in reversed(names.split("/"))])
        self.stats.dirs += len(seen)
        if changed:
            # forget the directories that are gone (and their files); a top inside this one (a mount point
            # this walk does not enter) keeps its own
            inner = [t for t in self._walked_tops if t.path != top.path and _dir_under(t.path, top)]
            for d in [d for d in index if d not in seen and _dir_under(d, top)
                      and not any(_dir_under(d, t) for t in inner)]:
                self._forget_dir(d, changed_names)
        return roots

    def _forget_dir(self, d: str, changed_names: Set[str]) -> None:
        dirs = self.data.dirs
        i = dirs.drop(d)
        if i is None:
            return
        self._need_extras()
        prefix = d + "/" if d != "/" else "/"
        gone = _split(dirs.elves[i])
        for name in gone:
            self.data.files.pop(prefix + name, None)
        changed_names.update(gone)
        changed_names.update(_split(dirs.others[i] or ""))
        self._dirty = True

    def _recheck_files(self, d: str, i: int, now_ns: int, changed_names: Set[str], roots: List[str]) -> None:
        """The directory's names are unchanged: ``lstat`` its ELF files again (an in-place rewrite)."""
        dirs = self.data.dirs
        gone = []
        files = self.data.files
        lstat = os.lstat
        prefix = d + "/" if d != "/" else "/"
        names = dirs.elves[i].split("/")
        for name in names:
            p = prefix + name
            try:
                st = lstat(p)
            except OSError as exc:
                self._refused(p, CANNOT_STAT, exc)
                gone.append(name)  # listed again next time (ctime -1 below)
                continue
            e = files.get(p)
            if e is not None:
                k = e[F_KEY]
                if (k is not None and k[4] == st.st_ctime_ns and k[3] == st.st_mtime_ns and k[1] == st.st_ino
                        and k[2] == st.st_size and k[0] == st.st_dev):
                    if not _is_unreadable(e):
                        roots.append(p)
                    else:
                        self._unread[p] = _unread_reason(e)
                    continue
            found = self._probe(p, st, now_ns) if stat.S_ISREG(st.st_mode) else False
            if found:
                roots.append(p)
            elif found is not None:
                gone.append(name)  # no longer an ELF file (rewritten in place), or gone
        if gone:
            self._need_extras()
            still = [n for n in gone if os.path.lexists(prefix + n)]
            others = sorted(set(_split(dirs.others[i] or "")) | set(still))
            dirs.put(d, -1, dirs.ino[i], dirs.subs[i], "/".join(n for n in names if n not in gone),
                     "/".join(others))  # ctime -1: list it again next time
            changed_names.update(gone)
            for n in gone:
                files.pop(prefix + n, None)
            self._dirty = True

    def _list_dir(self, d: str, st: os.stat_result, i: Optional[int], now_ns: int, changed_names: Set[str],
                  roots: List[str]) -> Optional[str]:
        """List ``d`` (new, or changed); its subdirectories joined with ``/`` (None: unreadable)."""
        self.stats.dirs_listed += 1
        dirs = self.data.dirs
        prefix = d + "/" if d != "/" else "/"
        old_names: Set[str] = set()
        old_elves: List[str] = []
        if i is not None:
            self._need_extras()
            old_elves = _split(dirs.elves[i])
            old_names = set(_split(dirs.subs[i])) | set(old_elves) | set(_split(dirs.others[i] or ""))
        try:
            it = os.scandir(d)
        except OSError as exc:
            raise_if_exhausted(exc, d)  # never taken for an unreadable directory, and kept in the index
            self._refused(d, CANNOT_LIST, exc)  # not kept: listed (and said) again on every update
            if i is not None:
                self._forget_dir(d, changed_names)
            return None  # nothing else changed: an unreadable directory alone does not have the index written
        self._dirty = True
        subdirs: List[str] = []
        elves: List[str] = []
        others: List[str] = []
        #: files kept with the ELF files that are not (unreadable): no roots
        no_roots: Set[str] = set()
        files = self.data.files
        probed = 0
        young = False
        # the loop runs once per name of every new or changed directory (60,000 names for a cold index):
        # _probe inlined, functions in locals
        os_open, os_read, os_close, os_fstat, S_ISREG = os.open, os.read, os.close, os.fstat, stat.S_ISREG
        with it:
            for entry in it:
                name = entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(name)
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        others.append(name)  # symlinks, sockets...: names that matter for resolution only
                        continue
                except OSError as exc:
                    young = self._refused(prefix + name, CANNOT_STAT, exc) or young  # listed again next time
                    continue
                if name[0] == "." and _SOSWAP_HIDDEN.match(name):
                    others.append(name)
                    continue
                p = prefix + name
                e = files.get(p)
                if e is not None and e[F_KEY] is not None:
                    try:
                        if e[F_KEY] == key_of(entry.stat(follow_symlinks=False)):
                            elves.append(name)
                            if _is_unreadable(e):
                                no_roots.add(name)
                                self._unread[p] = _unread_reason(e)
                            continue
                    except OSError as exc:
                        young = self._refused(p, CANNOT_STAT, exc) or young  # listed again next time
                        continue
                # a new or changed file: the ELF magic first (most files are not ELF files: no stat for them)
                probed += 1
                fst = None
                try:
                    fd = os_open(p, _OPEN_FLAGS)
                except OSError as exc:
                    raise_if_exhausted(exc, p)
                    fd = -1
                    if exc.errno in _DENIED:
                        try:
                            self._unreadable(p, entry.stat(follow_symlinks=False), exc.errno, now_ns)
                        except OSError as stat_exc:  # gone meanwhile (its directory changed), or not searchable
                            young = self._refused(p, CANNOT_STAT, stat_exc) or young  # listed again next time
                            continue
                        elves.append(name)
                        no_roots.add(name)
                        continue
                if fd >= 0:
                    try:
                        head = os_read(fd, 4)
                        if head == _ELF_MAGIC:
                            fst = os_fstat(fd)
                        elif len(head) < 4 or head == b"\0\0\0\0":
                            # empty, short or zeros so far: maybe a file still being written (a linker, a
                            # download, a preallocated copy); its directory's ctime will not move when it is
                            # done, so a young one has the directory listed again next time
                            young_st = os_fstat(fd)
                            if now_ns - max(young_st.st_mtime_ns, young_st.st_ctime_ns) < _YOUNG_NS:
                                young = True
                    except OSError:
                        pass
                    finally:
                        os_close(fd)
                if fst is not None and S_ISREG(fst.st_mode):
                    self._read(p, fst, now_ns)
                    elves.append(name)
                else:
                    if e is not None:
                        del files[p]
                    others.append(name)
        self.stats.probed += probed
        subdirs.sort()
        elves.sort()
        others.sort()
        for name in old_elves:
            if name not in elves:
                files.pop(prefix + name, None)
        names = set(subdirs)
        names.update(elves)
        names.update(others)
        changed_names.update(names ^ old_names)
        subs = "/".join(subdirs)
        dirs.put(d, st.st_ctime_ns if now_ns - st.st_ctime_ns >= self.racy_ns and not young else -1, st.st_ino, subs,
                 "/".join(elves), "/".join(others))
        roots.extend([prefix + n for n in elves if n not in no_roots])
        return subs

    def _probe(self, p: str, st: os.stat_result, now_ns: int) -> Optional[bool]:
        """Open the regular file at ``p`` (``lstat``: ``st``; its key changed): True when it is an ELF file, now
        read into ``files``; None when it cannot be opened (kept, see :meth:`_unreadable`); else False. The
        magic is read first: most files are not ELF files and cost no ``stat``."""
        self.stats.probed += 1
        files = self.data.files
        try:
            fd = os.open(p, _OPEN_FLAGS)
        except OSError as exc:
            raise_if_exhausted(exc, p)
            if exc.errno in _DENIED:
                self._unreadable(p, st, exc.errno, now_ns)
                return None
            files.pop(p, None)
            return False
        try:
            if os.read(fd, 4) != _ELF_MAGIC:
                files.pop(p, None)
                return False
            st = os.fstat(fd)
        except OSError:
            files.pop(p, None)
            return False
        finally:
            os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            files.pop(p, None)
            return False
        self._read(p, st, now_ns)
        return True

    def _unreadable(self, p: str, st: os.stat_result, err: int, now_ns: int) -> None:
        """Keep the regular file ``p``, which this user cannot open (``err``), with the ELF files: keyed by its
        ``lstat`` ``st`` and ``lstat``-ed on every update like them, so that it is opened again when its key
        changes. ``chmod`` sets the file's ctime but not its directory's (setattr, not a directory entry change):
        a file made readable would otherwise never be looked at again. It has no tree and is no root."""
        self._dirty = True
        e: List[Any] = [self._trusted(key_of(st), now_ns), OTHER, None, None, [], "", None,
                        UNREADABLE + os.strerror(err)]
        self.data.files[p] = e
        self._unread[p] = _unread_reason(e)

    def _refused(self, p: str, what: str, exc: OSError) -> bool:
        """Note that ``p`` could not be read (``what`` failed with ``exc``; :meth:`unreadable`). True when it
        was noted: not when it is gone (removed while the walk ran), which leaves nothing unread."""
        raise_if_exhausted(exc, p)
        if exc.errno in _GONE:
            return False
        self._unread[p] = f"{what}: {exc.strerror or exc}"
        return True

    def _read(self, p: str, st: os.stat_result, now_ns: int) -> None:
        """Read the ELF file at ``p`` (new or changed) into ``files``; its tree is computed later."""
        self.stats.reread.append(p)
        self._dirty = True
        key = self._trusted(key_of(st), now_ns)
        entry: List[Any] = [key, OTHER, None, None, [], "", None, None]
        try:
            elf = self.elf_cache.get(p, st)
            entry[F_TYPE] = classify(elf, st.st_mode)
            if elf.is_dynamic:
                entry[F_SONAME] = elf.soname
        except ResourceError:
            raise
        except SoswapError as exc:
            entry[F_ERR] = str(exc)[:300]
        self.data.files[p] = entry

    def _refresh_members(self, roots: Sequence[str], now_ns: int) -> Set[int]:
        """``stat`` every member of the trees of ``roots``; the ids whose key changed."""
        wanted: Set[int] = set()
        files = self.data.files
        for p in roots:
            tree = files[p][F_TREE]
            if tree:
                wanted.update(tree)
        changed: Set[int] = set()
        mkeys, mpaths = self.data.mkeys, self.data.mpaths
        self._checked.update(wanted)
        guard = self._guard()
        for m in wanted:
            try:
                st = guard.stat(mpaths[m])
                k: Optional[Key] = key_of(st)
            except TimeoutError:
                continue  # as in _refresh_watched
            except OSError:
                k = None
            if mkeys[m] is None or mkeys[m] != k:
                changed.add(m)
                # a racy member is checked again next time: stored as unknown
                mkeys[m] = self._trusted(k, now_ns)
                self._dirty = True
        return changed

    def _member(self, path: str, now_ns: int) -> int:
        """The id of a member of a tree just computed; its key as of this update."""
        data = self.data
        i = data.mids.get(path)
        if i is None:
            i = data.mids[path] = len(data.mpaths)
            data.mpaths.append(path)
            data.mkeys.append(None)
        elif i in self._checked:
            return i
        self._checked.add(i)
        try:
            k: Optional[Key] = key_of(os.stat(path))
        except OSError:
            k = None
        data.mkeys[i] = self._trusted(k, now_ns)
        return i

    def _compute_tree(self, loader: Loader, p: str, now_ns: int) -> None:
        e = self.data.files[p]
        self.stats.trees.append(p)
        self._dirty = True
        e[F_TREE], e[F_DIRECT], e[F_REQ], e[F_FATAL] = [], [], "", None
        try:
            res = loader.load(p)
        except ResourceError:
            raise
        except SoswapError as exc:
            e[F_ERR] = str(exc)[:300]
            return
        e[F_ERR] = None
        members: List[int] = []
        req: Set[str] = set()
        objects = res.objects
        for o in objects[1:]:
            if o.kind == "vdso":
                continue
            for n in o.names:
                req.add(posixpath.basename(n))
            if o.found and o.path:
                members.append(self._member(o.path, now_ns))
        e[F_TREE] = members
        e[F_DIRECT] = [self._member(objects[j].path, now_ns) for j in objects[0].needed
                       if j is not None and objects[j].found and objects[j].path]
        for f in res.failures:  # names that were not found (a missing preload is no object)
            if f.name and f.kind != TUNABLES:
                req.add(posixpath.basename(f.name))
        req.discard("")
        e[F_REQ] = "/".join(sorted(req))
        e[F_FATAL] = res.fatal.message if res.fatal is not None else None

    def _drop_top(self, top: Top) -> None:
        """Forget the directories of ``top`` that no other indexed directory covers."""
        others = [Top(t, v[0]) for t, v in self.data.tops.items() if t != top.path]
        for d in [d for d in self.data.dirs.index if _dir_under(d, top)]:
            if not any(_dir_under(d, o) for o in others):
                self._forget_dir(d, set())

    # -- queries ------------------------------------------------------------------------------------------

    def info(self, path: str) -> Optional[FileInfo]:
        """What the index knows of the ELF file ``path`` (None: not an indexed ELF file)."""
        e = self.data.files.get(path)
        if e is None:
            return None
        mpaths = self.data.mpaths
        tree = None if e[F_TREE] is None else tuple(mpaths[i] for i in e[F_TREE])
        return FileInfo(path, e[F_TYPE], e[F_SONAME], tree, tuple(mpaths[i] for i in e[F_DIRECT]), e[F_FATAL],
                        e[F_ERR])

    def canonical(self, tops: Sequence[Top]) -> List[Top]:
        """:func:`canonical_tops` of ``tops``, resolved once between two updates (the checks of a transaction
        ask again for every file)."""
        key = tuple(tops)
        hit = self._canonical.get(key)
        if hit is None:
            hit = self._canonical[key] = canonical_tops(tops)
        return hit

    def updated_for(self, tops: Sequence[Top]) -> bool:
        """True when :meth:`update` already ran for these directories in this process (checks of the files
        of one transaction share one walk: nothing is written in between)."""
        return self._roots_tops is not None and self.canonical(tops) == self._roots_tops

    def roots(self, tops: Sequence[Top]) -> List[str]:
        """The indexed ELF files under ``tops`` (after :meth:`update` of the same directories)."""
        canon = self.canonical(tops)
        if canon == self._roots_tops:
            return self._roots
        files = self.data.files
        return [p for p, e in files.items() if any(under(p, t) for t in canon) and not _is_unreadable(e)]

    def unreadable(self, tops: Sequence[Top]) -> List[Tuple[str, str]]:
        """What the last :meth:`update` (of the same directories) could not read under ``tops``, as ``(path,
        why)`` by path: directories it could not list or look up, files it could not open. Any of them may be a
        program or a plugin that loads any library: the index's answers do not speak for them."""
        canon = self.canonical(tops)
        found = sorted(self._unread.items())
        if canon == self._roots_tops:
            return found
        return [(p, why) for p, why in found if any(p == t.path or under(p, t) for t in canon)]

    def identity(self, path: str) -> Optional[Identity]:
        """(st_dev, st_ino) of a member or root path as the index knows it (None: unknown)."""
        e = self.data.files.get(path)
        k: Optional[Key] = e[F_KEY] if e is not None else None
        if k is None:
            i = self.data.mids.get(path)
            k = self.data.mkeys[i] if i is not None else None
        if k is None:
            try:
                st = os.stat(path)
            except OSError:
                return None
            return (st.st_dev, st.st_ino)
        return (k[0], k[1])

    def dependents(self, target: str, tops: Sequence[Top]) -> List[Dependent]:
        """Every indexed file under ``tops`` whose tree contains ``target`` (compared by device and inode),
        ``target`` itself excluded; programs first, then plugins, then libraries, by path. The checks of one
        transaction ask for many targets: the tables that answer are built once (:class:`_Query`)."""
        st = os.stat(target)
        want = (st.st_dev, st.st_ino)
        q = self._query_for(tops)
        match = q.by_ident.get(want)
        if not match:
            return []
        files = self.data.files
        candidates = sorted({p for i in match for p in q.users.get(i, ())})
        out: List[Dependent] = []
        for p in candidates:
            e = files[p]
            me = self.identity(p)
            if me == want:
                continue
            role = e[F_TYPE]
            if role == LIBRARY:
                # a library that another indexed file loads is checked through it; else it is a plugin
                own = q.idents_of(p)
                covered = me is not None and any(r != p and self.identity(r) not in own
                                                 for r in q.containers().get(me, ()))
                role = LIBRARY if covered else PLUGIN
            out.append(Dependent(p, role, not match.isdisjoint(e[F_DIRECT]), e[F_SONAME], e[F_FATAL]))
        order = {PROGRAM: 0, PLUGIN: 1, LIBRARY: 2}
        out.sort(key=lambda d: (order.get(d.role, 3), d.path))
        return out

    def _query_for(self, tops: Sequence[Top]) -> _Query:
        key = tuple(self.canonical(tops))
        q = self._query
        if q is None or q.key != key:
            files = self.data.files
            q = self._query = _Query(key, [p for p in self.roots(tops) if files[p][F_TREE] is not None],
                                     self)
        return q


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while the index builds its many small lists (none of them forms a
    cycle): each collection would walk every object made so far, which costs more than the work itself."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _Query:
    """What :meth:`RdepsIndex.dependents` reads, built once per set of directories and index state: each
    member's identity, the members of each identity, the roots whose tree holds each member, each root's tree
    as identities, and which roots load each identity (for the plugin rule)."""

    def __init__(self, key: tuple, roots: List[str], index: RdepsIndex) -> None:
        self.key = key
        self.roots = roots
        files, mpaths = index.data.files, index.data.mpaths
        self._files = files
        self.member_ident = _Memo(lambda i: index.identity(mpaths[i]))
        self.by_ident: Dict[Identity, Set[int]] = {}
        self.users: Dict[int, List[str]] = {}
        for p in roots:
            for i in files[p][F_TREE]:
                self.users.setdefault(i, []).append(p)
        for i in range(len(mpaths)):
            ident = self.member_ident(i)
            if ident is not None:
                self.by_ident.setdefault(ident, set()).add(i)
        self._tree_idents: Dict[str, Set[Identity]] = {}
        self._containers: Optional[Dict[Identity, List[str]]] = None

    def idents_of(self, p: str) -> Set[Identity]:
        s = self._tree_idents.get(p)
        if s is None:
            s = self._tree_idents[p] = {i for i in map(self.member_ident, self._files[p][F_TREE]) if i is not None}
        return s

    def containers(self) -> Dict[Identity, List[str]]:
        if self._containers is None:
            self._containers = {}
            for q in self.roots:
                for i in self.idents_of(q):
                    self._containers.setdefault(i, []).append(q)
        return self._containers


class _Memo:
    """A function of a member id, computed once."""

    def __init__(self, fn: Callable[[int], Optional[Identity]]) -> None:
        self.fn = fn
        self.done: Dict[int, Optional[Identity]] = {}

    def __call__(self, i: int) -> Optional[Identity]:
        try:
            return self.done[i]
        except KeyError:
            v = self.done[i] = self.fn(i)
            return v


#: The key of a group in :meth:`_Groups.live`: (0, stored number), (1, number of a group of this process), or
#: :data:`_UNKNOWN` for computed trees of no known group (they need every watched directory and probed path).
GroupKey = Tuple[int, int]
_UNKNOWN: GroupKey = (2, 0)


class _NewGroup:
    """A group computed in this process (its ``number`` among them): what its loader listed and ``stat``-ed."""

    __slots__ = ("number", "probed", "watched")

    def __init__(self, number: int) -> None:
        self.number = number
        self.watched: Set[str] = set()
        self.probed: Set[str] = set()


class _Groups:
    """Which watched directories and probed paths the trees depend on.

    The trees one :class:`Loader` computes form a *group*: the files of one indexed directory whose trees one
    update computed. A loader's searches share their directory listings and ``stat`` results (memoized across
    loads: a search that finds its answer in a listing made for another tree does not list again), so each
    tree of a group may depend on anything its loader listed or ``stat``-ed, and on nothing another loader
    did. A watched directory or probed path that no group with a computed tree holds is needed by no tree
    (:meth:`needed`). A tree that is not computed needs none: before it answers it is computed again, by a
    new loader that lists and ``stat``-s anew.

    Stored groups come from the index file, checked when it is read and expanded only when trees are computed
    or the index is written: a warm update that changes nothing never does."""

    def __init__(self) -> None:
        #: the stored files in stored order, and runs of them: [count, group, count, group...] (group -1: no tree)
        self._order: List[str] = []
        self._runs: List[int] = []
        #: per stored group, its watched directories and probed paths: ids into the stored orders
        self._w_ids: List[List[int]] = []
        self._p_ids: List[List[int]] = []
        self._w_order: List[str] = []
        self._p_order: List[str] = []
        #: {stored file with a tree: its group}, made on demand
        self._of: Optional[Dict[str, int]] = None
        #: the groups of this process, and {tree it computed: its group's number} (the last one computing it)
        self._new: List[_NewGroup] = []
        self._new_of: Dict[str, int] = {}

    def load(self, core: Dict[str, Any], data: IndexData) -> None:
        """Take the groups of the core just decoded into ``data``, checked: ``KeyError``/``TypeError``/
        ``ValueError``/``IndexError`` when anything is wrong, a computed tree in no group included."""
        doc = core["groups"]
        if type(doc) is not dict or data.pending is None:
            raise TypeError("groups")
        order, w_order = data.pending[2], data.pending[3]
        p_order: List[str] = core["probed"]["path"]
        kinds: str = core["files"]["kind"]
        w_col, p_col = doc["watched"], doc["probed"]
        if type(w_col) is not list or type(p_col) is not list or len(w_col) != len(p_col):
            raise TypeError("groups: columns of the wrong type or length")
        w_ids = [_ids(v, len(w_order)) for v in w_col]
        p_ids = [_ids(v, len(p_order)) for v in p_col]
        runs = unpack(doc["files"], "i")
        pos = 0
        for count, g in zip(runs[::2], runs[1::2]):
            if count <= 0 or not -1 <= g < len(w_ids):
                raise ValueError("groups: a bad run of files")
            if g < 0 and not kinds[pos:pos + count].islower():  # upper case: the file's tree is computed
                raise ValueError("groups: a computed tree in no group")
            pos += count
        if len(runs) % 2 or pos != len(order):
            raise ValueError("groups: runs of the wrong length")
        self._order, self._runs, self._w_ids, self._p_ids = order, runs, w_ids, p_ids
        self._w_order, self._p_order, self._of = w_order, p_order, None

    def forget_stored(self) -> None:
        """The index is rebuilt: no stored group is left."""
        self._order, self._runs, self._w_ids, self._p_ids, self._of = [], [], [], [], None

    def new_group(self) -> _NewGroup:
        self._new.append(_NewGroup(len(self._new)))
        return self._new[-1]

    def add_tree(self, group: _NewGroup, p: str) -> None:
        """The tree of ``p`` was just computed by the loader of ``group``."""
        self._new_of[p] = group.number

    def count(self) -> int:
        """How many groups there may be (stored, and of this process): at least as many as :meth:`live` finds."""
        return len(self._w_ids) + len(self._new)

    def _membership(self) -> Dict[str, int]:
        if self._of is None:
            of: Dict[str, int] = {}
            order, runs = self._order, self._runs
            pos = 0
            for count, g in zip(runs[::2], runs[1::2]):
                if g >= 0:
                    of.update(dict.fromkeys(order[pos:pos + count], g))
                pos += count
            self._of = of
        return self._of

    def live(self, files: Mapping[str, List[Any]]) -> Dict[GroupKey, List[str]]:
        """The groups that still hold a computed tree, with those trees."""
        of, new_of = self._membership(), self._new_of
        out: Dict[GroupKey, List[str]] = {}
        for p, e in files.items():
            if e[F_TREE] is not None:
                n = new_of.get(p)
                if n is not None:
                    g: GroupKey = (1, n)
                else:
                    stored = of.get(p)
                    g = (0, stored) if stored is not None else _UNKNOWN
                trees = out.get(g)
                if trees is None:
                    out[g] = [p]
                else:
                    trees.append(p)
        return out

    def needed(self, groups: Iterable[GroupKey], data: IndexData) -> Tuple[Set[str], Set[str]]:
        """The watched directories and probed paths the searches of ``groups`` listed and ``stat``-ed."""
        watched: Set[str] = set()
        probed: Set[str] = set()
        for kind, n in groups:
            if kind == 0:
                w_order, p_order = self._w_order, self._p_order
                watched.update([w_order[i] for i in self._w_ids[n]])
                probed.update([p_order[i] for i in self._p_ids[n]])
            elif kind == 1:
                watched.update(self._new[n].watched)
                probed.update(self._new[n].probed)
            else:  # never written so; kept whole rather than guessed
                watched.update(data.watched)
                probed.update(data.probed)
        return watched, probed

    def encode(self, core: Dict[str, Any], order: List[str], live: Dict[GroupKey, List[str]],
               data: IndexData) -> Dict[str, Any]:
        """The ``groups`` of ``core`` (just encoded from ``data``, its files in ``order``): the groups of ``live``
        renumbered, each with its watched directories and probed paths as ids into the core's, and the group of
        each of the core's files, in runs."""
        w_index = {p: i for i, p in enumerate(core["watched"]["path"])}
        p_index = {p: i for i, p in enumerate(core["probed"]["path"])}
        number: Dict[str, int] = {}
        w_col: List[str] = []
        p_col: List[str] = []
        for n, (g, trees) in enumerate(live.items()):
            watched, probed = self.needed([g], data)
            w_col.append(pack(sorted(w_index[d] for d in watched if d in w_index), "i"))
            p_col.append(pack(sorted(p_index[p] for p in probed if p in p_index), "i"))
            number.update(dict.fromkeys(trees, n))
        runs: List[int] = []
        for p in order:
            g = number.get(p, -1)
            if runs and runs[-1] == g:
                runs[-2] += 1
            else:
                runs += [1, g]
        return {"files": pack(runs, "i"), "watched": w_col, "probed": p_col}


def _ids(text: Any, limit: int) -> List[int]:
    """A packed list of ids below ``limit``."""
    ids = unpack(text, "i")
    if ids and (min(ids) < 0 or max(ids) >= limit):
        raise IndexError("groups: a reference to an entry that does not exist")
    return ids


def _watched_row(ident: Optional[Tuple[int, int]], names: Optional[FrozenSet[str]], now_ns: int,
                 racy_ns: int) -> List[Any]:
    """The row of a watched directory listed with inode and ctime ``ident`` (taken before the listing)."""
    if ident is None or names is None:
        return [0, W_ABSENT, ""]
    ino, ctime = ident
    text = W_UNREADABLE if names is UNLISTABLE else "/".join(sorted(names))
    return [ino, ctime if now_ns - ctime >= racy_ns else W_RELIST, text]


def _is_unreadable(e: List[Any]) -> bool:
    """The file row ``e`` is that of a file that could not be opened (:meth:`RdepsIndex._unreadable`)."""
    return e[F_ERR] is not None and e[F_ERR].startswith(UNREADABLE)


def _unread_reason(e: List[Any]) -> str:
    """Why the file of row ``e`` (:func:`_is_unreadable`) was not read."""
    return f"{CANNOT_OPEN}: {e[F_ERR][len(UNREADABLE):]}"


def _dir_under(d: str, top: Top) -> bool:
    if top.recursive:
        return d == top.path or d.startswith(top.path.rstrip("/") + "/")
    return d == top.path


def _split(names: str) -> List[str]:
    return names.split("/") if names else []


def open_index(cache: Optional[str], profile: Profile, env: Optional[Environment] = None, *,
               keep: bool = True, elf_cache: Optional[ElfCache] = None) -> RdepsIndex:
    """The index of the cache directory ``cache`` (None: the default one); ``keep=False``: in memory only."""
    return RdepsIndex(index_path(cache) if keep else None, profile, env, elf_cache=elf_cache)


def environment_for_index(environ: Mapping[str, str]) -> Environment:
    """The environment trees are resolved with: the caller's LD_LIBRARY_PATH/LD_PRELOAD, cwd ``/`` unless
    one of them is set (then the caller's cwd, which relative entries depend on)."""
    env = Environment.from_environ(environ)
    if env.library_path is None and env.preload is None:
        env = env.replace(cwd="/")
    return env
