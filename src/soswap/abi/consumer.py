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
from soswap.elf import ElfCache
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
    UNDEFINED_SYMBOL,
    WEAK_VERSION,
    Failure,
)

_PROGRAM, _PLUGIN, _SELF = "program", "plugin", "self"
#: Loader failure kinds that do not break anything (tolerated by ld.so, or not about the consumer). A direct
#: reference to a protected function only may break pointer equality (T11: compatible).
_HARMLESS_KINDS = frozenset({WEAK_VERSION, PRELOAD, PROTECTED_FUNCTION})
#: Change kinds whose symbols need the binding-level checks (type, copy size, protected data).
_BINDING_KINDS = frozenset({"type-changed", "size-changed", "visibility-changed"})
#: Changes that alter what a reference to that symbol binds to, or how: only consumers that reference the
#: name can be hurt.
_SYMBOL_KINDS = frozenset({"symbol-removed", "symbol-unexported", "symbol-moved", "symbol-moved-out",
                           "type-changed", "size-changed", "visibility-changed", "binding-changed",
                           "default-version-removed"})
#: Changes that remove version nodes: only consumers that need a node of TARGET can be hurt.
_VERSION_KINDS = frozenset({"version-removed", "versioning-removed"})
_FUNCS = frozenset({C.STT_FUNC, C.STT_GNU_IFUNC})


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
        #: (world, environment, path, argv0, bind_now) -> failures; world: the substitutions, or () for OLD
        self.failures: Dict[tuple, List[Failure]] = {}
        #: the system's program and library directories (:func:`soswap.abi.sysdirs.system_tops`), once
        self.system_tops: Optional[list] = None
        #: (id of an ElfFile, as the program) -> (that ElfFile, the names it looks up, or None: unreadable)
        self.undefined: Dict[Tuple[int, bool], Tuple[object, Optional[FrozenSet[str]]]] = {}


class ConsumerChecker:
    """Checks consumers of one replacement (TARGET ← NEW). One instance per check: it shares the parsed files
    and the binding caches across consumers, and one :class:`Loader` per environment."""

    def __init__(self, target: str, new: str, diff: AbiDiff, profile: Profile, *,
                 elf_cache: Optional[ElfCache] = None, full: bool = False,
                 also: Optional[Mapping[str, str]] = None,
                 shared: Optional[SharedChecks] = None) -> None:
        st = os.stat(target)
        self.target = target
        self.target_id = (st.st_dev, st.st_ino)
        self.new = new
        self.profile = profile
        self.elf_cache = elf_cache if elf_cache is not None else ElfCache()
        #: one Loader per environment, and the failures of each consumer: shared by the checks of one
        #: transaction (``shared``), whose substitutions are all the same whole transaction
        self._shared = shared if shared is not None else SharedChecks()
        self._loaders = self._shared.loaders
        #: names whose definition changed in a way only a binding-level check sees
        self.watch: FrozenSet[str] = frozenset(
            c.symbol for c in diff.changes if c.kind in _BINDING_KINDS and c.symbol is not None)
        #: TARGET <- NEW, plus the other replacements of the same transaction (``also``: {target: new})
        self.substitution: Dict[str, str] = dict(also or {})
        self.substitution[target] = new
        #: the substitutions as a key of the shared failures (the "world" the consumers are loaded in)
        self._world = tuple(sorted(self.substitution.items()))
        self._watched_cache: Dict[int, Tuple[object, List[Reference]]] = {}
        # What the diff says can hurt a consumer (see _may_break); full=True binds every consumer anyway.
        risky = [c for c in diff.changes if c.severity != HARMLESS]
        self.full = full or any(c.kind not in _SYMBOL_KINDS | _VERSION_KINDS for c in risky)
        self.affected_names: FrozenSet[str] = frozenset(
            c.symbol for c in risky if c.kind in _SYMBOL_KINDS and c.symbol is not None)
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
        #: consumers judged compatible from the diff alone, without binding (for reports and benchmarks)
        self.shortcuts = 0
        #: (path, as the program) -> may that object be hurt (safe_by_diff, over the trees of the index)
        self._path_may_break: Dict[Tuple[str, bool], bool] = {}

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
              source: str = "", pid: Optional[int] = None) -> P.ConsumerResult:
        """The verdict for the consumer at ``path`` (see the module docstring): a program as it runs, or a
        plugin as ``dlopen(RTLD_NOW)`` loads it. Raises :class:`SoswapError` when ``path`` itself cannot be
        loaded (not an ELF file, another architecture...)."""
        mode = _PLUGIN if plugin else _PROGRAM
        return self._check(path, env, mode, argv0, source, pid)

    def check_indexed(self, path: str, tree: Optional[Sequence[str]], *, env: Environment, plugin: bool = False,
                      source: str = "") -> P.ConsumerResult:
        """The verdict for a consumer the rdeps index found, whose tree (loaded with TARGET, in ``env``: the
        index's environment) is ``tree``. When the diff alone proves it safe on that tree (:meth:`safe_by_diff`),
        it is not loaded again; else as :meth:`check`."""
        if tree is not None and self.safe_by_diff(path, tree, program=not plugin):
            self.shortcuts += 1
            return P.ConsumerResult(path, P.ROLE_PLUGIN if plugin else P.ROLE_PROGRAM, P.COMPATIBLE, source=source)
        return self.check(path, env=env, plugin=plugin, source=source)

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
                    elf = self.elf_cache.get(path)
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
            return self._check(self.target, env, _PROGRAM, None, "self", None)
        res = self._check(self.target, env, _SELF, None, "self", None)
        return res._replace(role=P.ROLE_LIBRARY)

    def _check(self, path: str, env: Environment, mode: str, argv0: Optional[str], source: str,
               pid: Optional[int]) -> P.ConsumerResult:
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
        new_failures = self._failures_of(ld, res_new, bind_now, (self._world, env, path, argv0, mode))
        watched = self._watched_refs(ld, res_new) if self.watch and t_new is not None else []
        if not new_failures and not watched:
            return P.ConsumerResult(path, role, P.COMPATIBLE, pid=pid, source=source)
        if res_old is None:
            res_old = ld.load(path, argv0=argv0)
        t_old = self._target_index(res_old)
        old_failures = self._failures_of(ld, res_old, bind_now, ((), env, path, argv0, mode))
        new_problems = [self._problem(f, res_new, mode) for f in new_failures]
        old_problems = [self._problem(f, res_old, mode) for f in old_failures]
        if watched and t_old is not None and t_new is not None:
            new_problems.extend(self._binding_problems(ld, res_old, res_new, t_old, t_new, watched, plugin))
        seen = {_identity(p) for p in old_problems}
        added = tuple(p for p in new_problems if _identity(p) not in seen)
        # the load stops at a file it cannot load, an abort or a crash: the lookups that would follow (against a
        # library that was never loaded) and the misbehaviour of silent changes never happen. Missing symbols
        # and versions are all listed (ld.so stops at the first; the list is what NEW lacks).
        cut = next((n for n, p in enumerate(added) if p.fatal and p.kind in _ENDS_THE_RUN), None)
        if cut is not None:
            added = added[:cut + 1]
        baseline = tuple(old_problems)
        fatal_before = any(p.fatal and not (plugin and p.kind == UNDEFINED_SYMBOL) for p in old_problems)
        if fatal_before:
            verdict = P.BROKEN
        elif added:
            verdict = P.INCOMPATIBLE
        else:
            verdict = P.COMPATIBLE
        return P.ConsumerResult(path, role, verdict, added, baseline, pid=pid, source=source)

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

    def _failures_of(self, ld: Loader, res: LoadResult, bind_now: Optional[bool], key: tuple) -> List[Failure]:
        """:meth:`_failures`, once per ``key`` in the shared checks (the same consumer in the same world)."""
        cache = self._shared.failures
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = self._failures(ld, res, bind_now)
        return hit

    def _failures(self, ld: Loader, res: LoadResult, bind_now: Optional[bool]) -> List[Failure]:
        b = ld.bind(res, bind_now=bind_now, warn=True)
        out = list(res.failures)
        known = set(out)
        for f in b.failures:
            if f not in known:
                out.append(f)
        # copy relocations' sizes are judged by _binding_problems (size and type, both directions)
        return [f for f in out if f.kind not in _HARMLESS_KINDS and f.kind != COPY_SIZE]

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

    def _binding_problems(self, ld: Loader, res_old: LoadResult, res_new: LoadResult, t_old: int, t_new: int,
                          watched: List[Tuple[int, Reference]], plugin: bool) -> List[P.Problem]:
        old_by_path = {o.path: o.index for o in res_old.objects if o.found}
        out: List[P.Problem] = []
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
            if d_new is None or d_old is None or d_new.index != t_new or d_old.index != t_old:
                continue
            who = o.path or res_new.argv0
            name = ref.name
            version = ref.version.name if ref.version is not None else None
            why = _type_break(d_old.type, d_new.type)
            if why is not None:
                # a call crashes when it is made, however early it was bound, and so does the first use of a
                # variable that moved in or out of TLS (__tls_get_addr of module 0, an offset read as an
                # address), in a plugin too (dlopen succeeds); other data, and whatever a copy relocation
                # copies, is wrong from the start
                tls = (d_old.type == C.STT_TLS) != (d_new.type == C.STT_TLS)
                if not copy and (d_old.type in _FUNCS or tls):
                    when = P.FIRST_CALL
                else:
                    when = P.DLOPEN if plugin else P.STARTUP
                out.append(P.Problem(
                    P.TYPE_CHANGED, name, version, when, None, who, False, True,
                    f"{name} was {C.STT_NAMES.get(d_old.type, d_old.type)} in OLD and is "
                    f"{C.STT_NAMES.get(d_new.type, d_new.type)} in NEW: {why}"))
                continue
            if not copy:
                continue
            mine = ld.symbol(res_new, i, ref.symbol_index)
            if mine is not None and d_new.size != mine.size and d_old.size == mine.size:
                grew = d_new.size > mine.size
                text = f"{res_new.argv0}: Symbol `{name}' has different size in shared object, consider re-linking"
                what = ("NEW's object is bigger: only the old size is copied and NEW's code reads past the "
                        "program's copy" if grew else
                        "NEW's object is smaller: the program's copy holds garbage past NEW's size (ld.so says so "
                        "only with LD_WARN=1)")
                out.append(P.Problem(P.COPY_SIZE, name, version, P.STARTUP, text, who, False, not grew,
                                     f"copy relocation of {name}: {mine.size} bytes in the program, {d_new.size} "
                                     f"in NEW: {what}"))
        return out


#: Failures after which nothing more happens in the consumer (the load stops, ld.so aborts or dies).
_ENDS_THE_RUN = frozenset({M.NOT_FOUND, M.WRONG_CLASS, M.BAD_FILE, M.DST, M.NO_INTERPRETER, M.ISA_LEVEL,
                           M.ASSERTION, M.CRASH, M.INDIRECT_EXTERN_ACCESS})


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
}
