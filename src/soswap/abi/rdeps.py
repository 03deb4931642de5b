"""The reverse-dependency index: for every ELF file under a set of directories, the objects ld.so would load
with it (its resolved tree, from :mod:`soswap.loader`), so that "who loads this library?" is a lookup.

It is kept in the state directory (``rdeps-index.json``) and updated incrementally:

* every file is keyed by ``(st_dev, st_ino, st_size, st_mtime_ns)``; only a file whose key changed (or a new
  one) is read again. A directory whose mtime did not change still has the same names, so it is not listed
  again: only its ELF files are ``lstat``-ed (an in-place rewrite keeps the directory's mtime);
* a tree is computed again only when its root changed, one of its members changed (members are re-``stat``-ed,
  wherever they are), a name it requested appeared or disappeared in an indexed directory or in ld.so.cache,
  or the loader profile or the environment changed;
* a key or directory mtime less than :data:`RACY_NS` old when it is read is not trusted next time (the
  racy-git rule: a second change within the same timestamp tick would go unseen).

An unreadable or corrupt index file is rebuilt from scratch, never an error. Not seen: a new library in a
directory that is not indexed (a RUNPATH directory elsewhere) that would now shadow a member, and a non-ELF
file turned into an ELF file in place without a rename.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
import time
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

from soswap.abi.index_store import read_json, write_json
from soswap.abi.sysdirs import Top, canonical_tops, under
from soswap.elf import ElfCache
from soswap.elf import constants as C
from soswap.errors import SoswapError
from soswap.loader import Environment, Loader, Profile
from soswap.state import state_dir

INDEX_FILE = "rdeps-index.json"
FORMAT = "soswap-rdeps-index"
VERSION = 1
#: A timestamp this close to the time it was read may change again unseen (same tick): re-check next time.
RACY_NS = 2_000_000_000
#: Directories nobody asked for in this long are dropped from the index.
TOP_TTL_S = 30 * 86400
#: The smallest ELF file (a 32-bit header).
_MIN_ELF = 52

PROGRAM = "program"
LIBRARY = "library"
PLUGIN = "plugin"
OTHER = "other"

Key = Tuple[int, int, int, int]


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


class UpdateStats:
    """What one update did (for reports and tests)."""

    def __init__(self) -> None:
        self.dirs_listed = 0
        self.files = 0
        #: ELF files read again (new or changed key), in walk order
        self.reread: List[str] = []
        #: regular files opened only to look for the ELF magic (new or in a changed directory)
        self.probed = 0
        #: roots whose tree was computed again
        self.trees: List[str] = []
        #: why the whole index was rebuilt ("missing", "corrupt: ..."), or None
        self.rebuilt: Optional[str] = None
        self.saved = False
        self.save_error: Optional[str] = None
        self.seconds = 0.0

    def as_dict(self) -> Dict[str, Any]:
        return {"files": self.files, "dirs_listed": self.dirs_listed, "reread": len(self.reread),
                "probed": self.probed, "trees": len(self.trees), "rebuilt": self.rebuilt, "saved": self.saved,
                "save_error": self.save_error, "seconds": round(self.seconds, 3)}


def index_path(explicit_state_dir: Optional[str] = None) -> str:
    """Where the index of this user lives (see :func:`soswap.abi.statedir.state_dir`)."""
    return os.path.join(state_dir(explicit_state_dir), INDEX_FILE)


def key_of(st: os.stat_result) -> Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _trusted(mtime_ns: int, now_ns: int) -> bool:
    return now_ns - mtime_ns >= RACY_NS


def classify(elf: Any) -> str:
    """``program`` (ET_EXEC, a PIE, or an ET_DYN with an interpreter and no SONAME), ``library`` (another
    ET_DYN), else ``other`` (relocatable objects, core files)."""
    if elf.type == C.ET_EXEC:
        return PROGRAM if elf.is_dynamic or elf.interpreter else OTHER
    if elf.type != C.ET_DYN:
        return OTHER
    try:
        flags_1 = elf.dynamic.flags_1 if elf.is_dynamic else 0
        soname = elf.soname if elf.is_dynamic else None
    except SoswapError:
        return OTHER
    if flags_1 & C.DF_1_PIE or (elf.interpreter and soname is None):
        return PROGRAM
    return LIBRARY


def env_fingerprint(env: Environment) -> str:
    """What in the environment changes a tree: the search path, preloads, and the cwd they may be relative to."""
    parts: List[Any] = [env.library_path, env.preload, env.origin_path, env.inhibit_cache,
                        env.use_preload_file, list(env.hwcaps_mask) if env.hwcaps_mask is not None else None]
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


class RdepsIndex:
    """The index of one state directory. ``update(tops)`` brings the given directories up to date,
    ``dependents(path, tops)`` answers the query, ``save()`` writes it back atomically.

    ``path=None`` keeps the index in memory only (``--no-index``)."""

    def __init__(self, path: Optional[str], profile: Profile, env: Optional[Environment] = None, *,
                 elf_cache: Optional[ElfCache] = None, create_dir: bool = True) -> None:
        self.path = path
        #: False: save only into a state directory that already exists (a preflight must not create it)
        self.create_dir = create_dir
        self.profile = profile
        self.env = env if env is not None else Environment(cwd="/")
        self.elf_cache = elf_cache if elf_cache is not None else ElfCache()
        self._loader: Optional[Loader] = None
        self.stats = UpdateStats()
        # the data (see _decode for the stored layout)
        self.dirs: Dict[str, Dict[str, Any]] = {}
        self.files: Dict[str, Dict[str, Any]] = {}
        self.members: Dict[str, Optional[List[int]]] = {}
        self.ldcache: Dict[str, List[str]] = {}
        self.tops: Dict[str, Dict[str, Any]] = {}
        self.profile_fp = ""
        self._loaded = False

    # -- persistence --------------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the index file (once). A missing or corrupt file leaves the index empty (rebuilt)."""
        if self._loaded:
            return
        self._loaded = True
        if self.path is None:
            self.stats.rebuilt = "not kept (no index file)"
            return
        doc, problem = read_json(self.path)
        if doc is None:
            self.stats.rebuilt = "missing" if problem is None else f"corrupt: {problem}"
            return
        try:
            self._decode(doc)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            self.dirs, self.files, self.members, self.ldcache, self.tops = {}, {}, {}, {}, {}
            self.profile_fp = ""
            self.stats.rebuilt = f"corrupt: {type(exc).__name__}: {exc}"[:200]

    def _decode(self, doc: Dict[str, Any]) -> None:
        if doc.get("format") != FORMAT:
            raise ValueError("not a soswap rdeps index")
        if doc.get("version") != VERSION:
            raise ValueError(f"index version {doc.get('version')!r}, expected {VERSION}")
        paths = doc["paths"]
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise TypeError("paths")
        self.profile_fp = str(doc["profile"])
        self.ldcache = {str(k): [str(x) for x in v] for k, v in _dict(doc["ldcache"]).items()}
        self.tops = {str(k): {"r": bool(v["r"]), "env": str(v["env"]), "used": float(v["used"])}
                     for k, v in _dict(doc["tops"]).items()}
        for d, e in _dict(doc["dirs"]).items():
            self.dirs[str(d)] = {"m": _opt_int(e["m"]), "s": _strs(e["s"]), "e": _strs(e["e"]), "o": _strs(e["o"])}
        for p, e in _dict(doc["files"]).items():
            e = _dict(e)
            tree = e.get("tree")
            self.files[str(p)] = {
                "k": _key(e.get("k")),
                "t": str(e["t"]),
                "so": _opt_str(e.get("so")),
                "tree": None if tree is None else [paths[i] for i in _ints(tree)],
                "d": [paths[i] for i in _ints(e.get("d") or [])],
                "req": _strs(e.get("req") or []),
                "fatal": _opt_str(e.get("fatal")),
                "err": _opt_str(e.get("err")),
            }
        for i, k in _dict(doc["members"]).items():
            self.members[paths[int(i)]] = _key(k)

    def _encode(self) -> Dict[str, Any]:
        table: Dict[str, int] = {}

        def ref(p: str) -> int:
            n = table.get(p)
            if n is None:
                n = table[p] = len(table)
            return n

        files = {}
        for p, e in self.files.items():
            out = {"k": e["k"], "t": e["t"]}
            if e.get("so"):
                out["so"] = e["so"]
            if e.get("tree") is not None:
                out["tree"] = [ref(m) for m in e["tree"]]
                out["d"] = [ref(m) for m in e["d"]]
                out["req"] = e["req"]
            if e.get("fatal"):
                out["fatal"] = e["fatal"]
            if e.get("err"):
                out["err"] = e["err"]
            files[p] = out
        members = {str(ref(p)): k for p, k in self.members.items()}
        return {"format": FORMAT, "version": VERSION, "profile": self.profile_fp, "ldcache": self.ldcache,
                "tops": self.tops, "dirs": self.dirs, "files": files, "members": members,
                "paths": sorted(table, key=table.__getitem__)}

    def save(self) -> None:
        """Write the index back (atomically). A failure is recorded in ``stats.save_error``, not raised: the
        answer computed in memory is still right."""
        if self.path is None:
            return
        if not self.create_dir and not os.path.isdir(os.path.dirname(self.path)):
            self.stats.save_error = f"{os.path.dirname(self.path)} does not exist: not created for the index"
            return
        now = time.time()
        for t in [t for t, v in self.tops.items() if now - v["used"] > TOP_TTL_S]:
            self._drop_top(Top(t, self.tops[t]["r"]))
            del self.tops[t]
        problem = write_json(self.path, self._encode())
        self.stats.saved = problem is None
        self.stats.save_error = problem

    # -- update -------------------------------------------------------------------------------------------

    def update(self, tops: Sequence[Top]) -> UpdateStats:
        """Bring the files under ``tops`` up to date (see the module docstring)."""
        start = time.monotonic()
        self.load()
        tops = canonical_tops(tops)
        now_ns = time.time_ns()
        changed_names: Set[str] = set()
        fp = profile_fingerprint(self.profile)
        if fp != self.profile_fp:
            for e in self.files.values():
                e["tree"] = None
            self.profile_fp = fp
        changed_names |= self._refresh_ldcache()
        env_fp = env_fingerprint(self.env)
        for top in tops:
            old = self.tops.get(top.path)
            if old is None or old["env"] != env_fp or old["r"] != top.recursive:
                for p, e in self.files.items():
                    if under(p, top):
                        e["tree"] = None
            self.tops[top.path] = {"r": top.recursive, "env": env_fp, "used": time.time()}
            changed_names |= self._walk(top, now_ns)
        roots = [p for p in self.files if any(under(p, t) for t in tops)]
        self.stats.files = len(roots)
        changed_members = self._refresh_members(roots, now_ns)
        todo = []
        for p in roots:
            e = self.files[p]
            if e["t"] not in (PROGRAM, LIBRARY):
                continue
            if (e["tree"] is None or (changed_members and not changed_members.isdisjoint(e["tree"]))
                    or (changed_names and not changed_names.isdisjoint(e["req"]))):
                todo.append(p)
        for p in todo:
            self._compute_tree(p, now_ns)
        self._prune_members()
        self.stats.seconds = time.monotonic() - start
        return self.stats

    def _refresh_ldcache(self) -> Set[str]:
        try:
            entries = self.profile.ldcache.entries
        except SoswapError:
            entries = ()
        current: Dict[str, List[str]] = {}
        for e in entries:
            current.setdefault(e.key, []).append(e.value)
        changed = {k for k in set(current) | set(self.ldcache) if current.get(k) != self.ldcache.get(k)}
        self.ldcache = current
        return changed

    def _walk(self, top: Top, now_ns: int) -> Set[str]:
        """Refresh the directory entries and ELF files under ``top``; returns the names that appeared or
        disappeared (they may change how a tree resolves)."""
        changed_names: Set[str] = set()
        try:
            top_dev = os.stat(top.path).st_dev
        except OSError:
            self._drop_top(top)
            return changed_names
        seen: Set[str] = set()
        stack = [top.path]
        while stack:
            d = stack.pop()
            try:
                st = os.lstat(d)
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode) or st.st_dev != top_dev:
                continue  # not followed: symlinked directories, other file systems
            seen.add(d)
            old = self.dirs.get(d)
            if old is not None and old["m"] is not None and old["m"] == st.st_mtime_ns:
                self._recheck_files(d, old, now_ns, changed_names)
                subdirs = old["s"]
            else:
                subdirs = self._list_dir(d, st, old, now_ns, changed_names)
            if top.recursive:
                stack.extend(posixpath.join(d, s) for s in reversed(subdirs))
        # forget what is gone: directories not seen, files no longer listed
        for d in [d for d in self.dirs if _dir_under(d, top) and d not in seen]:
            entry = self.dirs.pop(d)
            changed_names.update(entry["e"])
            changed_names.update(entry["o"])
        for p in [p for p in self.files if under(p, top)]:
            d, name = posixpath.split(p)
            entry = self.dirs.get(d)
            if entry is None or name not in entry["e"]:
                del self.files[p]
                changed_names.add(name)
        return changed_names

    def _recheck_files(self, d: str, entry: Dict[str, Any], now_ns: int, changed_names: Set[str]) -> None:
        """The directory's names are unchanged: re-``lstat`` its ELF files (an in-place rewrite)."""
        gone = []
        for name in entry["e"]:
            p = posixpath.join(d, name)
            try:
                st = os.lstat(p)
            except OSError:
                gone.append(name)
                continue
            e = self.files.get(p)
            if e is not None and e["k"] is not None and e["k"] == list(key_of(st)):
                continue
            if not (stat.S_ISREG(st.st_mode) and self._read(p, st, now_ns)):
                gone.append(name)
        if gone:
            entry["e"] = [n for n in entry["e"] if n not in gone]
            entry["o"] = sorted(set(entry["o"]) | set(gone))
            entry["m"] = None  # list it again next time
            changed_names.update(gone)

    def _list_dir(self, d: str, st: os.stat_result, old: Optional[Dict[str, Any]], now_ns: int,
                  changed_names: Set[str]) -> List[str]:
        self.stats.dirs_listed += 1
        subdirs: List[str] = []
        elves: List[str] = []
        others: List[str] = []
        old_names: Set[str] = set()
        if old is not None:
            old_names = set(old["s"]) | set(old["e"]) | set(old["o"])
        try:
            it = os.scandir(d)
        except OSError:
            self.dirs.pop(d, None)
            return []
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
                    fst = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                p = entry.path
                e = self.files.get(p)
                if e is not None and e["k"] is not None and e["k"] == list(key_of(fst)):
                    elves.append(name)
                    continue
                if self._read(p, fst, now_ns):
                    elves.append(name)
                else:
                    others.append(name)
        subdirs.sort()
        elves.sort()
        others.sort()
        names = set(subdirs) | set(elves) | set(others)
        changed_names.update(names ^ old_names)
        self.dirs[d] = {"m": st.st_mtime_ns if _trusted(st.st_mtime_ns, now_ns) else None, "s": subdirs,
                        "e": elves, "o": others}
        return subdirs

    def _read(self, p: str, st: os.stat_result, now_ns: int) -> bool:
        """Read the file at ``p`` (new or changed): True when it is an ELF file (now in ``files``)."""
        if st.st_size < _MIN_ELF:
            self.files.pop(p, None)
            return False
        self.stats.probed += 1
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError:
            self.files.pop(p, None)
            return False
        try:
            magic = os.read(fd, 4)
        except OSError:
            magic = b""
        finally:
            os.close(fd)
        if magic != b"\x7fELF":
            self.files.pop(p, None)
            return False
        self.stats.reread.append(p)
        key = list(key_of(st)) if _trusted(st.st_mtime_ns, now_ns) else None
        entry: Dict[str, Any] = {"k": key, "t": OTHER, "so": None, "tree": None, "d": [], "req": [],
                                 "fatal": None, "err": None}
        try:
            elf = self.elf_cache.get(p, st)
            entry["t"] = classify(elf)
            if elf.is_dynamic:
                entry["so"] = elf.soname
        except SoswapError as exc:
            entry["err"] = str(exc)[:300]
        self.files[p] = entry
        return True

    def _refresh_members(self, roots: Sequence[str], now_ns: int) -> Set[str]:
        """Re-stat every member of the trees of ``roots``; the paths whose key changed."""
        wanted: Set[str] = set()
        for p in roots:
            tree = self.files[p]["tree"]
            if tree:
                wanted.update(tree)
        changed: Set[str] = set()
        for m in wanted:
            try:
                st = os.stat(m)
                k: Optional[List[int]] = list(key_of(st))
            except OSError:
                k = None
            old = self.members.get(m)
            if old is None or old != k:
                changed.add(m)
            # a racy member is re-checked next time: stored as unknown
            self.members[m] = k if (k is not None and _trusted(k[3], now_ns)) else None
        return changed

    def _loader_for_trees(self) -> Loader:
        if self._loader is None:
            self._loader = Loader(self.profile, self.env, cache=self.elf_cache)
        return self._loader

    def _compute_tree(self, p: str, now_ns: int) -> None:
        e = self.files[p]
        self.stats.trees.append(p)
        e["tree"], e["d"], e["req"], e["fatal"] = [], [], [], None
        try:
            res = self._loader_for_trees().load(p)
        except SoswapError as exc:
            e["err"] = str(exc)[:300]
            return
        e["err"] = None
        members: List[str] = []
        req: Set[str] = set()
        for o in res.objects[1:]:
            if o.kind == "vdso":
                continue
            for n in o.names:
                req.add(posixpath.basename(n))
            if o.found and o.path:
                members.append(o.path)
        root = res.objects[0]
        e["tree"] = members
        e["d"] = [res.objects[j].path for j in root.needed if j is not None and res.objects[j].found]
        e["req"] = sorted(req)
        e["fatal"] = res.fatal.message if res.fatal is not None else None
        for m in members:
            if m not in self.members:
                try:
                    st = os.stat(m)
                    k = list(key_of(st))
                    self.members[m] = k if _trusted(k[3], now_ns) else None
                except OSError:
                    self.members[m] = None

    def _prune_members(self) -> None:
        used: Set[str] = set()
        for e in self.files.values():
            if e["tree"]:
                used.update(e["tree"])
        for m in [m for m in self.members if m not in used]:
            del self.members[m]

    def _drop_top(self, top: Top) -> None:
        for d in [d for d in self.dirs if _dir_under(d, top)]:
            del self.dirs[d]
        for p in [p for p in self.files if under(p, top)]:
            del self.files[p]

    # -- queries ------------------------------------------------------------------------------------------

    def identity(self, path: str) -> Optional[Tuple[int, int]]:
        """(st_dev, st_ino) of a member or root path as the index knows it (None: unknown)."""
        e = self.files.get(path)
        k = e["k"] if e is not None else self.members.get(path)
        if k is None:
            try:
                st = os.stat(path)
            except OSError:
                return None
            return (st.st_dev, st.st_ino)
        return (k[0], k[1])

    def dependents(self, target: str, tops: Sequence[Top]) -> List[Dependent]:
        """Every indexed file under ``tops`` whose tree contains ``target`` (compared by device and inode),
        ``target`` itself excluded; programs first, then plugins, then libraries, by path."""
        st = os.stat(target)
        want = (st.st_dev, st.st_ino)
        tops = canonical_tops(tops)
        roots = [p for p, e in self.files.items() if e["tree"] is not None and any(under(p, t) for t in tops)]
        ident: Dict[str, Optional[Tuple[int, int]]] = {}

        def ident_of(p: str) -> Optional[Tuple[int, int]]:
            if p not in ident:
                ident[p] = self.identity(p)
            return ident[p]

        # which roots contain which identities (to tell plugins from libraries that others load)
        containers: Dict[Tuple[int, int], List[str]] = {}
        tree_ids: Dict[str, Set[Tuple[int, int]]] = {}
        for p in roots:
            ids = {i for i in map(ident_of, self.files[p]["tree"]) if i is not None}
            tree_ids[p] = ids
            for i in ids:
                containers.setdefault(i, []).append(p)
        out: List[Dependent] = []
        for p in roots:
            me = ident_of(p)
            if me == want or want not in tree_ids[p]:
                continue
            e = self.files[p]
            direct = any(ident_of(m) == want for m in e["d"])
            role = e["t"]
            if role == LIBRARY:
                covered = any(q != p and ident_of(q) not in tree_ids[p] for q in containers.get(me, ())) \
                    if me is not None else False
                role = LIBRARY if covered else PLUGIN
            out.append(Dependent(p, role, direct, e["so"], e["fatal"]))
        order = {PROGRAM: 0, PLUGIN: 1, LIBRARY: 2}
        out.sort(key=lambda d: (order.get(d.role, 3), d.path))
        return out


def _dir_under(d: str, top: Top) -> bool:
    if top.recursive:
        return d == top.path or d.startswith(top.path.rstrip("/") + "/")
    return d == top.path


def _dict(v: Any) -> Dict[str, Any]:
    if not isinstance(v, dict):
        raise TypeError("expected an object")
    return v


def _strs(v: Any) -> List[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise TypeError("expected a list of strings")
    return v


def _ints(v: Any) -> List[int]:
    if not isinstance(v, list) or not all(isinstance(x, int) for x in v):
        raise TypeError("expected a list of integers")
    return v


def _key(v: Any) -> Optional[List[int]]:
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != 4 or not all(isinstance(x, int) for x in v):
        raise TypeError("bad file key")
    return v


def _opt_int(v: Any) -> Optional[int]:
    if v is None or isinstance(v, int):
        return v
    raise TypeError("expected an integer")


def _opt_str(v: Any) -> Optional[str]:
    if v is None or isinstance(v, str):
        return v
    raise TypeError("expected a string")


def open_index(state: Optional[str], profile: Profile, env: Optional[Environment] = None, *,
               keep: bool = True, elf_cache: Optional[ElfCache] = None, create_dir: bool = True) -> RdepsIndex:
    """The index of the state directory ``state`` (None: the default one); ``keep=False``: in memory only;
    ``create_dir=False``: saved only if the state directory exists already."""
    return RdepsIndex(index_path(state) if keep else None, profile, env, elf_cache=elf_cache, create_dir=create_dir)


def environment_for_index(environ: Mapping[str, str]) -> Environment:
    """The environment trees are resolved with: the caller's LD_LIBRARY_PATH/LD_PRELOAD, cwd ``/`` unless
    one of them is set (then the caller's cwd, which relative entries depend on)."""
    env = Environment.from_environ(environ)
    if env.library_path is None and env.preload is None:
        env = env.replace(cwd="/")
    return env
