"""One emulated run of ``ld.so`` up to relocation: :class:`LoadSession` holds the link map being built and
implements ``_dl_map_object`` (already-loaded matching, the search through RPATH chain, LD_LIBRARY_PATH,
RUNPATH, ld.so.cache, system directories and hwcaps subdirectories, ``open_verify``, the device/inode test), the
preloads (``handle_preload_list``, ``/etc/ld.so.preload``) and the breadth-first ``_dl_map_object_deps``.
:mod:`soswap.loader.loading` drives it and freezes the result.
"""

from __future__ import annotations

import bisect
import errno as errnomod
import os
import posixpath
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from soswap.elf import ElfFile
from soswap.elf import constants as C
from soswap.errors import ElfError
from soswap.loader import dst
from soswap.loader import model as M
from soswap.loader.candidates import (
    ACCEPT,
    CRASH,
    CUT,
    FATAL,
    OTHER_CLASS,
    FileId,
    FileSystem,
    Substitute,
    Verdict,
    ldso_strerror,
)
from soswap.loader.environment import Environment
from soswap.loader.profile import Profile
from soswap.loader.searchpath import SearchDir, capability_subdirs, decompose
from soswap.textfile import read_regular
from soswap.tuples import NamedTuple

#: SECURE_NAME_LIMIT / SECURE_PATH_LIMIT of elf/rtld.c.
SECURE_NAME_LIMIT = 255

_KIND_EXE = "executable"
_KIND_LIB = "library"
_KIND_RTLD = "interpreter"
_KIND_VDSO = "vdso"
_KIND_PRELOAD = "preload"


class _SearchPlan(NamedTuple):
    """A search list as :meth:`LoadSession._plan` sees it."""

    dirnames: Tuple[str, ...]
    #: (directory index, subdirectory index) of the pairs that exist, in search order (a relative directory,
    #: the working directory's, always counts)
    live: Tuple[Tuple[int, int], ...]
    #: (directory index, subdirectory index, nonexisting key) of the absolute pairs that do not exist, in search
    #: order (bisect by a (directory index, subdirectory index) pair: those before it sort first)
    missing: Tuple[Tuple[int, int, Tuple[str, int]], ...]
    #: some directory is relative: its existence depends on the working directory at each search
    relative: bool


class _Map:
    """The mutable ``struct link_map`` of one session (frozen into :class:`LoadedObject` at the end)."""

    __slots__ = (
        "cid",
        "depth",
        "elf",
        "faked",
        "file",
        "file_id",
        "is_main",
        "kind",
        "libnames",
        "loader",
        "needed",
        "needed_kinds",
        "needed_names",
        "nodeflib",
        "origin",
        "path",
        "reason",
        "requested_by",
        "rpath_dirs",
        "runpath_dirs",
        "substituted",
    )

    def __init__(self, cid: int, name: str, path: str, kind: str) -> None:
        self.cid = cid  # creation order
        self.libnames: List[str] = [name]
        self.path = path
        self.file: Optional[str] = None
        self.elf: Optional[ElfFile] = None
        self.kind = kind
        self.faked = False
        self.loader: Optional[int] = None  # cid
        self.origin: Optional[str] = None
        self.reason = M.Reason(M.RULE_ROOT, "")
        self.file_id: Optional[FileId] = None
        self.requested_by: List[int] = []
        self.needed: List[Optional[int]] = []
        self.needed_names: List[str] = []
        #: "needed", "filter" or "auxiliary": the dynamic tag of each entry of ``needed``
        self.needed_kinds: List[str] = []
        self.depth = 0
        self.substituted = False
        self.is_main = False
        self.rpath_dirs: Optional[Tuple[SearchDir, ...]] = None
        self.runpath_dirs: Optional[Tuple[SearchDir, ...]] = None
        self.nodeflib = False

    @property
    def has_runpath(self) -> bool:
        return self.elf is not None and self.elf.dynamic.runpath is not None


class _Miss(Exception):
    """``_dl_signal_error`` inside ``_dl_map_object``."""

    def __init__(self, kind: str, objname: str, message: str, path: Optional[str] = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.objname = objname
        self.message = message
        #: the file that was opened, when the message names the object otherwise (for the tree, not ld.so)
        self.path = path if path != objname else None
        #: a what-if substitute was refused during this search
        self.substitute = False


class _Found:
    __slots__ = ("realname", "reason", "verdict")

    def __init__(self, realname: str, verdict: Verdict, reason: M.Reason) -> None:
        self.realname = realname
        self.verdict = verdict
        self.reason = reason


class Substitutions:
    """What-if substitutions ``{target path P: file F}``, matched by P's canonical path and by its identity.

    Built once per substitution set and :class:`FileSystem` by the :class:`Loader` (directories are resolved
    through the file system's memo, so a check that loads a thousand consumers with the same set resolves each
    directory once)."""

    def __init__(self, fsys: FileSystem, cwd: str, items: Mapping[str, Substitute]) -> None:
        self.fsys = fsys
        self.cwd = cwd
        self._by_path: Dict[str, Tuple[Substitute, Optional[FileId], str]] = {}
        self._by_id: Dict[FileId, Tuple[Substitute, str]] = {}
        self._synthetic = 0
        #: the last components of the targets: a candidate of another name can only match by identity
        self.names: frozenset = frozenset()
        names = set()
        for p, f in items.items():
            host = fsys.fs.host(p if p.startswith("/") else posixpath.join(cwd, p))
            st = fsys.stat(host)
            fid: Optional[FileId]
            if isinstance(st, int):
                self._synthetic += 1
                fid = (-1, self._synthetic)
            else:
                fid = (st.st_dev, st.st_ino)
                self._by_id[fid] = (f, p)
            canon = self._canon(host)
            self._by_path[canon] = (f, fid, p)
            names.add(canon[canon.rfind("/") + 1:])
        self.names = frozenset(names)

    def __bool__(self) -> bool:
        return bool(self._by_path)

    def _canon(self, host: str) -> str:
        d, base = os.path.split(host)
        return self.fsys.host_real_dir(d).rstrip("/") + "/" + base

    def by_path(self, host: str) -> Optional[Tuple[Substitute, Optional[FileId], str]]:
        """(F, identity of P, P) when ``host`` names a target P."""
        if host[host.rfind("/") + 1:] not in self.names:
            return None
        return self._by_path.get(self._canon(host))

    def by_identity(self, fid: FileId) -> Optional[Tuple[Substitute, str]]:
        """(F, P) when ``fid`` is the identity of a target P."""
        return self._by_id.get(fid)


class LoadSession:
    """One emulated loader run. Use :meth:`Loader.load`; this class is the engine behind it."""

    def __init__(self, profile: Profile, env: Environment, fsys: FileSystem, *, trace: bool, secure: bool,
                 argv0: str, substitutions: Optional[Substitutions], ldcache: object = False) -> None:
        self.profile = profile
        self.env = env
        self.fsys = fsys
        self.trace = trace
        self.secure = secure
        self.argv0 = argv0
        self.subst = substitutions if substitutions else None
        self.maps: List[_Map] = []
        self.by_name: Dict[str, int] = {}
        self.by_id: Dict[FileId, int] = {}
        self.failures: List[M.Failure] = []
        self.fatal: Optional[M.Failure] = None
        self.main: Optional[_Map] = None
        self.rtld: Optional[_Map] = None
        self.vdso: Optional[_Map] = None
        hwcaps = profile.hwcaps_subdirs
        if env.hwcaps_mask is not None:
            hwcaps = tuple(h for h in hwcaps if h in env.hwcaps_mask)
        self.capstr = capability_subdirs(hwcaps, profile.legacy_subdirs)
        self.cache_target = profile.cache_target(env.hwcaps_mask)
        #: The ld.so.cache as it is when the program starts (as ld.so reads it: LdCache.load).
        if ldcache is False:
            ldcache = profile.ldcache if not env.inhibit_cache else None
        self.ldcache = ldcache
        self.system_dirs = tuple(SearchDir(d, M.RULE_SYSTEM, None) for d in profile.system_dirs)
        self.llp_dirs: Tuple[SearchDir, ...] = ()
        self.aborted = False
        #: (object, object it goes before) in the chain of loaded objects: a filtee moves before its filter
        self.chain_moves: List[Tuple[int, int]] = []
        #: Objects linked before the main map (a filtee of the FILE or program, and the filtees before those):
        #: _dl_map_object searches the chain from the main map (_ns_loaded), so they are never found again by
        #: name or file identity, and a later request maps another copy.
        self.hidden: Set[int] = set()
        #: The chain of link maps (cids) as dl-deps.c relinks it, for :attr:`hidden`.
        self.chain: List[int] = []
        #: The loader's errno between searches (see _replay_errno) and its directory status cache.
        self.errno = 0
        self.nonexisting: set = set()
        #: id(search list) -> (the list, its _SearchPlan); id(plan) -> how many of its missing pairs are known
        self._plans: Dict[int, Tuple[Sequence[SearchDir], _SearchPlan]] = {}
        self._known_missing: Dict[int, int] = {}
        #: For sharing the outcome with programs of the same shape (loading.py): the failures whose line is
        #: "<argv0>: error while loading shared libraries: ..." (``relabel``), and False when a text names the
        #: program in a way a copy cannot rewrite (a missing interpreter).
        self.portable = True
        self.relabel: List[int] = []
        #: Targets whose substitute was opened and refused (LoadResult.substitutes_rejected), and whether the
        #: current _dl_map_object refused one (its failure, if any, is then flagged ``substitute``).
        self.rejected: List[str] = []
        self._refused_sub = False
        self._last_probe_sub = False  # the last candidate opened was a substitute (a fatal miss names it)

    # -- helpers --------------------------------------------------------------------------------------

    def _new_map(self, name: str, path: str, kind: str) -> _Map:
        m = _Map(len(self.maps), name, path, kind)
        self.maps.append(m)
        self.chain.append(m.cid)
        return m

    def _register_names(self, m: _Map) -> None:
        for n in m.libnames:
            self.by_name.setdefault(n, m.cid)
        if m.path:
            self.by_name.setdefault(m.path, m.cid)
        if m.elf is not None:
            soname = m.elf.dynamic.soname
            if soname is not None:
                self.by_name.setdefault(soname, m.cid)

    def _add_name(self, m: _Map, name: str) -> None:
        # add_name_to_object
        if name not in m.libnames:
            m.libnames.append(name)
        self.by_name.setdefault(name, m.cid)

    def _host(self, path: str) -> str:
        if not path.startswith("/"):
            path = posixpath.join(self.env.cwd, path) if path else self.env.cwd
        return self.fsys.fs.host(path)

    def _origin_of(self, realname: str) -> Optional[str]:
        # _dl_new_object: the directory of the name the object was found under, cwd-prefixed if relative
        if not realname:
            return None
        if realname.startswith("/"):
            full = realname
        else:
            cwd = self.env.cwd
            full = (cwd if cwd.endswith("/") else cwd + "/") + realname
        cut = full.rfind("/")
        return full[:cut] if cut > 0 else "/"

    def _expand(self, lm: _Map, text: str) -> str:
        return dst.substitute(text, origin=lm.origin, platform=self.profile.platform, lib=self.profile.lib,
                              secure=self.secure, is_executable=lm.is_main,
                              trusted_dirs=self.profile.system_dirs)

    def _decompose(self, lm: _Map, value: Optional[str], rule: str) -> Tuple[SearchDir, ...]:
        return decompose(value, ":", rule, lm.cid, origin=lm.origin, platform=self.profile.platform,
                         lib=self.profile.lib, secure=self.secure, is_executable=lm.is_main,
                         trusted_dirs=self.profile.system_dirs)

    def _rpath_dirs(self, lm: _Map) -> Tuple[SearchDir, ...]:
        # cache_rpath(DT_RPATH): an object with DT_RUNPATH has no usable DT_RPATH (get-dynamic-info.h)
        if lm.rpath_dirs is None:
            if lm.elf is None or lm.faked or lm.has_runpath:
                lm.rpath_dirs = ()
            else:
                lm.rpath_dirs = self._decompose(lm, lm.elf.dynamic.rpath, M.RULE_RPATH)
        return lm.rpath_dirs

    def _runpath_dirs(self, lm: _Map) -> Tuple[SearchDir, ...]:
        if lm.runpath_dirs is None:
            if lm.elf is None or lm.faked:
                lm.runpath_dirs = ()
            else:
                lm.runpath_dirs = self._decompose(lm, lm.elf.dynamic.runpath, M.RULE_RUNPATH)
        return lm.runpath_dirs

    def _crash(self, obj: _Map, miss: _Miss) -> None:
        """ld.so dies of SIGBUS mapping a truncated file (:func:`soswap.loader.candidates._beyond_the_end`): it
        prints nothing; the shell reports the signal, exit status 135. The load stops in trace mode."""
        path = miss.path or miss.objname
        self._dies(obj, path, f"ld.so crashes (SIGBUS) mapping {path}: {miss.message}", 135, miss.substitute)

    def _filter_loop(self, obj: _Map, chain: List[_Map]) -> None:
        """``_dl_map_object_deps`` never ends: filters (DT_FILTER, DT_AUXILIARY) that move one another before
        themselves for ever, an alloca each turn, until the stack overflows: ld.so dies of SIGSEGV, having
        printed nothing of its own (the shell reports the signal, exit status 139). The load stops in trace mode."""
        looping = [m.path or m.libnames[0] or self.argv0 for m in chain if m.elf is not None and not m.faked
                   and (m.elf.dynamic.filters or m.elf.dynamic.auxiliary)]  # the FILE itself: no path, argv[0]
        self._dies(obj, obj.path or obj.libnames[0] or self.argv0,
                   f"ld.so crashes (SIGSEGV, stack overflow): the filters of {', '.join(looping)} move one another "
                   "before themselves for ever (_dl_map_object_deps)", 139)

    def _dies(self, obj: _Map, name: str, text: str, status: int, substitute: bool = False) -> None:
        """ld.so dies of a signal: nothing is printed (``text`` says what happens), the shell reports exit
        status ``status``. The load stops in trace mode."""
        f = M.Failure(M.CRASH, name, obj.cid, text, text, M.STARTUP, True, exit_status=status, substitute=substitute)
        self.failures.append(f)
        if self.fatal is None:
            self.fatal = f
        if self.trace:
            self.aborted = True

    def _fail(self, kind: str, obj: Optional[_Map], name: str, message: str, *, fatal: bool = True,
              when: str = M.STARTUP, line: Optional[str] = None, exit_status: Optional[int] = 127,
              substitute: bool = False) -> M.Failure:
        full = f"{name}: {message}" if name else message
        if line is None:
            line = f"{self.argv0}: error while loading shared libraries: {full}"
            self.relabel.append(len(self.failures))
        f = M.Failure(kind=kind, name=name, object=obj.cid if obj is not None else None,
                      message=full, line=line, when=when, fatal=fatal,
                      exit_status=exit_status if fatal else None, substitute=substitute)
        self.failures.append(f)
        if fatal and self.fatal is None:
            self.fatal = f
        return f

    # -- _dl_map_object ---------------------------------------------------------------------------------

    def map_object(self, loader: Optional[_Map], name: str, *, secure_mode: bool, kind: str = _KIND_LIB) -> _Map:
        """``_dl_map_object``: the object called ``name`` requested by ``loader``; raises :class:`_Miss` when
        it cannot be loaded (the caller decides whether that is fatal, a faked entry or a warning)."""
        hit = self.by_name.get(name)
        if hit is not None and self.hidden and hit in self.hidden:
            hit = self._visible(lambda m: name in m.libnames or name == m.path
                                or (m.elf is not None and m.elf.dynamic.soname == name))
        if hit is not None:
            return self.maps[hit]
        self._refused_sub = False
        try:
            return self._map_new_object(loader, name, secure_mode, kind)
        except _Miss as miss:
            # a bad file is the last candidate opened; a miss is about every candidate the search refused
            miss.substitute = self._last_probe_sub if miss.kind in (M.BAD_FILE, M.CRASH) else self._refused_sub
            raise

    def _map_new_object(self, loader: Optional[_Map], name: str, secure_mode: bool, kind: str) -> _Map:
        found_other_class = [False]
        found: Optional[_Found] = None
        if "/" not in name:
            found = self._search(loader, name, secure_mode, found_other_class)
        else:
            realname = self._expand(loader, name) if loader is not None else name
            if realname:
                v = self._probe(realname)
                if v.kind != ACCEPT:
                    self.errno = errnomod.ENOENT
                if v.kind in (FATAL, CRASH):
                    raise _Miss(*_refused(v, name, realname))
                if v.kind == OTHER_CLASS:
                    found_other_class[0] = True
                elif v.kind == ACCEPT:
                    found = _Found(realname, v, M.Reason(M.RULE_PATH, "name contains a slash"))
        if found is None:
            if found_other_class[0]:
                other = "ELFCLASS32" if self.profile.abi.elf_class == 64 else "ELFCLASS64"
                raise _Miss(M.WRONG_CLASS, name, f"wrong ELF class: {other}")
            why = f": {ldso_strerror(self.errno)}" if self.errno else ""
            raise _Miss(M.NOT_FOUND, name, "cannot open shared object file" + why)
        v = found.verdict
        self.errno = 0  # open_verify clears errno once the file is open
        # _dl_map_object_from_fd: the same file under another name is the same object
        if v.file_id is not None:
            same = self.by_id.get(v.file_id)
            if same is not None and self.hidden and same in self.hidden:
                fid = v.file_id
                same = self._visible(lambda m: m.file_id == fid)
            if same is not None:
                m = self.maps[same]
                self._add_name(m, name)
                return m
        m = self._new_map(name, found.realname, kind)
        m.elf = v.elf
        m.file = v.file if v.substituted else self._host(found.realname)
        m.substituted = v.substituted
        m.file_id = v.file_id
        m.loader = loader.cid if loader is not None else None
        m.origin = self._origin_of(found.realname)
        m.reason = found.reason
        m.nodeflib = bool(v.elf is not None and v.elf.dynamic.flags_1 & C.DF_1_NODEFLIB)
        if v.file_id is not None:
            self.by_id.setdefault(v.file_id, m.cid)
        self._register_names(m)
        return m

    def _visible(self, match: Callable[[_Map], bool]) -> Optional[int]:
        """The first object on the chain from the main map that ``match`` accepts (the slow way, needed only when
        an object with that name or identity lies before the main map: :attr:`hidden`)."""
        for m in self.maps:
            if m.cid not in self.hidden and not m.faked and match(m):
                return m.cid
        return None

    def _probe(self, realname: str) -> Verdict:
        """``open_verify`` of one path (target path, possibly relative to the cwd)."""
        host = self._host(realname)
        subst = self.subst
        self._last_probe_sub = False
        if subst is not None:
            hit = subst.by_path(host)
            if hit is not None:
                return self._substitute_verdict(self.fsys.verify(host, hit[0], hit[1]), hit[2])
        v = self.fsys.verify(host)
        if subst is not None and v.file_id is not None and v.kind != CUT:
            same = subst.by_identity(v.file_id)
            if same is not None:
                return self._substitute_verdict(self.fsys.verify(host, same[0], v.file_id), same[1])
        return v

    def _substitute_verdict(self, v: Verdict, target: str) -> Verdict:
        self._last_probe_sub = True
        if v.kind != ACCEPT:
            self._refused_sub = True
            if target not in self.rejected:
                self.rejected.append(target)
        return v

    def _open_path(self, name: str, dirs: Sequence[SearchDir], secure_mode: bool,
                   other: List[bool]) -> Optional[_Found]:
        """``open_path``: try every directory and capability subdirectory in order."""
        pure = self.subst is None and not (secure_mode and self.secure)
        key = (name, self._plan(dirs).dirnames, self.capstr, self.env.cwd)
        hit = self.fsys.path_memo.get(key) if pure else None
        if hit is None:
            hit = self._open_path_uncached(name, dirs, secure_mode)
            if pure:
                self.fsys.path_memo[key] = hit
        found, any_other, fatal, stop = hit
        self._replay_errno(dirs, stop)
        if any_other:
            other[0] = True
        if fatal is not None:
            raise _Miss(*fatal)
        if found is None:
            return None
        n, cap, candidate, v = found
        return _Found(candidate, v, self._reason(dirs[n], cap))

    def _plan(self, dirs: Sequence[SearchDir]) -> _SearchPlan:
        """What :meth:`_open_path` needs to know of a search list once: which (directory, subdirectory)
        pairs exist (ld.so marks the others ``nonexisting`` and skips them for every later name)."""
        hit = self._plans.get(id(dirs))
        if hit is not None and hit[0] is dirs:
            return hit[1]
        # the same directories in the file system's other sessions (the listings are the file system's)
        key = (tuple(d.dirname for d in dirs), self.capstr, self.env.cwd)
        shared = self.fsys.plan_memo.get(key)
        if shared is not None:
            self._plans[id(dirs)] = (dirs, shared)  # type: ignore[assignment]
            return shared  # type: ignore[return-value]
        live: List[Tuple[int, int]] = []
        missing: List[Tuple[int, int, Tuple[str, int]]] = []
        relative = False
        for n, d in enumerate(dirs):
            absolute = d.dirname.startswith("/")
            relative |= not absolute
            for ci, cap in enumerate(self.capstr):
                if absolute and self.fsys.listing(self._host(d.dirname + cap)) is None:
                    missing.append((n, ci, (d.dirname, ci)))
                else:
                    live.append((n, ci))
        plan = _SearchPlan(key[0], tuple(live), tuple(missing), relative)
        if len(self._plans) > 256:
            self._plans.clear()
            self._known_missing.clear()
        self._plans[id(dirs)] = (dirs, plan)
        if len(self.fsys.plan_memo) > 4096:
            self.fsys.plan_memo.clear()
        self.fsys.plan_memo[key] = plan
        return plan

    def _replay_errno(self, dirs: Sequence[SearchDir], stop: Optional[Tuple[int, int]]) -> None:
        """What the search leaves in ``errno`` (it decides whether a miss reads "cannot open shared object
        file: No such file or directory" or just "cannot open shared object file"): every attempted open
        fails with ENOENT; a directory found missing is never tried again (``r_dir_status``, ``open_path``)."""
        caps = self.capstr
        nonexisting = self.nonexisting
        plan = self._plan(dirs)
        if not plan.relative:
            # the loop below, without walking thousands of missing directories name after name: every
            # (directory, subdirectory) before ``stop`` that is not known missing sets ENOENT; the missing
            # ones become known
            end = len(plan.missing) if stop is None else bisect.bisect_left(plan.missing, stop)
            known = self._known_missing.get(id(plan), 0)  # the first ones are in nonexisting already
            fresh = [m[2] for m in plan.missing[known:end] if m[2] not in nonexisting]
            live_before = bool(plan.live) and (stop is None or plan.live[0] < stop)
            if stop is not None or fresh or live_before:
                self.errno = errnomod.ENOENT
            nonexisting.update(fresh)
            if end > known:
                self._known_missing[id(plan)] = end
            return
        for n, d in enumerate(dirs):
            for ci, cap in enumerate(caps):
                if stop is not None and (n, ci) >= stop:
                    if (n, ci) == stop:
                        self.errno = errnomod.ENOENT  # the candidate at ``stop`` was opened (then kept or not)
                    return
                key = (d.dirname, ci)
                if key in nonexisting:
                    continue
                self.errno = errnomod.ENOENT
                if d.dirname.startswith("/") and self.fsys.listing(self._host(d.dirname + cap)) is None:
                    nonexisting.add(key)

    def _open_path_uncached(self, name: str, dirs: Sequence[SearchDir], secure_mode: bool
                            ) -> Tuple[Optional[Tuple[int, str, str, Verdict]], bool,
                                       Optional[Tuple[str, str, str, str]], Optional[Tuple[int, int]]]:
        fsys = self.fsys
        subst = self.subst
        any_other = False
        if subst is None:  # the directories that exist (a file NEW stands for may be where none does)
            combos: Iterable[Tuple[int, int]] = self._plan(dirs).live
        else:
            combos = ((n, ci) for n in range(len(dirs)) for ci in range(len(self.capstr)))
        for n, ci in combos:
            d, cap = dirs[n], self.capstr[ci]
            base = d.dirname + cap
            host_dir = self._host(base)
            if not fsys.may_exist(host_dir, name) and (
                    subst is None or name not in subst.names
                    or subst.by_path(posixpath.join(host_dir, name)) is None):
                continue
            candidate = base + name
            v = self._probe(candidate)
            if v.kind == ACCEPT:
                if secure_mode and self.secure and not self._setuid_file(v):
                    continue
                return (n, cap, candidate, v), any_other, None, (n, ci)
            if v.kind == OTHER_CLASS:
                any_other = True
                continue
            if v.kind in (FATAL, CRASH):  # the search ends at the first file open_verify accepts or refuses
                return None, any_other, _refused(v, name, candidate), (n, ci)
            if v.kind == CUT:
                return None, any_other, None, (n, ci)
        return None, any_other, None, None

    def _setuid_file(self, v: Verdict) -> bool:
        # open_path with __RTLD_SECURE in a secure program: only set-user-ID files may be preloaded
        if v.file is None:
            return False
        st = self.fsys.stat(v.file)
        return not isinstance(st, int) and bool(st.st_mode & 0o4000)

    def _reason(self, d: SearchDir, cap: str) -> M.Reason:
        owner = d.owner
        where = ""
        if owner is not None:
            where = self.maps[owner].path or self.argv0
        return M.Reason(d.rule, search_reason_text(d.rule, d.dirname, cap, where), d.dirname, cap or None, owner)

    def _search(self, loader: Optional[_Map], name: str, secure_mode: bool,
                other: List[bool]) -> Optional[_Found]:
        # _dl_map_object, the "name without a slash" branch, step by step
        main = self.main
        assert main is not None
        if loader is None or not loader.has_runpath:
            did_main = False
            lm = loader
            seen = 0
            while lm is not None and seen <= len(self.maps):
                dirs = self._rpath_dirs(lm)
                if dirs:
                    hit = self._open_path(name, dirs, secure_mode, other)
                    if hit is not None:
                        return hit
                    did_main |= lm is main
                lm = self.maps[lm.loader] if lm.loader is not None else None
                seen += 1
            if not did_main:
                dirs = self._rpath_dirs(main)
                if dirs:
                    hit = self._open_path(name, dirs, secure_mode, other)
                    if hit is not None:
                        return hit
        if self.llp_dirs:
            hit = self._open_path(name, self.llp_dirs, secure_mode, other)
            if hit is not None:
                return hit
        if loader is not None:
            dirs = self._runpath_dirs(loader)
            if dirs:
                hit = self._open_path(name, dirs, secure_mode, other)
                if hit is not None:
                    return hit
        lm = loader if loader is not None else main
        if not (secure_mode and self.secure) and not self.env.inhibit_cache:
            entry = self.ldcache.lookup(name, self.cache_target) if self.ldcache is not None else None
            if entry is not None:
                cached: Optional[str] = entry.value
                if lm.nodeflib and any(entry.value.startswith(sd) for sd in self.profile.system_dirs):
                    cached = None
                if cached is not None:
                    v = self._probe(cached)
                    if v.kind != ACCEPT:
                        self.errno = errnomod.ENOENT
                    if v.kind in (FATAL, CRASH):
                        raise _Miss(*_refused(v, name, cached))
                    if v.kind == OTHER_CLASS:
                        other[0] = True
                    elif v.kind == ACCEPT:
                        sub = f" (glibc-hwcaps {entry.hwcaps_subdir})" if entry.hwcaps_subdir else ""
                        return _Found(cached, v, M.Reason(M.RULE_CACHE, f"ld.so.cache{sub}",
                                                          subdir=entry.hwcaps_subdir))
        if not lm.nodeflib:
            return self._open_path(name, self.system_dirs, secure_mode, other)
        return None

    # -- dl_main ----------------------------------------------------------------------------------------

    def setup_main(self, path: str, elf: Optional[ElfFile], *, file: str, substituted: bool,
                   origin: Optional[str]) -> _Map:
        """The main program's link map (``rtld_setup_main_map``); ``origin`` from :func:`main_origin`; ``elf``
        None for a program whose dynamic section ld.so never gets past (nothing of it is read)."""
        # _dl_new_object: the main map answers to no name, even when ld.so runs it as `ld.so PROG` (ldd): a
        # DT_NEEDED naming the program by the path it was run as loads that file again (checked with ldd)
        main = self._new_map("", "", _KIND_EXE)
        main.elf = elf
        main.file = file
        main.substituted = substituted
        main.is_main = True
        main.reason = M.Reason(M.RULE_ROOT, "the program")
        main.nodeflib = elf is not None and bool(elf.dynamic.flags_1 & C.DF_1_NODEFLIB)
        main.origin = origin
        self.main = main
        self._register_names(main)  # its SONAME: the main map has no other name
        # The main program has no file identity (rtld.c: "We leave the values here defined to 0").
        return main

    def setup_rtld(self, interp_name: str, rtld_path: str) -> _Map:
        """ld.so's own link map: known by the PT_INTERP name and its SONAME, never searched for."""
        m = self._new_map(interp_name, rtld_path, _KIND_RTLD)
        m.reason = M.Reason(M.RULE_INTERPRETER, "the program interpreter (already loaded)")
        host = self.fsys.fs.host(rtld_path)
        memo = self.fsys.file_memo
        key = "rtld:" + host
        if key not in memo:
            try:
                memo[key] = self.fsys.elf_cache.get(host)
            except ElfError:
                memo[key] = None
        m.elf = memo[key]  # type: ignore[assignment]
        if m.elf is not None:
            m.file = host
            soname = m.elf.dynamic.soname
            if soname and soname != interp_name:
                m.libnames.append(soname)
        m.origin = self._origin_of(rtld_path)
        self.rtld = m
        self._register_names(m)
        return m

    def setup_vdso(self) -> Optional[_Map]:
        name = self.profile.vdso
        if not name:
            return None
        m = self._new_map(name, name, _KIND_VDSO)
        m.reason = M.Reason(M.RULE_VDSO, "the kernel's vDSO (no file)")
        self.vdso = m
        self._register_names(m)
        return m

    def setup_search_paths(self) -> None:
        """``_dl_init_paths``: the main program's RUNPATH/RPATH and LD_LIBRARY_PATH."""
        main = self.main
        assert main is not None
        llp = self.env.library_path
        if llp and not self.secure:
            self.llp_dirs = decompose(llp, ":;", M.RULE_LD_LIBRARY_PATH, None, origin=main.origin,
                                      platform=self.profile.platform, lib=self.profile.lib, secure=self.secure,
                                      is_executable=True, trusted_dirs=self.profile.system_dirs)

    def preload_list(self) -> List[Tuple[str, str]]:
        """The preload names with their source, in load order (LD_PRELOAD, then /etc/ld.so.preload)."""
        out: List[Tuple[str, str]] = []
        if self.env.preload:
            p = self.env.preload
            i = 0
            while i < len(p):
                j = i
                while j < len(p) and p[j] not in " :":
                    j += 1
                name = p[i:j] if 0 < j - i < SECURE_NAME_LIMIT + 1 else ""
                i = j + 1 if j < len(p) else j
                if self.secure and (len(name) >= SECURE_NAME_LIMIT or "/" in name):
                    continue
                if name:
                    out.append((name, "LD_PRELOAD"))
        if self.env.use_preload_file:
            out.extend((n, self.profile.preload_path) for n in preload_file_names(self.fsys))
        return out

    def do_preloads(self) -> List[_Map]:
        main = self.main
        assert main is not None
        preloads: List[_Map] = []
        for name, where in self.preload_list():
            before = len(self.maps)
            try:
                m = self.map_object(main, name, secure_mode=True, kind=_KIND_PRELOAD)
            except _Miss as miss:
                if miss.kind == M.CRASH:
                    self._crash(main, miss)
                    if self.trace:
                        break
                    continue
                text = f"ERROR: ld.so: object '{name}' from {where} cannot be preloaded ({_short(miss)}): ignored."
                self.failures.append(M.Failure(M.PRELOAD, name, main.cid, text, text, M.WARNING, False,
                                               substitute=miss.substitute))
                continue
            if len(self.maps) != before:
                if m.kind == _KIND_LIB:
                    m.kind = _KIND_PRELOAD
                m.reason = M.Reason(M.RULE_PRELOAD, f"{where} ({m.reason.text})", m.reason.directory,
                                    m.reason.subdir, m.reason.owner)
                preloads.append(m)
        return preloads

    def map_deps(self, preloads: List[_Map]) -> List[_Map]:
        """``_dl_map_object_deps``: the breadth-first walk. Returns the search list (faked entries included).

        As dl-deps.c: each entry of the list is marked done when its turn comes; a filtee (DT_FILTER,
        DT_AUXILIARY) takes the place of its filter, which moves one step on, so the filtee's own
        dependencies are walked next and the filter is not walked twice."""
        main = self.main
        assert main is not None
        known: List[List] = [[main, False]]  # [map, done]
        reserved = {main.cid}
        self.errno = 0  # _dl_map_object_deps
        for p in preloads:
            if p.cid not in reserved:
                known.append([p, False])
                reserved.add(p.cid)
        run = 0
        walked = set()  # objects whose entries were walked once
        states: set = set()
        looped = False
        while run < len(known):
            entry = known[run]
            lm = entry[0]
            again = lm.cid in walked  # its DT_NEEDED objects are on the list, its dependencies recorded
            if again and not looped:
                # A filtee moved before a filter walked already: dl-deps.c walks it again. The walk depends on
                # nothing but the list, its done marks and the position, so a state seen before is an endless
                # loop (filters that filter each other), and each turn takes an alloca: ld.so dies of SIGSEGV.
                state = (tuple(e[0].cid for e in known), tuple(e[1] for e in known), run)
                if state in states or len(states) >= _MAX_REWALKS:
                    self._filter_loop(lm, [e[0] for e in known])
                    if self.aborted:
                        return [e[0] for e in known]
                    looped = True  # the tree is still drawn: the objects not walked yet are walked once
                states.add(state)
            walked.add(lm.cid)
            entry[1] = True
            at = run  # where the next filtee goes: before the filter's entry
            if lm.elf is not None and not lm.faked and not (again and looped):
                for tag, raw in dependency_items(self.fsys, lm.elf):
                    if tag == C.DT_NEEDED:
                        if again:
                            continue
                        dep = self._one_needed(lm, raw)
                        if dep is None:
                            if self.aborted:
                                return [e[0] for e in known]
                            continue
                        lm.needed.append(dep.cid)
                        lm.needed_names.append(raw)
                        lm.needed_kinds.append(M.NEEDED)
                        if lm.cid not in dep.requested_by:
                            dep.requested_by.append(lm.cid)
                        if dep.cid not in reserved:
                            reserved.add(dep.cid)
                            dep.depth = lm.depth + 1
                            known.append([dep, False])
                    else:
                        at = self._filter(lm, tag, raw, known, reserved, at, record=not again)
                    if self.aborted:
                        return [e[0] for e in known]
            while run < len(known) and known[run][1]:
                run += 1
            if self.hidden and len(self.maps) > _MAX_OBJECTS:
                self._out_of_maps()
                return [e[0] for e in known]
        return [e[0] for e in known]

    def _out_of_maps(self) -> None:
        """Filters before the main map ask for objects ld.so cannot find again (:attr:`hidden`): each turn maps
        new copies, until the process has no mapping left (vm.max_map_count). The mapping that fails is a
        filtee's (ignored, or ending the walk); the search list of so many objects cannot be allocated
        after it: ``_dl_map_object_deps`` signals ENOMEM (checked with ld.so: 15,600 copies, 7.6 s)."""
        self._fail(M.OUT_OF_MEMORY, None, "", "cannot allocate symbol search list: Cannot allocate memory")
        if self.trace:
            self.aborted = True

    def _dst_refused(self, lm: _Map, raw: str) -> bool:
        """expand_dst (dl-deps.c): a dynamic string token in a secure program is fatal, in DT_NEEDED, DT_FILTER
        and DT_AUXILIARY alike (the check comes before the catch that forgives a missing auxiliary filtee)."""
        if not (self.secure and dst.has_dst(raw)):
            return False
        self._fail(M.DST, lm, raw, "DST not allowed in SUID/SGID programs")
        if self.trace:
            self.aborted = True
        return True

    def _one_needed(self, lm: _Map, raw: str) -> Optional[_Map]:
        name = raw
        if self._dst_refused(lm, raw):
            lm.needed.append(None)
            lm.needed_names.append(raw)
            lm.needed_kinds.append(M.NEEDED)
            return None
        if dst.has_dst(raw):
            name = self._expand(lm, raw)
            if not name:
                return None  # expand_dst(..., 0): silently skipped
        try:
            return self.map_object(lm, name, secure_mode=False)
        except _Miss as miss:
            if miss.kind == M.CRASH:
                self._crash(lm, miss)
                if self.trace:
                    return None
            elif miss.kind == M.BAD_FILE or not self.trace:
                # The real loader stops here (in trace mode too for a bad file: dl-deps.c "goto out").
                self._fail(miss.kind, lm, miss.objname, miss.message, substitute=miss.substitute)
                if self.trace:
                    self.aborted = True
                    return None
            else:
                self._fail(miss.kind, lm, name, miss.message, fatal=False, when=M.WARNING, exit_status=None,
                           substitute=miss.substitute)
            # In trace mode (and to go on drawing the tree) a miss becomes a faked "not found" entry.
            return self._faked(lm, name, miss)

    def _faked(self, lm: _Map, name: str, miss: _Miss) -> _Map:
        """The "not found" entry ``_dl_map_object`` makes in trace mode for ``name`` asked for by ``lm``."""
        m = self._new_map(name, name, _KIND_LIB)
        m.faked = True
        m.loader = lm.cid
        m.reason = M.Reason(M.RULE_NOT_FOUND, f"{miss.path}: {miss.message}" if miss.path else miss.message)
        return m

    def _filter(self, lm: _Map, tag: int, raw: str, known: List[List], reserved: set, at: int, *,
                record: bool = True) -> int:
        """DT_AUXILIARY / DT_FILTER of ``lm``, whose entry is ``known[at]``: the filtee goes before it in the
        search list and in the chain of loaded objects (dl-deps.c). Returns where ``lm``'s entry is now.
        ``record``: the filtee is one of ``lm``'s dependencies (not on a second walk: ``l_initfini`` is set)."""
        if self._dst_refused(lm, raw):
            return at
        name = self._expand(lm, raw) if dst.has_dst(raw) else raw
        if not name:
            return at
        try:
            aux = self.map_object(lm, name, secure_mode=False)
        except _Miss as miss:
            if miss.kind == M.CRASH:
                self._crash(lm, miss)
                return at
            if tag == C.DT_AUXILIARY and (miss.kind == M.BAD_FILE or not self.trace):
                return at  # any error of an auxiliary filtee is ignored
            if miss.kind == M.BAD_FILE or not self.trace:
                self._fail(miss.kind, lm, miss.objname, miss.message, substitute=miss.substitute)
                if self.trace:
                    self.aborted = True
                return at
            # trace mode: _dl_map_object fakes a "not found" entry, placed as a found filtee would be
            self._fail(miss.kind, lm, name, miss.message, fatal=False, when=M.WARNING, exit_status=None,
                       substitute=miss.substitute)
            aux = self._faked(lm, name, miss)
        if record:
            lm.needed.append(aux.cid)
            lm.needed_names.append(raw)
            lm.needed_kinds.append(M.FILTER if tag == C.DT_FILTER else M.AUXILIARY)
            if lm.cid not in aux.requested_by:
                aux.requested_by.append(lm.cid)
        if aux.cid in reserved:
            later = next((j for j in range(at + 1, len(known)) if known[j][0] is aux), None)
            if later is None:
                return at  # already earlier in the list: found early enough
            del known[later]
        else:
            reserved.add(aux.cid)
            aux.depth = lm.depth + 1
        known.insert(at, [aux, False])
        self.chain_moves.append((aux.cid, lm.cid))
        # dl-deps.c links the filtee right before its filter: what ends up before the main map is off the chain
        chain = self.chain
        chain.remove(aux.cid)
        chain.insert(chain.index(lm.cid), aux.cid)
        main = self.main.cid if self.main is not None else chain[0]
        self.hidden = set(chain[:chain.index(main)])
        return at + 1

    # -- finishing ---------------------------------------------------------------------------------------


#: Objects one load may map while objects lie before the main map (:meth:`LoadSession._out_of_maps`): far more
#: than any program loads, far fewer than the copies a real run maps before it runs out of mappings.
_MAX_OBJECTS = 4096

#: Second walks of one load that are never the same state twice: ld.so's stack (an alloca each turn) runs out
#: long before, so this many is taken as the endless loop too (a bound on soswap's own work).
_MAX_REWALKS = 10_000


def _refused(v: Verdict, name: str, opened: str) -> Tuple[str, str, str, str]:
    """The arguments of the :class:`_Miss` for a candidate ``opened`` (asked for as ``name``) with a FATAL or
    CRASH verdict: ``open_verify``'s errors name the file opened, ``_dl_map_object_from_fd``'s the name."""
    return (M.CRASH if v.kind == CRASH else M.BAD_FILE, name if v.mapped else opened, v.message, opened)


def _short(miss: _Miss) -> str:
    # the err_str of _dl_catch_error: the message without the errno text
    msg = miss.message
    if msg.startswith("cannot open shared object file"):
        return "cannot open shared object file"
    if msg.startswith("cannot read file data:"):
        return "cannot read file data"
    return msg


def search_reason_text(rule: str, directory: str, cap: str, where: str) -> str:
    """The human text of a search :class:`Reason`: ``where`` names the object whose DT_RPATH/DT_RUNPATH gave
    ``directory``, ``cap`` the capability subdirectory the file was found in."""
    shown = directory or "(current directory)"
    if rule == M.RULE_RPATH:
        text = f"RPATH {shown} of {where}"
    elif rule == M.RULE_RUNPATH:
        text = f"RUNPATH {shown} of {where}"
    elif rule == M.RULE_LD_LIBRARY_PATH:
        text = f"LD_LIBRARY_PATH {shown}"
    else:
        text = f"system directory {shown}"
    if cap:
        text += f" (subdirectory {cap.rstrip('/')})"
    return text


def main_origin(fsys: FileSystem, env: Environment, path: str, *, trace: bool) -> Optional[str]:
    """``l_origin`` of the main program run as ``path``."""
    if trace and fsys.profile.glibc_version < (2, 42):
        # ld.so ./prog: the directory of the name as given (BZ 25263)
        if not path:
            return None
        if not path.startswith("/"):
            cwd = env.cwd
            path = (cwd if cwd.endswith("/") else cwd + "/") + path
        cut = path.rfind("/")
        return path[:cut] if cut > 0 else "/"
    # _dl_get_origin: readlink("/proc/self/exe"), the canonical path; without /proc, LD_ORIGIN_PATH (ignored in
    # secure mode: unsecvars.h) or unknown
    if not fsys.profile.proc_self_exe:
        given = env.origin_path if not env.secure else None
        return (given.rstrip("/") or "/") if given else None
    full = path if path.startswith("/") else posixpath.join(env.cwd, path)
    return posixpath.dirname(fsys.realpath(full)) or "/"


def dependency_items(fsys: FileSystem, elf: ElfFile) -> Tuple[Tuple[int, str], ...]:
    """(tag, name) of the DT_NEEDED, DT_AUXILIARY and DT_FILTER entries in dynamic-section order."""
    memo = fsys.file_memo
    key = ("deps", id(elf))
    hit = memo.get(key)
    if hit is None or hit[0] is not elf:  # type: ignore[index]
        try:
            dyn = elf.dynamic
            if not dyn.auxiliary and not dyn.filters:
                items = tuple((C.DT_NEEDED, n) for n in dyn.needed)
            else:
                names = {C.DT_NEEDED: iter(dyn.needed), C.DT_AUXILIARY: iter(dyn.auxiliary),
                         C.DT_FILTER: iter(dyn.filters)}
                items = tuple((tag, next(names[tag])) for tag, _v in dyn.entries if tag in names)
        except ElfError:
            items = ()
        hit = memo[key] = (elf, items)
    return hit[1]  # type: ignore[index,no-any-return]


def preload_file_names(fsys: FileSystem) -> List[str]:
    """The names listed in ``/etc/ld.so.preload`` (rtld.c: whitespace/colon separated, ``#`` comments to the
    end of the line); read once per :class:`FileSystem`."""
    host = fsys.fs.host(fsys.profile.preload_path)
    key = "preload-names:" + host
    hit = fsys.file_memo.get(key)
    if hit is not None:
        return hit  # type: ignore[return-value]
    try:
        data = read_regular(host, 1 << 20)  # a FIFO is refused (ld.so would block on it), as unreadable
    except OSError:
        data = b""
    out: List[str] = []
    if data:
        text = os.fsdecode(data)
        lines = []
        for line in text.split("\n"):
            cut = line.find("#")
            lines.append(line if cut < 0 else line[:cut])
        out = [tok for tok in " ".join(lines).replace(":", " ").replace("\t", " ").split(" ") if tok]
    fsys.file_memo[key] = out
    return out
