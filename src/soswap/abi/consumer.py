"""The per-consumer verdict: load the consumer with NEW substituted for TARGET (the loader's what-if), bind every
reference by glibc's rules, and keep what fails with NEW but not with OLD.

For one consumer (a program, or a plugin checked as ``dlopen(RTLD_NOW)`` would load it):

1. ``load`` with ``{TARGET: NEW}``: when NEW is not in the tree, the consumer does not load TARGET
   (``unaffected``); otherwise NEW sits at TARGET's path with its own SONAME, DT_NEEDED, class and symbols;
2. ``bind``: the version check of every object (``_dl_check_map_versions``), every relocation's lookup over the
   whole scope (``_dl_relocate_object``: weak references may stay unresolved, versions must match), NEW's own
   references included (its new dependencies, its new undefined symbols);
3. the checks ld.so does not report: a reference that bound OLD's FUNC and now binds NEW's OBJECT (or TLS), a
   copy relocation whose size NEW changed (``elf_machine_rela`` R_X86_64_COPY warns only when NEW grew); a copy
   relocation of data NEW made PROTECTED is the loader's ``protected-copy`` warning
   (``_dl_check_protected_symbol``);
4. only when something fails: the same with OLD, and the difference. A consumer that already fails at startup
   with OLD is ``broken``; for a plugin, symbols it leaves unresolved with OLD too are its host's.
"""

from __future__ import annotations

import os
from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence, Set, Tuple

from soswap.abi import problems as P
from soswap.abi.changes import HARMLESS, AbiDiff
from soswap.abi.exports import DATA_TYPES
from soswap.abi.object_diff import static_tls_align, static_tls_block
from soswap.elf import ElfCache, ElfFile
from soswap.elf import constants as C
from soswap.elf.relocs import BIT_COPY
from soswap.errors import SoswapError
from soswap.loader import Environment, Loader, LoadResult, Profile, Reference
from soswap.loader import model as M
from soswap.loader.model import (
    ASSERTION,
    COPY_SIZE,
    FIRST_CALL,
    INDIRECT_EXTERN_ACCESS,
    NOT_FOUND,
    PRELOAD,
    PROTECTED_COPY,
    PROTECTED_FUNCTION,
    TUNABLES,
    UNDEFINED_SYMBOL,
    WEAK_VERSION,
    Failure,
)

_PROGRAM, _PLUGIN, _SELF = "program", "plugin", "self"
#: Loader failure kinds that do not break anything (tolerated by ld.so, or not about the consumer). A direct
#: reference to a protected function only may break pointer equality (T11: compatible, a review note).
_HARMLESS_KINDS = frozenset({WEAK_VERSION, PRELOAD, TUNABLES})
#: Change kinds whose symbols need the binding-level checks (type, copy size, protected data).
_BINDING_KINDS = frozenset({"type-changed", "size-changed", "visibility-changed"})
#: Change kinds whose symbols may now bind elsewhere: a symbol NEW adds can take over references that bound
#: another object of the scope; a symbol NEW lacks may now bind another object's definition.
_REBINDING_KINDS = frozenset({"symbol-added", "symbol-removed", "symbol-unexported", "symbol-moved"})
#: Changes that alter what a reference to that symbol binds to, or how: only consumers that reference the
#: name can be hurt. Not "symbol-moved-out": NEW then references the name itself, and that reference is
#: looked up in every consumer's scope (a consumer that never names it dies at NEW's first call).
_SYMBOL_KINDS = frozenset({"symbol-removed", "symbol-unexported", "symbol-moved",
                           "type-changed", "size-changed", "visibility-changed", "binding-changed",
                           "default-version-removed"})
#: Changes that remove version nodes: only consumers that need a node of TARGET can be hurt.
_VERSION_KINDS = frozenset({"version-removed", "versioning-removed"})
_FUNCS = frozenset({C.STT_FUNC, C.STT_GNU_IFUNC})
#: What dlopen refuses in an object it maps (not reported by the loader emulation, which loads a plugin as a
#: root): DF_1_NOOPEN (``_dl_map_object_from_fd`` with __RTLD_DLOPEN), and static TLS that does not fit.
NOOPEN = "noopen"
STATIC_TLS = "static-tls"
#: The static TLS surplus dlopen-ed objects with initial-exec TLS share (``_dl_tls_static_surplus_init``:
#: 3 * LIBC_IE_TLS + 4 * OTHER_IE_TLS + glibc.rtld.optional_static_tls = 3 * 192 + 4 * 144 + 512, the
#: historic 1664 of TLS_STATIC_SURPLUS before 2.32). The static TLS size is rounded up to TCB_ALIGNMENT (64)
#: over what the program's start-up objects use, so up to 63 bytes more may be free: measured on glibc 2.36,
#: one dlopen-ed library with 1,700 bytes of initial-exec TLS loads and one with 1,800 does not.
STATIC_TLS_SURPLUS = 1664
_TCB_ALIGNMENT = 64


def _type_break(old: int, new: int) -> Optional[str]:
    """Why a reference that bound a definition of type ``old`` misbehaves with one of type ``new``."""
    if old == new:
        return None
    if (old == C.STT_TLS) != (new == C.STT_TLS):
        return ("TLS and non-TLS symbols are reached differently: the consumer crashes or reads the wrong memory "
                "when it first uses the variable")
    if old in _FUNCS and new in DATA_TYPES:
        return "the call jumps into data (SIGSEGV)"
    if old in DATA_TYPES and new in _FUNCS:
        return "the consumer reads (or writes) code as data"
    return None


class SharedChecks:
    """What the checks of one transaction share (:func:`soswap.abi.preflight.preflight`): each loads with the
    whole transaction in place, so a consumer's load and its failures are the same for every file of it.
    One :class:`Loader` per environment, and the failures of each (consumer, mode, world) once."""

    def __init__(self) -> None:
        self.loaders: Dict[Environment, Loader] = {}
        #: (world, environment, path, argv0, bind_now) -> (failures, objects whose references could not be
        #: decoded: "PATH: why"); world: the substitutions, or () for OLD
        self.failures: Dict[tuple, Tuple[List[Failure], Tuple[str, ...]]] = {}
        #: the system's program and library directories (:func:`soswap.abi.sysdirs.system_tops`), once
        self.system_tops: Optional[list] = None
        #: (id of an ElfFile, as the program) -> (that ElfFile, the names it looks up, or None: unreadable)
        self.undefined: Dict[Tuple[int, bool], Tuple[object, Optional[FrozenSet[str]]]] = {}
        #: the checkers of processes under other roots (:meth:`ConsumerChecker.in_root`)
        self.roots: Dict[tuple, ConsumerChecker] = {}


class ConsumerChecker:
    """Checks consumers of one replacement (TARGET ← NEW). One instance per check: it shares the parsed files
    and the binding caches across consumers, and one :class:`Loader` per environment."""

    def __init__(self, target: str, new: str, diff: AbiDiff, profile: Profile, *,
                 elf_cache: Optional[ElfCache] = None, full: bool = False,
                 also: Optional[Mapping[str, str]] = None,
                 shared: Optional[SharedChecks] = None, target_key: Optional[str] = None) -> None:
        st = os.stat(target)
        self.target = target
        self.target_id = (st.st_dev, st.st_ino)
        self.new = new
        self.diff = diff
        self.profile = profile
        #: the profile's root: consumer paths are paths inside it (``fs.host`` gives the file to read)
        self.fs = profile.fs
        self.elf_cache = elf_cache if elf_cache is not None else ElfCache()
        #: one Loader per environment, and the failures of each consumer: shared by the checks of one
        #: transaction (``shared``), whose substitutions are all the same whole transaction
        self._shared = shared if shared is not None else SharedChecks()
        self._loaders = self._shared.loaders
        #: names whose definition changed in a way only a binding-level check sees
        self.watch: FrozenSet[str] = frozenset(
            c.symbol for c in diff.changes if c.kind in _BINDING_KINDS | _REBINDING_KINDS and c.symbol is not None)
        #: TARGET <- NEW, plus the other replacements of the same transaction (``also``: {target: new})
        self.substitution: Dict[str, str] = dict(also or {})
        #: TARGET's path inside the profile's root (where the consumers' loads find it)
        self.target_key = target_key or target
        self.substitution[self.target_key] = new
        #: the substitutions as a key of the shared failures (the "world" the consumers are loaded in)
        self._world = tuple(sorted(self.substitution.items()))
        self._watched_cache: Dict[int, Tuple[object, List[Reference]]] = {}
        # What the diff says can hurt a consumer (see _may_break); full=True binds every consumer anyway.
        risky = [c for c in diff.changes if c.severity != HARMLESS]
        self.full = full or any(c.kind not in _SYMBOL_KINDS | _VERSION_KINDS for c in risky)
        # and the names NEW adds: a reference to one of them that bound another object may now bind NEW
        self.affected_names: FrozenSet[str] = frozenset(
            c.symbol for c in risky if c.kind in _SYMBOL_KINDS and c.symbol is not None) | frozenset(
            c.symbol for c in diff.changes if c.kind == "symbol-added" and c.symbol is not None)
        self.removed_versions: FrozenSet[str] = frozenset(
            c.version for c in risky if c.kind == "version-removed" and c.version is not None)
        self.versioning_removed = any(c.kind == "versioning-removed" for c in risky)
        names = {os.path.basename(target), os.path.basename(os.path.realpath(target))}
        try:
            soname = self.elf_cache.get(target).soname
        except SoswapError:
            soname = None
        if soname:
            names.add(soname)
        self.target_names = frozenset(names)
        #: NEW needs other libraries, or searches other directories, than OLD: its tree may bring in objects
        #: whose symbols come before those the consumer's objects bound with OLD
        self.tree_may_change = self._tree_may_change(target, new)
        #: names OLD defines and looked up through the scope, which NEW binds inside itself (DT_SYMBOLIC added,
        #: or no dynamic relocation for them any more): a consumer that interposed them loses that
        self.now_internal = self._now_internal(target, new)
        if self.now_internal:
            self.full = True
        #: consumers judged compatible from the diff alone, without binding (for reports and benchmarks)
        self.shortcuts = 0
        #: (path, as the program) -> may that object be hurt (safe_by_diff, over the trees of the index)
        self._path_may_break: Dict[Tuple[str, bool], bool] = {}

    def _tree_may_change(self, target: str, new: str) -> bool:
        try:
            old_dyn, new_dyn = self.elf_cache.get(target).dynamic, self.elf_cache.get(new).dynamic
        except SoswapError:
            return True
        return not set(new_dyn.needed) <= set(old_dyn.needed) or (new_dyn.rpath, new_dyn.runpath) != (
            old_dyn.rpath, old_dyn.runpath)

    def _now_internal(self, target: str, new: str) -> FrozenSet[str]:
        self.new_symbolic = False
        try:
            old_elf, new_elf = self.elf_cache.get(target), self.elf_cache.get(new)
            old_refs, new_refs = _self_references(old_elf), _self_references(new_elf)
            new_defined = _exported_names(new_elf)
            found = {n for n in old_refs if n in new_defined and n not in new_refs}
            self.new_symbolic = new_elf.dynamic.symbolic
            if self.new_symbolic and not old_elf.dynamic.symbolic:
                found.update(n for n in old_refs if n in new_refs)
        except SoswapError:
            return frozenset()
        return frozenset(found)

    def read(self, path: str) -> ElfFile:
        """The ELF file at consumer path ``path`` (a path inside the profile's root)."""
        return self.elf_cache.get(self.fs.host(path))

    def in_root(self, root: str, target_key: str, also: Mapping[str, str]) -> ConsumerChecker:
        """A checker of the same replacement for consumers that live under another root directory (a chroot,
        a container's ``/proc/PID/root``): loaded with that root's ld.so, libc, ld.so.cache and paths
        (:meth:`Profile.detect`), TARGET being ``target_key`` there; ``also``: the other replacements of the
        transaction under their paths there. Made once per root and kept with the shared checks."""
        key = ("root", root, target_key, tuple(sorted(also.items())))
        hit = self._shared.roots.get(key)
        if hit is None:
            profile = Profile.detect(root)
            if not os.path.lexists(os.path.join(profile.fs.host("/proc"), "self")):  # a chroot without /proc
                profile = profile.replace(proc_self_exe=False)
            hit = ConsumerChecker(self.target, self.new, self.diff, profile, elf_cache=self.elf_cache,
                                  full=self.full, also=also, shared=SharedChecks(), target_key=target_key)
            self._shared.roots[key] = hit
        return hit

    def in_root_checker(self, root: Optional[str]) -> Optional[ConsumerChecker]:
        """The checker :meth:`in_root` made for ``root`` (the first, if the transaction's files differ), or
        None."""
        return next((c for k, c in self._shared.roots.items() if k[1] == root), None)

    def loader(self, env: Environment) -> Loader:
        """The loader for ``env``; every one shares the first one's caches (:meth:`Loader.sibling`)."""
        ld = self._loaders.get(env)
        if ld is None:
            first = next(iter(self._loaders.values()), None)
            ld = Loader(self.profile, env, cache=self.elf_cache) if first is None else first.sibling(env)
            self._loaders[env] = ld
        return ld

    # -- one consumer --------------------------------------------------------------------------------------

    def check(self, path: str, *, env: Environment, plugin: bool = False, argv0: Optional[str] = None,
              source: str = "", pid: Optional[int] = None, tls_align: int = 0) -> P.ConsumerResult:
        """The verdict for the consumer at ``path`` (see the module docstring): a program as it runs, or a
        plugin as ``dlopen(RTLD_NOW)`` loads it. Raises :class:`SoswapError` when ``path`` itself cannot be
        loaded (not an ELF file, another architecture...). ``tls_align``: for a plugin of a known program, the
        largest TLS alignment of the program's start-up objects (the static TLS block is aligned to it when it
        is above 64)."""
        mode = _PLUGIN if plugin else _PROGRAM
        return self._check(path, env, mode, argv0, source, pid, tls_align)

    def check_indexed(self, path: str, tree: Optional[Sequence[str]], *, env: Environment, plugin: bool = False,
                      source: str = "") -> P.ConsumerResult:
        """The verdict for a consumer the rdeps index found, whose tree (loaded with TARGET, in ``env``: the
        index's environment) is ``tree``. When the diff alone proves it safe on that tree (:meth:`safe_by_diff`),
        it is not loaded again; else as :meth:`check`."""
        hit = self.shortcut(path, tree, plugin=plugin, source=source)
        return hit if hit is not None else self.check(path, env=env, plugin=plugin, source=source)

    def shortcut(self, path: str, tree: Optional[Sequence[str]], *, plugin: bool = False,
                 source: str = "") -> Optional[P.ConsumerResult]:
        """The compatible verdict :meth:`check_indexed` gives without loading the consumer (the diff alone proves
        it safe on its indexed ``tree``: :meth:`safe_by_diff`), or None when it must be loaded and bound."""
        if tree is not None and self.safe_by_diff(path, tree, program=not plugin):
            self.shortcuts += 1
            return P.ConsumerResult(path, P.ROLE_PLUGIN if plugin else P.ROLE_PROGRAM, P.COMPATIBLE, source=source)
        return None

    def safe_by_diff(self, root: str, tree: Sequence[str], *, program: bool) -> bool:
        """Can the diff alone prove that NEW does not hurt the consumer ``root`` whose tree with TARGET is
        ``tree``? Only when every risky change is about symbols or version nodes (``full`` False): NEW then
        has TARGET's SONAME, dependencies and loader flags, so it takes TARGET's place in the same tree, and the
        consumer is safe unless some object of the tree references a changed symbol or needs a removed node
        (as :meth:`_may_break` decides on a loaded tree). Not with other files replaced in the same
        transaction (their new versions may reference other symbols)."""
        if self.full or len(self.substitution) > 1:
            return False
        if not self.affected_names and not self.removed_versions and not self.versioning_removed:
            return True
        for path, as_program in ((root, program), *((m, False) for m in tree)):
            key = (path, as_program)
            hurt = self._path_may_break.get(key)
            if hurt is None:
                try:
                    elf = self.read(path)
                    hurt = (elf.identity is None or elf.identity[:2] != self.target_id) and \
                        self._object_may_break(elf, as_program)
                except SoswapError:
                    hurt = True  # unreadable now: load it to see
                self._path_may_break[key] = hurt
            if hurt:
                return False
        return True

    def check_self(self, env: Environment, *, as_program: bool) -> P.ConsumerResult:
        """NEW loaded at TARGET's place as a root: its own dependencies, version needs and symbols against
        what is installed (as a program when TARGET is one; else messages as dlerror() words them and the
        time the program that loads NEW would meet them)."""
        if as_program:
            return self._check(self.target_key, env, _PROGRAM, None, "self", None)
        res = self._check(self.target_key, env, _SELF, None, "self", None)
        return res._replace(role=P.ROLE_LIBRARY)

    def _check(self, path: str, env: Environment, mode: str, argv0: Optional[str], source: str,
               pid: Optional[int], tls_align: int = 0) -> P.ConsumerResult:
        plugin = mode == _PLUGIN
        role = P.ROLE_PLUGIN if plugin else P.ROLE_PROGRAM
        ld = self.loader(env)
        bind_now = True if plugin else None
        res_new = ld.load(path, substitutions=self.substitution, argv0=argv0)
        t_new = self._new_index(res_new)
        res_old: Optional[LoadResult] = None
        if t_new is None:
            # NEW is not in the tree: either the consumer does not load TARGET, or ld.so refused NEW (another
            # class or machine, a bad header: the loader names the refused substitutes)
            if not res_new.substitutes_rejected and len(self.substitution) == 1:
                return P.ConsumerResult(path, role, P.UNAFFECTED, pid=pid, source=source,
                                        note="does not load TARGET")
            res_old = ld.load(path, argv0=argv0)
            if self._target_index(res_old) is None:
                return P.ConsumerResult(path, role, P.UNAFFECTED, pid=pid, source=source,
                                        note="does not load TARGET")
        if t_new is not None and not self.full and not self._may_break(res_new):
            self.shortcuts += 1
            return P.ConsumerResult(path, role, P.COMPATIBLE, pid=pid, source=source)
        new_failures, unchecked = self._failures_of(ld, res_new, bind_now,
                                                    (self._world, env, path, argv0, mode, tls_align), plugin, tls_align)
        # An object whose relocations name a symbol past its symbol table: ld.so binds whatever lies there (or
        # crashes), so what NEW changes for its references cannot be told. Said, not refused (as a process that
        # could not be checked); NEW's own such tables are the diff's references-undecodable.
        review = (f"review: its references cannot all be checked ({'; '.join(unchecked)}): what ld.so binds "
                  "there is not known, with OLD or NEW") if unchecked else ""
        # ld.so's warning about a protected function (pointer equality): a review note, not a break (T11)
        warned = [f for f in new_failures if f.kind == PROTECTED_FUNCTION]
        new_failures = [f for f in new_failures if f.kind != PROTECTED_FUNCTION]
        watched = self._watched_refs(ld, res_new) if self.watch and t_new is not None else []
        internal = bool(self.now_internal) and t_new is not None
        tree_changes = self.tree_may_change and t_new is not None
        if not new_failures and not warned and not watched and not internal and not tree_changes:
            return P.ConsumerResult(path, role, P.COMPATIBLE, pid=pid, source=source, note=review)
        if res_old is None:
            res_old = ld.load(path, argv0=argv0)
        t_old = self._target_index(res_old)
        brought: FrozenSet[int] = frozenset()
        if tree_changes and t_old is not None:
            brought, more_refs = self._brought_in(ld, res_old, res_new)
            watched = watched + more_refs
        old_failures, _ = self._failures_of(ld, res_old, bind_now, ((), env, path, argv0, mode, tls_align), plugin,
                                            tls_align)
        old_warned = {f.line for f in old_failures if f.kind == PROTECTED_FUNCTION}
        old_failures = [f for f in old_failures if f.kind != PROTECTED_FUNCTION]
        new_problems = [self._problem(f, res_new, mode) for f in new_failures]
        old_problems = [self._problem(f, res_old, mode) for f in old_failures]
        reviews = [f"review: ld.so warns `{f.line}`: the program's address of {f.symbol} and the library's now "
                   "differ (comparisons of the two pointers change; calls still work)"
                   for f in warned if f.line not in old_warned]
        if review:
            reviews.append(review)
        if watched and t_old is not None and t_new is not None:
            found, more_reviews = self._binding_problems(ld, res_old, res_new, t_old, t_new, watched, plugin, brought)
            new_problems.extend(found)
            reviews += more_reviews
        if internal and t_old is not None and t_new is not None:
            # data NEW made PROTECTED: the loader's own warning (protected-copy) already says it
            said = {p.symbol for p in new_problems if p.kind == PROTECTED_COPY}
            lost, more = self._lost_interpositions(ld, res_old, res_new, t_old, t_new, plugin, said)
            new_problems.extend(lost)
            reviews += more
        seen = {_identity(p) for p in old_problems}
        added = tuple(p for p in new_problems if _identity(p) not in seen)
        # the load stops at a file it cannot load, an abort or a crash: the lookups that would follow (against a
        # library that was never loaded) and the misbehaviour of silent changes never happen. Missing symbols
        # and versions are all listed (ld.so stops at the first; the list is what NEW lacks).
        cut = next((n for n, p in enumerate(added) if p.fatal and p.kind in _ENDS_THE_RUN), None)
        if cut is not None:
            added = added[:cut + 1]
        if plugin and any(p.fatal for p in added):
            added = tuple(p for p in added if not p.silent)  # dlopen fails: nothing of the plugin ever runs
        baseline = tuple(old_problems)
        fatal_before = any(p.fatal and not (plugin and p.kind == UNDEFINED_SYMBOL) for p in old_problems)
        if fatal_before:
            verdict = P.BROKEN
        elif added:
            verdict = P.INCOMPATIBLE
        else:
            verdict = P.COMPATIBLE
        return P.ConsumerResult(path, role, verdict, added, baseline, pid=pid, source=source,
                                note="; ".join(reviews))

    # -- helpers -------------------------------------------------------------------------------------------

    def _may_break(self, res: LoadResult) -> bool:
        """Can NEW hurt this tree? Only if the diff's risky changes are all about symbols and version nodes
        (``self.full`` is False) and some object of the tree references one of those symbols by name, or needs
        one of TARGET's removed version nodes. Else every reference binds as it did with OLD: nothing to bind."""
        for o in res.objects:
            elf = o.elf
            if elf is None or not o.found or o.kind == "vdso" or self._is_new(o):
                continue
            if self._object_may_break(elf, o.kind == "executable"):
                return True
        return False

    def _object_may_break(self, elf: object, program: bool) -> bool:
        """Does this object reference a symbol the diff changed, or need a version node NEW removed?"""
        if self.affected_names and not self.affected_names.isdisjoint(self._undefined(elf, program)):
            return True
        if self.removed_versions or self.versioning_removed:
            try:
                needs = elf.version_needs  # type: ignore[attr-defined]
            except SoswapError:
                return True
            for need in needs:
                if need.file in self.target_names and (
                        self.versioning_removed or any(e.name in self.removed_versions for e in need.entries)):
                    return True
        return False

    def _undefined(self, elf: object, program: bool) -> FrozenSet[str]:
        """The names an object looks up: its undefined symbols, and (for the program) the symbols it copies.
        Read from the symbol columns (no Symbol objects), once per object for all the checks that share
        ``shared``."""
        cache = self._shared.undefined
        key = (id(elf), program)
        hit = cache.get(key)
        if hit is None or hit[0] is not elf:
            try:
                cols = elf.symbol_columns  # type: ignore[attr-defined]
                names_col = cols.names
                found = {n for n, x in zip(names_col, cols.shndx) if x == C.SHN_UNDEF and n}
                # a copy relocation's symbol is defined in the program (the copy), not undefined
                if program:  # COPY relocations exist only in programs
                    for index, bits in elf.symbol_reference_kinds().items():  # type: ignore[attr-defined]
                        if bits & BIT_COPY and 0 < index < len(names_col):
                            found.add(names_col[index])
                names: Optional[FrozenSet[str]] = frozenset(found)
            except SoswapError:
                names = None  # unreadable: bound to be sure (see below)
            hit = cache[key] = (elf, names)
        return hit[1] if hit[1] is not None else self.affected_names

    def _is_new(self, o: object) -> bool:
        """The object is NEW at TARGET's place (not another replacement of the same transaction)."""
        return bool(o.substituted) and o.file == self.new  # type: ignore[attr-defined]

    def _new_index(self, res: LoadResult) -> Optional[int]:
        for o in res.objects:
            if self._is_new(o):
                return o.index
        return None

    def _target_index(self, res: LoadResult) -> Optional[int]:
        for o in res.objects:
            elf = o.elf
            if o.found and elf is not None and elf.identity is not None and elf.identity[:2] == self.target_id:
                return o.index
        return None

    def _failures_of(self, ld: Loader, res: LoadResult, bind_now: Optional[bool], key: tuple,
                     plugin: bool = False, tls_align: int = 0) -> Tuple[List[Failure], Tuple[str, ...]]:
        """:meth:`_failures`, once per ``key`` in the shared checks (the same consumer in the same world)."""
        cache = self._shared.failures
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = self._failures(ld, res, bind_now, plugin, tls_align)
        return hit

    def _failures(self, ld: Loader, res: LoadResult, bind_now: Optional[bool], plugin: bool,
                  tls_align: int = 0) -> Tuple[List[Failure], Tuple[str, ...]]:
        """ld.so's failures for this load (the harmless kinds left out), and the objects other than NEW whose
        references could not be decoded ("PATH: why")."""
        refused = _dlopen_refusals(res, max(_TCB_ALIGNMENT, tls_align)) if plugin else []
        if refused:
            return refused, ()  # dlopen fails while mapping: nothing is relocated
        b = ld.bind(res, bind_now=bind_now, warn=True)
        unchecked = tuple(f"{res.objects[i].path or res.argv0}: {why}" for i, why in b.unchecked
                          if not self._is_new(res.objects[i]))
        out = list(res.failures)
        known = set(out)
        for f in b.failures:
            if f not in known:
                out.append(f)
        # copy relocations' sizes are judged by _binding_problems (size and type, both directions)
        return [f for f in out if f.kind not in _HARMLESS_KINDS and f.kind != COPY_SIZE], unchecked

    def _problem(self, f: Failure, res: LoadResult, mode: str) -> P.Problem:
        obj = None
        if f.object is not None and 0 <= f.object < len(res.objects):
            o = res.objects[f.object]
            obj = o.path or o.display or res.argv0
        if mode == _PLUGIN:
            when = P.DLOPEN
        else:
            when = P.FIRST_CALL if f.when == FIRST_CALL else P.STARTUP
        if mode == _PROGRAM or f.kind == ASSERTION:
            message = f.line
        else:
            message = f.message  # what dlerror() returns: the message without the program prefix
        detail = _FAILURE_DETAIL.get(f.kind, "")
        if f.substitute:
            detail = f"ld.so refuses NEW itself at TARGET's place ({detail})" if detail else \
                "ld.so refuses NEW itself at TARGET's place"
        return P.Problem(f.kind, f.symbol, f.version, when, message, obj, bool(f.fatal), False, detail)

    def _watched_refs(self, ld: Loader, res: LoadResult) -> List[Tuple[int, Reference]]:
        """(object index, reference) of every reference to a watched name made by an object other than NEW."""
        out: List[Tuple[int, Reference]] = []
        for o in res.objects:
            elf = o.elf
            if elf is None or not o.found or o.kind in ("vdso", "interpreter") or self._is_new(o):
                continue
            hit = self._watched_cache.get(id(elf))
            if hit is None or hit[0] is not elf:
                try:
                    refs = ld.references(res, o.index)
                except SoswapError:
                    refs = ()
                hit = self._watched_cache[id(elf)] = (elf, [r for r in refs if r.name in self.watch])
            out.extend((o.index, ref) for ref in hit[1])
        return out

    def _brought_in(self, ld: Loader, res_old: LoadResult, res_new: LoadResult
                    ) -> Tuple[FrozenSet[int], List[Tuple[int, Reference]]]:
        """The objects only NEW's tree loads (indexes in ``res_new``), and the references of the other objects
        (NEW's excepted) to names they define: the global scope is in load order, so such a definition can
        come before the one a reference bound with OLD."""
        old_paths = {o.path for o in res_old.objects if o.found}
        brought = frozenset(o.index for o in res_new.objects
                            if o.found and o.elf is not None and o.kind not in ("vdso", "interpreter")
                            and not self._is_new(o) and o.path not in old_paths)
        if not brought:
            return brought, []
        names: Set[str] = set()
        for i in brought:
            try:
                names |= _exported_names(res_new.objects[i].elf)
            except SoswapError:
                continue
        refs: List[Tuple[int, Reference]] = []
        for o in res_new.objects:
            if (o.index in brought or o.elf is None or not o.found or o.kind in ("vdso", "interpreter")
                    or self._is_new(o)):
                continue
            try:
                refs.extend((o.index, r) for r in ld.references(res_new, o.index) if r.name in names)
            except SoswapError:
                continue
        return brought, refs

    def _lost_interpositions(self, ld: Loader, res_old: LoadResult, res_new: LoadResult, t_old: int, t_new: int,
                             plugin: bool, said: Set[str]) -> Tuple[List[P.Problem], List[str]]:
        """OLD's own references to names of :attr:`now_internal` that bound another object in this consumer (the
        program's copy of a variable, a function the program defines to replace the library's), and that NEW
        no longer looks up (``_dl_lookup_symbol_x`` starts at the object itself under DT_SYMBOLIC; a reference
        resolved at link time is never looked up); ld.so says nothing. Names in ``said`` are left out.

        Returns (problems, review notes): data under -Bsymbolic is a problem (NEW's code uses its own copy, the
        program's diverges). A function the consumer defines too is a note: usually the same code (a bundled
        copy of zlib's crc32), sometimes a deliberate replacement. So is data NEW no longer relocates without
        -Bsymbolic: it may no longer use it at all (a rebuild that dropped the read), or reach it directly, and
        ELF does not tell the two apart."""
        try:
            old_refs = [r for r in ld.references(res_old, t_old) if r.name in self.now_internal]
            new_refs = {r.name: r for r in ld.references(res_new, t_new) if r.name in self.now_internal}
        except SoswapError:
            return [], []
        problems: List[P.Problem] = []
        reviews: List[str] = []
        done: Set[str] = set(said)
        for ref in old_refs:
            name = ref.name
            if name in done:
                continue
            done.add(name)
            d_old = ld.resolve(res_old, t_old, ref)
            if d_old is None or d_old.index == t_old or d_old.shndx == C.SHN_UNDEF:
                continue  # (undefined: a non-PIE program's PLT entry as the function's address; ld.so warns)
            mine = new_refs.get(name)
            d_new = ld.resolve(res_new, t_new, mine) if mine is not None else None
            if mine is not None and (d_new is None or d_new.index != t_new):
                continue
            o = res_old.objects[d_old.index]
            owner = o.path or res_old.argv0
            if d_old.type in _FUNCS:
                reviews.append(f"review: NEW's own calls of {name} no longer reach {owner}'s {name}")
            elif not self.new_symbolic:
                reviews.append(f"review: NEW no longer looks {name} up (no longer used, or reached directly): "
                               f"{owner}'s copy of it may diverge from NEW's")
            else:
                version = ref.version.name if ref.version is not None else None
                problems.append(P.Problem(
                    P.INTERPOSITION_LOST, name, version, P.DLOPEN if plugin else P.STARTUP, None, owner, False, True,
                    f"NEW no longer looks {name} up through the scope (linked -Bsymbolic: DT_SYMBOLIC): {owner} holds "
                    f"{name} (a copy relocation, or its own definition): NEW's code now reads and writes NEW's "
                    f"{name}, {owner} its own, and the values diverge (ld.so says nothing)"))
        return problems, reviews

    def _binding_problems(self, ld: Loader, res_old: LoadResult, res_new: LoadResult, t_old: int, t_new: int,
                          watched: List[Tuple[int, Reference]], plugin: bool, brought: FrozenSet[int] = frozenset()
                          ) -> Tuple[List[P.Problem], List[str]]:
        """Problems of the watched references that bind NEW (or no longer do, or now bind an object only NEW's
        tree loads: ``brought``), and review notes: a data object that grew, used without a copy relocation,
        is compatible when members were only appended and breaks the consumer when members moved; ELF carries
        no layout to tell the two apart."""
        old_by_path = {o.path: o.index for o in res_old.objects if o.found}
        out: List[P.Problem] = []
        reviews: List[str] = []
        done: Set[Tuple[int, str, bool]] = set()
        for i, ref in watched:
            o = res_new.objects[i]
            j = old_by_path.get(o.path)
            if j is None:
                continue
            copy = ref.copy
            tag = (i, ref.name, copy)
            if tag in done:
                continue
            done.add(tag)
            d_new = ld.resolve(res_new, i, ref)
            d_old = ld.resolve(res_old, j, ref)
            if d_new is None or d_old is None:
                continue
            who = o.path or res_new.argv0
            name = ref.name
            version = ref.version.name if ref.version is not None else None
            # a reference that bound another object than TARGET, and now binds one only NEW's tree loads
            moved_in = d_new.index in brought and d_old.index != t_old and \
                res_new.objects[d_new.index].path != res_old.objects[d_old.index].path
            if (d_new.index == t_new) != (d_old.index == t_old) or moved_in:
                p = _rebound(res_old, res_new, d_old, d_new, t_new, ref, who, plugin, moved_in)
                if p is not None:
                    # what a copy relocation copies now: ld.so warns when the definition outgrew the copy
                    sized = self._size_problems(ld, res_new, i, ref, d_old, d_new, t_new, who, []) if copy else []
                    if sized and not sized[0].silent:
                        p = p._replace(detail=p.detail.replace(" (ld.so says nothing)", ""))
                    out.append(p)
                    out.extend(sized)
                elif d_new.index != t_new:  # a symbol that moved to another object: the same size?
                    out.extend(self._size_problems(ld, res_new, i, ref, d_old, d_new, t_new, who, reviews))
                continue
            if d_new.index != t_new:
                continue
            why = _type_break(d_old.type, d_new.type)
            if why is not None:
                out.append(P.Problem(
                    P.TYPE_CHANGED, name, version, _when_it_misbehaves(d_old, d_new, copy, plugin), None, who,
                    False, True,
                    f"{name} was {C.STT_NAMES.get(d_old.type, d_old.type)} in OLD and is "
                    f"{C.STT_NAMES.get(d_new.type, d_new.type)} in NEW: {why}"))
                continue
            out.extend(self._size_problems(ld, res_new, i, ref, d_old, d_new, t_new, who, reviews))
        return out, reviews

    @staticmethod
    def _size_problems(ld: Loader, res_new: LoadResult, i: int, ref: Reference, d_old: M.Definition,
                       d_new: M.Definition, t_new: int, who: str, reviews: List[str]) -> List[P.Problem]:
        """A data reference of object ``i`` that bound ``d_old`` with OLD and binds ``d_new`` (NEW's, or another
        object's) with NEW: a copy relocation copies the smaller of the two sizes and ld.so warns when the
        definition outgrew the program's copy (``elf_machine_rela``, R_*_COPY); an object read in place may
        have shrunk (a problem) or grown (a review note, appended to ``reviews``)."""
        name = ref.name
        version = ref.version.name if ref.version is not None else None
        if _type_break(d_old.type, d_new.type) is not None:
            return []
        owner = "NEW" if d_new.index == t_new else (res_new.objects[d_new.index].path or res_new.argv0)
        where = "in NEW" if d_new.index == t_new else f"in {owner} (where it binds with NEW)"
        if not ref.copy:
            sized = (d_old.type in DATA_TYPES or d_old.type == C.STT_TLS) and d_new.type == d_old.type
            if sized and d_new.size < d_old.size:
                return [P.Problem(
                    P.OBJECT_SHRUNK, name, version, P.FIRST_CALL, None, who, False, True,
                    f"{name} is {d_new.size} bytes {where} and was {d_old.size} in OLD: {who} was built for the "
                    f"old object and may read or write past {owner}'s, or at members that moved (ld.so says "
                    "nothing)")]
            if sized and d_new.size > d_old.size:
                reviews.append(f"review: {name} grew from {d_old.size} to {d_new.size} bytes {where} and {who} "
                               "reads it in place: compatible if members were only appended, wrong data if "
                               "any moved")
            return []
        mine = ld.symbol(res_new, i, ref.symbol_index)
        if mine is None or d_new.size == mine.size or d_old.size != mine.size:
            return []
        grew = d_new.size > mine.size
        text = f"{res_new.argv0}: Symbol `{name}' has different size in shared object, consider re-linking"
        what = (f"{owner}'s object is bigger: only the old size is copied and the code built for it reads past "
                "the program's copy" if grew else
                f"{owner}'s object is smaller: the program's copy holds garbage past its size (ld.so says so only "
                "with LD_WARN=1)")
        return [P.Problem(P.COPY_SIZE, name, version, P.STARTUP, text, who, False, not grew,
                          f"copy relocation of {name}: {mine.size} bytes in the program, {d_new.size} {where}: "
                          f"{what}")]


def _self_references(elf: object) -> Set[str]:
    """Names an object both defines and names in its dynamic relocations (it looks them up through the scope,
    where an earlier definition, or the program's copy, wins)."""
    cols = elf.symbol_columns  # type: ignore[attr-defined]
    names, shndx = cols.names, cols.shndx
    return {names[i] for i in elf.symbol_reference_kinds()  # type: ignore[attr-defined]
            if 0 < i < len(names) and shndx[i] != C.SHN_UNDEF and names[i]}


def _exported_names(elf: object) -> Set[str]:
    cols = elf.symbol_columns  # type: ignore[attr-defined]
    return {n for n, x in zip(cols.names, cols.shndx) if x != C.SHN_UNDEF and n}


def _when_it_misbehaves(d_old: M.Definition, d_new: M.Definition, copy: bool, plugin: bool) -> str:
    """When a reference bound to ``d_new`` instead of ``d_old`` goes wrong: a call when it is made, however
    early it was bound, and so does the first use of a variable that moved in or out of TLS (__tls_get_addr
    of module 0, an offset read as an address), in a plugin too (dlopen succeeds); other data, and whatever a
    copy relocation copies, is wrong from the start."""
    tls = (d_old.type == C.STT_TLS) != (d_new.type == C.STT_TLS)
    if not copy and (d_old.type in _FUNCS or tls):
        return P.FIRST_CALL
    return P.DLOPEN if plugin else P.STARTUP


def _rebound(res_old: LoadResult, res_new: LoadResult, d_old: M.Definition, d_new: M.Definition, t_new: int,
             ref: Reference, who: str, plugin: bool, moved_in: bool = False) -> Optional[P.Problem]:
    """A reference that binds another object with NEW than with OLD (``_dl_lookup_symbol_x`` takes the first
    definition in scope order), and ld.so says nothing:

    * it bound another object and NEW now comes first with a symbol of that name it added: a definition of
      another type crashes (``type-changed``); one of the same type is another function or variable
      (``preempted``), unless NEW defines the very version the reference asks for (a symbol moved into NEW
      on purpose, as glibc moved libpthread's into libc); the same for an object only NEW's tree loads
      (``moved_in``: a new dependency of NEW);
    * it bound TARGET and NEW lacks the symbol, so it binds another object's: only another type is reported
      (the same type there is a symbol that moved to another library)."""
    name = ref.name
    version = ref.version.name if ref.version is not None else None
    old_o, new_o = res_old.objects[d_old.index], res_new.objects[d_new.index]
    old_name = old_o.path or res_old.argv0
    new_name = "NEW" if d_new.index == t_new else (new_o.path or res_new.argv0)
    why = _type_break(d_old.type, d_new.type)
    when = _when_it_misbehaves(d_old, d_new, ref.copy, plugin)
    t_old_name = C.STT_NAMES.get(d_old.type, d_old.type)
    t_new_name = C.STT_NAMES.get(d_new.type, d_new.type)
    if why is not None:
        return P.Problem(P.TYPE_CHANGED, name, version, when, None, who, False, True,
                         f"{name} bound {old_name}'s {t_old_name} {d_old.versioned_name} with OLD and binds "
                         f"{new_name}'s {t_new_name} {d_new.versioned_name} with NEW: {why}")
    if (d_new.index != t_new and not moved_in) or (version is not None and d_new.version == version):
        return None
    adds = "NEW adds" if d_new.index == t_new else f"{new_name}, which NEW's tree brings in, defines"
    return P.Problem(P.PREEMPTED, name, version, when, None, who, False, True,
                     f"{name} bound {old_name}'s {d_old.versioned_name} with OLD; {adds} "
                     f"{d_new.versioned_name} and comes first in the scope, so {who} now uses "
                     f"{'NEW' if d_new.index == t_new else new_name}'s {t_new_name.lower()} instead (ld.so says "
                     "nothing)")


def _dlopen_refusals(res: LoadResult, static_align: int = 64) -> List[Failure]:
    """What dlopen of the plugin ``res`` refuses in the objects it maps (the plugin's dependencies; the program
    that opens it may have some of them loaded already, and then nothing is refused for those): an object
    linked ``-z nodlopen`` (``_dl_map_object_from_fd``), and one whose initial-exec TLS does not fit in the
    static TLS surplus or is aligned more than the static TLS block (``static_align``: ``dl_tls_static_align``,
    the largest of TCB_ALIGNMENT and the program's start-up objects' TLS alignments) (``_dl_try_allocate_static_tls``,
    at its TPOFF relocations)."""
    out: List[Failure] = []
    for o in res.objects[1:]:
        elf = o.elf
        if elf is None or not o.found or o.kind in ("vdso", "interpreter"):
            continue
        try:
            dyn = elf.dynamic
            if dyn.flags_1 & C.DF_1_NOOPEN:
                msg = f"{o.name}: shared object cannot be dlopen()ed"
                out.append(Failure(NOOPEN, o.name, o.index, msg, msg, M.STARTUP, True))
                break
            if dyn.flags & C.DF_STATIC_TLS:
                # blsize = l_tls_blocksize + l_tls_firstbyte_offset; only a block that fits in no layout counts
                need = static_tls_block(elf)
                # a block aligned more than the static TLS block is refused whatever its size
                if need > STATIC_TLS_SURPLUS + _TCB_ALIGNMENT - 1 or static_tls_align(elf) > static_align:
                    msg = f"{o.path}: cannot allocate memory in static TLS block"
                    out.append(Failure(STATIC_TLS, o.path, o.index, msg, msg, M.STARTUP, True))
                    break
        except SoswapError:
            continue
    return out


#: Failures after which nothing more happens in the consumer (the load stops, ld.so aborts or dies).
_ENDS_THE_RUN = frozenset({M.NOT_FOUND, M.WRONG_CLASS, M.BAD_FILE, M.DST, M.NO_INTERPRETER, M.ISA_LEVEL,
                           M.ASSERTION, M.CRASH, M.INDIRECT_EXTERN_ACCESS, M.BAD_RELOCATION, NOOPEN, STATIC_TLS})


def _identity(p: P.Problem) -> Tuple[object, ...]:
    return (p.kind, p.message, p.symbol, p.version, p.object, p.when)


_FAILURE_DETAIL = {
    NOT_FOUND: "a library is missing: the program does not start",
    UNDEFINED_SYMBOL: "no object in the consumer's scope defines the symbol (weak references excepted)",
    "version": "a version node the consumer needs is missing: the program does not start (exit status 1)",
    "wrong-class": "ld.so skips a file of the other ELF class",
    "bad-file": "ld.so refuses the file",
    "no-version-info": "the library has no version information where the consumer needs some",
    ASSERTION: "glibc < 2.41 aborts in check_match: a versioned reference meets an unversioned library",
    PROTECTED_COPY: "the data is PROTECTED in NEW: the program writes its copy, NEW keeps using its own",
    INDIRECT_EXTERN_ACCESS: "NEW needs indirect extern access: ld.so refuses the program's copy relocation or "
                            "canonical function address",
    "isa-level": "the CPU lacks the x86 ISA level the file needs",
    NOOPEN: "NEW is linked -z nodlopen: dlopen refuses it when the plugin brings it in (not when the program "
            "has it loaded already)",
    STATIC_TLS: f"NEW's initial-exec TLS is bigger than the static TLS surplus ({STATIC_TLS_SURPLUS} bytes, "
                "shared by every library dlopen-ed with such TLS), or aligned more than its 64 bytes: dlopen fails "
                "unless the program has NEW loaded already (or, for the size, raises "
                "glibc.rtld.optional_static_tls)",
}
