"""The :class:`Loader`: load a program (or library) the way ``ld.so`` does — one :class:`LoadSession` per run
(``dl_main``: the program, ld.so, the vDSO, the preloads, the breadth-first walk) — order the result like the
link-map chain, and bind it (:mod:`soswap.loader.binding`).
"""

from __future__ import annotations

import errno
import os
import posixpath
import signal
from typing import TYPE_CHECKING, Callable, Dict, FrozenSet, Iterator, List, Mapping, Optional, Tuple, Union

from soswap.elf import ElfCache, ElfFile
from soswap.elf import constants as C
from soswap.elf.dynamic import DynamicInfo, dynamic_entries
from soswap.elf.file import decode_header
from soswap.elf.source import FileSource
from soswap.errors import ElfError, UsageError
from soswap.loader import model as M
from soswap.loader.candidates import (
    FileSystem,
    Substitute,
    kernel_cannot_map,
    kernel_interp_errno,
    program_header_refusal,
    zero_fill_beyond,
)
from soswap.loader.cpu import tunables_warning
from soswap.loader.environment import Environment
from soswap.loader.profile import Abi, Profile
from soswap.loader.session import (
    LoadSession,
    Substitutions,
    _Map,
    dependency_items,
    main_origin,
    preload_file_names,
    search_reason_text,
)

if TYPE_CHECKING:
    from soswap.loader.binding import Binder
    from soswap.loader.bindstore import BindStore
    from soswap.loader.lookup import Reference

#: At most this many shapes are remembered (a run over a whole system has a few hundred).
_MAX_TEMPLATES = 4096
#: At most this many substitution sets are remembered.
_MAX_SUBSTITUTION_SETS = 64


def sort_maps(searchlist: List[_Map], maps: List[_Map]) -> List[_Map]:
    """``_dl_sort_maps_dfs`` (glibc.rtld.dynamic_sort=2, the default): the l_initfini order."""
    visited = set()
    rpo: List[_Map] = []

    def dfs(m: _Map) -> None:
        stack = [(m, iter([m.cid] + [c for c in m.needed if c is not None]))]
        visited.add(m.cid)
        while stack:
            node, it = stack[-1]
            advanced = False
            for c in it:
                dep = maps[c]
                if dep.cid in visited or dep.faked or dep.is_main:
                    continue
                visited.add(dep.cid)
                stack.append((dep, iter([dep.cid] + [x for x in dep.needed if x is not None])))
                advanced = True
                break
            if not advanced:
                stack.pop()
                rpo.append(node)

    for m in reversed(searchlist):
        if m.cid in visited or m.faked:
            continue
        dfs(m)
    rpo.reverse()
    return rpo


class Loader:
    """The static model of ld.so for one target system (see docs/loader-api.md)."""

    def __init__(self, profile: Profile, env: Environment, *, cache: Optional[ElfCache] = None) -> None:
        glibc = profile.glibc_version
        #: the CPU features GLIBC_TUNABLES (glibc.cpu.hwcaps) turns off in a run the kernel did not make secure
        self._cpu_disabled = env.cpu_disabled_for(glibc)
        #: GLIBC_TUNABLES=glibc.rtld.enable_secure=1 (glibc >= 2.40): every run is in secure mode, ``ld.so --list``
        #: too (not ldd's trace: its shell unsets the variable first, see ldd.LddModel)
        self._tunables_secure = env.tunables_secure(glibc)
        #: per loader ABI, the profile without the tunables: an AT_SECURE run's, one object for all of them
        #: (the templates are keyed by the profile's id)
        self._plain: Dict[str, Profile] = {profile.abi.name: profile}
        profile = profile.without_cpu_features(self._cpu_disabled)
        self.profile = profile
        self.env = env
        self.cache = cache if cache is not None else ElfCache()
        self._systems: Dict[str, FileSystem] = {}
        self._profiles: Dict[str, Profile] = {profile.abi.name: profile}
        self._bind_cache: Optional[object] = None
        #: binding results kept between runs (``soswap.loader.bindstore.BindStore``), consulted by :meth:`bind`
        self.bind_store: Optional[BindStore] = None
        #: a program (with PT_INTERP) the caller may not execute is refused as execve refuses it (EACCES, 126):
        #: ``soswap tree``'s question, "what happens when FILE runs"; off for consumers that are loaded to be
        #: checked, not run (a PAM module with PT_INTERP and mode 0644 is dlopen()ed)
        self.execute_permission = False
        #: load results shared by programs of the same shape (see _Template), and per file system whether the
        #: environment or /etc/ld.so.preload holds a dynamic string token
        self._templates: Dict[tuple, _Template] = {}
        self._env_dst: Dict[int, bool] = {}
        #: (file system, substitution set) -> Substitutions (see _substitutions)
        self._substs: Dict[tuple, Tuple[Substitutions, frozenset]] = {}
        #: the Binder of the last results asked about through the reference API (resolve, references, ...)
        self._binders: Dict[int, tuple] = {}

    def sibling(self, env: Environment) -> Loader:
        """A :class:`Loader` for the same target system in another environment that shares this one's parsed
        files (:class:`ElfCache`), binding caches and per-profile file-system caches (directory listings, file
        verdicts, canonical directories). Use it to check many programs under several environments (processes
        with their own ``LD_LIBRARY_PATH``) at the cost of one."""
        other = Loader(self._plain[self.profile.abi.name], env, cache=self.cache)
        other._systems = self._systems
        other._plain = self._plain
        if other._cpu_disabled == self._cpu_disabled:
            other.profile = self.profile
            other._profiles = self._profiles
        other._bind_cache = self.bind_cache
        other.bind_store = self.bind_store
        other.execute_permission = self.execute_permission
        return other

    @property
    def bind_cache(self) -> object:
        """The binding caches (``soswap.loader.binding.BindCache``) every :meth:`bind`, :meth:`resolve` and
        :meth:`references` of this loader (and of its :meth:`sibling` loaders) shares."""
        if self._bind_cache is None:
            from soswap.loader.binding import BindCache

            self._bind_cache = BindCache(self.profile.glibc_version)
        return self._bind_cache

    def file_system(self, profile: Profile) -> FileSystem:
        fs = self._systems.get(profile.abi.name)
        if fs is None:
            fs = self._systems[profile.abi.name] = FileSystem(profile, self.cache)
        return fs

    def listed_directories(self) -> Iterator[Tuple[str, Optional[Tuple[int, int]], Optional[FrozenSet[str]]]]:
        """Every directory the searches of this loader listed, for every loader ABI (see
        :meth:`FileSystem.listed_directories`): what a cache of load results must watch."""
        for fs in list(self._systems.values()):
            yield from fs.listed_directories()

    def stat_witnesses(self) -> Iterator[Tuple[str, Union[os.stat_result, int]]]:
        """Every path the searches of this loader ``stat``-ed, for every loader ABI (see
        :meth:`FileSystem.stat_witnesses`)."""
        for fs in list(self._systems.values()):
            yield from fs.stat_witnesses()

    def profile_for(self, machine: int, elf_class: int, e_flags: int = 0) -> Optional[Profile]:
        """The profile of the loader ABI that runs files of ``machine``/``elf_class`` (and ``e_flags``: ARM's
        float ABI) on this system."""
        from soswap.loader.profile import abi_for

        abi = abi_for(machine, elf_class, e_flags)
        if abi is None:
            return None
        hit = self._profiles.get(abi.name)
        if hit is None:
            hit = self._profiles[abi.name] = self._plain_profile(abi).without_cpu_features(self._cpu_disabled)
        return hit

    def _plain_profile(self, abi: Abi) -> Profile:
        """The profile of loader ABI ``abi`` without the CPU features GLIBC_TUNABLES turns off: what ld.so of an
        AT_SECURE run uses (it never reads glibc.cpu.hwcaps: ``cpu.tunables_effect``)."""
        hit = self._plain.get(abi.name)
        if hit is None:
            hit = self._plain[abi.name] = self._plain[self.profile.abi.name].for_abi(abi)
        return hit

    def load(self, path: str, *, substitutions: Optional[Mapping[str, Substitute]] = None, trace: bool = False,
             argv0: Optional[str] = None, rtld_path: Optional[str] = None,
             profile: Optional[Profile] = None) -> M.LoadResult:
        """Emulate loading ``path`` (see docs/loader-api.md)."""
        if not path:
            raise UsageError("empty file name")
        base_fs = self.profile.fs
        host = self.host_path(path)
        sub_root: Optional[Substitute] = None
        if substitutions:
            if base_fs.is_host and path == host:  # the host's own root: a key names the file only as itself
                sub_root = substitutions.get(path)
            else:
                for p, f in substitutions.items():
                    if p == path or base_fs.host(p) == host:
                        sub_root = f
        if sub_root is not None:
            elf = _open_substitute(sub_root, self.cache)
            file = sub_root if isinstance(sub_root, str) else (elf.path if isinstance(sub_root, ElfFile)
                                                               else "<bytes>")
            st = None
        else:
            try:
                st = os.stat(host)
            except OSError as exc:
                raise ElfError(path, exc.strerror or str(exc)) from None
            try:
                elf = self.cache.get(host, st)
            except ElfError:
                # tree's question, "what happens when FILE runs": a table the kernel cannot read is its refusal
                refused = (self._unreadable_program(path, host, st, argv0)
                           if self.execute_permission and not trace else None)
                if refused is None:
                    raise
                return refused
            file = host
        if profile is None:
            profile = self.profile_for(elf.machine, elf.elf_class, elf.header.flags)
            if profile is None:
                raise ElfError(path, f"no dynamic loader for {elf.machine_name} ELF{elf.elf_class} files here")
        secure = False if trace else self.env.is_secure_for(st, file if isinstance(file, str) else None)
        if secure and self._cpu_disabled and profile is self._profiles.get(profile.abi.name):
            profile = self._plain_profile(profile.abi)  # AT_SECURE: glibc.cpu.hwcaps is not read
        secure = secure or self._tunables_secure
        fsys = self.file_system(profile)
        argv0 = argv0 or path
        subst: Optional[Substitutions] = None
        skey: Optional[frozenset] = None
        if substitutions:
            subst, skey = self._substitutions(fsys, substitutions)
        # the cache as the program sees it when it starts
        ldcache = profile.ldcache if not self.env.inhibit_cache else None
        try:
            dyn = elf.dynamic  # a malformed dynamic section raises before anything else is read
            crash = _dynamic_crash(elf, path, profile, dyn.tags)
        except ElfError:
            crash = _dynamic_crash(elf, path, profile, None, cut=not trace and sub_root is None)
            if crash is None:
                raise
        if crash is not None:
            s = LoadSession(profile, self.env, fsys, trace=trace, secure=secure, argv0=argv0, substitutions=None,
                            ldcache=ldcache)
            return _run_stopped(s, path, elf, file, main_origin(fsys, self.env, path, trace=trace), rtld_path,
                                sub_root is not None, crash)
        origin = main_origin(fsys, self.env, path, trace=trace)
        interp = elf.interpreter
        # what binfmt_elf says of PT_INTERP (a substitute is never executed)
        bad_interp = kernel_interp_errno(elf) if interp is not None and not trace and sub_root is None else 0
        no_exec = (self.execute_permission and interp is not None and not trace and st is not None
                   and not self.env.may_execute(st, host))
        # a load with substitutions shares templates with the loads of the same shape and the same set
        key: Optional[tuple] = None
        if subst is None or skey is not None:
            # what _run checks on the program itself before the search (execve's refusals)
            execve = None if trace else (kernel_cannot_map(elf), bad_interp,
                                         interp is not None and sub_root is None and fsys.noexec(file),
                                         elf.cut_short, elf.type in C.LOADABLE_TYPES, no_exec)
            key = (*self._shape(elf, dyn, profile, fsys, trace, secure, rtld_path, ldcache, origin), skey,
                   sub_root is not None, execve)
            t = self._templates.get(key)
            if t is not None:
                return t.instantiate(argv0, elf, file, origin, self.env, secure)
        s = LoadSession(profile, self.env, fsys, trace=trace, secure=secure, argv0=argv0, substitutions=subst,
                        ldcache=ldcache)
        res = _run(s, path, elf, file, sub_root is not None, rtld_path, origin, interp, bad_interp, no_exec)
        if key is not None and s.portable:
            # reasons naming the program: a directory of its own DT_RPATH/DT_RUNPATH ("RPATH d of ./prog")
            named = tuple(o.index for o in res.objects[1:] if o.reason.owner == 0)
            if all(res.objects[n].reason.rule in (M.RULE_RPATH, M.RULE_RUNPATH) for n in named):
                if len(self._templates) >= _MAX_TEMPLATES:
                    self._templates.clear()
                self._templates[key] = _Template(res, tuple(s.relabel), named, ldcache)
        return res

    def _unreadable_program(self, path: str, host: str, st: os.stat_result,
                            argv0: Optional[str]) -> Optional[M.LoadResult]:
        """The run of a FILE whose ELF header is sound but whose program headers binfmt_elf cannot read: execve
        refuses it (``load_elf_phdrs``, ENOEXEC) after the checks that come first; None when that is not why it
        could not be decoded."""
        try:
            with FileSource(host) as src:
                header, _lay = decode_header(src.read(0, min(src.size, 64), "ELF header"), path, src.size)
        except ElfError:
            return None
        why = program_header_refusal(header.elf_class, header.phentsize, header.phnum, header.phoff, st.st_size)
        profile = self.profile_for(header.machine, header.elf_class, header.flags)
        if why is None or profile is None:
            return None
        fsys = self.file_system(profile)
        s = LoadSession(profile, self.env, fsys, trace=False, secure=self.env.is_secure_for(st, host),
                        argv0=argv0 or path, substitutions=None, ldcache=None)
        s.setup_main(path, None, file=host, substituted=False, origin=None)
        # the execute bit is not asked: without its program headers a FILE is not known to be a program
        refused = _refused_at_open(path, noexec=fsys.noexec(host), no_exec=False, e_type=header.type,
                                   phdrs=lambda: why)
        assert refused is not None  # why is not None
        _execve_fails(s, M.NOT_EXECUTABLE, path, 126, refused)
        return _freeze(s, [s.main], [], static=False)  # type: ignore[list-item]

    def host_path(self, path: str) -> str:
        """Where ``path`` (relative to the environment's working directory, inside ``--root``) is on this host."""
        return self.profile.fs.host(path if path.startswith("/") else posixpath.join(self.env.cwd, path))

    def _substitutions(self, fsys: FileSystem, items: Mapping[str, Substitute]
                       ) -> Tuple[Substitutions, Optional[frozenset]]:
        """The :class:`Substitutions` of ``items`` for ``fsys``, built once per set (a check loads every consumer
        with the same ``{TARGET: NEW}``), and the set as a key (None for an unhashable substitute)."""
        try:
            skey = frozenset(items.items())
        except TypeError:  # an unhashable substitute (a bytearray): built afresh, never shared
            return Substitutions(fsys, self.env.cwd, items), None
        key = (id(fsys), skey)
        hit = self._substs.get(key)
        if hit is None:
            if len(self._substs) >= _MAX_SUBSTITUTION_SETS:
                self._substs.clear()
            hit = self._substs[key] = (Substitutions(fsys, self.env.cwd, items), skey)
        # the set kept with it, not this call's equal copy: the templates keyed by it then share one set
        # (a transaction's checks each pass an equal map of hundreds of files)
        return hit

    def _shape(self, elf: ElfFile, dyn: DynamicInfo, profile: Profile, fsys: FileSystem, trace: bool,
               secure: bool, rtld_path: Optional[str], ldcache: object, origin: Optional[str]) -> tuple:
        """Everything a load session reads from the program besides its name: two programs with the same
        shape load the same objects from the same places with the same failures (see :class:`_Template`)."""
        dynamic = elf.is_dynamic
        items = dependency_items(fsys, elf) if dynamic else ()
        rpath, runpath = dyn.rpath, dyn.runpath
        dst = self._env_dst.get(id(fsys))
        if dst is None:
            env = self.env
            dst = self._env_dst[id(fsys)] = ("$" in (env.library_path or "") or "$" in (env.preload or "")
                                             or any("$" in n for n in preload_file_names(fsys)))
        if not (dst or "$" in (rpath or "") or "$" in (runpath or "") or any("$" in n for _t, n in items)):
            origin = None  # no dynamic string token can expand the program's $ORIGIN
        return (id(profile), id(ldcache), trace, secure, rtld_path if trace else None, elf.interpreter,
                elf.loader_interpreter, dynamic,
                items, rpath, runpath, bool(dyn.flags_1 & C.DF_1_NODEFLIB), dyn.soname, origin)

    def bind(self, res: M.LoadResult, *, bind_now: Optional[bool] = None, warn: bool = False,
             relocate: bool = True) -> M.BindResult:
        """Symbol binding and version check over ``res`` (see docs/loader-api.md)."""
        from soswap.loader.binding import bind

        # the version check alone costs less than keeping its result (the key hashes every object)
        store = self.bind_store if relocate else None
        key = store.key(res, bind_now, warn, relocate) if store is not None else None
        if store is not None and key is not None:
            hit = store.get(key, res)
            if hit is not None:
                return hit
        result = bind(res, self.bind_cache, bind_now=bind_now, warn=warn, relocate=relocate)  # type: ignore[arg-type]
        if store is not None and key is not None:
            store.put(key, res, result)
        return result

    def release(self, res: M.LoadResult) -> None:
        """Forget the bulk data decoded for the program of ``res`` (its symbol tables and references, its
        string table): a caller that loads many programs once each (``soswap tree FILE...``) keeps its memory
        to the libraries they share. Anything forgotten is decoded again if that file is loaded again. A FILE
        with a DT_SONAME is kept: a library, which the next programs may load."""
        objs = res.objects
        elf = objs[0].elf if objs else None
        if elf is None or elf.soname is not None:
            return
        if self._bind_cache is not None:
            self._bind_cache.forget(elf)  # type: ignore[attr-defined]
        elf.release_buffers()

    # -- where does a reference bind (docs/loader-api.md, "References and definitions") ------------------

    def references(self, res: M.LoadResult, i: int) -> Tuple[Reference, ...]:
        """The symbol lookups the relocations of object ``i`` of ``res`` make (``_dl_relocate_object`` →
        ``resolve_map``), in relocation order, consecutive lookups of the same symbol and class collapsed
        (``l_lookup_cache``); ``()`` for an object without symbols (the vDSO, a "not found" entry). Raises
        :class:`ElfError` when the object's relocation or symbol tables are malformed."""
        syms = self._binder(res).syms(self._object(res, i))
        if syms is None:
            return ()
        return syms.references()

    def resolve(self, res: M.LoadResult, i: int, ref: Reference) -> Optional[M.Definition]:
        """Where ``ref`` (one of :meth:`references` of object ``i``) binds in ``res``: ``_dl_lookup_symbol_x``
        over the global scope in order (the object itself first under DT_SYMBOLIC; never the executable for a
        copy relocation), with ``check_match``'s version rules. None when nothing in scope defines it (a weak
        reference then resolves to 0) and where the lookup aborts in the glibc < 2.41 ``check_match`` assertion
        (:meth:`lookup_aborts` tells which; :meth:`bind` reports it as an ``assertion`` failure)."""
        from soswap.loader.binding import LookupAborted

        b = self._binder(res)
        i = self._object(res, i)
        try:
            where, sym = b.copy_source(i, ref) if ref.copy else b.ordered(i, ref)
        except LookupAborted:
            return None
        if where is None or sym is None:
            return None
        return b.definition(where, sym)  # type: ignore[arg-type]

    def lookup_aborts(self, res: M.LoadResult, i: int, ref: Reference) -> Optional[int]:
        """The index of the object at which the lookup of ``ref`` by object ``i`` aborts in the glibc < 2.41
        ``check_match`` assertion (a versioned reference meets the object its version names, which has no
        symbol versioning), or None when it does not."""
        from soswap.loader.binding import LookupAborted

        b = self._binder(res)
        try:
            b.ordered(self._object(res, i), ref, skip_main=ref.copy)
        except LookupAborted as exc:
            return exc.obj
        return None

    def symbol(self, res: M.LoadResult, i: int, symbol_index: int) -> Optional[M.Definition]:
        """Entry ``symbol_index`` of the dynamic symbol table of object ``i`` as a :class:`Definition` (e.g. the
        program's own copy of a copy-relocated object: :attr:`Reference.symbol_index`); None when the object has
        no symbols. Raises :class:`ElfError` for an index outside the table."""
        b = self._binder(res)
        i = self._object(res, i)
        syms = b.syms(i)
        if syms is None:
            return None
        return b.definition(i, syms.raw.sym(symbol_index))

    def lookup(self, res: M.LoadResult, symbol: str, *, referrer: int = 0,
               plt: bool = True) -> Optional[Tuple[int, str]]:
        """Where a reference to ``symbol`` made by object ``referrer`` binds (``_dl_lookup_symbol_x``):
        (object index, ``name@version`` or ``name@@version`` of the definition), or None when unresolved.
        The reference's version comes from the referrer's own symbol table."""
        from soswap.loader.binding import reference_for

        b = self._binder(res)
        ref = reference_for(b, self._object(res, referrer), symbol, plt)
        d = self.resolve(res, referrer, ref)
        if d is None:
            return None
        return d.index, d.versioned_name

    def _object(self, res: M.LoadResult, i: int) -> int:
        if not isinstance(i, int) or not 0 <= i < len(res.objects):
            raise UsageError(f"no object {i!r} in the load of {res.path} ({len(res.objects)} objects)")
        return i

    def _binder(self, res: M.LoadResult) -> Binder:
        """The prepared :class:`Binder` of ``res`` (kept for the last few results asked about)."""
        from soswap.loader.binding import Binder

        hit = self._binders.get(id(res))
        if hit is not None and hit[0] is res:
            return hit[1]  # type: ignore[no-any-return]
        b = Binder(res, self.bind_cache)  # type: ignore[arg-type]
        b.prepare()
        if len(self._binders) >= 8:
            self._binders.clear()
        self._binders[id(res)] = (res, b)
        return b


def _execve_fails(s: LoadSession, kind: str, name: str, status: int, text: str) -> None:
    """The program does not get to ld.so: the kernel's exec refuses it or it dies first."""
    assert s.main is not None
    f = M.Failure(kind, name, s.main.cid, text, text, M.STARTUP, True, exit_status=status)
    s.failures.append(f)
    s.portable = False  # the text names the program
    s.fatal = f


def _open_substitute(sub: Substitute, cache: ElfCache) -> ElfFile:
    if isinstance(sub, ElfFile):
        return sub
    if isinstance(sub, (bytes, bytearray)):
        return ElfFile.from_bytes(bytes(sub), "<substitute>")
    return cache.get(sub)


def _run(s: LoadSession, path: str, elf: ElfFile, file: str, substituted: bool, rtld_path: Optional[str],
         origin: Optional[str], interp: Optional[str], bad_interp: int = 0, no_exec: bool = False) -> M.LoadResult:
    profile = s.profile
    dynamic = elf.is_dynamic
    main = s.setup_main(path, elf, file=file, substituted=substituted, origin=origin)
    # ld.so runs as ldd's RTLD, or as the program's interpreter; it names itself as it reads PT_INTERP (an
    # empty string at that address included)
    rtld = (rtld_path or profile.interpreter) if s.trace else (interp or profile.interpreter)
    named = elf.loader_interpreter
    s.setup_rtld(named if named is not None else rtld, rtld)
    if not s.trace:
        _execve(s, path, elf, file, substituted, interp, bad_interp, no_exec)
    if s.fatal is None and (s.trace or dynamic or interp is not None):
        _tunables_warning(s)
    s.setup_vdso()
    static = not dynamic or not elf.dynamic.needed
    if not dynamic:
        return _freeze(s, [main], [], static=True)
    s.setup_search_paths()
    preloads = s.do_preloads()
    queue = s.map_deps(preloads)
    searchlist = [m for m in queue if not m.faked]
    initfini = sort_maps(searchlist, s.maps) if not s.aborted else []
    return _freeze(s, searchlist, initfini, static=static)


def _tunables_warning(s: LoadSession) -> None:
    """The warning of a malformed GLIBC_TUNABLES, printed as ld.so starts (``__tunables_init``, before the
    program is looked at); an AT_SECURE process does not parse the variable."""
    text = None if s.secure else tunables_warning(s.env.tunables, s.profile.glibc_version)
    if text is not None:  # the session's first failure: nothing is searched or mapped yet
        s.failures.append(M.Failure(M.TUNABLES, "GLIBC_TUNABLES", None, text, text, M.WARNING, False))


def _execve(s: LoadSession, path: str, elf: ElfFile, file: str, substituted: bool, interp: Optional[str],
            bad_interp: int, no_exec: bool = False) -> None:
    """What execve refuses or dies of before ld.so runs (``do_open_execat``, ``load_elf_binary``), as a fatal
    failure of ``s``."""
    err = s.fsys.exec_errno(s.fsys.fs.host(interp), elf.machine) if interp is not None else 0
    rtld_elf = s.rtld.elf if s.rtld is not None else None
    h = elf.header
    refused = None if substituted else _refused_at_open(
        path, noexec=interp is not None and s.fsys.noexec(file), no_exec=no_exec, e_type=h.type,
        phdrs=lambda: program_header_refusal(h.elf_class, h.phentsize, h.phnum, h.phoff, elf.size))
    if refused is not None:
        _execve_fails(s, M.NOT_EXECUTABLE, path, 126, refused)
    elif bad_interp:  # load_elf_binary reads PT_INTERP before it opens the interpreter
        _execve_fails(s, M.NOT_EXECUTABLE, path, 126, f"{path}: cannot execute: {os.strerror(bad_interp)} (the "
                                                      "kernel refuses its PT_INTERP)")
    elif interp is not None and err:
        if err == errno.ENOENT:
            _execve_fails(s, M.NO_INTERPRETER, interp, 127,
                          f"{path}: cannot execute: the program interpreter {interp} does not exist")
        else:  # the shell's status for a file found that cannot be executed
            _execve_fails(s, M.NO_INTERPRETER, interp, 126,
                          f"{path}: cannot execute: the program interpreter {interp}: {os.strerror(err)}")
    elif s.fatal is None and not substituted and elf.cut_short and (gone := zero_fill_beyond(elf)) is not None:
        # binfmt_elf's padzero faults on a page past the end of a cut program: EFAULT after the point of
        # no return
        _execve_fails(s, M.CRASH, path, 139, f"{path}: killed by SIGSEGV: the kernel cannot write the zeros "
                                             f"after its data: {gone}")
    elif s.fatal is None and kernel_cannot_map(elf):
        # binfmt_elf maps the program after the point of no return: execve ends in SIGSEGV
        _execve_fails(s, M.CRASH, path, 139, f"{path}: killed by SIGSEGV: the kernel cannot map a segment "
                                             "whose offset and address are not page-aligned together")
    elif s.fatal is None and interp is not None and rtld_elf is not None and rtld_elf.interpreter is not None:
        # the kernel jumps into the interpreter unrelocated; a program that needs a loader itself crashes
        _execve_fails(s, M.CRASH, path, 139, f"{path}: killed by SIGSEGV: its program interpreter {interp} is "
                                             "a dynamically linked program, not a dynamic loader")


def _refused_at_open(path: str, *, noexec: bool, no_exec: bool, e_type: int,
                     phdrs: Callable[[], Optional[str]]) -> Optional[str]:
    """The text of what execve refuses first, in its order, before binfmt_elf reads past the program headers
    (the shell's 126), or None. ``phdrs``: why ``load_elf_phdrs`` cannot read them, asked last."""
    if noexec:
        # do_open_execat: a program on a noexec mount is refused before its interpreter is looked at
        return f"{path}: cannot execute: Permission denied (its mount is noexec)"
    if no_exec:
        # do_open_execat: the open for execution checks MAY_EXEC (inode_permission), EACCES as the noexec mount
        # above (faccessat says no for both); "ld.so FILE" loads it all the same (it opens the file for reading)
        return f"{path}: cannot execute: Permission denied (no execute permission for this user)"
    if e_type not in C.LOADABLE_TYPES:
        # load_elf_binary executes ET_EXEC and ET_DYN only: an object file or a core dump is ENOEXEC
        what = f"ET_{C.ET_NAMES[e_type]}" if e_type in C.ET_NAMES else f"e_type {e_type:#x}"
        return (f"{path}: cannot execute: Exec format error ({what}: the kernel executes ET_EXEC and ET_DYN files "
                "only)")
    why = phdrs()
    return f"{path}: cannot execute: Exec format error ({why})" if why is not None else None


def _dynamic_crash(elf: ElfFile, path: str, profile: Profile, tags: Optional[Dict[int, int]],
                   cut: bool = False) -> Optional[Tuple[int, str]]:
    """(exit status, text) of ld.so dying on the program's dynamic section, or None. ``tags``: the decoded
    section, None where decoding it failed; ``cut``: a run, where a section past the end of a cut file counts."""
    if tags is None:
        try:
            tags = dict(dynamic_entries(elf))
        except ElfError:
            if not (cut and elf.cut_short):
                return None
            # rtld_setup_main_map sets l_ld, elf_get_dynamic_info reads it: past the end of the file
            where = next((f" at file offset {g.offset:#x}" for g in elf.segments_of_type(C.PT_DYNAMIC)), "")
            return 128 + signal.SIGBUS, (f"ld.so crashes (SIGBUS) reading the dynamic section of {path}: it lies "
                                         f"beyond the end of the file ({elf.size} bytes){where}")
    if C.DT_STRTAB not in tags and elf.is_dynamic and profile.glibc_version >= (2, 32):
        # dl_main reads the program's DT_AUDIT and DT_DEPAUDIT through its DT_STRTAB whether it has them or
        # not (audit_list_add_dynamic_tag, since 2.32): without one it dereferences NULL
        return 128 + signal.SIGSEGV, (f"ld.so crashes (SIGSEGV) reading the dynamic section of {path}: it has "
                                      "no DT_STRTAB")
    return None


def _run_stopped(s: LoadSession, path: str, elf: ElfFile, file: str, origin: Optional[str],
                 rtld_path: Optional[str], substituted: bool, crash: Tuple[int, str]) -> M.LoadResult:
    """A program whose dynamic section ld.so cannot get past: what execve refuses or dies of first (a run),
    else ld.so's ``crash`` (exit status, text). Nothing else is read of the program."""
    interp = elf.interpreter
    main = s.setup_main(path, None, file=file, substituted=substituted, origin=origin)
    named = elf.loader_interpreter
    rtld = (rtld_path or s.profile.interpreter) if s.trace else (interp or s.profile.interpreter)
    s.setup_rtld(named if named is not None else rtld, rtld)
    if not s.trace:
        _execve(s, path, elf, file, substituted, interp, kernel_interp_errno(elf) if interp is not None else 0)
    if s.fatal is None:
        _tunables_warning(s)
        _execve_fails(s, M.CRASH, path, crash[0], crash[1])
    s.setup_vdso()
    return _freeze(s, [main], [], static=False)


def _freeze(s: LoadSession, searchlist: List[_Map], initfini: List[_Map], *, static: bool) -> M.LoadResult:
    """Order the chain like ld.so (rtld moved to its place in the search list) and build the result."""
    maps = s.maps
    chain = [m for m in maps if m is not s.rtld]
    # setup_vdso puts the vDSO right after rtld, i.e. right after the main map once rtld is taken out
    if s.vdso is not None:
        chain.remove(s.vdso)
        chain.insert(1, s.vdso)
    by_cid = {m.cid: m for m in chain}
    for moved, before in s.chain_moves:  # dl-deps.c: a filtee goes right before its filter
        a, b = by_cid.get(moved), by_cid.get(before)
        if a is not None and b is not None and a is not b:
            chain.remove(a)
            chain.insert(chain.index(b), a)
    rtld = s.rtld
    if rtld is not None and rtld in searchlist and not s.aborted:
        i = searchlist.index(rtld)
        prev = searchlist[i - 1]
        chain.insert(chain.index(prev) + 1, rtld)
    elif rtld is not None and searchlist and not s.aborted and s.profile.glibc_version >= (2, 41):
        # dl_main since 2.41 ("rtld_multiple_ref is always true"): ld.so stays in the chain when no object
        # needs it, right after the last object of the search list (before the vDSO when that is the program
        # alone, before the libraries not found); it is still outside the search list
        chain.insert(chain.index(searchlist[-1]) + 1, rtld)
    # a filtee of the program goes before it (dl-deps.c links it in front of its filter): the namespace's list
    # still starts at the program, so what lies before it is never reached; it comes last here
    head = next(n for n, m in enumerate(chain) if m.is_main) if chain and not chain[0].is_main else 0
    if head:
        chain = chain[head:] + chain[:head]
    unlisted = tuple(range(len(chain) - head, len(chain)))
    order = {m.cid: n for n, m in enumerate(chain)}
    get = order.get

    def idx(cid: Optional[int]) -> Optional[int]:
        return get(cid) if cid is not None else None

    objects = []
    make = M.LoadedObject
    for n, m in enumerate(chain):
        if m.is_main:
            display = s.argv0
        elif m.faked:
            display = m.libnames[0]
        else:
            display = m.path
        reason = m.reason
        if reason.owner is not None:
            reason = M.Reason(reason.rule, reason.text, reason.directory, reason.subdir, get(reason.owner))
        names = m.libnames
        if m.elf is not None and not m.faked:
            so = m.elf.dynamic.soname
            if so and so not in names:
                names = [*names, so]
        requested = tuple([i for i in map(get, m.requested_by) if i is not None])
        needed = tuple([get(c) if c is not None else None for c in m.needed])
        objects.append(make(n, m.libnames[0], tuple(names), m.path, m.file, m.elf, m.kind, not m.faked,
                            idx(m.loader), requested, needed, m.depth, m.origin, reason, m.substituted, display,
                            tuple(m.needed_names), tuple(m.needed_kinds)))
    failures = []
    for f in s.failures:
        if f.object is not None:
            f = f._replace(object=idx(f.object))
        failures.append(f)
    fatal = None
    for f in failures:
        if f.fatal:
            fatal = f
            break
    scope = tuple(order[m.cid] for m in searchlist if m.cid in order)
    init = tuple(order[m.cid] for m in initfini if m.cid in order)
    return M.LoadResult(path=s.argv0, objects=tuple(objects), scope=scope,
                        initfini=init, failures=tuple(failures), fatal=fatal, profile=s.profile, env=s.env,
                        secure=s.secure, trace=s.trace, argv0=s.argv0, static=static,
                        substitutes_rejected=tuple(s.rejected), unlisted=unlisted)


class _Template:
    """The load of one program, shared with every later program of the same shape (:meth:`Loader._shape`).

    A load session reads from the program only its dynamic dependencies, DT_RPATH/DT_RUNPATH, DF_1_NODEFLIB,
    SONAME, PT_INTERP, its ``$ORIGIN`` (when a dynamic string token can expand it) and its set-ID bits (the
    main map answers to no name); the shape key holds all of them and the loader state (profile,
    ld.so.cache, environment). What differs from one program to the next is the main map itself (its file,
    ``$ORIGIN``) and argv[0] in the failure lines and in the reasons of the objects found in a directory of
    its own DT_RPATH/DT_RUNPATH. A session whose texts name the program otherwise (a missing interpreter, a
    preload found through its RPATH) is not shared.
    """

    __slots__ = ("keep", "reasons", "relabel", "result")

    def __init__(self, result: M.LoadResult, relabel: Tuple[int, ...], reasons: Tuple[int, ...],
                 keep: object) -> None:
        self.result = result
        #: positions of the failures whose line is "<argv0>: error while loading shared libraries: ..."
        self.relabel = relabel
        #: objects found in a directory of the program's own DT_RPATH/DT_RUNPATH (their reason names it)
        self.reasons = reasons
        self.keep = keep  # the ld.so.cache whose id is in the key (the profile is kept by the result)

    def instantiate(self, argv0: str, elf: ElfFile, file: str, origin: Optional[str], env: Environment,
                    secure: bool) -> M.LoadResult:
        r = self.result
        main = r.objects[0]._replace(file=file, elf=elf, origin=origin, display=argv0)
        objects = (main, *r.objects[1:])
        if self.reasons:
            objs = list(objects)
            for n in self.reasons:
                o = objs[n]
                why = o.reason
                text = search_reason_text(why.rule, why.directory or "", why.subdir or "", argv0)
                objs[n] = o._replace(reason=why._replace(text=text))
            objects = tuple(objs)
        failures = r.failures
        fatal = r.fatal
        if self.relabel:
            fl = list(failures)
            for n in self.relabel:
                f = fl[n]
                fl[n] = f._replace(line=f"{argv0}: error while loading shared libraries: {f.message}")
            failures = tuple(fl)
            fatal = next((f for f in failures if f.fatal), None)
        # every other field is the template's (unlisted: a filtee of a FILE was shown by the second FILE of a
        # shape, as a field left out of a copy made field by field)
        return r._replace(path=argv0, objects=objects, failures=failures, fatal=fatal, env=env, secure=secure,
                          argv0=argv0)
